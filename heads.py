"""The heads by name: the one list of the classifiers that can follow the backbone, and their description.

Importing this module loads no deep-learning framework (the command lines list the
heads in ``-h`` without Keras); `classifier.ClassifierHead` builds them.
"""

from __future__ import annotations

import dataclasses

HEADS = ("blstm-attention", "stats")  # the paper's head, and statistics pooling
# What each head kind takes where HeadConfig is not told: the BLSTM head is the paper's
# (two hidden layers, regularised by dropout and early stopping); the statistics head is
# a multinomial logistic regression on the standardised statistics, regularised by
# weight decay and trained to convergence. Its decay of 0.3 and prosodic weight of 5 scored
# best of a grid (decay 1e-3 to 3, weight 1 to 15) on both development corpora (docs/RESULTS.md).
# The prosodic block's weight (`HeadConfig.prosody_weight`): the dense layers of the BLSTM
# head learn their own scale of it; the logistic regression's weight decay would shrink ~80
# prosodic coefficients as hard as thousands of statistics ones, so the block counts more.
HEAD_DEFAULTS = {
    "blstm-attention": {"dense_units": (256, 128), "weight_decay": 0.0, "prosody_weight": 1.0},
    "stats": {"dense_units": (), "weight_decay": 0.3, "prosody_weight": 5.0},
}


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """The classifier after the backbone: one description for `SpeechModel.create_model` and `classifier.ClassifierHead`.

    Attributes:
        kind: str. "blstm-attention" (the paper's: BLSTM, additive attention, dense layers) or
            "stats" (the mean and standard deviation of the segment embeddings, standardised,
            then the dense layers). Defaults to "blstm-attention".
        lstm_units: int. LSTM units in each direction. Defaults to 128.
        attention_units: int. Hidden size of the additive attention. Defaults to 128.
        dense_units: tuple of ints or None. Hidden Dense layers; None takes the kind's own
            (`HEAD_DEFAULTS`: (256, 128) for "blstm-attention", none for "stats").
        dropout: float in [0, 1). Dropout after each hidden Dense layer. Defaults to 0.25.
        embedding_dropout: float in [0, 1). Dropout on the normalised segment embeddings, in
            training only: a regulariser for small corpora. Defaults to 0.
        weight_decay: float >= 0 or None. L2 penalty on the Dense kernels (added to the loss
            as ``weight_decay * sum(kernel ** 2)``); None takes the kind's own (0 for
            "blstm-attention", 0.3 for "stats").
        prosody_features: int >= 0. Length of the utterance-level prosodic vector
            (`prosody.FEATURE_SETS`) joined to the pooled segments (after attention, or beside
            the statistics); 0: no prosodic branch. Defaults to 0.
        prosody_weight: float > 0 or None. The standardised prosodic vector is multiplied by
            this before it is joined; None takes the kind's own (1 for "blstm-attention", 5
            for "stats", `HEAD_DEFAULTS`).
    """

    kind: str = "blstm-attention"
    lstm_units: int = 128
    attention_units: int = 128
    dense_units: tuple[int, ...] | None = None
    dropout: float = 0.25
    embedding_dropout: float = 0.0
    weight_decay: float | None = None
    prosody_features: int = 0
    prosody_weight: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in HEADS:
            raise ValueError(f"kind must be one of {HEADS}, got {self.kind!r}")
        defaults = HEAD_DEFAULTS[self.kind]
        dense_units = defaults["dense_units"] if self.dense_units is None else self.dense_units
        object.__setattr__(self, "dense_units", tuple(int(units) for units in dense_units))
        for name in ("weight_decay", "prosody_weight"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, defaults[name])
        if min(self.lstm_units, self.attention_units, *self.dense_units) < 1:
            raise ValueError(f"units must be >= 1, got {self!r}")
        if not (0 <= self.dropout < 1 and 0 <= self.embedding_dropout < 1):
            raise ValueError(f"dropout and embedding_dropout must be in [0, 1), got {self.dropout!r}, {self.embedding_dropout!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.prosody_features < 0 or self.prosody_weight <= 0:
            raise ValueError(f"prosody_features must be >= 0 and prosody_weight > 0, got {self.prosody_features!r}, {self.prosody_weight!r}")

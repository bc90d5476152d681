"""The recipe of a training run: every choice it depends on (`Options`), their defaults and how they resolve.

Saved with every run (``options.json``) and read back by ``--resume``; the command line of
train.py spells each field as a flag. Importing this module loads no deep-learning framework.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import corpora
import devices
import files
import prosody
import runs
import utils
from errors import UsageError
from heads import HeadConfig
from presets import DEFAULT, PRESETS

BACKBONE_MODES = ("frozen", "finetune")
BALANCING = ("oversample", "class-weight", "none")
NO_PROSODY = "none"
PROSODY_CHOICES = (*prosody.FEATURE_SETS, NO_PROSODY)  # --prosody
DEFAULT_PROSODY = PRESETS[DEFAULT]["prosody"]  # in frozen mode: permissive, usable commercially, unlike egemaps (openSMILE)
# --prosody-weight choose: the candidates, one chosen per split on the validation speakers.
# Not the default: with two validation speakers or one, the choice scored below the head's
# fixed weight on RAVDESS (docs/RESULTS.md).
CHOOSE_WEIGHT = "choose"
PROSODY_WEIGHTS = (1.0, 5.0, 15.0)


@dataclasses.dataclass
class Options:
    """Everything a run depends on; saved with the run (``options.json``).

    The defaults are the recipe measured best on held-out speakers (README, "What the recipe reaches"),
    the model of `presets.PRESETS`' "default":
    EfficientNet-Lite0 frozen, segments resized to 224, every stage's pooled output,
    the permissive prosodic set beside them, per-speaker normalisation, and the statistics
    head trained to convergence; no enhanced copies (their added noise moves the embeddings
    far from any clean recording's).

    The backbone mode is frozen on every machine: one command trains one recipe, and a GPU
    only makes it faster (fine-tuning, one flag away, was never measured better here).

    ``corpus="auto"``, and the options left at None, take what the dataset, the
    machine and the other options say; `resolved` fills them in before a run starts:
    the detected corpus and its default speakers; in finetune mode, mixed precision on a
    GPU (`devices.default_precision`);
    speaker normalisation and the permissive prosodic set in frozen mode (they join
    embeddings computed once); for the statistics head on frozen embeddings (a convex problem, where picking
    the best epoch on a few validation speakers costs accuracy) no early stopping and
    Adam's learning rate 1e-3, for the BLSTM head or fine-tuning early stopping and 1e-4.
    """

    epochs: int
    dataset: str = str(files.PROJECT_ROOT / "dataset")
    added_datasets: list[str] = dataclasses.field(default_factory=list)  # more corpora, every speaker of theirs in training
    corpus: str = corpora.AUTO
    speaker_pattern: str | None = None
    test_speakers: list | None = None
    val_speakers: list | None = None
    folds: int | None = None
    backbone_mode: str = "frozen"
    backbone: str = PRESETS[DEFAULT]["backbone"]
    weights: str = "imagenet"
    image_size: int | None = PRESETS[DEFAULT]["image_size"]
    stages: str = PRESETS[DEFAULT]["stages"]
    head: str = PRESETS[DEFAULT]["head"]
    prosody: str | None = None
    prosody_weight: float | str | None = None  # None: the head's own (HEAD_DEFAULTS); or CHOOSE_WEIGHT
    weight_decay: float | None = None
    embedding_dropout: float = 0.0
    speaker_norm: bool | None = None
    early_stopping: bool | None = None
    batch_size: int = 32
    learning_rate: float | None = None
    backbone_lr_scale: float = 0.1
    freeze_batchnorm: bool = True
    precision: str | None = None
    devices: int | None = None
    seed: int = 0
    output: str = str(runs.MODEL_ROOT)
    cache_dir: str = str(files.default_cache_dir())
    custom_labels: bool = False
    augment: bool = False
    pseudo_speakers: int = 0
    balance: str = "oversample"
    download: bool = True
    download_url: str | None = None
    features: utils.FeatureConfig = utils.DEFAULT_FEATURES

    def resolved(self, corpus: corpora.Corpus, utterances: Sequence[corpora.Utterance]) -> Options:
        """A copy with every default that depends on the corpus, its speakers or the machine filled in."""
        test, validation = (None, None) if self.folds else corpora.default_speakers(corpus, utterances)  # folds pick their own
        frozen = self.backbone_mode == "frozen"  # the other mode is finetune
        if self.speaker_norm and not frozen:
            raise UsageError("--speaker-norm works with --backbone-mode frozen (the embeddings it standardises are computed once)")
        if self.prosody not in (None, NO_PROSODY) and not frozen:
            raise UsageError(f"--prosody {self.prosody} works with --backbone-mode frozen; pass --prosody none to fine-tune")
        if frozen and (self.devices or 1) > 1:
            raise UsageError("--devices above 1 works with --backbone-mode finetune (frozen mode trains a small head on one device)")
        linear_on_embeddings = self.head == "stats" and frozen
        return dataclasses.replace(
            self,
            corpus=corpus.name,
            test_speakers=test if self.test_speakers is None else self.test_speakers,
            val_speakers=validation if self.val_speakers is None else self.val_speakers,
            precision=("float32" if frozen else devices.default_precision()) if self.precision is None else self.precision,
            devices=1 if frozen else self.devices,
            speaker_norm=frozen if self.speaker_norm is None else self.speaker_norm,
            prosody=(DEFAULT_PROSODY if frozen else NO_PROSODY) if self.prosody is None else self.prosody,
            early_stopping=not linear_on_embeddings if self.early_stopping is None else self.early_stopping,
            learning_rate=(1e-3 if linear_on_embeddings else 1e-4) if self.learning_rate is None else self.learning_rate,
        )

    def architecture(self) -> dict[str, Any]:
        """The `SpeechModel.create_model` arguments that say what the model is: backbone, resolution, stages, head, prosodic set.

        Training, and the benchmarks that time a recipe, build their models from these
        (unresolved options take the prosodic set `resolved` would).
        """
        chosen = self.prosody if self.prosody is not None else DEFAULT_PROSODY if self.backbone_mode == "frozen" else NO_PROSODY
        return {
            "backbone": self.backbone,
            "image_size": self.image_size,
            "stages": self.stages,
            "head": HeadConfig(
                kind=self.head, weight_decay=self.weight_decay, embedding_dropout=self.embedding_dropout,
                prosody_weight=None if self.prosody_weight == CHOOSE_WEIGHT else self.prosody_weight,
            ),
            "prosody_set": None if chosen == NO_PROSODY else chosen,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Options:
        """The options `to_dict` wrote (``options.json``)."""
        values = dict(values)
        values["features"] = utils.FeatureConfig.from_dict(values.get("features", {}))
        return cls(**values)

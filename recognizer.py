"""The whole recogniser as one Keras model, its parts as attributes, and how it compiles by default.

`EmotionRecognizer` holds the recogniser's parts, each a registered layer that round-trips
through ``get_config`` and ``.keras`` files (keras-hub's style); `compile_recognizer` compiles it
(or its head alone) as the recipe trains it, with `BackboneScaledAdam` for fine-tuning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import layers, ops

from classifier import ClassifierHead
from encoder import SegmentEncoder
from frontend import PACKAGE, LogMelFrontEnd
from normalization import Standardization
from prosody import FEATURE_WIDTHS as PROSODY_WIDTHS
from prosody import SR as PROSODY_SR
from prosody_frontend import ProsodicFrontEnd
from utils import PAD_VALUE, FeatureConfig

LEARNING_RATE = 1e-4  # Adam, as in the paper's recipe


@keras.saving.register_keras_serializable(package=PACKAGE)
class EmotionRecognizer(keras.Model):
    """The whole recogniser: front end, segment encoder, speaker normalisation and head, from waveform to emotion.

    Called on segments (batch, segments, frames, n_mels, 3) it gives class probabilities
    (batch, classes): training feeds it cached segments. With a prosodic branch
    (``prosody_set``, a name in `prosody.FEATURE_SETS`) it takes a second input, each
    utterance's prosodic vector (batch, values) as `prosody.FEATURE_SETS` computes it from the
    same audio, standardised by ``prosody_normalization`` like the embeddings; from a waveform,
    ``prosodic_front_end`` computes the permissive set in the graph (openSMILE's egemaps set
    stays outside it). The forward API:

    - ``embed(segments)``: (batch, segments, features) backbone embeddings;
    - ``classify(embeddings, mean=None, std=None, prosody=None, prosody_mean=None,
      prosody_std=None, return_attention=False)``: probabilities of embeddings (padding rows
      `utils.PAD_VALUE`) and prosodic vectors, standardised with the stored training
      statistics, or with a group's own means and deviations (`RunningStatistics`);
    - ``attend(segments, prosody=None)``: the model's probabilities and each segment's attention weight;
    - ``predict_waveform(waveform, prosody=None)``: (windows, samples) PCM at
      ``front_end.features.sr`` -> per-window probabilities; each window's prosodic vector is
      computed in the graph where ``prosodic_front_end`` can, else it must be given.

    Args:
        front_end: frontend.LogMelFrontEnd. Its features are the run's.
        encoder: SegmentEncoder. Scaling and backbone.
        head: ClassifierHead.
        speaker_normalization: Standardization or None. A new (identity) one when None.
        prosody_set: str or None. The prosodic set of the head's branch (its width is the
            head's ``prosody_features``); None for a head without one.
        prosody_normalization: Standardization or None. A new (identity) one when None and
            ``prosody_set`` is set.

    Example:
    >>> model = SpeechModel.create_model(3, weights=None, backbone="efficientnet_lite0", features=FeatureConfig(n_mels=32, segment_frames=32, segment_hop=16))
    >>> model.predict_waveform(np.zeros((1, 16000), "float32")).shape
    (1, 3)
    """

    def __init__(
        self,
        front_end: LogMelFrontEnd,
        encoder: SegmentEncoder,
        head: ClassifierHead,
        speaker_normalization: Standardization | None = None,
        prosody_set: str | None = None,
        prosody_normalization: Standardization | None = None,
        **kwargs: Any,
    ) -> None:
        width = head.config.prosody_features
        if (prosody_set is None) != (width == 0) or (prosody_set is not None and PROSODY_WIDTHS.get(prosody_set) != width):
            raise ValueError(f"prosody_set {prosody_set!r} does not fit a head with prosody_features={width} "
                             f"(the sets' widths: {PROSODY_WIDTHS})")
        speaker_normalization = speaker_normalization or Standardization(name="speaker_normalization")
        if prosody_set is not None:
            prosody_normalization = prosody_normalization or Standardization(name="prosody_normalization")
        segments = keras.Input(shape=(None, *front_end.features.segment_shape), name="segments")
        embeddings = speaker_normalization(encoder(segments))
        if prosody_set is None:
            inputs, probabilities = segments, head(embeddings)
        else:
            prosody = keras.Input(shape=(width,), name="prosody")
            inputs, probabilities = [segments, prosody], head(embeddings, prosody_normalization(prosody))
        super().__init__(inputs=inputs, outputs=probabilities, **kwargs)
        self.front_end = front_end
        if not front_end.built:
            front_end.build((None, None))  # fixed matrices: built now, so they save and load alike
        self.encoder = encoder
        self.speaker_normalization = speaker_normalization
        self.head = head
        self.prosody_set = prosody_set
        self.prosody_normalization = prosody_normalization
        in_graph = prosody_set == "permissive" and front_end.features.sr == PROSODY_SR
        self.prosodic_front_end = ProsodicFrontEnd(name="prosodic_front_end", dtype="float32") if in_graph else None

    @property
    def features(self) -> FeatureConfig:
        """The feature parameters of the front end, and of the segments the model takes."""
        return self.front_end.features

    def embed(self, segments):
        """Segments (batch, segments, frames, n_mels, 3) -> backbone embeddings (batch, segments, features)."""
        return self.encoder(segments)

    def classify(self, embeddings, mean=None, std=None, prosody=None, prosody_mean=None, prosody_std=None, return_attention: bool = False):
        """Embeddings (batch, segments, features), rows of `utils.PAD_VALUE` padding, and prosodic vectors (batch, values) -> probabilities (batch, classes).

        Standardised with ``mean`` and ``std`` (features,), ``prosody_mean`` and
        ``prosody_std`` (values,) when given (a group's own statistics, `RunningStatistics`),
        else with the training speakers' pooled ones. With ``return_attention``, also each
        segment's weight (batch, segments).
        """
        mask = ops.any(ops.not_equal(embeddings, PAD_VALUE), axis=-1)
        return self.head(
            self.speaker_normalization(embeddings, mean, std), self._standardized_prosody(prosody, prosody_mean, prosody_std),
            mask=mask, return_attention=return_attention,
        )

    def predict_waveform(self, waveform, prosody=None, return_attention: bool = False):
        """PCM windows (windows, samples), float32 at ``features.sr``, each row a whole window -> probabilities (windows, classes).

        ``prosody`` (windows, values): the windows' prosodic vectors, needed where
        ``prosodic_front_end`` is None; where it is not, computed from the windows when None.
        """
        if prosody is None and self.prosodic_front_end is not None:
            prosody = self.prosodic_front_end(waveform)
        segments = self.front_end(waveform)
        return self.head(
            self.speaker_normalization(self.encoder(segments)), self._standardized_prosody(prosody), return_attention=return_attention
        )

    def attend(self, segments, prosody=None):
        """Segments (batch, segments, frames, n_mels, 3), padding segments of `utils.PAD_VALUE`, [and prosody (batch, values)] -> probabilities (batch, classes) and each segment's weight (batch, segments).

        The model's own output with the training speakers' statistics, and its attention
        (`ClassifierHead`: learned weights, or an equal share of the real segments).
        """
        embeddings = self.speaker_normalization(self.encoder(segments))
        return self.head(embeddings, self._standardized_prosody(prosody), mask=self.encoder.compute_mask(segments), return_attention=True)

    def _standardized_prosody(self, prosody, mean=None, std=None):
        if self.prosody_set is None:
            return None
        if prosody is None:
            raise ValueError(f"this model joins the {self.prosody_set} prosodic set: pass each utterance's prosody")
        return self.prosody_normalization(prosody, mean, std)

    def with_head(self, head: ClassifierHead) -> EmotionRecognizer:
        """A recogniser with this one's front end, encoder and normalisations (the same layers, shared) and ``head``; not compiled."""
        return EmotionRecognizer(
            self.front_end, self.encoder, head, self.speaker_normalization, self.prosody_set, self.prosody_normalization, name=self.name
        )

    def head_model(self) -> keras.Model:
        """The head as a model of its own for training on precomputed, standardised embeddings (frozen backbone).

        Input "embeddings" float32 (batch, segments, features), rows of `utils.PAD_VALUE`
        padding, and with a prosodic branch "prosody" (batch, values), standardised; output
        probabilities. Shares the head's layers (and weights) with this model.
        """
        embeddings = keras.Input(shape=(None, self.encoder.features), name="embeddings")
        masked = layers.Masking(PAD_VALUE, name="padding_mask")(embeddings)
        if self.prosody_set is None:
            return keras.Model(embeddings, self.head(masked), name=f"{self.name}_head")
        prosody = keras.Input(shape=(self.head.config.prosody_features,), name="prosody")
        return keras.Model([embeddings, prosody], self.head(masked, prosody), name=f"{self.name}_head")

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "prosody_set": self.prosody_set,
            **{part: keras.saving.serialize_keras_object(getattr(self, part)) for part in PARTS},
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> EmotionRecognizer:
        config = dict(config)
        for part in PARTS:
            config[part] = keras.saving.deserialize_keras_object(config.get(part))
        return cls(**config)


PARTS = ("front_end", "encoder", "speaker_normalization", "prosody_normalization", "head")  # the attributes of an EmotionRecognizer, in the order data flows


@keras.saving.register_keras_serializable(package=PACKAGE)
class BackboneScaledAdam(keras.optimizers.Adam):
    """Adam whose steps on the backbone's variables use ``backbone_scale`` times the learning rate.

    For fine-tuning: the pretrained backbone moves more slowly than the freshly initialised
    head. Variables are the backbone's when their path starts with one of ``backbone_prefixes``
    (the backbone model's name and a slash), which keeps the choice in the optimizer's config.

    Example:
    >>> optimizer = BackboneScaledAdam(1e-4, backbone_scale=0.1, backbone_prefixes=["efficientnet_lite0/"])
    """

    def __init__(self, learning_rate=1e-3, *, backbone_scale: float = 1.0, backbone_prefixes: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(learning_rate, **kwargs)
        if backbone_scale < 0:
            raise ValueError(f"backbone_scale must be >= 0, got {backbone_scale!r}")
        self.backbone_scale = float(backbone_scale)
        self.backbone_prefixes = tuple(backbone_prefixes)

    def build(self, variables) -> None:
        super().build(variables)
        # By index, as Adam finds its own slots: update_step may see the backend's variable.
        self._backbone_indices = {
            self._get_variable_index(variable) for variable in variables if variable.path.startswith(self.backbone_prefixes)
        }

    def update_step(self, gradient, variable, learning_rate):
        if self._get_variable_index(variable) in self._backbone_indices:
            learning_rate = ops.multiply(learning_rate, self.backbone_scale)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "backbone_scale": self.backbone_scale, "backbone_prefixes": list(self.backbone_prefixes)}




def compile_recognizer(model: keras.Model, learning_rate: float = LEARNING_RATE, backbone_scale: float = 1.0, backbone_prefix: str = "") -> None:
    """Compile ``model`` (a recogniser, or its `EmotionRecognizer.head_model`) as the recipe trains it: Adam (`BackboneScaledAdam` where the backbone moves at ``backbone_scale`` times ``learning_rate``), cross-entropy, accuracy."""
    optimizer = (
        keras.optimizers.Adam(learning_rate) if backbone_scale == 1.0
        else BackboneScaledAdam(learning_rate, backbone_scale=backbone_scale, backbone_prefixes=[backbone_prefix])
    )
    model.compile(
        optimizer=optimizer,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )

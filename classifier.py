"""The recogniser's head: standardised segment embeddings (and a prosodic vector) -> class probabilities.

`ClassifierHead` is `recognizer.EmotionRecognizer`'s ``head``, described by `heads.HeadConfig`:
the paper's BLSTM with `AttentionPooling`, or `StatisticsPooling` and a logistic regression.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from frontend import PACKAGE
from heads import HeadConfig
from normalization import Standardization

PROSODY_CLIP = 5.0  # standard deviations: standardised prosodic values are clipped to +-this


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

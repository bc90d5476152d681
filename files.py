"""Files written whole or not at all, and folders checked for writing before any work.

Every file this project writes that a later step or a user reads (run folders, cache
entries, results, backups) goes through `write_atomically`: a temporary name in the same
folder, then a rename, so Ctrl-C, a crash or a full disk leaves the old file or none,
never half of one. `folder_problem` and `file_problem` say, before the work starts, why
an output could not be written.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

PARTIAL_SUFFIX = ".partial"  # temporary files of `write_atomically`, beside their final name
PARTIAL_PREFIX = ".partial-"  # folders being written (a run, an unpacked download), renamed when complete
PROJECT_ROOT = Path(__file__).resolve().parent  # default folders (dataset/, saved_model/) live here, whatever the working directory


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed to ``path`` when the block ends without error.

    The temporary name keeps ``path``'s suffixes (Keras and NumPy choose the format by
    them) and is removed when the block raises, Ctrl-C included.
    """
    path = Path(path)
    partial = path.with_name(f".{path.stem}.{os.getpid()}{PARTIAL_SUFFIX}{''.join(path.suffixes[-2:]) or path.suffix}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """An empty scratch folder beside ``folder`` to fill; it replaces ``folder`` when the block ends without error.

    An earlier ``folder`` is moved aside, not removed, until the new one is in place; the
    scratch folder is removed when the block raises, Ctrl-C included.
    """
    folder = Path(folder)
    scratch = folder.with_name(f"{PARTIAL_PREFIX}{folder.name}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        yield scratch
        if folder.exists():
            old = folder.with_name(f"{PARTIAL_PREFIX}old-{folder.name}")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            scratch.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            scratch.rename(folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_atomically(path: str | os.PathLike, data: str | bytes | Callable[[Path], None]) -> None:
    """Write ``data`` (text, bytes, or a function that writes the file at the path it is given) to ``path`` whole or not at all.

    Raises
    ------
    OSError
        If it cannot be written (the old ``path``, if any, is left as it was).
    """
    with atomic_path(path) as partial:
        if isinstance(data, str):
            partial.write_text(data)
        elif isinstance(data, bytes):
            partial.write_bytes(data)
        else:
            data(partial)


def folder_problem(folder: str | os.PathLike) -> str | None:
    """Why files cannot be written into ``folder`` (or, where it is missing, the folders to be made for it); None when they can.

    Tries it without making anything: a file is written into ``folder``, or into the
    nearest folder above it that exists, and removed again, so a read-only file
    system is found too, not only the permission bits.
    """
    folder = Path(folder).absolute()
    if folder.exists() and not folder.is_dir():
        return "is a file, not a folder"
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    if not existing.is_dir():
        return f"cannot be made: {existing} is a file"
    try:
        probe = existing / f".write-test.{os.getpid()}"
        probe.write_bytes(b"\0")
        probe.unlink()
    except OSError as error:
        return f"cannot be written ({error.strerror or error})"
    return None


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be written as a file; None when it can. Its folder must exist, and is tried as `folder_problem` tries one."""
    path = Path(path)
    if path.is_dir():
        return "is a folder; give a file name"
    folder = path.parent
    if not folder.is_dir():
        return f"its folder {folder} does not exist"
    problem = folder_problem(folder)
    return None if problem is None else f"its folder {folder} {problem}"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/dcnn-blstmwa`` (``~/.cache/dcnn-blstmwa`` when unset): features, embeddings and weights, outside any dataset."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "dcnn-blstmwa"


def installed(package: str) -> bool:
    """Whether ``package`` can be imported (without importing it)."""
    return importlib.util.find_spec(package) is not None

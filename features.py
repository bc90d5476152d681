"""Segments for many files at once: every core, and an on-disk cache.

`extract_features` runs `utils.get_framed_log_melspectrogram` over a list of
files (each optionally with an enhancement of its audio) in worker processes and
keeps each result as a plain ``.npy`` file in a cache folder, keyed by the file
(path, size, modification time), the enhancement, every feature parameter and
the versions of the feature code. A second run reads instead of
computing; a changed file or parameter gets a new key and is computed afresh.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Protocol, Union

import librosa
import numpy as np
import soxr
from threadpoolctl import threadpool_limits
from tqdm import tqdm

import utils

logger = logging.getLogger(__name__)

# Bump when the feature code changes its output for the same parameters, so that
# caches written by older code are never served.
FEATURE_CODE_VERSION = 1

# Libraries whose thread pools make fork() unsafe in the process that loaded them.
_THREADED_FRAMEWORKS = ("tensorflow", "jax", "torch")


class AudioTransform(Protocol):
    """A reproducible change of a signal, such as `augment.Enhancement` (a frozen dataclass)."""

    def apply(self, y: np.ndarray, sr: int) -> np.ndarray: ...


# A file, or a file and the transform to apply to its audio before the features.
Source = Union[utils.PathLike, tuple[utils.PathLike, AudioTransform]]
SourceKey = Union[str, tuple[str, AudioTransform]]


def source_key(source: Source) -> SourceKey:
    """How `ExtractedFeatures` names a source: ``str(path)``, or ``(str(path), transform)``."""
    if isinstance(source, tuple):
        path, transform = source
        return str(path), transform
    return str(source)


@dataclasses.dataclass
class ExtractedFeatures:
    """What `extract_features` returns.

    Attributes
    ----------
    segments : dict[SourceKey, np.ndarray [shape=(num_segments, 64, 64, 3), dtype=float32]]
        Features of every usable source, keyed by `source_key` (``str(path)`` for
        a plain file), in the order of the input. Read-only: cached ones are memory maps of
        the cache files (copy with ``np.array(x)`` to modify).
    errors : dict[str, str]
        Files that could not be used, each with the reason (an `utils.AudioError`
        message that names the file).
    cache_hits : int
        How many files were read from the cache instead of computed.
    """

    segments: dict[SourceKey, np.ndarray] = dataclasses.field(default_factory=dict)
    errors: dict[SourceKey, str] = dataclasses.field(default_factory=dict)
    cache_hits: int = 0


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/dcnn-blstmwa`` (``~/.cache/dcnn-blstmwa`` when unset): outside any dataset."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "dcnn-blstmwa"


def cache_key(source: Source, params: dict[str, Any]) -> str | None:
    """Hex digest that identifies the features of ``source`` under ``params``.

    Covers the file (path, size, modification time), the transform's fields,
    every feature parameter and the versions of the feature code. Returns None
    when the file cannot be stat'ed (it is then computed, and fails with a clear
    `utils.AudioError`, without touching the cache).
    """
    path, transform = source if isinstance(source, tuple) else (source, None)
    try:
        status = os.stat(path)
    except OSError:
        return None
    identity = {
        "transform": None if transform is None else [type(transform).__name__, dataclasses.asdict(transform)],
        "path": os.path.abspath(path),
        "size": status.st_size,
        "mtime_ns": status.st_mtime_ns,
        "params": params,
        "code": FEATURE_CODE_VERSION,
        "librosa": librosa.__version__,
        "soxr": soxr.__version__,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def extract_features(
    sources: Iterable[Source],
    *,
    cache_dir: utils.PathLike | None = None,
    workers: int | None = None,
    progress: bool | None = None,
    **feature_params: Any,
) -> ExtractedFeatures:
    """Segments of every file, computed on all cores or read from the cache.

    Parameters
    ----------
    sources : iterable of str or os.PathLike, or of (path, transform) pairs
        Audio files, each optionally with a transform applied to its audio
        (at the feature sample rate) before the features; duplicates are
        computed once.
    cache_dir : str or os.PathLike or None
        Folder for cached features (created when missing); None computes
        everything and caches nothing. Keep it outside the dataset folder:
        datasets are only read.
    workers : int > 0 or None
        Worker processes; None uses every core this process may run on.
    progress : bool or None
        Show a progress bar on stderr; None shows it when stderr is a terminal.
    **feature_params
        Keyword parameters of `utils.get_framed_log_melspectrogram`.

    Returns
    -------
    ExtractedFeatures
        Segments of the usable files and the reason for each unusable one;
        an unusable file is logged once as a warning and skipped.

    Raises
    ------
    TypeError, ValueError
        For an unknown or invalid feature parameter, before any file is read.
    """
    params = utils.feature_parameters(**feature_params)
    # A bad parameter value fails here, once, instead of once per file in the workers.
    utils.get_framed_log_melspectrogram(np.zeros(params["n_fft"], dtype=np.float32), **params)
    if workers is None:
        workers = len(os.sched_getaffinity(0))
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")

    names = list(dict.fromkeys(source_key(source) for source in sources))
    result = ExtractedFeatures()
    found: dict[SourceKey, np.ndarray] = {}
    to_compute: dict[SourceKey, Path | None] = {}
    for name in names:
        cache_file = _cache_file(cache_dir, name, params)
        segments = _read_cached(cache_file)
        if segments is None:
            to_compute[name] = cache_file
        else:
            found[name] = segments
    result.cache_hits = len(found)

    jobs = [(name, cache_file, params) for name, cache_file in to_compute.items()]
    bar = tqdm(total=len(jobs), unit="file", desc="features", disable=None if progress is None else not progress)
    with bar:
        for name, segments, error in _run(jobs, min(workers, len(jobs))):
            bar.update()
            if error is not None:
                logger.warning("skipped: %s", error)
                result.errors[name] = error
            elif segments is None:
                # The worker wrote it to the cache: map it rather than ship it between processes.
                found[name] = _read_cached(to_compute[name])
            else:
                segments.flags.writeable = False  # as read-only as the cached arrays
                found[name] = segments
    result.segments = {name: found[name] for name in names if name in found}
    return result


def _cache_file(cache_dir: utils.PathLike | None, source: SourceKey, params: dict[str, Any]) -> Path | None:
    if cache_dir is None:
        return None
    key = cache_key(source, params)
    if key is None:
        return None
    # Two-character shards keep folders small for corpora of 100k files.
    return Path(cache_dir) / key[:2] / f"{key}.npy"


def _read_cached(cache_file: Path | None) -> np.ndarray | None:
    if cache_file is None:
        return None
    try:
        # A read-only memory map: no copy into fresh memory, the OS page cache
        # serves the data, and nobody can write into the cache through it.
        return np.asarray(np.load(cache_file, mmap_mode="r", allow_pickle=False))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError) as error:
        logger.warning("unreadable cache file %s (%s); recomputing", cache_file, error)
        return None


def _compute(
    job: tuple[SourceKey, Path | None, dict[str, Any]],
) -> tuple[SourceKey, np.ndarray | None, str | None]:
    """Features of one source: (source, segments, None), or (source, None, None)
    once written to the cache file, or (source, None, reason) for an unusable file."""
    source, cache_file, params = job
    path, transform = source if isinstance(source, tuple) else (source, None)
    try:
        y = utils.load_wav(path, sr=params["sr"])
    except utils.AudioError as error:
        return source, None, str(error)
    if transform is not None:
        y = transform.apply(y, params["sr"])
    segments = utils.get_framed_log_melspectrogram(y, **params)
    if cache_file is None:
        return source, segments, None
    write_cache_file(cache_file, segments)
    return source, None, None


def write_cache_file(path: Path, array: np.ndarray) -> None:
    """Save ``array`` as a plain ``.npy`` at ``path``, creating its folder.

    Written then renamed: a crash or a concurrent writer never leaves a partial file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial")
    with open(partial, "wb") as stream:
        np.save(stream, array, allow_pickle=False)
    os.replace(partial, path)


def _run(jobs: list, workers: int) -> Iterable[tuple[SourceKey, np.ndarray | None, str | None]]:
    if workers <= 1:
        yield from map(_compute, jobs)
        return
    chunksize = max(1, min(16, len(jobs) // (workers * 8)))
    with ProcessPoolExecutor(workers, mp_context=_process_context(), initializer=_single_threaded) as pool:
        yield from pool.map(_compute, jobs, chunksize=chunksize)


def _single_threaded() -> None:
    # One BLAS thread per worker: with a process per core, BLAS's own threads
    # only fight over the cores (measured 3x slower on 2 cores).
    threadpool_limits(1)


def _process_context() -> multiprocessing.context.BaseContext:
    # fork starts workers in milliseconds with utils (and librosa) already
    # imported, where a fresh interpreter spends over a second importing them.
    # It is unsafe on macOS and after a framework with its own thread pools was
    # loaded; spawn is the safe start there.
    if sys.platform.startswith("linux") and not any(name in sys.modules for name in _THREADED_FRAMEWORKS):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")

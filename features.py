"""Segments (and backbone embeddings) for many files at once: every core, and an on-disk cache.

`extract_features` runs `utils.get_framed_log_melspectrogram` over a list of
files (each optionally with an enhancement of its audio) in worker processes and
keeps each result in a `FileCache`, keyed by the file (path, size, modification
time), the enhancement, every feature parameter and the versions of the feature
code. A second run reads instead of computing; a changed file or parameter gets a
new key and is computed afresh. `extract_embeddings` does the same for a frozen
backbone's segment embeddings, keyed also by the backbone's weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Union

import librosa
import numpy as np
import soxr
from threadpoolctl import threadpool_limits
from tqdm import tqdm

import files
import utils

if TYPE_CHECKING:
    from cluster import RayEngine

logger = logging.getLogger(__name__)

# Bump when the feature code changes its output for the same parameters, so that
# caches written by older code are never served.
FEATURE_CODE_VERSION = 2  # 2: signals shorter than utils.min_samples are padded to it

EMBEDDING_BATCH_SEGMENTS = 256  # segments per backbone call when embedding
CLUSTER_FILES_PER_CALL = 16  # files a cluster worker computes a call (`cluster.RayEngine`), features or embeddings

# Libraries whose thread pools make fork() unsafe in the process that loaded them.
_THREADED_FRAMEWORKS = ("tensorflow", "jax", "torch")


class EmbeddingError(Exception):
    """A file whose backbone embeddings cannot be used (non-finite values); the message names it."""


class WorkerError(Exception):
    """A worker process that died (a signal such as SIGSEGV or SIGKILL) while computing a file; the message names both."""


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


def source_path(key: SourceKey) -> str:
    """The file of a source named by `source_key` (what an error message names)."""
    return key if isinstance(key, str) else key[0]


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
        Files that could not be used, by ``str(path)``, each with the reason (an
        `utils.AudioError` message that names the file); a file whose enhanced copies
        failed too is listed (and logged) once.
    cache_hits : int
        How many files were read from the cache instead of computed.
    """

    segments: dict[SourceKey, np.ndarray] = dataclasses.field(default_factory=dict)
    errors: dict[str, str] = dataclasses.field(default_factory=dict)
    cache_hits: int = 0


def usable_cache_dir(folder: utils.PathLike) -> Path | None:
    """``folder`` when the cache can be written there; otherwise None, with one warning (the work then runs uncached)."""
    problem = files.folder_problem(folder)
    if problem is None:
        return Path(folder)
    logger.warning("cache folder %s %s: running without a cache (set --cache-dir to a writable folder to keep one)", folder, problem)
    return None


def array_problem(array: np.ndarray, shape: tuple[int | None, ...]) -> str | None:
    """Why ``array`` is not a float32 array of ``shape`` (None: any length) with finite values; None when it is."""
    if array.dtype != np.float32:
        return f"dtype {array.dtype}, not float32"
    if len(array.shape) != len(shape) or any(want is not None and got != want for got, want in zip(array.shape, shape)):
        return f"shape {array.shape}, not {tuple('any' if want is None else want for want in shape)}"
    if 0 in array.shape:
        return "no values"
    if not np.isfinite(array).all():
        return "non-finite values (NaN or infinity)"
    return None


class FileCache:
    """Arrays on disk in a folder: one plain ``.npy`` per key, for features and embeddings alike.

    Keys are hex digests; files sit in two-character shards (folders stay small for
    corpora of 100k files). Writes go to a temporary name and are renamed, so a crash
    or a concurrent writer never leaves a partial file; a write that fails (a full disk)
    is warned about once and the work goes on uncached. Reads are read-only memory maps,
    checked against the shape the caller expects (`array_problem`): a damaged, mis-shaped
    or non-finite entry is treated as missing (computed again) and listed in ``rejected``.
    The object is a folder name only, so it can be sent to worker processes.
    """

    def __init__(self, folder: utils.PathLike) -> None:
        self.folder = Path(folder)
        self.rejected: list[str] = []  # "path: problem" of every entry `read` refused

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    def read(self, key: str, shape: tuple[int | None, ...]) -> np.ndarray | None:
        """The array stored under ``key`` if it is a finite float32 array of ``shape`` (None: any length), else None."""
        path = self.path(key)
        try:
            # A read-only memory map: no copy into fresh memory, the OS page cache
            # serves the data, and nobody can write into the cache through it.
            array = np.asarray(np.load(path, mmap_mode="r", allow_pickle=False))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as error:
            self.rejected.append(f"{path}: unreadable ({error})")
            return None
        problem = array_problem(array, shape)
        if problem is not None:
            self.rejected.append(f"{path}: {problem}")
            return None
        return array

    def write(self, key: str, array: np.ndarray) -> bool:
        """Store ``array`` under ``key``; False (warned once per process) when the cache cannot be written."""
        global _WRITE_FAILED
        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            files.write_atomically(path, lambda partial: np.save(partial, array, allow_pickle=False))
        except OSError as error:
            if not _WRITE_FAILED:
                logger.warning("cannot write to the cache %s (%s): going on without caching", self.folder, error.strerror or error)
            _WRITE_FAILED = True
            return False
        return True

    def report_rejected(self) -> None:
        """One warning for the entries `read` refused since the last report."""
        if self.rejected:
            logger.warning(
                "%d cache entries were unusable and are computed again (such as %s)", len(self.rejected), self.rejected[0]
            )
            self.rejected.clear()


_WRITE_FAILED = False  # a cache write failed in this process: warned once


def cache_key(source: Source, config: utils.FeatureConfig) -> str | None:
    """Hex digest that identifies the features of ``source`` under ``config``.

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
        "params": config.to_dict(),
        "code": FEATURE_CODE_VERSION,
        "librosa": librosa.__version__,
        "soxr": soxr.__version__,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def extract_features(
    sources: Iterable[Source],
    *,
    config: utils.FeatureConfig = utils.DEFAULT_FEATURES,
    cache_dir: utils.PathLike | None = None,
    workers: int | None = None,
    progress: bool | None = None,
    engine: RayEngine | None = None,
) -> ExtractedFeatures:
    """Segments of every file, computed on all cores or read from the cache.

    Parameters
    ----------
    sources : iterable of str or os.PathLike, or of (path, transform) pairs
        Audio files, each optionally with a transform applied to its audio
        (at the feature sample rate) before the features; duplicates are
        computed once.
    config : utils.FeatureConfig
        The feature parameters.
    cache_dir : str or os.PathLike or None
        Folder for cached features (created when missing); None computes
        everything and caches nothing. Keep it outside the dataset folder:
        datasets are only read.
    workers : int > 0 or None
        Worker processes; None uses every core this process may run on.
    progress : bool or None
        Show a progress bar on stderr; None shows it when stderr is a terminal.
    engine : cluster.RayEngine or None
        Compute on the workers of a Ray cluster instead of this machine's processes
        (``workers`` is then unused); what they compute is cached here, as it would be.

    Returns
    -------
    ExtractedFeatures
        Segments of the usable files and the reason for each unusable one;
        an unusable file is logged once as a warning and skipped.
    """
    return _extract(
        sources, functools.partial(_segments, config=config), lambda name: cache_key(name, config),
        (None, *config.segment_shape), config.sr, cache_dir, workers, progress, "features", engine,
    )


def extract_prosody(
    sources: Iterable[Source],
    feature_set: str,
    *,
    config: utils.FeatureConfig = utils.DEFAULT_FEATURES,
    cache_dir: utils.PathLike | None = None,
    workers: int | None = None,
    progress: bool | None = None,
    engine: RayEngine | None = None,
) -> dict[SourceKey, np.ndarray]:
    """Each file's prosodic vector of ``feature_set`` (`prosody.FEATURE_SETS`), computed on all cores or read from the cache.

    The audio is read (and transformed) at ``config.sr``, as for `extract_features`; the
    cache key is the features' (`cache_key`) with the set's name and `prosody.VERSION`;
    ``workers``, ``progress`` and ``engine`` as there.

    Returns
    -------
    vectors : dict[SourceKey, np.ndarray [shape=(prosody.FEATURE_WIDTHS[feature_set],), dtype=float32]]
        Of the usable sources, in input order; an unusable file is logged once and skipped.
    """
    import prosody

    def key(name: SourceKey) -> str | None:
        features_key = cache_key(name, config)
        return None if features_key is None else hashlib.sha256(f"{features_key}:{feature_set}:{prosody.VERSION}".encode()).hexdigest()

    return _extract(
        sources, functools.partial(_prosody, feature_set=feature_set), key, (prosody.FEATURE_WIDTHS[feature_set],),
        config.sr, cache_dir, workers, progress, "prosody", engine,
    ).segments


def _segments(y: np.ndarray, sr: int, config: utils.FeatureConfig) -> np.ndarray:
    return utils.get_framed_log_melspectrogram(y, config)


def _prosody(y: np.ndarray, sr: int, feature_set: str) -> np.ndarray:
    import prosody

    return prosody.FEATURE_SETS[feature_set](y, sr)


def _extract(
    sources: Iterable[Source],
    describe: Callable[[np.ndarray, int], np.ndarray],
    key_of: Callable[[SourceKey], str | None],
    shape: tuple[int | None, ...],
    sr: int,
    cache_dir: utils.PathLike | None,
    workers: int | None,
    progress: bool | None,
    desc: str,
    engine: RayEngine | None = None,
) -> ExtractedFeatures:
    """``describe(audio, sr)`` of every source (its audio at ``sr``, transformed), an array of ``shape``: from the cache under ``key_of(source)``, or computed in worker processes.
    """
    if workers is None:
        workers = len(os.sched_getaffinity(0))
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    cache = None if cache_dir is None else FileCache(cache_dir)

    names = list(dict.fromkeys(source_key(source) for source in sources))
    result = ExtractedFeatures()
    found: dict[SourceKey, np.ndarray] = {}
    to_compute: dict[SourceKey, str | None] = {}
    for name in names:
        key = None if cache is None else key_of(name)
        array = None if key is None else cache.read(key, shape)
        if array is None:
            to_compute[name] = key
        else:
            found[name] = array
    result.cache_hits = len(found)
    if cache is not None:
        cache.report_rejected()

    if engine is None:
        jobs = [(name, key, sr, describe, cache) for name, key in to_compute.items()]
        computed = _run(jobs, min(workers, len(jobs)), desc)
    else:  # the workers send the arrays back, and they are cached here: a cluster's nodes need not share this disk
        jobs = [(name, None, sr, describe, None) for name in to_compute]
        computed = (result for results in engine.map(jobs, _job_computer, items_per_call=CLUSTER_FILES_PER_CALL) for result in results)
    bar = tqdm(total=len(jobs), unit="file", desc=desc, disable=None if progress is None else not progress)
    with bar:
        for name, array, error in computed:
            bar.update()
            if error is not None:
                path = source_path(name)
                if path not in result.errors:  # a file and its enhanced copies fail alike: one report
                    logger.warning("skipped: %s", error)
                    result.errors[path] = error
            elif array is None:
                # The worker wrote it to the cache: map it rather than ship it between processes.
                found[name] = cache.read(to_compute[name], shape)
            else:
                if engine is not None and to_compute[name] is not None:
                    cache.write(to_compute[name], array)
                array.flags.writeable = False  # as read-only as the cached arrays
                found[name] = array
    result.segments = {name: found[name] for name in names if name in found}
    return result


def _compute(
    job: tuple[SourceKey, str | None, int, Callable[[np.ndarray, int], np.ndarray], FileCache | None],
) -> tuple[SourceKey, np.ndarray | None, str | None]:
    """What ``describe`` makes of one source: (source, array, None), or (source, None, None)
    once written to the cache, or (source, None, reason) for an unusable file."""
    source, key, sr, describe, cache = job
    path, transform = source if isinstance(source, tuple) else (source, None)
    try:
        y = utils.load_wav(path, sr=sr)
    except utils.AudioError as error:
        return source, None, str(error)
    if transform is not None:
        y = transform.apply(y, sr)
    array = describe(y, sr)
    if key is None or not cache.write(key, array):
        return source, array, None
    return source, None, None


def _job_computer() -> Callable[[list], list]:
    """On a cluster worker (`_extract`): `_compute` over a call's jobs."""
    return lambda jobs: [_compute(job) for job in jobs]


def encoder_fingerprint(encoder) -> str:
    """Hash of everything that decides a segment's embedding: the encoder layer's configuration (its backbone's included) and weights."""
    import keras

    digest = hashlib.sha256()
    digest.update(json.dumps(keras.saving.serialize_keras_object(encoder), sort_keys=True, default=str).encode())
    for weight in encoder.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


def extract_embeddings(
    embed: Callable[[np.ndarray], np.ndarray],
    segments: dict[SourceKey, np.ndarray],
    *,
    width: int,
    fingerprint: str = "",
    config: utils.FeatureConfig = utils.DEFAULT_FEATURES,
    cache_dir: utils.PathLike | None = None,
    progress: bool | None = None,
    engine: RayEngine | None = None,
    encoder=None,
) -> dict[SourceKey, np.ndarray]:
    """The backbone's embedding of every segment of every source, cached on disk.

    Parameters
    ----------
    embed : callable
        Segments (1, steps, ...) -> embeddings (1, steps, width) as NumPy, such as
        ``SpeechModel.inference_function(model.embed, ...)``; every segment is embedded on its own.
    segments : dict
        What `extract_features` returned in ``.segments``.
    width : int > 0
        Length of one segment's embedding.
    fingerprint : str
        What identifies the encoder (`encoder_fingerprint`): part of the cache key.
    config : utils.FeatureConfig
        The parameters the segments were made with (part of the cache key).
    cache_dir : str or os.PathLike or None
        Folder for cached embeddings, keyed by the features' key and ``fingerprint``;
        None caches nothing.
    progress : bool or None
        As in `extract_features`.
    engine : cluster.RayEngine or None
        Embed on the workers of a Ray cluster, each with a copy of ``encoder`` (its
        configuration and weights: `encoder.SegmentEncoder`) built once, instead of
        ``embed`` here; the embeddings come back and are cached here.
    encoder : encoder.SegmentEncoder or None
        What ``embed`` runs, for ``engine``.

    Returns
    -------
    embeddings : dict[SourceKey, np.ndarray [shape=(steps, width), dtype=float32]]
        In the order of ``segments``. Segments of many utterances go through the
        backbone together, up to `EMBEDDING_BATCH_SEGMENTS` per call.
    """
    cache = None if cache_dir is None or not fingerprint else FileCache(cache_dir)
    keys, embeddings, missing = {}, {}, []
    for source in segments:
        feature_key = None if cache is None else cache_key(source, config)
        keys[source] = None if feature_key is None else hashlib.sha256(f"{feature_key}:{fingerprint}".encode()).hexdigest()
        cached = None if keys[source] is None else cache.read(keys[source], (len(segments[source]), width))
        if cached is None:
            missing.append(source)
        else:
            embeddings[source] = cached
    if cache is not None:
        cache.report_rejected()
    if missing:
        logger.info("embedding %d utterances with the backbone (%d cached)", len(missing), len(embeddings))
    if engine is None:
        chunks: list[list[SourceKey]] = [[]]
        for source in missing:
            if chunks[-1] and sum(len(segments[item]) for item in chunks[-1]) + len(segments[source]) > EMBEDDING_BATCH_SEGMENTS:
                chunks.append([])
            chunks[-1].append(source)
        embedded = (list(zip(chunk, _embed_together(embed, [segments[item] for item in chunk]))) for chunk in filter(None, chunks))
    else:
        import keras

        make_embed = functools.partial(
            _encoder_on_worker, keras.saving.serialize_keras_object(encoder), encoder.get_weights(), config.segment_shape
        )
        # Items of a few files a call: the segments travel to the workers and the embeddings back.
        embedded = engine.map([(item, np.asarray(segments[item])) for item in missing], make_embed, items_per_call=CLUSTER_FILES_PER_CALL)
    with tqdm(total=len(missing), unit="file", desc="embeddings", disable=None if progress is None else not progress) as bar:
        for chunk in embedded:
            for item, part in chunk:
                if not np.isfinite(part).all():
                    raise EmbeddingError(f"{source_path(item)}: the backbone gave non-finite embeddings (NaN or infinity)")
                embeddings[item] = part
                if keys[item] is not None:
                    cache.write(keys[item], part)
            bar.update(len(chunk))
    return {source: embeddings[source] for source in segments}


def _embed_together(embed: Callable[[np.ndarray], np.ndarray], arrays: list[np.ndarray]) -> list[np.ndarray]:
    """The embeddings of several sources' segments, computed in one ``embed`` call."""
    output = np.asarray(embed(np.concatenate(arrays)[np.newaxis]))[0].astype(np.float32)
    return np.split(output, np.cumsum([len(array) for array in arrays])[:-1])


def _encoder_on_worker(serialized: dict, weights: list[np.ndarray], segment_shape: tuple[int, ...]) -> Callable[[list], list]:
    """On a cluster worker (`extract_embeddings`): the encoder rebuilt from its configuration and weights, and a function
    from a call's (source, segments) items to (source, embeddings)."""
    import keras

    from SpeechModel import SpeechModel  # registers the model's layers, which the configuration names

    encoder = keras.saving.deserialize_keras_object(serialized)
    encoder.build((None, None, *segment_shape))
    encoder.set_weights(weights)
    embed = SpeechModel.inference_function(encoder, (None, *segment_shape))
    return lambda items: list(zip([source for source, _ in items], _embed_together(embed, [array for _, array in items])))


def _run(jobs: list, workers: int, desc: str) -> Iterable[tuple[SourceKey, np.ndarray | None, str | None]]:
    if workers <= 1:
        yield from map(_compute, jobs)
        return
    chunksize = max(1, min(16, len(jobs) // (workers * 8)))
    context = _process_context()
    # Per worker slot: its pid and the index of the job it is on (-1: none), in shared memory, so
    # that a worker that dies says which file it died on.
    on_job = context.Array("q", [-1] * 2 * workers, lock=False)
    slots = context.Value("i", 0)
    pool = ProcessPoolExecutor(max(1, workers), mp_context=context, initializer=_start_worker, initargs=(on_job, slots))
    with _workers_ignore_ctrl_c():
        results = pool.map(_compute_tracked, enumerate(jobs), chunksize=chunksize)  # starts the workers
    # The worker processes, for their exit codes: the pool keeps them in a private attribute and
    # its error names no signal (Python 3.11).
    processes = list((getattr(pool, "_processes", None) or {}).values())
    try:
        yield from results
    except BrokenProcessPool:
        pool.shutdown(wait=True, cancel_futures=True)  # joins the workers: their exit codes are known after it
        raise WorkerError(_crash_report(jobs, processes, on_job, desc)) from None
    except BaseException:
        # Ctrl-C (or an error) here: drop the queued work instead of finishing it first.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _crash_report(jobs: list, processes: list[multiprocessing.process.BaseProcess], on_job, desc: str) -> str:
    """One line: the file a dead worker was on and the signal that ended it."""
    ended = [(process.pid, process.exitcode) for process in processes if process.exitcode]
    # Once one worker died the pool terminates (SIGTERM) the others: the cause is the one ended otherwise.
    ended.sort(key=lambda pid_and_code: pid_and_code[1] == -signal.SIGTERM)
    pid, code = ended[0] if ended else (None, None)
    if code is not None and code > 0:  # the worker's Python stopped it, and printed why
        how, cause = f"ended with exit code {code}", "its error is printed above"
    else:
        name = "abruptly" if code is None else signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        how, cause = f"killed by {name}", "a crash in a native library such as numba's JIT, or the system out of memory"
    job_index = {on_job[2 * i]: on_job[2 * i + 1] for i in range(len(on_job) // 2)}.get(pid, -1)
    where = f"{source_path(jobs[job_index][0])}: a {desc} worker process was {how} while computing it" if job_index >= 0 else (
        f"a {desc} worker process was {how} before its first file or between files")
    return f"{where} ({cause})"


def _start_worker(on_job, slots) -> None:
    global _ON_JOB
    with slots.get_lock():
        slot = slots.value
        slots.value += 1
    _ON_JOB = (on_job, 2 * slot)
    on_job[2 * slot] = os.getpid()
    _single_threaded()


_ON_JOB = None  # in a worker: the shared slots and this worker's offset in them (`_start_worker`)


def _compute_tracked(indexed_job: tuple[int, tuple]) -> tuple[SourceKey, np.ndarray | None, str | None]:
    index, job = indexed_job
    on_job, offset = _ON_JOB
    on_job[offset + 1] = index
    result = _compute(job)
    on_job[offset + 1] = -1
    return result


@contextlib.contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Start worker processes with Ctrl-C ignored: the parent alone reacts to it.

    Ctrl-C reaches the whole process group; a worker still importing its libraries would
    print a traceback of its own. An ignored signal stays ignored across fork and exec,
    and Python leaves it so, so the workers are quiet from their first instruction.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _single_threaded() -> None:
    # One BLAS thread per worker: with a process per core, BLAS's own threads
    # only fight over the cores (measured 3x slower on 2 cores).
    threadpool_limits(1)


def _process_context() -> multiprocessing.context.BaseContext:
    # fork starts workers in milliseconds with utils (and librosa's feature code) already
    # imported, where a fresh interpreter spends over a second importing them.
    # It is unsafe on macOS and after a framework with its own thread pools was
    # loaded; spawn is the safe start there.
    if sys.platform.startswith("linux") and not any(name in sys.modules for name in _THREADED_FRAMEWORKS):
        # librosa loads its feature code on first use: here, once, rather than in every worker.
        librosa.feature.melspectrogram, librosa.feature.delta, librosa.effects.preemphasis  # noqa: B018
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")

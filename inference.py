"""Predict the emotion of audio files and signals with a trained DCNN-BLSTMwA run: the library behind infer.py.

Steps of `predict`: find the run (the newest complete one in saved_model/ by default), list
the audio files (folders recursively), cut long files into windows, compute each window's
segments with the parameters of the run's front end (in background threads, overlapping
the model), run windows of similar length through the model together, and combine a
file's windows weighted by their duration. `predict_signal` does the same for audio
already in memory, `enrol` makes a speaker's statistics of a few recordings, and
`predict_on_cluster` spreads files over the workers of a Ray cluster.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import logging
import os
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

import batching
import cluster
import export
import results
import runs
import utils
from errors import UsageError
from mixed_precision import PRECISIONS
from runs import Run, load_newest_run, load_run

logger = logging.getLogger("inference")

BATCH_WINDOWS = 16  # windows per model call, at most
# Segments per model call, at most: the backbone's activations, not the audio, set the
# memory of inference (about 12 MB a segment at 224x224 on TensorFlow's CPU kernels).
BATCH_SEGMENTS = 32
PENDING_BATCHES = 2  # batches' worth of windows gathered before choosing one of similar lengths (more costs memory on long files)
FILES_PER_CALL = 4  # files a cluster worker predicts a call (--engine ray): a finished call is written at once
PROGRESS_DELAY = 2.0  # seconds of work before a progress bar appears (quick runs show none)


SPEAKER_NORM_MODES = ("none", "folder", "file")  # whose statistics standardise the embeddings: see predict
CLUSTER_SPEAKER_NORMS = ("none", "file")  # the modes --engine ray serves: the others group files of several calls
RUNTIMES = ("keras", *export.RUNTIMES)  # what runs the model: model.keras, or its export
SPEAKER = "speaker"  # predict's mode for a corpus whose reader knows each file's speaker (evaluate.py); no CLI choice
LOW_BIT_SUBTYPES = ("PCM_U8", "PCM_S8", "ULAW", "ALAW")  # 8-bit sample formats
# Warnings a prediction may carry: it is still made, but on input unlike what models train on.
SILENT, TOO_SHORT, LOW_SAMPLE_RATE, EIGHT_BIT = "silent", "too short", "low sample rate", "8-bit"
# A grouped --speaker-norm where a window is its group's only one: standardised by its own
# statistics it would lose what tells it apart (measured: chance with the statistics head),
# so it is standardised with the training speakers' statistics instead.
ALONE_IN_GROUP = "alone in its group: training speakers' statistics"


class InferenceError(UsageError):
    """A path a user gave that holds nothing to predict (missing, or a folder without audio). Exit code 2."""


@dataclasses.dataclass(frozen=True)
class WindowPrediction:
    """The model's view of one window of a file: ``start``/``end`` in seconds, class probabilities."""

    start: float
    end: float
    probabilities: np.ndarray
    peak: float = 0.0  # largest absolute sample of the window (full scale 1)
    attention: np.ndarray | None = None  # each segment's weight (segments,), in time order: predict(attention=True)


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One file's result: its emotion and class probabilities, or why it could not be used.

    Attributes
    ----------
    path : str
    emotion : str or None
        The most probable class; None when ``error`` is set.
    confidence : float
        Probability of ``emotion`` (0 when ``error`` is set).
    probabilities : dict[str, float]
        Every class's probability, in the run's label order; they sum to 1.
    duration : float, in seconds
    windows : list of WindowPrediction
        The windows the file was cut into, in time order; contiguous, covering it.
    error : str or None
        Why the file was skipped (the message names the file).
    warnings : tuple of str
        Why the prediction deserves less trust: `SILENT` (no signal above -80 dBFS),
        `TOO_SHORT` (shorter than one segment, so padded), `LOW_SAMPLE_RATE` (recorded
        below the rate the run's features use), `EIGHT_BIT` (8-bit samples),
        `ALONE_IN_GROUP` (a grouped ``speaker_norm`` where the file's one window is its
        group's only one: standardised with the training speakers' statistics instead).
    """

    path: str
    emotion: str | None
    confidence: float
    probabilities: dict[str, float]
    duration: float
    windows: list[WindowPrediction]
    error: str | None = None
    warnings: tuple[str, ...] = ()

    def top(self, k: int) -> list[tuple[str, float]]:
        """The ``k`` most probable emotions with their probabilities."""
        return sorted(self.probabilities.items(), key=lambda item: -item[1])[:k]


# ---------------------------------------------------------------- files and windows


def audio_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, and the audio files under folders (recursively, sorted), without repeats.

    Raises
    ------
    InferenceError
        If a path does not exist, or a folder holds no audio file.
    """
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if path.is_dir():
            inside = utils.find_audio_files(path)
            if not inside:
                raise InferenceError(f"{path} holds no audio files ({', '.join(utils.AUDIO_EXTENSIONS)})")
            found.update(dict.fromkeys(inside))
        elif path.exists():
            found[path] = None
        else:
            raise InferenceError(f"{path}: no such file or folder")
    return list(found)


def window_spans(duration: float, window: float = utils.WINDOW_SECONDS) -> list[tuple[float, float]]:
    """Contiguous, equal (start, end) spans in seconds that cover ``duration``, each about ``window`` long.

    As many as the nearest whole number of windows (`utils.window_count`, at least one),
    so every span but a short file's only one lasts between 2/3 and 1.5 windows: the
    windows the exported models cut a recording into (`frontend.split_windows`).
    """
    if window <= 0:
        raise ValueError(f"window must be > 0 seconds, got {window!r}")
    count = int(utils.window_count(duration, window))
    return [(duration * index / count, duration * (index + 1) / count) for index in range(count)]


@dataclasses.dataclass(frozen=True)
class Enrolment:
    """A speaker's mean embedding and mean prosodic vector, from a few of their recordings (`enrol`).

    Standardises that speaker's other recordings in place of the training speakers' means
    (the deviations stay the training speakers': a few files' are too noisy), as training
    standardised every speaker with their own statistics.
    """

    mean: np.ndarray  # (features,)
    prosody_mean: np.ndarray | None  # (values,), for a run with a prosodic branch
    files: int
    seconds: float


def enrol(paths: Sequence[str | os.PathLike], run: Run, *, window: float = utils.WINDOW_SECONDS) -> Enrolment:
    """The `Enrolment` of the speaker of ``paths`` (files and folders): every window of every readable file.

    A few seconds of the speaker's speech, whatever its emotions: three recordings scored
    0.57 UAR on RAVDESS where each file alone scored 0.48, and no better than the file alone on
    emodb-dev's 2 s files (docs/RESULTS.md).
    An unreadable file is logged once (a warning) and left out.

    Raises
    ------
    InferenceError
        If a path is missing, or no file is readable.
    UsageError
        If the run was not trained with per-speaker statistics (its means mean nothing to it).
    """
    from normalization import RunningStatistics

    if not run.speaker_norm:
        raise UsageError(f"--enroll: run {run.folder} was not trained with --speaker-norm, so a speaker's statistics mean nothing to it; drop --enroll")
    files = audio_files(paths)
    jobs, failed = [], {}
    for index, path in enumerate(files):
        try:
            jobs += [_Window(index, start, end) for start, end in window_spans(utils.audio_info(path).duration, window)]
        except utils.AudioError as error:
            failed[index] = str(error)
    windows: dict[int, list[_Window]] = {}
    for item in _computed(jobs, files, run):
        if item.error is not None:
            failed.setdefault(item.file, item.error)
        else:
            windows.setdefault(item.file, []).append(item)
    for error in failed.values():
        logger.warning("skipped enrolment file: %s", error)
    used = [members for index, members in windows.items() if index not in failed]
    if not used:
        raise InferenceError(f"--enroll: none of the {len(files)} enrolment files could be read; give recordings of the speaker")
    items = [item for members in used for item in members]
    embeddings = RunningStatistics.of(run.embed(item.segments[np.newaxis])[0] for item in items)
    prosody_mean = None if run.prosody_set is None else RunningStatistics.of(item.prosody[np.newaxis] for item in items).mean
    return Enrolment(embeddings.mean, prosody_mean, len(used), sum(item.end - item.start for item in items))


# ---------------------------------------------------------------- prediction


@dataclasses.dataclass
class _Window:
    file: int
    start: float
    end: float
    segments: np.ndarray | None = None
    error: str | None = None
    peak: float = 0.0  # largest absolute sample
    audio: np.ndarray | None = None  # the window's samples, for an exported model (segments are then not computed)
    prosody: np.ndarray | None = None  # the window's prosodic vector, for a run with a prosodic branch
    attention: np.ndarray | None = None  # each segment's weight, when asked for


def predict(
    paths: Sequence[str | os.PathLike],
    model_dir: str | os.PathLike | Run | None = None,
    *,
    window: float = utils.WINDOW_SECONDS,
    batch_size: int = BATCH_WINDOWS,
    precision: str = "float32",
    speaker_norm: str = "none",
    speakers: Sequence[Hashable] | None = None,
    enrolment: Enrolment | None = None,
    runtime: str = "keras",
    progress: bool | None = None,
    attention: bool = False,
) -> list[Prediction]:
    """The emotion of every audio file in ``paths`` (files, and folders searched recursively).

    Files are read a window at a time in background threads, and windows of
    different files with close segment counts share a model call.

    Parameters
    ----------
    paths : sequence of str or os.PathLike
    model_dir : str or os.PathLike or Run or export.ExportedRun or None
        A run folder of train.py (or one already loaded: `load`); None takes the newest
        usable run in saved_model/.
    window : float > 0, in seconds
        Files longer than this are cut into windows (see `window_spans`); the file's
        probabilities are the windows' weighted by their duration.
    batch_size : int > 0
        Windows per model call.
    precision : "float32", "bfloat16" or "float16"
        How the model computes: when ``model_dir`` is loaded here (see `runs.load_run`), and
        with ``runtime="openvino"`` (float32 or bfloat16; the other exports compute in float32).
    speaker_norm : "none", "folder", "file" or "speaker"
        For a run trained with ``--speaker-norm``: standardise the segment embeddings with
        the statistics of all files in the same folder (one folder = one speaker), of the
        file's own windows (one long recording = one speaker), of all files of the same
        speaker in ``speakers`` ("speaker"), or ("none") of the training speakers, as the
        exported model does. The grouped modes are what training did and score best; they
        assume the grouping is right. A window alone in its group is standardised with the
        training speakers' statistics (`ALONE_IN_GROUP`, one warning logged); folders named
        after emotions are refused for "folder" (their statistics would be the classes').
    speakers : sequence of hashable or None
        With ``speaker_norm="speaker"`` (and only then): the speaker of each file, in the
        order of ``paths``, which must then be files.
    enrolment : Enrolment or None
        One speaker's means (`enrol`): every file is theirs, each window standardised with
        them; with ``speaker_norm="none"`` only.
    runtime : "keras", "onnxruntime", "openvino" or "litert"
        What runs the model: the run's model.keras, or its export (`export.RUNTIMES`, made
        once into the run folder where missing, by a process of its own: this one imports
        neither TensorFlow nor Keras) fed each window's audio; the exports standardise with
        the training speakers' statistics, so only with ``speaker_norm="none"``.
    progress : bool or None
        Progress bar on stderr; None shows it when stderr is a terminal and the work takes over `PROGRESS_DELAY` seconds.
    attention : bool
        Also give each window's segment weights (`WindowPrediction.attention`), from the same
        model call; with ``runtime="keras"``, ``speaker_norm="none"`` and no ``enrolment``.

    Returns
    -------
    predictions : list of Prediction
        One per file, in the order of `audio_files`; unusable files carry ``error``.

    Raises
    ------
    InferenceError
        A missing path or a folder without audio.
    runs.RunError
        No usable run, a folder that is not a run, or a damaged run.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    files = audio_files(paths)
    if speaker_norm not in (*SPEAKER_NORM_MODES, SPEAKER):
        raise ValueError(f"speaker_norm must be one of {(*SPEAKER_NORM_MODES, SPEAKER)}, got {speaker_norm!r}")
    if (speaker_norm == SPEAKER) != (speakers is not None) or (speakers is not None and len(speakers) != len(files)):
        raise ValueError(f"speakers, one per file, go with speaker_norm={SPEAKER!r} (got {speaker_norm!r} and "
                         f"{'no' if speakers is None else len(speakers)} speakers for {len(files)} files)")
    refuse_contradictions(runtime, speaker_norm, enrolment is not None, precision)
    if attention and (runtime != "keras" or speaker_norm != "none" or enrolment is not None):
        raise ValueError(f"attention comes with runtime='keras', speaker_norm='none' and no enrolment, got {runtime!r}, {speaker_norm!r}")
    run = load(model_dir, runtime, window=window, precision=precision)
    # An export (runtime other than keras) serves speaker_norm "none" only, refused otherwise just above.
    if speaker_norm != "none" and not run.speaker_norm:
        raise UsageError(f"--speaker-norm {speaker_norm}: run {run.folder} was not trained with --speaker-norm; use none")
    group_of: Callable[[int], Hashable] | None = {  # a file's group, by its index, in the grouped modes
        "folder": lambda index: files[index].parent,
        "file": lambda index: index,
        SPEAKER: lambda index: speakers[index],
    }.get(speaker_norm)
    if speaker_norm == "folder":
        refuse_class_folders({path.parent for path in files})
    durations: list[float] = []
    errors: dict[int, str] = {}
    warnings: dict[int, list[str]] = {index: [] for index in range(len(files))}
    jobs: list[_Window] = []
    for index, path in enumerate(files):
        try:
            info = utils.audio_info(path)
        except utils.AudioError as error:
            durations.append(0.0)
            errors[index] = str(error)
            continue
        durations.append(info.duration)
        warnings[index] += _recording_warnings(info.duration, info.sample_rate, run.features)
        if info.subtype in LOW_BIT_SUBTYPES:
            warnings[index].append(EIGHT_BIT)
        jobs += [_Window(index, start, end) for start, end in window_spans(info.duration, window)]
    if group_of is not None:
        windows_in_group = Counter(group_of(job.file) for job in jobs)
        alone = sorted({job.file for job in jobs if windows_in_group[group_of(job.file)] == 1})
        for index in alone:
            warnings[index].append(ALONE_IN_GROUP)
        if alone:
            logger.warning(
                "--speaker-norm %s: %d of %d files are one window alone in their group, which standardised by itself loses what "
                "tells emotions apart: standardised with the training speakers' statistics instead (as --speaker-norm none)",
                speaker_norm, len(alone), len(files),
            )

    from tqdm import tqdm

    windows: dict[int, list[WindowPrediction]] = {index: [] for index in range(len(files))}
    # disable=None: tqdm shows the bar on a terminal only, never in a log or a pipe.
    bar = tqdm(total=len(jobs), unit="window", desc="inference", disable=None if progress is None else not progress, delay=PROGRESS_DELAY)
    with bar:
        if isinstance(run, export.ExportedRun):
            forwarded = _forward_exported(jobs, files, run)
        elif enrolment is not None:
            forwarded = _forward_standardized(jobs, files, run, lambda job: job.file, batch_size, enrolment)
        elif speaker_norm == "none":
            forwarded = _forward_windows(_computed(jobs, files, run), run, batch_size, attention=attention)
        else:
            forwarded = _forward_standardized(jobs, files, run, lambda job: group_of(job.file), batch_size)
        for item, probabilities in forwarded:
            if probabilities is None:
                errors.setdefault(item.file, item.error)
            elif not np.isfinite(probabilities).all():
                errors.setdefault(item.file, non_finite(files[item.file], item))
            else:
                windows[item.file].append(WindowPrediction(item.start, item.end, probabilities, item.peak, item.attention))
            bar.update()
    return [
        _combine(str(path), durations[index], windows[index], run.labels, errors.get(index), warnings[index])
        for index, path in enumerate(files)
    ]


def predict_on_cluster(
    paths: Sequence[Path],
    run: Run | export.ExportedRun,
    log: results.ResultLog,
    record: Callable[[Prediction], dict[str, Any] | list[dict[str, Any]]],
    *,
    runtime: str,
    address: str | None = None,
    workers: int | None = None,
    window: float = utils.WINDOW_SECONDS,
    batch_size: int = BATCH_WINDOWS,
    speaker_norm: str = "none",
    progress: bool | None = None,
    verbose: bool = False,
) -> tuple[list[Prediction], Counter[str]]:
    """`predict` of every file of ``paths`` not in ``log`` yet, on the workers of a Ray cluster, each result appended to ``log`` as it comes.

    The cluster is `cluster.RayEngine` (``address``, ``workers``, ``verbose``), started
    only when some file is left to predict. Every worker loads ``run`` (from its folder,
    with ``runtime``) once and predicts `FILES_PER_CALL` files a call exactly as `predict`
    does here. ``record`` turns a prediction into what ``log`` holds (a record, or a list
    of them). ``speaker_norm`` is "none" or "file": the grouped modes need files of several
    calls together (`CLUSTER_SPEAKER_NORMS`).

    Returns
    -------
    failed : list of Prediction
        The files that could not be used (each with ``error``); not in ``log``, so a rerun tries them again.
    nodes : Counter
        Files predicted per node.
    """
    if speaker_norm not in CLUSTER_SPEAKER_NORMS:
        raise ValueError(f"speaker_norm must be one of {CLUSTER_SPEAKER_NORMS} on a cluster, got {speaker_norm!r}")
    done = log.done()
    todo = [str(path) for path in paths if str(path) not in done]
    if len(todo) < len(paths):
        logger.warning("--output %s holds %d of the %d files already: predicting the other %d", log.path, len(paths) - len(todo), len(paths), len(todo))
    if not todo:
        return [], Counter()
    failed: dict[str, Prediction] = {}
    from tqdm import tqdm

    make_predictor = functools.partial(_file_predictor, str(run.folder), runtime, window, batch_size, speaker_norm)
    bar = tqdm(total=len(todo), unit="file", desc="inference", disable=None if progress is None else not progress, delay=PROGRESS_DELAY)
    with cluster.RayEngine(address, workers=workers, verbose=verbose) as engine, bar:
        for predictions in engine.map(todo, make_predictor, items_per_call=FILES_PER_CALL):
            # A call that Ray ran again after its worker died may come twice: each file is written (or reported) once.
            failed.update((prediction.path, prediction) for prediction in predictions if prediction.error is not None)
            good = [prediction for prediction in predictions if prediction.error is None and prediction.path not in log]
            log.append([row for prediction in good for row in _as_list(record(prediction))])
            bar.update(len(predictions))
    return list(failed.values()), engine.nodes


def _file_predictor(folder: str, runtime: str, window: float, batch_size: int, speaker_norm: str) -> Callable[[list[str]], list[Prediction]]:
    """On a worker (`predict_on_cluster`): the run loaded once, and a function that predicts a list of files with it."""
    run = load(folder, runtime, window=window)
    return lambda paths: predict(paths, run, window=window, batch_size=batch_size, speaker_norm=speaker_norm, runtime=runtime, progress=False)


def _as_list(record: dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return record if isinstance(record, list) else [record]


def refuse_contradictions(runtime: str, speaker_norm: str, enrolled: bool, precision: str) -> None:
    """Refuse, in one line naming the flags, a request that ``runtime`` cannot do: the exports standardise with the training speakers' statistics, in their own precisions.

    Raises
    ------
    UsageError
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if enrolled and speaker_norm != "none":
        raise UsageError(f"--enroll gives every file the enrolled speaker's statistics: drop --speaker-norm {speaker_norm}")
    if runtime != "keras" and (speaker_norm != "none" or enrolled):
        asked, fix = ("--enroll", "drop --enroll") if enrolled else (f"--speaker-norm {speaker_norm}", "use --speaker-norm none")
        raise UsageError(f"--runtime {runtime} runs the exported model, which standardises with the training speakers' statistics: "
                         f"{fix}, or --runtime keras for {asked}")
    if precision not in {"keras": PRECISIONS, "openvino": tuple(export.OPENVINO_PRECISIONS)}.get(runtime, ("float32",)):
        raise UsageError(f"--precision {precision} with --runtime {runtime}: ONNX Runtime and LiteRT compute in float32, "
                         f"OpenVINO in {' or '.join(export.OPENVINO_PRECISIONS)}; --runtime keras takes every --precision")


def load(
    model_dir: str | os.PathLike | Run | export.ExportedRun | None, runtime: str = "keras", *, window: float = utils.WINDOW_SECONDS, precision: str = "float32"
) -> Run | export.ExportedRun:
    """The run ``predict`` uses: ``model_dir`` (a folder, a loaded run, or None for the newest) as its model.keras (`runs.Run`) or, for another ``runtime``, its export (`export.ExportedRun`, which loads neither TensorFlow nor Keras)."""
    if runtime == "keras":
        if isinstance(model_dir, Run):
            return model_dir
        return load_run(model_dir, precision=precision) if model_dir is not None else load_newest_run(precision=precision)
    if isinstance(model_dir, export.ExportedRun):
        return model_dir
    folder = model_dir.folder if isinstance(model_dir, Run) else Path(model_dir) if model_dir is not None else runs.newest_run_folder()
    runs.check_run_folder(folder)
    return export.load_exported_run(folder, runtime, window, precision)


def refuse_class_folders(folders: Iterable[Path]) -> None:
    """Refuse ``--speaker-norm folder`` over folders that are all named after emotions (``angry/``, ``sad/``).

    Raises
    ------
    UsageError
        Such a folder holds one class: its statistics would be the class's own, and
        standardising by them would take away the emotion the model is to find.
    """
    from corpora.folders import is_class_folder

    folders = sorted(set(folders))
    if folders and all(is_class_folder(folder) for folder in folders):
        raise UsageError(
            f"--speaker-norm folder: the folders ({', '.join(folder.name + '/' for folder in folders[:4])}"
            f"{', ...' if len(folders) > 4 else ''}) are named after emotions, and standardising each class by itself "
            "takes away what tells them apart; put each speaker's recordings in a folder of their own, or use --speaker-norm none"
        )


def predict_signal(
    y: np.ndarray,
    sr: int,
    run: Run,
    *,
    name: str = "<signal>",
    window: float = utils.WINDOW_SECONDS,
    batch_size: int = BATCH_WINDOWS,
) -> Prediction:
    """The emotion of audio held in memory, exactly as `predict` would give it for a file.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]
        Mono audio, float in [-1, 1].
    sr : int > 0, in Hz
        Its sample rate; resampled to the run's when they differ.
    run : runs.Run
        From `runs.load_run`.
    name : str
        What the prediction's ``path`` says.
    window, batch_size
        As in `predict`.

    Returns
    -------
    Prediction
    """
    y = np.asarray(y, dtype=np.float32)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"y must be a non-empty mono signal of shape (n,), got shape {y.shape}")
    y = utils.resample(y, sr, run.features.sr)
    duration = len(y) / run.features.sr
    spans = window_spans(duration, window)
    pieces = [y[int(round(start * run.features.sr)) : int(round(end * run.features.sr))] for start, end in spans]
    jobs = []
    for (start, end), piece in zip(spans, pieces):
        segments, prosody = run.preprocess(piece)
        jobs.append(_Window(0, start, end, segments=segments, peak=_peak(piece), prosody=prosody))
    windows, error = [], None
    for item, probabilities in _forward_windows(jobs, run, batch_size):
        if not np.isfinite(probabilities).all():
            error = error or non_finite(name, item)
        windows.append(WindowPrediction(item.start, item.end, probabilities, item.peak))
    return _combine(name, duration, windows, run.labels, error, _recording_warnings(duration, sr, run.features))


def non_finite(path: str | os.PathLike, window: _Window) -> str:
    """The error of a file whose model output is not a probability (a damaged model or non-finite audio)."""
    return f"{path}: the model gave non-finite probabilities (NaN) for {window.start:.2f}-{window.end:.2f} s; no emotion is given"


def _forward_windows(
    windows: Iterable[_Window], run: Run, batch_size: int, *, attention: bool = False
) -> Iterator[tuple[_Window, np.ndarray | None]]:
    """Each window with its class probabilities (None for one with an error), in batches of similar length.

    A batch holds at most `BATCH_SEGMENTS` segments (padding included), or one window. With
    ``attention``, each window's segment weights are set on it.
    """
    pending = PENDING_BATCHES * batch_size
    for batch in batching.similar_length_batches(windows, batch_size, length=_length, pending=pending):
        usable = [item for item in batch if item.error is None]
        for part in batching.within_budget(usable, BATCH_SEGMENTS, length=_length):
            prosody = None if run.prosody_set is None else np.stack([item.prosody for item in part])
            segments = batching.pad_batch([item.segments for item in part])
            if not attention:
                yield from zip(part, run.forward(segments, prosody))
                continue
            probabilities, weights = run.forward(segments, prosody, return_attention=True)
            for item, row in zip(part, weights):
                item.attention = row[: len(item.segments)]
            yield from zip(part, probabilities)
        yield from ((item, None) for item in batch if item.error is not None)


def _forward_standardized(
    jobs: list[_Window], files: list[Path], run: Run, group: Callable[[_Window], object], batch_size: int,
    enrolment: Enrolment | None = None,
) -> Iterator[tuple[_Window, np.ndarray | None]]:
    """Each window with its class probabilities, its embeddings standardised with its group's statistics, or with ``enrolment``'s means.

    A group (a folder, a file, a speaker) is embedded whole first: its statistics need every window.
    A window alone in its group takes the training speakers' statistics (`ALONE_IN_GROUP`). With
    ``enrolment`` the groups only batch the model calls.
    """
    from normalization import GroupStatistics

    groups: dict[object, list[_Window]] = {}
    for job in jobs:
        groups.setdefault(group(job), []).append(job)
    for members in groups.values():
        computed = list(_computed(members, files, run))
        usable = [item for item in computed if item.error is None]
        yield from ((item, None) for item in computed if item.error is not None)
        if not usable:
            continue
        embeddings = [run.embed(item.segments[np.newaxis])[0] for item in usable]
        vectors = None if run.prosody_set is None else [item.prosody for item in usable]
        # Empty: the training speakers' statistics (a window alone, `ALONE_IN_GROUP`).
        standardization = {}
        if enrolment is not None:
            standardization = {"mean": enrolment.mean, "prosody_mean": enrolment.prosody_mean}
        elif len(usable) > 1:
            standardization = GroupStatistics.of(embeddings, vectors).standardization()

        def classify(batch: np.ndarray, prosody: np.ndarray | None = None) -> np.ndarray:
            return run.classify(batch, prosody=prosody, **standardization)

        yield from zip(usable, batching.predict(classify, embeddings, batch_size, vectors=vectors))


def _forward_exported(jobs: list[_Window], files: list[Path], run: export.ExportedRun) -> Iterator[tuple[_Window, np.ndarray | None]]:
    """Each window with its class probabilities from the run's export, one window's audio a call."""
    for item in _computed(jobs, files, run, audio=True):
        # One window a call: the artefact cuts it into one window, whose prosodic vector (where it takes one) is one row.
        yield item, None if item.error is not None else run.forward(item.audio, None if item.prosody is None else item.prosody[np.newaxis])


def _computed(jobs: list[_Window], files: list[Path], run: Run | export.ExportedRun, *, audio: bool = False) -> Iterator[_Window]:
    """Each window with its segments, or with ``audio`` its samples, and the run's prosodic vector (or its error), computed ahead in threads, in job order."""
    config = run.features

    def compute(job: _Window) -> _Window:
        # A new object: the job list must not keep every window's segments alive.
        try:
            y = utils.load_wav(files[job.file], sr=config.sr, offset=job.start, duration=job.end - job.start)
        except utils.AudioError as error:
            return dataclasses.replace(job, error=str(error))
        if audio:  # the export computes the segments in its graph, and the prosodic vector where it can
            return dataclasses.replace(job, peak=_peak(y), audio=y, prosody=run.prosody_of(y))
        segments, prosody = run.preprocess(y)
        return dataclasses.replace(job, peak=_peak(y), segments=segments, prosody=prosody)

    # librosa and soxr release the GIL in their heavy parts, so threads overlap with the
    # model; a bounded queue of futures keeps memory flat for any number of windows.
    ahead = max(4, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        queue: deque[Future] = deque()
        for job in jobs:
            queue.append(pool.submit(compute, job))
            if len(queue) >= ahead:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()


def _length(item: _Window) -> int:
    return 0 if item.segments is None else len(item.segments)


def _peak(y: np.ndarray) -> float:
    return float(np.max(np.abs(y))) if y.size else 0.0


def _recording_warnings(duration: float, sample_rate: int, config: utils.FeatureConfig) -> list[str]:
    """What a recording's length and rate say about the trust a prediction deserves."""
    warnings = []
    if duration < config.segment_frames * config.hop_length / config.sr:
        warnings.append(TOO_SHORT)
    if sample_rate < config.sr:
        warnings.append(LOW_SAMPLE_RATE)
    return warnings


def _combine(
    path: str, duration: float, windows: list[WindowPrediction], labels: list[str], error: str | None, warnings: list[str]
) -> Prediction:
    if error is not None:
        return Prediction(path, None, 0.0, {}, duration, [], error)
    windows = sorted(windows, key=lambda w: w.start)
    weights = np.array([w.end - w.start for w in windows])
    probabilities = np.average(np.stack([w.probabilities for w in windows]), axis=0, weights=weights)
    best = int(np.argmax(probabilities))
    if max(w.peak for w in windows) < utils.SILENCE_PEAK:
        warnings = [SILENT, *warnings]
    return Prediction(
        path, labels[best], float(probabilities[best]),
        {label: float(value) for label, value in zip(labels, probabilities)}, duration, windows,
        warnings=tuple(warnings),
    )


# ---------------------------------------------------------------- output


def format_table(predictions: list[Prediction], labels: list[str], *, top_k: int = 1, timeline: bool = False) -> str:
    """A header, then one line per file: path, emotion, confidence (the next ``top_k - 1`` emotions), warnings in brackets."""
    width = max(len("path"), *(len(p.path) for p in predictions))
    lines = [f"{'path':<{width}}  {'emotion':<10} {'conf':<4}{'  next emotions' if top_k > 1 else ''}"]
    for prediction in predictions:
        others = "".join(f"  {label} {value:.2f}" for label, value in prediction.top(top_k)[1:])
        warned = f"  [{', '.join(prediction.warnings)}]" if prediction.warnings else ""
        lines.append(f"{prediction.path:<{width}}  {prediction.emotion:<10} {prediction.confidence:.2f}{others}{warned}")
        if timeline:
            for window in prediction.windows:
                best = int(np.argmax(window.probabilities))
                lines.append(
                    f"  {window.start:8.2f} - {window.end:8.2f} s  {labels[best]:<10} {window.probabilities[best]:.2f}"
                )
    return "\n".join(lines) + "\n"


def format_csv(predictions: list[Prediction], labels: list[str], *, timeline: bool = False) -> str:
    """A header, then one row per file (or per window with ``timeline``): every class probability, then warnings (``;``-separated)."""
    stream = io.StringIO()
    writer = csv.DictWriter(stream, csv_columns(labels, timeline=timeline), lineterminator="\n")
    writer.writeheader()
    for prediction in predictions:
        writer.writerows(csv_rows(prediction, labels, timeline=timeline))
    return stream.getvalue()


def csv_columns(labels: list[str], *, timeline: bool = False) -> list[str]:
    """The CSV's header: `format_csv` and ``--engine ray``'s CSV write these columns."""
    return ["path", *(("start", "end") if timeline else ()), "emotion", "confidence", *labels, "warnings"]


def csv_rows(prediction: Prediction, labels: list[str], *, timeline: bool = False) -> list[dict[str, str]]:
    """One file's CSV rows (one per window with ``timeline``), by `csv_columns`, probabilities to 4 decimals."""
    warnings = ";".join(prediction.warnings)
    if not timeline:
        return [{
            "path": prediction.path, "emotion": prediction.emotion, "confidence": f"{prediction.confidence:.4f}",
            **{label: f"{prediction.probabilities[label]:.4f}" for label in labels}, "warnings": warnings,
        }]
    rows = []
    for window in prediction.windows:
        best = int(np.argmax(window.probabilities))
        rows.append({
            "path": prediction.path, "start": f"{window.start:.2f}", "end": f"{window.end:.2f}", "emotion": labels[best],
            "confidence": f"{window.probabilities[best]:.4f}",
            **{label: f"{value:.4f}" for label, value in zip(labels, window.probabilities)}, "warnings": warnings,
        })
    return rows


def format_json(predictions: list[Prediction], labels: list[str], *, top_k: int = 1, timeline: bool = False) -> str:
    """A JSON list with one object per file (`json_record`)."""
    return json.dumps([json_record(prediction, labels, top_k=top_k, timeline=timeline) for prediction in predictions], indent=2) + "\n"


def json_record(prediction: Prediction, labels: list[str], *, top_k: int = 1, timeline: bool = False) -> dict[str, Any]:
    """One file as JSON: path, emotion, confidence, top, probabilities, duration, warnings (and windows), probabilities to 6 decimals."""
    record = {
        "path": prediction.path,
        "emotion": prediction.emotion,
        "confidence": round(prediction.confidence, 6),
        "top": [{"emotion": label, "probability": round(value, 6)} for label, value in prediction.top(top_k)],
        "probabilities": {label: round(value, 6) for label, value in prediction.probabilities.items()},
        "duration": round(prediction.duration, 3),
        "warnings": list(prediction.warnings),
    }
    if timeline:
        record["windows"] = [
            {"start": round(w.start, 3), "end": round(w.end, 3),
             "probabilities": {label: round(float(v), 6) for label, v in zip(labels, w.probabilities)}}
            for w in prediction.windows
        ]
    return record


def parquet_columns(labels: list[str]) -> list[str]:
    """The columns of ``--format parquet``: path, emotion, confidence, a column per class (float64, unrounded), duration, warnings (``;``-separated)."""
    return ["path", "emotion", "confidence", *labels, "duration", "warnings"]


def parquet_record(prediction: Prediction, labels: list[str]) -> dict[str, Any]:
    """One file as a Parquet row (`parquet_columns`)."""
    values = [prediction.path, prediction.emotion, prediction.confidence, *(prediction.probabilities[label] for label in labels),
              prediction.duration, ";".join(prediction.warnings)]
    return dict(zip(parquet_columns(labels), values))

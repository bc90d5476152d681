"""The run folder: what a training run writes, and what inference reads back.

    saved_model/<name>/
        saved_model.pb, variables/, fingerprint.pb, assets/   the exported SavedModel (serving: segments -> probabilities)
        model.keras          the Keras model (any backend)
        labels.json          class names, in the order of the model's outputs
        features.json        the `utils.FeatureConfig` the run was trained with
        options.json         the options the run was started with (for --resume)
        failed.txt           while a partial run's last attempt failed: why (--resume skips it unless named)
        metrics.json         test scores (and per fold, under fold_K/, for cross-validation)
        predictions.csv      one row per test file
        confusion_matrix.png, history.csv, logs/

A run is written under a temporary name (`PARTIAL_PREFIX`) and renamed when complete,
so a crash never leaves a half model and never touches earlier runs; every file in it
is written whole or not at all (`files.write_atomically`). `--resume` continues the
newest interrupted one, and one whose last attempt failed (`FAILED`) only when named.
A usable run holds `REQUIRED` and one of the two models; `load_run` reads it (naming
the file when one is damaged, refusing labels that do not fit the model's outputs),
`load_newest_run` loads the most recent one that loads, skipping damaged ones with a warning.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

import files
from cli import UsageError, installed
from files import PARTIAL_PREFIX
from devices import PRECISIONS
from utils import FeatureConfig, PathLike

logger = logging.getLogger("runs")

MODEL_ROOT = files.PROJECT_ROOT / "saved_model"  # where train.py writes runs and infer.py looks for them, wherever they are started from
SAVED_MODEL = "saved_model.pb"
MODEL_KERAS = "model.keras"
LABELS = "labels.json"
FEATURES = "features.json"
OPTIONS = "options.json"
FAILED = "failed.txt"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
CONFUSION_MATRIX = "confusion_matrix.png"
HISTORY = "history.csv"
BACKUP = "backup"  # the weights of the last epochs while a split trains (trainer.epoch_backup)
LOGS = "logs"  # TensorBoard
REQUIRED = (LABELS, FEATURES)  # what every usable run holds beside a model
PREDICTION_FIELDS = ("path", "speaker", "true", "predicted", "confidence")


class RunError(Exception):
    """A run that cannot be used (damaged files, none to resume or load); the message names the run, the file and the problem."""


class NotARunError(RunError, UsageError):
    """A ``--model`` that names no run folder: missing, a file, or a folder without a run's files."""


# ---------------------------------------------------------------- writing


def new_partial_run(output: Path, name: str) -> Path:
    """A new, empty run folder under its temporary name; ``name`` gets a number when taken."""
    output.mkdir(parents=True, exist_ok=True)
    for number in itertools.count(1):
        unique = name if number == 1 else f"{name}-{number}"
        partial = output / f"{PARTIAL_PREFIX}{unique}"
        # Neither an interrupted nor a completed run may hold the name: the final rename must not collide.
        if (output / unique).exists() or partial.exists():
            continue
        partial.mkdir()
        return partial


def newest_partial_run(output: Path) -> Path:
    """The newest interrupted run folder in ``output``: one that recorded its options and did not fail.

    Runs whose last attempt failed (`mark_failed`) are named in the log and skipped:
    they would most likely fail again; `partial_run` takes one by its path.
    """
    partials = sorted(path for path in output.glob(f"{PARTIAL_PREFIX}*") if (path / OPTIONS).exists())
    for path in partials:
        if (path / FAILED).exists():
            reason = (path / FAILED).read_text(errors="replace").strip()
            logger.warning("skipped %s, whose last attempt failed (%s); to continue it anyway: --resume %s", path.name, reason, path)
    interrupted = [path for path in partials if not (path / FAILED).exists()]
    if not interrupted:
        raise NotARunError(f"--resume found no interrupted run in {output}")
    return interrupted[-1]


def partial_run(folder: PathLike) -> Path:
    """An interrupted or failed run folder named by its path (``--resume RUN``)."""
    folder = Path(folder)
    if not (folder.name.startswith(PARTIAL_PREFIX) and (folder / OPTIONS).is_file()):
        problem = "is a completed run" if missing_files(folder) == [] else "is not a partial run of train.py"
        raise NotARunError(f"--resume {folder}: {problem} (partial runs are {PARTIAL_PREFIX}* folders holding {OPTIONS})")
    return folder


def mark_failed(partial: Path, error: BaseException) -> None:
    """Record in ``partial`` why its run failed, so that a plain ``--resume`` skips it; best effort (the disk may be full)."""
    try:
        (partial / FAILED).write_text(f"{type(error).__name__}: {first_line(error)}\n")
    except OSError:
        pass


def complete(partial: Path) -> Path:
    """Rename a finished run folder to its final name; returns the new path."""
    final = partial.with_name(partial.name[len(PARTIAL_PREFIX) :])
    partial.rename(final)
    return final


def write_model(folder: Path, model, labels: list[str], features: FeatureConfig) -> None:
    """The files inference needs: ``model.keras``, the SavedModel where TensorFlow can export it, labels, features.

    The SavedModel is exported into a scratch folder and its files moved in when it is
    whole, so a full disk or Ctrl-C leaves no truncated model (the OSError propagates).
    """
    import keras

    from SpeechModel import SpeechModel

    files.write_atomically(folder / MODEL_KERAS, model.save)
    if installed("tensorflow") and keras.backend.backend() in ("tensorflow", "jax"):
        scratch = folder / f"{PARTIAL_PREFIX}export"
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            SpeechModel.export(model, scratch)
            for part in scratch.iterdir():
                if (folder / part.name).is_dir():  # left by an attempt that failed: replaced whole
                    shutil.rmtree(folder / part.name)
                os.replace(part, folder / part.name)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    write_json(folder / LABELS, labels)
    write_json(folder / FEATURES, features.to_dict())


def write_json(path: Path, value) -> None:
    files.write_atomically(path, json.dumps(value, indent=2))


def write_predictions(folder: Path, predictions: list[dict]) -> None:
    """``predictions.csv``: one dict per test file with the keys of `PREDICTION_FIELDS`."""
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=PREDICTION_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(predictions)
    files.write_atomically(folder / PREDICTIONS, stream.getvalue())


def plot_confusion_matrix(folder: Path, matrix: np.ndarray, labels: list[str]) -> None:
    """``confusion_matrix.png`` of the test predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    figure, axes = plt.subplots(figsize=(7, 6))
    ConfusionMatrixDisplay(matrix, display_labels=labels).plot(ax=axes, xticks_rotation=45, colorbar=False)
    axes.set_title("test confusion matrix")
    figure.tight_layout()
    figure.savefig(folder / CONFUSION_MATRIX, dpi=100)
    plt.close(figure)


# ---------------------------------------------------------------- reading


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained run, loaded: its folder, labels, feature parameters and forward function."""

    folder: Path
    labels: list[str]
    features: FeatureConfig
    forward: Callable[[np.ndarray], np.ndarray]  # segments (batch, segments, ...) -> probabilities (batch, classes)
    speaker_norm: bool = False  # trained on per-speaker standardised embeddings (train.py --speaker-norm)


def missing_files(folder: Path) -> list[str]:
    """What ``folder`` lacks to be a usable run (empty for a usable one)."""
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if not (folder / SAVED_MODEL).is_file() and not (folder / MODEL_KERAS).is_file():
        missing.append(f"{SAVED_MODEL} or {MODEL_KERAS}")
    return missing


def newest_runs(root: Path | None = None) -> list[Path]:
    """The completed run folders in ``root`` (default `MODEL_ROOT`) that hold a run's files, newest first."""
    root = MODEL_ROOT if root is None else root
    runs = [path for path in root.glob("*") if not path.name.startswith(".") and path.is_dir() and missing_files(path) == []] if root.is_dir() else []
    return sorted(runs, key=lambda path: (path / LABELS).stat().st_mtime_ns, reverse=True)


def load_newest_run(root: Path | None = None, *, precision: str = "float32") -> Run:
    """The newest run in ``root`` (default `MODEL_ROOT`) that loads; damaged or incomplete ones are skipped with a warning.

    Raises
    ------
    RunError
        If no run in ``root`` loads (the message says how to get one).
    """
    root = MODEL_ROOT if root is None else root
    for folder in newest_runs(root):
        try:
            return load_run(folder, precision=precision)
        except NotARunError:
            raise
        except RunError as error:
            logger.warning("skipped a damaged run: %s", error)
    raise RunError(f"no usable trained run in {root}; train one first (python train.py EPOCHS) or pass --model RUN_FOLDER")


def load_run(folder: PathLike, *, precision: str = "float32") -> Run:
    """Load a run folder: the SavedModel with TensorFlow alone, else model.keras with Keras.

    ``precision="bfloat16"`` (or ``"float16"``, for GPUs) runs a mixed-precision copy of
    model.keras instead (`SpeechModel.precision_copy`): about 1.5x faster on CPUs with bf16
    units, with probabilities a little off the float32 ones.

    Raises
    ------
    NotARunError
        If the folder is missing, a file, or lacks a run's files (the message lists them).
    RunError
        If a file of the run is damaged (the message names the run, the file and the problem).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    folder = Path(folder)
    if not folder.is_dir():
        problem = "is a file, not a run folder" if folder.exists() else "does not exist"
        raise NotARunError(f"model folder {folder} {problem}; pass --model a run folder of train.py (saved_model/<run>)")
    missing = missing_files(folder)
    if missing:
        raise NotARunError(f"{folder} is not a training run: it lacks {', '.join(missing)} (runs are written by train.py)")
    labels = _read_json(folder, LABELS)
    if not (isinstance(labels, list) and len(labels) >= 2 and all(isinstance(label, str) for label in labels)):
        raise RunError(f"run {folder}: {LABELS} is damaged (not a list of class names)")
    try:
        features = FeatureConfig.from_dict(_read_json(folder, FEATURES))
    except (TypeError, ValueError) as error:
        raise RunError(f"run {folder}: {FEATURES} does not fit this version of utils.py: {error}") from None
    options = _read_json(folder, OPTIONS) if (folder / OPTIONS).is_file() else {}
    forward, classes = _forward(folder, precision)
    if classes != len(labels):
        raise RunError(
            f"run {folder}: {LABELS} names {len(labels)} classes but the model has {classes} outputs; "
            "the file does not belong to this model (restore it from the training run)"
        )
    return Run(folder, labels, features, forward, bool(options.get("speaker_norm", False)))


def _read_json(folder: Path, name: str):
    try:
        return json.loads((folder / name).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunError(f"run {folder}: {name} is damaged ({first_line(error)})") from None


def first_line(error: BaseException, limit: int = 160) -> str:
    """A library error as one short line (TensorFlow's run over many)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_keras_model(folder: Path):
    """The run's ``model.keras``, for what the SavedModel cannot do (its parts, another precision).

    Raises
    ------
    RunError
        If the file is missing or damaged.
    """
    import keras

    import SpeechModel  # noqa: F401  (registers the model's layers for loading)

    if not (folder / MODEL_KERAS).is_file():
        raise RunError(f"run {folder}: has no {MODEL_KERAS}")
    try:
        return keras.models.load_model(folder / MODEL_KERAS, compile=False)
    except Exception as error:  # zip, h5 and config errors all mean a damaged file
        raise RunError(f"run {folder}: {MODEL_KERAS} does not load: {first_line(error)}") from None


def _forward(folder: Path, precision: str) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """The run's forward function and its number of outputs (classes)."""
    if precision == "float32" and (folder / SAVED_MODEL).is_file() and installed("tensorflow"):
        import tensorflow as tf

        try:
            exported = tf.saved_model.load(str(folder))
        except Exception as error:  # protobuf, checkpoint and op errors all mean a damaged export
            raise RunError(f"run {folder}: the SavedModel ({SAVED_MODEL}, variables/) does not load: {first_line(error)}") from None
        (output,) = exported.signatures["serving_default"].structured_outputs.values()
        # The closure holds `exported`: its functions need the loaded object alive.
        return (lambda segments: exported.serve(tf.constant(segments)).numpy()), int(output.shape[-1])
    if not (folder / MODEL_KERAS).is_file():
        needs = f"--precision {precision} needs model.keras" if precision != "float32" else "a SavedModel needs TensorFlow"
        raise RunError(f"{folder} holds only a SavedModel, and {needs}")
    from SpeechModel import SpeechModel

    model = load_keras_model(folder)
    if precision != "float32":
        model = SpeechModel.precision_copy(model, precision)
    return SpeechModel.inference_function(model), int(model.outputs[0].shape[-1])

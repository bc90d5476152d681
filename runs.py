"""The run folder: what a training run writes, and what inference reads back.

    saved_model/<name>/
        saved_model.pb, variables/, fingerprint.pb, assets/   the exported SavedModel (serving: segments -> probabilities)
        model.keras          the Keras model (any backend)
        labels.json          class names, in the order of the model's outputs
        features.json        the `utils.FeatureConfig` the run was trained with
        options.json         the options the run was started with (for --resume)
        metrics.json         test scores (and per fold, under fold_K/, for cross-validation)
        predictions.csv      one row per test file
        confusion_matrix.png, history.csv, logs/

A run is written under a temporary name (`PARTIAL_PREFIX`) and renamed when complete,
so a crash never leaves a half model and never touches earlier runs; `--resume`
continues the newest interrupted one. A usable run holds `REQUIRED` and one of the
two models; `load_run` reads it (naming the file when one is damaged), `load_newest_run` loads the
most recent one that loads, skipping damaged ones with a warning.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cli import UsageError, installed
from devices import PRECISIONS
from utils import FeatureConfig, PathLike

logger = logging.getLogger("runs")

MODEL_ROOT = Path("saved_model")  # where train.py writes runs and infer.py looks for them
PARTIAL_PREFIX = ".partial-"  # runs being written; renamed when complete
SAVED_MODEL = "saved_model.pb"
MODEL_KERAS = "model.keras"
LABELS = "labels.json"
FEATURES = "features.json"
OPTIONS = "options.json"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
CONFUSION_MATRIX = "confusion_matrix.png"
HISTORY = "history.csv"
BACKUP = "backup"  # Keras' BackupAndRestore state while an epoch loop runs
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
    """The newest interrupted run folder in ``output`` (one that recorded its options)."""
    partials = sorted(path for path in output.glob(f"{PARTIAL_PREFIX}*") if (path / OPTIONS).exists())
    if not partials:
        raise NotARunError(f"--resume found no interrupted run in {output}")
    return partials[-1]


def complete(partial: Path) -> Path:
    """Rename a finished run folder to its final name; returns the new path."""
    final = partial.with_name(partial.name[len(PARTIAL_PREFIX) :])
    partial.rename(final)
    return final


def write_model(folder: Path, model, labels: list[str], features: FeatureConfig) -> None:
    """The files inference needs: ``model.keras``, the SavedModel where TensorFlow can export it, labels, features."""
    import keras

    from SpeechModel import SpeechModel

    model.save(folder / MODEL_KERAS)
    if installed("tensorflow") and keras.backend.backend() in ("tensorflow", "jax"):
        SpeechModel.export(model, folder)
    write_json(folder / LABELS, labels)
    write_json(folder / FEATURES, features.to_dict())


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2))


def write_predictions(folder: Path, predictions: list[dict]) -> None:
    """``predictions.csv``: one dict per test file with the keys of `PREDICTION_FIELDS`."""
    with open(folder / PREDICTIONS, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=PREDICTION_FIELDS)
        writer.writeheader()
        writer.writerows(predictions)


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


def newest_runs(root: Path = MODEL_ROOT) -> list[Path]:
    """The completed run folders in ``root`` that hold a run's files, newest first."""
    runs = [path for path in root.glob("*") if not path.name.startswith(".") and path.is_dir() and missing_files(path) == []] if root.is_dir() else []
    return sorted(runs, key=lambda path: (path / LABELS).stat().st_mtime_ns, reverse=True)


def load_newest_run(root: Path = MODEL_ROOT, *, precision: str = "float32") -> Run:
    """The newest run in ``root`` that loads; damaged or incomplete ones are skipped with a warning.

    Raises
    ------
    RunError
        If no run in ``root`` loads (the message says how to get one).
    """
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
    return Run(folder, labels, features, _forward(folder, precision), bool(options.get("speaker_norm", False)))


def _read_json(folder: Path, name: str):
    try:
        return json.loads((folder / name).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunError(f"run {folder}: {name} is damaged ({_first_line(error)})") from None


def _first_line(error: BaseException, limit: int = 160) -> str:
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
        raise RunError(f"run {folder}: {MODEL_KERAS} does not load: {_first_line(error)}") from None


def _forward(folder: Path, precision: str) -> Callable[[np.ndarray], np.ndarray]:
    if precision == "float32" and (folder / SAVED_MODEL).is_file() and installed("tensorflow"):
        import tensorflow as tf

        try:
            exported = tf.saved_model.load(str(folder))
        except Exception as error:  # protobuf, checkpoint and op errors all mean a damaged export
            raise RunError(f"run {folder}: the SavedModel ({SAVED_MODEL}, variables/) does not load: {_first_line(error)}") from None
        # The closure holds `exported`: its functions need the loaded object alive.
        return lambda segments: exported.serve(tf.constant(segments)).numpy()
    if not (folder / MODEL_KERAS).is_file():
        needs = f"--precision {precision} needs model.keras" if precision != "float32" else "a SavedModel needs TensorFlow"
        raise RunError(f"{folder} holds only a SavedModel, and {needs}")
    from SpeechModel import SpeechModel

    model = load_keras_model(folder)
    if precision != "float32":
        model = SpeechModel.precision_copy(model, precision)
    return SpeechModel.inference_function(model)

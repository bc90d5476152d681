"""Train and score one speaker split: its training inputs, the training of the model, its scores.

`train_split` is one fold of work: enhance and balance the training files, compute
features (all cores, cached), build the model, train it, watch validation UAR (and stop
early on it, see `recipe.Options`), and score the test speakers (`metrics.score`). The
backbone mode picks a strategy for the steps that differ (`STRATEGIES`: `FrozenBackbone`
embeds every segment once and trains the head alone; `FineTuning` trains end to end).
`train.py` runs it once per split and writes the run folder.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import augment
import batching
import corpora
import features
import files
import runs
from cluster import RayEngine
from devices import Placement
from metrics import ENROLMENT_FILES, score
from recipe import CHOOSE_WEIGHT, PROSODY_WEIGHTS, Options

logger = logging.getLogger("train")

ENHANCED_COPIES = 1  # enhanced copies of every training file, on top of the original
EARLY_STOPPING_PATIENCE = 10  # epochs without a better validation UAR before stopping
PLATEAU_PATIENCE = 4  # epochs without a better validation UAR before halving the learning rate


class TrainingError(Exception):
    """A problem a user can fix; reported as one sentence, exit code 1."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One training, validation or test input: a feature source and its class index."""

    source: features.SourceKey
    label: int
    path: str
    speaker: Any


def training_sources(
    utterances: Sequence[corpora.Utterance], *, augment_copies: int, oversample: bool, seed: int, pseudo_speakers: int = 0
) -> list[tuple[features.Source, corpora.Utterance]]:
    """The training inputs: every file, its enhanced copies, the balancing copies, and the pseudo-speakers' copies.

    Balancing copies are enhanced when enhancement is on (so copies differ), plain
    repeats otherwise. Each of the first ``pseudo_speakers`` of `augment.PSEUDO_SPEAKER_SEMITONES`
    perturbs every unenhanced input above alike (`augment.SpeakerPerturbation`), as the
    utterance of a pseudo-speaker (`augment.pseudo_speaker`) with statistics of its own.
    """
    sources = _original_sources(utterances, augment_copies=augment_copies, oversample=oversample, seed=seed)
    for semitones in augment.PSEUDO_SPEAKER_SEMITONES[:pseudo_speakers]:
        perturbation = augment.SpeakerPerturbation(semitones)
        sources += [
            ((source, perturbation), dataclasses.replace(u, speaker=augment.pseudo_speaker(u.speaker, perturbation)))
            for source, u in sources if not isinstance(source, tuple)
        ]
    return sources


def _original_sources(
    utterances: Sequence[corpora.Utterance], *, augment_copies: int, oversample: bool, seed: int
) -> list[tuple[features.Source, corpora.Utterance]]:
    sources: list[tuple[features.Source, corpora.Utterance]] = []
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


def standardize_per_speaker(normalization, embeddings: dict, speaker_of: dict) -> dict:
    """Every speaker's segment embeddings (steps, features), or utterance vectors (values,), standardised by ``normalization`` (the model's `Standardization`) with that speaker's own statistics.

    The statistics come from the speaker's original files (not their enhanced copies) and
    use no label: for test speakers too, which makes scores with it transductive (each test
    speaker's unlabelled recordings are seen as a whole before any is classified).
    """
    from keras import ops

    from normalization import RunningStatistics

    statistics: dict = {}
    for speaker in set(speaker_of.values()):
        sources = [s for s, who in speaker_of.items() if who == speaker and s in embeddings]
        originals = [s for s in sources if isinstance(s, str)] or sources
        statistics[speaker] = RunningStatistics.of(embeddings[source] for source in originals)
    return {
        source: ops.convert_to_numpy(normalization(array, statistics[speaker_of[source]].mean, statistics[speaker_of[source]].std))
        for source, array in embeddings.items()
    }


def enrolment_split(test: Sequence[Example], files: int, seed: int) -> tuple[dict, list[Example]]:
    """Each test speaker's enrolment files (``files`` of theirs, drawn with ``seed``) and the files left to score.

    As ``infer.py --enroll`` is used: a few recordings of a speaker, whatever their emotions,
    standardise the speaker's other recordings. A speaker with ``files`` recordings or fewer
    has none left to score and is left out.
    """
    rng = np.random.default_rng(seed)
    enrolment: dict = {}
    scored: list[Example] = []
    for speaker in sorted({e.speaker for e in test}, key=corpora.speaker_order):
        own = [e for e in test if e.speaker == speaker]
        if len(own) <= files:
            continue
        chosen = set(rng.permutation(len(own))[:files].tolist())
        enrolment[speaker] = [e for index, e in enumerate(own) if index in chosen]
        scored += [e for index, e in enumerate(own) if index not in chosen]
    return enrolment, scored


def standardize_pooled(normalization, arrays: dict) -> dict:
    """Every array of ``arrays`` standardised by ``normalization`` (the model's `Standardization`) with its stored statistics.

    The training speakers' pooled statistics: what a single request gets (infer.py's default).
    """
    from keras import ops

    return {source: ops.convert_to_numpy(normalization(array)) for source, array in arrays.items()}


def validation_uar_callback(
    forward: Callable[..., np.ndarray],
    inputs: list[np.ndarray],
    labels: list[int],
    batch_size: int,
    *,
    bucketed: bool = False,
    vectors: list[np.ndarray] | None = None,
):
    """A Keras callback that adds ``val_uar`` (macro recall of ``forward`` on ``inputs`` and ``vectors``, `batching.predict`) to each epoch's logs.

    Listed before EarlyStopping and ReduceLROnPlateau, which read it from the same logs.
    """
    import keras
    from sklearn.metrics import recall_score

    class ValidationUAR(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            predicted = batching.predict(forward, inputs, batch_size, bucketed=bucketed, vectors=vectors).argmax(axis=1)
            logs["val_uar"] = float(recall_score(labels, predicted, average="macro"))

    return ValidationUAR()


BACKUPS_KEPT = 2  # the newest epochs' weights kept in backup/: one may be damaged, the one before is not


def epoch_backup(folder: Path):
    """A Keras callback that backs the weights up after every epoch, and restores the newest usable backup when ``fit`` starts.

    What ``--resume`` continues from. Unlike Keras' BackupAndRestore, each backup is
    written whole or not at all (`files.write_atomically`), so Ctrl-C at any moment
    leaves a loadable one, and a backup that does not load (damaged by something else)
    is reported in one line and the one before it is used; with none usable, the split
    trains again from its first epoch, with a warning. The folder is removed when the
    split is done (train.py).
    """
    import keras

    class EpochBackup(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            backups = sorted(folder.glob("epoch-*.weights.h5"), reverse=True)
            if not backups:
                return
            if self.model.optimizer is not None and not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)  # its variables are in the backup too
            initial = [keras.ops.convert_to_numpy(variable) for variable in self.model.variables]
            for backup in backups:
                try:
                    self.model.load_weights(backup)
                except Exception as error:  # h5py, zip and Keras errors all mean a damaged file
                    logger.warning("backup %s does not load (%s); trying the one before", backup, runs.first_line(error))
                    continue
                # As Keras' BackupAndRestore does: fit starts from this epoch.
                self.model._initial_epoch = int(backup.name.split(".")[0].split("-")[1])
                logger.info("resuming from the backup of epoch %d", self.model._initial_epoch)
                return
            for variable, value in zip(self.model.variables, initial):
                variable.assign(value)
            logger.warning("no backup in %s loads: this split trains again from its first epoch", folder)

        def on_epoch_end(self, epoch, logs=None):
            folder.mkdir(parents=True, exist_ok=True)
            files.write_atomically(folder / f"epoch-{epoch + 1:05d}.weights.h5", self.model.save_weights)
            for old in sorted(folder.glob("epoch-*.weights.h5"))[:-BACKUPS_KEPT]:
                old.unlink()

    return EpochBackup()


def training_callbacks(validation_uar, *, early_stopping: bool, run_dir: Path | None) -> list:
    """The callbacks of one split's ``fit``, after ``validation_uar`` (which logs the ``val_uar`` the others read).

    With ``early_stopping``, stop after `EARLY_STOPPING_PATIENCE` epochs without a better
    validation UAR (keeping the best epoch's weights) and halve the learning rate after
    `PLATEAU_PATIENCE`; without, train every epoch and keep the last. With ``run_dir``, also
    back up every epoch and log the history there (None: a trial that leaves no files).
    """
    import keras

    callbacks = [validation_uar, keras.callbacks.TerminateOnNaN()]
    if early_stopping:
        callbacks += [
            keras.callbacks.EarlyStopping(
                monitor="val_uar", mode="max", patience=EARLY_STOPPING_PATIENCE, restore_best_weights=True
            ),
            keras.callbacks.ReduceLROnPlateau(monitor="val_uar", mode="max", factor=0.5, patience=PLATEAU_PATIENCE),
        ]
    if run_dir is None:
        return callbacks
    callbacks += [
        # Backed up before logged: an epoch in history.csv is one --resume does not train again.
        epoch_backup(run_dir / runs.BACKUP),
        keras.callbacks.CSVLogger(str(run_dir / runs.HISTORY), append=True),  # append: --resume keeps earlier epochs
    ]
    if files.installed("tensorflow") and files.installed("tensorboard"):  # the callback writes through tf.summary
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / runs.LOGS)))
    return callbacks


class FrozenBackbone:
    """``--backbone-mode frozen``: the backbone embeds every segment once (cached), and only the head trains, on standardised embeddings."""

    bucketed = False  # the head's inputs are short sequences of embeddings: one shape per batch costs nothing

    @staticmethod
    def model_arguments(options: Options) -> dict[str, Any]:
        return {}

    @staticmethod
    def embeddings(embed: Callable, model, segments: dict, train: list[Example], cache_dir: Path | None, engine: RayEngine | None, options: Options) -> dict:
        """Every file's embeddings (training, validation and test), cached by the encoder's fingerprint."""
        return features.extract_embeddings(
            embed, segments, width=model.encoder.features, fingerprint=features.encoder_fingerprint(model.encoder),
            config=options.features, cache_dir=None if cache_dir is None else cache_dir / "embeddings", engine=engine, encoder=model.encoder,
        )

    @staticmethod
    def inputs(model, segments: dict, embeddings: dict, vectors: dict, speaker_of: dict, options: Options) -> tuple[dict, dict]:
        """The head's inputs: embeddings and prosodic vectors standardised per speaker (``--speaker-norm``) or with the pooled statistics."""
        if options.speaker_norm:
            prosodic = standardize_per_speaker(model.prosody_normalization, vectors, speaker_of) if vectors else {}
            return standardize_per_speaker(model.speaker_normalization, embeddings, speaker_of), prosodic
        return standardize_pooled(model.speaker_normalization, embeddings), standardize_pooled(model.prosody_normalization, vectors)

    @staticmethod
    def trainee(recognizer, options: Options):
        """What ``fit`` trains: the head alone, as a model of its own."""
        from SpeechModel import SpeechModel

        head = recognizer.head_model()
        SpeechModel.compile_head(head, options.learning_rate)
        return head

    @staticmethod
    def head_statistics(recognizer, inputs: dict, embeddings: dict, train: list[Example]) -> list[np.ndarray]:
        return [inputs[e.source] for e in train]

    @staticmethod
    def after_fit(model) -> None:
        # A fresh optimizer state for every variable, so that model.keras loads without a
        # mismatch warning and can be fine-tuned from where the frozen run ended.
        model.optimizer.build(model.trainable_variables)

    @staticmethod
    def transductive(options: Options) -> bool:
        """Whether the test scores saw each test speaker's files as a whole: with per-speaker statistics."""
        return bool(options.speaker_norm)


class FineTuning:
    """``--backbone-mode finetune``: the whole recogniser trains end to end on segments, the backbone slower than the head."""

    bucketed = True  # fine-tuning compiles a forward pass per input shape under XLA: a few bucketed shapes, not one per batch

    @staticmethod
    def model_arguments(options: Options) -> dict[str, Any]:
        # A pretrained backbone moves slower than the new head, and keeps its BatchNorm.
        return {"backbone_learning_rate_scale": options.backbone_lr_scale, "freeze_batch_normalization": options.freeze_batchnorm}

    @staticmethod
    def embeddings(embed: Callable, model, segments: dict, train: list[Example], cache_dir: Path | None, engine: RayEngine | None, options: Options) -> dict:
        """The starting backbone's embeddings of the training files, used once for the normalisation: not cached."""
        return features.extract_embeddings(embed, {e.source: segments[e.source] for e in train}, width=model.encoder.features)

    @staticmethod
    def inputs(model, segments: dict, embeddings: dict, vectors: dict, speaker_of: dict, options: Options) -> tuple[dict, dict]:
        return segments, {}

    @staticmethod
    def trainee(recognizer, options: Options):
        return recognizer

    @staticmethod
    def head_statistics(recognizer, inputs: dict, embeddings: dict, train: list[Example]) -> list[np.ndarray]:
        from keras import ops

        return [ops.convert_to_numpy(recognizer.speaker_normalization(embeddings[e.source])) for e in train]

    @staticmethod
    def after_fit(model) -> None:
        pass

    @staticmethod
    def transductive(options: Options) -> bool:
        return False


STRATEGIES = {"frozen": FrozenBackbone, "finetune": FineTuning}  # by `recipe.BACKBONE_MODES`


def train_split(
    split: corpora.SpeakerSplit,
    options: Options,
    labels: list[str],
    run_dir: Path,
    *,
    backbone: Callable[[], Any] | None = None,
    placement: Placement = Placement(),
    cache_dir: Path | None = None,
    engine: RayEngine | None = None,
) -> tuple[Any, dict, list[dict]]:
    """Train on ``split.train``, watch (and with early stopping, stop on) ``split.validation``, score ``split.test``.

    ``options`` must be `Options.resolved`; its backbone mode picks the strategy (`STRATEGIES`)
    that the same steps follow. ``backbone`` builds a custom backbone
    model instead of ``options.backbone``. ``placement`` (`devices.place`) says where
    fine-tuning runs. ``cache_dir`` keeps features and embeddings (None: nothing is
    cached; train.py passes ``options.cache_dir`` where it can be written); ``engine``, a Ray cluster, computes what
    the caches miss (features, prosodic vectors, frozen embeddings) on its workers instead of here. Returns the full model (segments -> probabilities, float32 on one
    device, whatever the training precision and devices), the test metrics and the
    per-file test predictions.
    """
    from SpeechModel import SpeechModel

    strategy = STRATEGIES[options.backbone_mode]
    index_of = {label: index for index, label in enumerate(labels)}
    recipe = options.architecture()
    train_sources = training_sources(
        split.train,
        augment_copies=ENHANCED_COPIES if options.augment else 0,
        oversample=options.balance == "oversample",
        seed=options.seed,
        pseudo_speakers=options.pseudo_speakers,
    )
    evaluation = [(u.path, u) for u in split.validation + split.test]
    extracted = features.extract_features(
        [source for source, _ in train_sources + evaluation], config=options.features,
        cache_dir=None if cache_dir is None else cache_dir / "features", engine=engine,
    )

    prosody_set = recipe["prosody_set"]
    vectors = {} if prosody_set is None else features.extract_prosody(
        [source for source, _ in train_sources + evaluation if features.source_key(source) in extracted.segments],
        prosody_set, config=options.features, cache_dir=None if cache_dir is None else cache_dir / "prosody", engine=engine,
    )

    def examples(pairs) -> list[Example]:
        return [
            Example(features.source_key(source), index_of[u.label], str(u.path), u.speaker)
            for source, u in pairs
            if features.source_key(source) in extracted.segments and (prosody_set is None or features.source_key(source) in vectors)
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

    with placement.scope():  # one device, or every device of a data-parallel run holds the variables
        weights = None if options.weights == "none" else options.weights
        architecture = recipe if backbone is None else {**recipe, "backbone": backbone()}
        model = SpeechModel.create_model(
            len(labels), weights=weights, features=options.features, **architecture,
            learning_rate=options.learning_rate, precision=options.precision, **strategy.model_arguments(options),
        )
        class_weight = augment.class_weights([e.label for e in train]) if options.balance == "class-weight" else None
        embed = SpeechModel.inference_function(model.embed, (None, *options.features.segment_shape))
        embeddings = strategy.embeddings(embed, model, extracted.segments, train, cache_dir, engine, options)
        # The stored statistics: the training speakers' pooled ones (what a single request gets).
        model.speaker_normalization.adapt([embeddings[e.source] for e in train if isinstance(e.source, str)])
        if prosody_set is not None:
            model.prosody_normalization.adapt([vectors[e.source] for e in train if isinstance(e.source, str)])
        speaker_of = {features.source_key(source): u.speaker for source, u in train_sources + evaluation}
        inputs, prosodic = strategy.inputs(model, extracted.segments, embeddings, vectors, speaker_of, options)

        def prosody_of(items: list[Example]) -> list[np.ndarray] | None:
            return [prosodic[e.source] for e in items] if prosodic else None

        def prepared(recognizer) -> tuple[Any, Callable, batching.PaddedBatches, Any]:
            """What trains, its forward function, the training batches and the validation UAR callback, for ``recognizer``."""
            trainee = strategy.trainee(recognizer, options)
            if recipe["head"].kind == "stats":
                recognizer.head.adapt_statistics(strategy.head_statistics(recognizer, inputs, embeddings, train))
            forward = SpeechModel.inference_function(trainee)
            batches = batching.PaddedBatches(
                [inputs[e.source] for e in train], [e.label for e in train], options.batch_size,
                weights=class_weight, seed=options.seed, shard=placement.shard, vectors=prosody_of(train),
            )
            validation_uar = validation_uar_callback(
                forward, [inputs[e.source] for e in validation], [e.label for e in validation], options.batch_size,
                bucketed=strategy.bucketed, vectors=prosody_of(validation),
            )
            return trainee, forward, batches, validation_uar

        weight_scores = {}
        if prosodic and options.prosody_weight == CHOOSE_WEIGHT:
            model, weight_scores = choose_prosody_weight(model, prepared, options, run_dir / runs.BACKUP)
        trainee, forward, train_batches, validation_uar = prepared(model)
        callbacks = training_callbacks(validation_uar, early_stopping=options.early_stopping, run_dir=run_dir)
        # Keras' progress bar on a terminal; one line per epoch in a log or a pipe.
        verbose = 1 if sys.stdout.isatty() else 2
        history = trainee.fit(train_batches.as_keras_data(), epochs=options.epochs, callbacks=callbacks, shuffle=False, verbose=verbose)
        losses = history.history.get("loss", [])
        if any(not np.isfinite(loss) for loss in losses):
            raise TrainingError(
                f"training stopped at epoch {len(losses)}: the loss became NaN; try a lower --learning-rate "
                f"(now {options.learning_rate})"
            )
        strategy.after_fit(model)

        probabilities = batching.predict(
            forward, [inputs[e.source] for e in test], options.batch_size, bucketed=strategy.bucketed, vectors=prosody_of(test)
        )
        for example, row in zip(test, probabilities):
            if not np.all(np.isfinite(row)):
                raise TrainingError(f"{example.path}: the trained model gave non-finite probabilities; no score is reported")
        # Transductive: each test speaker standardised by their own unlabelled files, which a single request cannot be.
        transductive = strategy.transductive(options)
        single_file, enrolled = probabilities, None
        if transductive:  # each test file alone too, as infer.py scores it: the training speakers' statistics
            alone = standardize_pooled(model.speaker_normalization, {e.source: embeddings[e.source] for e in test})
            alone_vectors = standardize_pooled(model.prosody_normalization, {e.source: vectors[e.source] for e in test}) if prosodic else None
            single_file = batching.predict(
                forward, list(alone.values()), options.batch_size, vectors=None if alone_vectors is None else list(alone_vectors.values())
            )
            enrolled = enrolled_score(model, forward, test, embeddings, vectors if prosodic else None, labels, options)
    if options.precision != "float32" or placement.devices > 1:
        model = SpeechModel.precision_copy(model, "float32")  # what runs export: float32 on one device

    metrics = score([e.label for e in test], probabilities.argmax(axis=1), labels)
    metrics["transductive"] = transductive
    metrics["single_file_uar"] = score([e.label for e in test], single_file.argmax(axis=1), labels)["uar"]
    if enrolled is not None:  # transductive runs only
        metrics["enrolled_uar"] = enrolled
    predictions = [
        {
            "path": e.path,
            "speaker": e.speaker,
            "true": labels[e.label],
            "predicted": labels[int(p.argmax())],
            "confidence": round(float(p.max()), 4),
            "predicted_alone": labels[int(alone.argmax())],
            "confidence_alone": round(float(alone.max()), 4),
        }
        for e, p, alone in zip(test, probabilities, single_file)
    ]
    metrics["files"] = {
        "training_inputs": len(train),
        "training_files": len({e.path for e in train}),
        "validation": len(validation),
        "test": len(test),
        "skipped": dict(extracted.errors),
    }
    metrics["speakers"] = split.speakers()
    metrics["epochs_run"] = len(losses)
    if model.prosody_set is not None:
        metrics["prosody_weight"] = model.head.config.prosody_weight
        if weight_scores:
            metrics["prosody_weight_validation_uar"] = {f"{weight:g}": uar for weight, uar in weight_scores.items()}
    return model, metrics, predictions


def enrolled_score(model, forward: Callable, test: list[Example], embeddings: dict, vectors: dict | None, labels: list[str], options: Options) -> float | None:
    """UAR of the test files each standardised with the means of `ENROLMENT_FILES` other recordings of their speaker (`enrolment_split`), as ``infer.py --enroll`` scores them; None when no speaker has that many files.

    Each scored file is classified alone: only the enrolment files are seen before it.
    """
    enrolment, scored = enrolment_split(test, ENROLMENT_FILES, options.seed)
    if not scored:
        return None

    from keras import ops

    from normalization import RunningStatistics

    def enrolled(normalization, arrays: dict) -> dict:
        means = {speaker: RunningStatistics.of(arrays[e.source] for e in files).mean for speaker, files in enrolment.items()}
        return {e.source: ops.convert_to_numpy(normalization(arrays[e.source], means[e.speaker])) for e in scored}

    inputs = enrolled(model.speaker_normalization, embeddings)
    prosodic = None if vectors is None else enrolled(model.prosody_normalization, vectors)
    probabilities = batching.predict(forward, list(inputs.values()), options.batch_size, vectors=None if prosodic is None else list(prosodic.values()))
    return score([e.label for e in scored], probabilities.argmax(axis=1), labels)["uar"]


def choose_prosody_weight(model, prepared: Callable, options: Options, backup: Path) -> tuple[Any, dict[float, float]]:
    """``model`` with a new head whose prosodic weight (of `PROSODY_WEIGHTS`) scored best on the validation speakers, and every weight's score.

    Each candidate head trains as the final one will (``prepared`` gives what trains and the
    validation callback; the same epochs and callbacks, without the run's files) and is
    scored by its validation UAR (the best epoch's with early stopping, else the last's);
    ties go to the smaller weight. The returned head is untrained: the split then trains it
    with the run's callbacks (backups, history). The scores are kept in the split's
    ``backup`` folder, so ``--resume`` continues with the same weight instead of choosing again.
    """
    import json

    from SpeechModel import SpeechModel
    from classifier import ClassifierHead

    def recognizer(weight: float):
        head = ClassifierHead(model.head.num_classes, dataclasses.replace(model.head.config, prosody_weight=weight), name="head")
        candidate = model.with_head(head)
        SpeechModel.compile_head(candidate, options.learning_rate)
        return candidate

    record = backup / "prosody_weights.json"
    scores = {float(weight): uar for weight, uar in json.loads(record.read_text()).items()} if record.is_file() else {}
    for weight in PROSODY_WEIGHTS if not scores else ():
        trainee, _, batches, validation_uar = prepared(recognizer(weight))
        callbacks = training_callbacks(validation_uar, early_stopping=options.early_stopping, run_dir=None)
        history = trainee.fit(batches.as_keras_data(), epochs=options.epochs, callbacks=callbacks, shuffle=False, verbose=0)
        uars = history.history.get("val_uar", [0.0])
        scores[weight] = float(max(uars) if options.early_stopping else uars[-1])
        logger.info("prosodic weight %g: validation UAR %.3f", weight, scores[weight])
    backup.mkdir(parents=True, exist_ok=True)
    runs.write_json(record, {f"{weight:g}": uar for weight, uar in scores.items()})
    chosen = max(scores, key=lambda weight: (scores[weight], -weight))
    logger.info("prosodic weight %g chosen on the validation speakers", chosen)
    return recognizer(chosen), scores

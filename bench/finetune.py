"""Benchmark: fine-tuning segments per second, ours beside the original repository's approach, and the input pipeline.

(a) plain: the original repository's training: every file cut or padded to a fixed 8
    segments held in memory, TimeDistributed(backbone) -> BLSTM -> attention -> dense,
    the whole network trained by one model.fit, float32.
(b) ours: what ``train.py --backbone-mode finetune`` trains: every segment of every file,
    fixed-shape batches bucketed by segment count and assembled by background workers
    (batching.PaddedBatches), the backbone at a tenth of the learning rate with its
    BatchNorm frozen, train.py's default head; float32 and mixed precision.
(c) the input pipeline alone: the same batches through model.fit of a model that does
    almost nothing (a mean and one Dense layer): what the pipeline can deliver.

(a) and (b) for ResNet50V2 and EfficientNet-Lite0, at 64x64 (the segments as cut) and
resized inside the model (--sizes). Random weights (the speed is that of ImageNet's),
--batch-size utterances per batch. Segments/s counts the real segments of an epoch
(padding, and (a)'s cut-off segments, not counted), from the fastest epoch after the first
(which traces and compiles).

    python bench/finetune.py [--data ../shared/data/ravdess-mini] [--files 24] [--sizes 64 224]
    KERAS_BACKEND=jax python bench/finetune.py --files 0 --batch-size 64   # on a GPU: every file
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # the project's modules, not this folder's

# Keras loads where a model is made: -h answers without it.
import numpy as np  # noqa: E402

import features  # noqa: E402
import files  # noqa: E402
from backbones import BACKBONES, build_backbone  # noqa: E402
from batching import PaddedBatches  # noqa: E402
from bench.model import FIXED_SEGMENTS, fixed_length  # noqa: E402
from bench.train import later_epoch  # noqa: E402
from corpora.ravdess import read_ravdess  # noqa: E402
from mixed_precision import PRECISIONS  # noqa: E402
from recipe import Options  # noqa: E402
from utils import DEFAULT_FEATURES  # noqa: E402

if TYPE_CHECKING:
    import keras

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ravdess-mini"


def plain_model(backbone: str, size: int, classes: int) -> keras.Model:
    """The original repository's model: a fixed 8 segments, TimeDistributed backbone, BLSTM, attention, dense."""
    import keras
    from keras import layers

    from classifier import AttentionPooling

    segment_shape = DEFAULT_FEATURES.segment_shape
    image = build_backbone(backbone, None, (size, size, segment_shape[2]), "last")
    if size != segment_shape[0]:
        image = keras.Sequential([keras.Input(segment_shape), layers.Resizing(size, size), image])
    segments = keras.Input((FIXED_SEGMENTS, *segment_shape))
    x = layers.TimeDistributed(image)(segments)
    x = layers.Bidirectional(layers.LSTM(256, return_sequences=True))(x)
    x, _ = AttentionPooling(128)(x)
    x = layers.Dense(256, activation="relu")(x)
    x = layers.Dense(128, activation="relu")(x)
    model = keras.Model(segments, layers.Dense(classes, activation="softmax")(x))
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
    return model


def time_plain(backbone: str, size: int, utterances: list[np.ndarray], labels: np.ndarray, batch: int, epochs: int) -> float:
    inputs = np.concatenate([fixed_length(segments) for segments in utterances])
    model = plain_model(backbone, size, int(labels.max()) + 1)
    seconds = later_epoch(
        lambda n, callbacks: model.fit(inputs, labels, batch_size=batch, epochs=n, callbacks=callbacks, verbose=0), epochs
    )
    return sum(min(len(segments), FIXED_SEGMENTS) for segments in utterances) / seconds


def time_ours(model: keras.Model, utterances: list[np.ndarray], labels: np.ndarray, batch: int, epochs: int) -> float:
    batches = PaddedBatches(utterances, labels, batch, seed=0)
    seconds = later_epoch(
        lambda n, callbacks: model.fit(batches.as_keras_data(), epochs=n, callbacks=callbacks, shuffle=False, verbose=0),
        epochs,
    )
    return sum(len(segments) for segments in utterances) / seconds


def finetune_model(backbone: str, size: int, precision: str, classes: int) -> keras.Model:
    """train.py's fine-tuning model (its default head and fine-tuning settings) for this backbone, size and precision."""
    from SpeechModel import SpeechModel

    options = dataclasses.replace(Options(epochs=1), backbone=backbone, image_size=size)
    return SpeechModel.create_model(
        classes, weights=None, **options.architecture(), precision=precision,  # Adam at create_model's 1e-4, as train.py's
        backbone_learning_rate_scale=options.backbone_lr_scale, freeze_batch_normalization=options.freeze_batchnorm,
    )


def pipeline_model(classes: int) -> keras.Model:
    import keras
    from keras import layers

    segments = keras.Input((None, *DEFAULT_FEATURES.segment_shape))
    x = layers.Lambda(lambda value: keras.ops.mean(value, axis=(1, 2, 3)))(segments)
    model = keras.Model(segments, layers.Dense(classes, activation="softmax")(x))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of RAVDESS files (default: %(default)s)")
    parser.add_argument("--files", type=int, default=24, help="files per epoch, the first in name order; 0: all (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="utterances per batch (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per approach; the first is not timed (default: %(default)s)")
    parser.add_argument("--backbones", nargs="+", choices=sorted(BACKBONES), default=sorted(BACKBONES), help="(default: all)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 224], help="image sizes (default: 64 224)")
    parser.add_argument("--mixed", choices=PRECISIONS[1:], default="bfloat16", help="the mixed precision of (b) (default: %(default)s)")
    parser.add_argument("--skip-plain", action="store_true", help="time (b) and (c) only")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch traces and is not timed")
    import keras

    corpus = sorted(read_ravdess(args.data), key=lambda u: str(u.path))
    if not corpus:
        parser.exit(1, f"error: no RAVDESS speech files under {args.data}\n")
    segments = features.extract_features(
        [u.path for u in corpus], cache_dir=files.default_cache_dir() / "features", progress=False
    ).segments
    names = sorted({u.label for u in corpus})
    every = [segments[features.source_key(u.path)] for u in corpus]  # the pipeline's epoch: every file
    every_label = np.array([names.index(u.label) for u in corpus], dtype=np.int32)
    utterances, labels = every[: args.files or None], every_label[: args.files or None]
    total = sum(len(item) for item in utterances)

    cores = len(os.sched_getaffinity(0))
    device = ", ".join(sorted({str(d) for d in keras.distribution.list_devices()})) if keras.backend.backend() == "jax" else "default device"
    print(
        f"fine-tuning: {len(utterances)} files, {total} segments ({args.data}), batch {args.batch_size}, {cores} cores, "
        f"{device}, Keras {keras.__version__} on {keras.backend.backend()}"
    )
    keras.utils.set_random_seed(0)
    pipeline = time_ours(pipeline_model(len(names)), every, every_label, args.batch_size, args.epochs)
    print(
        f"(c) input pipeline alone (PaddedBatches through model.fit of a near-empty model, all {len(every)} files): "
        f"{pipeline:.0f} segments/s"
    )
    print(f"{'backbone':<20}{'size':>6}{'(a) plain fp32':>16}{'(b) ours fp32':>15}{f'(b) ours {args.mixed}':>18}{'(b)/(a)':>9}{'(c)/(b)':>9}")
    for backbone in args.backbones:
        for size in args.sizes:
            plain = None if args.skip_plain else time_plain(backbone, size, utterances, labels, args.batch_size, args.epochs)
            ours = {
                precision: time_ours(finetune_model(backbone, size, precision, len(names)), utterances, labels, args.batch_size, args.epochs)
                for precision in ("float32", args.mixed)
            }
            best = max(ours.values())
            plain_text, ratio = ("-", "-") if plain is None else (f"{plain:.1f}", f"{best / plain:.1f}x")
            print(
                f"{backbone:<20}{size:>6}{plain_text:>16}{ours['float32']:>15.1f}{ours[args.mixed]:>18.1f}"
                f"{ratio:>9}{pipeline / best:>8.0f}x",
                flush=True,
            )
    print("segments/s; (b)/(a): ours (the faster precision) against plain; (c)/(b): pipeline headroom over the training step")


if __name__ == "__main__":
    main()

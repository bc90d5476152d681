"""Benchmark: segments per second through the real DCNN-BLSTMwA forward pass.

(a) plain: one utterance at a time, cut or padded to a fixed 8 segments, one
    model.predict call each, as the original repository served its model.
(b) ours: many utterances per batch, sorted by length so that each batch is padded
    only to its own longest utterance, one predict_on_batch call per batch.
(c) ours as (b) under the mixed_bfloat16 policy (CPUs with bf16 units gain).
Then, per backbone (ResNet50V2 and EfficientNet-Lite0), ms per segment of the batched
forward pass (b) and of a training step (forward and backward, batches of the same
utterances).

All use ResNet50V2 at 64x64 (random weights: the speed is the same as ImageNet's),
and the segment counts of the real utterances in --data. Segments/s counts the real
segments each approach analyses (padding is not counted).

    python bench/model.py [--data ../shared/data/ravdess-mini] [--batch-utterances 16]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Keras loads in main(), after the arguments: -h answers without it.
import numpy as np  # noqa: E402

from batching import pad_batch, similar_length_batches  # noqa: E402
from presets import DEFAULT, FAST, PRESETS  # noqa: E402
from recipe import Options  # noqa: E402
from utils import DEFAULT_FEATURES, find_audio_files  # noqa: E402

if TYPE_CHECKING:
    import keras

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ravdess-mini"
FIXED_SEGMENTS = 8  # the original repository's input: 3 s of audio
# The recipes bench/train.py and bench/infer.py time: train.py's default, and the same on the segments as cut.
RECIPES = {name: Options(epochs=1, **PRESETS[name]) for name in (DEFAULT, FAST)}  # the presets measured by the benchmarks


def describe(recipe: Options) -> str:
    """A recipe's model in a few words, e.g. "efficientnet_lite0 224x224, all stages, stats head, permissive prosody"."""
    size = recipe.image_size or DEFAULT_FEATURES.segment_shape[0]
    prosody_set = recipe.architecture()["prosody_set"]
    return f"{recipe.backbone} {size}x{size}, {recipe.stages} stages, {recipe.head} head" + (f", {prosody_set} prosody" if prosody_set else "")


def fixed_length(segments: np.ndarray) -> np.ndarray:
    fixed = np.zeros((1, FIXED_SEGMENTS, *segments.shape[1:]), dtype=np.float32)
    kept = segments[:FIXED_SEGMENTS]
    fixed[0, : len(kept)] = kept
    return fixed


def length_sorted_batches(utterances: list[np.ndarray], batch_utterances: int) -> list[np.ndarray]:
    return [pad_batch(batch) for batch in similar_length_batches(utterances, batch_utterances)]


def time_plain(model: keras.Model, utterances: list[np.ndarray]) -> tuple[float, int]:
    inputs = [fixed_length(segments) for segments in utterances]
    model.predict(inputs[0], verbose=0)  # build and trace once, not timed
    start = time.perf_counter()
    for x in inputs:
        model.predict(x, verbose=0)
    real_segments = sum(min(len(segments), FIXED_SEGMENTS) for segments in utterances)
    return time.perf_counter() - start, real_segments


def time_batched(model: keras.Model, utterances: list[np.ndarray], batch_utterances: int) -> tuple[float, int]:
    batches = length_sorted_batches(utterances, batch_utterances)
    for batch in (batches[0], batches[-1]):  # trace the shape-generic function once, not timed
        model.predict_on_batch(batch)
    start = time.perf_counter()
    for batch in batches:
        model.predict_on_batch(batch)
    return time.perf_counter() - start, sum(len(segments) for segments in utterances)


def time_training_step(model: keras.Model, utterances: list[np.ndarray], batch_utterances: int) -> tuple[float, int]:
    batches = length_sorted_batches(utterances, batch_utterances)
    labels = [np.zeros(len(batch), np.int32) for batch in batches]
    for batch, label in zip(batches[:2], labels[:2]):  # trace, not timed
        model.train_on_batch(batch, label)
    start = time.perf_counter()
    for batch, label in zip(batches, labels):
        model.train_on_batch(batch, label)
    return time.perf_counter() - start, sum(len(segments) for segments in utterances)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of audio files (default: %(default)s)")
    parser.add_argument("--batch-utterances", type=int, default=16, help="utterances per batch in (b) and (c) (default: %(default)s)")
    parser.add_argument("--plain-utterances", type=int, default=24, help="utterances timed in (a), the slow one (default: %(default)s)")
    parser.add_argument("--train-utterances", type=int, default=48, help="utterances in the timed training steps (default: %(default)s)")
    args = parser.parse_args()
    import keras

    from features import default_cache_dir, extract_features
    from SpeechModel import SpeechModel

    files = find_audio_files(args.data)
    if not files:
        parser.exit(1, f"error: no audio files under {args.data}\n")
    utterances = list(extract_features(files, cache_dir=default_cache_dir(), progress=False).segments.values())

    model = SpeechModel.create_model(weights=None)
    plain_seconds, plain_segments = time_plain(model, utterances[: args.plain_utterances])
    ours_seconds, ours_segments = time_batched(model, utterances, args.batch_utterances)
    bf16_model = SpeechModel.create_model(weights=None, precision="bfloat16")
    bf16_seconds, bf16_segments = time_batched(bf16_model, utterances, args.batch_utterances)

    plain_rate = plain_segments / plain_seconds
    cores = len(os.sched_getaffinity(0))
    lengths = [len(segments) for segments in utterances]
    print(
        f"model forward: ResNet50V2 64x64, {len(utterances)} utterances of {min(lengths)}-{max(lengths)} segments "
        f"({args.data}), {cores} cores, Keras {keras.__version__} on {keras.backend.backend()}"
    )
    print(f"{'approach':<52}{'segments/s':>11}{'ms/segment':>12}{'vs (a)':>8}")
    rows = [
        (f"(a) plain: 1 utterance/call, fixed {FIXED_SEGMENTS} segments", plain_rate),
        (f"(b) ours: {args.batch_utterances} utterances/batch, padded to longest", ours_segments / ours_seconds),
        ("(c) ours as (b), mixed_bfloat16", bf16_segments / bf16_seconds),
    ]
    for name, rate in rows:
        print(f"{name:<52}{rate:>11.1f}{1000 / rate:>12.2f}{rate / plain_rate:>7.1f}x")

    steps = utterances[: args.train_utterances]
    print(f"\nper backbone, float32: forward as (b) over all utterances, training steps over {len(steps)}")
    print(f"{'backbone':<22}{'forward ms/segment':>20}{'train step ms/segment':>24}")
    for backbone in ("resnet50v2", "efficientnet_lite0"):
        candidate = SpeechModel.create_model(weights=None, backbone=backbone)
        forward_seconds, forward_segments = time_batched(candidate, utterances, args.batch_utterances)
        step_seconds, step_segments = time_training_step(candidate, steps, args.batch_utterances)
        print(f"{backbone:<22}{1000 * forward_seconds / forward_segments:>20.2f}{1000 * step_seconds / step_segments:>24.2f}")


if __name__ == "__main__":
    main()

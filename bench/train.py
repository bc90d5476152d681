"""Benchmark: seconds per training epoch, ours (frozen and finetune) against the plain approach.

(a) plain: what the original repository did: every file cut or padded to a fixed 8
    segments, all arrays in memory, the whole network fine-tuned, one model.fit.
(b) ours, finetune: end to end on every segment of every file (no cut), batches grouped
    by length and padded to their longest (batching.PaddedBatches through tf.data).
(c) ours, frozen: the backbone embeds every segment once (features.extract_embeddings, timed on its
    own, against a bare forward pass over the same segments), then only BLSTM,
    attention and head train on the embeddings.
(d) ours, frozen, train.py's default recipe: EfficientNet-Lite0 at 224x224, every stage's
    output, the statistics head: the embedding pass and a head epoch.
(e) ours, frozen, the fast recipe: as (d) at 64x64.

(a)-(c) use ResNet50V2 at 64x64 (the earlier default); all have random weights (the speed
is the same as ImageNet's; the original's TimeDistributed wrapper would make (a) slower still),
batch 32 utterances, Adam, no validation inside the timed epochs. An epoch's time is that
of a later epoch (the first one traces the graphs); segments/s counts the real segments
an epoch trains on (padding is not counted).

    python bench/train.py [--data ../shared/data/ravdess-mini] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # the project's train.py, not this file

# Keras loads where a model is made: -h answers without it.
import numpy as np  # noqa: E402

import features  # noqa: E402
import files  # noqa: E402
from batching import PaddedBatches  # noqa: E402
from bench.model import FIXED_SEGMENTS, RECIPES, describe, fixed_length  # noqa: E402
from corpora.ravdess import read_ravdess  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ravdess-mini"
BATCH_UTTERANCES = 32  # train.py's default --batch-size


def later_epoch(fit, epochs: int) -> float:
    """Seconds of the fastest epoch after the first of ``fit(epochs, callbacks)``."""
    import keras

    starts: list[float] = []
    seconds: list[float] = []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: starts.append(time.perf_counter()),
        on_epoch_end=lambda epoch, logs: seconds.append(time.perf_counter() - starts[-1]),
    )
    fit(epochs, [timer])
    return min(seconds[1:])


def time_plain(utterances: list[np.ndarray], labels: np.ndarray, epochs: int) -> tuple[float, int]:
    from SpeechModel import SpeechModel

    inputs = np.concatenate([fixed_length(segments) for segments in utterances])
    model = SpeechModel.create_model(weights=None)
    seconds = later_epoch(
        lambda n, callbacks: model.fit(inputs, labels, batch_size=BATCH_UTTERANCES, epochs=n, callbacks=callbacks, verbose=0),
        epochs,
    )
    return seconds, sum(min(len(segments), FIXED_SEGMENTS) for segments in utterances)


def time_finetune(utterances: list[np.ndarray], labels: np.ndarray, epochs: int) -> tuple[float, int]:
    from SpeechModel import SpeechModel

    model = SpeechModel.create_model(weights=None)
    batches = PaddedBatches(utterances, labels, BATCH_UTTERANCES, seed=0)
    seconds = later_epoch(
        lambda n, callbacks: model.fit(batches.as_keras_data(), epochs=n, callbacks=callbacks, shuffle=False, verbose=0),
        epochs,
    )
    return seconds, sum(len(segments) for segments in utterances)


def time_embedding(segments: dict, cache_dir: Path, **recipe) -> tuple[float, float, dict]:
    """Seconds of features.extract_embeddings (empty cache) and of a bare forward pass over the same segments.

    The backbone is that of ``SpeechModel.create_model(weights=None, **recipe)``.
    """
    from SpeechModel import SpeechModel

    model = SpeechModel.create_model(weights=None, **recipe)
    embedder = SpeechModel.inference_function(model.embed, (None, *model.features.segment_shape))
    stacked = np.concatenate(list(segments.values()))
    budget = features.EMBEDDING_BATCH_SEGMENTS
    chunks = [stacked[start : start + budget] for start in range(0, len(stacked), budget)]
    for chunk in (chunks[0], chunks[-1]):  # trace both shapes once, not timed
        embedder(chunk[np.newaxis])
    start = time.perf_counter()
    for chunk in chunks:
        embedder(chunk[np.newaxis])
    bare = time.perf_counter() - start
    start = time.perf_counter()
    embeddings = features.extract_embeddings(
        embedder, segments, width=model.encoder.features, fingerprint=features.encoder_fingerprint(model.encoder),
        cache_dir=cache_dir, progress=False,
    )
    return time.perf_counter() - start, bare, embeddings


def time_frozen_head(embeddings: list[np.ndarray], labels: np.ndarray, epochs: int, **recipe) -> float:
    """Seconds of one later epoch of the head of ``SpeechModel.create_model(weights=None, **recipe)`` on ``embeddings``."""
    from SpeechModel import SpeechModel

    head = SpeechModel.create_model(weights=None, compile=False, **recipe).head_model()
    SpeechModel.compile_head(head)
    # A recipe with a prosodic branch: one (standardised) vector per utterance beside its embeddings.
    vectors = None if len(head.inputs) == 1 else list(np.random.default_rng(0).normal(size=(len(embeddings), head.inputs[1].shape[1])))
    batches = PaddedBatches(embeddings, labels, BATCH_UTTERANCES, seed=0, vectors=vectors)
    return later_epoch(
        lambda n, callbacks: head.fit(batches.as_keras_data(), epochs=n, callbacks=callbacks, shuffle=False, verbose=0),
        epochs,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of RAVDESS files (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per approach; the first is not timed (default: %(default)s)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch traces and is not timed")
    import keras

    corpus = read_ravdess(args.data)
    if not corpus:
        parser.exit(1, f"error: no RAVDESS speech files under {args.data}\n")
    segments = features.extract_features(
        [u.path for u in corpus], cache_dir=files.default_cache_dir() / "features", progress=False
    ).segments
    utterances = list(segments.values())
    names = sorted({u.label for u in corpus})
    labels = np.array([names.index(u.label) for u in corpus], dtype=np.int32)

    keras.utils.set_random_seed(0)
    plain_epoch, plain_segments = time_plain(utterances, labels, args.epochs)
    finetune_epoch, all_segments = time_finetune(utterances, labels, args.epochs)
    with tempfile.TemporaryDirectory() as cache_dir:
        embed_seconds, bare_seconds, embeddings = time_embedding(segments, Path(cache_dir))
    frozen_epoch = time_frozen_head([embeddings[name] for name in segments], labels, max(args.epochs, 3))
    timings = {}  # recipe name: (embedding pass seconds, head epoch seconds)
    for name, recipe in RECIPES.items():
        architecture = recipe.architecture()
        with tempfile.TemporaryDirectory() as cache_dir:
            recipe_seconds, _, recipe_embeddings = time_embedding(segments, Path(cache_dir), **architecture)
        recipe_epoch = time_frozen_head(
            [recipe_embeddings[key] for key in segments], labels, max(args.epochs, 3), **architecture
        )
        timings[name] = (recipe_seconds, recipe_epoch)

    cores = len(os.sched_getaffinity(0))
    print(
        f"training: {len(utterances)} files, {all_segments} segments ({args.data}), batch "
        f"{BATCH_UTTERANCES}, {cores} cores, Keras {keras.__version__} on {keras.backend.backend()}"
    )
    print(f"{'approach':<56}{'s/epoch':>9}{'segments/s':>12}{'epoch vs (a)':>14}")
    rows = [
        (f"(a) plain: fixed {FIXED_SEGMENTS} segments in memory, fine-tune, one fit", plain_epoch, plain_segments),
        ("(b) ours finetune: every segment, length-grouped batches", finetune_epoch, all_segments),
        ("(c) ours frozen: head on cached embeddings", frozen_epoch, all_segments),
    ]
    for name, seconds, count in rows:
        print(f"{name:<56}{seconds:>9.2f}{count / seconds:>12.0f}{plain_epoch / seconds:>13.1f}x")
    print(
        f"(c) one-time embedding pass: {embed_seconds:.2f} s for {all_segments} segments "
        f"({all_segments / embed_seconds:.0f} segments/s), bare forward pass {bare_seconds:.2f} s: "
        f"{embed_seconds / bare_seconds:.2f}x of it"
    )
    for label, (name, (seconds, epoch)) in zip("de", timings.items()):
        print(
            f"({label}) {name} recipe, {describe(RECIPES[name])}: one-time embedding pass {seconds:.2f} s "
            f"({all_segments / seconds:.0f} segments/s), then {epoch:.3f} s per head epoch"
        )


if __name__ == "__main__":
    main()

"""Accuracy check: the permissive prosodic set (prosody.py) fused with the CNN statistics, beside MFCC + SVM.

Before the branch is built into train.py: what it gives on a corpus, in the speaker folds
train.py and bench/recipe.py use. Every utterance is described by the default recipe's
statistics head input (frozen EfficientNet-Lite0, all stages, each speaker's segment
embeddings standardised by that speaker's statistics, then their mean and standard deviation
over the utterance) at each --image-sizes size, and by `prosody.prosodic_features`
standardised per speaker the same way. A logistic regression (scikit-learn, balanced class
weights) trains on each fold's training speakers on a block or a concatenation of blocks,
the prosodic block multiplied by a weight chosen on the fold's validation speakers from
--prosody-weights (it has ~80 values against thousands of statistics). The embeddings come
from train.py's cache (the same key), so a corpus train.py has seen is not embedded again.
Per-speaker statistics make every row but the baseline and the "no speaker normalisation"
ones transductive: each test speaker's unlabelled files are seen together first.

    python bench/prosody.py --data DATA [--folds 5] [--image-sizes 224,64] [--sets permissive,egemaps] [--target DATA2]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)

import numpy as np  # noqa: E402

import corpora  # noqa: E402
import files  # noqa: E402
import prosody  # noqa: E402
import utils  # noqa: E402
from bench.recipe import baseline_uar, mfcc_statistics, read_folds  # noqa: E402


def prosody_of(path: Path, sets: tuple[str, ...]) -> list[np.ndarray]:
    """Each named set's vector of one file."""
    y = utils.load_wav(path, prosody.SR)
    return [prosody.FEATURE_SETS[name](y, prosody.SR) for name in sets]


def statistics_by_size(utterances: list, sizes: list[int], labels: int) -> dict[tuple[int, bool], dict[Path, np.ndarray]]:
    """Per (size, per-speaker normalisation): each utterance's mean and std of its segment embeddings, (2 * width,) per path.

    With normalisation the embeddings are standardised by their speaker's statistics first;
    without, they are left as they are (the classifier's scaler then standardises globally).
    """
    import features
    from SpeechModel import SpeechModel
    from normalization import RunningStatistics
    from recipe import Options

    config = utils.DEFAULT_FEATURES
    cache = files.default_cache_dir()
    paths = [u.path for u in utterances]
    segments = features.extract_features(paths, config=config, cache_dir=cache / "features").segments
    described = {}
    for size in sizes:
        model = SpeechModel.create_model(labels, weights="imagenet", features=config, **{**Options(epochs=1).architecture(), "image_size": size}, compile=False)
        embed = SpeechModel.inference_function(model.embed, (None, *config.segment_shape))
        embeddings = features.extract_embeddings(
            embed, segments, width=model.encoder.features, fingerprint=features.encoder_fingerprint(model.encoder),
            config=config, cache_dir=cache / "embeddings",
        )
        embeddings = {path: embeddings[features.source_key(path)] for path in paths}
        speaker_statistics = {
            speaker: RunningStatistics.of(embeddings[u.path] for u in utterances if u.speaker == speaker)
            for speaker in {u.speaker for u in utterances}
        }
        for normalised in (True, False):
            described[size, normalised] = {}
            for u in utterances:
                statistics = speaker_statistics[u.speaker]
                rows = (embeddings[u.path] - statistics.mean) / statistics.std if normalised else embeddings[u.path]
                described[size, normalised][u.path] = np.concatenate([rows.mean(axis=0), rows.std(axis=0)])
    return described


def per_speaker(values: dict[Path, np.ndarray], utterances: list) -> dict[Path, np.ndarray]:
    """Each speaker's vectors (of ``utterances``) standardised by that speaker's statistics (`RunningStatistics`)."""
    from normalization import RunningStatistics

    out = {}
    for speaker in {u.speaker for u in utterances}:
        own = [u.path for u in utterances if u.speaker == speaker]
        statistics = RunningStatistics.of([np.stack([values[path] for path in own])])
        out.update({path: (values[path] - statistics.mean) / statistics.std for path in own})
    return out


def fused_uar(blocks: list[dict], prosodic: dict | None, split: corpora.SpeakerSplit, weights: list[float]) -> float:
    """Test UAR of a logistic regression on the blocks side by side (+ the prosodic block, its weight chosen on validation)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import recall_score
    from sklearn.preprocessing import StandardScaler

    def matrix(part: list, weight: float, scalers: list | None) -> tuple[np.ndarray, list]:
        chosen = blocks + ([prosodic] if prosodic is not None else [])
        raw = [np.stack([block[u.path] for u in part]) for block in chosen]
        scalers = scalers or [StandardScaler().fit(array) for array in raw]
        scaled = [scaler.transform(array) for scaler, array in zip(scalers, raw)]
        if prosodic is not None:
            scaled[-1] = scaled[-1] * weight
        return np.concatenate(scaled, axis=1), scalers

    def fit_score(weight: float, evaluated: list) -> float:
        x, scalers = matrix(split.train, weight, None)
        classifier = LogisticRegression(max_iter=2000, class_weight="balanced").fit(x, [u.label for u in split.train])
        predicted = classifier.predict(matrix(evaluated, weight, scalers)[0])
        return float(recall_score([u.label for u in evaluated], predicted, average="macro", zero_division=0))

    weight = max(weights, key=lambda w: fit_score(w, split.validation)) if prosodic is not None and blocks else 1.0
    return fit_score(weight, split.test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a corpus folder as distributed")
    parser.add_argument("--corpus", choices=[corpora.AUTO, *corpora.CORPORA], default=corpora.AUTO, help="which corpus --data holds (default: %(default)s)")
    parser.add_argument("--folds", type=int, default=5, help="speaker folds, as train.py --folds (default: %(default)s)")
    parser.add_argument("--image-sizes", default="224,64", help="comma-separated image sizes of the CNN statistics (default: %(default)s)")
    parser.add_argument("--sets", default="permissive", help=f"comma-separated prosodic sets to measure, of {', '.join(prosody.FEATURE_SETS)}; egemaps needs pip install opensmile, whose licence forbids commercial use (default: %(default)s)")
    parser.add_argument("--target", type=Path, default=None, help="a second corpus folder: also train on every --data speaker (the first fold's validation speakers for the weight) and score on it, over the emotions both share")
    parser.add_argument("--prosody-weights", default="1,2,3,5,7,10,15,20", help="weights of the prosodic block to choose from on validation speakers (default: %(default)s)")
    args = parser.parse_args()
    try:
        sizes = [int(size) for size in args.image_sizes.split(",")]
        weights = [float(weight) for weight in args.prosody_weights.split(",")]
    except ValueError:
        parser.error("--image-sizes and --prosody-weights take comma-separated numbers")
    sets = tuple(args.sets.split(","))
    if unknown := set(sets) - set(prosody.FEATURE_SETS):
        parser.error(f"--sets: unknown set {', '.join(sorted(unknown))}; choose from {', '.join(prosody.FEATURE_SETS)}")
    for name in sets:
        try:
            prosody.FEATURE_SETS[name](np.zeros(prosody.SR, np.float32), prosody.SR)  # a missing package is said before any work
        except ImportError as error:
            parser.exit(1, f"error: --sets {name}: {error}\n")
    corpus, utterances, splits = read_folds(parser, args.corpus, args.data, args.folds)
    target = []
    if args.target is not None:
        try:
            target_corpus = corpora.resolve_corpus(corpora.AUTO, args.target)
            target = corpora.read_corpus(target_corpus, args.target, download=False, url=None, cache_dir=Path("."))
        except corpora.CorpusError as error:
            parser.exit(1, f"error: --target: {error}\n")

    start = time.perf_counter()
    mfcc, raw = audio_descriptions([u.path for u in utterances + target], sets)
    print(f"UAR, {corpus.title}, {args.folds} folds by speaker groups of {len({u.speaker for u in utterances})} speakers "
          f"({len(utterances)} files, {args.data}), {len(os.sched_getaffinity(0))} cores; MFCC and prosodic sets of every file "
          f"in {time.perf_counter() - start:.0f} s")
    described = describe(utterances, mfcc, raw, sizes)
    print_rows(table(described, splits, sets, sizes, weights))
    if args.target is None:
        return
    shared = {u.label for u in utterances} & {u.label for u in target}
    both = described.merged(describe(target, mfcc, raw, sizes))
    validation = {u.speaker for u in splits[0].validation}
    source = [u for u in utterances if u.label in shared]
    split = corpora.SpeakerSplit(
        train=[u for u in source if u.speaker not in validation],
        validation=[u for u in source if u.speaker in validation],
        test=[u for u in target if u.label in shared],
    )
    print(f"UAR across corpora: trained on {corpus.title} ({len(split.train)} files; validation speakers {sorted(validation)}), "
          f"scored on {target_corpus.title} ({len(split.test)} files), over the shared emotions {', '.join(sorted(shared))}; "
          "each corpus's speakers standardised by their own statistics")
    print_rows(table(both, [split], sets, sizes, weights))


@dataclasses.dataclass
class Described:
    """Every file's descriptions: MFCC statistics, the prosodic sets (raw and per speaker), the CNN statistics."""

    mfcc: dict  # path -> vector
    raw: dict  # set name -> path -> vector
    prosodic: dict  # set name -> path -> per-speaker standardised vector
    statistics: dict  # (size, per-speaker normalised) -> path -> vector

    def merged(self, other: Described) -> Described:
        """Both corpora's descriptions (each standardised by its own speakers' statistics)."""

        def union(mine: dict, theirs: dict) -> dict:
            return {key: {**mine[key], **theirs[key]} for key in mine}

        return Described({**self.mfcc, **other.mfcc}, union(self.raw, other.raw), union(self.prosodic, other.prosodic),
                         union(self.statistics, other.statistics))


def audio_descriptions(paths: list[Path], sets: tuple[str, ...]) -> tuple[dict, dict]:
    """MFCC statistics and each prosodic set of every file, in worker processes started before TensorFlow loads (eGeMAPS needs that)."""
    with ProcessPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        mfcc = dict(zip(paths, pool.map(mfcc_statistics, paths, chunksize=8)))
        vectors = list(pool.map(functools.partial(prosody_of, sets=sets), paths, chunksize=8))
    return mfcc, {name: {path: row[index] for path, row in zip(paths, vectors)} for index, name in enumerate(sets)}


def describe(utterances: list, mfcc: dict, raw: dict, sizes: list[int]) -> Described:
    """One corpus's descriptions, its speakers standardised by their own statistics."""
    own = {u.path for u in utterances}
    return Described(
        {path: vector for path, vector in mfcc.items() if path in own},
        {name: {path: vector for path, vector in values.items() if path in own} for name, values in raw.items()},
        {name: per_speaker(values, utterances) for name, values in raw.items()},
        statistics_by_size(utterances, sizes, len({u.label for u in utterances})),
    )


def table(described: Described, splits: list, sets: tuple[str, ...], sizes: list[int], weights: list[float]) -> list[tuple[str, list[float]]]:
    """Every row's UAR per split: the baseline, each set alone, each combination of sizes with and without each set."""

    def uars(blocks: list[dict], fused: dict | None) -> list[float]:
        return [fused_uar(blocks, fused, split, weights) for split in splits]

    rows = [("baseline: MFCC mean/std + SVM", [baseline_uar([], described.mfcc, split) for split in splits])]
    rows += [(f"{name} alone ({len(next(iter(described.raw[name].values())))} values)", uars([], described.prosodic[name])) for name in sets]
    for count in range(1, len(sizes) + 1):
        for chosen in itertools.combinations(sizes, count):
            title = " + ".join(f"{size} statistics" for size in chosen)
            blocks = [described.statistics[size, True] for size in chosen]
            rows.append((title, uars(blocks, None)))
            rows += [(f"{title} + {name}", uars(blocks, described.prosodic[name])) for name in sets]
    plain = [described.statistics[sizes[0], False]]
    rows.append((f"{sizes[0]} statistics, no speaker normalisation", uars(plain, None)))
    rows += [(f"{sizes[0]} statistics + {name}, no speaker normalisation", uars(plain, described.raw[name])) for name in sets]
    return rows


def print_rows(rows: list[tuple[str, list[float]]]) -> None:
    for name, uars in rows:
        folds = " ".join(f"{uar:.3f}" for uar in uars)
        print(f"  {np.mean(uars):.3f} ± {np.std(uars):.3f}   folds {folds}   {name}")


if __name__ == "__main__":
    main()

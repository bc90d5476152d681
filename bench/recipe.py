"""Recipe check: speaker-independent UAR of train.py runs beside a plain MFCC + SVM baseline.

The baseline describes each utterance by the mean and standard deviation of 40 MFCCs
(16 kHz, the project's 25 ms / 10 ms framing) and classifies with scikit-learn's RBF
SVM (standardised features, balanced class weights, default C and gamma). It trains on
each fold's training speakers only, the same speakers train.py trains on (train.py's
validation speakers are used there for early stopping only), and is scored on the same
test speakers: `corpora.speaker_folds` gives the same folds for the same files and K.

    python train.py 30 --dataset DATA --folds 5                           # one or more runs
    python bench/recipe.py --data DATA --folds 5 saved_model/<run> ...      # baseline beside them
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import librosa  # noqa: E402
import numpy as np  # noqa: E402

import corpora  # noqa: E402
from trainer import ENROLMENT_FILES  # noqa: E402
import utils  # noqa: E402

N_MFCC = 40  # MFCCs per frame


def mfcc_statistics(path: Path) -> np.ndarray:
    """Mean and standard deviation over time of 40 MFCCs: shape (80,)."""
    y = utils.load_wav(path)
    config = utils.DEFAULT_FEATURES
    mfcc = librosa.feature.mfcc(
        y=y, sr=config.sr, n_mfcc=N_MFCC, n_fft=config.n_fft, win_length=config.win_length, hop_length=config.hop_length
    )
    return np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1)])


def baseline_uar(utterances: list, descriptors: dict, split: corpora.SpeakerSplit) -> float:
    # scikit-learn loads here, not for -h.
    from sklearn.metrics import recall_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    classifier = make_pipeline(StandardScaler(), SVC(class_weight="balanced"))
    classifier.fit([descriptors[u.path] for u in split.train], [u.label for u in split.train])
    predicted = classifier.predict([descriptors[u.path] for u in split.test])
    return float(recall_score([u.label for u in split.test], predicted, average="macro"))


def run_uars(run: Path, splits: list[corpora.SpeakerSplit]) -> list[tuple[str, list[float]]]:
    """The run's description and its UAR per fold, and for a transductive run more rows: each file scored
    alone (as infer.py scores it), and alone after enrolment (infer.py --enroll); refuses a run whose folds differ from ``splits``."""
    metrics = json.loads((run / "metrics.json").read_text())
    if "folds" not in metrics:
        raise SystemExit(f"error: {run} is not a cross-validation run (train.py --folds K)")
    if [fold["speakers"]["test"] for fold in metrics["folds"]] != [split.speakers()["test"] for split in splits]:
        raise SystemExit(f"error: {run} tested other speakers per fold than --data and --folds give")
    options = metrics["options"]
    name = (
        f"{run.name}: {options.get('backbone', 'resnet50v2')} {options['backbone_mode']} {options.get('image_size') or 64}px "
        f"{options.get('stages', 'last')} stages, {options.get('head', 'blstm-attention')} head, "
        f"speaker norm {'on' if options.get('speaker_norm') else 'off'}, weights {options['weights']}, "
        f"enhancement {'on' if options['augment'] else 'off'}, balance {options['balance']}, "
        f"prosody {options.get('prosody') or 'none'}"
    )
    prosodic_weights = sorted({fold["prosody_weight"] for fold in metrics["folds"] if "prosody_weight" in fold})
    if prosodic_weights:
        name += f" (weight {'/'.join(f'{weight:g}' for weight in prosodic_weights)})"
    rows = [(name + (" (transductive)" if metrics.get("transductive") else ""), [fold["uar"] for fold in metrics["folds"]])]
    if metrics.get("transductive") and all("single_file_uar" in fold for fold in metrics["folds"]):
        rows.append((f"{run.name}: the same, each file alone", [fold["single_file_uar"] for fold in metrics["folds"]]))
    if metrics.get("transductive") and all("enrolled_uar" in fold for fold in metrics["folds"]):
        rows.append((f"{run.name}: the same, each file alone after {ENROLMENT_FILES} of its speaker's enrolled", [fold["enrolled_uar"] for fold in metrics["folds"]]))
    return rows


def read_folds(
    parser: argparse.ArgumentParser, name: str, data: Path, folds: int
) -> tuple[corpora.Corpus, list[corpora.Utterance], list[corpora.SpeakerSplit]]:
    """The corpus in ``data`` (``name`` or auto), its utterances and train.py's speaker folds; one error line and exit 1 otherwise."""
    try:
        corpus = corpora.resolve_corpus(name, data)
        utterances = corpora.read_corpus(corpus, data, download=False, url=None, cache_dir=Path("."))
        return corpus, utterances, corpora.speaker_folds(utterances, folds, group=corpus.fold_group)
    except corpora.CorpusError as error:
        parser.exit(1, f"error: {error}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, help="train.py cross-validation run folders to show beside the baseline")
    parser.add_argument("--data", type=Path, required=True, help="the corpus folder the runs trained on")
    parser.add_argument("--corpus", choices=[corpora.AUTO, *corpora.CORPORA], default=corpora.AUTO, help="which corpus --data holds (default: %(default)s)")
    parser.add_argument("--folds", type=int, default=5, help="speaker folds, as the runs' --folds (default: %(default)s)")
    args = parser.parse_args()
    corpus, utterances, splits = read_folds(parser, args.corpus, args.data, args.folds)
    with ProcessPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        descriptors = dict(zip((u.path for u in utterances), pool.map(mfcc_statistics, [u.path for u in utterances], chunksize=8)))

    rows = [("baseline: MFCC mean/std + SVM", [baseline_uar(utterances, descriptors, split) for split in splits])]
    rows += [row for run in args.runs for row in run_uars(run, splits)]
    speakers = sorted({u.speaker for u in utterances})
    print(f"UAR, {corpus.title}, {args.folds} folds by speaker groups of {len(speakers)} speakers ({len(utterances)} files, {args.data})")
    print("test speakers per fold: " + "; ".join(", ".join(map(str, s.speakers()["test"])) for s in splits))
    for name, uars in rows:
        folds = " ".join(f"{uar:.3f}" for uar in uars)
        print(f"  {np.mean(uars):.3f} ± {np.std(uars):.3f}   folds {folds}   {name}")


if __name__ == "__main__":
    main()

"""Score a trained run on any labelled corpus: cross-corpus evaluation.

    python evaluate.py --model saved_model/<run> --dataset PATH [--corpus auto] [--output FOLDER]

Steps: load the run, read the corpus (detected from its names by default; only read),
match the run's emotions with the corpus's by name (both speak the project's one
vocabulary, `corpora.canonical_label`), leave out and list the classes on one side only,
predict every remaining file with `inference.predict` (for a run trained with speaker
normalisation, each speaker standardised by their own statistics, as in training), take
the most probable of the shared classes, and score with the same code as train.py
(`metrics.score`). Writes metrics.json,
predictions.csv and confusion_matrix.png into the output folder and prints the scores.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

import numpy as np

import cli
from errors import UsageError
import corpora
import files
import inference
import runs
from cli import positive_int
from metrics import format_scores, score

logger = logging.getLogger("evaluate")

EVALUATIONS_ROOT = files.PROJECT_ROOT / "evaluations"  # default parent of --output (ignored by git)
SPEAKER_NORM_MODES = (inference.SPEAKER, "folder", "none")  # evaluate's choices: "file" would standardise each utterance by itself
# Per-speaker statistics hold a speaker's voice, not their emotion, only while a speaker shows
# several emotions: past this share of files on their speaker's most frequent emotion (RAVDESS:
# 0.13, EMO-DB: about 0.2; a talk show's guests or a call: most), they are the class's own.
MAX_SPEAKER_EMOTION_SHARE = 0.5


class EvaluationError(Exception):
    """A run and a corpus that cannot be compared; reported as one sentence, exit code 1."""


class LeakingNormalisationError(EvaluationError, UsageError):
    """A speaker normalisation that would see the labels (folders that are classes); exit code 2."""


def emotion_share(utterances: Sequence[corpora.Utterance], group: Callable[[corpora.Utterance], Hashable]) -> float:
    """The share of files whose emotion is their group's most frequent one (1: each group holds one emotion)."""
    by_group: dict = {}
    for utterance in utterances:
        by_group.setdefault(group(utterance), Counter())[utterance.label] += 1
    return sum(max(counts.values()) for counts in by_group.values()) / len(utterances)


def folders_are_classes(utterances: Sequence[corpora.Utterance]) -> bool:
    """Whether every folder holds files of one emotion only (class folders, or TESS's speaker_emotion folders)."""
    return len({u.label for u in utterances}) > 1 and emotion_share(utterances, lambda utterance: utterance.path.parent) == 1


def speaker_statistics_problem(utterances: Sequence[corpora.Utterance]) -> str | None:
    """Why standardising each speaker by their own statistics would standardise the emotion away; None when it would not.

    Training's protocol assumes every speaker shows several emotions. A corpus whose reader
    finds no speakers (each file its own) or whose speakers each show mostly one emotion
    (`MAX_SPEAKER_EMOTION_SHARE`) breaks it: a speaker's mean is then their class's mean.
    """
    if len({u.speaker for u in utterances}) == len(utterances):
        return f"each of the {len(utterances)} files is a speaker of its own (the corpus names no speakers; --corpus folders finds them with --speaker-pattern)"
    share = emotion_share(utterances, lambda utterance: utterance.speaker)
    if share > MAX_SPEAKER_EMOTION_SHARE:
        return f"{share:.0%} of the files carry their speaker's most frequent emotion, so each speaker's statistics are mostly one emotion's"
    return None


def evaluate(
    run: runs.Run, utterances: Sequence[corpora.Utterance], *, batch_size: int = inference.BATCH_WINDOWS, speaker_norm: str = "none"
) -> tuple[dict, list[dict]]:
    """Scores of ``run`` on ``utterances`` over the emotions both know, and one prediction per file.

    ``speaker_norm`` (`SPEAKER_NORM_MODES`, for a run trained with ``--speaker-norm``):
    "speaker" standardises each speaker's embeddings with that speaker's own statistics
    (the speakers the corpus reader found: training's protocol), "folder" each folder's,
    "none" with the training speakers' (as the exported model).

    Returns
    -------
    metrics : dict
        `metrics.score` over the shared classes; ``transductive`` (whether ``speaker_norm``
        standardised groups by their own files) and ``single_file_uar`` (each file alone, as
        infer.py scores it: a second pass with the training speakers' statistics where
        transductive); ``left_out``: the run's classes the corpus lacks, the corpus's classes
        the run lacks (with file counts), unreadable files.
    predictions : list of dict
        path, speaker, true, predicted, confidence (the probability among the shared classes),
        and predicted_alone, confidence_alone: the same with the file scored alone.

    Raises
    ------
    EvaluationError
        If fewer than two emotions are shared.
    LeakingNormalisationError
        For "folder" on a corpus whose folders each hold one emotion: the statistics of a
        folder would then be those of a class, a label leak that flatters the score.
    """
    if speaker_norm == "folder" and folders_are_classes(utterances):
        raise LeakingNormalisationError(
            "--speaker-norm folder: every folder of this corpus holds one emotion only, so standardising each "
            "folder by itself would use the labels; use --speaker-norm speaker (each speaker's own statistics) or none"
        )
    present = Counter(u.label for u in utterances)
    shared = [label for label in run.labels if label in present]
    if len(shared) < 2:
        raise EvaluationError(
            f"the run knows {', '.join(run.labels)} and the corpus holds {', '.join(sorted(present))}: "
            f"{'only ' + shared[0] if shared else 'no emotion'} in common, too few to score"
        )
    kept = [u for u in utterances if u.label in shared]
    results = inference.predict(
        [u.path for u in kept], run, batch_size=batch_size, speaker_norm=speaker_norm,
        speakers=[u.speaker for u in kept] if speaker_norm == inference.SPEAKER else None,
    )

    def among_shared(result: inference.Prediction) -> np.ndarray:
        probabilities = np.array([result.probabilities[label] for label in shared])
        return probabilities / probabilities.sum()

    true, predicted, predictions, unreadable = [], [], [], {}
    for utterance, result in zip(kept, results):
        if result.error is not None:
            unreadable[str(utterance.path)] = result.error
            continue
        probabilities = among_shared(result)
        best = int(np.argmax(probabilities))
        true.append(shared.index(utterance.label))
        predicted.append(best)
        predictions.append({
            "path": str(utterance.path), "speaker": utterance.speaker, "true": utterance.label,
            "predicted": shared[best], "confidence": round(float(probabilities[best]), 4),
        })
    if not predictions:
        raise EvaluationError("no file of the shared emotions could be read")
    metrics = score(true, predicted, shared)
    # Transductive: each group standardised by its own unlabelled files, which a single request cannot be.
    metrics["transductive"] = speaker_norm != "none"
    # Each file alone too, as infer.py scores it: a second pass where the first was transductive.
    readable = [result for result in results if result.error is None]
    alone = inference.predict([p["path"] for p in predictions], run, batch_size=batch_size) if metrics["transductive"] else readable
    for prediction, result in zip(predictions, alone):
        probabilities = among_shared(result)
        best = int(np.argmax(probabilities))
        prediction.update(predicted_alone=shared[best], confidence_alone=round(float(probabilities[best]), 4))
    metrics["single_file_uar"] = score(true, [shared.index(p["predicted_alone"]) for p in predictions], shared)["uar"]
    metrics["left_out"] = {
        "run_labels_not_in_corpus": [label for label in run.labels if label not in present],
        "corpus_labels_not_in_run": {label: count for label, count in sorted(present.items()) if label not in run.labels},
        "unreadable": unreadable,
    }
    metrics["files"] = {"scored": len(predictions), "speakers": sorted({p["speaker"] for p in predictions}, key=str)}
    return metrics, predictions


def warn_training_speakers(run: runs.Run, corpus: corpora.Corpus, utterances: Sequence[corpora.Utterance]) -> None:
    """Warn when ``utterances`` hold speakers the run trained or validated on: their scores say little about new voices."""
    recorded = json.loads((run.folder / runs.METRICS).read_text()) if (run.folder / runs.METRICS).is_file() else {}
    if recorded.get("options", {}).get("corpus") != corpus.name:
        return  # speaker names of two corpora say nothing about each other
    seen = set(recorded.get("speakers", {}).get("train", [])) | set(recorded.get("speakers", {}).get("validation", []))
    overlap = sorted({u.speaker for u in utterances} & seen, key=str)
    if overlap:
        logger.warning(
            "speakers %s of this corpus trained or validated the run: scores on them overstate what it does on new voices",
            ", ".join(map(str, overlap)),
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evaluate.py",
        description="Score a trained DCNN-BLSTMwA run on a labelled corpus (cross-corpus evaluation).",
        formatter_class=cli.HelpFormatter,
    )
    parser.add_argument("--model", required=True, help="run folder of train.py")
    parser.add_argument("--dataset", required=True, help="folder (or CSV manifest) of the corpus to score on; only read")
    parser.add_argument("--corpus", choices=[corpora.AUTO, *corpora.CORPORA], default=corpora.AUTO, help="which corpus --dataset holds; auto detects it from the names")
    parser.add_argument("--speaker-pattern", default=None, help="--corpus folders: a regular expression that finds the speaker in a file name")
    parser.add_argument("--output", default=None, help=f"folder for metrics.json, predictions.csv and confusion_matrix.png (default: {EVALUATIONS_ROOT}/<run>-on-<corpus>)")
    parser.add_argument("--batch-size", type=positive_int, default=inference.BATCH_WINDOWS, help="windows per model call, at most (as infer.py --batch-size)")
    parser.add_argument("--speaker-norm", choices=SPEAKER_NORM_MODES, default=None, help="for runs trained with speaker normalisation: standardise each speaker's embeddings with that speaker's own statistics (speaker: the speakers the corpus reader finds, as in training), each folder's (refused where folders are classes), or the training speakers' (none, as the exported model); speaker is refused, and not the default, where the corpus names no speakers or its speakers show mostly one emotion each (default: speaker for such runs, none for others)")
    parser.add_argument("--verbose", action="store_true", help="show the libraries' own start-up logs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.log_to_stderr(logging.INFO, "%(levelname)s %(name)s: %(message)s")

    def work() -> int:
        run = runs.load_run(args.model)
        corpus = corpora.resolve_corpus(args.corpus, args.dataset, speaker_pattern=args.speaker_pattern)
        utterances = corpora.read_corpus(corpus, args.dataset, download=False, url=None, cache_dir=None)
        output = Path(args.output) if args.output else EVALUATIONS_ROOT / f"{run.folder.name}-on-{corpus.name}"
        problem = files.folder_problem(output)  # before the predictions, so that none is lost
        if problem:
            raise cli.UsageError(f"--output {output} {problem}; set --output to a folder this user can write")
        warn_training_speakers(run, corpus, utterances)
        speaker_norm = args.speaker_norm or (inference.SPEAKER if run.speaker_norm else "none")  # training's protocol
        problem = speaker_statistics_problem(utterances) if speaker_norm == inference.SPEAKER else None
        if problem and args.speaker_norm is not None:
            raise cli.UsageError(f"--speaker-norm speaker: {problem}: each speaker's own statistics would take their emotion "
                                 "away and the score would mislead; use --speaker-norm none")
        if problem:
            speaker_norm = "none"
            logger.warning("per-speaker statistics would mislead: %s; scored with the training speakers' statistics (--speaker-norm none)", problem)
        metrics, predictions = evaluate(run, utterances, batch_size=args.batch_size, speaker_norm=speaker_norm)
        output.mkdir(parents=True, exist_ok=True)
        metrics.update({"model": str(run.folder), "dataset": str(args.dataset), "corpus": corpus.name, "speaker_norm": speaker_norm})
        if problem:
            metrics["speaker_norm_problem"] = problem
        runs.write_json(output / runs.METRICS, metrics)
        runs.write_predictions(output, predictions)
        runs.plot_confusion_matrix(output, np.array(metrics["confusion_matrix"]), metrics["labels"])
        left_out = metrics["left_out"]
        for reason in left_out["unreadable"].values():
            print(f"skipped: {reason}", file=sys.stderr)
        if left_out["run_labels_not_in_corpus"]:
            print(f"left out, not in the corpus: {', '.join(left_out['run_labels_not_in_corpus'])} (never predicted)", file=sys.stderr)
        if left_out["corpus_labels_not_in_run"]:
            listed = ", ".join(f"{label} ({count} files)" for label, count in left_out["corpus_labels_not_in_run"].items())
            print(f"left out, unknown to the run: {listed}", file=sys.stderr)
        print(format_scores(metrics, f"{corpus.title} at {args.dataset}, {metrics['files']['scored']} files, "
                                     f"{len(metrics['labels'])} shared emotions", title="scores of the run on this corpus"))
        print(f"results saved to {output}")
        return cli.EXIT_FAILURE if left_out["unreadable"] else 0

    return cli.run_command(work, failures=(runs.RunError, corpora.CorpusError, EvaluationError), interrupted="")


if __name__ == "__main__":
    cli.filter_library_noise(verbose="--verbose" in sys.argv[1:])
    sys.exit(main())

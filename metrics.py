"""Scores of a speaker-independent evaluation: UAR, WA, macro-F1, per-class recall, the confusion matrix, over folds.

What train.py and evaluate.py report and save (``metrics.json``); UAR (macro recall) is the
field's headline.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The evaluation's enrolment: this many recordings of each test speaker give the mean that
# standardises the rest (with the training speakers' deviations: a deviation of three files
# is too noisy, measured at chance UAR on RAVDESS).
ENROLMENT_FILES = 3


def score(true: Sequence[int], predicted: Sequence[int], labels: list[str]) -> dict:
    """UAR, WA, macro-F1, per-class recall and the confusion matrix.

    A class with no test file has no recall (None): UAR is the mean over the classes
    present, and macro-F1 over those present or predicted, rather than counting an
    unmeasured class as 0.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

    classes = list(range(len(labels)))
    present = sorted(set(true))
    recalls = dict(zip(present, recall_score(true, predicted, labels=present, average=None, zero_division=0)))
    return {
        "uar": float(np.mean(list(recalls.values()))),
        "wa": float(accuracy_score(true, predicted)),
        "macro_f1": float(f1_score(true, predicted, labels=sorted(set(true) | set(predicted)), average="macro", zero_division=0)),
        "per_class_recall": {label: None if index not in recalls else float(recalls[index]) for index, label in enumerate(labels)},
        "confusion_matrix": confusion_matrix(true, predicted, labels=classes).tolist(),
        "labels": labels,
    }


def summarize(fold_metrics: list[dict], labels: list[str]) -> dict:
    """Mean and standard deviation of the folds' scores, and their summed confusion matrix."""
    summary = {"folds": fold_metrics}
    for name in ("uar", "wa", "macro_f1", *(name for name in ("single_file_uar", "enrolled_uar") if all(name in m for m in fold_metrics))):
        values = [metrics[name] for metrics in fold_metrics]
        summary[name] = float(np.mean(values))
        summary[f"{name}_std"] = float(np.std(values))
    measured = {label: [m["per_class_recall"][label] for m in fold_metrics if m["per_class_recall"][label] is not None] for label in labels}
    summary["per_class_recall"] = {label: float(np.mean(values)) if values else None for label, values in measured.items()}
    summary["confusion_matrix"] = np.sum([m["confusion_matrix"] for m in fold_metrics], axis=0).tolist()
    summary["labels"] = labels
    summary["transductive"] = any(metrics.get("transductive", False) for metrics in fold_metrics)
    return summary


def format_scores(metrics: dict, where: str, *, title: str = "test scores") -> str:
    """The scores of `score` or `summarize` as a few lines of text, headed ``title``; ``where`` says what was scored."""
    spread = (lambda name: f" ± {metrics[name + '_std']:.3f}") if "folds" in metrics else (lambda name: "")
    recall = lambda value: "-" if value is None else f"{value:.2f}"  # noqa: E731  (None: no test file of the class)
    uar = [f"  UAR       {metrics['uar']:.3f}{spread('uar')}"]
    if metrics.get("transductive") and "single_file_uar" in metrics:  # the file-alone score first: what one recording gets
        uar = [f"  UAR       {metrics['single_file_uar']:.3f}{spread('single_file_uar')}  each file alone, as infer.py scores it",
               *([f"  UAR       {metrics['enrolled_uar']:.3f}{spread('enrolled_uar')}  each file alone after {ENROLMENT_FILES} others "
                  "of its speaker enrolled, as infer.py --enroll scores it"] if "enrolled_uar" in metrics else []),
               f"{uar[0]}  each test speaker standardised by their own files (transductive; so are the lines below)"]
    return "\n".join([
        f"\n{title} ({where})",
        *uar,
        f"  WA        {metrics['wa']:.3f}{spread('wa')}",
        f"  macro-F1  {metrics['macro_f1']:.3f}{spread('macro_f1')}",
        "  recall    " + "  ".join(f"{label} {recall(value)}" for label, value in metrics["per_class_recall"].items()),
    ])

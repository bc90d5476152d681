"""Your own data, listed in a CSV manifest: ``path,label[,speaker]``, one row per file.

Paths are relative to the CSV (absolute ones work too); labels are mapped onto the
project's emotion names (`corpora.canonical_label`: "anger" is "angry"); speakers, when
the column exists, make every split speaker-independent. Without them every file is its
own speaker: splits and folds are then by file, which overstates what a model does on
new voices (train.py warns so).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from corpora.base import MISNAMED_LISTED, Corpus, CorpusError, CorpusUsageError, Utterance, canonical_label
from utils import AUDIO_EXTENSIONS, PathLike

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("path", "label")


def manifest_file(dataset: PathLike) -> Path:
    """The CSV: ``dataset`` itself, or the one ``.csv`` file in the folder ``dataset``."""
    dataset = Path(dataset)
    if dataset.is_file():
        return dataset
    found = sorted(dataset.glob("*.csv")) if dataset.is_dir() else []
    if len(found) != 1:
        what = "does not exist" if not dataset.exists() else f"holds {len(found)} .csv files, not one"
        raise CorpusUsageError(f"{dataset} {what}; set --dataset to the manifest (a CSV with columns path,label[,speaker])")
    return found[0]


def read_manifest(dataset: PathLike) -> list[Utterance]:
    """Every row of the manifest whose audio file exists, sorted by path; a row repeated word for word counts once.

    Raises
    ------
    CorpusError
        If there is no single manifest, it lacks the ``path`` or ``label`` column, lists
        no file, a row has an empty label, or one file is listed with two labels or speakers.
    """
    source = manifest_file(dataset)
    with open(source, newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        columns = [name.strip().lower() for name in reader.fieldnames or []]
        if not set(REQUIRED_COLUMNS) <= set(columns):
            raise CorpusError(f"{source}: needs the columns path,label[,speaker]; its header is {','.join(columns) or 'empty'}")
        rows = [{key.strip().lower(): (value or "").strip() for key, value in row.items() if key} for row in reader]
    if not rows:
        raise CorpusError(f"{source} lists no files: it has a header and no rows (one row per file: path,label[,speaker])")
    utterances: dict[Path, Utterance] = {}
    lines: dict[Path, int] = {}
    missing, repeated = [], 0
    for number, row in enumerate(rows, start=2):
        if not row["label"]:
            raise CorpusError(f"{source}, line {number}: the label is empty")
        path = source.parent / row["path"]
        if not path.is_file():
            missing.append(f"{source}, line {number}: {path} does not exist")
            continue
        speaker = row.get("speaker") or str(path)
        utterance = Utterance(path=path, label=canonical_label(row["label"]), speaker=int(speaker) if speaker.isdigit() else speaker)
        key = path.resolve()
        if key in utterances:
            if utterances[key] != utterance:
                earlier = utterances[key]
                raise CorpusError(
                    f"{source}, lines {lines[key]} and {number}: {path} is listed twice, as {earlier.label} "
                    f"(speaker {earlier.speaker}) and as {utterance.label} (speaker {utterance.speaker}); keep one row"
                )
            repeated += 1
            continue
        utterances[key], lines[key] = utterance, number
    if repeated:
        logger.warning("%s lists %d files more than once; each is read once", source, repeated)
    for line in missing[:MISNAMED_LISTED]:
        logger.warning("skipped: %s", line)
    if len(missing) > MISNAMED_LISTED:
        logger.warning("skipped %d more rows of %s whose files do not exist", len(missing) - MISNAMED_LISTED, source)
    return sorted(utterances.values(), key=lambda utterance: utterance.path)


def _recognizes(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".csv"


MANIFEST = Corpus(
    name="csv",
    title="CSV manifest",
    labels=(),
    read=read_manifest,
    layout=f"a CSV with columns path,label[,speaker], paths relative to it (audio: {', '.join(AUDIO_EXTENSIONS)})",
    test_speakers=(),
    validation_speakers=(),
    recognizes=_recognizes,
)

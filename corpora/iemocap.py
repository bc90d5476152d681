"""IEMOCAP: the Interactive Emotional Dyadic Motion Capture database (Busso et al., 2008).

Five sessions, each a dialogue of one actress and one actor (10 speakers), utterances in
``SessionN/sentences/wav/<dialog>/<utterance>.wav`` and their labels in
``SessionN/dialog/EmoEvaluation/<dialog>.txt``, one line per utterance such as
``[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5, 2.5, 2.5]``. The last part of
the utterance name says who speaks (``F000``: the woman), so a speaker is the session and a
gender (``1F``). The field's standard set is four classes, happiness and excitement merged
(`IEMOCAP`); `IEMOCAP_ALL` keeps every label the evaluators agreed on. The usual protocol is
leave-one-session-out.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

from corpora.base import Corpus, Utterance, dataset_folder
from utils import PathLike, find_audio_files

logger = logging.getLogger(__name__)

CODES = {"neu": "neutral", "hap": "happy", "exc": "excited", "ang": "angry", "sad": "sad", "fru": "frustrated",
         "sur": "surprised", "fea": "fearful", "dis": "disgust", "oth": "other"}  # "xxx": no majority, left out
FOUR_CLASSES = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}
_UTTERANCE = re.compile(r"Ses(\d\d)[FM]_.+_([FM])[A-Za-z]*\d+")
_LABEL_LINE = re.compile(r"^\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(\S+)\s+(\S+)\s+\[")


@dataclasses.dataclass(frozen=True)
class IemocapUtterance(Utterance):
    """One IEMOCAP utterance; ``speaker`` is the session and the speaker's gender, such as "1F".

    Attributes
    ----------
    session : int
        1 .. 5: the unit of leave-one-session-out.
    dialog : str
        Such as ``Ses01F_impro01``; improvised dialogues have ``impro`` in the name, scripted ``script``.
    code : str
        The evaluators' label as the corpus writes it (``neu``, ``exc``, ...).
    """

    session: int
    dialog: str
    code: str


def read_labels(folder: Path) -> dict[str, str]:
    """Every utterance's label code from ``Session*/dialog/EmoEvaluation/*.txt`` under ``folder``."""
    labels = {}
    for text in sorted(folder.glob("Session*/dialog/EmoEvaluation/*.txt")):
        for line in text.read_text(errors="replace").splitlines():
            match = _LABEL_LINE.match(line)
            if match:
                labels[match.group(1)] = match.group(2)
    return labels


def _reader(classes: dict[str, str]):
    def read(folder: PathLike) -> list[IemocapUtterance]:
        """Every IEMOCAP utterance under ``folder`` whose agreed label is one of the set's classes, sorted."""
        folder = dataset_folder(folder)
        labels = read_labels(folder)
        utterances, unlabelled, other = [], 0, 0
        for path in find_audio_files(folder):
            match = _UTTERANCE.fullmatch(path.stem)
            if match is None or "sentences" not in path.parts:
                continue  # dialogue-level recordings and anything else that is not an utterance
            code = labels.get(path.stem)
            if code is None:
                unlabelled += 1
            elif code not in classes:
                other += 1
            else:
                session, gender = int(match.group(1)), match.group(2)
                utterances.append(IemocapUtterance(
                    path=path, label=classes[code], speaker=f"{session}{gender}", session=session,
                    dialog=path.parent.name, code=code,
                ))
        if unlabelled:
            logger.warning("left out %d utterances under %s with no line in Session*/dialog/EmoEvaluation", unlabelled, folder)
        if other:
            logger.info("left out %d utterances under %s labelled outside the set (or without a majority, xxx)", other, folder)
        return sorted(utterances, key=lambda utterance: utterance.path)

    return read


def _recognizes(path: str | Path) -> bool:
    return _UTTERANCE.fullmatch(Path(path).stem) is not None


_COMMON = dict(
    layout="Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav with Session1/dialog/EmoEvaluation/Ses01F_impro01.txt",
    test_speakers=("5F", "5M"),
    validation_speakers=("4F", "4M"),
    recognizes=_recognizes,
    protocol="leave-one-session-out (--folds 5)",
    fold_group=lambda utterance: utterance.session,
)
IEMOCAP = Corpus(name="iemocap", title="IEMOCAP", labels=("neutral", "happy", "sad", "angry"), read=_reader(FOUR_CLASSES), **_COMMON)
IEMOCAP_ALL = Corpus(
    name="iemocap_all", title="IEMOCAP", labels=tuple(dict.fromkeys(CODES.values())), read=_reader(CODES), **_COMMON
)

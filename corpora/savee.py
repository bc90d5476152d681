"""SAVEE: Surrey Audio-Visual Expressed Emotion (Haq & Jackson, 2009).

Four male speakers (DC, JE, JK, KL), 7 emotions, 480 utterances. As distributed,
``AudioData/DC/a01.wav``: the speaker's folder and a name of the emotion code (``a``
anger, ``d`` disgust, ``f`` fear, ``h`` happiness, ``n`` neutral, ``sa`` sadness,
``su`` surprise) and a number; copies also circulate flat as ``DC_a01.wav``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from corpora.base import Corpus, Utterance, read_named_files, recognizer
from utils import PathLike

EMOTIONS = {"a": "angry", "d": "disgust", "f": "fearful", "h": "happy", "n": "neutral", "sa": "sad", "su": "surprised"}
SPEAKERS = ("DC", "JE", "JK", "KL")
_NAME = re.compile(r"(?:([A-Z]{2})_)?(sa|su|[adfhn])(\d\d)")


@dataclasses.dataclass(frozen=True)
class SaveeUtterance(Utterance):
    """One SAVEE utterance; ``speaker`` is "DC", "JE", "JK" or "KL".

    Attributes
    ----------
    number : int
        The sentence number within its emotion.
    """

    number: int


def parse_savee_name(path: PathLike) -> SaveeUtterance:
    """The utterance a SAVEE path describes (``DC/a01.wav`` or ``DC_a01.wav``); ValueError otherwise."""
    path = Path(path)
    match = _NAME.fullmatch(path.stem)
    if match is None:
        raise ValueError("name is not an emotion code and number like a01 (in a speaker folder) or DC_a01")
    speaker, emotion, number = match.groups()
    speaker = speaker or path.parent.name
    if speaker not in SPEAKERS:
        raise ValueError(f"speaker {speaker!r} (from the name or its folder) is not one of {', '.join(SPEAKERS)}")
    return SaveeUtterance(path=path, label=EMOTIONS[emotion], speaker=speaker, number=int(number))


def read_savee(folder: PathLike) -> list[SaveeUtterance]:
    """Every SAVEE utterance under ``folder`` (``AudioData/DC/a01.wav`` .. or flat ``DC_a01.wav``), sorted."""
    return read_named_files(folder, parse_savee_name, "SAVEE")


SAVEE = Corpus(
    name="savee",
    title="SAVEE",
    labels=("neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised"),
    read=read_savee,
    layout="AudioData/DC/a01.wav (speaker folders DC JE JK KL) or flat DC_a01.wav; emotion codes a d f h n sa su",
    test_speakers=("KL",),
    validation_speakers=("JK",),
    recognizes=recognizer(parse_savee_name),
    protocol="leave-one-speaker-out (--folds 4)",
)

"""CREMA-D: the Crowd-sourced Emotional Multimodal Actors Dataset (Cao et al., IEEE TAC 2014).

91 actors (1001 .. 1091), 6 emotions, 7442 clips in ``AudioWAV/``. A name
``1001_DFA_ANG_XX.wav`` is the actor, the sentence (12 of them), the emotion and the
intensity (LO, MD, HI, or XX unspecified).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from corpora.base import Corpus, Utterance, read_named_files, recognizer
from utils import PathLike

EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
INTENSITIES = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
ACTORS = range(1001, 1092)
_NAME = re.compile(r"(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})")


@dataclasses.dataclass(frozen=True)
class CremadUtterance(Utterance):
    """One CREMA-D clip; ``speaker`` is the actor, 1001 .. 1091.

    Attributes
    ----------
    sentence : str
        The sentence code, such as ``DFA`` ("Don't forget a jacket").
    intensity : str
        "low", "medium", "high" or "unspecified".
    """

    sentence: str
    intensity: str


def parse_cremad_name(path: PathLike) -> CremadUtterance:
    """The clip a CREMA-D file name describes; ValueError naming the field that breaks the convention."""
    path = Path(path)
    match = _NAME.fullmatch(path.stem)
    if match is None:
        raise ValueError("name is not actor_sentence_emotion_intensity like 1001_DFA_ANG_XX")
    actor, sentence, emotion, intensity = match.groups()
    if int(actor) not in ACTORS:
        raise ValueError(f"actor {actor} is not 1001..1091")
    if emotion not in EMOTIONS:
        raise ValueError(f"emotion {emotion} is not one of {', '.join(EMOTIONS)}")
    if intensity not in INTENSITIES:
        raise ValueError(f"intensity {intensity} is not one of {', '.join(INTENSITIES)}")
    return CremadUtterance(
        path=path, label=EMOTIONS[emotion], speaker=int(actor), sentence=sentence, intensity=INTENSITIES[intensity]
    )


def read_cremad(folder: PathLike) -> list[CremadUtterance]:
    """Every CREMA-D clip under ``folder`` (``AudioWAV/`` as distributed, or anywhere below it), sorted."""
    return read_named_files(folder, parse_cremad_name, "CREMA-D")


CREMAD = Corpus(
    name="cremad",
    title="CREMA-D",
    labels=("neutral", "happy", "sad", "angry", "fearful", "disgust"),
    read=read_cremad,
    layout="AudioWAV/1001_DFA_ANG_XX.wav: actor (1001..1091), sentence, emotion (ANG DIS FEA HAP NEU SAD), intensity",
    test_speakers=tuple(range(1082, 1092)),
    validation_speakers=tuple(range(1072, 1082)),
    recognizes=recognizer(parse_cremad_name),
)

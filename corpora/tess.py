"""TESS: the Toronto Emotional Speech Set (Dupuis & Pichora-Fuller, 2010).

Two actresses, aged 26 (YAF) and 64 (OAF), each saying 200 target words in 7 emotions:
2800 files in folders such as ``OAF_angry/``, named ``OAF_back_angry.wav``
(``ps`` is pleasant surprise). With two speakers, a speaker-independent split trains on
one and tests on the other; early stopping then has no third speaker to watch, so a
share of the training speaker's files stands in for validation (see `train.py`).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from corpora.base import Corpus, Utterance, read_named_files, recognizer
from utils import PathLike

EMOTIONS = {"angry": "angry", "disgust": "disgust", "fear": "fearful", "happy": "happy", "neutral": "neutral",
            "ps": "surprised", "sad": "sad"}
SPEAKERS = ("OAF", "YAF")
_NAME = re.compile(r"(OAF|YAF)_(.+)_([a-z]+)", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class TessUtterance(Utterance):
    """One TESS file; ``speaker`` is "OAF" or "YAF".

    Attributes
    ----------
    word : str
        The target word said in the carrier phrase "Say the word ...".
    """

    word: str


def parse_tess_name(path: PathLike) -> TessUtterance:
    """The file a TESS name describes; ValueError naming the field that breaks the convention."""
    path = Path(path)
    match = _NAME.fullmatch(path.stem)
    if match is None:
        raise ValueError("name is not speaker_word_emotion like OAF_back_angry")
    speaker, word, emotion = match.groups()
    if emotion.lower() not in EMOTIONS:
        raise ValueError(f"emotion {emotion} is not one of {', '.join(EMOTIONS)}")
    return TessUtterance(path=path, label=EMOTIONS[emotion.lower()], speaker=speaker.upper(), word=word.lower())


def read_tess(folder: PathLike) -> list[TessUtterance]:
    """Every TESS file under ``folder`` (the ``OAF_angry/`` .. ``YAF_sad/`` folders, or flat), sorted."""
    return read_named_files(folder, parse_tess_name, "TESS")


TESS = Corpus(
    name="tess",
    title="TESS",
    labels=("neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised"),
    read=read_tess,
    layout="OAF_angry/OAF_back_angry.wav .. YAF_sad/: speaker (OAF, YAF), word, emotion (angry disgust fear happy neutral ps sad)",
    test_speakers=("YAF",),
    validation_speakers=(),
    recognizes=recognizer(parse_tess_name),
    protocol="train on one speaker, test on the other (two speakers only; --folds is not possible)",
)

"""EMO-DB: the Berlin Database of Emotional Speech (Burkhardt et al., Interspeech 2005).

10 actors (03, 08, 09, 10, 11, 12, 13, 14, 15, 16; male 03, 10, 11, 12, 15), 7 emotions,
535 utterances in ``wav/`` of the official ``download.zip``. A name ``03a01Fa.wav`` is the
speaker (2 digits), the text (``a01`` .. ``b10``), the emotion's German initial and a
version letter. The usual protocol is leave-one-speaker-out (``--folds 10``).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from corpora.base import Corpus, Download, Utterance, read_named_files, recognizer
from utils import PathLike

# German initials: Ärger, Langeweile, Ekel, Angst, Freude, Trauer, Neutral.
EMOTIONS = {"W": "angry", "L": "bored", "E": "disgust", "A": "fearful", "F": "happy", "T": "sad", "N": "neutral"}
SPEAKERS = (3, 8, 9, 10, 11, 12, 13, 14, 15, 16)
_NAME = re.compile(r"(\d\d)([ab]\d\d)([A-Z])([a-z])?")


@dataclasses.dataclass(frozen=True)
class EmodbUtterance(Utterance):
    """One EMO-DB file; ``speaker`` is the 2-digit speaker as an int (3 .. 16).

    Attributes
    ----------
    text : str
        The sentence, ``a01`` .. ``b10``.
    version : str
        The take, ``a``, ``b``, ...; empty when the name has none.
    """

    text: str
    version: str


def parse_emodb_name(path: PathLike) -> EmodbUtterance:
    """The utterance an EMO-DB file name describes; ValueError naming the field that breaks the convention."""
    path = Path(path)
    match = _NAME.fullmatch(path.stem)
    if match is None:
        raise ValueError("name is not speaker, text, emotion and version like 03a01Fa")
    speaker, text, emotion, version = match.groups()
    if int(speaker) not in SPEAKERS:
        raise ValueError(f"speaker {speaker} is not one of {', '.join(f'{s:02d}' for s in SPEAKERS)}")
    if emotion not in EMOTIONS:
        raise ValueError(f"emotion letter {emotion} is not one of {', '.join(EMOTIONS)}")
    return EmodbUtterance(path=path, label=EMOTIONS[emotion], speaker=int(speaker), text=text, version=version or "")


def read_emodb(folder: PathLike) -> list[EmodbUtterance]:
    """Every EMO-DB utterance under ``folder`` (``wav/`` as unzipped, or the files anywhere below it), sorted."""
    return read_named_files(folder, parse_emodb_name, "EMO-DB")


EMODB = Corpus(
    name="emodb",
    title="EMO-DB",
    labels=("neutral", "bored", "happy", "sad", "angry", "fearful", "disgust"),
    read=read_emodb,
    layout="wav/03a01Fa.wav: speaker (03..16), text (a01..b10), emotion initial (W L E A F T N), version",
    test_speakers=(15, 16),
    validation_speakers=(13, 14),
    recognizes=recognizer(parse_emodb_name),
    protocol="leave-one-speaker-out (--folds 10)",
    download=Download(url="http://emodb.bilderbar.info/download/download.zip", archive="emodb-download.zip", folder="EMO-DB"),
)

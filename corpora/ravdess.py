"""RAVDESS: the Ryerson Audio-Visual Database of Emotional Speech and Song (Livingstone & Russo, 2018).

24 actors (odd male, even female), 8 emotions, 1440 speech files in the audio-only
archive ``Audio_Speech_Actors_01-24.zip`` on Zenodo, unzipped into ``Actor_01/`` ..
``Actor_24/``. Every file name is seven two-digit fields,
``modality-channel-emotion-intensity-statement-repetition-actor`` (``03-01-05-01-02-01-12.wav``).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from corpora.base import Corpus, Download, Utterance, read_named_files, recognizer
from utils import PathLike

# Emotion codes 01..08, in order.
EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
MODALITIES = {"01": "audio-video", "02": "video-only", "03": "audio-only"}
INTENSITIES = {"01": "normal", "02": "strong"}
ACTORS = range(1, 25)
_NAME = re.compile(r"(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)")
_SPEECH, _SONG = "01", "02"


@dataclasses.dataclass(frozen=True)
class RavdessUtterance(Utterance):
    """One RAVDESS speech file and the fields of its name.

    Attributes
    ----------
    speaker : int
        Actor, 1..24 (odd male, even female).
    modality : str
        "audio-video", "video-only" or "audio-only".
    intensity : str
        "normal" or "strong" (neutral is always normal).
    statement : int
        1 "Kids are talking by the door", 2 "Dogs are sitting by the door".
    repetition : int
        1 or 2.
    """

    modality: str
    intensity: str
    statement: int
    repetition: int


def parse_ravdess_name(path: PathLike) -> RavdessUtterance | None:
    """The utterance a RAVDESS speech file name describes.

    Returns
    -------
    RavdessUtterance or None
        None for a song file (vocal channel 02).

    Raises
    ------
    ValueError
        If the name breaks the convention; the message says which field.
    """
    path = Path(path)
    match = _NAME.fullmatch(path.stem)
    if match is None:
        raise ValueError("name is not seven two-digit fields like 03-01-05-01-02-01-12")
    modality, channel, emotion, intensity, statement, repetition, actor = match.groups()
    if modality not in MODALITIES:
        raise ValueError(f"modality {modality} is not 01, 02 or 03")
    if channel == _SONG:
        return None
    if channel != _SPEECH:
        raise ValueError(f"vocal channel {channel} is not 01 (speech) or 02 (song)")
    if not 1 <= int(emotion) <= len(EMOTIONS):
        raise ValueError(f"emotion {emotion} is not 01..08")
    if intensity not in INTENSITIES:
        raise ValueError(f"intensity {intensity} is not 01 or 02")
    if emotion == "01" and intensity == "02":
        raise ValueError("neutral (01) has no strong intensity (02)")
    if statement not in ("01", "02") or repetition not in ("01", "02"):
        raise ValueError(f"statement {statement} or repetition {repetition} is not 01 or 02")
    if int(actor) not in ACTORS:
        raise ValueError(f"actor {actor} is not 01..24")
    return RavdessUtterance(
        path=path,
        label=EMOTIONS[int(emotion) - 1],
        speaker=int(actor),
        modality=MODALITIES[modality],
        intensity=INTENSITIES[intensity],
        statement=int(statement),
        repetition=int(repetition),
    )


def read_ravdess(folder: PathLike) -> list[RavdessUtterance]:
    """Every RAVDESS speech file under ``folder``, at any depth.

    Works on the official archive as unzipped (``Actor_01/`` .. ``Actor_24/``) and
    on flat folders, with ``.wav``, ``.flac`` or ``.ogg`` files. Song files
    (vocal channel 02), files of other types and hidden files are left out;
    audio files whose names break the convention are reported as warnings and
    left out. Nothing in ``folder`` is moved or written.

    Returns
    -------
    utterances : list of RavdessUtterance
        Sorted by path; empty when the folder holds no RAVDESS speech.

    Raises
    ------
    CorpusError
        If ``folder`` does not exist or is not a folder.
    """
    return read_named_files(folder, parse_ravdess_name, "RAVDESS", left_out="song files (vocal channel 02)")


RAVDESS = Corpus(
    name="ravdess",
    title="RAVDESS",
    labels=EMOTIONS,
    read=read_ravdess,
    layout="Actor_01/03-01-05-01-02-01-01.wav .. Actor_24/ (or the files flat), seven two-digit fields per name",
    test_speakers=(21, 22, 23, 24),
    validation_speakers=(19, 20),
    recognizes=recognizer(parse_ravdess_name),
    download=Download(
        url="https://zenodo.org/records/1188976/files/Audio_Speech_Actors_01-24.zip?download=1",
        archive="Audio_Speech_Actors_01-24.zip",
        folder="RAVDESS",
    ),
)

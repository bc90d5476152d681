"""Corpus readers and speaker-independent splits.

A reader turns a folder into a list of utterances, each with its path, emotion
label and speaker; folders are only read, never written. The splits keep every
speaker in exactly one of train, validation and test.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from sklearn.model_selection import GroupKFold

from utils import PathLike, find_audio_files

logger = logging.getLogger(__name__)

# RAVDESS emotion codes 01..08, in order.
RAVDESS_EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
RAVDESS_MODALITIES = {"01": "audio-video", "02": "video-only", "03": "audio-only"}
RAVDESS_INTENSITIES = {"01": "normal", "02": "strong"}
RAVDESS_ACTORS = range(1, 25)
_RAVDESS_NAME = re.compile(r"(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)")
_SPEECH, _SONG = "01", "02"
_MISNAMED_LISTED = 5  # misnamed files reported one per line; the rest as a count


class CorpusError(Exception):
    """A dataset folder or a split request that cannot be used; the message says how to fix it."""


class HasSpeaker(Protocol):
    speaker: Hashable


Item = TypeVar("Item", bound=HasSpeaker)


@dataclass(frozen=True)
class RavdessUtterance:
    """One RAVDESS file and the fields of its name (``03-01-05-01-02-01-12.wav``).

    Attributes
    ----------
    path : Path
        The audio file.
    label : str
        Emotion, one of `RAVDESS_EMOTIONS`.
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

    path: Path
    label: str
    speaker: int
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
    match = _RAVDESS_NAME.fullmatch(path.stem)
    if match is None:
        raise ValueError("name is not seven two-digit fields like 03-01-05-01-02-01-12")
    modality, channel, emotion, intensity, statement, repetition, actor = match.groups()
    if modality not in RAVDESS_MODALITIES:
        raise ValueError(f"modality {modality} is not 01, 02 or 03")
    if channel == _SONG:
        return None
    if channel != _SPEECH:
        raise ValueError(f"vocal channel {channel} is not 01 (speech) or 02 (song)")
    if not 1 <= int(emotion) <= len(RAVDESS_EMOTIONS):
        raise ValueError(f"emotion {emotion} is not 01..08")
    if intensity not in RAVDESS_INTENSITIES:
        raise ValueError(f"intensity {intensity} is not 01 or 02")
    if emotion == "01" and intensity == "02":
        raise ValueError("neutral (01) has no strong intensity (02)")
    if statement not in ("01", "02") or repetition not in ("01", "02"):
        raise ValueError(f"statement {statement} or repetition {repetition} is not 01 or 02")
    if int(actor) not in RAVDESS_ACTORS:
        raise ValueError(f"actor {actor} is not 01..24")
    return RavdessUtterance(
        path=path,
        label=RAVDESS_EMOTIONS[int(emotion) - 1],
        speaker=int(actor),
        modality=RAVDESS_MODALITIES[modality],
        intensity=RAVDESS_INTENSITIES[intensity],
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
    folder = Path(folder)
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise CorpusError(f"dataset folder {folder} {problem}; set --dataset to the folder that holds Actor_01 ...")
    utterances, misnamed, songs = [], [], 0
    for path in find_audio_files(folder):
        try:
            utterance = parse_ravdess_name(path)
        except ValueError as problem:
            misnamed.append(f"{path}: {problem}")
            continue
        if utterance is None:
            songs += 1
        else:
            utterances.append(utterance)
    for line in misnamed[:_MISNAMED_LISTED]:
        logger.warning("skipped, not a RAVDESS name: %s", line)
    if len(misnamed) > _MISNAMED_LISTED:
        logger.warning("skipped %d more files that are not RAVDESS names", len(misnamed) - _MISNAMED_LISTED)
    if songs:
        logger.info("left out %d song files (vocal channel 02) under %s", songs, folder)
    return sorted(utterances, key=lambda utterance: utterance.path)


@dataclass(frozen=True)
class SpeakerSplit:
    """Train, validation and test utterances with no speaker in two of them."""

    train: list
    validation: list
    test: list

    def speakers(self) -> dict[str, list]:
        """Sorted speakers of each part, e.g. for a run's report."""
        return {
            part: sorted({item.speaker for item in getattr(self, part)})
            for part in ("train", "validation", "test")
        }


def split_by_speakers(
    items: Sequence[Item],
    test_speakers: Collection[Hashable],
    validation_speakers: Collection[Hashable] = (),
) -> SpeakerSplit:
    """Test and validation sets by speaker id; every other speaker trains.

    Raises
    ------
    CorpusError
        If a requested speaker is absent from ``items`` (the message lists the
        speakers present), a speaker is asked for both test and validation, or
        no speaker is left for training.
    """
    test, validation = set(test_speakers), set(validation_speakers)
    present = sorted({item.speaker for item in items})
    asked = test | validation
    missing = sorted(asked - set(present), key=str)
    if missing:
        raise CorpusError(
            f"speakers {_listing(missing)} are not in the dataset, which holds speakers {_listing(present)}; "
            "choose test and validation speakers among those"
        )
    both = sorted(test & validation, key=str)
    if both:
        raise CorpusError(f"speakers {_listing(both)} are asked for both test and validation")
    if not set(present) - asked:
        raise CorpusError(f"no speaker is left for training: all of {_listing(present)} are test or validation")
    return SpeakerSplit(
        train=[item for item in items if item.speaker not in asked],
        validation=[item for item in items if item.speaker in validation],
        test=[item for item in items if item.speaker in test],
    )


def speaker_folds(items: Sequence[Item], k: int) -> list[SpeakerSplit]:
    """K-fold cross-validation over speaker groups.

    Speakers are divided into ``k`` groups of about equal file counts
    (`sklearn.model_selection.GroupKFold`). Fold ``i`` tests on group ``i``,
    validates on group ``i + 1`` (cyclically) and trains on the others, so every
    speaker is tested exactly once and never shares a fold part with itself.
    ``k`` equal to the number of speakers is leave-one-speaker-out.

    Raises
    ------
    CorpusError
        If ``k`` is below 3 (a fold needs test, validation and training
        speakers) or above the number of speakers.
    """
    speakers = sorted({item.speaker for item in items})
    if not 3 <= k <= len(speakers):
        raise CorpusError(
            f"--folds must be between 3 and the number of speakers ({len(speakers)}: {_listing(speakers)}), got {k}"
        )
    groups = [item.speaker for item in items]
    test_groups = [
        {groups[index] for index in test_index}
        for _, test_index in GroupKFold(n_splits=k).split(items, groups=groups)
    ]
    return [
        split_by_speakers(items, test_groups[fold], test_groups[(fold + 1) % k])
        for fold in range(k)
    ]


def _listing(speakers: Sequence[Hashable]) -> str:
    return ", ".join(str(speaker) for speaker in speakers)

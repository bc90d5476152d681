"""Your own data as a folder per class: ``angry/x.wav``, ``neutral/y.wav``, ...

A file's label is its folder's name, mapped onto the project's emotion names
(`corpora.canonical_label`: ``Anger/`` holds "angry" files). Its speaker comes from a
regular expression on the file name (``--speaker-pattern``; the first group, or the
whole match), so that splits are speaker-independent; without one every file is its own
speaker and train.py warns that splits are by file.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from corpora.base import Corpus, Utterance, canonical_label, read_named_files
from utils import PathLike


def parse_class_path(path: Path, speaker_pattern: re.Pattern | None = None) -> Utterance:
    """The utterance of ``<class>/<file>``; ValueError when the pattern finds no speaker in the name."""
    speaker: str = str(path)
    if speaker_pattern is not None:
        match = speaker_pattern.search(path.name)
        if match is None:
            raise ValueError(f"--speaker-pattern {speaker_pattern.pattern!r} finds no speaker in the name")
        speaker = match.group(1) if match.groups() else match.group(0)
    return Utterance(path=path, label=canonical_label(path.parent.name), speaker=int(speaker) if speaker.isdigit() else speaker)


def read_class_folders(folder: PathLike, speaker_pattern: str | None = None) -> list[Utterance]:
    """Every audio file in a class folder under ``folder`` (any depth: the file's own folder is its class), sorted."""
    pattern = re.compile(speaker_pattern) if speaker_pattern else None
    utterances = read_named_files(folder, functools.partial(parse_class_path, speaker_pattern=pattern), "class-folder")
    return [u for u in utterances if Path(u.path).parent != Path(folder)]  # files beside the class folders have no class


# Every emotion name the registry knows (`corpora.known_emotions`), filled in by the registry
# when it loads: a folder named after one is a class folder.
KNOWN_EMOTIONS: set[str] = set()


def is_class_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is named after an emotion (``angry/``, ``Anger/``): a class folder."""
    return canonical_label(Path(folder).name) in KNOWN_EMOTIONS


def _recognizes(path: str | Path) -> bool:
    return is_class_folder(Path(path).parent)


CLASS_FOLDERS = Corpus(
    name="folders",
    title="class folders",
    labels=(),
    read=read_class_folders,
    layout="a folder per emotion (angry/x.wav, neutral/y.wav, ...), speakers from --speaker-pattern on the names",
    test_speakers=(),
    validation_speakers=(),
    recognizes=_recognizes,
)

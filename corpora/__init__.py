"""Emotion corpora: the utterance record, the reader interface, the registry, speaker splits.

A corpus module (``corpora/ravdess.py`` for example) describes one corpus as its
distributor ships it with a `Corpus`: its label set, a reader that turns a folder
into `Utterance` records (folders are only read, never written), its default
test and validation speakers and, where the distributor offers a direct archive,
a `Download`. Adding a corpus is one module and one line in `CORPORA`.

The splits keep every speaker in exactly one of train, validation and test.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import zipfile
from collections.abc import Callable, Collection, Hashable, Sequence
from pathlib import Path
from typing import TypeVar

from sklearn.model_selection import GroupKFold

from utils import PathLike

logger = logging.getLogger(__name__)

PARTIAL_PREFIX = ".partial-"  # a download being unpacked; renamed when complete


class CorpusError(Exception):
    """A dataset folder or a split request that cannot be used; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One labelled audio file of a corpus. Corpus modules subclass it to add what their names carry.

    Attributes
    ----------
    path : Path
        The audio file.
    label : str
        Its emotion, one of the corpus's `Corpus.labels`.
    speaker : hashable
        Who speaks; the unit of every split.
    """

    path: Path
    label: str
    speaker: Hashable


Item = TypeVar("Item", bound=Utterance)


@dataclasses.dataclass(frozen=True)
class Download:
    """A corpus archive the distributor offers for direct download.

    Attributes
    ----------
    url : str
    archive : str
        File name of the archive (kept in the download cache).
    folder : str
        Sub-folder of an empty dataset folder that the archive is unpacked into.
    """

    url: str
    archive: str
    folder: str


@dataclasses.dataclass(frozen=True)
class Corpus:
    """How to read one corpus, and its recipe defaults.

    Attributes
    ----------
    name : str
        Its name in `CORPORA` (``--corpus``).
    title : str
        How people write it (RAVDESS, EMO-DB), for messages.
    labels : tuple of str
        Every emotion it can hold, in its canonical order (the order of a model's classes).
    read : callable
        ``read(folder) -> list[Utterance]``: every utterance under ``folder``, sorted by
        path; files that do not belong are left out and counted in the log.
    layout : str
        How its files are laid out and named, for messages that tell a user what was expected.
    test_speakers, validation_speakers : tuple
        Default speakers held out for the test scores and for early stopping.
    is_member : callable
        ``is_member(name) -> bool``: whether a file name (in an archive) is one of its utterances.
    download : Download or None
        Its direct archive, when the distributor offers one.
    """

    name: str
    title: str
    labels: tuple[str, ...]
    read: Callable[[Path], list[Utterance]]
    layout: str
    test_speakers: tuple
    validation_speakers: tuple
    is_member: Callable[[str], bool]
    download: Download | None = None


def dataset_folder(folder: PathLike) -> Path:
    """``folder`` as a Path, or CorpusError when it is missing or not a folder (for readers)."""
    folder = Path(folder)
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise CorpusError(f"dataset folder {folder} {problem}; set --dataset to the folder that holds the corpus")
    return folder


def read_corpus(corpus: Corpus, folder: PathLike, *, download: bool, url: str | None, cache_dir: Path) -> list[Utterance]:
    """The utterances of ``corpus`` under ``folder``; downloads the corpus into an empty one.

    Parameters
    ----------
    download : bool
        Download the corpus's archive when ``folder`` holds none of its files.
    url : str or None
        Where from; None is the distributor's address (`Download.url`).
    cache_dir : Path
        Folder whose ``downloads/`` keeps the archive.

    Raises
    ------
    CorpusError
        If the folder holds none of the corpus's files and it cannot (or may not) be
        downloaded; the message gives the manual steps.
    """
    folder = Path(folder)
    utterances = corpus.read(folder)
    if utterances:
        return utterances
    if corpus.download is None:
        raise CorpusError(f"{folder} holds no {corpus.title} files; expected {corpus.layout}")
    source = url or corpus.download.url
    manual = f"download {corpus.download.archive} from {source} and unzip it into {folder} (see dataset/README.md)"
    if not download:
        raise CorpusError(f"{folder} holds no {corpus.title} files; {manual}, or drop --no-download")
    target = folder / corpus.download.folder
    if target.exists():
        raise CorpusError(f"{target} exists but holds no {corpus.title} files; remove it or {manual}")
    archive = _download(source, corpus.download.archive, cache_dir / "downloads", manual)
    _unpack(archive, target, corpus, manual)
    return corpus.read(folder)


def _download(url: str, archive: str, folder: Path, manual: str) -> Path:
    import keras

    logger.info("downloading %s", url)
    # Keras falls back to /tmp/.keras when the folder does not exist yet (it checks write access).
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return Path(keras.utils.get_file(archive, url, cache_dir=str(folder), cache_subdir="."))
    except Exception as error:  # Keras raises a bare Exception for network failures
        raise CorpusError(f"could not download {url} ({error}); {manual}") from None


def _unpack(archive: Path, target: Path, corpus: Corpus, manual: str) -> None:
    """Check the archive (every member's CRC, the corpus's files inside) and unpack it into ``target``."""
    partial = target.with_name(f"{PARTIAL_PREFIX}{target.name}")
    try:
        with zipfile.ZipFile(archive) as bundle:
            broken = bundle.testzip()
            if broken is not None:
                raise zipfile.BadZipFile(f"member {broken} fails its CRC check")
            if not any(corpus.is_member(Path(name).name) for name in bundle.namelist()):
                raise zipfile.BadZipFile(f"it holds no {corpus.title} files")
            shutil.rmtree(partial, ignore_errors=True)
            bundle.extractall(partial)
    except zipfile.BadZipFile as error:
        archive.unlink(missing_ok=True)  # ours, in the cache: a corrupt download is not kept
        raise CorpusError(f"the downloaded archive {archive} is not a usable {corpus.title} zip ({error}); {manual}") from None
    partial.rename(target)
    logger.info("unpacked %s into %s", corpus.title, target)


def report_left_out(folder: Path, corpus_name: str, misnamed: Sequence[str], listed: int = 5) -> None:
    """Log the files a reader left out because their names break the corpus's convention.

    The first ``listed`` are named one per line with the reason, the rest counted.
    """
    for line in misnamed[:listed]:
        logger.warning("skipped, not a %s name: %s", corpus_name, line)
    if len(misnamed) > listed:
        logger.warning("skipped %d more files under %s that are not %s names", len(misnamed) - listed, folder, corpus_name)


# ---------------------------------------------------------------- splits


@dataclasses.dataclass(frozen=True)
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


# ---------------------------------------------------------------- the registry

# Corpus modules import the record and helpers above, so they are imported after them.
from corpora import ravdess  # noqa: E402

CORPORA = {corpus.name: corpus for corpus in (ravdess.RAVDESS,)}


def get_corpus(name: str) -> Corpus:
    """The registered corpus called ``name``; CorpusError naming the choices otherwise."""
    if name not in CORPORA:
        raise CorpusError(f"unknown corpus {name!r}; choose --corpus among {', '.join(sorted(CORPORA))}")
    return CORPORA[name]

"""The corpus record and reader interface: `Utterance`, `Corpus`, `Download`, the errors, the shared reading and downloading helpers.

The corpus modules (``corpora/ravdess.py`` ...) build on these; `corpora` re-exports them
beside the registry and the speaker splits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import logging
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

import files
from errors import UsageError
from files import PARTIAL_PREFIX
from utils import PathLike, find_audio_files

logger = logging.getLogger("corpora")

OURS = {"README.md"}  # what this project keeps in dataset/ itself
MISNAMED_LISTED = 5  # misnamed files reported one per line; the rest as a count


class CorpusError(Exception):
    """A dataset folder or a split request that cannot be used; the message says how to fix it."""


class CorpusUsageError(CorpusError, UsageError):
    """A corpus request that the command line got wrong: a missing folder, absent speakers, impossible folds."""


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
        Default speakers held out for the test scores and for early stopping; empty
        for corpora whose speakers are not known in advance (`default_speakers` then
        picks some of those present).
    recognizes : callable
        ``recognizes(path) -> bool``: whether a file's path (relative or not; in a folder
        or an archive) looks like one of the corpus's utterances, from its name alone.
        `detect_corpus` counts these.
    protocol : str
        The field's usual cross-validation protocol on this corpus, in words.
    fold_group : callable
        ``fold_group(utterance) -> hashable``: the unit of its cross-validation folds
        (the speaker, or IEMOCAP's session).
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
    recognizes: Callable[[str | Path], bool]
    protocol: str = "speaker folds (--folds K; leave-one-speaker-out when K is the number of speakers)"
    fold_group: Callable[[Utterance], Hashable] = lambda utterance: utterance.speaker
    download: Download | None = None


def dataset_folder(folder: PathLike) -> Path:
    """``folder`` as a Path, or CorpusError when it is missing or not a folder (for readers)."""
    folder = Path(folder)
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise CorpusUsageError(f"dataset folder {folder} {problem}; set --dataset to the folder that holds the corpus")
    return folder


def holds_nothing(folder: PathLike) -> bool:
    """Whether ``folder`` is missing or holds nothing of a user's: at most this project's README and hidden files.

    Such a folder (``dataset/`` of a fresh clone) may have a corpus downloaded into it.
    """
    folder = Path(folder)
    if not folder.exists():
        return True
    return folder.is_dir() and all(entry.name in OURS or entry.name.startswith(".") for entry in folder.iterdir())


def read_corpus(
    corpus: Corpus, folder: PathLike, *, download: bool, url: str | None, cache_dir: Path | None
) -> list[Utterance]:
    """The utterances of ``corpus`` under ``folder``; downloads the corpus into an empty or missing one.

    The same recording in two formats (``x.wav`` and ``x.flac``) is kept once (`one_per_recording`).

    Parameters
    ----------
    download : bool
        Download the corpus's archive when ``folder`` holds nothing (`holds_nothing`).
    url : str or None
        Where from; None is the distributor's address (`Download.url`).
    cache_dir : Path or None
        Folder whose ``downloads/`` keeps the archive; None keeps it in a temporary folder.

    Raises
    ------
    CorpusError
        If the folder holds none of the corpus's files and it cannot (or may not) be
        downloaded; the message gives the ways out.
    """
    folder = Path(folder)
    downloadable = corpus.download is not None and download
    if not holds_nothing(folder) or not downloadable:
        utterances = corpus.read(folder)
        if utterances:
            return one_per_recording(utterances)
        found = find_audio_files(folder)
        if not holds_nothing(folder):
            # Never download into a folder that holds anything: --dataset is only read.
            such = f"{len(found)} audio files (such as {found[0]})" if found else "files but no audio"
            raise CorpusError(
                f"{folder} holds {such} but no {corpus.title} files, whose names look like {corpus.layout}; "
                "point --dataset at the corpus, or set --corpus (a corpus is downloaded only into an empty or missing folder)"
            )
    if corpus.download is None:
        raise CorpusError(f"{folder} holds no {corpus.title} files; expected {corpus.layout}")
    source = url or corpus.download.url
    ways_out = (
        f"either download {corpus.download.archive} from {source} yourself and unzip it into {folder} "
        "(see dataset/README.md), or set --dataset to a folder that holds the corpus"
    )
    if not download:
        raise CorpusError(f"{folder} holds no {corpus.title} files; {ways_out}, or drop --no-download")
    target = folder / corpus.download.folder
    with contextlib.ExitStack() as stack:
        downloads = Path(stack.enter_context(tempfile.TemporaryDirectory())) if cache_dir is None else cache_dir / "downloads"
        archive = _download(source, downloads / corpus.download.archive, ways_out)
        _unpack(archive, target, corpus, ways_out)
    return one_per_recording(corpus.read(folder))


def one_per_recording(utterances: list[Item]) -> list[Item]:
    """``utterances`` with each recording once: of files that differ only in their format ending, the first in sorted order.

    Corpora are sometimes kept as WAV and FLAC side by side; counting both would put one
    recording twice into training, or into both training and test. The files left out are
    counted in one warning.
    """
    kept: dict[Path, Item] = {}
    for utterance in utterances:
        kept.setdefault(utterance.path.with_suffix(""), utterance)
    if len(kept) < len(utterances):
        repeated = next(u for u in utterances if kept[u.path.with_suffix("")] is not u)
        logger.warning(
            "%d files are a recording already read in another format (such as %s beside %s); each recording is used once",
            len(utterances) - len(kept), repeated.path, kept[repeated.path.with_suffix("")].path.name,
        )
    return list(kept.values())


DOWNLOAD_CHUNK = 1 << 20  # bytes read at a time when downloading


def _download(url: str, archive: Path, ways_out: str) -> Path:
    """``archive``, downloaded from ``url`` unless it is there already (written whole or not at all), with a progress bar."""
    if archive.is_file():
        return archive
    logger.info("downloading %s into %s", url, archive)
    try:
        archive.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=60) as response, files.atomic_path(archive) as partial:
            size = int(response.headers.get("Content-Length") or 0) or None
            with open(partial, "wb") as stream, tqdm(total=size, unit="B", unit_scale=True, desc="download", delay=1) as bar:
                while chunk := response.read(DOWNLOAD_CHUNK):
                    stream.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.URLError as error:
        raise CorpusError(f"the download of {url} failed ({error.reason}); {ways_out}") from None
    except (OSError, ValueError, http.client.HTTPException) as error:  # a broken or cut connection, a full disk, a malformed --download-url
        raise CorpusError(f"the download of {url} failed ({error}); {ways_out}") from None
    return archive


def _unpack(archive: Path, target: Path, corpus: Corpus, ways_out: str) -> None:
    """Check the archive (every member's CRC, the corpus's files inside) and unpack it into ``target``."""
    partial = target.with_name(f"{PARTIAL_PREFIX}{target.name}")
    try:
        with zipfile.ZipFile(archive) as bundle:
            broken = bundle.testzip()
            if broken is not None:
                raise zipfile.BadZipFile(f"member {broken} fails its CRC check")
            if not any(corpus.recognizes(name) for name in bundle.namelist()):
                raise zipfile.BadZipFile(f"it holds no {corpus.title} files")
            shutil.rmtree(partial, ignore_errors=True)
            bundle.extractall(partial)
    except zipfile.BadZipFile as error:
        archive.unlink(missing_ok=True)  # ours, in the cache: a corrupt download is not kept
        raise CorpusError(f"the downloaded archive {archive} is not a usable {corpus.title} zip ({error}); {ways_out}") from None
    partial.rename(target)
    logger.info("unpacked %s into %s", corpus.title, target)


def read_named_files(
    folder: PathLike, parse: Callable[[Path], Item | None], title: str, left_out: str = "files outside its set"
) -> list[Item]:
    """Every audio file under ``folder`` that ``parse`` turns into an utterance, sorted by path.

    ``parse(path)`` returns the utterance, None for a file of the corpus that is left
    out on purpose (counted in one line, as ``left_out``), or raises ValueError for a
    name that breaks the convention (the first few named with the reason, the rest
    counted). Nothing in ``folder`` is moved or written.

    Raises
    ------
    CorpusError
        If ``folder`` does not exist or is not a folder.
    """
    folder = dataset_folder(folder)
    utterances, misnamed, skipped = [], [], 0
    for path in find_audio_files(folder):
        try:
            utterance = parse(path)
        except ValueError as problem:
            misnamed.append(f"{path}: {problem}")
            continue
        if utterance is None:
            skipped += 1
        else:
            utterances.append(utterance)
    for line in misnamed[:MISNAMED_LISTED]:
        logger.warning("skipped, not a %s name: %s", title, line)
    if len(misnamed) > MISNAMED_LISTED:
        logger.warning("skipped %d more files under %s that are not %s names", len(misnamed) - MISNAMED_LISTED, folder, title)
    if skipped:
        logger.info("left out %d %s under %s", skipped, left_out, folder)
    return sorted(utterances, key=lambda utterance: utterance.path)


def recognizer(parse: Callable[[Path], Utterance | None]) -> Callable[[str | Path], bool]:
    """A corpus's ``recognizes`` when its file names alone carry everything: ``parse`` keeps the file."""

    def recognizes(path: str | Path) -> bool:
        try:
            return parse(Path(path)) is not None
        except ValueError:
            return False

    return recognizes


# One vocabulary for emotions across corpora: every reader gives labels in it, and
# `canonical_label` maps the names people use (in CSV manifests, folder names) onto it.
SYNONYMS = {
    "anger": "angry", "ang": "angry", "mad": "angry",
    "happiness": "happy", "joy": "happy", "hap": "happy",
    "sadness": "sad",
    "fear": "fearful", "afraid": "fearful", "scared": "fearful",
    "disgusted": "disgust",
    "surprise": "surprised", "pleasant surprise": "surprised", "pleasant_surprise": "surprised",
    "pleasant_surprised": "surprised", "ps": "surprised",
    "boredom": "bored", "boring": "bored",
    "neu": "neutral",
    "frustration": "frustrated", "excitement": "excited",
}


def canonical_label(name: str) -> str:
    """The project's name for an emotion: ``"Anger"`` -> ``"angry"``, ``"pleasant surprise"`` -> ``"surprised"``.

    Names outside `SYNONYMS` come back lower-cased, as they are (your own classes stay yours).
    """
    name = " ".join(name.strip().lower().replace("-", " ").split())
    return SYNONYMS.get(name, SYNONYMS.get(name.replace(" ", "_"), name.replace(" ", "_")))

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
import functools
import logging
import re
from collections.abc import Callable, Collection, Hashable, Sequence
from pathlib import Path

from utils import PathLike, find_audio_files

from corpora.base import (  # noqa: F401  (the record, the errors and the reading entry points: this package's interface)
    SYNONYMS,
    Corpus,
    CorpusError,
    CorpusUsageError,
    Item,
    Utterance,
    canonical_label,
    dataset_folder,
    holds_nothing,
    read_corpus,
)

logger = logging.getLogger("corpora")


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
            part: sorted({item.speaker for item in getattr(self, part)}, key=speaker_order)
            for part in ("train", "validation", "test")
        }


def speaker_order(speaker: Hashable) -> tuple:
    """Sort key for speakers: numbers in numeric order, then names."""
    return (0, speaker, "") if isinstance(speaker, int) else (1, 0, str(speaker))


def held_out_speakers(speakers: Collection[Hashable]) -> tuple[list, list]:
    """A fifth of ``speakers`` for the test and the tenth before them for validation (at least one each).

    The last ones in `speaker_order`, so the choice is the same on every run.
    """
    ordered = sorted(speakers, key=speaker_order)
    tests, validations = max(1, len(ordered) // 5), max(1, len(ordered) // 10)
    return ordered[-tests:], ordered[-tests - validations : -tests]


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
    present = sorted({item.speaker for item in items}, key=speaker_order)
    asked = test | validation
    missing = sorted(asked - set(present), key=str)
    if missing:
        suggestion = ""
        if len(present) >= 3:
            tests, validations = held_out_speakers(present)
            suggestion = f", e.g. --test-speakers {_listing(tests, ',')} --val-speakers {_listing(validations, ',')}"
        raise CorpusUsageError(
            f"speakers {_listing(missing)} are not in the dataset, which holds speakers {_listing(present)}; "
            f"choose --test-speakers and --val-speakers among those{suggestion}"
        )
    both = sorted(test & validation, key=str)
    if both:
        raise CorpusUsageError(f"speakers {_listing(both)} are asked for both test and validation")
    if not set(present) - asked:
        raise CorpusUsageError(f"no speaker is left for training: all of {_listing(present)} are test or validation")
    return SpeakerSplit(
        train=[item for item in items if item.speaker not in asked],
        validation=[item for item in items if item.speaker in validation],
        test=[item for item in items if item.speaker in test],
    )


def speaker_folds(
    items: Sequence[Item], k: int, group: Callable[[Item], Hashable] = lambda item: item.speaker
) -> list[SpeakerSplit]:
    """K-fold cross-validation over speaker groups.

    Speakers are divided into ``k`` groups of about equal file counts
    (`sklearn.model_selection.GroupKFold`), each speaker whole in one group, or by
    ``group`` (a corpus's `Corpus.fold_group`, such as IEMOCAP's session). Fold ``i``
    tests on group ``i``, validates on group ``i + 1`` (cyclically) and trains on the
    others, so every speaker is tested exactly once and never shares a fold part with
    itself. ``k`` equal to the number of speakers is leave-one-speaker-out.

    Raises
    ------
    CorpusError
        If ``k`` is below 3 (a fold needs test, validation and training
        speakers) or above the number of groups.
    """
    from sklearn.model_selection import GroupKFold

    groups = [group(item) for item in items]
    distinct = sorted(set(groups), key=str)
    if not 3 <= k <= len(distinct):
        raise CorpusUsageError(
            f"--folds must be between 3 and the number of speaker groups ({len(distinct)}: {_listing(distinct)}), got {k}"
        )
    test_groups = [
        {items[index].speaker for index in test_index}
        for _, test_index in GroupKFold(n_splits=k).split(items, groups=groups)
    ]
    return [
        split_by_speakers(items, test_groups[fold], test_groups[(fold + 1) % k])
        for fold in range(k)
    ]


def kept_apart(corpus: Corpus, utterances: Sequence[Utterance]) -> list[Utterance]:
    """The utterances of a corpus trained beside another, each speaker named ``corpus:speaker`` (EMO-DB's 3 is not RAVDESS's 3)."""
    return [dataclasses.replace(u, speaker=f"{corpus.name}:{u.speaker}") for u in utterances]


def _listing(speakers: Sequence[Hashable], separator: str = ", ") -> str:
    return separator.join(str(speaker) for speaker in speakers)


# ---------------------------------------------------------------- the registry

from corpora import cremad, emodb, folders, iemocap, manifest, ravdess, savee, tess  # noqa: E402  (the registry, after the splits)

# Detection tries them in this order; on a tie in recognised files the first wins.
CORPORA = {
    corpus.name: corpus
    for corpus in (
        ravdess.RAVDESS, emodb.EMODB, cremad.CREMAD, tess.TESS, savee.SAVEE, iemocap.IEMOCAP, iemocap.IEMOCAP_ALL,
        manifest.MANIFEST, folders.CLASS_FOLDERS,
    )
}
AUTO = "auto"  # --corpus auto: detect it from the dataset's layout and names
DOWNLOADED_BY_DEFAULT = ravdess.RAVDESS.name  # what --corpus auto downloads into an empty dataset folder


def known_emotions() -> set[str]:
    """Every emotion name some corpus uses, in the project's vocabulary."""
    return {label for corpus in CORPORA.values() for label in corpus.labels} | set(SYNONYMS.values())


folders.KNOWN_EMOTIONS.update(known_emotions())


def get_corpus(name: str, *, speaker_pattern: str | None = None) -> Corpus:
    """The registered corpus called ``name``; CorpusError naming the choices otherwise.

    ``speaker_pattern`` (a regular expression on file names) applies to ``folders`` only.
    """
    if name not in CORPORA:
        raise CorpusUsageError(f"unknown corpus {name!r}; choose --corpus among {', '.join([AUTO, *CORPORA])}")
    corpus = CORPORA[name]
    if speaker_pattern is not None:
        if corpus is not folders.CLASS_FOLDERS:
            raise CorpusUsageError(f"--speaker-pattern applies to --corpus {folders.CLASS_FOLDERS.name}, not {name}")
        try:
            re.compile(speaker_pattern)
        except re.error as error:
            raise CorpusUsageError(f"--speaker-pattern {speaker_pattern!r} is not a regular expression: {error}") from None
        corpus = dataclasses.replace(corpus, read=functools.partial(folders.read_class_folders, speaker_pattern=speaker_pattern))
    return corpus


def resolve_corpus(name: str, dataset: PathLike, *, speaker_pattern: str | None = None) -> Corpus:
    """The corpus ``--corpus name`` means for ``dataset``: a named one, or with ``auto`` the detected one.

    ``auto`` on a missing or empty folder is RAVDESS, the corpus an empty folder is downloaded into.
    """
    if name == AUTO:
        dataset = Path(dataset)
        if holds_nothing(dataset):
            name = DOWNLOADED_BY_DEFAULT
        else:
            name = detect_corpus(dataset).name
    return get_corpus(name, speaker_pattern=speaker_pattern)


def detect_corpus(dataset: PathLike) -> Corpus:
    """The corpus whose names the most audio files under ``dataset`` carry (a CSV file or a folder holding one: the manifest).

    Raises
    ------
    CorpusError
        If no layout fits; the message lists the layouts understood.
    """
    dataset = Path(dataset)
    if dataset.is_file() or (dataset.is_dir() and len(list(dataset.glob("*.csv"))) == 1):
        return manifest.MANIFEST
    files = [path.relative_to(dataset) for path in find_audio_files(dataset_folder(dataset))]
    counts = {name: sum(map(corpus.recognizes, files)) for name, corpus in CORPORA.items() if corpus is not manifest.MANIFEST}
    best = max(counts, key=counts.get) if counts else None
    if best is None or counts[best] == 0:
        layouts = "; ".join(f"{corpus.name}: {corpus.layout}" for corpus in CORPORA.values())
        found = f"{len(files)} audio files" + (f" such as {files[0]}" if files else "")
        raise CorpusError(f"{dataset} holds {found} in no layout understood; set --corpus, or lay it out as one of: {layouts}")
    logger.info("detected %s in %s (%d of %d audio files named as it names them)", CORPORA[best].title, dataset, counts[best], len(files))
    return CORPORA[best]


def default_speakers(corpus: Corpus, utterances: Sequence[Utterance]) -> tuple[list, list]:
    """Test and validation speakers: the corpus's own, or for one that names none, `held_out_speakers` of those present."""
    if corpus.test_speakers:
        return list(corpus.test_speakers), list(corpus.validation_speakers)
    return held_out_speakers({u.speaker for u in utterances})


def validation_from_training(split: SpeakerSplit, seed: int, fraction: float = 0.1) -> SpeakerSplit:
    """A split whose validation set is ``fraction`` of each class's training files, for corpora with too few speakers.

    Early stopping then watches files of the training speakers: not speaker-independent,
    which the log says. Test speakers are untouched.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    held: set[int] = set()
    for label in sorted({u.label for u in split.train}):
        members = [index for index, u in enumerate(split.train) if u.label == label]
        held.update(int(i) for i in rng.permutation(members)[: max(1, round(fraction * len(members)))])
    logger.warning("no validation speakers: early stopping watches %d training files of the training speakers "
                   "(not speaker-independent; the test speakers are)", len(held))
    return SpeakerSplit(
        train=[u for index, u in enumerate(split.train) if index not in held],
        validation=[u for index, u in enumerate(split.train) if index in held],
        test=split.test,
    )

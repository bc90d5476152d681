"""corpora/: the RAVDESS reader, downloads into an empty folder, speaker splits and folds."""

from __future__ import annotations

import functools
import http.server
import logging
import re
import threading
import zipfile
from pathlib import Path

import pytest
import soundfile as sf
from conftest import ravdess_name, tone, write_ravdess

import corpora
from corpora import CorpusError, read_corpus, speaker_folds, split_by_speakers
from corpora.ravdess import RAVDESS, parse_ravdess_name, read_ravdess


def folder_state(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
    }


@pytest.fixture
def fake_ravdess(tmp_path, write_audio):
    """Actor_01 and Actor_02 with speech, song, a text file, hidden and misnamed files."""
    y = tone(440, 0.2)
    expected = []
    for actor in (1, 2):
        for emotion in (1, 5, 8):
            expected.append(write_audio(f"dataset/Actor_{actor:02d}/{ravdess_name(emotion, actor)}", y))
        write_audio(f"dataset/Actor_{actor:02d}/{ravdess_name(3, actor, channel=2)}", y)  # song
    expected.append(write_audio(f"dataset/Actor_02/{ravdess_name(4, 2, intensity=2, extension='.flac')}", y))
    (tmp_path / "dataset/Actor_01/readme.txt").write_text("not audio")
    (tmp_path / "dataset/Actor_01" / f"._{ravdess_name(5, 1)}").write_bytes(b"\x00" * 10)  # macOS companion
    write_audio("dataset/Actor_01/recording-final.wav", y)  # breaks the convention
    write_audio(f"dataset/Actor_02/{ravdess_name(1, 2, intensity=2)}", y)  # neutral has no strong
    return tmp_path / "dataset", sorted(expected)


def test_reads_exactly_the_speech_files_with_their_fields(fake_ravdess, caplog):
    folder, expected = fake_ravdess
    with caplog.at_level(logging.WARNING):
        utterances = read_ravdess(folder)
    assert [u.path for u in utterances] == expected
    assert [(u.label, u.speaker) for u in utterances] == [
        ("neutral", 1), ("angry", 1), ("surprised", 1),
        ("neutral", 2), ("sad", 2), ("angry", 2), ("surprised", 2),
    ]
    sad = utterances[4]
    assert (sad.intensity, sad.modality, sad.statement, sad.repetition) == ("strong", "audio-only", 1, 1)
    reported = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(reported) == 2
    assert any("recording-final.wav" in line for line in reported)
    assert any("neutral (01) has no strong intensity" in line for line in reported)


def test_reading_leaves_the_folder_untouched(fake_ravdess):
    folder, _ = fake_ravdess
    before = folder_state(folder)
    read_ravdess(folder)
    assert folder_state(folder) == before


def test_reads_a_flat_folder(tmp_path, write_audio):
    for actor in (3, 4):
        write_audio(f"flat/{ravdess_name(2, actor, extension='.flac')}", tone(300, 0.1))
    assert [u.speaker for u in read_ravdess(tmp_path / "flat")] == [3, 4]


def test_follows_linked_actor_folders_and_reads_a_looping_link_once(tmp_path, write_audio):
    for actor in (3, 4):
        write_audio(f"elsewhere/Actor_{actor:02d}/{ravdess_name(2, actor)}", tone(300, 0.1))
    gathered = tmp_path / "gathered"
    gathered.mkdir()
    for actor in (3, 4):
        (gathered / f"Actor_{actor:02d}").symlink_to(tmp_path / f"elsewhere/Actor_{actor:02d}")
    (gathered / "Actor_03" / "loop").symlink_to(gathered)  # a link back up the tree
    assert [u.speaker for u in read_ravdess(gathered)] == [3, 4]


def test_an_empty_folder_gives_no_items(tmp_path):
    assert read_ravdess(tmp_path) == []


def test_a_missing_folder_is_a_corpus_error(tmp_path):
    with pytest.raises(CorpusError, match=f"{tmp_path / 'none'} does not exist"):
        read_ravdess(tmp_path / "none")


@pytest.mark.parametrize(
    "name, problem",
    [
        ("03-01-09-01-01-01-01.wav", "emotion 09"),
        ("03-01-05-03-01-01-01.wav", "intensity 03"),
        ("03-01-05-01-01-01-25.wav", "actor 25"),
        ("04-01-05-01-01-01-01.wav", "modality 04"),
        ("03-03-05-01-01-01-01.wav", "vocal channel 03"),
        ("03-01-05-01-01-01.wav", "seven two-digit fields"),
    ],
)
def test_names_that_break_the_convention_say_which_field(name, problem):
    with pytest.raises(ValueError, match=problem):
        parse_ravdess_name(name)


def test_song_names_parse_to_none():
    assert parse_ravdess_name("03-02-05-01-01-01-01.wav") is None


class Item:
    def __init__(self, speaker):
        self.speaker = speaker


def items_for(speakers, per_speaker=3):
    return [Item(speaker) for speaker in speakers for _ in range(per_speaker)]


def test_split_by_speakers_never_shares_a_speaker():
    split = split_by_speakers(items_for(range(1, 11)), test_speakers=[9, 10], validation_speakers=[7, 8])
    assert split.speakers() == {"train": [1, 2, 3, 4, 5, 6], "validation": [7, 8], "test": [9, 10]}
    assert len(split.train) + len(split.validation) + len(split.test) == 30


def test_asking_for_absent_speakers_lists_the_present_ones():
    with pytest.raises(CorpusError, match=r"speakers 21, 22, 23, 24 are not in the dataset, which holds speakers 1, 2, 3"):
        split_by_speakers(items_for([1, 2, 3]), test_speakers=[21, 22, 23, 24])


def test_a_speaker_in_test_and_validation_is_refused():
    with pytest.raises(CorpusError, match="both test and validation"):
        split_by_speakers(items_for([1, 2, 3]), test_speakers=[1], validation_speakers=[1])


def test_a_split_with_no_training_speaker_is_refused():
    with pytest.raises(CorpusError, match="no speaker is left for training"):
        split_by_speakers(items_for([1, 2]), test_speakers=[1], validation_speakers=[2])


@pytest.mark.parametrize("k", [3, 5, 10])
def test_speaker_folds_test_every_speaker_once_and_never_mix_parts(k):
    items = items_for(range(1, 11))
    folds = speaker_folds(items, k)
    assert len(folds) == k
    tested = []
    for fold in folds:
        parts = fold.speakers()
        assert not set(parts["train"]) & set(parts["validation"])
        assert not set(parts["train"]) & set(parts["test"])
        assert not set(parts["validation"]) & set(parts["test"])
        assert sorted(parts["train"] + parts["validation"] + parts["test"]) == list(range(1, 11))
        tested += parts["test"]
    assert sorted(tested) == list(range(1, 11))


@pytest.mark.parametrize("k", [2, 11])
def test_impossible_fold_counts_are_refused(k):
    with pytest.raises(CorpusError, match="--folds must be between 3 and the number of speaker groups"):
        speaker_folds(items_for(range(1, 11)), k)


# ---------------------------------------------------------------- download


@pytest.fixture
def served(tmp_path):
    """Serve ``tmp_path/served`` on 127.0.0.1; yields the folder and the base URL."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_an_empty_dataset_is_downloaded_checked_and_unpacked(tmp_path, served):
    root, base = served
    source = tmp_path / "source"
    write_ravdess(source, actors=(1, 2), emotions=(1, 5), files=1)
    with zipfile.ZipFile(root / "ravdess.zip", "w") as bundle:
        for path in sorted(source.rglob("*.wav")):
            bundle.write(path, path.relative_to(source))
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    url = f"{base}/ravdess.zip"
    utterances = read_corpus(RAVDESS, dataset, download=True, url=url, cache_dir=tmp_path / "cache")
    assert sorted((u.speaker, u.label) for u in utterances) == [(1, "angry"), (1, "neutral"), (2, "angry"), (2, "neutral")]
    assert all(RAVDESS.download.folder in u.path.parts for u in utterances)
    assert [path.name for path in dataset.iterdir()] == [RAVDESS.download.folder]
    # A second call finds the files and downloads nothing.
    (root / "ravdess.zip").unlink()
    assert len(read_corpus(RAVDESS, dataset, download=True, url=url, cache_dir=tmp_path / "cache")) == 4


def test_a_download_that_is_not_the_corpus_is_refused_and_not_kept(tmp_path, served):
    root, base = served
    with zipfile.ZipFile(root / "other.zip", "w") as bundle:
        bundle.writestr("notes/readme.txt", "not a corpus")
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    with pytest.raises(CorpusError, match="not a usable RAVDESS zip.*holds no RAVDESS files"):
        read_corpus(RAVDESS, dataset, download=True, url=f"{base}/other.zip", cache_dir=tmp_path / "cache")
    assert list(dataset.iterdir()) == []
    assert not list((tmp_path / "cache").rglob("*.zip"))


def test_an_unreachable_download_says_why_and_names_both_ways_out(tmp_path):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    with pytest.raises(CorpusError) as failed:
        read_corpus(RAVDESS, dataset, download=True, url="http://127.0.0.1:9/none.zip", cache_dir=tmp_path / "cache")
    assert re.fullmatch(
        r"the download of http://127.0.0.1:9/none.zip failed \(.*Connection refused\); either download "
        r"Audio_Speech_Actors_01-24.zip from .* yourself and unzip it into .*dataset \(see dataset/README.md\), "
        r"or set --dataset to a folder that holds the corpus", str(failed.value),
    )
    with pytest.raises(CorpusError, match="holds no RAVDESS files; either download .* or drop --no-download"):
        read_corpus(RAVDESS, dataset, download=False, url=None, cache_dir=tmp_path / "cache")
    assert list(dataset.iterdir()) == [] and not list((tmp_path / "cache").rglob("*.zip"))


def ravdess_archive(path: Path, actors=(1, 2), emotions=(1, 5)) -> Path:
    """A zip of generated RAVDESS files laid out as the distributor's archive (Actor_XX/ at the top)."""
    source = path.parent / f"{path.stem}-source"
    write_ravdess(source, actors=actors, emotions=emotions, files=1)
    with zipfile.ZipFile(path, "w") as bundle:
        for member in sorted(source.rglob("*.wav")):
            bundle.write(member, member.relative_to(source))
    return path


def test_a_dataset_folder_holding_only_our_readme_is_empty_and_gets_the_download(tmp_path):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "README.md").write_text("# dataset/\n")
    (dataset / ".DS_Store").write_bytes(b"")
    assert corpora.holds_nothing(dataset) and corpora.holds_nothing(tmp_path / "missing")
    assert corpora.resolve_corpus("auto", dataset) is RAVDESS
    archive = ravdess_archive(tmp_path / "ravdess.zip")
    # No cache folder (an unwritable one): the archive is kept in a temporary folder only.
    utterances = read_corpus(RAVDESS, dataset, download=True, url=archive.as_uri(), cache_dir=None)
    assert len(utterances) == 4 and (dataset / "README.md").read_text() == "# dataset/\n"
    assert sorted(path.name for path in dataset.iterdir()) == sorted([".DS_Store", "README.md", RAVDESS.download.folder])
    (dataset / "notes.txt").write_text("mine")  # anything of the user's: never downloaded into
    assert not corpora.holds_nothing(dataset)


def test_the_same_recording_in_two_formats_is_read_once(tmp_path, caplog):
    paths = write_ravdess(tmp_path, actors=(1,), emotions=(1, 5), files=1)
    y, sr = sf.read(paths[0])
    sf.write(paths[0].with_suffix(".flac"), y, sr)
    with caplog.at_level("WARNING"):
        utterances = read_corpus(RAVDESS, tmp_path, download=False, url=None, cache_dir=None)
    assert sorted(u.path.stem for u in utterances) == sorted(path.stem for path in paths)
    assert "1 files are a recording already read in another format" in caplog.text


def test_the_registry_names_every_corpus_and_refuses_others():
    assert corpora.get_corpus("ravdess") is RAVDESS
    assert set(RAVDESS.test_speakers).isdisjoint(RAVDESS.validation_speakers)
    with pytest.raises(CorpusError, match="unknown corpus 'timit'; choose --corpus among auto, ravdess, emodb"):
        corpora.get_corpus("timit")


def test_a_download_cut_short_is_refused_and_not_kept(tmp_path):
    class CutShort(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # promises 100 kB, sends 20 bytes and closes
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"PK\x03\x04" * 5)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), CutShort)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(CorpusError, match="is not a usable RAVDESS zip .*; either download"):
            read_corpus(RAVDESS, tmp_path / "dataset", download=True, url=f"http://127.0.0.1:{server.server_address[1]}/a.zip",
                        cache_dir=tmp_path / "cache")
    finally:
        server.shutdown()
    assert not list((tmp_path / "cache").rglob("*.zip")) and not (tmp_path / "dataset").exists()

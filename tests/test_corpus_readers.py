"""corpora/: a reader per corpus on a fake tree laid out as its distributor ships it, and detection."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest
from conftest import ravdess_name, tone

import corpora
from corpora import CorpusError, canonical_label, detect_corpus, resolve_corpus, speaker_folds
from corpora.cremad import read_cremad
from corpora.emodb import read_emodb
from corpora.folders import read_class_folders
from corpora.iemocap import IEMOCAP, IEMOCAP_ALL
from corpora.manifest import read_manifest
from corpora.savee import read_savee
from corpora.tess import read_tess

CLIP = tone(300, 0.1)


@pytest.fixture
def tree(tmp_path, write_audio):
    """Write audio files (and text files) under ``tmp_path/<name>``; returns the tree's root."""

    def make(name: str, audio: list[str], text: dict[str, str] | None = None) -> Path:
        for relative in audio:
            write_audio(f"{name}/{relative}", CLIP)
        for relative, content in (text or {}).items():
            path = tmp_path / name / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        return tmp_path / name

    return make


def warnings_of(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


def test_emodb_reads_speaker_text_emotion_and_version(tree, caplog):
    root = tree("emodb", ["wav/03a01Fa.wav", "wav/16b10Wb.wav", "wav/08a02Lc.wav", "wav/03a01Xa.wav", "wav/99a01Fa.wav",
                          "wav/readme.wav"], {"lablaut/03a01Fa.lab": "x"})
    with caplog.at_level(logging.WARNING):
        utterances = read_emodb(root)
    assert [(u.speaker, u.label, u.text, u.version) for u in utterances] == [
        (3, "happy", "a01", "a"), (8, "bored", "a02", "c"), (16, "angry", "b10", "b"),
    ]
    reported = warnings_of(caplog)
    assert len(reported) == 3 and any("emotion letter X" in line for line in reported)
    assert any("speaker 99" in line for line in reported)


def test_cremad_keeps_the_intensity(tree, caplog):
    root = tree("cremad", ["AudioWAV/1001_DFA_ANG_XX.wav", "AudioWAV/1091_IEO_HAP_HI.wav", "AudioWAV/1002_DFA_BOR_LO.wav",
                           "AudioWAV/2001_DFA_ANG_XX.wav"])
    with caplog.at_level(logging.WARNING):
        utterances = read_cremad(root)
    assert [(u.speaker, u.label, u.sentence, u.intensity) for u in utterances] == [
        (1001, "angry", "DFA", "unspecified"), (1091, "happy", "IEO", "high"),
    ]
    assert len(warnings_of(caplog)) == 2


def test_tess_reads_both_speakers_and_pleasant_surprise(tree, caplog):
    root = tree("tess", ["OAF_angry/OAF_back_angry.wav", "YAF_pleasant_surprised/YAF_bath_ps.wav",
                         "YAF_fear/YAF_youth_fear.wav", "OAF_Sad/OAF_bite_sad.wav", "OAF_angry/notes.wav"])
    with caplog.at_level(logging.WARNING):
        utterances = read_tess(root)
    assert sorted((u.speaker, u.word, u.label) for u in utterances) == [
        ("OAF", "back", "angry"), ("OAF", "bite", "sad"), ("YAF", "bath", "surprised"), ("YAF", "youth", "fearful"),
    ]
    assert len(warnings_of(caplog)) == 1


def test_savee_reads_speaker_folders_and_the_flat_variant(tree, caplog):
    root = tree("savee", ["AudioData/DC/a01.wav", "AudioData/JE/sa03.wav", "AudioData/KL/su15.wav", "AudioData/XX/a01.wav",
                          "flat/JK_n02.wav", "AudioData/DC/b01.wav"], {"AudioData/Info.txt": "about"})
    with caplog.at_level(logging.WARNING):
        utterances = read_savee(root)
    assert sorted((u.speaker, u.label, u.number) for u in utterances) == [
        ("DC", "angry", 1), ("JE", "sad", 3), ("JK", "neutral", 2), ("KL", "surprised", 15),
    ]
    assert len(warnings_of(caplog)) == 2


EVALUATION = """% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]

[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]
C-E1:\tNeutral;\t()

[10.0100 - 11.3925]\tSes01F_impro01_M000\texc\t[4.0000, 3.5000, 2.0000]

[14.8872 - 18.0175]\tSes01F_impro01_F001\tfru\t[2.5000, 3.5000, 3.5000]

[19.2900 - 20.7875]\tSes01F_impro01_M001\txxx\t[2.0000, 3.5000, 3.5000]
"""


def iemocap_tree(tree) -> Path:
    utterances = [f"Ses01F_impro01_{name}" for name in ("F000", "M000", "F001", "M001", "F002")]
    audio = [f"Session1/sentences/wav/Ses01F_impro01/{name}.wav" for name in utterances]
    audio += ["Session1/dialog/wav/Ses01F_impro01.wav", "Session2/sentences/wav/Ses02M_script01_1/Ses02M_script01_1_M010.wav"]
    text = {
        "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt": EVALUATION,
        "Session2/dialog/EmoEvaluation/Ses02M_script01_1.txt": "[1.0 - 2.0]\tSes02M_script01_1_M010\tang\t[1, 2, 3]\n",
    }
    return tree("iemocap", audio, text)


def test_iemocap_takes_labels_from_the_evaluations_and_merges_excited_into_happy(tree, caplog):
    root = iemocap_tree(tree)
    with caplog.at_level(logging.INFO):
        four = IEMOCAP.read(root)
    assert [(u.path.stem, u.label, u.speaker, u.session) for u in four] == [
        ("Ses01F_impro01_F000", "neutral", "1F", 1), ("Ses01F_impro01_M000", "happy", "1M", 1),
        ("Ses02M_script01_1_M010", "angry", "2M", 2),
    ]
    assert "left out 1 utterances" in caplog.text  # F002 has no evaluation line
    every = IEMOCAP_ALL.read(root)
    assert Counter(u.label for u in every) == {"neutral": 1, "excited": 1, "frustrated": 1, "angry": 1}
    assert IEMOCAP.fold_group(four[0]) == 1


def test_a_manifest_reads_paths_relative_to_it_with_canonical_labels(tree, caplog):
    root = tree("own", ["clips/a.wav", "clips/b.flac", "c.wav"], {
        "list.csv": "path,label,speaker\nclips/a.wav,Anger,7\nclips/b.flac,Happiness,spk2\nmissing.wav,sad,1\nc.wav,pleasant surprise,7\n",
    })
    with caplog.at_level(logging.WARNING):
        utterances = read_manifest(root)  # the folder holding the one CSV
    assert [(u.path.name, u.label, u.speaker) for u in utterances] == [
        ("c.wav", "surprised", 7), ("a.wav", "angry", 7), ("b.flac", "happy", "spk2"),
    ]
    assert "missing.wav does not exist" in caplog.text
    assert read_manifest(root / "list.csv") == utterances
    (root / "bad.csv").write_text("file,emotion\nx.wav,sad\n")
    with pytest.raises(CorpusError, match="holds 2 .csv files"):
        read_manifest(root)
    with pytest.raises(CorpusError, match="needs the columns path,label"):
        read_manifest(root / "bad.csv")


def test_a_manifest_drops_repeated_rows_with_a_count_and_refuses_conflicting_ones(tree, caplog):
    root = tree("own", ["a.wav", "b.wav"], {"list.csv": "path,label,speaker\na.wav,angry,1\nb.wav,sad,2\na.wav,angry,1\n./a.wav,angry,1\n"})
    with caplog.at_level(logging.WARNING):
        utterances = read_manifest(root)
    assert [(u.path.name, u.label) for u in utterances] == [("a.wav", "angry"), ("b.wav", "sad")]
    assert "lists 2 files more than once; each is read once" in caplog.text
    (root / "list.csv").write_text("path,label,speaker\na.wav,angry,1\nb.wav,sad,2\na.wav,happy,1\n")
    with pytest.raises(CorpusError, match=r"list.csv, lines 2 and 4: .*a.wav is listed twice, as angry \(speaker 1\) and as happy"):
        read_manifest(root)


def test_a_manifest_with_a_header_only_says_it_lists_no_files(tree):
    root = tree("own", [], {"list.csv": "path,label,speaker\n"})
    with pytest.raises(CorpusError, match=r"list.csv lists no files: it has a header and no rows"):
        read_manifest(root)


def test_class_folders_take_labels_from_folders_and_speakers_from_a_pattern(tree, caplog):
    root = tree("classes", ["Anger/s01_a.wav", "anger/s02_b.wav", "neutral/s01_c.wav", "neutral/nospeaker.wav"])
    with caplog.at_level(logging.WARNING):
        utterances = read_class_folders(root, speaker_pattern=r"^s(\d+)_")
    assert sorted((u.label, u.speaker) for u in utterances) == [("angry", 1), ("angry", 2), ("neutral", 1)]
    assert "finds no speaker in the name" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert len(read_class_folders(root)) == 4
    assert "speaker" not in caplog.text  # reading makes no split (evaluate.py reads too); train.py warns when it splits by file


@pytest.mark.parametrize("label, canonical", [("Anger", "angry"), ("HAPPINESS", "happy"), ("pleasant surprise", "surprised"),
                                               ("fear", "fearful"), ("boredom", "bored"), ("my-class", "my_class")])
def test_canonical_labels(label, canonical):
    assert canonical_label(label) == canonical


def test_every_layout_is_detected_and_an_unknown_one_lists_the_layouts(tree, tmp_path):
    assert detect_corpus(tree("r", [f"Actor_01/{ravdess_name(5, 1)}", f"Actor_02/{ravdess_name(3, 2)}"])).name == "ravdess"
    assert detect_corpus(tree("e", ["wav/03a01Fa.wav", "wav/03a01Na.wav"])).name == "emodb"
    assert detect_corpus(tree("c", ["AudioWAV/1001_DFA_ANG_XX.wav"])).name == "cremad"
    assert detect_corpus(tree("t", ["OAF_angry/OAF_back_angry.wav"])).name == "tess"
    assert detect_corpus(tree("s", ["AudioData/DC/a01.wav", "AudioData/DC/n02.wav"])).name == "savee"
    assert detect_corpus(iemocap_tree(tree)).name == "iemocap"
    assert detect_corpus(tree("m", ["a.wav"], {"list.csv": "path,label\na.wav,sad\n"})).name == "csv"
    assert detect_corpus(tree("f", ["angry/x.wav", "sad/y.wav"])).name == "folders"
    with pytest.raises(CorpusError, match="holds 2 audio files such as .* in no layout understood; set --corpus.*emodb: wav/"):
        detect_corpus(tree("u", ["misc/one.wav", "misc/two.wav"]))
    (tmp_path / "empty").mkdir()
    assert resolve_corpus("auto", tmp_path / "empty").name == "ravdess"  # an empty folder is downloaded into


def test_leave_one_session_out_groups_speakers_by_session():
    items = [corpora.Utterance(Path(f"{s}{g}{n}.wav"), "sad", f"{s}{g}") for s in (1, 2, 3, 4, 5) for g in "FM" for n in range(3)]
    folds = speaker_folds(items, 5, group=lambda u: u.speaker[0])
    assert sorted(tuple(fold.speakers()["test"]) for fold in folds) == [(f"{s}F", f"{s}M") for s in "12345"]


def test_a_speaker_pattern_is_for_class_folders_only():
    with pytest.raises(CorpusError, match="--speaker-pattern applies to --corpus folders, not emodb"):
        corpora.get_corpus("emodb", speaker_pattern="(\\d+)")
    with pytest.raises(CorpusError, match="is not a regular expression"):
        corpora.get_corpus("folders", speaker_pattern="(")


def test_without_validation_speakers_a_tenth_of_each_class_of_training_files_validates(caplog):
    items = [corpora.Utterance(Path(f"{speaker}{label}{n}.wav"), label, speaker)
             for speaker in ("OAF", "YAF") for label in ("sad", "angry") for n in range(20)]
    split = corpora.split_by_speakers(items, ["YAF"])
    with caplog.at_level(logging.WARNING):
        held = corpora.validation_from_training(split, seed=0)
    assert Counter(u.label for u in held.validation) == {"sad": 2, "angry": 2}
    assert not {u.path for u in held.validation} & {u.path for u in held.train}
    assert len(held.train) == 36 and held.test == split.test
    assert "not speaker-independent" in caplog.text
    assert corpora.validation_from_training(split, seed=0) == held  # the same files for the same seed


def test_the_dataset_readme_lists_every_registered_corpus():
    table = (Path(__file__).resolve().parent.parent / "dataset" / "README.md").read_text()
    assert {name for name in corpora.CORPORA if f"| `{name}` |" not in table} == set()

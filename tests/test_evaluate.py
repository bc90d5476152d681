"""evaluate.py: a trained run scored on another corpus over the emotions both know."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import tone

import evaluate
import inference
import runs


@pytest.fixture
def emodb(write_audio, tmp_path):
    """A fake EMO-DB: neutral, sad and angry (which the shared run knows), happy and bored (which it does not)."""
    for speaker in ("03", "08"):
        for number, letter in enumerate("NTWFL"):
            for version in "ab":
                write_audio(f"emodb/wav/{speaker}a0{number}{letter}{version}.wav", tone(180 + 60 * number, 1.2), 16000)
    (tmp_path / "emodb" / "wav" / "08b01Wa.wav").write_bytes(b"RIFF\x00\x00broken")
    return tmp_path / "emodb"


def test_scores_cover_the_shared_emotions_and_list_what_was_left_out(shared_run, emodb, tmp_path, capsys):
    output = tmp_path / "evaluation"
    code = evaluate.main(["--model", str(shared_run.folder), "--dataset", str(emodb), "--output", str(output)])
    captured = capsys.readouterr()
    assert code == 1  # one file could not be read
    assert "left out, unknown to the run: bored (4 files), happy (4 files)" in captured.err
    assert "08b01Wa.wav" in captured.err and "EMO-DB" in captured.out
    assert "scores of the run on this corpus (EMO-DB" in captured.out and "test scores" not in captured.out
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["labels"] == ["neutral", "sad", "angry"] and metrics["corpus"] == "emodb"
    assert metrics["files"]["scored"] == 12 and metrics["files"]["speakers"] == [3, 8]
    assert list(metrics["left_out"]["unreadable"]) == [str(emodb / "wav" / "08b01Wa.wav")]
    assert np.sum(metrics["confusion_matrix"]) == 12
    with open(output / "predictions.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 12 and {row["true"] for row in rows} == {"neutral", "sad", "angry"}
    assert (output / "confusion_matrix.png").is_file()

    # The prediction is the most probable shared class of what inference.predict gives.
    row = rows[0]
    [direct] = inference.predict([row["path"]], shared_run.folder)
    shared = {label: direct.probabilities[label] for label in metrics["labels"]}
    assert row["predicted"] == max(shared, key=shared.get)
    assert float(row["confidence"]) == pytest.approx(max(shared.values()) / sum(shared.values()), abs=1e-4)


def test_a_corpus_with_too_few_shared_emotions_is_one_sentence(shared_run, write_audio, tmp_path, capsys):
    write_audio("only/wav/03a01Fa.wav", tone(300, 1.0))
    write_audio("only/wav/03a01La.wav", tone(300, 1.0))
    code = evaluate.main(["--model", str(shared_run.folder), "--dataset", str(tmp_path / "only"), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and "no emotion in common, too few to score" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_an_output_that_cannot_be_written_is_refused_before_any_prediction(shared_run, emodb, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(inference, "predict", lambda *args, **kwargs: pytest.fail("predicted before checking --output"))
    (tmp_path / "a-file").write_text("")
    code = evaluate.main(["--model", str(shared_run.folder), "--dataset", str(emodb), "--output", str(tmp_path / "a-file" / "out")])
    assert code == 2 and capsys.readouterr().err.startswith(f"error: --output {tmp_path / 'a-file' / 'out'} cannot be made")


def test_scoring_a_run_on_its_own_training_speakers_is_warned(shared_run, caplog):
    import corpora
    from corpora.ravdess import RAVDESS

    run = runs.load_run(shared_run.folder)
    with caplog.at_level("WARNING"):
        evaluate.warn_training_speakers(run, RAVDESS, corpora.read_corpus(RAVDESS, shared_run.corpus, download=False, url=None, cache_dir=None))
    assert "speakers 1, 2, 3 of this corpus trained or validated the run" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        evaluate.warn_training_speakers(run, corpora.get_corpus("emodb"), [corpora.Utterance(shared_run.corpus / "x.wav", "sad", 1)])
    assert caplog.text == ""  # speaker 1 of another corpus is someone else


def test_a_run_trained_with_speaker_norm_is_scored_per_speaker_by_default(speaker_norm_run, emodb, tmp_path, capsys):
    code = evaluate.main(["--model", str(speaker_norm_run), "--dataset", str(emodb), "--output", str(tmp_path / "out")])
    assert code == 1  # the broken file
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["speaker_norm"] == "speaker"  # training's protocol: each speaker by their own statistics
    with open(tmp_path / "out" / "predictions.csv") as stream:
        rows = list(csv.DictReader(stream))
    run = runs.load_run(speaker_norm_run)
    expected = inference.predict([row["path"] for row in rows], run, speaker_norm=inference.SPEAKER, speakers=[row["speaker"] for row in rows])
    alone = inference.predict([row["path"] for row in rows], run)  # each file alone, as infer.py scores it
    for row, prediction, single in zip(rows, expected, alone):
        shared = {label: prediction.probabilities[label] for label in metrics["labels"]}
        assert row["predicted"] == max(shared, key=shared.get)
        shared_alone = {label: single.probabilities[label] for label in metrics["labels"]}
        assert row["predicted_alone"] == max(shared_alone, key=shared_alone.get)
        assert float(row["confidence_alone"]) == pytest.approx(max(shared_alone.values()) / sum(shared_alone.values()), abs=1e-4)
    true = [metrics["labels"].index(row["true"]) for row in rows]
    assert metrics["transductive"] is True and metrics["single_file_uar"] == pytest.approx(
        evaluate.score(true, [metrics["labels"].index(row["predicted_alone"]) for row in rows], metrics["labels"])["uar"])


def test_folder_normalisation_is_refused_where_the_folders_are_the_classes(speaker_norm_run, write_audio, tmp_path, capsys):
    for label, pitch in (("angry", 400), ("sad", 200)):
        for index in range(2):
            write_audio(f"classes/{label}/s{index}_{label}.wav", tone(pitch + 20 * index, 1.0))
    code = evaluate.main(["--model", str(speaker_norm_run), "--dataset", str(tmp_path / "classes"), "--corpus", "folders",
                          "--speaker-pattern", r"^s(\d)_", "--speaker-norm", "folder", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "--speaker-norm folder: every folder of this corpus holds one emotion only" in err
    assert not (tmp_path / "out").exists()
    code = evaluate.main(["--model", str(speaker_norm_run), "--dataset", str(tmp_path / "classes"), "--corpus", "folders",
                          "--speaker-pattern", r"^s(\d)_", "--output", str(tmp_path / "out")])
    assert code == 0 and json.loads((tmp_path / "out" / "metrics.json").read_text())["speaker_norm"] == "speaker"


def test_speaker_statistics_are_a_problem_where_speakers_are_files_or_show_one_emotion_each(tmp_path):
    import corpora

    def utterances(pairs):  # (speaker, label) per file
        return [corpora.Utterance(tmp_path / f"{index}.wav", label, speaker) for index, (speaker, label) in enumerate(pairs)]

    actors = [(actor, label) for actor in (1, 2) for label in ("neutral", "sad", "angry", "happy") for _ in range(2)]
    assert evaluate.speaker_statistics_problem(utterances(actors)) is None  # RAVDESS-like: a quarter each
    assert "each of the 4 files is a speaker of its own" in evaluate.speaker_statistics_problem(
        utterances([(index, label) for index, label in enumerate(("sad", "sad", "angry", "angry"))]))
    guests = [("a", "angry")] * 3 + [("a", "sad")] + [("b", "sad")] * 3 + [("b", "angry")]
    assert evaluate.speaker_statistics_problem(utterances(guests)).startswith("75% of the files carry their speaker's most frequent emotion")


@pytest.mark.parametrize("pattern", [None, r"^(guest\d)_"], ids=["no speakers", "a speaker per emotion"])
def test_per_speaker_statistics_that_would_mislead_fall_back_to_the_training_speakers_and_are_refused_when_asked_for(
    speaker_norm_run, write_audio, tmp_path, caplog, capsys, pattern
):
    # URDU-like class folders: no speakers in the names, or talk-show guests who each show one emotion.
    for label, pitch in (("angry", 400), ("sad", 200)):
        for index in range(3):
            write_audio(f"classes/{label}/guest{pitch // 200}_{index}.wav", tone(pitch + 20 * index, 1.0))
    argv = ["--model", str(speaker_norm_run), "--dataset", str(tmp_path / "classes"), "--corpus", "folders", "--output", str(tmp_path / "out")]
    argv += ["--speaker-pattern", pattern] if pattern else []
    with caplog.at_level("WARNING", logger="evaluate"):
        code = evaluate.main(argv)
    warnings = [record.getMessage() for record in caplog.records if record.name == "evaluate"]
    assert code == 0 and len(warnings) == 1 and warnings[0].startswith("per-speaker statistics would mislead: ")
    assert warnings[0].endswith("scored with the training speakers' statistics (--speaker-norm none)")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["speaker_norm"] == "none" and metrics["speaker_norm_problem"]
    with open(tmp_path / "out" / "predictions.csv") as stream:
        rows = list(csv.DictReader(stream))
    expected = inference.predict([row["path"] for row in rows], runs.load_run(speaker_norm_run), speaker_norm="none")
    for row, prediction in zip(rows, expected):
        shared = {label: prediction.probabilities[label] for label in metrics["labels"]}
        assert float(row["confidence"]) == pytest.approx(max(shared.values()) / sum(shared.values()), abs=1e-4)

    capsys.readouterr()
    code = evaluate.main([*argv, "--speaker-norm", "speaker", "--output", str(tmp_path / "asked")])  # asked for: refused
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --speaker-norm speaker: ") and err.strip().endswith("use --speaker-norm none")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "asked").exists()

"""infer.py: runs, files, long audio in windows, output formats and the command line."""

from __future__ import annotations

import csv
import io
import json
import shutil
import types
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import SHARED_RUN_FEATURES, SHARED_RUN_LABELS, run_cli, tone

import infer
import inference
import runs
import utils

LABELS = SHARED_RUN_LABELS


@pytest.fixture(scope="module")
def run_dir(shared_run) -> Path:
    """The shared tiny run of train.py (trained on features with `SHARED_RUN_FEATURES`)."""
    return shared_run.folder


@pytest.fixture
def clips(write_audio) -> list[Path]:
    """Five short files in a folder tree (one in a sub-folder, one FLAC at 44.1 kHz) and a corrupt one."""
    paths = [write_audio(f"clips/clip{index}.wav", tone(200 + 120 * index, 0.6 + 0.5 * index)) for index in range(3)]
    paths.append(write_audio("clips/more/deep.wav", tone(900, 2.0)))
    paths.append(write_audio("clips/more/high.flac", tone(700, 1.3, sr=44100), 44100))
    bad = paths[0].parent / "broken.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt this is not audio")
    (paths[0].parent / "notes.txt").write_text("not audio, not listed")
    return sorted(paths)


def test_every_good_file_once_and_the_bad_one_on_stderr(run_dir, clips, capsys):
    code, out, err = run_cli(infer.main, [clips[0].parent, "--model", run_dir], capsys)
    assert code == 1
    header, *rows = out.splitlines()
    assert header.split() == ["path", "emotion", "conf"]
    assert [line.split()[0] for line in rows] == [str(path) for path in clips]
    assert all(line.split()[1] in LABELS for line in rows)
    assert "broken.wav" in err and "not readable as audio" in err and "notes.txt" not in out + err


def test_csv_and_json_carry_probabilities_that_sum_to_one_and_agree_with_predict(run_dir, clips, capsys):
    code, out, _ = run_cli(infer.main, [*clips, "--model", run_dir, "--format", "csv"], capsys)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["path"] for row in rows] == [str(path) for path in clips]
    for row in rows:
        assert sum(float(row[label]) for label in LABELS) == pytest.approx(1, abs=1e-3)
        assert row["emotion"] == max(LABELS, key=lambda label: float(row[label]))

    code, out, _ = run_cli(infer.main, [*clips, "--model", run_dir, "--format", "json", "--top-k", "2"], capsys)
    records = json.loads(out)
    direct = inference.predict(clips, run_dir)
    for record, prediction in zip(records, direct, strict=True):
        assert sum(record["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        assert [entry["emotion"] for entry in record["top"]] == [label for label, _ in prediction.top(2)]
        assert record["emotion"] == prediction.emotion
        for label in LABELS:
            assert record["probabilities"][label] == pytest.approx(prediction.probabilities[label], abs=1e-6)


def test_predictions_use_the_runs_feature_parameters(run_dir, write_audio):
    path = write_audio("one.wav", tone(300, 1.5) + 0.05 * tone(2500, 1.5))
    [prediction] = inference.predict([path], run_dir)
    model = keras.models.load_model(run_dir / "model.keras")
    recorded = utils.DEFAULT_FEATURES.replace(**SHARED_RUN_FEATURES)
    vector = runs.load_run(run_dir).prosody_of(utils.load_wav(path, recorded.sr))[np.newaxis]  # the run's prosodic branch
    expected = model.predict([utils.get_framed_log_melspectrogram(path, recorded)[np.newaxis], vector], verbose=0)[0]
    default = model.predict([utils.get_framed_log_melspectrogram(path)[np.newaxis], vector], verbose=0)[0]
    assert not np.allclose(np.log(expected), np.log(default), atol=1e-3)  # the parameters matter to this (very confident) model
    np.testing.assert_allclose(list(prediction.probabilities.values()), expected, atol=1e-5)


def test_a_signal_in_memory_gives_what_its_file_gives(run_dir, write_audio):
    y = np.concatenate([tone(250, 6.0), tone(600, 7.0, amplitude=0.2)])
    path = write_audio("speech.wav", y, 16000, "FLOAT")  # float samples: the file holds exactly y
    [from_file] = inference.predict([path], run_dir, window=5.0)
    run = runs.load_run(run_dir)
    y44, sr44 = utils.resample(y, 16000, 44100), 44100
    from_memory = inference.predict_signal(y, 16000, run, name="mic", window=5.0)
    assert from_memory.path == "mic" and from_memory.emotion == from_file.emotion
    assert [(w.start, w.end) for w in from_memory.windows] == [(w.start, w.end) for w in from_file.windows]
    np.testing.assert_allclose(list(from_memory.probabilities.values()), list(from_file.probabilities.values()), atol=1e-5)
    resampled = inference.predict_signal(y44, sr44, run, window=5.0)  # another rate is brought to the run's first
    # (The round trip through 44.1 kHz changes the top of the spectrum, to which the very confident tiny run is sensitive.)
    back = inference.predict_signal(utils.resample(y44, sr44, 16000), 16000, run, window=5.0)
    np.testing.assert_allclose(list(resampled.probabilities.values()), list(back.probabilities.values()), atol=1e-6)
    assert [(w.start, w.end) for w in resampled.windows] == [(w.start, w.end) for w in from_file.windows]
    with pytest.raises(ValueError, match="mono signal"):
        inference.predict_signal(np.zeros((100, 2), np.float32), 16000, run)


def test_bfloat16_gives_close_probabilities(run_dir, clips):
    exact = inference.predict(clips, run_dir)
    fast = inference.predict(clips, run_dir, precision="bfloat16")
    pairs = [(list(a.probabilities.values()), list(b.probabilities.values())) for a, b in zip(exact, fast, strict=True)]
    for a, b in pairs:
        np.testing.assert_allclose(a, b, atol=0.03)
    assert any(a != b for a, b in pairs)  # bfloat16 really computed them


def test_a_long_file_is_read_in_windows_that_cover_it(run_dir, write_audio, capsys):
    y = np.concatenate([tone(200 + 40 * second, 1.0) for second in range(60)])
    path = write_audio("long.flac", y)
    code, out, _ = run_cli(infer.main, [path, "--model", run_dir, "--format", "json", "--timeline", "--window", "8"], capsys)
    assert code == 0
    [record] = json.loads(out)
    windows = record["windows"]
    assert len(windows) == 8 and windows[0]["start"] == 0 and windows[-1]["end"] == pytest.approx(60)
    assert all(a["end"] == b["start"] for a, b in zip(windows, windows[1:]))
    assert all(sum(w["probabilities"].values()) == pytest.approx(1, abs=1e-5) for w in windows)
    durations = np.array([w["end"] - w["start"] for w in windows])
    weighted = sum(d * np.array(list(w["probabilities"].values())) for d, w in zip(durations, windows)) / durations.sum()
    np.testing.assert_allclose(list(record["probabilities"].values()), weighted, atol=1e-5)

    code, out, _ = run_cli(infer.main, [path, "--model", run_dir, "--timeline"], capsys)
    assert len(out.splitlines()) == 1 + 1 + 8 and "52.50 -    60.00 s" in out  # header, file, 8 equal windows


@pytest.mark.parametrize(
    ("duration", "spans"),
    [
        (3.0, [(0.0, 3.0)]),
        (8.0, [(0.0, 8.0)]),
        (11.0, [(0.0, 11.0)]),  # 1.375 windows: one
        (13.0, [(0.0, 6.5), (6.5, 13.0)]),  # equal windows, as the exported models cut them
        (20.0, [(0.0, 20.0 / 3), (20.0 / 3, 40.0 / 3), (40.0 / 3, 20.0)]),
    ],
)
def test_window_spans(duration, spans):
    assert inference.window_spans(duration, 8.0) == spans


def test_computed_windows_are_not_kept_by_the_job_list(write_audio):
    path = write_audio("long.wav", tone(300, 20.0))
    jobs = [inference._Window(0, start, end) for start, end in inference.window_spans(20.0, 4.0)]
    # A run without a prosodic branch.
    run = types.SimpleNamespace(features=utils.DEFAULT_FEATURES, preprocess=lambda y: (utils.get_framed_log_melspectrogram(y), None))
    computed = list(inference._computed(jobs, [path], run))
    assert [len(item.segments) for item in computed] == [len(utils.get_framed_log_melspectrogram(tone(300, 4.0)))] * 5
    assert all(job.segments is None for job in jobs)  # only the consumer holds segments


def test_the_newest_usable_run_is_the_default(run_dir, clips, tmp_path, monkeypatch, capsys):
    root = tmp_path / "saved_model"
    root.mkdir()
    monkeypatch.setattr(runs, "MODEL_ROOT", root)  # saved_model/ of the project, wherever infer.py runs from
    code, _, err = run_cli(infer.main, [clips[1]], capsys)
    assert code == 1 and f"no usable trained run in {root};" in err and "python train.py" in err

    shutil.copytree(run_dir, root / "20260101-old")
    (root / ".partial-20270101-unfinished").mkdir()
    (root / "20270101-cv5").mkdir()  # cross-validation runs hold no model
    (root / "20270101-cv5" / "metrics.json").write_text("{}")
    assert runs.newest_runs(root) == [root / "20260101-old"]
    newer = root / "20260202-new"
    shutil.copytree(run_dir, newer)
    (newer / "labels.json").touch()
    assert runs.newest_runs(root) == [newer, root / "20260101-old"]
    code, out, _ = run_cli(infer.main, [clips[1]], capsys)
    assert code == 0 and out.splitlines()[1].startswith(str(clips[1]))


def test_a_folder_that_is_not_a_run_says_what_it_lacks(clips, tmp_path, capsys):
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "not-a-run" / "labels.json").write_text("[]")
    code, _, err = run_cli(infer.main, [clips[1], "--model", tmp_path / "not-a-run"], capsys)
    assert code == 2
    assert "is not a training run: it lacks model.keras" in err


def test_missing_paths_and_folders_without_audio_are_one_sentence(run_dir, tmp_path, capsys):
    code, _, err = run_cli(infer.main, [tmp_path / "nothing.wav", "--model", run_dir], capsys)
    assert code == 2 and err.strip() == f"error: {tmp_path / 'nothing.wav'}: no such file or folder"
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(infer.main, [tmp_path / "empty", "--model", run_dir], capsys)
    assert code == 2 and "holds no audio files" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [[], ["a.wav", "--format", "xml"], ["a.wav", "--top-k", "0"], ["a.wav", "--window", "-1"]])
def test_bad_options_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        infer.main(argv)
    assert stop.value.code == 2 and "usage: infer.py" in capsys.readouterr().err


def test_output_goes_to_a_file_when_asked(run_dir, clips, tmp_path, capsys):
    target = tmp_path / "out.json"
    code, out, _ = run_cli(infer.main, [clips[2], "--model", run_dir, "--format", "json", "--output", target], capsys)
    assert code == 0 and out == ""
    assert json.loads(target.read_text())[0]["path"] == str(clips[2])


def test_speaker_norm_standardises_with_each_folders_or_files_own_statistics(speaker_norm_run, write_audio):
    speaker = [write_audio(f"speaker_a/clip{index}.wav", tone(180 + 90 * index, 1.0 + 0.4 * index)) for index in range(3)]
    run = runs.load_run(speaker_norm_run)
    assert run.speaker_norm
    model = keras.models.load_model(speaker_norm_run / "model.keras")
    embeddings = [np.asarray(model.embed(utils.get_framed_log_melspectrogram(path, run.features)[np.newaxis]))[0] for path in speaker]
    # The run's prosodic branch (the default): each file's vector, standardised by the group's statistics too.
    vectors = [run.prosody_of(utils.load_wav(path, run.features.sr)) for path in speaker]

    def expected(groups):  # each group (of indices) standardised by its own statistics, written out here
        rows = []
        for group in groups:
            stacked = np.concatenate([embeddings[index] for index in group])
            mean, std = stacked.mean(0), stacked.std(0) + 1e-6
            stacked_vectors = np.stack([vectors[index] for index in group])
            vector_mean, vector_std = stacked_vectors.mean(0), stacked_vectors.std(0) + 1e-6
            # the identity statistics of the layers: the inputs arrive standardised already
            rows += [
                np.asarray(model.classify(
                    ((embeddings[index] - mean) / std)[np.newaxis], np.zeros_like(mean), np.ones_like(std),
                    ((vectors[index] - vector_mean) / vector_std)[np.newaxis], np.zeros_like(vector_mean), np.ones_like(vector_std),
                ))[0]
                for index in group
            ]
        return np.array(rows)

    by_folder = inference.predict(speaker, run, speaker_norm="folder")
    by_file = inference.predict(speaker, run, speaker_norm="file")
    global_stats = inference.predict(speaker, run, speaker_norm="none")
    as_list = lambda predictions: np.array([list(p.probabilities.values()) for p in predictions])  # noqa: E731
    np.testing.assert_allclose(as_list(by_folder), expected([[0, 1, 2]]), atol=1e-4)
    # Short files, one window each: alone in their group, standardised with the training speakers' statistics.
    np.testing.assert_allclose(as_list(by_file), as_list(global_stats), atol=1e-6)
    direct = model.predict([utils.get_framed_log_melspectrogram(speaker[0], run.features)[np.newaxis], vectors[0][np.newaxis]], verbose=0)[0]
    np.testing.assert_allclose(list(global_stats[0].probabilities.values()), direct, atol=1e-5)  # the exported model
    assert not np.allclose(as_list(by_folder), as_list(global_stats), atol=1e-3)
    assert [p.warnings for p in by_file] == [(inference.ALONE_IN_GROUP,)] * 3
    assert all(not p.warnings for p in by_folder + global_stats)
    [windows_apart] = inference.predict([speaker[2]], run, speaker_norm="file", window=0.9)  # 1.8 s: two windows, one group
    assert len(windows_apart.windows) == 2 and not windows_apart.warnings
    assert not np.allclose(list(windows_apart.probabilities.values()), list(global_stats[2].probabilities.values()), atol=1e-3)


def test_a_window_alone_in_its_group_gets_the_training_statistics_with_one_warning(speaker_norm_run, write_audio, caplog):
    paths = [write_audio("a/clip0.wav", tone(200, 1.0)), write_audio("a/clip1.wav", tone(300, 1.2)), write_audio("b/clip.wav", tone(450, 1.3))]
    run = runs.load_run(speaker_norm_run)
    with caplog.at_level("WARNING", logger="inference"):
        by_folder = inference.predict(paths, run, speaker_norm="folder")
    [line] = [record.getMessage() for record in caplog.records if record.name == "inference"]
    assert line.startswith("--speaker-norm folder: 1 of 3 files are one window alone in their group") and "(as --speaker-norm none)" in line
    assert [p.warnings for p in by_folder] == [(), (), (inference.ALONE_IN_GROUP,)]
    [alone] = inference.predict([paths[2]], run, speaker_norm="none")
    np.testing.assert_allclose(list(by_folder[2].probabilities.values()), list(alone.probabilities.values()), atol=1e-6)


def test_folder_normalisation_over_folders_named_after_emotions_is_refused(speaker_norm_run, write_audio, capsys):
    paths = [write_audio(f"{label}/clip{index}.wav", tone(200 + 100 * index, 1.0)) for label in ("Angry", "sad") for index in range(2)]
    code, out, err = run_cli(infer.main, [paths[0].parent.parent, "--model", speaker_norm_run, "--speaker-norm", "folder"], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("error: --speaker-norm folder: the folders (Angry/, sad/) are named after emotions") and "--speaker-norm none" in err


def test_speaker_norm_by_speaker_groups_the_files_as_given(speaker_norm_run, write_audio):
    paths = [write_audio(f"a/clip{index}.wav", tone(200 + 100 * index, 1.0)) for index in range(2)]
    paths.append(write_audio("b/clip.wav", tone(450, 1.3)))
    run = runs.load_run(speaker_norm_run)
    as_list = lambda predictions: np.array([list(p.probabilities.values()) for p in predictions])  # noqa: E731
    by_speaker = inference.predict(paths, run, speaker_norm=inference.SPEAKER, speakers=["a", "a", "b"])
    np.testing.assert_allclose(as_list(by_speaker), as_list(inference.predict(paths, run, speaker_norm="folder")), atol=1e-6)
    one_each = inference.predict(paths, run, speaker_norm=inference.SPEAKER, speakers=[1, 2, 3])
    np.testing.assert_allclose(as_list(one_each), as_list(inference.predict(paths, run, speaker_norm="file")), atol=1e-6)
    with pytest.raises(ValueError, match="speakers, one per file, go with speaker_norm='speaker'"):
        inference.predict(paths, run, speaker_norm=inference.SPEAKER)
    with pytest.raises(ValueError, match="2 speakers for 3 files"):
        inference.predict(paths, run, speaker_norm=inference.SPEAKER, speakers=["a", "b"])


def test_enrolment_standardises_every_file_with_the_means_of_the_enrolled_speakers_recordings(speaker_norm_run, write_audio, capsys, caplog):
    voice = [write_audio(f"me/enrol{index}.wav", tone(300 + 40 * index, 1.0)) for index in range(2)]
    broken = voice[0].parent / "broken.wav"
    broken.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt this is not audio")
    calls = [write_audio(f"calls/call{index}.wav", tone(350 + 150 * index, 1.2)) for index in range(2)]
    run = runs.load_run(speaker_norm_run)
    with caplog.at_level("WARNING", logger="inference"):
        enrolment = inference.enrol([voice[0].parent], run)
    assert (enrolment.files, enrolment.seconds) == (2, pytest.approx(2.0, abs=0.01))
    assert [record.getMessage().split(": ")[0] for record in caplog.records if record.name == "inference"] == ["skipped enrolment file"]

    # What predict gives: each file's embeddings standardised with the enrolment's means and the training speakers' deviations.
    from normalization import RunningStatistics

    embedded = [run.embed(utils.get_framed_log_melspectrogram(utils.load_wav(path), run.features)[np.newaxis]) for path in voice]
    np.testing.assert_allclose(enrolment.mean, RunningStatistics.of(e[0] for e in embedded).mean, atol=1e-5)
    (call,) = inference.predict([calls[0]], run, enrolment=enrolment)
    segments = utils.get_framed_log_melspectrogram(utils.load_wav(calls[0]), run.features)
    expected = run.classify(run.embed(segments[np.newaxis]), enrolment.mean, None, *(
        [] if run.prosody_set is None else [run.prosody_of(utils.load_wav(calls[0]))[np.newaxis], enrolment.prosody_mean]))
    np.testing.assert_allclose(list(call.probabilities.values()), expected[0], atol=1e-5)

    code, out, err = run_cli(infer.main, [calls[0].parent, "--model", speaker_norm_run, "--enroll", voice[0], "--enroll", voice[1], "--format", "json"], capsys)
    assert code == 0 and err == ""
    assert [item["emotion"] for item in json.loads(out)] == [p.emotion for p in inference.predict(calls, run, enrolment=inference.enrol(voice, run))]


@pytest.mark.parametrize("extra, says", [
    (["--speaker-norm", "folder"], "--enroll gives every file the enrolled speaker's statistics: drop --speaker-norm folder"),
    (["--runtime", "onnxruntime"], "--runtime onnxruntime runs the exported model, which standardises with the training speakers' statistics: drop --enroll"),
])
def test_enrolment_refuses_what_contradicts_it_in_one_line(speaker_norm_run, clips, extra, says, capsys):
    code, out, err = run_cli(infer.main, [clips[1], "--model", speaker_norm_run, "--enroll", clips[2], *extra], capsys)
    assert code == 2 and out == "" and err.startswith(f"error: {says}") and len(err.strip().splitlines()) == 1


def test_enrolment_needs_a_run_trained_with_speaker_statistics_and_a_readable_recording(run_dir, speaker_norm_run, clips, tmp_path, capsys):
    code, _, err = run_cli(infer.main, [clips[1], "--model", run_dir, "--enroll", clips[2]], capsys)
    assert code == 2 and "--enroll: run" in err and "was not trained with --speaker-norm" in err
    code, _, err = run_cli(infer.main, [clips[1], "--model", speaker_norm_run, "--enroll", tmp_path / "nobody.wav"], capsys)
    assert code == 2 and "nobody.wav: no such file or folder" in err
    broken = [path for path in clips[0].parent.iterdir() if path.name == "broken.wav"]
    code, _, err = run_cli(infer.main, [clips[1], "--model", speaker_norm_run, "--enroll", *broken], capsys)
    assert code == 2 and "--enroll: none of the 1 enrolment files could be read" in err


def test_speaker_norm_needs_a_run_trained_with_it(run_dir, clips, capsys):
    code, _, err = run_cli(infer.main, [clips[0], "--model", run_dir, "--speaker-norm", "folder"], capsys)
    assert code == 2 and "was not trained with --speaker-norm; use none" in err


def test_a_non_finite_probability_is_an_error_naming_the_file_never_an_emotion(run_dir, clips, monkeypatch, capsys):
    broken = runs.load_run(run_dir)
    broken.forward = lambda segments, prosody=None: np.full((len(segments), len(broken.labels)), np.nan, np.float32)
    (prediction,) = inference.predict([clips[1]], broken)
    assert prediction.emotion is None and prediction.error.startswith(f"{clips[1]}: the model gave non-finite probabilities")
    signal = inference.predict_signal(tone(300, 1.0), 16000, broken, name="mic")
    assert signal.emotion is None and signal.error.startswith("mic: the model gave non-finite probabilities")
    monkeypatch.setattr(inference, "load_run", lambda *args, **kwargs: broken)
    code, out, err = run_cli(infer.main, [clips[1], "--model", run_dir, "--runtime", "keras"], capsys)
    assert code == 1 and out == "" and "non-finite probabilities" in err


def test_attention_comes_from_the_model_call_that_gives_the_probabilities(tmp_path, write_audio):
    from tiny_model import tiny_model

    model = tiny_model()  # the BLSTM-attention head
    run = runs.Run(tmp_path, ["neutral", "sad", "angry"], model)
    paths = [write_audio("long.wav", tone(300, 2.5)), write_audio("short.wav", tone(500, 0.7))]  # windows of unlike lengths share calls
    plain = inference.predict(paths, run, window=1.0)
    attended = inference.predict(paths, run, window=1.0, attention=True)
    for path, alone, with_weights in zip(paths, plain, attended):
        assert all(window.attention is None for window in alone.windows)
        for window, weighed in zip(alone.windows, with_weights.windows):
            np.testing.assert_allclose(weighed.probabilities, window.probabilities, atol=1e-5)
            segments, _ = run.preprocess(utils.load_wav(path, sr=run.features.sr, offset=window.start, duration=window.end - window.start))
            _, expected = model.classify(run.embed(segments[np.newaxis]), return_attention=True)  # the window's segments embedded alone
            np.testing.assert_allclose(weighed.attention, np.asarray(expected)[0], atol=1e-5)
    with pytest.raises(ValueError, match="attention comes with runtime='keras', speaker_norm='none'"):
        inference.predict(paths, run, attention=True, speaker_norm="file")


def test_model_calls_hold_a_bounded_number_of_segments_whatever_the_batch_size(run_dir, write_audio, monkeypatch):
    run = runs.load_run(run_dir)
    shapes = []
    forward = run.forward

    def recorded(segments, prosody=None):
        shapes.append(segments.shape[:2])
        return forward(segments, prosody)

    long = write_audio("long.wav", tone(300, 60.0))  # 8 windows of about 25 segments
    run.forward = recorded
    inference.predict([long], run, batch_size=16)
    assert max(windows * steps for windows, steps in shapes) <= max(inference.BATCH_SEGMENTS, max(steps for _, steps in shapes))
    assert sum(windows for windows, _ in shapes) == 8


def test_engine_ray_without_ray_installed_is_one_line_naming_the_install(run_dir, clips, tmp_path, monkeypatch, capsys):
    import cluster

    monkeypatch.setattr(cluster, "installed", lambda package: package != "ray")
    code, _, err = run_cli(infer.main, [clips[1], "--model", run_dir, "--engine", "ray", "--format", "csv", "--output", tmp_path / "o.csv"], capsys)
    assert code == 2 and err.strip() == "error: --engine ray needs Ray Data: pip install -r requirements-ray.lock"
    assert not (tmp_path / "o.csv").exists()

"""Bad input on purpose: damaged runs, truncated audio, odd recordings, usage mistakes, Ctrl-C, log noise.

One test per case of the hardening issue; each checks the one line a user gets, the
exit code, and that nothing was lost or written where it must not be.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import folder_state, run_cli, tone, write_ravdess

import cli
import infer
import runs
import train
from cli import UsageError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def clip(write_audio) -> Path:
    return write_audio("clips/one.wav", tone(300, 1.5))


# ---------------------------------------------------------------- damaged runs


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


def damage_model_keras(run: Path) -> None:
    truncate(run / "model.keras")


def damage_labels(run: Path) -> None:
    (run / "labels.json").write_text('["neutral", "sad"')


@pytest.mark.parametrize(
    "damage, named",
    [
        (damage_model_keras, "model.keras does not load"),
        (damage_labels, "labels.json is damaged"),
    ],
)
def test_a_damaged_run_is_one_line_and_the_default_skips_it(shared_run, clip, tmp_path, monkeypatch, capsys, caplog, damage, named):
    root = tmp_path / "saved_model"
    older = Path(shutil.copytree(shared_run.folder, root / "20260101-000000-good"))
    damaged = Path(shutil.copytree(shared_run.folder, root / "20270101-000000-damaged"))
    damage(damaged)
    os.utime(damaged / "labels.json")  # the newest

    code, out, err = run_cli(infer.main, [clip, "--model", damaged], capsys)
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [err.strip()] and f"run {damaged}: {named}" in err and "Traceback" not in err

    monkeypatch.setattr(runs, "MODEL_ROOT", root)  # no --model: the newest usable run, with a warning about the damaged one
    code, out, err = run_cli(infer.main, [clip], capsys)
    assert code == 0 and out.splitlines()[1].startswith(str(clip))
    assert f"skipped a damaged run: run {damaged}: {named}" in caplog.text
    assert runs.load_newest_run(root).folder == older


# ---------------------------------------------------------------- infer --output


def test_an_output_that_cannot_be_written_is_refused_before_any_work(shared_run, clip, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        infer.main([str(clip), "--model", str(shared_run.folder), "--output", str(tmp_path / "no" / "such" / "x.csv")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--output" in err and "does not exist" in err


def test_results_are_written_whole_through_a_temporary_file(shared_run, clip, tmp_path, capsys):
    target = tmp_path / "out" / "results.csv"
    target.parent.mkdir()
    target.write_text("an earlier result\n")
    code, out, _ = run_cli(infer.main, [clip, "--model", shared_run.folder, "--format", "csv", "--output", target], capsys)
    assert code == 0 and out == ""
    assert list(csv.DictReader(io.StringIO(target.read_text())))[0]["path"] == str(clip)
    assert [path.name for path in target.parent.iterdir()] == ["results.csv"]  # no partial file left


# ---------------------------------------------------------------- truncated and odd audio


def test_a_wav_cut_mid_data_is_skipped_with_both_lengths(shared_run, clip, write_audio, capsys):
    cut = write_audio("clips/cut.wav", tone(300, 2.0), subtype="PCM_16")
    cut.write_bytes(cut.read_bytes()[: 44 + 2 * 16000])
    code, out, err = run_cli(infer.main, [clip.parent, "--model", shared_run.folder], capsys)
    assert code == 1
    assert [line.split()[0] for line in out.splitlines()[1:]] == [str(clip)]
    assert f"skipped: {cut}: truncated: its header declares 32000 samples, the file holds 16000" in err


def test_silent_short_low_rate_and_8_bit_recordings_are_predicted_with_a_warning(shared_run, write_audio, capsys):
    rng = np.random.default_rng(0)
    files = {
        "silent.wav": (np.zeros(32000, np.float32), 16000, None),
        "short.wav": (tone(300, 0.3), 16000, None),
        "phone.wav": (tone(300, 2.0, sr=8000), 8000, None),
        "eight_bit.wav": ((0.3 * rng.standard_normal(32000)).clip(-1, 1).astype(np.float32), 16000, "PCM_U8"),
        "fine.wav": (tone(300, 2.0), 16000, None),
    }
    paths = {name: write_audio(f"odd/{name}", y, sr, subtype) for name, (y, sr, subtype) in files.items()}
    expected = {"silent.wav": ["silent"], "short.wav": ["too short"], "phone.wav": ["low sample rate"],
                "eight_bit.wav": ["8-bit"], "fine.wav": []}

    code, out, _ = run_cli(infer.main, [paths["fine.wav"].parent, "--model", shared_run.folder, "--format", "json"], capsys)
    assert code == 0
    records = {Path(record["path"]).name: record for record in json.loads(out)}
    assert {name: record["warnings"] for name, record in records.items()} == expected
    assert all(record["emotion"] in records["fine.wav"]["probabilities"] for record in records.values())

    code, out, _ = run_cli(infer.main, [paths["fine.wav"].parent, "--model", shared_run.folder, "--format", "csv"], capsys)
    rows = {Path(row["path"]).name: row["warnings"] for row in csv.DictReader(io.StringIO(out))}
    assert rows == {name: ";".join(warnings) for name, warnings in expected.items()}

    code, out, _ = run_cli(infer.main, [paths["silent.wav"], paths["fine.wav"], "--model", shared_run.folder], capsys)
    _, *lines = out.splitlines()
    assert lines[0].endswith("[silent]") and "[" not in lines[1]


def test_every_format_libsndfile_reads_is_found_in_folder_scans(shared_run, write_audio, tmp_path, capsys):
    y = tone(300, 1.5)
    write_audio("formats/a.wav", y)
    sf.write(tmp_path / "formats" / "b.mp3", y, 16000, format="MP3")
    sf.write(tmp_path / "formats" / "c.aiff", y, 16000)
    (tmp_path / "formats" / "notes.txt").write_text("not audio")
    code, out, _ = run_cli(infer.main, [tmp_path / "formats", "--model", shared_run.folder], capsys)
    assert code == 0 and [Path(line.split()[0]).name for line in out.splitlines()[1:]] == ["a.wav", "b.mp3", "c.aiff"]


# ---------------------------------------------------------------- datasets and usage mistakes


def test_a_folder_of_other_files_is_never_downloaded_into(tmp_path, write_audio, capsys):
    write_audio("mine/recording-1.wav", tone(300, 0.5))
    write_audio("mine/recording-2.wav", tone(300, 0.5))
    dataset = tmp_path / "mine"
    before = folder_state(dataset)
    code, _, err = run_cli(train.main, ["3", "--corpus", "ravdess", "--dataset", dataset, "--output", tmp_path / "runs",
                                        "--download-url", "http://127.0.0.1:9/never.zip"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "holds 2 audio files (such as" in err and "no RAVDESS files, whose names look like Actor_01/03-01-05" in err
    assert "downloaded only into an empty or missing folder" in err
    assert folder_state(dataset) == before and not (dataset / "RAVDESS").exists()
    code, _, err = run_cli(train.main, ["3", "--dataset", dataset, "--output", tmp_path / "runs"], capsys)
    assert code == 1 and "in no layout understood; set --corpus" in err  # auto: the layouts it knows


@pytest.fixture
def corpus(tmp_path) -> Path:
    write_ravdess(tmp_path / "dataset", actors=(1, 2, 3, 4), emotions=(1, 5), files=1)
    return tmp_path / "dataset"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset", "{missing}", "--no-download"], "does not exist; set --dataset"),
        (["--folds", "99"], "--folds must be between 3 and the number of speaker groups"),
        (["--test-speakers", "3", "--val-speakers", "3"], "asked for both test and validation"),
        (["--test-speakers", "a,b", "--val-speakers", "3"], "speakers a, b are not in the dataset"),
        (["--corpus", "emodb", "--speaker-pattern", "(\\d+)"], "--speaker-pattern applies to --corpus folders"),
    ],
)
def test_usage_mistakes_exit_2_with_one_line(corpus, tmp_path, capsys, extra, message):
    argv = ["3", "--dataset", corpus, "--weights", "none", "--output", tmp_path / "runs"]
    argv += [part.format(missing=tmp_path / "missing") for part in extra]
    code, _, err = run_cli(train.main, argv, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_a_model_that_is_a_file_is_a_usage_mistake(clip, tmp_path, capsys):
    (tmp_path / "model.keras").write_text("not a folder")
    code, _, err = run_cli(infer.main, [clip, "--model", tmp_path / "model.keras"], capsys)
    assert code == 2 and "is a file, not a run folder" in err


# ---------------------------------------------------------------- Ctrl-C and log noise


@pytest.mark.slow
def test_ctrl_c_during_feature_extraction_is_one_line_exit_130_and_keeps_the_partial_run(tmp_path):
    write_ravdess(tmp_path / "dataset", actors=(1, 2, 3, 4), emotions=(1, 4, 5), files=4, seconds=8.0)
    runs_folder, cache = tmp_path / "runs", tmp_path / "cache"
    command = [sys.executable, str(ROOT / "train.py"), "3", "--dataset", str(tmp_path / "dataset"), "--weights", "none",
               "--test-speakers", "4", "--val-speakers", "3", "--output", str(runs_folder), "--cache-dir", str(cache)]
    # Its own process group with Ctrl-C at its default, as a terminal's job: a test run started in the
    # background of a non-interactive shell inherits SIGINT ignored, and so would train.py.
    child = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list(cache.rglob("*.npy")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.poll() is None, "training ended before its features were half computed"
    os.killpg(child.pid, signal.SIGINT)  # Ctrl-C reaches the parent and its workers alike
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130
    problems = [line for line in err.splitlines() if "INFO" not in line]
    assert problems == [f"interrupted; the partial run is kept; continue it with: python train.py 3 --resume --output {runs_folder}"]
    partial = [path.name for path in runs_folder.iterdir()]
    assert len(partial) == 1 and partial[0].startswith(runs.PARTIAL_PREFIX)


def test_the_command_lines_are_quiet_by_default(shared_run, clip):
    done = subprocess.run([sys.executable, str(ROOT / "infer.py"), str(clip), "--model", str(shared_run.folder)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.splitlines()[1].startswith(str(clip))
    assert done.stderr == ""


@pytest.mark.parametrize(
    "raised, code, line",
    [
        (None, 0, ""),
        (UsageError("--folds 99 is too many"), 2, "error: --folds 99 is too many"),
        (runs.RunError("run x: labels.json is damaged"), 1, "error: run x: labels.json is damaged"),
        (KeyboardInterrupt(), 130, "interrupted; nothing was written"),
    ],
)
def test_one_helper_maps_what_stops_a_command_to_its_exit_code_and_one_line(raised, code, line, capsys):
    def work() -> int:
        if raised is not None:
            raise raised
        return 0

    assert cli.run_command(work, failures=(runs.RunError,), interrupted="nothing was written") == code
    assert capsys.readouterr().err.strip() == line

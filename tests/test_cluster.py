"""--engine ray: the same results as this machine's engine, written as they come, resumable, on a real two-node cluster."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_RUN_LABELS, run_cli, tone, write_ravdess

import infer
import inference
import results
from errors import UsageError

pytest.importorskip("ray", reason="--engine ray needs Ray Data: pip install -r requirements-ray.lock")

ROOT = Path(__file__).resolve().parents[1]
# Ray 2.60 turns on token authentication for clusters started by `ray start`; these test clusters live on this machine only.
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def run_dir(shared_run) -> Path:
    return shared_run.folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[Path], Path]:
    """Twelve short recordings and one corrupt file: (folder, the good files sorted, the bad one)."""
    folder = tmp_path_factory.mktemp("cluster") / "audio"
    good = write_ravdess(folder, actors=(5, 6), emotions=(1, 4, 5), files=2)
    bad = folder / "Actor_05" / "broken.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt this is not audio")
    return folder, sorted(good), bad


@pytest.fixture(scope="module")
def ray_here(ray_environment_module):
    """One Ray of this machine for the tests that run in this process: their engines use it (as a caller's own Ray) and leave it running."""
    import cluster

    with cluster.RayEngine() as engine:
        yield engine


@pytest.fixture(scope="module")
def ray_environment_module():
    with pytest.MonkeyPatch.context() as patch:
        for name, value in RAY_ENV.items():
            if name.startswith("RAY_"):
                patch.setenv(name, value)
        yield


def parquet_rows(folder: Path) -> dict[str, dict]:
    import pyarrow.parquet

    rows = pyarrow.parquet.read_table(folder).to_pylist()
    assert len({row["path"] for row in rows}) == len(rows), "a file written twice"
    return {row["path"]: row for row in rows}


def jsonl_rows(path: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len({row["path"] for row in rows}) == len(rows), "a file written twice"
    return {row["path"]: row for row in rows}


def test_ray_gives_the_local_engines_results_reports_a_bad_file_once_and_resumes(run_dir, corpus, ray_here, tmp_path, capsys, caplog):
    folder, good, bad = corpus
    local = {prediction.path: prediction for prediction in inference.predict(good, run_dir, runtime="onnxruntime")}

    output = tmp_path / "results"
    argv = [folder, "--model", run_dir, "--engine", "ray", "--format", "parquet", "--output", output]
    code, out, err = run_cli(infer.main, argv, capsys)
    assert code == 1 and out == ""
    assert err.count(f"skipped: {bad}") == 1 and "not readable as audio" in err and "Traceback" not in err
    assert f"12 of 13 files in {output}" in err
    rows = parquet_rows(output)
    assert sorted(rows) == sorted(map(str, good))
    for path, row in rows.items():
        assert row["emotion"] == local[path].emotion
        np.testing.assert_allclose([row[label] for label in SHARED_RUN_LABELS], [local[path].probabilities[label] for label in SHARED_RUN_LABELS], atol=1e-5)

    # A rerun predicts only what the output lacks (the bad file, again refused), and writes nothing twice.
    code, _, err = run_cli(infer.main, argv, capsys)
    assert code == 1 and "holds 12 of the 13 files already" in caplog.text and err.count("skipped:") == 1
    assert "1 file on 1 node" in err and len(parquet_rows(output)) == 12

    # JSON lines hold what the local engine's json gives for the same files (CSV rows: test_a_result_log_..., and test_infer).
    jsonl = tmp_path / "results.jsonl"
    run_cli(infer.main, [*good, "--model", run_dir, "--engine", "ray", "--format", "jsonl", "--output", jsonl, "--top-k", "2", "--timeline"], capsys)
    _, local_json, _ = run_cli(infer.main, [*good, "--model", run_dir, "--format", "json", "--top-k", "2", "--timeline"], capsys)
    assert jsonl_rows(jsonl) == {record["path"]: record for record in json.loads(local_json)}


@pytest.mark.parametrize("argv, says", [
    (["--engine", "ray", "--format", "csv"], "give --output"),
    (["--engine", "ray", "--format", "json", "--output", "x.json"], "--format csv, jsonl, parquet"),
    (["--engine", "ray", "--format", "csv", "--output", "x.csv", "--speaker-norm", "folder"], "--speaker-norm none or file"),
    (["--engine", "ray", "--format", "parquet", "--output", "x", "--timeline"], "use --format csv or jsonl"),
    (["--format", "parquet", "--output", "x"], "goes with --engine ray"),
    (["--address", "127.0.0.1:1"], "give it with --engine ray"),
])
def test_engine_options_that_contradict_each_other_exit_2_naming_the_flag(argv, says, capsys):
    with pytest.raises(SystemExit) as stop:
        infer.main(["a.wav", *argv])
    assert stop.value.code == 2 and says in capsys.readouterr().err


def test_a_result_log_drops_a_line_cut_short_and_refuses_other_columns(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("path,emotion\na.wav,sad\nb.wav,ha")  # killed while writing b.wav's row
    log = results.ResultLog(path, "csv", ["path", "emotion"])
    assert log.done() == {"a.wav"} and path.read_text() == "path,emotion\na.wav,sad\n"
    log.append([{"path": "b.wav", "emotion": "happy"}])
    assert path.read_text() == "path,emotion\na.wav,sad\nb.wav,happy\n" and "b.wav" in log
    with pytest.raises(UsageError, match="holds other columns"):
        results.ResultLog(path, "csv", ["path", "emotion", "neutral"])
    lines = tmp_path / "out.jsonl"
    lines.write_text('{"path": "a.wav"}\n{"path": "b.w')
    assert results.ResultLog(lines, "jsonl").done() == {"a.wav"} and lines.read_text() == '{"path": "a.wav"}\n'
    lines.write_text("not json\n")
    with pytest.raises(UsageError, match="line 1 is not a result"):
        results.ResultLog(lines, "jsonl")


def test_without_a_cluster_at_the_address_one_line_names_the_flag(run_dir, corpus, ray_environment_module, tmp_path, capsys):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [corpus[1][0], "--model", run_dir, "--engine", "ray", "--address", f"127.0.0.1:{port}", "--format", "csv", "--output", tmp_path / "o.csv"]
    code, _, err = run_cli(infer.main, argv, capsys)
    assert code == 2 and f"--address 127.0.0.1:{port}: no Ray cluster answers there" in err and "Traceback" not in err


def infer_command(*argv) -> list[str]:
    return [sys.executable, str(ROOT / "infer.py"), *map(str, argv)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def start_node(log: Path, *argv: str) -> subprocess.Popen:
    """``ray start ... --block`` in the background, its output in ``log``: stopping it (SIGTERM) stops the node's processes."""
    ray = Path(sys.executable).with_name("ray")
    return subprocess.Popen([str(ray), "start", *argv, "--num-cpus=1", "--object-store-memory=150000000", "--block"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=RAY_ENV)


def wait_for(condition, what: str, seconds: float = 90) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_a_two_node_cluster_shares_the_work(run_dir, corpus, tmp_path):
    """A head (`ray start --head`) and a second node (`ray start --address`) of one CPU each: both predict files."""
    folder, good, _ = corpus
    port = free_port()
    head = start_node(tmp_path / "head.log", "--head", f"--port={port}", "--include-dashboard=false", "--disable-usage-stats")
    nodes = [head]
    try:
        # The address the head gives for other nodes once it runs (its own IP, which the host name may not resolve to).
        joining = re.compile(r"ray start --address='([^']+)'")
        wait_for(lambda: joining.search((tmp_path / "head.log").read_text()), "the head node")
        address = joining.search((tmp_path / "head.log").read_text()).group(1)
        nodes.append(start_node(tmp_path / "second.log", f"--address={address}"))
        wait_for(lambda: "Ray runtime started" in (tmp_path / "second.log").read_text(), "the second node")
        output = tmp_path / "out.jsonl"
        done = subprocess.run(infer_command(*good, "--model", run_dir, "--engine", "ray", "--address", address, "--format", "jsonl", "--output", output),
                              capture_output=True, text=True, env=RAY_ENV, timeout=300)
        assert done.returncode == 0, done.stderr
        summary = next(line for line in done.stderr.splitlines() if line.startswith("done:"))
        counts = [int(part.rsplit(" ", 1)[1]) for part in summary.split("(", 1)[1].split(")")[0].split(", ")]
        assert "12 files on 2 nodes" in summary and min(counts) > 0, summary
        assert sorted(jsonl_rows(output)) == sorted(map(str, good))
    finally:
        for node in reversed(nodes):
            node.terminate()
            node.wait(timeout=60)


def test_a_worker_killed_mid_run_loses_no_finished_result_and_the_rerun_completes(run_dir, corpus, tmp_path):
    """A long file first: its call is still running when the others are written; its worker is then killed (SIGKILL)."""
    folder, good, _ = corpus
    long_file = tmp_path / "a_long.wav"
    import soundfile

    soundfile.write(long_file, np.tile(tone(220, 2.0, amplitude=0.3), 300), 16000)  # 10 minutes: 75 windows, about 5 s
    files = [long_file, *good]
    output = tmp_path / "out.jsonl"
    command = infer_command(*files, "--model", run_dir, "--engine", "ray", "--format", "jsonl", "--output", output)
    running = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=RAY_ENV)
    try:
        wait_for(lambda: output.exists() and output.read_text().count("\n") >= 4 or running.poll() is not None, "the first results")
        assert running.poll() is None, "the run ended before its worker could be killed: " + running.stderr.read()
        before = output.read_text()
        assert str(long_file) not in before
        workers = [int(line.split()[0]) for line in subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
                   if "ray::MapWorker" in line]
        assert workers, "no Ray worker process found"
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        running.wait(timeout=300)
    finally:
        running.kill()
        running.wait()
    assert output.read_text().startswith(before)  # what was written before the kill is kept as it was
    rerun = subprocess.run(command, capture_output=True, text=True, env=RAY_ENV, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    rows = jsonl_rows(output)
    assert sorted(rows) == sorted(map(str, files))


def test_train_fills_its_caches_on_ray_as_here_and_trains_the_same_run(shared_run, ray_here, tmp_path):
    """train.py --engine ray: the shared run's training again, its features, prosodic vectors and frozen embeddings
    computed by Ray's workers: every cache entry equals the one computed here (1e-5), and the run scores the same."""
    import dataclasses

    import train
    from tiny_model import tiny_backbone

    options = dataclasses.replace(shared_run.options, output=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"))
    before = sum(ray_here.nodes.values())
    folder = train.run(options, backbone=lambda: tiny_backbone((64, 64, 3)), engine=ray_here)
    assert sum(ray_here.nodes.values()) > before
    here, there = Path(shared_run.options.cache_dir), tmp_path / "cache"
    entries = {kind: sorted(path.relative_to(there) for path in (there / kind).rglob("*.npy")) for kind in ("features", "prosody", "embeddings")}
    assert len(entries["features"]) == len(entries["prosody"]) == len(entries["embeddings"]) > 0
    for entry in entries["features"] + entries["prosody"]:
        np.testing.assert_allclose(np.load(there / entry), np.load(here / entry), atol=1e-5, err_msg=str(entry))
    # The embeddings' keys name the encoder's layers, which a second model in one process numbers anew:
    # they are compared through what the run made of them, its test predictions.
    metrics, expected = (json.loads((run / "metrics.json").read_text()) for run in (folder, shared_run.folder))
    assert metrics["uar"] == pytest.approx(expected["uar"], abs=1e-6)
    rows, expected_rows = (list(csv.DictReader((run / "predictions.csv").open())) for run in (folder, shared_run.folder))
    assert [row["predicted"] for row in rows] == [row["predicted"] for row in expected_rows]
    np.testing.assert_allclose([float(row["confidence"]) for row in rows], [float(row["confidence"]) for row in expected_rows], atol=1e-4)

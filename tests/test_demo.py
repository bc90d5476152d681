"""demo.py: the HTTP API against inference.predict, bad input on the page, and the page itself in headless Chromium."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_cli, tone

import demo
import inference
import runs

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def wav_bytes(y: np.ndarray, sr: int = 16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, y, sr, format="WAV")
    return buffer.getvalue()


def speech(seconds: float = 1.5) -> np.ndarray:
    return tone(330, seconds, amplitude=0.3) + tone(520, seconds, amplitude=0.1)


@pytest.fixture(scope="module")
def run(shared_run) -> runs.Run:
    return runs.load_run(shared_run.folder)


@pytest.fixture(scope="module")
def client(run):
    from starlette.testclient import TestClient

    with TestClient(demo.create_app(run, demo.Settings(max_bytes=MAX_BYTES, max_seconds=30, window=1.0))) as client:
        yield client


def post(client, body: bytes, filename: str = "speech.wav"):
    return client.post("/api/predict", params={"filename": filename}, content=body)


def test_the_answer_is_infer_predict_on_the_same_file(client, run, write_audio):
    y = np.concatenate([speech(1.2), tone(800, 1.6, amplitude=0.2)])
    path = write_audio("speech.wav", y)
    response = post(client, path.read_bytes())
    assert response.status_code == 200, response.text
    answer = response.json()
    (expected,) = inference.predict([path], run, window=1.0)
    assert answer["emotion"] == expected.emotion and answer["name"] == "speech.wav"
    np.testing.assert_allclose([answer["probabilities"][label] for label in run.labels], list(expected.probabilities.values()), atol=1e-6)
    assert len(answer["windows"]) == len(expected.windows) >= 2  # a timeline for a recording over one window
    for window, want in zip(answer["windows"], expected.windows):
        assert (window["start"], window["end"]) == pytest.approx((want.start, want.end))
        np.testing.assert_allclose(window["probabilities"], want.probabilities, atol=1e-6)
    assert answer["duration"] == pytest.approx(len(y) / 16000)
    assert len(answer["envelope"]) == demo.ENVELOPE_POINTS and max(answer["envelope"]) == pytest.approx(np.abs(y).max(), abs=1e-3)
    assert answer["attention"] is None  # the shared run's statistics head weighs segments equally


def test_the_run_is_described_from_its_folder(client, shared_run, run):
    info = client.get("/api/run").json()
    metrics = json.loads((shared_run.folder / runs.METRICS).read_text())
    assert info["name"] == shared_run.folder.name and info["labels"] == run.labels
    assert info["test_uar"] == pytest.approx(metrics["uar"]) and info["test_speakers"] == [4]
    assert info["recipe"]["head"] == "stats" and info["attention"] is False
    page = client.get("/")
    assert page.status_code == 200 and "/static/demo.js" in page.text
    for asset in ("demo.js", "demo.css", "recorder.js"):
        assert client.get(f"/static/{asset}").status_code == 200
    # Nothing on the page comes from another host: it works offline.
    for text in (page.text, client.get("/static/demo.js").text, client.get("/static/demo.css").text):
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text


MAX_BYTES = 2**20  # the test app's upload limit
BAD_INPUT = {  # what is sent -> the status and the words the page shows
    "not audio": (lambda: b"hello, this is text", "notes.txt", 415, "notes.txt: not readable as audio"),
    "empty": (lambda: b"", "empty.wav", 400, "empty.wav: empty"),
    "silent": (lambda: wav_bytes(np.zeros(16000, np.float32)), "quiet.wav", 422, "quiet.wav: silent"),
    "too long": (lambda: wav_bytes(tone(300, 40.0, sr=8000), sr=8000), "long.wav", 413, "long.wav: 40 s of audio, over the demo's limit of 30 s (python demo.py --max-seconds)"),
    "too large": (lambda: b"\0" * (MAX_BYTES + 1), "huge.wav", 413, "huge.wav: over the demo's upload limit of 1 MiB (python demo.py --max-upload-mb)"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_gets_its_status_and_one_line_and_the_server_keeps_serving(client, case):
    body, filename, status, message = BAD_INPUT[case]
    response = post(client, body(), filename)
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error and "\n" not in error and "Traceback" not in error and "/tmp" not in error
    assert post(client, wav_bytes(speech())).status_code == 200


def test_a_filename_is_only_a_name(client):
    response = post(client, wav_bytes(speech()), "../../outside/speech.wav")
    assert response.status_code == 200 and response.json()["name"] == "speech.wav"


def test_a_second_request_while_one_runs_is_told_to_wait(client, monkeypatch):
    started, release = threading.Event(), threading.Event()
    analyse = demo.analyse

    def slow(*args):
        started.set()
        release.wait(30)
        return analyse(*args)

    monkeypatch.setattr(demo, "analyse", slow)
    first = {}
    thread = threading.Thread(target=lambda: first.update(response=post(client, wav_bytes(speech()))))
    thread.start()
    assert started.wait(30)
    second = post(client, wav_bytes(speech()))
    release.set()
    thread.join(60)
    assert second.status_code == 503 and "busy" in second.json()["error"]
    assert first["response"].status_code == 200


def test_an_attention_head_shows_each_segments_weight(tmp_path):
    from starlette.testclient import TestClient
    from tiny_model import TINY_FEATURES, tiny_model

    model = tiny_model()  # the BLSTM-attention head
    run = runs.Run(tmp_path, ["neutral", "sad", "angry"], model)
    y = speech(2.5)
    with TestClient(demo.create_app(run, demo.Settings(window=1.0))) as client:
        assert client.get("/api/run").json()["attention"] is True
        answer = post(client, wav_bytes(y)).json()
    spans = answer["attention"]
    segment = TINY_FEATURES["segment_frames"] * run.features.hop_length / run.features.sr
    assert len(spans) > len(answer["windows"]) >= 2
    for index, window in enumerate(answer["windows"]):
        inside = [s for s in spans if s["window"] == index]
        assert all(window["start"] <= s["start"] < window["end"] for s in inside)
        assert sum(s["weight"] for s in inside) == pytest.approx(1.0, abs=1e-4)
        assert all(0 < s["end"] - s["start"] <= segment and s["end"] <= window["end"] + 1e-6 for s in inside)


def test_without_a_run_it_says_to_train_first(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runs, "MODEL_ROOT", tmp_path / "saved_model")
    code, _, err = run_cli(demo.main, ["--port", free_port()], capsys)
    assert code == 1 and "train one first (python train.py EPOCHS)" in err and len(err.strip().splitlines()) == 1


def test_a_taken_port_names_the_flag(run, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, _, err = run_cli(demo.main, ["--model", run.folder, "--port", taken.getsockname()[1]], capsys)
    assert code == 1 and "pass another --port" in err and len(err.strip().splitlines()) == 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------- in a real browser


@pytest.fixture
def server(shared_run):
    """python demo.py on the shared run, in its own process, until the test ends (then Ctrl-C)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "demo.py", "--model", str(shared_run.folder), "--port", str(port), "--window", "1"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, "KERAS_BACKEND": "tensorflow"},
        # Ctrl-C as at a terminal, even where the test runs in the background (whose jobs start with SIGINT ignored).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    started = process.stderr.readline()
    assert f"at http://127.0.0.1:{port}/ (this machine only)" in started, started + process.stderr.read()
    yield f"http://127.0.0.1:{port}/", process
    if process.poll() is None:
        process.kill()
        process.wait()


def test_ctrl_c_stops_the_server_with_130_and_no_traceback(server):
    address, process = server
    assert urllib.request.urlopen(address + "api/run", timeout=30).status == 200
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium): the demo's browser test did not run")
def test_the_page_in_chromium_uploads_and_records(server, run, tmp_path, write_audio):
    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install -r requirements-dev.txt)")
    address, _ = server
    upload = write_audio("upload.wav", np.concatenate([speech(1.5), tone(700, 1.5, amplitude=0.2)]))
    microphone = write_audio("microphone.wav", speech(3.0))
    (expected,) = inference.predict([upload], run, window=1.0)
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={microphone}",
        ])
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.goto(address)
        page.wait_for_selector("#run[data-state=ready]")
        assert run.folder.name in page.text_content("#run")
        page.set_input_files("#file", str(upload))
        page.wait_for_selector("#result:not([hidden])", timeout=60000)
        assert page.text_content("#emotion") == expected.emotion
        assert page.locator("#bars .bar").count() == len(run.labels)
        assert page.locator("#timeline rect").count() >= 2 * len(run.labels)  # a cell per window and class
        screenshot = tmp_path / "demo-upload.png"
        page.screenshot(path=str(screenshot), full_page=True)
        print(f"screenshot of the page after an upload: {screenshot}")

        page.click("#record")
        page.wait_for_selector("#record[data-recording=true]")
        page.wait_for_timeout(1500)
        page.click("#record")
        page.wait_for_function("document.querySelector('#source').textContent.startsWith('recording.wav')", timeout=60000)
        assert page.text_content("#emotion") in run.labels and page.is_hidden("#error")
        browser.close()

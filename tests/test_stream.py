"""stream.py and infer.py --stream: one line per hop from PCM on standard input, as infer predicts the same audio."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, tone

import infer
import runs
import stream

ROOT = Path(__file__).resolve().parent.parent


def pcm_bytes(y: np.ndarray) -> bytes:
    return (np.clip(y, -1, 1 - 1 / 32768) * 32768).astype("<i2").tobytes()


def speech(seconds_each: float = 2.0) -> np.ndarray:
    """Tones, digital silence, tones: what the lines must follow."""
    return np.concatenate([tone(220, seconds_each), tone(660, seconds_each, amplitude=0.2), np.zeros(int(1.5 * 16000), np.float32), tone(330, 1.6)])


def test_pcm_chunks_are_hops_of_float_samples_and_a_short_last_one():
    import io

    y = (np.arange(40000) % 200 - 100).astype(np.float32) / 1000
    chunks = list(stream.pcm_chunks(io.BytesIO(pcm_bytes(y) + b"\x01"), 16000, seconds=1.0))  # an odd trailing byte
    assert [len(chunk) for chunk in chunks] == [16000, 16000, 8000]
    np.testing.assert_allclose(np.concatenate(chunks), y, atol=1 / 32768)


def voiced(seconds: float) -> np.ndarray:
    """Gliding tones over hiss, never below the dB floor: a stream whose every frame the floor leaves alone."""
    t = np.arange(int(seconds * 16000)) / 16000
    y = 0.3 * np.sin(2 * np.pi * np.cumsum(180 + 60 * np.sin(2 * np.pi * 0.7 * t)) / 16000)
    return (y + 0.05 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)


def hops_of(y: np.ndarray, hop: int = int(stream.HOP_SECONDS * 16000)) -> list[np.ndarray]:
    return [y[i : i + hop] for i in range(0, len(y), hop)]


def irregular_chunks(y: np.ndarray) -> list[np.ndarray]:
    """``y`` in chunks of 0.05-1.3 s: a stream whose hops fall anywhere on the frame grid."""
    ends = np.cumsum(np.random.default_rng(1).integers(800, 21000, size=len(y) // 800))
    return np.split(y, ends[ends < len(y)])


def window_first(y: np.ndarray) -> list[np.ndarray]:
    """A first chunk longer than the window whose first frame lies 4 frames before a segment's start (its deltas' context
    is inside, its first STFT windows are not), then hops."""
    first = 160 * (2 * 32 - 4) + int(stream.WINDOW_SECONDS * 16000)
    return [y[:first], *hops_of(y[first:])]


@pytest.mark.parametrize("chunking", [hops_of, irregular_chunks, window_first])
def test_each_segment_is_embedded_once_as_the_whole_stream_cuts_it(speaker_norm_run, monkeypatch, chunking):
    import utils

    run = runs.load_run(speaker_norm_run)
    config = run.features
    y = voiced(9.0)
    whole = utils.add_deltas(utils.log_mel_spectrogram(y, config), config)  # the whole stream's frames
    embedded = []  # what each call gave the backbone
    monkeypatch.setattr(run, "embed", lambda segments, embed=run.embed: embedded.append(segments[0]) or embed(segments))
    embedder, seen = stream.WindowEmbeddings(run), []
    for chunk in chunking(y):
        embedder.append(chunk)
        window, new = embedder.update()
        if len(window) == 0:
            continue  # shorter than a segment so far
        starts = sorted(embedder.embeddings)
        assert len(window) == len(starts) and starts == list(range(starts[0], starts[-1] + 1, config.segment_hop))
        assert starts[0] * config.hop_length >= embedder.received - stream.WINDOW_SECONDS * 16000  # inside the last window
        new_starts = starts[len(starts) - len(new):]
        # The segments embedded are the whole stream's (its dB floor is never reached here), context included.
        if new_starts:
            np.testing.assert_allclose(embedded.pop(), np.stack([whole[start : start + config.segment_frames] for start in new_starts]), atol=2e-3)
        seen += new_starts
    # Every segment of the grid that was complete while in the window is embedded exactly once.
    assert seen == list(range(0 if chunking is not window_first else seen[0], seen[-1] + 1, config.segment_hop))
    assert seen[-1] * config.hop_length + embedder.right_samples <= len(y) < (seen[-1] + config.segment_hop) * config.hop_length + embedder.right_samples


def test_each_hop_classifies_the_windows_segments_and_silence_is_said(speaker_norm_run):
    run = runs.load_run(speaker_norm_run)
    y = np.concatenate([voiced(3.0), np.zeros(int(2.0 * 16000), np.float32), voiced(2.0)])
    y = (np.round(y * 32768) / 32768).astype(np.float32)  # what 16-bit PCM holds
    hop = int(stream.HOP_SECONDS * 16000)
    predictions = list(stream.predict_stream(hops_of(y), run, 16000, speaker_norm="none"))
    embedder = stream.WindowEmbeddings(run)
    assert len(predictions) == int(np.ceil(len(y) / hop))
    for index, (chunk, prediction) in enumerate(zip(hops_of(y), predictions)):
        embedder.append(chunk)
        assert prediction.time == pytest.approx(min((index + 1) * hop, len(y)) / 16000)
        if np.abs(chunk).max() < 1e-4:
            assert prediction.emotion is None and prediction.probabilities is None
            continue
        window, _ = embedder.update()
        expected = run.classify(window[np.newaxis], prosody=run.prosody_of(embedder.audio)[np.newaxis])[0]
        np.testing.assert_allclose(list(prediction.probabilities.values()), expected, atol=1e-5)
    assert sum(p.emotion is None for p in predictions) >= 1  # the silent stretch


def test_the_running_normalisation_uses_the_streams_own_statistics(speaker_norm_run):
    from normalization import RunningStatistics

    run = runs.load_run(speaker_norm_run)
    y = np.concatenate([tone(200 + 60 * k, 1.0) for k in range(12)]).astype(np.float32)
    predictions = list(stream.predict_stream(hops_of(y), run, 16000))
    embedder, statistics, prosodic, expected = stream.WindowEmbeddings(run), RunningStatistics(), RunningStatistics(), []
    for chunk in hops_of(y):
        embedder.append(chunk)
        window, new = embedder.update()
        statistics.update(new)  # each segment once
        own = (statistics.mean, statistics.std) if statistics.count >= stream.RUNNING_MIN_SEGMENTS else (None, None)
        vector = run.prosody_of(embedder.audio)  # the run's prosodic branch (the default), with the stream's statistics after enough hops
        prosodic.update(vector)
        own_prosody = (prosodic.mean, prosodic.std) if prosodic.count >= stream.RUNNING_MIN_VECTORS else (None, None)
        expected.append(run.classify(window[np.newaxis], *own, vector[np.newaxis], *own_prosody)[0])
    assert statistics.count >= stream.RUNNING_MIN_SEGMENTS  # the stream's own statistics were reached
    got = np.array([list(p.probabilities.values()) for p in predictions])
    np.testing.assert_allclose(got, np.array(expected), atol=1e-5)
    pooled = np.array([list(p.probabilities.values()) for p in stream.predict_stream(hops_of(y), run, 16000, speaker_norm="none")])
    assert not np.allclose(got[-1], pooled[-1], atol=1e-3)  # the stream's statistics took over


def stream_process(run: Path, *extra: str) -> subprocess.Popen:
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "infer.py"), "--stream", "-", "--model", str(run), *extra],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment, cwd=ROOT,
        # Ctrl-C as at a terminal, even where the test runs in the background (whose jobs start with SIGINT ignored).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.slow
def test_piped_pcm_gives_one_json_line_per_hop_and_ends_with_the_input(speaker_norm_run):
    run = runs.load_run(speaker_norm_run)
    y = np.round(speech() * 32768) / 32768
    process = stream_process(speaker_norm_run, "--format", "jsonl", "--speaker-norm", "none", "--stream-rate", "16000")
    out, err = process.communicate(pcm_bytes(y), timeout=300)
    assert process.returncode == 0, err.decode()[-2000:]
    lines = [json.loads(line) for line in out.decode().splitlines()]
    expected = list(stream.predict_stream(hops_of(y.astype(np.float32)), run, 16000, speaker_norm="none"))
    assert [line["time"] for line in lines] == [round(p.time, 3) for p in expected]
    for line, prediction in zip(lines, expected):
        assert line["emotion"] == prediction.emotion and line.get("silence", False) == (prediction.emotion is None)
        if prediction.emotion is not None:
            np.testing.assert_allclose(list(line["probabilities"].values()), list(prediction.probabilities.values()), atol=1e-5)


@pytest.mark.slow
def test_ctrl_c_ends_a_stream_with_130_and_no_traceback(speaker_norm_run):
    process = stream_process(speaker_norm_run)
    process.stdin.write(pcm_bytes(tone(300, 1.0)))
    process.stdin.flush()
    first = process.stdout.readline().decode()  # a line came: the stream is running
    assert first.strip().endswith(tuple("0123456789")) and " s " in first
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err.decode()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--stream", "some.wav"], "a stream is - (PCM on standard input) or nothing"),
        (["a.wav", "--stream", "-"], "give it no PATH"),
        (["--stream", "-", "--format", "csv"], "--format table or jsonl"),
        (["a.wav", "--format", "jsonl"], "--format jsonl goes with --engine ray (jsonl with --stream too)"),
        (["a.wav", "--speaker-norm", "running"], "--speaker-norm running goes with --stream"),
        ([], "give at least one PATH (or --stream"),
    ],
)
def test_stream_usage_mistakes_exit_2_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        infer.main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_a_microphone_that_cannot_be_opened_is_one_line(speaker_norm_run, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_sounddevice(name, *args, **kwargs):
        if name == "sounddevice":
            raise ImportError("No module named 'sounddevice'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sounddevice)
    code, _, err = run_cli(infer.main, ["--stream", "--model", speaker_norm_run], capsys)
    assert code == 2 and "needs sounddevice" in err and "pip install sounddevice" in err and "--stream -" in err

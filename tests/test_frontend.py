"""frontend.py: the in-graph front end computes the NumPy path's segments (utils.py), for every feature parameter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import tone

import frontend
import utils
from utils import DEFAULT_FEATURES, FeatureConfig

# The bound, in dB (static) and dB per frame (deltas): float32 sums in another order than
# librosa's FFT; measured below 2e-4 on generated and real speech.
TOLERANCE = 2e-3
RAVDESS_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "ravdess-mini"


def in_graph(y: np.ndarray, config: FeatureConfig = DEFAULT_FEATURES) -> np.ndarray:
    return np.asarray(frontend.LogMelFrontEnd(config)(y[np.newaxis].astype(np.float32)))[0]


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """A gliding harmonic tone in noise, with a pause: energy, silence and movement in every band."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    pitch = 140 + 60 * np.sin(2 * np.pi * 0.7 * t)
    y = sum(np.sin(2 * np.pi * np.cumsum(k * pitch) / 16000) / k for k in range(1, 8))
    y = 0.2 * y * (np.sin(2 * np.pi * 1.3 * t) > -0.3) + rng.normal(0, 0.003, t.size)
    return y.astype(np.float32)


@pytest.mark.parametrize("samples", [100, 1279, 1280, 10239, 10240, 48000, 50000])
def test_the_graph_gives_the_numpy_segments_for_any_length(samples):
    y = speech_like(samples / 16000 + 0.1)[:samples]
    expected = utils.get_framed_log_melspectrogram(y)
    np.testing.assert_allclose(in_graph(y), expected, atol=TOLERANCE)


@pytest.mark.parametrize(
    "changes",
    [
        {"sr": 8000, "fmax": 4000.0, "n_fft": 256, "win_length": 200, "hop_length": 80},
        {"preemphasis": 0.0},
        {"preemphasis": 0.5, "window": "hann", "win_length": 512},
        {"n_mels": 40, "fmin": 0.0, "fmax": 6000.0},
        {"top_db": None},
        {"top_db": 40.0},
        {"delta_width": 5},
        {"delta_width": 13},
        {"segment_frames": 32, "segment_hop": 16},
        {"segment_frames": 100, "segment_hop": 100},
    ],
)
def test_every_feature_parameter_is_computed_alike(changes):
    config = DEFAULT_FEATURES.replace(**changes)
    y = speech_like(2.3)
    np.testing.assert_allclose(in_graph(y, config), utils.get_framed_log_melspectrogram(y, config), atol=TOLERANCE)


def test_silence_and_a_pure_tone_are_computed_alike():
    for y in (np.zeros(20000, np.float32), tone(440, 1.7), tone(3000, 0.5, amplitude=0.01)):
        np.testing.assert_allclose(in_graph(y), utils.get_framed_log_melspectrogram(y), atol=TOLERANCE)


@pytest.mark.skipif(not RAVDESS_MINI.is_dir(), reason="the shared RAVDESS files are not beside this checkout")
def test_real_speech_is_computed_alike():
    for path in sorted(RAVDESS_MINI.rglob("*.wav"))[:4]:
        y = utils.load_wav(path)
        np.testing.assert_allclose(in_graph(y), utils.get_framed_log_melspectrogram(y), atol=TOLERANCE)


def test_split_windows_cuts_equal_windows_as_infer_does():
    import inference

    for seconds in (3.0, 11.0, 13.0, 20.0):
        y = np.arange(int(seconds * 16000), dtype=np.float32)
        windows = np.asarray(frontend.split_windows(y, 8 * 16000))
        spans = inference.window_spans(seconds, 8.0)
        assert len(windows) == len(spans)
        starts = np.array([row[0] for row in windows]) - np.array([start * 16000 for start, _ in spans])
        assert np.abs(starts).max() < len(windows)  # the same windows, but for the samples the graph drops (fewer than the windows)

"""The permissive prosodic set in Keras ops: the same 79 values as the NumPy reference, on generated speech-like audio."""

import numpy as np
import pytest

import prosody
from prosody_frontend import ProsodicFrontEnd, _prominent_peaks, _runs
from test_prosody import harmonic_tone

SR = prosody.SR


def speech_like(seed: int, seconds: float = 3.0) -> np.ndarray:
    """Syllables of a gliding harmonic tone with vibrato, breathy noise and pauses: voiced and unvoiced runs of many lengths."""
    rng = np.random.default_rng(seed)
    pieces = []
    while sum(len(piece) for piece in pieces) < seconds * SR:
        length = rng.uniform(0.08, 0.4)
        samples = int(length * SR)
        f0 = rng.uniform(90, 300) * (1 + np.linspace(-0.1, 0.15, samples) + 0.02 * np.sin(2 * np.pi * 5 * np.arange(samples) / SR))
        loudness = rng.uniform(0.05, 1.0)
        pieces.append(loudness * harmonic_tone(f0, length) + rng.normal(0, 0.003, samples))
        pieces.append(rng.normal(0, rng.choice([0.0, 0.002, 0.03]), int(rng.uniform(0.02, 0.25) * SR)))  # a pause: silence, hiss or a fricative
    return np.concatenate(pieces)[: int(seconds * SR)].astype(np.float32)


def recorded(y: np.ndarray) -> np.ndarray:
    """``y`` with 16-bit audio's own noise: a spectrum without any is float rounding, which float32 and float64 round apart."""
    return (y + np.random.default_rng(3).normal(0, 3e-5, len(y))).astype(np.float32)


SIGNALS = {
    "speech-like": [speech_like(seed) for seed in range(4)],
    "tones": [recorded(harmonic_tone(150.0, 2.0)), recorded(harmonic_tone(np.linspace(100, 400, 3 * SR), 3.0))],
    "noise": [np.random.default_rng(7).normal(0, 0.1, 2 * SR).astype(np.float32)],
    "short": [recorded(harmonic_tone(200.0, 0.03))],  # shorter than one YIN frame: padded, as the reference pads
}


@pytest.fixture(scope="module")
def layer():
    return ProsodicFrontEnd()


@pytest.mark.parametrize("kind", list(SIGNALS))
def test_every_value_equals_the_numpy_reference(kind, layer):
    """Within 1 % of each value's range over the signals plus 1e-3 of its size: float32 against float64, where a rounding may move one frame's decision."""
    signals = SIGNALS[kind]
    reference = np.stack([prosody.prosodic_features(y) for y in signals])
    computed = np.concatenate([np.asarray(layer(y[np.newaxis])) for y in signals])
    assert computed.shape == reference.shape and np.isfinite(computed).all()
    span = np.ptp(np.stack([prosody.prosodic_features(y) for kind_signals in SIGNALS.values() for y in kind_signals]), axis=0)
    bound = 0.01 * span + 1e-3 * np.abs(reference) + 1e-4
    worst = np.argmax(np.max(np.abs(computed - reference) - bound, axis=0))
    assert np.all(np.abs(computed - reference) <= bound), (
        f"{prosody.FEATURE_NAMES[worst]}: {computed[:, worst]} against {reference[:, worst]}"
    )


def test_windows_of_a_batch_are_described_alone(layer):
    y = speech_like(11, seconds=4.0)
    windows = y.reshape(2, -1)
    np.testing.assert_allclose(np.asarray(layer(windows)), np.concatenate([np.asarray(layer(w[np.newaxis])) for w in windows]), rtol=1e-5, atol=1e-4)


def test_runs_are_counted_and_measured_as_the_reference_does():
    voiced = np.array([[1, 1, 1, 0, 0, 1, 0, 1, 1, 1, 1, 1]], bool)
    count, mean, sd = (float(np.asarray(value)[0]) for value in _runs(voiced, voiced))
    lengths = [length for _, length, value in prosody._runs(voiced[0]) if value]
    assert count == len(lengths) == 3 and mean == pytest.approx(np.mean(lengths)) and sd == pytest.approx(np.std(lengths), abs=1e-6)


def test_peaks_are_those_scipy_finds_with_their_prominence():
    import scipy.signal

    level = np.array([[0, 8, 8, 8, 1, 3, 2, 9, 0, 7, 7, 10, 4, 4, 4, 4, 12, 12]], np.float32)  # plateaus, a plateau at the end
    found = np.flatnonzero(np.asarray(_prominent_peaks(level, 6.0))[0])
    expected = scipy.signal.find_peaks(level[0], prominence=6.0)[0]
    assert len(found) == len(expected) == 3

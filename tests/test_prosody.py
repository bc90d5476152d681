"""The prosodic sets: YIN's F0 and aperiodicity, the permissive utterance vector, eGeMAPS' optional path, on generated audio."""

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile

import files
import prosody
from augment import Enhancement
import utils

SR = prosody.SR


def harmonic_tone(f0: np.ndarray | float, seconds: float, sr: int = SR) -> np.ndarray:
    """A voice-like tone: five harmonics of `f0` (Hz, constant or one value per sample)."""
    f0 = np.broadcast_to(np.asarray(f0, dtype=np.float64), (int(seconds * sr),))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    return 0.3 * sum(np.sin(k * phase) / k for k in range(1, 6))


def feature(values: np.ndarray, name: str) -> float:
    return float(values[prosody.FEATURE_NAMES.index(name)])


def test_feature_names_are_unique_and_describe_every_value():
    assert len(set(prosody.FEATURE_NAMES)) == prosody.N_FEATURES
    values = prosody.prosodic_features(harmonic_tone(150.0, 1.0))
    assert values.shape == (prosody.N_FEATURES,) and values.dtype == np.float32


@pytest.mark.parametrize("f0", [80.0, 150.0, 310.0, 550.0])
def test_yin_finds_the_f0_of_a_harmonic_tone(f0):
    y = harmonic_tone(f0, 1.0)
    estimated, aperiodicity = prosody.yin(y)
    assert estimated.shape == aperiodicity.shape == (1 + len(y) // prosody.HOP,)
    inner = slice(10, -10)  # frames that lie wholly inside the tone
    np.testing.assert_allclose(estimated[inner], f0, rtol=0.01)
    assert aperiodicity[inner].max() < 0.05


def test_noise_is_aperiodic_and_unvoiced():
    y = np.random.default_rng(0).normal(0, 0.1, SR)
    _, aperiodicity = prosody.yin(y)
    assert np.median(aperiodicity) > prosody.VOICED_APERIODICITY
    assert feature(prosody.prosodic_features(y), "voiced_ratio") < 0.1


def test_a_tone_is_voiced_and_its_pitch_is_described_in_semitones():
    values = prosody.prosodic_features(harmonic_tone(150.0, 2.0))
    assert feature(values, "voiced_ratio") > 0.95
    assert feature(values, "voiced_segments_per_s") == pytest.approx(0.5)  # one segment in 2 s
    assert feature(values, "f0_semitones_mean") == pytest.approx(12 * np.log2(150 / 27.5), abs=0.1)
    assert feature(values, "f0_semitones_p20_p80_range") < 0.1
    assert feature(values, "jitter_proxy") < 0.01
    assert feature(values, "h1_h2_db_mean") == pytest.approx(20 * np.log10(2), abs=1.0)  # harmonics at 1/k


def test_a_glide_rises_at_its_rate_and_pauses_are_measured():
    glide = harmonic_tone(np.linspace(120.0, 240.0, SR), 1.0)  # an octave in 1 s: 12 semitones/s
    pause = np.zeros(SR // 2)
    values = prosody.prosodic_features(np.concatenate([pause, glide, pause, glide, pause]))
    assert feature(values, "f0_rising_slope_mean") == pytest.approx(12.0, rel=0.1)
    assert feature(values, "voiced_segments_per_s") == pytest.approx(2 / 3.5, rel=0.05)
    assert feature(values, "voiced_segment_s_mean") == pytest.approx(1.0, abs=0.05)
    assert feature(values, "unvoiced_segment_s_mean") == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("y", [np.zeros(SR), np.zeros(10), np.full(SR, 0.5)], ids=["silence", "ten samples", "constant"])
def test_any_input_gives_finite_values(y):
    values = prosody.prosodic_features(y)
    assert values.shape == (prosody.N_FEATURES,) and np.isfinite(values).all()
    assert feature(values, "voiced_ratio") == 0.0


def test_other_rates_are_resampled_first():
    tone = harmonic_tone(200.0, 1.0, sr=48000)
    at_48k = prosody.prosodic_features(tone, 48000)
    at_16k = prosody.prosodic_features(harmonic_tone(200.0, 1.0))
    assert feature(at_48k, "f0_semitones_mean") == pytest.approx(feature(at_16k, "f0_semitones_mean"), abs=0.05)


def test_the_zero_crossing_rate_equals_librosas():
    y = np.random.default_rng(0).normal(0, 0.1, SR + 7)
    y[100:300] = 0.0
    y[400:420] = 1e-12  # below librosa's threshold: counts as zero
    y[500] = -0.0
    expected = librosa.feature.zero_crossing_rate(y, frame_length=prosody.LEVEL_FRAME, hop_length=prosody.HOP)[0]
    np.testing.assert_array_equal(prosody.zero_crossing_rate(y), expected)


def test_no_numba_compiled_librosa_code_runs_on_the_feature_paths(monkeypatch, tmp_path):
    # A broken JIT (numba 0.68.1 on an AMD EPYC: a segfault in librosa.zero_crossings) must not
    # take training down: poison every numba-compiled function of librosa, then compute.
    def poisoned(name):
        def call(*args, **kwargs):
            raise AssertionError(f"{name} is numba-compiled librosa code")
        return call

    for package in ("librosa.core", "librosa.feature", "librosa.util", "librosa.filters", "librosa.effects"):
        loaded = importlib.import_module(package)  # librosa loads its modules lazily: all of them, to poison them
        for module_info in pkgutil.walk_packages(getattr(loaded, "__path__", []), f"{package}."):
            importlib.import_module(module_info.name)
    for module_name, module in list(sys.modules.items()):
        if module_name.split(".")[0] == "librosa":
            for name, value in list(vars(module).items()):
                if type(value).__module__.split(".")[0] == "numba":
                    monkeypatch.setattr(module, name, poisoned(f"{module_name}.{name}"))
    assert sys.modules["librosa.core.audio"]._zc_wrapper.__name__ == "call"  # the poisoning reached the JIT code

    soundfile.write(tmp_path / "tone.wav", harmonic_tone(150.0, 1.5, sr=22050), 22050)  # read and resampled as in training
    y = Enhancement(speed=1.1, shift_seconds=0.1, snr_db=20.0, noise_seed=3).apply(utils.load_wav(tmp_path / "tone.wav"), SR)
    assert np.isfinite(prosody.prosodic_features(y)).all()
    assert np.isfinite(utils.get_framed_log_melspectrogram(y)).all()


def test_egemaps_without_opensmile_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "opensmile", None)  # import opensmile now fails
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)  # (checked first)
    prosody._egemaps_extractor.cache_clear()
    with pytest.raises(ImportError, match="pip install opensmile.*commercial"):
        prosody.egemaps_features(harmonic_tone(150.0, 1.0))
    prosody._egemaps_extractor.cache_clear()


def test_egemaps_gives_its_88_functionals_in_a_process_without_tensorflow():
    pytest.importorskip("opensmile")
    code = (
        "import numpy as np, prosody\n"
        "values = prosody.FEATURE_SETS['egemaps'](np.sin(np.arange(16000) * 2 * np.pi * 150 / 16000) * 0.3, 16000)\n"
        "assert values.shape == (88,) and values.dtype == np.float32 and np.isfinite(values).all()\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(prosody.__file__).parent, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_egemaps_after_tensorflow_is_computed_in_a_worker_process_started_without_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", sys.modules.get("tensorflow", object()))
    prosody._egemaps_extractor.cache_clear()
    tone = harmonic_tone(150.0, 1.0)
    if files.installed("opensmile"):
        values = prosody.egemaps_features(tone)
        assert values.shape == (88,) and np.isfinite(values).all() and np.any(values)
    else:  # the worker's one-line reason comes back
        with pytest.raises(ImportError, match="pip install opensmile"):
            prosody.egemaps_features(tone)
    assert prosody._egemaps_extractor.cache_info().currsize == 0  # openSMILE never started in this process

"""Utterance-level prosodic and voice-quality features: one vector per recording.

Two sets (`FEATURE_SETS`): ``permissive`` (`prosodic_features`) describes a recording's
pitch, voicing, loudness, voice quality and spectral shape with NumPy, SciPy and librosa
only (no openSMILE, no GPL code), as measured in ``../shared/DESIGN.md`` section 11;
``egemaps`` (`egemaps_features`) is openSMILE's eGeMAPSv02 functionals through the optional
``opensmile`` package, whose licence forbids commercial use. Fused with the CNN statistics
and standardised per speaker, such features were the largest accuracy lever found
(docs/RESULTS.md).

All at 16 kHz with a 10 ms hop. F0 comes from YIN (de Cheveigne & Kawahara, 2002) with its
aperiodicity (the cumulative mean normalised difference at the chosen lag) kept as the
voicing cue: librosa's ``yin`` does not return it. A frame is voiced when its aperiodicity
is low, its level is within 40 dB of the recording's loudest frame and its F0 lies in
65-600 Hz; the decision and the F0 contour are median filtered over 5 frames.

This module is the NumPy reference, which fills the training cache; `prosody_frontend` computes
the permissive set again in Keras ops, inside the model and its exports, within the bound its
tests state.
"""

from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing
import signal
import sys
from collections.abc import Callable

import librosa
import numpy as np
import scipy.signal

SR = 16000  # Hz: the features are defined at this rate (resample first)
HOP = 160  # samples: 10 ms between frames
PITCH_FRAME = 1024  # samples: YIN's frame, two periods of the lowest F0 and more
LEVEL_FRAME = 400  # samples: 25 ms for level, peak amplitude and the spectral shape
FMIN, FMAX = 65.0, 600.0  # Hz: the F0 search range
YIN_THRESHOLD = 0.1  # the first lag whose normalised difference dips below this is the period
VOICED_APERIODICITY = 0.3  # frames with a higher aperiodicity are unvoiced
VOICED_RANGE_DB = 40.0  # frames more than this below the loudest frame are unvoiced
MEDIAN_FRAMES = 5  # median filter over voicing decisions and the F0 contour
LEVEL_FLOOR_DB = 80.0  # levels are floored this far below the loudest frame
N_MFCC = 4  # MFCC 1..4 (0, the level, is described by the RMS features)
CONTRAST_FLOOR = 1e-5  # spectral magnitudes below this count as it in the contrast, as the flatness floors power at 1e-10: finer than 16-bit audio's noise, coarser than float32 rounding

# The vector's layout, one name per value, in order; `prosodic_features` builds it group by group.
_STATS = ("mean", "sd")
FEATURE_NAMES: tuple[str, ...] = (
    *(f"f0_semitones_{name}" for name in ("mean", "sd", "p20", "p50", "p80", "p20_p80_range")),
    *(f"f0_{direction}_slope_{stat}" for direction in ("rising", "falling") for stat in _STATS),
    "voiced_ratio", "voiced_segments_per_s",
    *(f"{kind}_segment_s_{stat}" for kind in ("voiced", "unvoiced") for stat in _STATS),
    *(f"hnr_proxy_db_{stat}" for stat in _STATS),
    "jitter_proxy", "shimmer_proxy_db",
    *(f"h1_h2_db_{stat}" for stat in _STATS),
    *(f"level_db_{name}" for name in ("mean", "sd", "p20", "p50", "p80", "p20_p80_range")),
    "level_rising_slope_mean", "level_falling_slope_mean", "level_peaks_per_s",
    *(f"{name}_{stat}" for name in ("centroid_hz", "bandwidth_hz", "log_flatness", "rolloff85_hz", "flux", "zcr") for stat in _STATS),
    *(f"contrast{band}_{stat}" for band in range(7) for stat in _STATS),
    *(f"{name}_{part}" for name in ("alpha_ratio_db", "hammarberg_db") for part in ("voiced_mean", "voiced_sd", "unvoiced_mean")),
    *(f"mfcc{k}_{frames}_{stat}" for frames in ("all", "voiced") for k in range(1, N_MFCC + 1) for stat in _STATS),
)
N_FEATURES = len(FEATURE_NAMES)


def yin(y: np.ndarray, sr: int = SR, fmin: float = FMIN, fmax: float = FMAX) -> tuple[np.ndarray, np.ndarray]:
    """F0 and aperiodicity per frame by YIN, centred frames every `HOP` samples.

    Parameters
    ----------
    y : np.ndarray, shape (samples,)
        Mono audio at `sr`.
    sr : int
        Sample rate in Hz.
    fmin, fmax : float
        The F0 search range in Hz.

    Returns
    -------
    f0 : np.ndarray, shape (1 + samples // HOP,)
        F0 in Hz of each frame (of the best lag, voiced or not).
    aperiodicity : np.ndarray, shape (1 + samples // HOP,)
        The cumulative mean normalised difference at that lag, in [0, 1]: near 0 for a
        periodic frame.
    """
    min_lag, max_lag = int(np.floor(sr / fmax)), int(np.ceil(sr / fmin))
    window = PITCH_FRAME - max_lag  # samples compared at every lag
    frames = _frames(y, PITCH_FRAME)
    frames = frames - frames.mean(axis=1, keepdims=True)  # an offset or drift is not a period
    # d(lag) = sum_j (x_j - x_{j+lag})^2 over j < window: the energies of both spans minus twice
    # their cross-correlation, the latter for every lag at once through one FFT.
    n_fft = 1 << int(np.ceil(np.log2(PITCH_FRAME + window)))
    correlation = np.fft.irfft(np.conj(np.fft.rfft(frames[:, :window], n_fft)) * np.fft.rfft(frames, n_fft), n_fft)
    energy = np.concatenate([np.zeros((len(frames), 1)), np.cumsum(frames**2, axis=1)], axis=1)
    span_energy = energy[:, window : window + max_lag + 1] - energy[:, : max_lag + 1]
    difference = np.maximum(span_energy[:, :1] + span_energy - 2 * correlation[:, : max_lag + 1], 0.0)[:, 1:]
    lags = np.arange(1, max_lag + 1)
    cumulative = np.cumsum(difference, axis=1)
    normalised = np.where(cumulative > 0, difference * lags / np.maximum(cumulative, 1e-12), 1.0)[:, min_lag - 1 :]
    # The period is the first dip below the threshold (at its local minimum), else the deepest one.
    local_minimum = np.zeros_like(normalised, dtype=bool)
    local_minimum[:, 1:-1] = (normalised[:, 1:-1] < normalised[:, :-2]) & (normalised[:, 1:-1] <= normalised[:, 2:])
    candidates = local_minimum & (normalised < YIN_THRESHOLD)
    best = np.where(candidates.any(axis=1), candidates.argmax(axis=1), normalised.argmin(axis=1))
    rows = np.arange(len(frames))
    inner = np.clip(best, 1, normalised.shape[1] - 2)
    left, centre, right = normalised[rows, inner - 1], normalised[rows, inner], normalised[rows, inner + 1]
    curvature = left - 2 * centre + right
    shift = np.where((best == inner) & (curvature > 0), 0.5 * (left - right) / np.maximum(curvature, 1e-12), 0.0)
    period = min_lag + best + np.clip(shift, -1.0, 1.0)
    return sr / period, np.clip(normalised[rows, best], 0.0, 1.0)


def prosodic_features(y: np.ndarray, sr: int = SR) -> np.ndarray:
    """The permissive prosodic and voice-quality set of one recording.

    Parameters
    ----------
    y : np.ndarray, shape (samples,)
        Mono audio; resampled to `SR` when `sr` differs.
    sr : int
        Sample rate of `y` in Hz.

    Returns
    -------
    np.ndarray, shape (N_FEATURES,), float32
        The values named by `FEATURE_NAMES`, finite for any input (a group with no frames to
        describe, such as F0 of a recording without voicing, is 0).
    """
    y = np.asarray(y, dtype=np.float64)
    if sr != SR:
        y = librosa.resample(y, orig_sr=sr, target_sr=SR)
    y = np.pad(y, (0, max(0, PITCH_FRAME - len(y))))
    seconds = len(y) / SR
    f0, aperiodicity = yin(y)
    level_frames = _frames(y, LEVEL_FRAME)
    level = 10 * np.log10(np.maximum(np.mean(level_frames**2, axis=1), 1e-20))
    level = np.maximum(level, level.max() - LEVEL_FLOOR_DB)
    voiced = (aperiodicity < VOICED_APERIODICITY) & (level > level.max() - VOICED_RANGE_DB)
    voiced &= (f0 >= FMIN) & (f0 <= FMAX)
    voiced = scipy.signal.medfilt(voiced.astype(float), MEDIAN_FRAMES) > 0.5
    f0 = scipy.signal.medfilt(f0, MEDIAN_FRAMES)
    semitones = 12 * np.log2(f0 / 27.5)  # re A0

    runs = _runs(voiced)
    voiced_runs = [(start, length) for start, length, value in runs if value]
    unvoiced_runs = [length for _, length, value in runs if not value]
    slopes = np.concatenate([np.diff(semitones[start : start + length]) for start, length in voiced_runs] or [np.zeros(0)]) * SR / HOP
    consecutive = voiced[1:] & voiced[:-1]
    periods = SR / f0
    peak_db = 20 * np.log10(np.maximum(np.abs(level_frames).max(axis=1), 1e-10))

    spectrum = np.abs(librosa.stft(y, n_fft=PITCH_FRAME, hop_length=HOP)).T
    frequencies = librosa.fft_frequencies(sr=SR, n_fft=PITCH_FRAME)
    spectrum_db = 20 * np.log10(np.maximum(spectrum, 1e-10))
    rows = np.arange(len(f0))
    harmonic_db = [spectrum_db[rows, np.clip(np.rint(k * f0 / frequencies[1]).astype(int), 0, len(frequencies) - 1)] for k in (1, 2)]
    power = spectrum**2

    def band_db(low: float, high: float, reduce) -> np.ndarray:
        band = (frequencies >= low) & (frequencies < high)
        return reduce(power[:, band], axis=1)

    alpha = 10 * np.log10(np.maximum(band_db(50, 1000, np.sum), 1e-20) / np.maximum(band_db(1000, 5000, np.sum), 1e-20))
    hammarberg = 10 * np.log10(np.maximum(band_db(0, 2000, np.max), 1e-20) / np.maximum(band_db(2000, 5000, np.max), 1e-20))

    shape = dict(S=spectrum.T, sr=SR, n_fft=PITCH_FRAME, hop_length=HOP)
    flux = np.sqrt(np.sum(np.diff(spectrum, axis=0, prepend=spectrum[:1]) ** 2, axis=1)) / np.maximum(spectrum.sum(axis=1), 1e-10)
    spectral = [
        librosa.feature.spectral_centroid(**shape)[0],
        librosa.feature.spectral_bandwidth(**shape)[0],
        np.log(np.maximum(librosa.feature.spectral_flatness(S=spectrum.T)[0], 1e-10)),
        librosa.feature.spectral_rolloff(**shape, roll_percent=0.85)[0],
        flux,
        zero_crossing_rate(y),
    ]
    contrast = librosa.feature.spectral_contrast(**{**shape, "S": np.maximum(spectrum.T, CONTRAST_FLOOR)})
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(librosa.feature.melspectrogram(S=power.T, sr=SR)), n_mfcc=N_MFCC + 1)[1:]
    level_slopes = np.diff(level) * SR / HOP
    level_peaks = scipy.signal.find_peaks(level, prominence=6.0)[0]

    values = [
        *_mean_sd(semitones[voiced]), *_percentiles(semitones[voiced]),
        *_mean_sd(slopes[slopes > 0]), *_mean_sd(slopes[slopes < 0]),
        voiced.mean(), len(voiced_runs) / seconds,
        *_mean_sd(np.array([length for _, length in voiced_runs]) * HOP / SR),
        *_mean_sd(np.array(unvoiced_runs) * HOP / SR),
        *_mean_sd(10 * np.log10((1 - aperiodicity[voiced] + 1e-3) / (aperiodicity[voiced] + 1e-3))),
        _mean(np.abs(np.diff(periods))[consecutive]) / max(_mean(periods[voiced]), 1e-10),
        _mean(np.abs(np.diff(peak_db))[consecutive]),
        *_mean_sd((harmonic_db[0] - harmonic_db[1])[voiced]),
        *_mean_sd(level), *_percentiles(level),
        _mean(level_slopes[level_slopes > 0]), _mean(level_slopes[level_slopes < 0]), len(level_peaks) / seconds,
        *(value for feature in spectral for value in _mean_sd(feature)),
        *(value for band in contrast for value in _mean_sd(band)),
        *(value for feature in (alpha, hammarberg) for value in (*_mean_sd(feature[voiced]), _mean(feature[~voiced]))),
        *(value for frames in (np.ones_like(voiced), voiced) for band in mfcc for value in _mean_sd(band[frames])),
    ]
    return np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def egemaps_features(y: np.ndarray, sr: int = SR) -> np.ndarray:
    """openSMILE's eGeMAPSv02 functionals of one recording: shape (88,), float32.

    openSMILE's native library crashes a process that had imported TensorFlow before its
    first extractor was made (opensmile 2.6 with TensorFlow 2.21, seen here); in such a
    process the values are computed in one worker process started without it, kept for
    later calls.

    Raises
    ------
    ImportError
        When the optional ``opensmile`` package is missing, saying how to install it.
    """
    y = np.pad(np.asarray(y, dtype=np.float32), (0, max(0, PITCH_FRAME - len(y))))
    if "tensorflow" in sys.modules and not _egemaps_extractor.cache_info().currsize:
        values = _egemaps_worker().submit(_egemaps_values, y, sr).result()
    else:
        values = _egemaps_values(y, sr)
    return np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def _egemaps_values(y: np.ndarray, sr: int) -> np.ndarray:
    return _egemaps_extractor().process_signal(y, sr).to_numpy()[0]


@functools.cache
def _egemaps_extractor():
    if "tensorflow" in sys.modules:
        # Only a worker whose main module imports TensorFlow gets here (spawn imports it again).
        raise RuntimeError(
            "the egemaps set cannot start in a process that has imported TensorFlow (openSMILE's library then crashes it); "
            "import TensorFlow inside functions of the main script, not at its top"
        )
    try:
        import opensmile
    except ImportError:
        raise ImportError(f"the egemaps set needs openSMILE: {OPENSMILE_INSTALL}; the permissive set needs nothing more") from None

    # Made once: building the extractor takes about a second.
    return opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.Functionals)


@functools.cache
def _egemaps_worker() -> concurrent.futures.ProcessPoolExecutor:
    # spawn: a fresh interpreter, without the TensorFlow of this one. Ctrl-C is the parent's to handle.
    return concurrent.futures.ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn"), initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN)
    )


FEATURE_SETS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {"permissive": prosodic_features, "egemaps": egemaps_features}
FEATURE_WIDTHS = {"permissive": N_FEATURES, "egemaps": 88}  # values per recording of each set
OPENSMILE_INSTALL = "pip install opensmile (its licence forbids commercial use)"  # what the egemaps set needs, in every message that says so
VERSION = 2  # bump when a set's values change for the same audio, so that cached vectors are computed again


def zero_crossing_rate(y: np.ndarray, frame_length: int = LEVEL_FRAME) -> np.ndarray:
    """Share of sign changes between neighbouring samples in centred frames every `HOP` samples.

    librosa's ``feature.zero_crossing_rate`` (edge-padded frames, magnitudes up to 1e-10 count
    as +0, the first sample of a frame is no crossing) in NumPy: librosa's runs through a numba
    JIT, and numba 0.68.1 crashed the process in it on an AMD EPYC (issue 31).

    Parameters
    ----------
    y : np.ndarray, shape (samples,)
    frame_length : int
        Samples per frame.

    Returns
    -------
    np.ndarray, shape (1 + samples // HOP,)
        Crossings per sample, in [0, 1).
    """
    padded = np.pad(y, frame_length // 2, mode="edge")
    frames = librosa.util.frame(padded, frame_length=frame_length, hop_length=HOP, axis=0)
    negative = np.signbit(np.where(np.abs(frames) <= 1e-10, 0.0, frames))
    return np.count_nonzero(negative[:, 1:] != negative[:, :-1], axis=1) / frame_length


def _frames(y: np.ndarray, length: int) -> np.ndarray:
    """Centred frames every `HOP` samples, shape (1 + samples // HOP, length)."""
    padded = np.pad(y, length // 2)
    return librosa.util.frame(padded, frame_length=length, hop_length=HOP, axis=0)[: 1 + len(y) // HOP]


def _runs(mask: np.ndarray) -> list[tuple[int, int, bool]]:
    """The maximal runs of equal values of a boolean sequence: (start, length, value) each."""
    edges = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    starts = np.concatenate([[0], edges])
    lengths = np.diff(np.concatenate([starts, [len(mask)]]))
    return [(int(start), int(length), bool(mask[start])) for start, length in zip(starts, lengths)]


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else 0.0


def _mean_sd(values: np.ndarray) -> tuple[float, float]:
    return (_mean(values), float(values.std()) if values.size else 0.0)


def _percentiles(values: np.ndarray) -> tuple[float, float, float, float]:
    """20th, 50th, 80th percentiles and the 20-80 range."""
    if not values.size:
        return (0.0, 0.0, 0.0, 0.0)
    low, median, high = np.percentile(values, [20, 50, 80])
    return (float(low), float(median), float(high), float(high - low))

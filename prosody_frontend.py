"""The permissive prosodic set as a Keras layer: 16 kHz PCM in, the 79 values of `prosody.prosodic_features` out, inside the graph.

`ProsodicFrontEnd` computes what `prosody.prosodic_features` (the NumPy reference, which
fills the training cache) computes, in `keras.ops` only, so that an exported model takes
the waveform alone and runs without this project, librosa or numba:

    waveform (batch, samples)       every row one window of equal length, float32 at 16 kHz
      -> frames every 10 ms         centred, zero padded: 1024 samples (YIN, spectrum), 400 (level)
      -> YIN                        the difference function from a 1024-point DFT as fixed matrices
                                    (no FFT op: it exports to neither ONNX nor LiteRT), cumulative
                                    mean normalisation, the first dip below the threshold at its local
                                    minimum (else the deepest), parabolic refinement
      -> voicing, F0 contour        thresholds, 5-frame median filters (a sort of 5 shifted copies)
      -> spectrum functionals       Hann-windowed DFT magnitudes; centroid, bandwidth, flatness,
                                    roll-off, flux, librosa's octave contrast, Mel-cepstra
      -> runs, percentiles, peaks   frame-by-frame comparison matrices (frames, frames): the run that
                                    holds each frame, scipy's peak prominence
      -> the vector                 (batch, 79), in `prosody.FEATURE_NAMES` order

Values agree with the reference within float32 rounding, except where a rounding moves a
decision of one frame (voiced or not, which lag is the period): ``tests/test_prosody_frontend.py``
states the bound. One difference by design: a peak of the level contour that is a plateau is
found at its first frame, not its middle (the count, all that is kept, is the same).

The layer has no weights (its matrices are constants of the graph), so adding it to a
recogniser changes nothing in a saved model.
"""

from __future__ import annotations

import functools
from typing import Any

import keras
import numpy as np
from keras import layers, ops

import prosody
from frontend import PACKAGE
from prosody import FMAX, FMIN, HOP, LEVEL_FRAME, PITCH_FRAME, SR

MIN_LAG, MAX_LAG = int(np.floor(SR / FMAX)), int(np.ceil(SR / FMIN))  # samples: YIN's lag range
COMPARED = PITCH_FRAME - MAX_LAG  # samples compared at every lag
CONTRAST_BANDS, CONTRAST_FMIN, CONTRAST_QUANTILE = 6, 200.0, 0.02  # librosa.feature.spectral_contrast's defaults
MEL_BANDS, MFCC_TOP_DB = 128, 80.0  # librosa.feature.melspectrogram's and power_to_db's defaults


def _dft(rows: int, size: int = PITCH_FRAME) -> np.ndarray:
    """The real DFT of the first ``rows`` of ``size`` samples: (rows, 2 * bins), real parts then imaginary."""
    angles = 2 * np.pi * np.outer(np.arange(rows), np.arange(size // 2 + 1)) / size
    return np.concatenate([np.cos(angles), -np.sin(angles)], axis=1)


def _lag_inverse() -> np.ndarray:
    """(2 * bins, MAX_LAG + 1): the inverse real DFT of a spectrum (real parts, imaginary parts) at lags 0..MAX_LAG only."""
    bins = PITCH_FRAME // 2 + 1
    weight = np.full(bins, 2.0)
    weight[[0, -1]] = 1.0  # DC and Nyquist appear once in the full spectrum
    angles = 2 * np.pi * np.outer(np.arange(bins), np.arange(MAX_LAG + 1)) / PITCH_FRAME
    return np.concatenate([weight[:, None] * np.cos(angles), -weight[:, None] * np.sin(angles)], axis=0) / PITCH_FRAME


def _contrast_bands(frequencies: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """librosa's spectral contrast bands: each band's bins and how many of the lowest and highest it averages."""
    edges = np.zeros(CONTRAST_BANDS + 2)
    edges[1:] = CONTRAST_FMIN * 2.0 ** np.arange(CONTRAST_BANDS + 1)
    bands = []
    for k, (low, high) in enumerate(zip(edges[:-1], edges[1:])):
        band = (frequencies >= low) & (frequencies <= high)
        inside = np.flatnonzero(band)
        if k > 0:
            band[inside[0] - 1] = True
        if k == CONTRAST_BANDS:
            band[inside[-1] + 1 :] = True
        count = max(int(np.rint(CONTRAST_QUANTILE * band.sum())), 1)
        bins = np.flatnonzero(band)
        bands.append((bins if k == CONTRAST_BANDS else bins[:-1], count))
    return bands


@functools.cache
def _tables() -> dict[str, Any]:
    """The layer's fixed values, made once per process (a recogniser is built often; these take about 0.1 s)."""
    import librosa
    import scipy.fft

    frequencies = librosa.fft_frequencies(sr=SR, n_fft=PITCH_FRAME)
    window = librosa.filters.get_window("hann", PITCH_FRAME, fftbins=True)
    mel = librosa.filters.mel(sr=SR, n_fft=PITCH_FRAME, n_mels=MEL_BANDS)
    matrices = {
        "compared_dft": _dft(COMPARED),  # (COMPARED, 2 bins): the first COMPARED samples of a frame, zero padded
        "frame_dft": _dft(PITCH_FRAME),
        "lag_inverse": _lag_inverse(),
        "spectrum_dft": window[:, None] * _dft(PITCH_FRAME),
        "mel": mel.T,  # (bins, MEL_BANDS)
        "cepstrum": scipy.fft.dct(np.eye(MEL_BANDS), type=2, norm="ortho", axis=0).T[:, 1 : prosody.N_MFCC + 1],  # (MEL_BANDS, N_MFCC): cepstra 1..N_MFCC
    }
    return {
        "frequencies": frequencies.astype(np.float32),
        "contrast": _contrast_bands(frequencies),
        "matrices": {name: value.astype(np.float32) for name, value in matrices.items()},
    }


@keras.saving.register_keras_serializable(package=PACKAGE)
class ProsodicFrontEnd(layers.Layer):
    """Windows of 16 kHz PCM to their permissive prosodic vectors: `prosody.prosodic_features` in Keras ops.

    Input: float32 (batch, samples) at `prosody.SR`, every row a whole window (no padding).
    Output: float32 (batch, `prosody.N_FEATURES`), finite, in `prosody.FEATURE_NAMES` order.

    Example:
    >>> ProsodicFrontEnd()(np.zeros((2, 16000), "float32")).shape
    (2, 79)
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        tables = _tables()
        self._frequencies, self._contrast, self._matrices = tables["frequencies"], tables["contrast"], tables["matrices"]

    def _constant(self, name: str):
        # Made while tracing: graph constants, never captured tensors (those become inputs of an ONNX export).
        return ops.convert_to_tensor(self._matrices[name])

    def call(self, waveform):
        y = ops.cast(waveform, "float32")
        y = ops.pad(y, [[0, 0], [0, ops.maximum(PITCH_FRAME - ops.shape(y)[1], 0)]])
        samples = ops.shape(y)[1]
        count = 1 + samples // HOP
        seconds = ops.cast(samples, "float32") / SR
        frames = _frames(ops.pad(y, [[0, 0], [PITCH_FRAME // 2, PITCH_FRAME // 2]]), count, PITCH_FRAME)  # (batch, count, 1024)

        f0, aperiodicity = self._yin(frames)
        level_frames = _frames(ops.pad(y, [[0, 0], [LEVEL_FRAME // 2, LEVEL_FRAME // 2]]), count, LEVEL_FRAME)
        level = 10 * _log10(ops.maximum(ops.mean(ops.square(level_frames), axis=-1), 1e-20))
        loudest = ops.max(level, axis=1, keepdims=True)
        level = ops.maximum(level, loudest - prosody.LEVEL_FLOOR_DB)
        voiced = (aperiodicity < prosody.VOICED_APERIODICITY) & (level > loudest - prosody.VOICED_RANGE_DB)
        voiced = voiced & (f0 >= FMIN) & (f0 <= FMAX)
        voiced = _median5(ops.cast(voiced, "float32")) > 0.5
        f0 = _median5(f0)
        semitones = 12 * ops.log2(f0 / 27.5)
        unvoiced = ops.logical_not(voiced)
        consecutive = voiced[:, 1:] & voiced[:, :-1]
        every = ops.ones_like(voiced)

        slopes = (semitones[:, 1:] - semitones[:, :-1]) * (SR / HOP)
        periods = SR / f0
        peak_db = 20 * _log10(ops.maximum(ops.max(ops.abs(level_frames), axis=-1), 1e-10))
        spectrum = self._spectrum(frames)  # (batch, count, bins) magnitudes
        power = ops.square(spectrum)
        spectrum_db = 20 * _log10(ops.maximum(spectrum, 1e-10))
        step = float(self._frequencies[1])
        harmonic_db = [
            ops.squeeze(ops.take_along_axis(spectrum_db, ops.expand_dims(
                ops.cast(ops.clip(ops.round(k * f0 / step), 0, len(self._frequencies) - 1), "int32"), -1), axis=-1), -1)
            for k in (1, 2)
        ]
        alpha = 10 * _log10(ops.maximum(self._band(power, 50, 1000, ops.sum), 1e-20) / ops.maximum(self._band(power, 1000, 5000, ops.sum), 1e-20))
        hammarberg = 10 * _log10(ops.maximum(self._band(power, 0, 2000, ops.max), 1e-20) / ops.maximum(self._band(power, 2000, 5000, ops.max), 1e-20))
        mfcc = self._mfcc(power)
        level_slopes = (level[:, 1:] - level[:, :-1]) * (SR / HOP)
        hnr = 10 * _log10((1 - aperiodicity + 1e-3) / (aperiodicity + 1e-3))

        voiced_runs, voiced_mean, voiced_sd = _runs(voiced, voiced)
        _, unvoiced_mean, unvoiced_sd = _runs(voiced, unvoiced)
        seconds_per_frame = HOP / SR
        columns = [
            *_mean_sd(semitones, voiced), *_percentiles(semitones, voiced),
            *_mean_sd(slopes, consecutive & (slopes > 0)), *_mean_sd(slopes, consecutive & (slopes < 0)),
            ops.mean(ops.cast(voiced, "float32"), axis=1), voiced_runs / seconds,
            voiced_mean * seconds_per_frame, voiced_sd * seconds_per_frame,
            unvoiced_mean * seconds_per_frame, unvoiced_sd * seconds_per_frame,
            *_mean_sd(hnr, voiced),
            _mean(ops.abs(periods[:, 1:] - periods[:, :-1]), consecutive) / ops.maximum(_mean(periods, voiced), 1e-10),
            _mean(ops.abs(peak_db[:, 1:] - peak_db[:, :-1]), consecutive),
            *_mean_sd(harmonic_db[0] - harmonic_db[1], voiced),
            *_mean_sd(level, every), *_percentiles(level, every),
            _mean(level_slopes, level_slopes > 0), _mean(level_slopes, level_slopes < 0),
            ops.sum(ops.cast(_prominent_peaks(level, 6.0), "float32"), axis=1) / seconds,
            *(value for feature in self._spectral(y, spectrum, power, count) for value in _mean_sd(feature, every)),
            *(value for band in self._contrast_values(spectrum) for value in _mean_sd(band, every)),
            *(value for feature in (alpha, hammarberg) for value in (*_mean_sd(feature, voiced), _mean(feature, unvoiced))),
            *(value for frames_used in (every, voiced) for k in range(prosody.N_MFCC) for value in _mean_sd(mfcc[..., k], frames_used)),
        ]
        values = ops.stack(columns, axis=1)
        return ops.where(ops.isfinite(values), values, ops.zeros_like(values))

    def _yin(self, frames):
        """F0 (Hz) and aperiodicity per frame, as `prosody.yin`."""
        frames = frames - ops.mean(frames, axis=-1, keepdims=True)  # an offset or drift is not a period
        # d(lag) = the energies of both spans minus twice their cross-correlation; the correlation
        # at lags 0..MAX_LAG through a 1024-point DFT (no wrap-around: COMPARED + MAX_LAG = 1024).
        compared, whole = ops.matmul(frames[..., :COMPARED], self._constant("compared_dft")), ops.matmul(frames, self._constant("frame_dft"))
        bins = PITCH_FRAME // 2 + 1
        a_re, a_im, b_re, b_im = compared[..., :bins], compared[..., bins:], whole[..., :bins], whole[..., bins:]
        product = ops.concatenate([a_re * b_re + a_im * b_im, a_re * b_im - a_im * b_re], axis=-1)  # conj(A) B
        correlation = ops.matmul(product, self._constant("lag_inverse"))  # (batch, count, MAX_LAG + 1)
        energy = ops.concatenate([ops.zeros_like(frames[..., :1]), ops.cumsum(ops.square(frames), axis=-1)], axis=-1)
        span_energy = energy[..., COMPARED : COMPARED + MAX_LAG + 1] - energy[..., : MAX_LAG + 1]
        difference = ops.maximum(span_energy[..., :1] + span_energy - 2 * correlation, 0.0)[..., 1:]
        lags = ops.arange(1, MAX_LAG + 1, dtype="float32")
        cumulative = ops.cumsum(difference, axis=-1)
        normalised = ops.where(cumulative > 0, difference * lags / ops.maximum(cumulative, 1e-12), 1.0)[..., MIN_LAG - 1 :]
        middle = normalised[..., 1:-1]
        local_minimum = (middle < normalised[..., :-2]) & (middle <= normalised[..., 2:])
        candidates = ops.pad(local_minimum & (middle < prosody.YIN_THRESHOLD), [[0, 0], [0, 0], [1, 1]])
        found = ops.any(candidates, axis=-1)
        deepest = normalised == ops.min(normalised, axis=-1, keepdims=True)
        # The first True by argmax of integers: Keras' float argmin becomes bit operations ONNX lacks.
        best = ops.where(found, ops.argmax(ops.cast(candidates, "int32"), axis=-1), ops.argmax(ops.cast(deepest, "int32"), axis=-1))
        width = MAX_LAG - MIN_LAG + 1
        inner = ops.clip(best, 1, width - 2)

        def at(index):
            return ops.squeeze(ops.take_along_axis(normalised, ops.expand_dims(index, -1), axis=-1), -1)

        left, centre, right = at(inner - 1), at(inner), at(inner + 1)
        curvature = left - 2 * centre + right
        shift = ops.where((best == inner) & (curvature > 0), 0.5 * (left - right) / ops.maximum(curvature, 1e-12), 0.0)
        period = MIN_LAG + ops.cast(best, "float32") + ops.clip(shift, -1.0, 1.0)
        return SR / period, ops.clip(at(best), 0.0, 1.0)

    def _spectrum(self, frames):
        """|STFT| of the Hann-windowed frames (batch, count, bins), as librosa.stft(n_fft=1024, hop_length=160) transposed."""
        spectrum = ops.matmul(frames, self._constant("spectrum_dft"))
        bins = PITCH_FRAME // 2 + 1
        return ops.sqrt(ops.square(spectrum[..., :bins]) + ops.square(spectrum[..., bins:]))

    def _band(self, power, low: float, high: float, reduce):
        inside = np.flatnonzero((self._frequencies >= low) & (self._frequencies < high))
        return reduce(power[..., int(inside[0]) : int(inside[-1]) + 1], axis=-1)

    def _spectral(self, y, spectrum, power, count) -> list:
        """Centroid, bandwidth, log flatness, 85 % roll-off, flux and zero-crossing rate per frame, as `prosody.prosodic_features`."""
        frequencies = ops.convert_to_tensor(self._frequencies)
        total = ops.sum(spectrum, axis=-1, keepdims=True)
        weights = ops.where(total > 0, spectrum / ops.where(total > 0, total, 1.0), 0.0)  # librosa leaves a silent frame at 0
        centroid = ops.sum(weights * frequencies, axis=-1)
        bandwidth = ops.sqrt(ops.sum(weights * ops.square(frequencies - ops.expand_dims(centroid, -1)), axis=-1))
        floored = ops.maximum(power, 1e-10)
        flatness = ops.mean(ops.log(floored), axis=-1) - ops.log(ops.mean(floored, axis=-1))
        cumulative = ops.cumsum(spectrum, axis=-1)
        reached = cumulative >= 0.85 * cumulative[..., -1:]
        rolloff = ops.min(ops.where(reached, frequencies, float(self._frequencies[-1]) * 2), axis=-1)
        change = ops.concatenate([ops.zeros_like(spectrum[:, :1]), spectrum[:, 1:] - spectrum[:, :-1]], axis=1)
        flux = ops.sqrt(ops.sum(ops.square(change), axis=-1)) / ops.maximum(ops.squeeze(total, -1), 1e-10)
        half = LEVEL_FRAME // 2
        edge_padded = ops.concatenate([ops.repeat(y[:, :1], half, axis=1), y, ops.repeat(y[:, -1:], half, axis=1)], axis=1)
        negative = ops.cast(ops.where(ops.abs(edge_padded) <= 1e-10, 0.0, edge_padded) < 0, "float32")
        crossings = ops.abs(negative[:, 1:] - negative[:, :-1])  # crossing i lies between samples i and i + 1
        zcr = ops.sum(_frames(crossings, count, LEVEL_FRAME - 1), axis=-1) / LEVEL_FRAME
        return [centroid, bandwidth, flatness, rolloff, flux, zcr]

    def _contrast_values(self, spectrum) -> list:
        """librosa.feature.spectral_contrast per band (batch, count) each: dB of the band's peak minus its valley."""
        peaks, valleys = [], []
        spectrum = ops.maximum(spectrum, prosody.CONTRAST_FLOOR)
        for bins, count in self._contrast:
            ordered = ops.sort(ops.take(spectrum, ops.convert_to_tensor(bins.astype(np.int32)), axis=-1), axis=-1)
            valleys.append(ops.mean(ordered[..., :count], axis=-1))
            peaks.append(ops.mean(ordered[..., -count:], axis=-1))
        peak, valley = _decibels(ops.stack(peaks, axis=-1)), _decibels(ops.stack(valleys, axis=-1))
        return [peak[..., k] - valley[..., k] for k in range(len(self._contrast))]

    def _mfcc(self, power):
        """Mel-cepstra 1..N_MFCC per frame (batch, count, N_MFCC), as librosa.feature.mfcc of a 128-band Mel power spectrogram."""
        return ops.matmul(_decibels(ops.matmul(power, self._constant("mel"))), self._constant("cepstrum"))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], prosody.N_FEATURES)


def _log10(x):
    return ops.log(x) / np.log(10.0)


def _decibels(power):
    """librosa.power_to_db(power): 10 log10 floored at 1e-10 and at 80 dB below the row's loudest value (over all frames)."""
    decibels = 10 * _log10(ops.maximum(power, 1e-10))
    return ops.maximum(decibels, ops.max(decibels, axis=(1, 2), keepdims=True) - MFCC_TOP_DB)


def _frames(y, count, length: int):
    """Frames (batch, count, length) every `HOP` samples from the start of (batch, samples) ``y``."""
    indices = ops.expand_dims(ops.arange(count) * HOP, 1) + ops.expand_dims(ops.arange(length), 0)
    return ops.take(y, indices, axis=1)


def _median5(values):
    """scipy.signal.medfilt(values, 5) along axis 1 (zeros beyond the edges)."""
    padded = ops.pad(values, [[0, 0], [2, 2]])
    # Static slice bounds: OpenVINO in bfloat16 computed dynamic ones in bfloat16 too, a frame off.
    shifted = ops.stack([padded[:, k : k - 4 or None] for k in range(5)], axis=-1)
    return ops.sort(shifted, axis=-1)[..., 2]


def _mean(values, mask):
    """Mean of ``values`` where ``mask`` per row (batch,); 0 for a row with no such value."""
    mask = ops.cast(mask, "float32")
    count = ops.sum(mask, axis=1)
    return ops.sum(ops.where(mask > 0, values, 0.0), axis=1) / ops.maximum(count, 1.0)


def _mean_sd(values, mask) -> tuple:
    """Mean and (population) standard deviation of ``values`` where ``mask`` per row; 0 and 0 for none."""
    mean = _mean(values, mask)
    deviation = ops.where(mask, values - ops.expand_dims(mean, 1), 0.0)
    return mean, ops.sqrt(_mean(ops.square(deviation), mask))


def _percentiles(values, mask) -> tuple:
    """20th, 50th, 80th percentiles (numpy's linear interpolation) of ``values`` where ``mask`` per row, and the 20-80 range; zeros for none."""
    count = ops.sum(ops.cast(mask, "int32"), axis=1)
    ordered = ops.sort(ops.where(mask, values, np.float32(np.finfo(np.float32).max)), axis=1)
    last = ops.maximum(count - 1, 0)
    results = []
    for q in (0.2, 0.5, 0.8):
        position = q * ops.cast(last, "float32")
        low = ops.cast(ops.floor(position), "int32")
        high = ops.minimum(low + 1, last)
        below = ops.squeeze(ops.take_along_axis(ordered, ops.expand_dims(low, 1), axis=1), 1)
        above = ops.squeeze(ops.take_along_axis(ordered, ops.expand_dims(high, 1), axis=1), 1)
        value = below + (position - ops.cast(low, "float32")) * (above - below)
        results.append(ops.where(count > 0, value, 0.0))
    return (*results, results[2] - results[0])


def _runs(values, selected) -> tuple:
    """Over the maximal runs of equal ``values`` (batch, frames) that are ``selected``: their count, mean and sd of length in frames.

    Each frame's run length comes from comparing every frame's run number with every other's
    (frames x frames): the frames of a run of length L sum to L squared, which gives the spread.
    """
    values = ops.cast(values, "int32")
    change = ops.concatenate([ops.ones_like(values[:, :1]), ops.cast(values[:, 1:] != values[:, :-1], "int32")], axis=1)
    number = ops.cumsum(change, axis=1)
    length = ops.sum(ops.cast(ops.expand_dims(number, 2) == ops.expand_dims(number, 1), "float32"), axis=2)  # (batch, frames)
    selected = ops.cast(selected, "float32")
    runs = ops.sum(ops.cast(change, "float32") * selected, axis=1)
    mean = ops.sum(selected, axis=1) / ops.maximum(runs, 1.0)
    # sum over runs of (L - mean)^2 = sum over their frames of (L - mean)^2 / L
    spread = ops.sum(selected * ops.square(length - ops.expand_dims(mean, 1)) / length, axis=1) / ops.maximum(runs, 1.0)
    return runs, mean, ops.sqrt(spread)


def _prominent_peaks(x, prominence: float):
    """Which frames of (batch, frames) start a peak of at least ``prominence``, as scipy.signal.find_peaks(x, prominence=...) counts them.

    A peak rises from its left neighbour and the next different value is lower (a plateau
    is found at its first frame; scipy names its middle, the count is the same); the first
    and last frames are none. Its prominence: its height above the higher of the lowest
    points between it and the nearest strictly higher frame on either side (or the ends).
    """
    frames = ops.shape(x)[1]
    index = ops.arange(frames)
    row, column = ops.expand_dims(index, 1), ops.expand_dims(index, 0)  # (frames, 1), (1, frames): peak p, frame u
    here, there = ops.expand_dims(x, 2), ops.expand_dims(x, 1)  # x[p], x[u]
    differs_after = (column > row) & (there != here)
    next_different = ops.min(ops.where(differs_after, column, frames), axis=2)  # (batch, frames)
    next_value = ops.take_along_axis(x, ops.minimum(next_different, frames - 1), axis=1)
    rises = ops.concatenate([ops.zeros_like(x[:, :1], dtype="bool"), x[:, 1:] > x[:, :-1]], axis=1)
    peak = rises & (next_different < frames) & (next_value < x)
    higher = there > here
    left_end = ops.max(ops.where(higher & (column < row), column, -1), axis=2, keepdims=True)  # the nearest higher frame on the left
    right_end = ops.min(ops.where(higher & (column > row), column, frames), axis=2, keepdims=True)
    big = np.float32(np.finfo(np.float32).max)
    left_min = ops.min(ops.where((column > left_end) & (column <= row), there, big), axis=2)
    right_min = ops.min(ops.where((column < right_end) & (column >= row), there, big), axis=2)
    return peak & (x - ops.maximum(left_min, right_min) >= prominence)

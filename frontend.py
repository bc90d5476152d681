"""The feature front end as a Keras layer: 16 kHz PCM in, 3-channel log-Mel segments out, inside the graph.

`LogMelFrontEnd` computes what `utils.get_framed_log_melspectrogram` computes (the NumPy
path that feeds the feature cache), in `keras.ops` only, so that a saved or exported
model maps audio to emotions with no feature code outside it:

    waveform (batch, samples)        every row one window of equal length, float32 at the config's rate
      -> pre-emphasis                as librosa.effects.preemphasis (its linear-extrapolation start)
      -> STFT power                  a strided convolution with fixed DFT kernels (exports to ONNX and
                                     LiteRT, where an FFT op does not), centred frames, zero padding
      -> Mel, dB, top_db floor       librosa's Slaney filter bank as a fixed matrix; the floor per row
      -> delta, delta-delta          Savitzky-Golay width 9 with librosa's polynomial edge fit
      -> segments (batch, segments, segment_frames, n_mels, 3)

The fixed matrices are the layer's (non-trainable) weights: a constant made outside a layer
becomes a missing graph input in an ONNX export. Resampling stays outside the graph
(`utils.resample`): the layer takes audio at ``features.sr`` only. `split_windows` cuts one
recording into the equal windows the layer takes, as `inference.window_spans` does in seconds.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers, ops

import utils
from utils import FeatureConfig

PACKAGE = "dcnn_blstmwa"  # the name every layer of the model is registered under for .keras files


def split_windows(waveform, window_samples: int):
    """One recording (samples,) as equal windows (windows, samples // windows); the last few samples (fewer than the window count) are dropped.

    Parameters
    ----------
    waveform : tensor [shape=(samples,), dtype=float32]
    window_samples : int > 0
        The window length asked for; the windows come out between 2/3 and 1.5 times it,
        or the whole recording when it is shorter than 1.5 windows.
    """
    samples = ops.shape(waveform)[0]
    count = ops.cast(utils.window_count(ops.cast(samples, "float32"), window_samples, xp=ops), "int32")
    length = samples // count
    return ops.reshape(waveform[: count * length], (count, length))


def savgol_matrix(width: int, order: int, frames: int) -> np.ndarray:
    """The linear map of librosa.feature.delta (``mode="interp"``) on ``frames`` frames, as a matrix (frames, frames).

    Each output row weights the input frames: the Savitzky-Golay derivative of ``order``
    in the middle, the derivative of a polynomial fitted to the first or last ``width``
    frames at the edges.
    """
    import scipy.signal

    return scipy.signal.savgol_filter(np.eye(frames), width, polyorder=order, deriv=order, axis=0, mode="interp").astype(np.float32)


@keras.saving.register_keras_serializable(package=PACKAGE)
class LogMelFrontEnd(layers.Layer):
    """Windows of PCM to the model's segments: `utils.get_framed_log_melspectrogram` in Keras ops.

    Matches the NumPy path within a few hundredths of a dB on real and generated speech
    (float32 sums in another order; ``tests/test_frontend.py`` holds the bound for every
    parameter of `utils.FeatureConfig`).

    Args:
        features: dict or utils.FeatureConfig. The feature parameters (a run's
            ``features.json``). Defaults to `utils.DEFAULT_FEATURES`.

    Input: float32 (batch, samples) at ``features.sr``, every row a whole window (no padding).
    Output: float32 (batch, segments, segment_frames, n_mels, 3), segments as `utils.frame_segments` cuts them.

    Example:
    >>> LogMelFrontEnd()(np.zeros((2, 48000), "float32")).shape
    (2, 9, 64, 64, 3)
    """

    def __init__(self, features: dict | FeatureConfig | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(features, dict):
            features = FeatureConfig.from_dict(features)
        self.features = features or utils.DEFAULT_FEATURES
        config = self.features
        import librosa
        import scipy.signal

        window = np.zeros(config.n_fft)
        offset = (config.n_fft - config.win_length) // 2  # librosa centres a shorter window inside n_fft
        window[offset : offset + config.win_length] = scipy.signal.get_window(config.window, config.win_length, fftbins=True)
        bins = config.n_fft // 2 + 1
        angles = 2 * np.pi * np.outer(np.arange(config.n_fft), np.arange(bins)) / config.n_fft
        dft = np.concatenate([window[:, None] * np.cos(angles), -window[:, None] * np.sin(angles)], axis=1)
        mel = librosa.filters.mel(sr=config.sr, n_fft=config.n_fft, n_mels=config.n_mels, fmin=config.fmin, fmax=config.fmax)
        self._constants = {
            "dft_kernel": dft[:, None, :],  # (n_fft, 1 channel, real and imaginary parts of every bin)
            "mel_matrix": mel.T,  # (bins, n_mels)
        }
        half = config.delta_width // 2
        for order in (1, 2):
            # Savitzky-Golay weights: the first and last half-windows (edge fits), and the middle.
            weights = savgol_matrix(config.delta_width, order, config.delta_width)
            self._constants.update({f"delta{order}_head": weights[:half], f"delta{order}_middle": weights[half], f"delta{order}_tail": weights[half + 1 :]})

    def build(self, input_shape) -> None:
        for name, value in self._constants.items():
            value = np.asarray(value, dtype=np.float32)
            setattr(self, name, self.add_weight(name=name, shape=value.shape, initializer=keras.initializers.Constant(value), trainable=False, dtype="float32"))

    @property
    def min_samples(self) -> int:
        """Shorter input is padded with zeros to this many samples: enough frames for the deltas' edge fits (as `utils.log_mel_spectrogram`)."""
        return utils.min_samples(self.features)

    def call(self, waveform):
        config = self.features
        waveform = ops.cast(waveform, "float32")
        samples = ops.shape(waveform)[1]
        waveform = ops.pad(waveform, [[0, 0], [0, ops.maximum(self.min_samples - samples, 0)]])
        if config.preemphasis:
            # librosa's filter starts from the state 2 y[0] - y[1] (a linear extrapolation), added to y[0].
            first = 3 * waveform[:, :1] - waveform[:, 1:2]
            waveform = ops.concatenate([first, waveform[:, 1:] - config.preemphasis * waveform[:, :-1]], axis=1)
        half = config.n_fft // 2
        padded = ops.expand_dims(ops.pad(waveform, [[0, 0], [half, half]]), -1)  # centred frames: frame t is centred on t * hop
        spectrum = ops.conv(padded, self.dft_kernel, strides=config.hop_length, padding="valid")  # (batch, frames, 2 * bins)
        bins = config.n_fft // 2 + 1
        power = ops.square(spectrum[..., :bins]) + ops.square(spectrum[..., bins:])
        decibels = 10.0 * ops.log10(ops.maximum(ops.matmul(power, self.mel_matrix), 1e-10))  # (batch, frames, n_mels)
        if config.top_db is not None:
            decibels = ops.maximum(decibels, ops.max(decibels, axis=(1, 2), keepdims=True) - config.top_db)
        features = ops.stack(
            [decibels, self._delta(decibels, self.delta1_head, self.delta1_middle, self.delta1_tail),
             self._delta(decibels, self.delta2_head, self.delta2_middle, self.delta2_tail)],
            axis=-1,
        )  # (batch, frames, n_mels, 3)
        return self._segments(features)

    def _delta(self, values, head, middle, tail):
        """Savitzky-Golay derivative over time of (batch, frames, n_mels), edges by polynomial fit, as librosa's ``mode="interp"``."""
        width = self.features.delta_width
        frames = ops.shape(values)[1]
        edge_head = ops.matmul(head, values[:, :width])  # (half, width) x (batch, width, n_mels)
        edge_tail = ops.matmul(tail, values[:, frames - width :])
        # The middle as one depthwise convolution over time (each Mel band its own channel, the same weights).
        kernel = ops.broadcast_to(ops.reshape(middle, (width, 1, 1)), (width, ops.shape(values)[2], 1))
        inner = ops.depthwise_conv(values, kernel, strides=1, padding="valid")
        return ops.concatenate([edge_head, inner, edge_tail], axis=1)

    def _segments(self, features):
        """Cut (batch, frames, n_mels, 3) into segments as `utils.frame_segments`: hop-spaced starts, the last ending at the last frame."""
        length, hop = self.features.segment_frames, self.features.segment_hop
        frames = ops.shape(features)[1]
        # Shorter than a segment: pad to one, the static channel with the row's minimum, the deltas with zeros.
        short = ops.maximum(length - frames, 0)
        floor = ops.expand_dims(ops.min(features[..., 0], axis=(1, 2), keepdims=True), -1)  # (batch, 1, 1, 1)
        batch, mels = ops.shape(features)[0], ops.shape(features)[2]
        fill = ops.concatenate(
            [ops.broadcast_to(floor, (batch, short, mels, 1)), ops.zeros((batch, short, mels, 2))], axis=-1
        )
        features = ops.concatenate([features, fill], axis=1)
        frames = ops.maximum(frames, length)
        count = (frames - length + hop - 1) // hop + 1
        starts = ops.minimum(ops.arange(count) * hop, frames - length)
        indices = ops.expand_dims(starts, 1) + ops.expand_dims(ops.arange(length), 0)  # (segments, length)
        return ops.take(features, indices, axis=1)

    def compute_output_shape(self, input_shape):
        config = self.features
        return (input_shape[0], None, config.segment_frames, config.n_mels, 3)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"features": self.features.to_dict()})
        return config

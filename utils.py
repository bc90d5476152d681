"""Audio in, segments out: the feature front end of DCNN-BLSTMwA.

An utterance becomes a stack of 64x64 images with three channels (static,
delta and delta-delta log-Mel), the input of Zhang et al. (2018, 2021):

    load_wav(path)                       -> y: float32 mono at 16 kHz
    log_mel_spectrogram(y, config)       -> S: (n_mels, frames) in dB
    add_deltas(S, config)                -> F: (frames, n_mels, 3)
    frame_segments(F, config)            -> X: (segments, 64, 64, 3)
    get_framed_log_melspectrogram(path)  -> all four in one call

`FeatureConfig` holds every parameter of these steps once, with its default and its
checks; `DEFAULT_FEATURES` is the recipe's.

Only `load_wav`, `audio_info` and `find_audio_files` touch files; every other function is pure.
This NumPy path feeds the feature cache; `frontend.LogMelFrontEnd` computes the same segments
inside the model, in Keras ops (``tests/test_frontend.py`` holds the two equal).
"""

from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path
from typing import Any, Union

import numpy as np
import soundfile as sf
import soxr

# librosa loads its submodules on first use (about 1.3 s for the feature code): importing utils
# stays cheap for the command lines' -h; features.py loads them before forking workers.
import librosa

# File name endings of the formats libsndfile reads, for folder scans (a file named
# directly is tried whatever its name). Only formats this libsndfile was built with count:
# MP3 needs libsndfile 1.1 or newer.
_FORMAT_EXTENSIONS = {
    "WAV": (".wav", ".wave"), "WAVEX": (".wav",), "RF64": (".rf64",), "W64": (".w64",),
    "AIFF": (".aif", ".aiff", ".aifc"), "AU": (".au", ".snd"), "CAF": (".caf",), "FLAC": (".flac",),
    "OGG": (".ogg", ".oga", ".opus"), "MP3": (".mp3",), "NIST": (".nist", ".sph"), "VOC": (".voc",),
}
AUDIO_EXTENSIONS = tuple(sorted({
    extension for name, extensions in _FORMAT_EXTENSIONS.items() if name in sf.available_formats() for extension in extensions
}))
PAD_VALUE = 0.0  # what fills padding segments in a batch; the model masks segments that are all PAD_VALUE
SILENCE_PEAK = 1e-4  # audio whose samples never reach this (-80 dBFS) is called silent
WINDOW_SECONDS = 8.0  # recordings longer than this are cut into equal windows of about this length (infer.py, the exports)

PathLike = Union[str, os.PathLike]


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Every parameter of the feature pipeline, with its default: what identifies a set of features.

    The cache keys on it, a trained model holds it (its front end's config) and inference
    rebuilds it from there, so the same audio always gives the same segments.
    Values are checked when the config is made.

    Attributes
    ----------
    sr : int > 0, in Hz
        Sample rate every feature is computed at.
    preemphasis : float in [0, 1)
        Coefficient of the pre-emphasis filter ``y[n] - preemphasis * y[n-1]``.
    n_fft : int > 0, in samples
        FFT length (32 ms at 16 kHz).
    win_length : int, 0 < win_length <= n_fft, in samples
        Length of the analysis window (25 ms at 16 kHz).
    hop_length : int > 0, in samples
        Step between frames (10 ms at 16 kHz). Frames are centred: frame ``t`` is
        centred on sample ``t * hop_length``.
    window : str
        Window name understood by ``scipy.signal.get_window``.
    n_mels : int > 0
        Number of Mel bands: the segment's height.
    fmin, fmax : float, 0 <= fmin < fmax <= sr / 2, in Hz
        Edges of the Mel filter bank.
    top_db : float > 0 or None, in dB
        Floor the log-Mel at ``max - top_db``; None keeps the full range down to
        -100 dB (the power floor 1e-10).
    delta_width : int >= 3, odd
        Frames in the delta regression window (librosa.feature.delta's ``width``).
    segment_frames : int > 0
        Frames per segment (0.64 s at the default hop): the segment's width.
    segment_hop : int > 0
        Frames between the starts of consecutive segments (50 % overlap by default).
    """

    sr: int = 16000
    preemphasis: float = 0.97
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    window: str = "hamming"
    n_mels: int = 64
    fmin: float = 20.0
    fmax: float = 8000.0
    top_db: float | None = 80.0
    delta_width: int = 9
    segment_frames: int = 64
    segment_hop: int = 32

    def __post_init__(self) -> None:
        problems = [
            (self.sr > 0, f"sr must be a positive sample rate in Hz, got {self.sr!r}"),
            (0 <= self.preemphasis < 1, f"preemphasis must be in [0, 1), got {self.preemphasis!r}"),
            (self.n_fft > 0, f"n_fft must be > 0, got {self.n_fft!r}"),
            (0 < self.win_length <= self.n_fft, f"win_length must be in (0, n_fft={self.n_fft}], got {self.win_length!r}"),
            (self.hop_length > 0, f"hop_length must be > 0, got {self.hop_length!r}"),
            (self.n_mels > 0, f"n_mels must be > 0, got {self.n_mels!r}"),
            (
                0 <= self.fmin < self.fmax <= self.sr / 2,
                f"need 0 <= fmin < fmax <= sr/2 = {self.sr / 2:g} Hz, got fmin={self.fmin!r}, fmax={self.fmax!r}",
            ),
            (self.top_db is None or self.top_db > 0, f"top_db must be > 0 or None, got {self.top_db!r}"),
            (
                self.delta_width >= 3 and self.delta_width % 2 == 1,
                f"delta_width must be an odd integer >= 3, got {self.delta_width!r}",
            ),
            (
                self.segment_frames > 0 and self.segment_hop > 0,
                f"segment_frames and segment_hop must be > 0, got {self.segment_frames!r} and {self.segment_hop!r}",
            ),
        ]
        for valid, message in problems:
            if not valid:
                raise ValueError(message)

    @property
    def segment_shape(self) -> tuple[int, int, int]:
        """(time frames, Mel bands, channels) of one segment."""
        return (self.segment_frames, self.n_mels, 3)

    def replace(self, **changes: Any) -> FeatureConfig:
        """A copy with ``changes`` applied.

        Raises
        ------
        TypeError
            If a name is not a feature parameter; the message lists the known ones.
        ValueError
            If a value is invalid.
        """
        known = [field.name for field in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise TypeError(f"unknown feature parameter(s) {unknown}; known: {known}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every parameter by name, JSON-ready; ``FeatureConfig.from_dict`` reads it back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureConfig:
        """The config ``to_dict`` wrote; missing names take their defaults, unknown ones raise TypeError."""
        return DEFAULT_FEATURES.replace(**values)


DEFAULT_FEATURES = FeatureConfig()


class AudioError(Exception):
    """An audio file that cannot be used: missing, empty, truncated, not audio or silent of samples.

    The message always starts with the file's path.
    """


def load_wav(
    path: PathLike, sr: int = DEFAULT_FEATURES.sr, *, offset: float = 0.0, duration: float | None = None
) -> np.ndarray:
    """Read an audio file, or a span of it, as mono float32 at ``sr``.

    Parameters
    ----------
    path : str or os.PathLike
        Any file libsndfile reads: WAV (8/16/24/32-bit integer, 32/64-bit float),
        FLAC, OGG Vorbis, and the other formats of ``soundfile.available_formats()``.
    sr : int > 0, in Hz
        Target sample rate. Files at another rate are resampled with soxr
        (high quality, librosa's default resampler).
    offset : float >= 0, in seconds
        Where to start reading.
    duration : float > 0 or None, in seconds
        How much to read; None reads to the end. Only the span is decoded, so
        long recordings can be read a window at a time.

    Returns
    -------
    y : np.ndarray [shape=(n,), dtype=float32]
        The mean of the file's channels, in [-1, 1] for integer formats.

    Raises
    ------
    AudioError
        If the file is missing, empty, truncated (a WAV whose data ends before its
        header says), not decodable, holds no samples (in the span) or holds NaN
        or infinite samples. The message names the file and the problem.
    """
    if sr <= 0:
        raise ValueError(f"sr must be a positive sample rate in Hz, got {sr!r}")
    if offset < 0 or (duration is not None and duration <= 0):
        raise ValueError(f"need offset >= 0 and duration > 0 or None, got offset={offset!r}, duration={duration!r}")
    path = _checked_file(path)
    try:
        with sf.SoundFile(path) as stream:
            file_sr = stream.samplerate
            stream.seek(min(int(round(offset * file_sr)), stream.frames))
            frames = -1 if duration is None else int(round(duration * file_sr))
            data = stream.read(frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as error:
        raise AudioError(f"{path}: not readable as audio ({error})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: holds no audio samples (zero length)")
    y = data.mean(axis=1, dtype=np.float32)
    if not np.isfinite(y).all():
        raise AudioError(f"{path}: holds NaN or infinite samples")
    return resample(y, file_sr, sr)


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """``y`` at ``target_sr``: soxr's high-quality resampler (librosa's default), or ``y`` itself at equal rates.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]
    orig_sr, target_sr : int > 0, in Hz

    Returns
    -------
    y_resampled : np.ndarray [shape=(about n * target_sr / orig_sr,), dtype=float32], contiguous
    """
    if orig_sr != target_sr:
        y = soxr.resample(y, orig_sr, target_sr, quality="HQ")
    return np.ascontiguousarray(y, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """What a file's header says: ``duration`` in seconds, ``sample_rate`` in Hz, libsndfile's ``subtype`` (PCM_16, ...)."""

    duration: float
    sample_rate: int
    subtype: str


def audio_info(path: PathLike) -> AudioInfo:
    """Length, sample rate and sample format of an audio file, from its header (nothing is decoded).

    Raises
    ------
    AudioError
        As `load_wav`, for a missing, empty, truncated or undecodable file, or one with no samples.
    """
    path = _checked_file(path)
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, ValueError) as error:
        raise AudioError(f"{path}: not readable as audio ({error})") from None
    if info.frames == 0:
        raise AudioError(f"{path}: holds no audio samples (zero length)")
    return AudioInfo(info.frames / info.samplerate, info.samplerate, info.subtype)


def find_audio_files(folder: PathLike) -> list[Path]:
    """Every audio file (`AUDIO_EXTENSIONS`) under ``folder``, at any depth, sorted.

    Links are followed (folders gathered from several places by symlinks are common);
    each real folder is read once, so a link back up the tree cannot loop. Hidden
    files and folders and ``__MACOSX`` (the '._*' companions some unzip tools leave)
    are left out. Nothing is opened: whether a file is usable is `load_wav`'s concern.
    """
    found, visited = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real_root = os.path.realpath(root)
        if real_root in visited:
            dirs[:] = []
            continue
        visited.add(real_root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
        found += [
            Path(root) / name
            for name in files
            if not name.startswith(".") and Path(name).suffix.lower() in AUDIO_EXTENSIONS
        ]
    return sorted(found)


def _checked_file(path: PathLike) -> Path:
    """``path`` as a Path, or AudioError when it is missing, a folder, empty or a truncated WAV."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: file not found")
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    frames = _wav_frames(path)
    if frames is not None and frames[1] < frames[0]:
        raise AudioError(
            f"{path}: truncated: its header declares {frames[0]} samples, the file holds {frames[1]} "
            "(a copy or download cut short)"
        )
    return path


def _wav_frames(path: Path) -> tuple[int, int] | None:
    """(declared, present) sample frames of a RIFF/RIFX WAV file's data chunk; None for other files.

    libsndfile quietly shortens a WAV whose data ends early to what is there, so the
    header's own count is read here. None too when the writer left the size open
    (0 or 0xFFFFFFFF, as streaming recorders do).
    """
    with open(path, "rb") as stream:
        head = stream.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None
        order = "<" if head[:4] == b"RIFF" else ">"
        block_align = 0
        while True:
            chunk = stream.read(8)
            if len(chunk) < 8:
                return None
            name, size = chunk[:4], struct.unpack(f"{order}I", chunk[4:])[0]
            if name == b"fmt ":
                fmt = stream.read(size + size % 2)
                block_align = struct.unpack(f"{order}H", fmt[12:14])[0] if len(fmt) >= 14 else 0
            elif name == b"data":
                if block_align == 0 or size in (0, 0xFFFFFFFF):
                    return None
                present = path.stat().st_size - stream.tell()
                return size // block_align, min(size, present) // block_align
            else:
                stream.seek(size + size % 2, os.SEEK_CUR)


def window_count(length, window, xp=np):
    """How many equal windows a recording of ``length`` is cut into: the nearest whole number of ``window``s, at least 1.

    ``length`` and ``window`` in the same unit (seconds, samples); ``xp`` the array module:
    NumPy for numbers (infer.py), ``keras.ops`` for tensors (the exports cut in the graph).
    """
    return xp.maximum(xp.floor(length / window + 0.5), 1.0)


def min_samples(config: FeatureConfig = DEFAULT_FEATURES) -> int:
    """The shortest signal `log_mel_spectrogram` analyses as it is; shorter ones are zero-padded to it.

    One FFT frame, and enough frames (``delta_width``) for the deltas' polynomial edge fits,
    so that every utterance takes the same delta formula (the in-graph front end's too).
    """
    return max(config.n_fft, (config.delta_width - 1) * config.hop_length)


def log_mel_spectrogram(y: np.ndarray, config: FeatureConfig = DEFAULT_FEATURES) -> np.ndarray:
    """Log-Mel power spectrogram in dB.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)], real
        Mono audio sampled at ``config.sr``. Any length >= 1; a signal shorter than
        `min_samples` is zero-padded to it first.
    config : FeatureConfig
        Pre-emphasis, STFT, Mel and dB-floor parameters (see `FeatureConfig`).

    Returns
    -------
    S : np.ndarray [shape=(n_mels, frames), dtype=float32]
        ``10 * log10(power)``, finite everywhere (also for pure silence);
        ``frames = 1 + max(len(y), min_samples(config)) // hop_length``.
    """
    y = np.asarray(y, dtype=np.float32)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"y must be a non-empty mono signal of shape (n,), got shape {y.shape}")
    if y.size < min_samples(config):
        y = np.pad(y, (0, min_samples(config) - y.size))
    if config.preemphasis:
        y = librosa.effects.preemphasis(y, coef=config.preemphasis)
    mel_power = librosa.feature.melspectrogram(
        y=y,
        sr=config.sr,
        n_fft=config.n_fft,
        hop_length=config.hop_length,
        win_length=config.win_length,
        window=config.window,
        center=True,
        pad_mode="constant",
        power=2.0,
        n_mels=config.n_mels,
        fmin=config.fmin,
        fmax=config.fmax,
    )
    return librosa.power_to_db(mel_power, ref=1.0, amin=1e-10, top_db=config.top_db).astype(np.float32)


def add_deltas(log_mel: np.ndarray, config: FeatureConfig = DEFAULT_FEATURES) -> np.ndarray:
    """Stack a log-Mel spectrogram with its delta and delta-delta as channels.

    Parameters
    ----------
    log_mel : np.ndarray [shape=(n_mels, frames)]
        Output of `log_mel_spectrogram` for a whole utterance: deltas are
        regression slopes over ``config.delta_width`` neighbouring frames, so
        computing them before cutting keeps segment edges exact.
    config : FeatureConfig
        Its ``delta_width`` is used.

    Returns
    -------
    features : np.ndarray [shape=(frames, n_mels, 3), dtype=float32]
        Channel 0 static, 1 delta, 2 delta-delta; axis 0 is time.
    """
    width = config.delta_width
    # librosa's polynomial edge fit ("interp") needs at least `width` frames;
    # shorter utterances repeat their edge frames instead.
    mode = "interp" if log_mel.shape[1] >= width else "nearest"
    delta = librosa.feature.delta(log_mel, width=width, order=1, axis=1, mode=mode)
    delta2 = librosa.feature.delta(log_mel, width=width, order=2, axis=1, mode=mode)
    return np.stack([log_mel, delta, delta2], axis=-1).transpose(1, 0, 2).astype(np.float32)


def segment_starts(frames: int, config: FeatureConfig = DEFAULT_FEATURES) -> list[int]:
    """The first frame of each segment `frame_segments` cuts from ``frames`` frames.

    Every ``config.segment_hop`` frames, plus one ending at the last frame when the
    regular ones stop short of it; ``[0]`` when ``frames <= segment_frames`` (one padded segment).
    """
    length = config.segment_frames
    starts = list(range(0, max(frames - length, 0) + 1, config.segment_hop))
    if starts[-1] + length < frames:
        starts.append(frames - length)
    return starts


def segment_spans(samples: int, config: FeatureConfig = DEFAULT_FEATURES) -> np.ndarray:
    """Where each segment of a signal lies in it: what `get_framed_log_melspectrogram` cuts.

    Parameters
    ----------
    samples : int > 0
        The signal's length, at ``config.sr``.
    config : FeatureConfig

    Returns
    -------
    spans : np.ndarray [shape=(num_segments, 2), dtype=float64], in seconds
        Each segment's start and end (its frames' centres), the end capped at the signal's end.
    """
    frames = 1 + max(samples, min_samples(config)) // config.hop_length
    starts = np.asarray(segment_starts(frames, config), dtype=np.float64)
    seconds_per_frame = config.hop_length / config.sr
    ends = np.minimum(starts + config.segment_frames - 1, frames - 1)
    return np.minimum(np.stack([starts, ends], axis=1) * seconds_per_frame, samples / config.sr)


def frame_segments(features: np.ndarray, config: FeatureConfig = DEFAULT_FEATURES) -> np.ndarray:
    """Cut an utterance's features into overlapping fixed-length segments.

    Segments start every ``config.segment_hop`` frames; when the last regular
    segment stops short of the end, one more segment ending at the last frame
    covers the tail. An utterance shorter than one segment is padded to one: the
    static channel with the utterance's minimum (its silence floor), the delta
    channels with zeros.

    Parameters
    ----------
    features : np.ndarray [shape=(frames, n_mels, channels)]
        Output of `add_deltas`; ``frames >= 1``.
    config : FeatureConfig
        Its ``segment_frames`` and ``segment_hop`` are used.

    Returns
    -------
    segments : np.ndarray [shape=(num_segments, segment_frames, n_mels, channels), dtype=float32]
        ``num_segments = 1`` for ``frames <= segment_frames``, else
        ``ceil((frames - segment_frames) / segment_hop) + 1``.
    """
    length = config.segment_frames
    features = np.asarray(features, dtype=np.float32)
    frames = features.shape[0]
    if frames < length:
        fill = np.zeros((length - frames, *features.shape[1:]), dtype=np.float32)
        fill[..., 0] = features[..., 0].min()
        return np.concatenate([features, fill])[np.newaxis]
    starts = segment_starts(frames, config)
    windows = np.lib.stride_tricks.sliding_window_view(features, length, axis=0)
    # sliding_window_view puts the window axis last; move it back to axis 1 (time).
    return np.ascontiguousarray(np.moveaxis(windows[starts], -1, 1))


def get_framed_log_melspectrogram(
    y_or_path: np.ndarray | PathLike, config: FeatureConfig | None = None, **changes: Any
) -> np.ndarray:
    """Segments of static, delta and delta-delta log-Mel: the model's input.

    Parameters
    ----------
    y_or_path : np.ndarray [shape=(n,)] or str or os.PathLike
        Mono audio already sampled at ``config.sr``, or a file for `load_wav`.
    config : FeatureConfig or None
        The pipeline's parameters; None is `DEFAULT_FEATURES`.
    **changes
        Parameters of `FeatureConfig` to change on top of ``config``, e.g. ``n_mels=40``.

    Returns
    -------
    segments : np.ndarray [shape=(num_segments, segment_frames, n_mels, 3), dtype=float32]
        Axis 1 is time (10 ms frames by default), axis 2 Mel band (low to high),
        axis 3 channel (static dB, delta, delta-delta). Always finite.

    Raises
    ------
    AudioError
        If ``y_or_path`` is a file that cannot be used (see `load_wav`).
    TypeError, ValueError
        For an unknown parameter or an invalid value.

    Examples
    --------
    >>> y = np.sin(2 * np.pi * 440 * np.arange(3 * 16000) / 16000)
    >>> get_framed_log_melspectrogram(y).shape
    (9, 64, 64, 3)
    """
    config = (config or DEFAULT_FEATURES).replace(**changes)
    if isinstance(y_or_path, (str, os.PathLike)):
        y = load_wav(y_or_path, sr=config.sr)
    else:
        y = y_or_path
    return frame_segments(add_deltas(log_mel_spectrogram(y, config), config), config)

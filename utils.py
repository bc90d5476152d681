"""Audio in, segments out: the feature front end of DCNN-BLSTMwA.

An utterance becomes a stack of 64x64 images with three channels (static,
delta and delta-delta log-Mel), the input of Zhang et al. (2018, 2021):

    load_wav(path)                       -> y: float32 mono at 16 kHz
    log_mel_spectrogram(y)               -> S: (n_mels, frames) in dB
    add_deltas(S)                        -> F: (frames, n_mels, 3)
    frame_segments(F)                    -> X: (segments, 64, 64, 3)
    get_framed_log_melspectrogram(path)  -> all four in one call

Only `load_wav`, `audio_duration` and `find_audio_files` touch files; every other function is pure.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Union

import numpy as np
import soundfile as sf
import soxr

# librosa loads its submodules lazily; importing these here makes `import utils`
# pay the ~1.3 s once, so that worker processes forked from an importer start
# warm (see features.py) instead of each paying it on their first file.
from librosa import power_to_db
from librosa.effects import preemphasis as apply_preemphasis
from librosa.feature import delta as regression_delta
from librosa.feature import melspectrogram

SAMPLE_RATE = 16000  # Hz; every feature is computed at this rate
PREEMPHASIS = 0.97  # coefficient of y[n] - a * y[n-1]
N_FFT = 512  # samples per FFT (32 ms at 16 kHz)
WIN_LENGTH = 400  # samples per Hamming window (25 ms at 16 kHz)
HOP_LENGTH = 160  # samples between frames (10 ms at 16 kHz)
WINDOW = "hamming"
N_MELS = 64  # Mel bands: the image height
FMIN = 20.0  # Hz, lowest Mel band edge
FMAX = 8000.0  # Hz, highest Mel band edge (Nyquist at 16 kHz)
TOP_DB = 80.0  # dB below the utterance's peak where the log-Mel is floored
DELTA_WIDTH = 9  # frames in the delta regression window
SEGMENT_FRAMES = 64  # frames per segment (0.64 s): the image width
SEGMENT_HOP = 32  # frames between segment starts (50 % overlap)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")

PathLike = Union[str, os.PathLike]


class AudioError(Exception):
    """An audio file that cannot be used: missing, empty, truncated, not audio or silent of samples.

    The message always starts with the file's path.
    """


def load_wav(
    path: PathLike, sr: int = SAMPLE_RATE, *, offset: float = 0.0, duration: float | None = None
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
        If the file is missing, empty, not decodable, holds no samples (in the
        span) or holds NaN or infinite samples. The message names the file and
        the problem.
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
    if file_sr != sr:
        y = soxr.resample(y, file_sr, sr, quality="HQ")
    return np.ascontiguousarray(y, dtype=np.float32)


def audio_duration(path: PathLike) -> float:
    """Length of an audio file in seconds, from its header (nothing is decoded).

    Raises
    ------
    AudioError
        As `load_wav`, for a missing, empty or undecodable file, or one with no samples.
    """
    path = _checked_file(path)
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, ValueError) as error:
        raise AudioError(f"{path}: not readable as audio ({error})") from None
    if info.frames == 0:
        raise AudioError(f"{path}: holds no audio samples (zero length)")
    return info.frames / info.samplerate


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
    """``path`` as a Path, or AudioError when it is missing, a folder or empty."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: file not found")
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    return path


def log_mel_spectrogram(
    y: np.ndarray,
    sr: int = SAMPLE_RATE,
    *,
    preemphasis: float = PREEMPHASIS,
    n_fft: int = N_FFT,
    win_length: int = WIN_LENGTH,
    hop_length: int = HOP_LENGTH,
    window: str = WINDOW,
    n_mels: int = N_MELS,
    fmin: float = FMIN,
    fmax: float = FMAX,
    top_db: float | None = TOP_DB,
) -> np.ndarray:
    """Log-Mel power spectrogram in dB.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)], real
        Mono audio sampled at ``sr``. Any length >= 1; a signal shorter than
        ``n_fft`` is zero-padded to ``n_fft`` first.
    sr : int > 0, in Hz
        Sample rate of ``y``. ``n_fft``, ``win_length`` and ``hop_length`` are
        in samples at this rate.
    preemphasis : float in [0, 1)
        Coefficient of the pre-emphasis filter ``y[n] - preemphasis * y[n-1]``.
    n_fft : int > 0, in samples
        FFT length.
    win_length : int, 0 < win_length <= n_fft, in samples
        Length of the analysis window.
    hop_length : int > 0, in samples
        Step between frames. Frames are centred: frame ``t`` is centred on
        sample ``t * hop_length``.
    window : str
        Window name understood by ``scipy.signal.get_window``.
    n_mels : int > 0
        Number of Mel bands.
    fmin, fmax : float, 0 <= fmin < fmax <= sr / 2, in Hz
        Edges of the Mel filter bank.
    top_db : float > 0 or None, in dB
        Floor the output at ``max - top_db``; None keeps the full range down to
        -100 dB (the power floor 1e-10).

    Returns
    -------
    S : np.ndarray [shape=(n_mels, frames), dtype=float32]
        ``10 * log10(power)``, finite everywhere (also for pure silence);
        ``frames = 1 + max(len(y), n_fft) // hop_length``.
    """
    if not 0 < win_length <= n_fft:
        raise ValueError(f"win_length must be in (0, n_fft={n_fft}], got {win_length!r}")
    if hop_length <= 0:
        raise ValueError(f"hop_length must be > 0, got {hop_length!r}")
    if not 0 <= fmin < fmax <= sr / 2:
        raise ValueError(f"need 0 <= fmin < fmax <= sr/2 = {sr / 2:g} Hz, got fmin={fmin!r}, fmax={fmax!r}")
    if not 0 <= preemphasis < 1:
        raise ValueError(f"preemphasis must be in [0, 1), got {preemphasis!r}")
    y = np.asarray(y, dtype=np.float32)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"y must be a non-empty mono signal of shape (n,), got shape {y.shape}")
    if y.size < n_fft:
        y = np.pad(y, (0, n_fft - y.size))
    if preemphasis:
        y = apply_preemphasis(y, coef=preemphasis)
    mel_power = melspectrogram(
        y=y,
        sr=sr,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=window,
        center=True,
        pad_mode="constant",
        power=2.0,
        n_mels=n_mels,
        fmin=fmin,
        fmax=fmax,
    )
    return power_to_db(mel_power, ref=1.0, amin=1e-10, top_db=top_db).astype(np.float32)


def add_deltas(log_mel: np.ndarray, *, delta_width: int = DELTA_WIDTH) -> np.ndarray:
    """Stack a log-Mel spectrogram with its delta and delta-delta as channels.

    Parameters
    ----------
    log_mel : np.ndarray [shape=(n_mels, frames)]
        Output of `log_mel_spectrogram` for a whole utterance: deltas are
        regression slopes over ``delta_width`` neighbouring frames, so computing
        them before cutting keeps segment edges exact.
    delta_width : int >= 3, odd
        Frames in the regression window (librosa.feature.delta's ``width``).

    Returns
    -------
    features : np.ndarray [shape=(frames, n_mels, 3), dtype=float32]
        Channel 0 static, 1 delta, 2 delta-delta; axis 0 is time.
    """
    if delta_width < 3 or delta_width % 2 == 0:
        raise ValueError(f"delta_width must be an odd integer >= 3, got {delta_width!r}")
    # librosa's polynomial edge fit ("interp") needs at least `width` frames;
    # shorter utterances repeat their edge frames instead.
    mode = "interp" if log_mel.shape[1] >= delta_width else "nearest"
    delta = regression_delta(log_mel, width=delta_width, order=1, axis=1, mode=mode)
    delta2 = regression_delta(log_mel, width=delta_width, order=2, axis=1, mode=mode)
    return np.stack([log_mel, delta, delta2], axis=-1).transpose(1, 0, 2).astype(np.float32)


def frame_segments(
    features: np.ndarray,
    *,
    segment_frames: int = SEGMENT_FRAMES,
    segment_hop: int = SEGMENT_HOP,
) -> np.ndarray:
    """Cut an utterance's features into overlapping fixed-length segments.

    Segments start every ``segment_hop`` frames; when the last regular segment
    stops short of the end, one more segment ending at the last frame covers
    the tail. An utterance shorter than one segment is padded to one: the
    static channel with the utterance's minimum (its silence floor), the delta
    channels with zeros.

    Parameters
    ----------
    features : np.ndarray [shape=(frames, n_mels, channels)]
        Output of `add_deltas`; ``frames >= 1``.
    segment_frames : int > 0
        Frames per segment.
    segment_hop : int > 0
        Frames between the starts of consecutive segments.

    Returns
    -------
    segments : np.ndarray [shape=(num_segments, segment_frames, n_mels, channels), dtype=float32]
        ``num_segments = 1`` for ``frames <= segment_frames``, else
        ``ceil((frames - segment_frames) / segment_hop) + 1``.
    """
    if segment_frames <= 0 or segment_hop <= 0:
        raise ValueError(
            f"segment_frames and segment_hop must be > 0, got {segment_frames!r} and {segment_hop!r}"
        )
    features = np.asarray(features, dtype=np.float32)
    frames = features.shape[0]
    if frames < segment_frames:
        fill = np.zeros((segment_frames - frames, *features.shape[1:]), dtype=np.float32)
        fill[..., 0] = features[..., 0].min()
        return np.concatenate([features, fill])[np.newaxis]
    starts = list(range(0, frames - segment_frames + 1, segment_hop))
    if starts[-1] + segment_frames < frames:
        starts.append(frames - segment_frames)
    windows = np.lib.stride_tricks.sliding_window_view(features, segment_frames, axis=0)
    # sliding_window_view puts the window axis last; move it back to axis 1 (time).
    return np.ascontiguousarray(np.moveaxis(windows[starts], -1, 1))


def get_framed_log_melspectrogram(
    y_or_path: np.ndarray | PathLike,
    *,
    sr: int = SAMPLE_RATE,
    preemphasis: float = PREEMPHASIS,
    n_fft: int = N_FFT,
    win_length: int = WIN_LENGTH,
    hop_length: int = HOP_LENGTH,
    window: str = WINDOW,
    n_mels: int = N_MELS,
    fmin: float = FMIN,
    fmax: float = FMAX,
    top_db: float | None = TOP_DB,
    delta_width: int = DELTA_WIDTH,
    segment_frames: int = SEGMENT_FRAMES,
    segment_hop: int = SEGMENT_HOP,
) -> np.ndarray:
    """Segments of static, delta and delta-delta log-Mel: the model's input.

    Parameters
    ----------
    y_or_path : np.ndarray [shape=(n,)] or str or os.PathLike
        Mono audio already sampled at ``sr``, or a file for `load_wav`.
    sr : int > 0, in Hz
        Sample rate the features are computed at.
    preemphasis, n_fft, win_length, hop_length, window, n_mels, fmin, fmax, top_db
        See `log_mel_spectrogram`.
    delta_width
        See `add_deltas`.
    segment_frames, segment_hop
        See `frame_segments`.

    Returns
    -------
    segments : np.ndarray [shape=(num_segments, segment_frames, n_mels, 3), dtype=float32]
        Axis 1 is time (10 ms frames by default), axis 2 Mel band (low to high),
        axis 3 channel (static dB, delta, delta-delta). Always finite.

    Raises
    ------
    AudioError
        If ``y_or_path`` is a file that cannot be used (see `load_wav`).

    Examples
    --------
    >>> y = np.sin(2 * np.pi * 440 * np.arange(3 * 16000) / 16000)
    >>> get_framed_log_melspectrogram(y).shape
    (9, 64, 64, 3)
    """
    if isinstance(y_or_path, (str, os.PathLike)):
        y = load_wav(y_or_path, sr=sr)
    else:
        y = y_or_path
    log_mel = log_mel_spectrogram(
        y,
        sr,
        preemphasis=preemphasis,
        n_fft=n_fft,
        win_length=win_length,
        hop_length=hop_length,
        window=window,
        n_mels=n_mels,
        fmin=fmin,
        fmax=fmax,
        top_db=top_db,
    )
    features = add_deltas(log_mel, delta_width=delta_width)
    return frame_segments(features, segment_frames=segment_frames, segment_hop=segment_hop)


def pad_utterances(utterances: list[np.ndarray]) -> np.ndarray:
    """Stack utterances of different lengths into one zero-padded batch: the model's input.

    Parameters
    ----------
    utterances : list of np.ndarray [shape=(n_i, ...)]
        Non-empty; every item has the same shape after its first axis
        (segments, or segment embeddings).

    Returns
    -------
    batch : np.ndarray [shape=(len(utterances), max(n_i), ...), dtype=float32]
        Item ``i`` in ``batch[i, :n_i]``, zeros after it (the model masks all-zero steps).
    """
    batch = np.zeros((len(utterances), max(len(item) for item in utterances), *utterances[0].shape[1:]), np.float32)
    for row, item in enumerate(utterances):
        batch[row, : len(item)] = item
    return batch


def feature_parameters(**overrides: Any) -> dict[str, Any]:
    """Every parameter of `get_framed_log_melspectrogram`, defaults updated by ``overrides``.

    This dictionary is what identifies a set of features: the cache keys on it
    and a trained run stores it, so inference recomputes exactly the same input.

    Raises
    ------
    TypeError
        If an override is not a parameter of `get_framed_log_melspectrogram`.
    """
    signature = inspect.signature(get_framed_log_melspectrogram)
    params = {
        name: parameter.default
        for name, parameter in signature.parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise TypeError(f"unknown feature parameter(s) {unknown}; known: {sorted(params)}")
    params.update(overrides)
    return params

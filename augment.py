"""Data enhancement and class balancing for the training files.

An `Enhancement` is one concrete, reproducible change of one utterance: speed
perturbation, a time shift and additive noise at a given SNR. A `SpeakerPerturbation`
changes who seems to speak (pitch and formants), for pseudo-speakers. `draw_enhancement`
picks one at random from the ranges; `enhancement_for` derives it from a seed, the
file's name and a copy number, so the same seed always gives the same enhanced
files (and their cached features) whatever the split or the fold.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

SNR_RANGE_DB = (10.0, 30.0)  # additive white noise, dB below the utterance's power
SPEED_RANGE = (0.9, 1.1)  # speed factor (>1 faster and higher, as Kaldi's speed perturbation)
MAX_SHIFT_SECONDS = 0.25  # silence added (or audio cut) at the start, either way
# Pseudo-speakers (train.py --pseudo-speakers): pitch and formants moved by these many semitones,
# about the spread between two speakers of one sex; each a pseudo-speaker per training speaker.
PSEUDO_SPEAKER_SEMITONES = (-3.0, 3.0, -1.5, 1.5)


def add_noise(y: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise at ``snr_db`` below the signal's mean power.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]
        Mono signal.
    snr_db : float, in dB
        Signal-to-noise ratio. A silent signal (power 0) comes back unchanged.
    rng : np.random.Generator
        Source of the noise.

    Returns
    -------
    y_noisy : np.ndarray [shape=(n,), dtype=float32]
    """
    power = float(np.mean(np.square(y, dtype=np.float64)))
    if power == 0.0:
        return y.astype(np.float32)
    noise = rng.normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), size=y.shape)
    return (y + noise).astype(np.float32)


def change_speed(y: np.ndarray, factor: float, sr: int) -> np.ndarray:
    """Play ``y`` ``factor`` times faster (tempo and pitch together), by resampling.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]
        Mono signal at ``sr``.
    factor : float > 0
        Speed factor; the output has about ``n / factor`` samples.
    sr : int > 0, in Hz

    Returns
    -------
    y_fast : np.ndarray [shape=(round(n / factor),), dtype=float32]
    """
    if factor <= 0:
        raise ValueError(f"speed factor must be > 0, got {factor!r}")
    if factor == 1.0:
        return y.astype(np.float32)
    return soxr.resample(y.astype(np.float32), sr * factor, sr, quality="HQ")


def shift_time(y: np.ndarray, shift: int) -> np.ndarray:
    """Move the audio later by ``shift`` samples (silence in front) or earlier (start cut).

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]
    shift : int, in samples
        Positive prepends ``shift`` zeros; negative drops the first ``-shift``
        samples, always keeping at least one.

    Returns
    -------
    y_shifted : np.ndarray [shape=(n + shift,) or (max(n + shift, 1),), dtype=float32]
    """
    y = y.astype(np.float32)
    if shift >= 0:
        return np.concatenate([np.zeros(shift, dtype=np.float32), y])
    return y[min(-shift, len(y) - 1) :]


@dataclass(frozen=True)
class Enhancement:
    """One reproducible enhancement: speed, then time shift, then noise.

    Attributes
    ----------
    speed : float > 0
        See `change_speed`.
    shift_seconds : float, in seconds
        See `shift_time`.
    snr_db : float, in dB
        See `add_noise`.
    noise_seed : int
        Seed of the noise, so the same Enhancement always gives the same audio.
    """

    speed: float
    shift_seconds: float
    snr_db: float
    noise_seed: int

    def apply(self, y: np.ndarray, sr: int) -> np.ndarray:
        """The enhanced copy of ``y`` (mono at ``sr``), float32."""
        y = change_speed(y, self.speed, sr)
        y = shift_time(y, int(round(self.shift_seconds * sr)))
        return add_noise(y, self.snr_db, np.random.default_rng(self.noise_seed))


@dataclass(frozen=True)
class SpeakerPerturbation:
    """Another-sounding speaker made from a recording: pitch and formants moved together by ``semitones``, the duration kept.

    By resampling (as `change_speed`) and a phase-vocoder time stretch back to the
    original length (librosa.effects.pitch_shift): the spectral envelope moves with the
    pitch, as between a shorter and a longer vocal tract. Every recording of a training
    speaker perturbed alike makes a pseudo-speaker (`pseudo_speaker`) with statistics of its own.

    Attributes
    ----------
    semitones : float
        Up (> 0) or down (< 0).
    """

    semitones: float

    def apply(self, y: np.ndarray, sr: int) -> np.ndarray:
        """The perturbed copy of ``y`` (mono at ``sr``), float32, of the same length."""
        import librosa

        return librosa.effects.pitch_shift(y.astype(np.float32), sr=sr, n_steps=self.semitones, res_type="soxr_hq").astype(np.float32)


def pseudo_speaker(speaker: object, perturbation: SpeakerPerturbation) -> str:
    """The name of the pseudo-speaker ``perturbation`` makes of ``speaker``: ``"7+3st"``."""
    return f"{speaker}{perturbation.semitones:+g}st"


def draw_enhancement(
    rng: np.random.Generator,
    *,
    snr_range_db: Sequence[float] = SNR_RANGE_DB,
    speed_range: Sequence[float] = SPEED_RANGE,
    max_shift_seconds: float = MAX_SHIFT_SECONDS,
) -> Enhancement:
    """A random `Enhancement` with every value uniform in its range."""
    return Enhancement(
        speed=float(rng.uniform(*speed_range)),
        shift_seconds=float(rng.uniform(-max_shift_seconds, max_shift_seconds)),
        snr_db=float(rng.uniform(*snr_range_db)),
        noise_seed=int(rng.integers(2**31)),
    )


def enhancement_for(path: str | Path, copy: int, seed: int) -> Enhancement:
    """The enhancement of copy number ``copy`` of ``path`` under ``seed``.

    Depends on the file's name (not its folder), the copy number and the seed only.
    """
    name_hash = zlib.crc32(Path(path).name.encode())
    return draw_enhancement(np.random.default_rng([seed, name_hash, copy]))


def oversampling_copies(labels: Sequence[str], seed: int, *, copies_per_file: int = 1) -> list[int]:
    """Indices to copy so that every class reaches the majority class's count.

    Copies of a class go round its files in a seeded random order, so files are
    copied as evenly as possible (no file twice before every file once).

    Parameters
    ----------
    labels : sequence of str
        Label of each file.
    seed : int
        Seed of the order in which a class's files are copied.
    copies_per_file : int >= 1
        How many times each file already stands in the training set (the file
        and its enhanced copies); every class is brought to the majority's
        count times this, so the balance holds after enhancement.

    Returns
    -------
    indices : list of int
        Indices into ``labels``, one per extra copy, a file repeated when it needs
        several copies.
    """
    if copies_per_file < 1:
        raise ValueError(f"copies_per_file must be >= 1, got {copies_per_file!r}")
    counts = Counter(labels)
    if not counts:
        return []
    majority = max(counts.values())
    rng = np.random.default_rng(seed)
    copies = []
    for label in sorted(counts):
        members = [index for index, value in enumerate(labels) if value == label]
        order = rng.permutation(members)
        copies += [int(order[k % len(order)]) for k in range((majority - counts[label]) * copies_per_file)]
    return copies


def class_weights(labels: Sequence[int]) -> dict[int, float]:
    """Keras ``class_weight`` that gives every class the same total weight ("balanced")."""
    from sklearn.utils.class_weight import compute_class_weight

    classes = np.unique(labels)
    weights = compute_class_weight("balanced", classes=classes, y=np.asarray(labels))
    return {int(label): float(weight) for label, weight in zip(classes, weights)}

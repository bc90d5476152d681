"""Shared helpers: every test makes the audio it needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def tone(frequency: float, seconds: float, sr: int = 16000, amplitude: float = 0.5) -> np.ndarray:
    """A float32 sine of ``frequency`` Hz, ``seconds`` long at ``sr``."""
    t = np.arange(int(round(seconds * sr))) / sr
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def ravdess_name(emotion: int, actor: int, channel: int = 1, intensity: int = 1, statement: int = 1,
                 repetition: int = 1, extension: str = ".wav") -> str:
    """A RAVDESS file name: ``03-<channel>-<emotion>-<intensity>-<statement>-<repetition>-<actor>``."""
    return f"03-{channel:02d}-{emotion:02d}-{intensity:02d}-{statement:02d}-{repetition:02d}-{actor:02d}{extension}"


def write_ravdess(folder: Path, actors, emotions, files: int = 2, seconds: float = 0.8) -> list[Path]:
    """A small RAVDESS tree (``Actor_XX/`` folders) of tones whose pitch tells the emotion, with noise.

    ``files`` (1..4) per actor and emotion, as statements 01-02 times repetitions 01-02;
    lengths grow with the file number, so utterances have different segment counts.
    """
    rng = np.random.default_rng(0)
    paths = []
    for actor in actors:
        for emotion in emotions:
            for number in range(files):
                y = tone(150 * emotion + 10 * actor, seconds + 0.35 * number, amplitude=0.3)
                y += 0.01 * rng.standard_normal(len(y)).astype(np.float32)
                name = ravdess_name(emotion, actor, statement=number // 2 + 1, repetition=number % 2 + 1)
                path = folder / f"Actor_{actor:02d}" / name
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, y, 16000)
                paths.append(path)
    return paths


@pytest.fixture
def write_audio(tmp_path: Path):
    """Write a signal to ``tmp_path/name`` with soundfile and return the path."""

    def write(name: str, y: np.ndarray, sr: int = 16000, subtype: str | None = None) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, y, sr, subtype=subtype)
        return path

    return write

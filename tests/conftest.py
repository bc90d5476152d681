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


@pytest.fixture
def write_audio(tmp_path: Path):
    """Write a signal to ``tmp_path/name`` with soundfile and return the path."""

    def write(name: str, y: np.ndarray, sr: int = 16000, subtype: str | None = None) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, y, sr, subtype=subtype)
        return path

    return write

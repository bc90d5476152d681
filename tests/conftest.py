"""Shared helpers: every test makes the audio it needs."""

from __future__ import annotations

import types
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


def run_cli(main, argv, capsys) -> tuple[int, str, str]:
    """A command line's ``main`` on ``argv`` (any objects, as strings): its exit code, stdout and stderr."""
    code = main([str(part) for part in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True)
def no_pretrained_model(tmp_path_factory, monkeypatch):
    """No shipped pretrained model: a test without a run of its own must not get the repository's (tests that want one make one)."""
    import runs

    monkeypatch.setattr(runs, "PRETRAINED", tmp_path_factory.getbasetemp() / "no-pretrained-model")


@pytest.fixture
def no_accelerator(monkeypatch):
    """A machine without GPUs or TPUs, whatever this one has: the defaults that depend on them, as on a CPU."""
    import devices

    monkeypatch.setattr(devices, "accelerators", lambda: 0)


@pytest.fixture
def write_audio(tmp_path: Path):
    """Write a signal to ``tmp_path/name`` with soundfile and return the path."""

    def write(name: str, y: np.ndarray, sr: int = 16000, subtype: str | None = None) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, y, sr, subtype=subtype)
        return path

    return write


# The shared run's feature parameters differ from the defaults, so that tests can tell
# whether a run records, and inference applies, the parameters it was trained with.
SHARED_RUN_FEATURES = {"top_db": 40.0, "preemphasis": 0.5}
SHARED_RUN_LABELS = ["neutral", "sad", "angry"]  # RAVDESS emotions 1, 4 and 5, in the corpus's order


def folder_state(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: to show that a folder was only read."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory):
    """One tiny frozen run of train.py, trained once for every test that needs a trained run.

    Actors 1-4 with three emotions (two files each) and one corrupt file of actor 1;
    test actor 4, validation actor 3; a tiny backbone on the 64x64 segments; the
    feature parameters of `SHARED_RUN_FEATURES`. Its ONNX export is made at once, as
    infer.py's first use makes it (tests/test_export.py tests that use on a run of its own),
    so the tests' copies of the run carry it instead of each exporting again.
    """
    import export
    import train
    from tiny_model import TINY_BACKBONE_OPTIONS, tiny_backbone
    from recipe import Options
    from utils import DEFAULT_FEATURES

    root = tmp_path_factory.mktemp("shared_run")
    corpus = root / "dataset"
    write_ravdess(corpus, actors=(1, 2, 3, 4), emotions=(1, 4, 5))
    bad = corpus / "Actor_01" / ravdess_name(5, 1, statement=2, repetition=2)
    bad.write_bytes(b"RIFF\x00\x00not really a wave file")
    before = folder_state(corpus)
    options = Options(
        epochs=2, dataset=str(corpus), test_speakers=[4], val_speakers=[3], backbone_mode="frozen", weights="none",
        batch_size=4, learning_rate=1e-3, output=str(root / "runs"), cache_dir=str(root / "cache"), download=False,
        **TINY_BACKBONE_OPTIONS,
        augment=True,  # the enhancement path too (off by default)
        prosody_weight="choose",  # the weight chosen on the validation speakers (a fixed one by default)
        speaker_norm=False,  # its test predictions are the exported model's (infer's speaker-norm modes have their own run)
        features=DEFAULT_FEATURES.replace(**SHARED_RUN_FEATURES),
    )
    folder = train.run(options, backbone=lambda: tiny_backbone((64, 64, 3)))
    export.load_exported_run(folder, "onnxruntime")
    return types.SimpleNamespace(folder=folder, corpus=corpus, corpus_before=before, bad_file=bad, options=options)


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory) -> Path:
    """A tiny frozen run without the prosodic branch (--prosody none): a model with one input, as runs before the branch."""
    import train
    from tiny_model import TINY_BACKBONE_OPTIONS, tiny_backbone
    from recipe import Options

    root = tmp_path_factory.mktemp("plain_run")
    write_ravdess(root / "dataset", actors=(1, 2, 3), emotions=(1, 4, 5))
    options = Options(
        epochs=1, dataset=str(root / "dataset"), test_speakers=[3], val_speakers=[2], weights="none", batch_size=4,
        output=str(root / "runs"), cache_dir=str(root / "cache"), download=False, prosody="none", **TINY_BACKBONE_OPTIONS,
    )
    return train.run(options, backbone=lambda: tiny_backbone((64, 64, 3)))


@pytest.fixture(scope="session")
def speaker_norm_run(tmp_path_factory) -> Path:
    """A tiny frozen run trained with --speaker-norm, shared by infer's and evaluate's normalisation tests."""
    import train
    from tiny_model import TINY_BACKBONE_OPTIONS, tiny_backbone
    from recipe import Options

    root = tmp_path_factory.mktemp("speaker_norm_run")
    write_ravdess(root / "dataset", actors=(1, 2, 3, 4), emotions=(1, 4, 5))
    options = Options(
        epochs=2, dataset=str(root / "dataset"), test_speakers=[4], val_speakers=[3], backbone_mode="frozen",
        weights="none", batch_size=4, learning_rate=1e-3, output=str(root / "runs"), cache_dir=str(root / "cache"),
        download=False, augment=False, speaker_norm=True, **TINY_BACKBONE_OPTIONS,
    )
    return train.run(options, backbone=lambda: tiny_backbone((64, 64, 3)))

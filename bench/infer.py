"""Benchmark: files per second of inference on a folder, infer.py against the plain approach.

(a) plain: per file: features, cut or padded to a fixed 8 segments, one model.predict
    call on the Keras model (what the original repository's inference meant to do).
(b) ours: infer.predict on the folder: the run's model (one graph traced once), windows of
    similar length batched together, features computed in threads ahead of the model.
(c) ours as (b) with --precision bfloat16 (CPUs with bf16 units gain).
(d) ours as (b), train.py's default recipe: EfficientNet-Lite0 at 224x224, every
    stage's output, the statistics head, the permissive prosodic set of each window.
(e) ours as (d) with --speaker-norm folder (each folder's embeddings standardised with
    its own statistics).
(f) ours as (b), the fast recipe: EfficientNet-Lite0 at 64x64, every stage, statistics head,
    the permissive prosodic set.
(g) ours as (d) with --runtime onnxruntime: the run's ONNX export, one window's audio a call.
(h) ours as (d) with --runtime litert: the run's LiteRT export.
(i) ours as (d) with --runtime openvino: (g)'s ONNX export run by OpenVINO, in float32 and
    with --precision bfloat16 (the whole graph in bf16 on CPUs with bf16 units).
(j) ours as (d) with the segments resized to 96, 128 and 160 pixels instead of 224
    (train.py --image-size), with (g)'s runtime at 160 too.
Then the NumPy front end's share: seconds per file of `utils.get_framed_log_melspectrogram`
on one thread, against (d)'s seconds per file (infer computes it in threads beside the model).

All analyse every file from audio to emotion; (b)-(f) read all of each file where (a)
stops at 8 segments (2.9 s). (a)-(c) run a ResNet50V2 model at 64x64 (the paper's
model); every model has random weights (the speed is the same as a trained one's);
loading is not timed. The exported artefacts are timed by bench/export.py.

    python bench/infer.py [--data ../shared/data/ravdess-mini] [--plain-files 40]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # the project's modules, and bench.model

# Keras loads where a model is made or run: -h answers without it.
import export  # noqa: E402
import infer  # noqa: E402
import runs  # noqa: E402
import utils  # noqa: E402
from bench.model import RECIPES, describe, fixed_length  # noqa: E402
from corpora.ravdess import RAVDESS  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ravdess-mini"
IMAGE_SIZES = (96, 128, 160)  # (j): the default recipe's segments resized to these instead of 224; the last also through ONNX Runtime


def export_run(folder: Path, **recipe) -> Path:
    """A run folder of ``SpeechModel.create_model(weights=None, **recipe)``."""
    from SpeechModel import SpeechModel

    folder.mkdir()
    runs.write_model(folder, SpeechModel.create_model(weights=None, **recipe), list(RAVDESS.labels))
    return folder


def time_plain(run: Path, files: list[Path]) -> float:
    import keras

    model = keras.models.load_model(run / "model.keras", compile=False)
    model.predict(fixed_length(utils.get_framed_log_melspectrogram(files[0])), verbose=0)  # trace once, not timed
    start = time.perf_counter()
    for path in files:
        model.predict(fixed_length(utils.get_framed_log_melspectrogram(path)), verbose=0)
    return time.perf_counter() - start


def time_ours(run: runs.Run, files: list[Path], speaker_norm: str = "none", runtime: str = "keras", precision: str = "float32") -> float:
    settings = dict(progress=False, speaker_norm=speaker_norm, runtime=runtime, precision=precision)
    infer.predict(files[:2], run, **settings)  # warm up (and export), not timed
    start = time.perf_counter()
    predictions = infer.predict(files, run, **settings)
    seconds = time.perf_counter() - start
    assert all(p.error is None for p in predictions), [p.error for p in predictions if p.error]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of audio files (default: %(default)s)")
    parser.add_argument("--plain-files", type=int, default=40, help="files timed in (a), the slow one (default: %(default)s)")
    args = parser.parse_args()
    try:
        files = infer.audio_files([args.data])
    except infer.InferenceError as error:
        parser.exit(1, f"error: {error}\n")
    folder = Path(tempfile.mkdtemp())
    try:
        run_dir = export_run(folder / "run")
        plain = args.plain_files / time_plain(run_dir, files[: args.plain_files])
        keras_model = len(files) / time_ours(runs.load_run(run_dir), files)
        bfloat16 = len(files) / time_ours(runs.load_run(run_dir, precision="bfloat16"), files)
        default_dir = export_run(folder / "default", **RECIPES["default"].architecture())
        default = len(files) / time_ours(runs.load_run(default_dir), files)
        # A run trained with --speaker-norm: the same model, its options saying so.
        trained_with_norm = runs.load_run(default_dir)
        trained_with_norm.speaker_norm = True
        default_folder_norm = len(files) / time_ours(trained_with_norm, files, speaker_norm="folder")
        fast = len(files) / time_ours(runs.load_run(export_run(folder / "fast", **RECIPES["fast"].architecture())), files)
        onnx = len(files) / time_ours(runs.load_run(default_dir), files, runtime="onnxruntime")
        litert = len(files) / time_ours(runs.load_run(default_dir), files, runtime="litert")
        openvino = {
            precision: len(files) / time_ours(runs.load_run(default_dir), files, runtime="openvino", precision=precision)
            for precision in export.OPENVINO_PRECISIONS
        }
        sizes = {}
        for size in IMAGE_SIZES:
            size_dir = export_run(folder / f"size{size}", **dataclasses.replace(RECIPES["default"], image_size=size).architecture())
            sizes[size] = len(files) / time_ours(runs.load_run(size_dir), files)
        size_onnx = len(files) / time_ours(runs.load_run(size_dir), files, runtime="onnxruntime")
        start = time.perf_counter()
        for path in files:
            utils.get_framed_log_melspectrogram(path)
        front_end = (time.perf_counter() - start) / len(files)
    finally:
        shutil.rmtree(folder)
    import keras

    cores = len(os.sched_getaffinity(0))
    print(
        f"inference: {len(files)} files ({args.data}), {cores} cores, "
        f"Keras {keras.__version__} on {keras.backend.backend()}"
    )
    print(f"{'approach':<84}{'files/s':>9}{'vs (a)':>8}")
    for name, rate in [
        ("(a) plain: per file features, fixed 8 segments, model.predict", plain),
        (f"(b) ours: infer.predict, {infer.BATCH_WINDOWS} windows/batch", keras_model),
        ("(c) ours as (b), --precision bfloat16", bfloat16),
        (f"(d) ours as (b), default recipe: {describe(RECIPES['default'])}", default),
        ("(e) ours as (d), --speaker-norm folder", default_folder_norm),
        (f"(f) ours as (b), fast recipe: {describe(RECIPES['fast'])}", fast),
        ("(g) ours as (d), --runtime onnxruntime", onnx),
        ("(h) ours as (d), --runtime litert", litert),
        *[(f"(i) ours as (d), --runtime openvino --precision {precision}", rate) for precision, rate in openvino.items()],
        *[(f"(j) ours as (d) at {size}x{size}", sizes[size]) for size in IMAGE_SIZES],
        (f"(j) ours as (d) at {IMAGE_SIZES[-1]}x{IMAGE_SIZES[-1]}, --runtime onnxruntime", size_onnx),
    ]:
        print(f"{name:<84}{rate:>9.1f}{rate / plain:>7.1f}x")
    print(f"front end (NumPy, one thread): {1000 * front_end:.0f} ms per file, {front_end * default:.0%} of (d)'s time per file")


if __name__ == "__main__":
    main()

"""Benchmark: the exported artefacts of a run, each in a plain loop of its own runtime, beside infer.py.

For each format of export.py (SavedModel, ONNX, LiteRT): the artefact's size, the largest
difference of its probabilities to the Keras model's (`runs.Run.predict_waveform`) and to
infer.py's (`inference.predict`, the NumPy front end) over the folder, and files per second of a plain loop that a user without this project would write:
read the file with soundfile, resample to 16 kHz with soxr, one call of the runtime on the whole
recording. Beside them, in the same run: infer.py on the folder (`inference.predict`) and the plain
per-file approach of the original repository (features, a fixed 8 segments, model.predict).
Loading and the first call are not timed. ONNX Runtime and LiteRT use every core.

    python bench/export.py RUN [--data ../shared/data/ravdess-mini]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # the project's modules, and bench.model

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ravdess-mini"


def read_16k(path: Path):
    """What a user's loop does: soundfile, mono, soxr to 16 kHz."""
    import numpy as np
    import soundfile as sf
    import soxr

    y, sr = sf.read(path, dtype="float32", always_2d=True)
    y = y.mean(axis=1)
    return np.ascontiguousarray(soxr.resample(y, sr, 16000) if sr != 16000 else y, dtype=np.float32)


def size_mb(path: Path) -> float:
    return (sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="RUN", type=Path, help="a run folder of train.py")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of audio files (default: %(default)s)")
    parser.add_argument("--plain-files", type=int, default=40, help="files timed for the plain approach (default: %(default)s)")
    args = parser.parse_args()

    import keras
    import numpy as np

    import export
    import inference
    import runs
    import utils
    from bench.model import fixed_length

    files = inference.audio_files([args.data])
    run = runs.load_run(args.model)
    audio = [read_16k(path) for path in files]
    expected = [run.predict_waveform(y, 16000, utils.WINDOW_SECONDS)[1] for y in audio]
    inferred = [np.array(list(p.probabilities.values())) for p in inference.predict(files, run, progress=False)]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for export_format, (_, name, _) in export.FORMATS.items():
            folder = Path(scratch) / export_format
            export.export(run, export_format, folder)
            call = export.load_artefact(folder, export_format)
            served = [call(y) for y in audio]
            difference = max(float(np.abs(got - want).max()) for got, want in zip(served, expected))
            to_infer = max(float(np.abs(got - want).max()) for got, want in zip(served, inferred))
            start = time.perf_counter()
            for path in files:
                call(read_16k(path))
            rows.append((f"{export_format}: a plain loop, {name}", size_mb(folder / name), difference, to_infer, len(files) / (time.perf_counter() - start)))
    inference.predict(files[:2], run, progress=False)  # traced once, not timed
    start = time.perf_counter()
    inference.predict(files, run, progress=False)
    rows.append(("ours: inference.predict on the folder (model.keras)", None, None, None, len(files) / (time.perf_counter() - start)))
    plain_files = files[: args.plain_files]
    model = keras.models.load_model(args.model / runs.MODEL_KERAS, compile=False)
    model.predict(fixed_length(utils.get_framed_log_melspectrogram(plain_files[0], run.features)), verbose=0)
    start = time.perf_counter()
    for path in plain_files:
        model.predict(fixed_length(utils.get_framed_log_melspectrogram(path, run.features)), verbose=0)
    plain = len(plain_files) / (time.perf_counter() - start)
    rows.append(("plain: per file features, fixed 8 segments, model.predict", None, None, None, plain))

    print(f"exported artefacts of {args.model.name}: {len(files)} files ({args.data}), {len(os.sched_getaffinity(0))} cores, "
          f"Keras {keras.__version__} on {keras.backend.backend()}")
    print(f"{'approach':<62}{'size MB':>9}{'vs Keras':>10}{'vs infer':>10}{'files/s':>9}{'vs plain':>10}")
    for label, size, difference, to_infer, rate in rows:
        cells = ["-" if value is None else f"{value:.1e}" for value in (difference, to_infer)]
        size_text = "-" if size is None else f"{size:.1f}"
        print(f"{label:<62}{size_text:>9}{cells[0]:>10}{cells[1]:>10}{rate:>9.1f}{rate / plain:>9.1f}x")


if __name__ == "__main__":
    main()

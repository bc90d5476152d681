"""Benchmark: peak memory (RSS) of inference on one file, infer.py against the plain approach.

(a) plain: load model.keras, the file's features cut or padded to a fixed 8 segments, one
    model.predict call (what the original repository meant to do; it reads 2.9 s of any file).
(b) ours: ``python infer.py FILE --model RUN``, the whole file in windows: by default the
    run's ONNX export in ONNX Runtime, without TensorFlow (exported once beforehand, by
    export.py in a process of its own, which is not measured here); and with ``--runtime
    keras``, the run's model.keras, at most `inference.BATCH_SEGMENTS` segments per model call.
(c) the floor under the Keras rows: importing Keras (TensorFlow) and loading the run, no audio.

Each row is one fresh process (peak resident set size from the kernel, ``wait4``), for
generated files of 3.4 s, 2 min and 30 min, with train.py's default recipe
(EfficientNet-Lite0 at 224x224, every stage, the statistics head; random weights: the
memory is the same as a trained model's).

    python bench/memory.py [--minutes 0.057 2 30]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # the project's modules, and bench.model

PLAIN = """
import sys
import keras, numpy as np
sys.path[0] = {root!r}
import utils
import SpeechModel  # registers the model's classes for load_model
from bench.model import fixed_length
model = keras.models.load_model({run!r} + "/model.keras", compile=False)
inputs = fixed_length(utils.get_framed_log_melspectrogram({file!r}))
if len(model.inputs) > 1:  # the recipe's prosodic branch: a vector of zeros (the plain approach computes none)
    inputs = [inputs, np.zeros((1, model.inputs[1].shape[1]), np.float32)]
model.predict(inputs, verbose=0)
"""
FLOOR = """
import sys
sys.path[0] = {root!r}
import runs
runs.load_run({run!r})
"""


# Runs a script (path and arguments) or code (-c CODE) and, as it exits, writes its own peak RSS (VmHWM, KiB) to a file.
# The kernel's figure for a child (wait4's ru_maxrss) starts from the parent's resident memory at the fork, this
# process's own TensorFlow included; VmHWM counts from the new program's start.
MEASURED = """
import atexit, runpy, sys
def record(path=sys.argv[1]):
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(path, "w") as out:
        out.write(peak)
atexit.register(record)
target, sys.argv = sys.argv[2], sys.argv[2:]
if target == "-c":
    exec(compile(sys.argv[1], "<row>", "exec"), {"__name__": "__main__"})
else:
    runpy.run_path(target, run_name="__main__")
"""


def peak_rss(command: list[str]) -> tuple[float, float]:
    """Peak resident memory in MB and wall seconds of ``command`` (a script and its arguments, or -c CODE) run as a fresh Python process."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as errors, tempfile.NamedTemporaryFile("r") as peak:  # errors to a file: a pipe read only at the end can fill and block
        done = subprocess.run([sys.executable, "-c", MEASURED, peak.name, *command], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=errors)
        if done.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"{' '.join(command)} failed: {errors.read().decode()[-2000:]}")
        return int(peak.read()) / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[3.4 / 60, 2, 30], help="lengths of the generated files (default: %(default)s)")
    args = parser.parse_args()

    import numpy as np
    import soundfile as sf

    import export
    import inference
    import runs
    from bench.model import RECIPES, describe
    from corpora.ravdess import RAVDESS
    from SpeechModel import SpeechModel
    from utils import DEFAULT_FEATURES

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        run = folder / "run"
        run.mkdir()
        model = SpeechModel.create_model(len(RAVDESS.labels), weights=None, **RECIPES["default"].architecture())
        runs.write_model(run, model, list(RAVDESS.labels))
        rng = np.random.default_rng(0)
        export.load_exported_run(run, "onnxruntime")  # made once, as infer.py's first call makes it
        floor = FLOOR.format(root=str(ROOT), run=str(run))
        rows = [("(c) floor: import Keras, load the run", "-", *peak_rss(["-c", floor]))]
        for minutes in args.minutes:
            seconds = minutes * 60
            t = np.arange(int(seconds * DEFAULT_FEATURES.sr)) / DEFAULT_FEATURES.sr
            y = 0.3 * np.sin(2 * np.pi * (200 + 50 * np.sin(t)) * t) + 0.01 * rng.standard_normal(len(t))
            audio = folder / f"{seconds:.0f}s.wav"
            sf.write(audio, y.astype(np.float32), DEFAULT_FEATURES.sr)
            length = f"{seconds:.1f} s" if seconds < 60 else f"{minutes:g} min"
            plain = PLAIN.format(root=str(ROOT), run=str(run), file=str(audio))
            rows.append(("(a) plain: fixed 8 segments, model.predict", length, *peak_rss(["-c", plain])))
            ours = [str(ROOT / "infer.py"), str(audio), "--model", str(run)]
            rows.append(("(b) ours: infer.py (ONNX Runtime, no TensorFlow)", length, *peak_rss(ours)))
            rows.append(("(b) ours: infer.py --runtime keras", length, *peak_rss([*ours, "--runtime", "keras"])))
            audio.unlink()

    import keras

    print(f"peak memory of inference on one file, {len(os.sched_getaffinity(0))} cores, Keras {keras.__version__} on "
          f"{keras.backend.backend()}, {describe(RECIPES['default'])}, at most {inference.BATCH_SEGMENTS} segments per model call")
    print(f"{'process':<52}{'file':>10}{'peak RSS MB':>13}{'wall s':>9}")
    for name, length, megabytes, wall in rows:
        print(f"{name:<52}{length:>10}{megabytes:>13.0f}{wall:>9.1f}")


if __name__ == "__main__":
    main()

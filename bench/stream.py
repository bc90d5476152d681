"""Benchmark: compute per hop of a live stream, as a fraction of the hop (goal: below 0.1), beside the plain approach.

(a) plain: every hop, the original repository's way on the last window: features, cut or padded
    to a fixed 8 segments, one model.predict call (the default recipe without the prosodic branch).
(b) ours: stream.predict_stream, train.py's default recipe (EfficientNet-Lite0 at 224x224, every
    stage, statistics head), with the running speaker normalisation.
(c) ours as (b), the fast recipe (64x64).

Both see the last `stream.WINDOW_SECONDS` of generated speech-like audio every `stream.HOP_SECONDS`;
the first hops (tracing) are not timed. Models have random weights: the speed is a trained one's.
What a user waits for a line is the hop (audio gathered) plus this compute.

    python bench/stream.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # the project's modules, and bench.model

WARM_UP = 3  # hops not timed: the first calls trace the graphs


def speech_like(seconds: float):
    import numpy as np

    t = np.arange(int(seconds * 16000)) / 16000
    pitch = 150 + 50 * np.sin(2 * np.pi * 0.5 * t)
    y = sum(np.sin(2 * np.pi * np.cumsum(k * pitch) / 16000) / k for k in range(1, 6))
    return (0.2 * y * (np.sin(2 * np.pi * 0.9 * t) > -0.5) + 0.002 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)


def hops(y, seconds: float):
    step = int(seconds * 16000)
    return [y[start : start + step] for start in range(0, len(y), step)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the generated stream (default: %(default)s)")
    args = parser.parse_args()

    import keras
    import numpy as np

    import runs
    import stream
    import utils
    from bench.model import RECIPES, describe, fixed_length
    from SpeechModel import SpeechModel

    y = speech_like(args.seconds)
    chunks = hops(y, stream.HOP_SECONDS)
    window = int(stream.WINDOW_SECONDS * 16000)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in ("default", "fast"):
            folder = Path(scratch) / name
            folder.mkdir()
            model = SpeechModel.create_model(8, weights=None, **RECIPES[name].architecture())
            model.speaker_normalization.adapt(np.random.default_rng(0).normal(size=(50, model.encoder.features)).astype(np.float32))
            runs.write_model(folder, model, [f"class{index}" for index in range(8)])
            run = runs.load_run(folder)
            if name == "default":
                # The original repository's model had no prosodic branch: the default recipe without it.
                plain_model = SpeechModel.create_model(8, weights=None, **dataclasses.replace(RECIPES[name], prosody="none").architecture())
                seconds = []
                for index in range(len(chunks)):
                    end = min((index + 1) * len(chunks[0]), len(y))
                    start = time.perf_counter()
                    plain_model.predict(fixed_length(utils.get_framed_log_melspectrogram(y[max(0, end - window) : end])), verbose=0)
                    seconds.append(time.perf_counter() - start)
                rows.append(("(a) plain: last window, fixed 8 segments, model.predict", seconds[WARM_UP:]))
            seconds = []
            start = time.perf_counter()
            for _ in stream.predict_stream(chunks, run, 16000, speaker_norm="running"):
                seconds.append(time.perf_counter() - start)
                start = time.perf_counter()
            label = "(b) ours: stream.predict_stream, default recipe" if name == "default" else "(c) ours: fast recipe"
            rows.append((f"{label}: {describe(RECIPES[name])}", seconds[WARM_UP:]))

    print(f"stream: {args.seconds:g} s of audio, a line every {stream.HOP_SECONDS:g} s over the last {stream.WINDOW_SECONDS:g} s, "
          f"{len(os.sched_getaffinity(0))} cores, Keras {keras.__version__} on {keras.backend.backend()}")
    print(f"{'approach':<96}{'mean s/hop':>11}{'max':>7}{'of hop':>8}")
    for label, seconds in rows:
        mean = float(np.mean(seconds))
        print(f"{label:<96}{mean:>11.3f}{max(seconds):>7.3f}{mean / stream.HOP_SECONDS:>8.2f}")


if __name__ == "__main__":
    main()

"""Benchmark: files per second of feature extraction, ours against the plain approach.

(a) plain: what the original repository did, one file at a time: librosa.load at
    librosa's default 22 050 Hz, first 3 s, tf.signal STFT / Mel / log, circular
    one-step "deltas", tf.signal.frame (DESIGN section 7; our own rewrite of it).
(b) ours, empty cache: features.extract_features on every core, writing the cache.
(c) ours, full cache: the same call again, reading the cache.
(d) ours, the NumPy path in one process: load_wav + utils.get_framed_log_melspectrogram per file.
(e) ours, the front end inside the model (frontend.LogMelFrontEnd, what the exports run):
    load_wav, then one traced graph call per file, in one process.

Each approach runs in a fresh Python process with its libraries imported before the
clock starts; worker start-up of (b) is timed. Every timing reads every value of
every returned array, so lazily mapped cache files pay for their reads.

    python bench/features.py [--data ../shared/data/ravdess-mini] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ravdess-mini"


def touch_all(arrays) -> float:
    return float(sum(float(array.sum()) for array in arrays))


def time_plain(files: list[str], repeats: int) -> list[float]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import librosa
    import numpy as np
    import tensorflow as tf

    def plain_features(path: str) -> np.ndarray:
        y, sr = librosa.load(path, mono=True, duration=3)
        y = np.append(y[0], y[1:] - 0.97 * y[:-1])
        stft = tf.signal.stft(y, frame_length=551, frame_step=220, fft_length=1024, window_fn=tf.signal.hamming_window)
        mel_matrix = tf.signal.linear_to_mel_weight_matrix(64, 513, sr, 20.0, 8000.0)
        log_mel = tf.math.log(tf.tensordot(tf.abs(stft), mel_matrix, 1) + 1e-6)
        delta = log_mel - tf.roll(log_mel, -1, axis=0)
        delta2 = delta - tf.roll(delta, -1, axis=0)
        return tf.signal.frame(tf.stack([log_mel, delta, delta2], axis=-1), 64, 32, axis=0).numpy()

    plain_features(files[0])  # TensorFlow's first-op set-up is not counted
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        touch_all(plain_features(path) for path in files)
        rates.append(len(files) / (time.perf_counter() - start))
    return rates


def time_ours(files: list[str], repeats: int, workers: int | None) -> dict[str, list[float]]:
    sys.path.insert(0, str(ROOT))
    from features import extract_features

    rates: dict[str, list[float]] = {"empty": [], "full": []}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache_dir:
            for state in ("empty", "full"):
                start = time.perf_counter()
                result = extract_features(files, cache_dir=cache_dir, workers=workers, progress=False)
                touch_all(result.segments.values())
                rates[state].append(len(files) / (time.perf_counter() - start))
                if len(result.segments) != len(files):
                    raise SystemExit(f"only {len(result.segments)} of {len(files)} files: {result.errors}")
    return rates


def time_one_process(files: list[str], repeats: int) -> dict[str, list[float]]:
    """Files per second of the NumPy path and of the in-graph front end, each on its own, one file at a time."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT))
    import numpy as np

    import frontend
    import utils
    from SpeechModel import SpeechModel

    layer = frontend.LogMelFrontEnd()
    graph = SpeechModel.inference_function(layer, (None,))
    approaches = {
        "numpy": lambda path: utils.get_framed_log_melspectrogram(utils.load_wav(path)),
        "graph": lambda path: graph(utils.load_wav(path)[np.newaxis]),
    }
    approaches["graph"](files[0])  # traced once, not timed
    rates: dict[str, list[float]] = {name: [] for name in approaches}
    for _ in range(repeats):
        for name, compute in approaches.items():
            start = time.perf_counter()
            touch_all(compute(path) for path in files)
            rates[name].append(len(files) / (time.perf_counter() - start))
    return rates


def run_in_fresh_process(approach: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--approach", approach, "--data", str(args.data), "--repeats", str(args.repeats)]
    if args.workers:
        command += ["--workers", str(args.workers)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of audio files (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per approach; the median is shown (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes for ours (default: every core)")
    parser.add_argument("--approach", choices=["plain", "ours", "one-process"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from utils import find_audio_files

    files = [str(path) for path in find_audio_files(args.data)]
    if not files:
        parser.exit(1, f"error: no audio files under {args.data}\n")

    if args.approach == "plain":
        print(json.dumps({"plain": time_plain(files, args.repeats)}))
        return
    if args.approach == "ours":
        print(json.dumps(time_ours(files, args.repeats, args.workers)))
        return
    if args.approach == "one-process":
        print(json.dumps(time_one_process(files, args.repeats)))
        return

    plain = statistics.median(run_in_fresh_process("plain", args)["plain"])
    ours = run_in_fresh_process("ours", args)
    one = run_in_fresh_process("one-process", args)
    cores = len(os.sched_getaffinity(0))
    print(f"features: {len(files)} files of {args.data}, {cores} cores, median of {args.repeats} passes")
    print(f"{'approach':<44}{'files/s':>10}{'vs (a)':>9}")
    rows = [
        ("(a) plain: per-file librosa.load + tf.signal", plain),
        ("(b) ours: all cores, empty cache", statistics.median(ours["empty"])),
        ("(c) ours: full cache", statistics.median(ours["full"])),
        ("(d) ours: NumPy path, one process, no cache", statistics.median(one["numpy"])),
        ("(e) ours: in-graph front end, one process", statistics.median(one["graph"])),
    ]
    for name, rate in rows:
        print(f"{name:<44}{rate:>10.1f}{rate / plain:>8.1f}x")


if __name__ == "__main__":
    main()

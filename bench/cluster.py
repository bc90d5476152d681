"""Benchmark: infer.py --engine ray against this machine's engine, in the same run: files/s, start-up and the cost per file.

(a) local: `inference.predict`, what infer.py runs by default (the run's ONNX export with ONNX Runtime,
    windows read in threads, every core).
(b) ray, 1 worker and (c) 2 workers: `inference.predict_on_cluster` on an embedded Ray of this machine,
    each worker loading the export once, results appended to a JSON lines file as they come.

For Ray: the whole run's files/s (Ray's start included), its start-up (from the call to the first
call's results, less that call's own work at the steady rate), the steady files/s after the first
results, and the cost per file over the local engine's (steady seconds per file, less the local
engine's, times the workers: the work each file adds on a worker). On one machine Ray can only
add cost; what it buys is more machines (`ray start --address` on each, then --address).

    python bench/cluster.py [--model RUN] [--data FOLDER] [--files 48]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a Ray of this machine only: no token to share
ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # the project's modules, and bench.stream

import inference  # noqa: E402
import results  # noqa: E402


class TimedLog(results.ResultLog):
    """A JSON lines log that notes when each call's results arrive."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "jsonl")
        self.arrivals: list[tuple[float, int]] = []

    def append(self, records: list[dict]) -> None:
        super().append(records)
        self.arrivals.append((time.perf_counter(), len(records)))


def generated_files(folder: Path, count: int) -> list[Path]:
    """``count`` speech-like recordings of 2.5-4.5 s (harmonics on a moving pitch, pauses, a little noise)."""
    import soundfile

    from bench.stream import speech_like

    y = speech_like(4.5 * count)
    paths = []
    for index in range(count):
        seconds = 2.5 + 2.0 * (index % 5) / 4
        path = folder / f"clip{index:03d}.wav"
        soundfile.write(path, y[int(index * 4.5 * 16000) :][: int(seconds * 16000)], 16000)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="run folder (default: the newest run, else the pretrained model)")
    parser.add_argument("--data", default=None, help="a folder of audio files (default: --files generated ones)")
    parser.add_argument("--files", type=int, default=48, help="how many files to generate without --data (default: %(default)s)")
    args = parser.parse_args()

    import runs

    folder = Path(args.model) if args.model else runs.newest_run_folder()
    run = inference.load(folder, "onnxruntime")  # exports once where missing, before anything is timed
    with tempfile.TemporaryDirectory() as scratch:
        paths = inference.audio_files([args.data]) if args.data else generated_files(Path(scratch), args.files)
        inference.predict(paths[:2], run, runtime="onnxruntime", progress=False)  # warm: the session's first calls
        started = time.perf_counter()
        local = inference.predict(paths, run, runtime="onnxruntime", progress=False)
        local_seconds = time.perf_counter() - started
        per_file = local_seconds / len(paths)
        print(f"{len(paths)} files, {sum(p.duration for p in local):.0f} s of audio, run {folder.name}, {os.cpu_count()} cores\n")
        print(f"{'engine':<16}{'files/s':>9}{'start-up s':>12}{'steady files/s':>16}{'cost/file ms':>14}")
        print(f"{'local':<16}{len(paths) / local_seconds:>9.2f}{'':>12}{len(paths) / local_seconds:>16.2f}{'':>14}")
        for workers in (1, 2):
            log = TimedLog(Path(scratch) / f"ray{workers}.jsonl")
            started = time.perf_counter()
            failed, _ = inference.predict_on_cluster(
                paths, run, log, functools.partial(inference.json_record, labels=run.labels), runtime="onnxruntime", workers=workers, progress=False,
            )
            total = time.perf_counter() - started
            assert not failed and len(log.done()) == len(paths)
            (first, first_count), (last, _) = log.arrivals[0], log.arrivals[-1]
            steady = (len(paths) - first_count) / (last - first) if last > first else float("nan")
            startup = first - started - first_count / steady
            cost = (workers / steady - per_file) * 1000
            print(f"{f'ray, {workers} worker' + 's' * (workers > 1):<16}{len(paths) / total:>9.2f}{startup:>12.1f}{steady:>16.2f}{cost:>14.0f}")


if __name__ == "__main__":
    main()

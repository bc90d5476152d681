"""Benchmark: post-training int8 quantization of a run's ONNX export, against the float export.

ONNX Runtime's static quantization (`onnxruntime.quantization.quantize_static`) of the
backbone's convolutions (the front end's STFT convolution stays float), calibrated on the
waveforms of the run's training speakers (every --calibration-every'th file), in both of its
formats: QDQ (per-channel weights) and QOperator (QLinearConv). For the float export and each
quantized one: files per second on the run's test speakers' files (one call a file, every core),
their UAR (with the training speakers' statistics, as the export standardises), and how often the
argmax agrees with the float export's. Measured on 2 cores for a trained default run: at most
1.08x faster, and the UAR falls to near chance (docs/BENCHMARKS.md), so export.py offers no
quantization.

    python bench/quantize.py RUN [--calibration-every 6]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)

import corpora  # noqa: E402
import runs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="RUN", type=Path, help="a run folder of train.py (one split, not --folds)")
    parser.add_argument("--calibration-every", type=int, default=6, help="every how many training files one calibrates (default: %(default)s)")
    args = parser.parse_args()

    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from sklearn.metrics import recall_score

    import export
    import utils

    run = runs.load_run(args.model)
    options = json.loads((args.model / runs.OPTIONS).read_text())
    utterances = corpora.read_corpus(corpora.get_corpus(options["corpus"]), options["dataset"], download=False, url=None, cache_dir=Path("."))
    held_out = set(options["test_speakers"]) | set(options["val_speakers"])
    test = [u for u in utterances if u.speaker in options["test_speakers"] and u.label in run.labels]
    calibration = [u.path for u in utterances if u.speaker not in held_out][:: args.calibration_every]
    audio = [utils.load_wav(u.path, run.features.sr) for u in test]
    truth = [run.labels.index(u.label) for u in test]

    class Waveforms(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self):
            path = next(self.items, None)
            return None if path is None else {"waveform": utils.load_wav(path, run.features.sr)}

    float_folder = run.folder / runs.EXPORT / "onnx"
    export.load_exported_run(run.folder, "onnxruntime")  # made once where missing
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(float_folder / "model.onnx"), str(prepared), skip_symbolic_shape=True)
        models = {"float32 (export.py --format onnx)": float_folder}
        for quant_format, per_channel in ((QuantFormat.QDQ, True), (QuantFormat.QOperator, False)):
            folder = Path(scratch) / quant_format.name
            folder.mkdir()
            quantize_static(
                str(prepared), str(folder / "model.onnx"), Waveforms(), quant_format=quant_format, per_channel=per_channel,
                op_types_to_quantize=["Conv"], nodes_to_exclude=[n for n in _conv_names(prepared) if "front_end" in n],
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            )
            models[f"int8 {quant_format.name}{', per-channel' if per_channel else ''}"] = folder
        reference = None
        for name, folder in models.items():
            call = export.load_artefact(folder, "onnx")
            call(audio[0])  # the first call is not timed
            start = time.perf_counter()
            probabilities = np.array([call(y) for y in audio])
            rate = len(audio) / (time.perf_counter() - start)
            reference = probabilities if reference is None else reference
            uar = recall_score(truth, probabilities.argmax(axis=1), average="macro")
            rows.append((name, rate, uar, float((probabilities.argmax(axis=1) == reference.argmax(axis=1)).mean())))
    print(f"run {run.folder.name}: {len(test)} test files (speakers {options['test_speakers']}), "
          f"{len(calibration)} calibration files, {len(os.sched_getaffinity(0))} cores")
    print(f"{'model':<40}{'files/s':>9}{'UAR':>8}{'argmax = float':>16}")
    for name, rate, uar, agreement in rows:
        print(f"{name:<40}{rate:>9.1f}{uar:>8.3f}{agreement:>16.2f}")


def _conv_names(path: Path) -> list[str]:
    import onnx

    return [node.name for node in onnx.load(str(path)).graph.node if node.op_type == "Conv"]


if __name__ == "__main__":
    main()

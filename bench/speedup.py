"""Benchmark: the levers on a trained run's inference speed, each with the UAR it keeps, beside the plain approach.

On a run of train.py (one split), every row runs the run's ONNX export with ONNX Runtime (every
core, one call a file, decoding included) on the run's test speakers' files:

- float32, segments every 32 frames: what `infer.py` runs by default;
- float32 with the segments cut every 48 or 64 frames at inference (half the overlap, none):
  the same weights, fewer segments through the backbone;
- int8: ONNX Runtime's static quantization (QDQ, per-channel weights, `quantize_static`) of the
  backbone's convolutions only - the front end, the in-graph prosody, the pooling and the head stay
  float - calibrated on the run's training speakers' recordings (every --calibration-every'th),
  once with every backbone convolution and once with the stem's left float (its input is the
  log-Mel image: dB and deltas of very different ranges under one 8-bit scale);
- the stem-float int8 with segments every 64 frames.

Each row gives files/s, its ratio to the plain approach measured in the same run ((a) of
bench/infer.py: per file features, cut or padded to a fixed 8 segments, one model.predict of
ResNet50V2 at 64x64, random weights, --plain-files files), the UAR with the training speakers'
statistics (as the export standardises), and how often its emotion is the float32 default's.

    python bench/speedup.py RUN [--calibration-every 6] [--plain-files 40]
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

HOPS = (48, 64)  # segment hops (frames) tried at inference besides the run's own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="RUN", type=Path, help="a run folder of train.py (one split, not --folds)")
    parser.add_argument("--calibration-every", type=int, default=6, help="every how many training files one calibrates (default: %(default)s)")
    parser.add_argument("--plain-files", type=int, default=40, help="files timed for the plain approach (default: %(default)s)")
    args = parser.parse_args()

    import numpy as np
    from sklearn.metrics import recall_score

    import export
    import utils
    from bench.infer import export_run, time_plain

    run = runs.load_run(args.model)
    options = json.loads((args.model / runs.OPTIONS).read_text())
    utterances = corpora.read_corpus(corpora.get_corpus(options["corpus"]), options["dataset"], download=False, url=None, cache_dir=Path("."))
    held_out = set(options["test_speakers"]) | set(options["val_speakers"])
    test = [u for u in utterances if u.speaker in options["test_speakers"] and u.label in run.labels]
    calibration = [u.path for u in utterances if u.speaker not in held_out][:: args.calibration_every]
    truth = [run.labels.index(u.label) for u in test]
    export.load_exported_run(run.folder, "onnxruntime")  # the default export, made once where missing

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        plain = args.plain_files / time_plain(export_run(scratch / "plain"), [u.path for u in test[: args.plain_files]])
        own_hop = run.features.segment_hop
        models = {f"float32, segments every {own_hop} frames (the default)": run.folder / runs.EXPORT / "onnx"}
        for hop in HOPS:
            models[f"float32, segments every {hop} frames"] = export_with_hop(run, hop, scratch / f"hop{hop}")
        default = models[next(iter(models))]
        models["int8, every backbone conv"] = quantize(default, calibration, run.features.sr, scratch / "int8-all", stem_float=False)
        models["int8, the stem float"] = quantize(default, calibration, run.features.sr, scratch / "int8-stem", stem_float=True)
        models[f"int8, the stem float, segments every {HOPS[-1]} frames"] = quantize(
            models[f"float32, segments every {HOPS[-1]} frames"], calibration, run.features.sr, scratch / "int8-stem-hop", stem_float=True
        )
        reference = None
        for name, folder in models.items():
            call = export.load_artefact(folder, "onnx")
            call(utils.load_wav(test[0].path, run.features.sr))  # the first call is not timed
            start = time.perf_counter()
            probabilities = np.array([call(utils.load_wav(u.path, run.features.sr)) for u in test])
            rate = len(test) / (time.perf_counter() - start)
            reference = probabilities if reference is None else reference
            uar = recall_score(truth, probabilities.argmax(axis=1), average="macro")
            rows.append((name, rate, uar, float((probabilities.argmax(axis=1) == reference.argmax(axis=1)).mean()), (folder / "model.onnx").stat().st_size))
    print(f"run {run.folder.name}: {len(test)} test files (speakers {options['test_speakers']}), "
          f"{len(calibration)} calibration files, {len(os.sched_getaffinity(0))} cores")
    print(f"{'ONNX Runtime':<52}{'files/s':>9}{'vs plain':>10}{'UAR':>8}{'as default':>12}{'MB':>7}")
    print(f"{'plain: fixed 8 segments, ResNet50V2 64x64, Keras':<52}{plain:>9.1f}{1:>9.1f}x")
    for name, rate, uar, agreement, size in rows:
        print(f"{name:<52}{rate:>9.1f}{rate / plain:>9.1f}x{uar:>8.3f}{agreement:>12.2f}{size / 2**20:>7.1f}")


def export_with_hop(run: runs.Run, hop: int, folder: Path) -> Path:
    """The run's ONNX export with its front end cutting segments every ``hop`` frames: the same weights."""
    import export

    features = run.features.replace(segment_hop=hop)
    saved = run.model.front_end.features, run.features
    run.model.front_end.features, run.features = features, features
    try:
        export.export(run, "onnx", folder)
    finally:
        run.model.front_end.features, run.features = saved
    return folder


def quantize(source: Path, calibration: list[Path], sr: int, folder: Path, *, stem_float: bool) -> Path:
    """``source``'s model.onnx with the backbone's convolutions in int8 (QDQ, per-channel weights), calibrated on ``calibration``'s waveforms."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import utils

    class Waveforms(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self):
            path = next(self.items, None)
            return None if path is None else {"waveform": utils.load_wav(path, sr)}

    folder.mkdir()
    prepared = folder / "prepared.onnx"
    quant_pre_process(str(source / "model.onnx"), str(prepared), skip_symbolic_shape=True)
    graph = onnx.load(str(prepared)).graph
    convs = [node for node in graph.node if node.op_type == "Conv"]
    # The backbone's convolutions: all but the front end's (and the prosody's); its stem is the first, reading the resized image.
    backbone = [node.name for node in convs if "front_end" not in node.name]
    exclude = [node.name for node in convs if node.name not in backbone] + (backbone[:1] if stem_float else [])
    quantize_static(
        str(prepared), str(folder / "model.onnx"), Waveforms(), quant_format=QuantFormat.QDQ, per_channel=True,
        op_types_to_quantize=["Conv"], nodes_to_exclude=exclude, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )
    prepared.unlink()
    return folder


if __name__ == "__main__":
    main()

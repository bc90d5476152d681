"""Export a trained run as one artefact that maps 16 kHz PCM to emotions: SavedModel, ONNX or LiteRT.

    python export.py RUN [--format saved_model|onnx|litert] [--output FOLDER] [--window SECONDS]

The artefact holds the whole recogniser (front end, backbone, the training speakers'
normalisation statistics, head), so it runs with TensorFlow, ONNX Runtime (or OpenVINO) or the LiteRT
interpreter alone, without this project. Its one input, ``waveform``, is a recording as
float32 mono PCM in [-1, 1] at the run's sample rate (16 kHz by default; resample first),
any length; it is cut into equal windows of about ``--window`` seconds inside the graph
(`frontend.split_windows`), as infer.py cuts files. A run with the permissive prosodic branch
(the default recipe's) computes each window's prosodic vector in the graph too
(`prosody_frontend.ProsodicFrontEnd`), so the waveform is still the one input. Only a run whose
vector cannot be a tensor program (openSMILE's egemaps set, or a front end at another rate
than 16 kHz) takes a second input, ``prosody`` (windows, values), computed outside the graph
(`prosody.FEATURE_SETS` on each window's samples); the contract states its set, function and
value names. Two outputs: ``window_probabilities`` (windows, classes) and ``probabilities``
(classes,), the windows' mean. ``contract.json`` beside the artefact says all of this, with
the labels in output order.

Written to RUN/export/FORMAT/ by default, whole or not at all: into a temporary folder,
renamed when complete (an earlier export there is replaced only then).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

import cli
import prosody
import runs
from cli import positive_float
from files import atomic_folder, folder_problem
from utils import WINDOW_SECONDS, FeatureConfig

logger = logging.getLogger("export")

# Each format: the Keras export format, the artefact's name in the output folder, what runs it.
FORMATS = {
    "saved_model": ("tf_saved_model", "saved_model", "tensorflow (tf.saved_model.load(...).serve, or the serving_default signature)"),
    "onnx": ("onnx", "model.onnx", "onnxruntime (InferenceSession), OpenVINO (Core().compile_model), or any ONNX runtime"),
    "litert": ("litert", "model.tflite", "ai-edge-litert (Interpreter, signature serving_default), or TensorFlow Lite"),
}
CONTRACT = "contract.json"
RUNTIMES = {"onnxruntime": "onnx", "openvino": "onnx", "litert": "litert"}  # infer.py --runtime: the format each runtime runs
OPENVINO_PRECISIONS = {"float32": "f32", "bfloat16": "bf16"}  # infer.py --precision -> OpenVINO's inference precision on a CPU


class ExportError(Exception):
    """An export that could not be made (the converter failed, a dependency is missing); one line."""


def serving_model(model, window_samples: int):
    """A Keras model around ``model`` (an `recognizer.EmotionRecognizer`): one recording (samples,) [and its windows' prosody] -> both outputs.

    For export only: it is traced with a (samples,) float32 signature (and (windows, values)
    where `takes_prosody`) and never saved itself.
    """
    import keras
    from keras import ops

    import frontend

    class Serving(keras.Model):
        def __init__(self) -> None:
            super().__init__(name="serving")
            self.recognizer = model

        def call(self, inputs):
            # One argument, as every Keras exporter traces it: the waveform, or both inputs by name.
            waveform, prosody = (inputs["waveform"], inputs["prosody"]) if isinstance(inputs, dict) else (inputs, None)
            windows = frontend.split_windows(waveform, window_samples)
            probabilities = self.recognizer.predict_waveform(windows, prosody)
            return {"window_probabilities": probabilities, "probabilities": ops.mean(probabilities, axis=0)}

    return Serving()


def takes_prosody(run: runs.Run) -> bool:
    """Whether the run's artefact takes the windows' prosodic vectors as a second input (its set is not computed in the graph)."""
    return run.prosody_set is not None and run.model.prosodic_front_end is None


def contract(run: runs.Run, export_format: str, window_seconds: float) -> dict:
    """What a caller of the artefact must know: the input, the windows, the outputs, the labels."""
    features = run.features
    window_samples = int(round(window_seconds * features.sr))
    blstm = run.model.head.config.kind == "blstm-attention"
    return {
        "format": export_format,
        "file": FORMATS[export_format][1],
        "runs_with": FORMATS[export_format][2],
        # Measured: the masked BLSTM converts to TensorList ops that only the Flex (Select TF ops) delegate runs.
        "litert_needs_select_tf_ops": export_format == "litert" and blstm,
        "run": run.folder.name,
        "input": {
            "name": "waveform",
            "dtype": "float32",
            "shape": ["samples"],
            "sample_rate": features.sr,
            "channels": 1,
            "range": [-1.0, 1.0],
            "note": "one recording, mono, any length; resample to sample_rate before (not in the graph)",
        },
        "windows": {
            "seconds": window_seconds,
            "samples": window_samples,
            "rule": "count = max(1, floor(samples / window_samples + 0.5)); each window is samples // count samples; "
            "the last samples % count samples are dropped",
        },
        "prosody": None if run.prosody_set is None else {
            "set": run.prosody_set,
            "values": list(prosody.FEATURE_NAMES) if run.prosody_set == "permissive" else "openSMILE's eGeMAPSv02 functionals, in its order",
            **({"computed": "in the graph, from each window's samples: nothing to pass"} if not takes_prosody(run) else {
                "computed": "outside the graph: pass it as the second input",
                "name": "prosody",
                "dtype": "float32",
                "shape": ["windows", run.model.head.config.prosody_features],
                "function": f"prosody.FEATURE_SETS[{run.prosody_set!r}](window, sample_rate) of this project's prosody.py",
                "note": "one row per window, in order: each window's samples cut by the windows rule; the artefact "
                "standardises it with the training speakers' statistics",
            }),
        },
        "outputs": {
            "window_probabilities": {"dtype": "float32", "shape": ["windows", len(run.labels)]},
            "probabilities": {"dtype": "float32", "shape": [len(run.labels)], "note": "the mean over the windows"},
        },
        "labels": run.labels,
        "speaker_normalization": "the training speakers' pooled statistics, stored in the artefact",
        "features": features.to_dict(),
    }


def export(run: runs.Run, export_format: str, output: Path, *, window_seconds: float = WINDOW_SECONDS) -> Path:
    """Write ``run`` as ``export_format`` into the folder ``output`` (the artefact and `CONTRACT`); returns the artefact's path.

    Raises
    ------
    ExportError
        If the converter is missing or fails (the message says which and why).
    OSError
        If ``output`` cannot be written (an earlier export there is left as it was).
    """
    import keras

    if keras.backend.backend() not in ("tensorflow", "jax"):
        raise ExportError(f"exporting works under KERAS_BACKEND=tensorflow or jax, not {keras.backend.backend()}")
    keras_format, name, _ = FORMATS[export_format]
    window_samples = int(round(window_seconds * run.features.sr))
    with atomic_folder(output) as scratch:
        waveform = keras.InputSpec(shape=(None,), dtype="float32", name="waveform")
        example = np.zeros(window_samples, np.float32)
        if not takes_prosody(run):
            signature = [waveform]
        else:
            values = run.model.head.config.prosody_features
            signature = [{"waveform": waveform, "prosody": keras.InputSpec(shape=(None, values), dtype="float32", name="prosody")}]
            example = {"waveform": example, "prosody": np.zeros((1, values), np.float32)}
        try:
            serving = serving_model(run.model, window_samples)
            serving(example)  # built by one call, as Keras' export wants
            serving.export(str(scratch / name), format=keras_format, input_signature=signature, verbose=False)
        except ImportError as error:
            raise ExportError(f"--format {export_format} needs {error.name or error}: pip install -r requirements.txt") from None
        except Exception as error:  # the converters raise many kinds; each means this export failed
            raise ExportError(f"--format {export_format}: the converter failed: {runs.first_line(error)}") from error
        (scratch / CONTRACT).write_text(json.dumps(contract(run, export_format, window_seconds), indent=2))
    return output / name


def load_artefact(folder: Path, export_format: str, runtime: str | None = None, precision: str = "float32") -> Callable[..., np.ndarray]:
    """The artefact in ``folder`` as a plain function: one recording (samples,) float32 at 16 kHz [, its windows' prosody (windows, values)] -> probabilities (classes,).

    Loaded with one runtime only, using every core, as a program without this project would:
    the format's own (TensorFlow, ONNX Runtime, the LiteRT interpreter), or ``runtime``
    "openvino" for the ONNX artefact, computing in ``precision`` (`OPENVINO_PRECISIONS`; the
    other runtimes compute in float32).
    """
    import os

    # The cores this process may use, or fewer where OMP_NUM_THREADS says so (as Ray sets it for a worker of N CPUs).
    cores = min(len(os.sched_getaffinity(0)), int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    name = FORMATS[export_format][1]
    if runtime == "openvino":
        import openvino

        settings = {"INFERENCE_NUM_THREADS": cores, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision]}
        compiled = openvino.Core().compile_model(str(folder / name), "CPU", settings)
        output = compiled.output("probabilities")
        return lambda y, prosody=None: compiled(_named(waveform=y, prosody=prosody))[output]
    if export_format == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = cores
        # Measured on 7 s windows, 17 calls: 511 MB peak with ONNX Runtime's arena and planned buffers, 325 MB without.
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        session = onnxruntime.InferenceSession(str(folder / name), options)
        return lambda y, prosody=None: session.run(["probabilities"], _named(waveform=y, prosody=prosody))[0]
    if export_format == "litert":
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(str(folder / name), num_threads=cores).get_signature_runner("serving_default")
        return lambda y, prosody=None: runner(**_named(waveform=y, prosody=prosody))["probabilities"]
    import tensorflow as tf

    loaded = tf.saved_model.load(str(folder / name))
    serving = loaded.signatures["serving_default"]
    return lambda y, prosody=None: serving(**{name: tf.constant(x) for name, x in _named(waveform=y, prosody=prosody).items()})["probabilities"].numpy()


def _named(**inputs: np.ndarray | None) -> dict[str, np.ndarray]:
    """The artefact's inputs by name, those given (a run without a prosodic branch has no ``prosody``)."""
    return {name: value for name, value in inputs.items() if value is not None}


@dataclasses.dataclass(frozen=True)
class ExportedRun:
    """A run's export loaded with one runtime, without Keras or TensorFlow: what infer.py needs of a run to predict files.

    ``forward(y, prosody=None)``: one window (samples,) float32 at ``features.sr`` [and its
    prosodic vector (1, values) where ``takes_prosody``] -> probabilities (classes,).
    """

    folder: Path  # the run folder
    labels: list[str]
    features: FeatureConfig
    prosody_set: str | None
    takes_prosody: bool  # the artefact's prosody is computed outside its graph (`prosody_of`), not in it
    forward: Callable[..., np.ndarray]

    def prosody_of(self, y: np.ndarray) -> np.ndarray | None:
        """The prosodic vector (values,) the artefact takes with ``y``; None where its graph computes it (or it has none)."""
        return prosody.FEATURE_SETS[self.prosody_set](y, self.features.sr) if self.takes_prosody else None


def load_exported_run(folder: Path, runtime: str, window_seconds: float = WINDOW_SECONDS, precision: str = "float32") -> ExportedRun:
    """The run in ``folder`` as its export for ``runtime`` (`RUNTIMES`) with windows of ``window_seconds``, loaded by `load_artefact`.

    The export is made once, into RUN/export/FORMAT, where it is missing, older than the
    model or cuts other windows: by export.py in a process of its own, so that this one
    imports neither TensorFlow nor Keras.

    Raises
    ------
    runs.RunError
        If the run's labels are damaged.
    ExportError
        If the export cannot be made (export.py's own message) or its runtime is not installed.
    """
    export_format = RUNTIMES[runtime]
    output = folder / runs.EXPORT / export_format
    labels = runs.read_labels(folder)
    if _stale(output / CONTRACT, folder, window_seconds, labels):
        logger.warning("exporting %s for --runtime %s once (about 30 s) into %s", folder.name, runtime, output)
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), str(folder), "--format", export_format, "--output", str(output), "--window", repr(window_seconds)],
            capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": "tensorflow"},  # the reference exporter
        )
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            raise ExportError(f"exporting {folder} for --runtime {runtime} failed: {lines[-1].removeprefix('error: ') if lines else f'exit {done.returncode}'}")
    contract = json.loads((output / CONTRACT).read_text())
    described = contract["prosody"]
    try:
        forward = load_artefact(output, export_format, runtime, precision)
    except ImportError as error:
        raise ExportError(f"--runtime {runtime} needs {error.name or error}: pip install -r requirements.txt") from None
    return ExportedRun(
        folder, contract["labels"], FeatureConfig.from_dict(contract["features"]),
        None if described is None else described["set"], described is not None and "shape" in described, forward,
    )


def _stale(contract: Path, folder: Path, window_seconds: float, labels: list[str]) -> bool:
    """Whether the export beside ``contract`` is missing, older than the run's model, cuts other windows than ``window_seconds`` or names other ``labels``."""
    if not contract.is_file():
        return True
    model = [folder / name for name in (runs.MODEL_KERAS, runs.LIGHT_WEIGHTS) if (folder / name).is_file()]
    if any(path.stat().st_mtime_ns > contract.stat().st_mtime_ns for path in model):
        return True
    described = json.loads(contract.read_text())
    return described.get("windows", {}).get("seconds") != window_seconds or described.get("labels") != labels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export.py",
        description="Export a trained run as one artefact from 16 kHz PCM to emotions (runs without this project).",
        formatter_class=cli.HelpFormatter,
    )
    parser.add_argument("model", metavar="RUN", help="run folder of train.py (saved_model/<run>)")
    parser.add_argument("--format", choices=list(FORMATS), default="saved_model", help="saved_model: TensorFlow; onnx: ONNX Runtime and other ONNX runtimes; litert: LiteRT (TensorFlow Lite) on phones and small devices (a run with the BLSTM head needs its Flex delegate there)")
    parser.add_argument("--output", type=Path, default=None, help=f"folder for the artefact and its {CONTRACT} (default: RUN/{runs.EXPORT}/FORMAT)")
    parser.add_argument("--window", type=positive_float, default=WINDOW_SECONDS, help="seconds per window the artefact cuts a recording into (as infer.py --window)")
    parser.add_argument("--verbose", action="store_true", help="show the libraries' own start-up and conversion logs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cli.log_to_stderr(logging.INFO, "%(message)s")
    if not Path(args.model).is_dir():
        parser.error(f"RUN {args.model} is not a folder; name a run folder of train.py (saved_model/<run>)")
    output = args.output if args.output is not None else Path(args.model) / runs.EXPORT / args.format
    problem = folder_problem(output.parent)
    if problem:
        parser.error(f"--output {output}: {output.parent} {problem}")

    def work() -> int:
        run = runs.load_run(args.model)
        path = export(run, args.format, output, window_seconds=args.window)
        logger.info("wrote %s and %s (input: float32 PCM at %d Hz, mono, any length)", path, output / CONTRACT, run.features.sr)
        return 0

    return cli.run_command(work, failures=(runs.RunError, ExportError), interrupted="nothing was written")


if __name__ == "__main__":
    cli.filter_library_noise(verbose="--verbose" in sys.argv[1:])
    sys.exit(main())

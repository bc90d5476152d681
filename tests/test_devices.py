"""devices.py: data parallelism through Keras' and TensorFlow's own engines, on two CPU devices.

Each case runs in a subprocess, because the device count is fixed when a backend starts:
JAX sees two host devices through XLA_FLAGS, TensorFlow splits its CPU into two logical
devices. A step on two devices must equal the step one device takes on the same global
batch, and a whole fine-tuning run on two devices must complete and export.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import devices
import mixed_precision
from cli import UsageError
from conftest import write_ravdess

TESTS = Path(__file__).resolve().parent
BACKENDS = ["jax", "tensorflow"]

# Before the backend starts: two devices where there is one CPU.
TWO_CPU_DEVICES = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import keras
if keras.backend.backend() == "tensorflow":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""

ONE_STEP = TWO_CPU_DEVICES + """
import json
import numpy as np
import devices
from batching import PaddedBatches
from heads import HeadConfig
from tiny_model import padded_batch, tiny_model

inputs = padded_batch([3, 5, 4, 2, 5, 1, 2, 4], seed=1)
arrays = [row[: int((np.abs(row).sum(axis=(1, 2, 3)) > 0).sum())] for row in inputs]
initial, weights = {{}}, {{}}
for count in (1, 2):
    placement = devices.place(count, batch_size=8)
    with placement.scope():
        keras.utils.set_random_seed(0)
        # No dropout (each device draws its own masks); the backbone's BatchNorm frozen, as fine-tuning keeps it.
        model = tiny_model(
            3, learning_rate=1e-2, head=HeadConfig(lstm_units=8, attention_units=8, dense_units=(16,), dropout=0.0),
            backbone_learning_rate_scale=0.1, freeze_batch_normalization=True,
        )
        initial[count] = np.concatenate([np.ravel(w) for w in model.get_weights()])
        batches = PaddedBatches(arrays, [0, 1, 2, 1, 0, 2, 1, 0], batch_size=8, shard=placement.shard)
        model.fit(batches.as_keras_data(), epochs=1, verbose=0)
    weights[count] = np.concatenate([np.ravel(w) for w in model.get_weights()])
    print("devices", count, placement.devices, type(placement.engine).__name__)
print(json.dumps({{"moved": float(np.abs(weights[1] - initial[1]).max()), "difference": float(np.abs(weights[2] - weights[1]).max())}}))
"""

FINETUNE_RUN = TWO_CPU_DEVICES + """
import train
from tiny_model import TINY_BACKBONE_OPTIONS, tiny_backbone
from recipe import Options
options = Options(
    epochs=2, dataset={dataset!r}, test_speakers=[4], val_speakers=[3], backbone_mode="finetune", weights="none",
    batch_size=4, learning_rate=1e-3, devices=2, precision={precision!r}, output={output!r}, cache_dir={cache!r}, download=False,
    **TINY_BACKBONE_OPTIONS,
)
print(train.run(options, backbone=lambda: tiny_backbone((64, 64, 3))))
"""


# One process of a two-process job; its index is the first argument. The __main__ guard keeps
# the feature workers (spawned processes) from joining the job themselves.
JOB_PROCESS = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
if __name__ == "__main__":
    import devices
    devices.join_hosts({coordinator!r}, 2, int(sys.argv[1]))
    import train
    from tiny_model import TINY_BACKBONE_OPTIONS, tiny_backbone
    from recipe import Options
    options = Options(
        epochs=2, dataset={dataset!r}, test_speakers=[4], val_speakers=[3], backbone_mode="finetune", weights="none",
        batch_size=4, learning_rate=1e-3, output={output!r}, cache_dir={cache!r} + sys.argv[1], download=False,
        **TINY_BACKBONE_OPTIONS,
    )
    print("RESULT", sys.argv[1], train.run(options, backbone=lambda: tiny_backbone((64, 64, 3))))
"""


def run_on(backend: str, code: str) -> str:
    if backend == "jax" and importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed, so its data parallelism cannot be tried here")
    environment = {
        **os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    done = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_step_on_two_devices_equals_one_step_on_one(backend):
    output = run_on(backend, ONE_STEP.format(root=str(TESTS.parent), tests=str(TESTS)))
    engine = {"jax": "DataParallel", "tensorflow": "MirroredStrategy"}[backend]
    assert "devices 1 1 NoneType" in output and f"devices 2 2 {engine}" in output
    result = json.loads(output.strip().splitlines()[-1])
    assert result["moved"] > 1e-3  # the step changed the weights...
    assert result["difference"] < 1e-5  # ...as one device did, to float tolerance


@pytest.mark.slow
@pytest.mark.parametrize("backend, precision", [("jax", "bfloat16"), ("tensorflow", "float16")])
def test_a_mixed_precision_fine_tuning_run_on_two_devices_completes_and_exports(backend, precision, tmp_path):
    import SpeechModel  # noqa: F401  (registers the model's layers for loading)

    write_ravdess(tmp_path / "dataset", actors=(1, 2, 3, 4), emotions=(1, 4, 5))
    code = FINETUNE_RUN.format(
        root=str(TESTS.parent), tests=str(TESTS), dataset=str(tmp_path / "dataset"), output=str(tmp_path / "runs"),
        cache=str(tmp_path / "cache"), precision=precision,  # float16: with Keras' loss scaling
    )
    run = Path(run_on(backend, code).strip().splitlines()[-1])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["backend"] == backend and metrics["options"]["devices"] == 2 and metrics["epochs_run"] == 2
    assert metrics["options"]["precision"] == precision and np.isfinite(metrics["uar"])
    exported = keras.models.load_model(run / "model.keras", compile=False)  # trained in 16 bits, saved in float32
    assert {layer.dtype_policy.name for layer in exported._flatten_layers()} == {"float32"}
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == [run.name]  # one run folder, written once


def test_the_placement_refuses_what_the_machine_cannot_do(no_accelerator):
    with pytest.raises(UsageError, match="--devices 64: the .* backend sees"):
        devices.place(64, batch_size=64)
    one = devices.place(None, batch_size=5)  # no accelerator: one device, any batch size
    assert (one.devices, one.engine, one.writes, one.shard) == (1, None, True, (0, 1))


def test_precision_names_map_to_keras_policies(no_accelerator):
    assert [mixed_precision.dtype_policy(name) for name in mixed_precision.PRECISIONS] == ["float32", "mixed_bfloat16", "mixed_float16"]
    with pytest.raises(ValueError, match="precision must be one of"):
        mixed_precision.dtype_policy("int8")
    assert devices.default_precision() == "float32"  # no accelerator: training stays exact


def test_a_batch_that_does_not_split_over_the_devices_is_refused(monkeypatch):
    monkeypatch.setattr(devices, "_visible_devices", lambda backend: ["cpu:0", "cpu:1"])
    monkeypatch.setattr(devices, "_engine", lambda backend, chosen: None)
    with pytest.raises(UsageError, match="--batch-size 5 does not split evenly over 2 devices"):
        devices.place(2, batch_size=5)
    assert devices.place(2, batch_size=6).devices == 2


def test_several_hosts_are_joined_under_jax_and_refused_under_tensorflow(monkeypatch):
    for name in devices.HOST_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    devices.join_hosts()  # one host: nothing to do, on any backend
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the refusals are the TensorFlow backend's")
    with pytest.raises(UsageError, match="join hosts under KERAS_BACKEND=jax"):
        devices.join_hosts("10.0.0.1:1234", 2, 0)
    cluster = {"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    with pytest.raises(UsageError, match=r"TF_CONFIG names 2 workers.*keras-team/keras#20585.*KERAS_BACKEND=jax"):
        devices.place(None, batch_size=4)


@pytest.mark.slow
def test_a_job_of_two_jax_processes_trains_together_and_one_writes(tmp_path):
    """Several hosts, played by two processes on this one, each with one CPU device (JAX's gloo collectives)."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    write_ravdess(tmp_path / "dataset", actors=(1, 2, 3, 4), emotions=(1, 4, 5))
    with socket.socket() as probe:  # a free port for the coordinator
        probe.bind(("localhost", 0))
        coordinator = f"localhost:{probe.getsockname()[1]}"
    code = JOB_PROCESS.format(
        root=str(TESTS.parent), tests=str(TESTS), dataset=str(tmp_path / "dataset"), output=str(tmp_path / "runs"),
        cache=str(tmp_path / "cache"), coordinator=coordinator,
    )
    environment = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    environment.pop("XLA_FLAGS", None)
    processes = [
        subprocess.Popen([sys.executable, "-c", code, str(index)], env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for index in (1, 0)
    ]
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    results = {line.split()[1]: line.split()[2] for stdout, _ in outputs for line in stdout.splitlines() if line.startswith("RESULT")}
    assert results["1"] == "None"  # process 1 trained alongside and wrote nothing
    run = Path(results["0"])
    assert [path.name for path in (tmp_path / "runs").iterdir()] == [run.name]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["options"]["devices"] == 2 and metrics["epochs_run"] == 2 and (run / "model.keras").is_file()
    losses = [[line.split("loss: ")[1].split()[0] for line in stdout.splitlines() if "loss: " in line] for stdout, _ in outputs]
    assert losses[0] == losses[1] and len(losses[0]) == 2  # one global step sequence, seen by both

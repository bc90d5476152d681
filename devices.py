"""Where training runs: the devices of a data-parallel step, its precision, and which process writes.

Only the engines Keras and TensorFlow ship:

- JAX: ``keras.distribution.DataParallel`` over the chosen devices. Several hosts join
  through ``keras.distribution.initialize()`` (`join_hosts`), and every process feeds its
  own part of each global batch (``PaddedBatches(shard=...)``).
- TensorFlow: ``tf.distribute.MirroredStrategy`` over this host's devices; it splits each
  global batch itself. Several hosts are refused: Keras 3's ``fit`` fails under
  ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585), so a ``TF_CONFIG`` of several
  workers gets a message that points to JAX.
- PyTorch: one device.

``--batch-size`` is the global batch, split evenly over the devices, so a step on N devices
is the step one device takes on the same batch: the learning rate and early stopping mean
what they mean on one device. (Two exceptions under TensorFlow: dropout draws its own masks
on each device, and BatchNorm layers that train, ``--no-freeze-batchnorm``, normalise each
device's own part of the batch.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any

from errors import UsageError

# keras.distribution.initialize() reads these where no flag is given.
HOST_VARIABLES = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES", "KERAS_DISTRIBUTION_PROCESS_ID")


@dataclasses.dataclass(frozen=True)
class Placement:
    """The devices one training step runs on, and this process's place among those that feed it.

    ``engine`` is the Keras distribution (JAX) or tf.distribute strategy (TensorFlow), or
    None for one device.
    """

    devices: int = 1
    process_index: int = 0
    process_count: int = 1
    engine: Any = None

    def scope(self):
        """Where the model must be built and compiled so that its variables live on every device."""
        return self.engine.scope() if self.engine is not None else contextlib.nullcontext()

    @property
    def writes(self) -> bool:
        """Whether this process writes the run folder, checkpoints and logs (exactly one does)."""
        return self.process_index == 0

    @property
    def shard(self) -> tuple[int, int]:
        """This process's part of every global batch: JAX takes per-process batches, TensorFlow global ones."""
        import keras

        return (self.process_index, self.process_count) if keras.backend.backend() == "jax" else (0, 1)


def accelerators() -> int:
    """The GPUs (or TPUs) this backend sees, on every host of the job."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return sum(device.platform in ("gpu", "tpu") for device in jax.devices())
    if backend == "torch":
        import torch

        return int(torch.cuda.is_available())
    return 0


def default_precision() -> str:
    """bfloat16 on accelerators with bfloat16 units (NVIDIA Ampere and later, TPUs), float16 on older
    GPUs (with loss scaling), float32 without an accelerator (training on a CPU stays exact)."""
    import keras

    if not accelerators():
        return "float32"
    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        capability = getattr(device, "compute_capability", None)
        return "bfloat16" if device.platform == "tpu" or capability is None or float(capability) >= 8 else "float16"
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
        return "bfloat16" if details.get("compute_capability", (8, 0)) >= (8, 0) else "float16"
    return "bfloat16"


def join_hosts(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> None:
    """Join a JAX job across hosts (``keras.distribution.initialize``), when flags or the environment describe one.

    Every host runs the same command; ``coordinator`` (HOST:PORT of process 0),
    ``num_processes`` and ``process_id`` default to Keras' own ``KERAS_DISTRIBUTION_*``
    environment variables. Without either, nothing happens (one host). Must run before
    anything else uses JAX.
    """
    flags = (coordinator, num_processes, process_id)
    if all(value is None for value in flags) and not any(os.environ.get(name) for name in HOST_VARIABLES):
        return
    import keras

    if keras.backend.backend() != "jax":
        raise UsageError(
            "--coordinator, --num-processes and --process-id join hosts under KERAS_BACKEND=jax "
            "(Keras 3 trains on one host under TensorFlow)"
        )
    keras.distribution.initialize(coordinator, num_processes, process_id)


def _tf_workers() -> int:
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def place(devices: int | None, batch_size: int) -> Placement:
    """The placement of a fine-tuning run on ``devices`` devices (None: every accelerator of the job, else one).

    Raises `errors.UsageError` when ``devices`` exceeds what the backend sees (or, in a job of
    several processes, is not all of the job's devices), when ``batch_size`` does not split
    evenly over them, or when ``TF_CONFIG`` asks TensorFlow for several workers.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow" and _tf_workers() > 1:
        # Reproduced with Keras 3.15 and TensorFlow 2.21 on two local workers, even for a one-layer model.
        raise UsageError(
            f"TF_CONFIG names {_tf_workers()} workers, but Keras 3's model.fit fails under "
            "tf.distribute.MultiWorkerMirroredStrategy (keras-team/keras#20585); train on several hosts "
            "with KERAS_BACKEND=jax and --coordinator, or unset TF_CONFIG"
        )
    available = _visible_devices(backend)
    index, processes = _process(backend)
    if processes > 1:  # a job of several hosts trains on all of its devices
        count = devices or len(available)
        if count != len(available):
            raise UsageError(f"--devices {count}: a job of {processes} processes trains on all of its {len(available)} devices")
    else:
        count = devices or max(1, min(accelerators(), len(available)))
        if count > len(available):
            raise UsageError(f"--devices {count}: the {backend} backend sees {len(available)} device(s) here ({', '.join(available)})")
    placement = Placement(count, index, processes, _engine(backend, available[:count]) if count > 1 else None)
    if batch_size % placement.devices:
        raise UsageError(
            f"--batch-size {batch_size} does not split evenly over {placement.devices} devices; use a multiple of {placement.devices}"
        )
    return placement


def _visible_devices(backend: str) -> list[str]:
    """The devices of the backend's default platform: accelerators where there are any, else the CPU(s)."""
    if backend == "jax":
        import keras

        return keras.distribution.list_devices()
    if backend == "tensorflow":
        import tensorflow as tf

        return [device.name for device in tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")]
    import torch

    return [f"cuda:{index}" for index in range(torch.cuda.device_count())] or ["cpu"]


def _process(backend: str) -> tuple[int, int]:
    if backend == "jax":
        import jax

        return jax.process_index(), jax.process_count()
    return 0, 1


def _engine(backend: str, devices: list[str]) -> Any:
    if backend == "jax":
        import keras

        # Each process already feeds its own shard of every global batch (PaddedBatches(shard=...)).
        return keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.distribute.MirroredStrategy(devices)
    raise UsageError(f"--devices above 1 needs KERAS_BACKEND=jax or tensorflow, not {backend}")

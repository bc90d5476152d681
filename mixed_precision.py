"""The precisions a recogniser computes in, their Keras dtype policies, and a recogniser's copy in another precision.

float32, or mixed precision: bfloat16 or float16 arithmetic on float32 variables; the front
end, the attention softmax and the output probabilities stay float32 either way
(`FLOAT32_LAYERS`). Which one a machine should use is placement's question
(`devices.default_precision`). Importing this module loads no deep-learning framework (the
command lines list `PRECISIONS` in ``-h``): the functions that need Keras import it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

PRECISIONS = ("float32", "bfloat16", "float16")
FLOAT32_LAYERS = ("front_end", "emotion")  # layers that compute in float32 under any precision: the features, the output softmax


def dtype_policy(precision: str) -> str:
    """The Keras dtype policy of a `PRECISIONS` name: ``"float32"``, ``"mixed_bfloat16"`` or ``"mixed_float16"``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision if precision == "float32" else f"mixed_{precision}"


@contextlib.contextmanager
def dtype_policy_scope(precision: str) -> Iterator[None]:
    """Layers made inside take the policy of ``precision``: the backbones' builders make layers of their own."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype_policy(precision))
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def precision_copy(model: Any, precision: str = "bfloat16") -> Any:
    """A copy of ``model`` (a `recognizer.EmotionRecognizer`: same weights, no optimizer) that computes in another precision.

    Every layer, the backbone's included, takes the precision (`PRECISIONS`); the front end
    and the output layer stay float32, and the attention softmax runs in float32 as always.
    For inference, bfloat16 is about 1.5x faster on CPUs with bf16 units (and on GPUs), with
    probabilities a little off those of float32; a model trained in mixed precision is
    exported as a float32 copy.
    """
    import keras

    config = keras.saving.serialize_keras_object(model)
    _set_dtype_policies(config, dtype_policy(precision))
    copy = keras.saving.deserialize_keras_object(config)
    copy.set_weights(model.get_weights())
    return copy


def _set_dtype_policies(config: Any, policy: str, layer: str | None = None) -> None:
    """Replace, in place, every layer's dtype policy in a model config by ``policy``, the output layer's aside."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy":
            if layer not in FLOAT32_LAYERS:
                config["config"]["name"] = policy
            return
        layer = config["name"] if isinstance(config.get("name"), str) else layer
        for value in config.values():
            _set_dtype_policies(value, policy, layer)
    elif isinstance(config, list):
        for value in config:
            _set_dtype_policies(value, policy, layer)

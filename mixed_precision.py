"""The precisions a recogniser computes in, and their Keras dtype policies: the model's side of mixed precision.

float32, or mixed precision: bfloat16 or float16 arithmetic on float32 variables; the attention
softmax and the output probabilities stay float32 either way (`SpeechModel.FLOAT32_LAYERS`). Which
one a machine should use is placement's question (`devices.default_precision`).
"""

from __future__ import annotations

PRECISIONS = ("float32", "bfloat16", "float16")


def dtype_policy(precision: str) -> str:
    """The Keras dtype policy of a `PRECISIONS` name: ``"float32"``, ``"mixed_bfloat16"`` or ``"mixed_float16"``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision if precision == "float32" else f"mixed_{precision}"

"""A tiny DCNN-BLSTMwA for tests, and a script that exercises it on one Keras backend.

    KERAS_BACKEND=jax python tests/tiny_model.py OUT_DIR

trains the tiny model for a step, checks that padding changes nothing, and
writes OUT_DIR/model.keras, OUT_DIR/inputs.npy and OUT_DIR/probabilities.npy.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SEGMENT_SHAPE = (8, 8, 3)
# Features whose segments are SEGMENT_SHAPE: 8 Mel bands, 8 frames (80 ms) a segment.
TINY_FEATURES = {"n_mels": 8, "segment_frames": 8, "segment_hop": 4}
# What a train.run on tiny_backbone needs besides the recipe's defaults: the segments as
# cut, and the backbone's one output (it has no named stages).
TINY_BACKBONE_OPTIONS = {"image_size": None, "stages": "last"}


def tiny_backbone(image_shape=SEGMENT_SHAPE):
    import keras

    return keras.Sequential(
        [
            keras.Input(image_shape),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.GlobalAveragePooling2D(),
        ],
        name="tiny_backbone",
    )


def tiny_head():
    from heads import HeadConfig

    return HeadConfig(lstm_units=8, attention_units=8, dense_units=(16,))


def tiny_model(num_classes: int = 3, **kwargs):
    from SpeechModel import SpeechModel
    from utils import FeatureConfig

    options = dict(weights=None, backbone=tiny_backbone(), features=FeatureConfig(**TINY_FEATURES), head=tiny_head())
    options.update(kwargs)
    return SpeechModel.create_model(num_classes, **options)


def padded_batch(lengths, seed: int = 0) -> np.ndarray:
    """Random utterances of the given segment counts, zero-padded to the longest."""
    rng = np.random.default_rng(seed)
    batch = np.zeros((len(lengths), max(lengths), *SEGMENT_SHAPE), dtype="float32")
    for row, length in enumerate(lengths):
        batch[row, :length] = rng.normal(size=(length, *SEGMENT_SHAPE))
    return batch


def main(out_dir: Path) -> None:
    import keras

    keras.utils.set_random_seed(0)
    model = tiny_model()
    lengths = [2, 5, 3, 4]
    inputs = padded_batch(lengths)
    model.fit(inputs, np.array([0, 1, 2, 0]), batch_size=4, epochs=1, verbose=0)
    probabilities = model.predict(inputs, verbose=0)
    for row, length in enumerate(lengths):
        alone = model.predict(inputs[row : row + 1, :length], verbose=0)
        difference = float(np.abs(alone - probabilities[row]).max())
        if difference > 1e-5:
            raise SystemExit(f"{keras.backend.backend()}: padding changed utterance {row} by {difference}")
    model.save(out_dir / "model.keras")
    np.save(out_dir / "inputs.npy", inputs)
    np.save(out_dir / "probabilities.npy", probabilities)
    print(keras.backend.backend(), "ok")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main(Path(sys.argv[1]))

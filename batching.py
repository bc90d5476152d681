"""Batches of variable-length utterances: grouped by length, padded to their longest.

Training, validation, test scoring and inference all batch the same way, so padding
is small everywhere and a model sees the same kind of input in each:

    similar_length_batches(items, batch_size)   groups of items of close lengths
    pad_batch(arrays)                           one zero-padded (batch, steps, ...) array
    PaddedBatches(arrays, labels, batch_size)   an epoch of (inputs, labels, weights) for model.fit
    predict(forward, arrays, batch_size)        a forward function over many utterances, in their order

An item is one utterance as an array (steps, ...): segments (steps, 64, 64, 3) or
segment embeddings (steps, features).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np

from utils import PAD_VALUE

Item = TypeVar("Item")


def pad_batch(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Stack utterances of different lengths into one batch, padded with `utils.PAD_VALUE`.

    Parameters
    ----------
    arrays : sequence of np.ndarray [shape=(n_i, ...)]
        Non-empty; every item has the same shape after its first axis.

    Returns
    -------
    batch : np.ndarray [shape=(len(arrays), max(n_i), ...), dtype=float32]
        Item ``i`` in ``batch[i, :n_i]``, padding after it (the model masks padded steps).
    """
    batch = np.full((len(arrays), max(len(item) for item in arrays), *arrays[0].shape[1:]), PAD_VALUE, np.float32)
    for row, item in enumerate(arrays):
        batch[row, : len(item)] = item
    return batch


def similar_length_batches(
    items: Iterable[Item],
    batch_size: int,
    *,
    length: Callable[[Item], int] = len,
    pending: int | None = None,
) -> Iterator[list[Item]]:
    """Batches of ``batch_size`` items with close lengths (the last one may be smaller).

    Parameters
    ----------
    items : iterable
        Read once, in order; may be a stream.
    batch_size : int > 0
    length : callable
        An item's length (its step count).
    pending : int >= batch_size or None
        Hold at most this many items: whenever that many are read, the run of
        ``batch_size`` with the smallest spread of lengths is yielded, so a stream
        of any length is batched in bounded memory. None reads everything first.

    Yields
    ------
    batch : list
        Items in ascending length order. With ``pending=None``, batches are the
        stable sort of the items by length cut into consecutive pieces.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    if pending is not None and pending < batch_size:
        raise ValueError(f"pending must be >= batch_size={batch_size}, got {pending!r}")
    held: list[Item] = []
    for item in items:
        held.append(item)
        if pending is not None and len(held) >= pending:
            held.sort(key=length)
            lengths = [length(item) for item in held]
            spreads = [lengths[i + batch_size - 1] - lengths[i] for i in range(len(held) - batch_size + 1)]
            first = int(np.argmin(spreads))
            yield held[first : first + batch_size]
            del held[first : first + batch_size]
    held.sort(key=length)
    for start in range(0, len(held), batch_size):
        yield held[start : start + batch_size]


class PaddedBatches:
    """An epoch of length-grouped, padded batches of labelled utterances, for training and scoring.

    With a seed, every epoch shuffles utterances within equal lengths and the order
    of the batches; without one, batches come in ascending length, the same every time.
    Yields ``(inputs, labels, sample_weights)`` of shapes (batch, steps, *item_shape),
    (batch,) and (batch,).
    """

    def __init__(
        self,
        arrays: Sequence[np.ndarray],
        labels: Sequence[int],
        batch_size: int,
        *,
        weights: dict[int, float] | None = None,
        seed: int | None = None,
    ) -> None:
        self.arrays = list(arrays)
        self.labels = np.asarray(labels, dtype=np.int32)
        self.batch_size = batch_size
        self.weights = weights
        self.rng = None if seed is None else np.random.default_rng(seed)
        self.lengths = [len(array) for array in self.arrays]
        self.item_shape = self.arrays[0].shape[1:]
        self.order = self._batches()

    def __len__(self) -> int:
        return len(self.order)

    def _batches(self) -> list[list[int]]:
        indices = range(len(self.arrays)) if self.rng is None else self.rng.permutation(len(self.arrays)).tolist()
        batches = list(similar_length_batches(indices, self.batch_size, length=self.lengths.__getitem__))
        if self.rng is not None:
            self.rng.shuffle(batches)
        return batches

    def batch(self, number: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        indices = self.order[number]
        inputs = pad_batch([self.arrays[index] for index in indices])
        labels = self.labels[indices]
        weights = np.ones(len(indices), np.float32) if self.weights is None else np.array(
            [self.weights[int(label)] for label in labels], np.float32
        )
        return inputs, labels, weights

    def epoch(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for number in range(len(self)):
            yield self.batch(number)
        self.reshuffle()

    def reshuffle(self) -> None:
        """A new batch order for the next epoch (no-op without a seed)."""
        if self.rng is not None:
            self.order = self._batches()

    def as_keras_data(self):
        """What ``model.fit`` takes on the current backend.

        TensorFlow gets a tf.data pipeline with a dynamic step axis (Keras' own
        adapters fix the shape from the first batches); JAX and PyTorch a PyDataset.
        """
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            signature = (
                tf.TensorSpec((None, None, *self.item_shape), tf.float32),
                tf.TensorSpec((None,), tf.int32),
                tf.TensorSpec((None,), tf.float32),
            )
            batches = tf.data.Dataset.from_generator(self.epoch, output_signature=signature)
            # A known length lets Keras end each epoch cleanly instead of running out of data.
            return batches.apply(tf.data.experimental.assert_cardinality(len(self))).prefetch(2)

        batches = self

        class PaddedBatchSequence(keras.utils.PyDataset):
            def __len__(self) -> int:
                return len(batches)

            def __getitem__(self, number: int):
                return batches.batch(number)

            def on_epoch_end(self) -> None:
                batches.reshuffle()

        return PaddedBatchSequence()


def predict(
    forward: Callable[[np.ndarray], np.ndarray], arrays: Sequence[np.ndarray], batch_size: int
) -> np.ndarray:
    """``forward`` over many utterances in length-grouped padded batches.

    Parameters
    ----------
    forward : callable
        Padded batch (batch, steps, ...) -> outputs (batch, ...), such as
        `SpeechModel.inference_function` of a model.
    arrays : sequence of np.ndarray [shape=(n_i, ...)]
    batch_size : int > 0

    Returns
    -------
    outputs : np.ndarray [shape=(len(arrays), ...)]
        Row ``i`` belongs to ``arrays[i]``, whatever the batching.
    """
    lengths = [len(array) for array in arrays]
    outputs: list[np.ndarray | None] = [None] * len(arrays)
    for indices in similar_length_batches(range(len(arrays)), batch_size, length=lengths.__getitem__):
        for index, row in zip(indices, np.asarray(forward(pad_batch([arrays[i] for i in indices])))):
            outputs[index] = row
    return np.stack(outputs)

"""Batches of variable-length utterances: grouped by length, padded to their longest.

Training, validation, test scoring and inference all batch the same way, so padding
is small everywhere and a model sees the same kind of input in each:

    similar_length_batches(items, batch_size)   groups of items of close lengths
    pad_batch(arrays)                           one zero-padded (batch, steps, ...) array
    bucket_lengths(lengths)                     the few step counts training batches are padded to
    PaddedBatches(arrays, labels, batch_size)   an epoch of fixed-shape (inputs, labels, weights) for model.fit
    predict(forward, arrays, batch_size)        a forward function over many utterances, in their order

An item is one utterance as an array (steps, ...): segments (steps, 64, 64, 3) or
segment embeddings (steps, features).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np

from utils import PAD_VALUE

Item = TypeVar("Item")


def pad_batch(arrays: Sequence[np.ndarray], steps: int | None = None) -> np.ndarray:
    """Stack utterances of different lengths into one batch, padded with `utils.PAD_VALUE`.

    Parameters
    ----------
    arrays : sequence of np.ndarray [shape=(n_i, ...)]
        Non-empty; every item has the same shape after its first axis.
    steps : int >= max(n_i) or None
        Pad to this many steps; None pads to the longest item.

    Returns
    -------
    batch : np.ndarray [shape=(len(arrays), steps or max(n_i), ...), dtype=float32]
        Item ``i`` in ``batch[i, :n_i]``, padding after it (the model masks padded steps).
    """
    longest = max(len(item) for item in arrays)
    if steps is not None and steps < longest:
        raise ValueError(f"steps={steps} is shorter than the longest item ({longest})")
    batch = np.full((len(arrays), steps or longest, *arrays[0].shape[1:]), PAD_VALUE, np.float32)
    for row, item in enumerate(arrays):
        batch[row, : len(item)] = item
    return batch


def within_budget(batch: Sequence[Item], budget: int, *, length: Callable[[Item], int] = len) -> Iterator[list[Item]]:
    """``batch`` (in ascending length order) cut into consecutive pieces whose padded size stays within ``budget``.

    A piece's padded size is its item count times its longest item's length; an item
    longer than ``budget`` forms a piece of its own.
    """
    piece: list[Item] = []
    for item in batch:
        if piece and (len(piece) + 1) * max(length(item), *map(length, piece)) > budget:
            yield piece
            piece = []
        piece.append(item)
    if piece:
        yield piece


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


BUCKETS = 4  # step counts a training epoch's batches are padded to: one compiled step per bucket under XLA
PREFETCH = 4  # batches assembled ahead of the training step
WORKERS = min(8, os.cpu_count() or 1)  # threads assembling batches; padding copies release the GIL


def bucket_lengths(lengths: Sequence[int], count: int = BUCKETS) -> tuple[int, ...]:
    """A few step counts to pad batches up to: the ``count`` quantiles of ``lengths``, rounded up.

    Parameters
    ----------
    lengths : sequence of int > 0
        The step count of every utterance of an epoch.
    count : int > 0
        Buckets at most (fewer when lengths repeat).

    Returns
    -------
    buckets : tuple of int
        Ascending; the last is ``max(lengths)``, so every batch fits one.
    """
    quantiles = np.quantile(np.asarray(lengths), np.arange(1, count + 1) / count, method="higher")
    return tuple(sorted({int(q) for q in quantiles}))


def bucket_for(buckets: Sequence[int], longest: int) -> int:
    """The shortest of ``buckets`` (ascending, from `bucket_lengths`) that holds ``longest`` steps."""
    return buckets[bisect.bisect_left(buckets, longest)]


class PaddedBatches:
    """An epoch of labelled utterances in a few fixed batch shapes, for ``model.fit``.

    Utterances are grouped by length into batches of exactly ``batch_size`` (the last is
    filled up with utterances drawn again from the epoch), each padded to the shortest of a
    few bucket lengths (`bucket_lengths`) that holds it: XLA (JAX, and TensorFlow's
    distribution) compiles one step per bucket, not per batch, and every device of a
    data-parallel step gets an equal share. With a seed, every epoch shuffles utterances
    within equal lengths and the order of the batches; without one, batches come in
    ascending length, the same every time. Yields ``(inputs, labels, sample_weights)`` of
    shapes (rows, bucket, *item_shape), (rows,) and (rows,); with ``vectors`` (one
    fixed-length vector per utterance, such as its prosody), inputs are the pair
    ``(padded, vectors)`` of shapes (rows, bucket, *item_shape) and (rows, values).

    ``shard=(index, count)``: this process of ``count`` (several hosts under JAX, where each
    process feeds its own part of the global batch) takes rows ``index * rows`` to
    ``(index + 1) * rows`` of every batch, ``rows = batch_size // count``. Every process
    makes the same batches (same seed), so the shards are disjoint and the buckets agree.
    """

    def __init__(
        self,
        arrays: Sequence[np.ndarray],
        labels: Sequence[int],
        batch_size: int,
        *,
        weights: dict[int, float] | None = None,
        seed: int | None = None,
        shard: tuple[int, int] = (0, 1),
        vectors: Sequence[np.ndarray] | None = None,
    ) -> None:
        index, count = shard
        if batch_size % count:
            raise ValueError(f"batch_size={batch_size} does not split into {count} equal shards")
        self.arrays = list(arrays)
        self.labels = np.asarray(labels, dtype=np.int32)
        self.vectors = None if vectors is None else np.stack(vectors).astype(np.float32)
        self.batch_size = batch_size
        self.rows = slice(index * batch_size // count, (index + 1) * batch_size // count)
        self.weights = weights
        self.rng = np.random.default_rng(0 if seed is None else seed)
        self.shuffle = seed is not None
        self.lengths = [len(array) for array in self.arrays]
        self.buckets = bucket_lengths(self.lengths)
        self.item_shape = self.arrays[0].shape[1:]
        self.order = self._batches()

    def __len__(self) -> int:
        return len(self.order)

    def _batches(self) -> list[np.ndarray]:
        count = len(self.arrays)
        indices = self.rng.permutation(count).tolist() if self.shuffle else range(count)
        batches = list(similar_length_batches(indices, self.batch_size, length=self.lengths.__getitem__))
        short = self.batch_size - len(batches[-1])
        if short:  # the same draw on every process: a seeded generator, used in the same order
            batches[-1] = batches[-1] + self.rng.choice(count, short, replace=count < short).tolist()
        if self.shuffle:
            self.rng.shuffle(batches)
        return [np.array(batch) for batch in batches]

    def assemble(self, indices: np.ndarray) -> tuple[np.ndarray | tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray]:
        """The padded inputs (and vectors), labels and sample weights of one batch, this process's rows of it."""
        steps = bucket_for(self.buckets, max(self.lengths[i] for i in indices))
        local = indices[self.rows]
        inputs = pad_batch([self.arrays[i] for i in local], steps=steps)
        labels = self.labels[local]
        weights = np.ones(len(local), np.float32) if self.weights is None else np.array(
            [self.weights[int(label)] for label in labels], np.float32
        )
        return (inputs if self.vectors is None else (inputs, self.vectors[local])), labels, weights

    def batch(self, number: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.assemble(self.order[number])

    def epoch(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for number in range(len(self)):
            yield self.batch(number)
        self.reshuffle()

    def reshuffle(self) -> None:
        """A new batch order for the next epoch (no-op without a seed)."""
        if self.shuffle:
            self.order = self._batches()

    def as_keras_data(self, workers: int = WORKERS):
        """What ``model.fit`` takes on the current backend: batches assembled by ``workers`` threads, prefetched.

        TensorFlow gets a tf.data pipeline (a parallel map over each epoch's batch plan,
        with a dynamic step axis: one trace); JAX and PyTorch a ``keras.utils.PyDataset``
        run by Keras' own worker threads.
        """
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            def plan() -> Iterator[np.ndarray]:  # each epoch's index lists, so workers never see a reshuffle
                order = self.order
                self.reshuffle()
                yield from order

            rows = self.rows.stop - self.rows.start
            inputs = [(rows, None, *self.item_shape)] + ([] if self.vectors is None else [(rows, self.vectors.shape[1])])
            shapes = (*inputs, (rows,), (rows,))
            types = (tf.float32,) * len(inputs) + (tf.int32, tf.float32)

            def flat(indices: np.ndarray) -> list[np.ndarray]:
                inputs, labels, weights = self.assemble(indices)
                return [*(inputs if isinstance(inputs, tuple) else [inputs]), labels, weights]

            def assemble(indices):
                batch = tf.numpy_function(flat, [indices], types, stateful=False)
                *x, labels, weights = (tf.ensure_shape(tensor, shape) for tensor, shape in zip(batch, shapes))
                return (x[0] if len(x) == 1 else tuple(x)), labels, weights

            batches = tf.data.Dataset.from_generator(plan, output_signature=tf.TensorSpec((self.batch_size,), tf.int64))
            batches = batches.map(assemble, num_parallel_calls=workers, deterministic=True)
            # A known length lets Keras end each epoch cleanly instead of running out of data.
            return batches.apply(tf.data.experimental.assert_cardinality(len(self))).prefetch(PREFETCH)

        batches = self

        class PaddedBatchSequence(keras.utils.PyDataset):
            def __init__(self) -> None:
                super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=PREFETCH)

            def __len__(self) -> int:
                return len(batches)

            def __getitem__(self, number: int):
                return batches.batch(number)

            def on_epoch_end(self) -> None:
                batches.reshuffle()

        return PaddedBatchSequence()


def predict(
    forward: Callable[..., np.ndarray],
    arrays: Sequence[np.ndarray],
    batch_size: int,
    *,
    bucketed: bool = False,
    vectors: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """``forward`` over many utterances in length-grouped padded batches.

    Parameters
    ----------
    forward : callable
        Padded batch (batch, steps, ...) -> outputs (batch, ...), such as
        `SpeechModel.inference_function` of a model.
    arrays : sequence of np.ndarray [shape=(n_i, ...)]
    batch_size : int > 0
    bucketed : bool
        Pad every batch to one of the `bucket_lengths` of ``arrays`` instead of its own
        longest: a few shapes, for a forward function that XLA compiles per shape.
    vectors : sequence of np.ndarray [shape=(values,)] or None
        One vector per utterance, given to ``forward`` as its second argument (batch, values).

    Returns
    -------
    outputs : np.ndarray [shape=(len(arrays), ...)]
        Row ``i`` belongs to ``arrays[i]``, whatever the batching.
    """
    lengths = [len(array) for array in arrays]
    buckets = bucket_lengths(lengths) if bucketed else None
    outputs: list[np.ndarray | None] = [None] * len(arrays)
    for indices in similar_length_batches(range(len(arrays)), batch_size, length=lengths.__getitem__):
        steps = None if buckets is None else bucket_for(buckets, max(lengths[i] for i in indices))
        inputs = [pad_batch([arrays[i] for i in indices], steps=steps)]
        if vectors is not None:
            inputs.append(np.stack([vectors[i] for i in indices]).astype(np.float32))
        for index, row in zip(indices, np.asarray(forward(*inputs))):
            outputs[index] = row
    return np.stack(outputs)

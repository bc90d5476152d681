"""batching.py: length-grouped padded batches for training, scoring and inference."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from batching import PaddedBatches, bucket_lengths, pad_batch, predict, similar_length_batches, within_budget
from utils import PAD_VALUE


def test_pad_batch_puts_each_at_the_start_of_its_row_with_padding_after():
    batch = pad_batch([np.full((2, 3), 1.0), np.full((4, 3), 2.0), np.full((1, 3), 3.0)])
    assert batch.shape == (3, 4, 3) and batch.dtype == np.float32
    assert batch[0, :2].tolist() == [[1.0] * 3] * 2 and (batch[0, 2:] == PAD_VALUE).all()
    assert (batch[1] == 2.0).all()
    assert batch[2, 0].tolist() == [3.0] * 3 and (batch[2, 1:] == PAD_VALUE).all()


def test_without_a_bound_batches_are_the_stable_length_sort_cut_in_pieces():
    lengths = [3, 1, 4, 1, 3, 2]
    batches = list(similar_length_batches(range(6), 2, length=lengths.__getitem__))
    assert batches == [[1, 3], [5, 0], [4, 2]]


def test_a_stream_is_batched_while_reading_not_after_it():
    read = []

    def stream():
        for length in [5, 1, 5, 1, 9, 1, 5, 9] * 4:
            read.append(length)
            yield length

    batches = similar_length_batches(stream(), 2, length=int, pending=4)
    first = next(batches)
    assert len(read) == 4  # a batch left after four items were read, not after all 32
    assert first == [1, 1]
    rest = list(batches)
    assert sorted(first + sum(rest, [])) == sorted([5, 1, 5, 1, 9, 1, 5, 9] * 4)
    assert all(len(batch) == 2 for batch in rest)


def test_bad_batch_sizes_are_refused():
    with pytest.raises(ValueError, match="batch_size"):
        list(similar_length_batches([1], 0, length=int))
    with pytest.raises(ValueError, match="pending"):
        list(similar_length_batches([1], 4, length=int, pending=2))


def test_padded_batches_group_by_length_and_weigh_classes():
    arrays = [np.full((length, 2), length, np.float32) for length in (3, 1, 4, 1, 3, 2)]
    batches = PaddedBatches(arrays, [0, 1, 0, 1, 0, 1], batch_size=2, weights={0: 2.0, 1: 0.5})
    assert batches.buckets == (2, 3, 4)  # the quartiles of the lengths: a batch of 1s is padded to 2
    shapes = [batches.batch(number)[0].shape for number in range(len(batches))]
    assert shapes == [(2, 2, 2), (2, 3, 2), (2, 4, 2)]
    inputs, labels, weights = batches.batch(2)
    assert inputs[0, :3].tolist() == [[3, 3]] * 3 and inputs[0, 3].tolist() == [PAD_VALUE] * 2
    assert labels.tolist() == [0, 0] and weights.tolist() == [2.0, 2.0]


def test_shuffled_batches_change_order_per_epoch_and_repeat_per_seed():
    arrays = [np.ones((1 + index % 3, 2), np.float32) * index for index in range(30)]
    orders = []
    for _ in range(2):
        batches = PaddedBatches(arrays, [0] * 30, batch_size=4, seed=7)
        epochs = [[batch[0][:, 0, 0].tolist() for batch in batches.epoch()] for _ in range(2)]
        assert epochs[0] != epochs[1]
        # Every utterance once, and the short last batch filled up to 4 with 2 drawn again.
        assert len(sum(epochs[0], [])) == 32 and set(sum(epochs[0], [])) == {float(i) for i in range(30)}
        orders.append(epochs)
    assert orders[0] == orders[1]


def test_predict_returns_rows_in_the_order_of_the_inputs_and_pads_little():
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(length, 3)).astype(np.float32) + 5 for length in (4, 1, 7, 2, 2, 6, 1)]
    shapes = []

    def forward(batch):
        shapes.append(batch.shape)
        real = (batch != PAD_VALUE).any(axis=2)
        return (batch * real[..., None]).sum(axis=1) / real.sum(axis=1, keepdims=True)  # mean over real steps

    means = predict(forward, arrays, batch_size=3)
    np.testing.assert_allclose(means, np.stack([array.mean(axis=0) for array in arrays]), rtol=1e-5)
    assert shapes == [(3, 2, 3), (3, 6, 3), (1, 7, 3)]


def test_an_epoch_has_few_fixed_shapes_and_every_batch_is_full():
    rng = np.random.default_rng(1)
    lengths = rng.integers(3, 40, size=101)
    arrays = [np.ones((length, 2), np.float32) for length in lengths]
    batches = PaddedBatches(arrays, [0] * 101, batch_size=8, seed=0)
    shapes = {inputs.shape for inputs, _, _ in batches.epoch()}
    assert len(batches) == 13 and len(batches.buckets) <= 4 and batches.buckets[-1] == lengths.max()
    assert shapes == {(8, bucket, 2) for bucket in batches.buckets}


def test_shards_split_every_batch_into_disjoint_equal_parts():
    arrays = [np.full((1 + index % 5, 1), index, np.float32) for index in range(20)]
    whole = PaddedBatches(arrays, list(range(20)), batch_size=4, seed=3)
    shards = [PaddedBatches(arrays, list(range(20)), batch_size=4, seed=3, shard=(index, 2)) for index in range(2)]
    for epoch in range(2):
        for (inputs, labels, _), *parts in zip(list(whole.epoch()), *(list(shard.epoch()) for shard in shards)):
            assert [part[1].tolist() for part in parts] == [labels[:2].tolist(), labels[2:].tolist()]
            assert all(part[0].shape == (2, *inputs.shape[1:]) for part in parts)  # the global batch's bucket
    with pytest.raises(ValueError, match="equal shards"):
        PaddedBatches(arrays, [0] * 20, batch_size=5, shard=(0, 2))


def test_the_tensorflow_pipeline_delivers_the_same_batches_as_an_epoch():
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the tf.data pipeline is the TensorFlow backend's")
    arrays = [np.full((1 + index % 6, 2), index, np.float32) for index in range(23)]
    reference = PaddedBatches(arrays, list(range(23)), batch_size=4, seed=5)
    pipeline = PaddedBatches(arrays, list(range(23)), batch_size=4, seed=5).as_keras_data(workers=3)
    for _ in range(2):  # the second epoch reshuffled alike
        expected = list(reference.epoch())
        delivered = [tuple(tensor.numpy() for tensor in batch) for batch in pipeline]
        assert len(delivered) == len(expected) == 6
        for got, want in zip(delivered, expected):
            assert all(np.array_equal(a, b) for a, b in zip(got, want))
    assert isinstance(pipeline, tf.data.Dataset)


def test_bucketed_prediction_pads_to_a_few_lengths_and_changes_no_output():
    arrays = [np.full((length, 1), length, np.float32) for length in (1, 2, 3, 5, 6, 7, 9, 10)]
    shapes = []

    def forward(batch):
        shapes.append(batch.shape)
        return batch.max(axis=1)

    outputs = predict(forward, arrays, batch_size=2, bucketed=True)
    assert outputs[:, 0].tolist() == [1, 2, 3, 5, 6, 7, 9, 10]
    assert {steps for _, steps, _ in shapes} <= set(bucket_lengths([len(a) for a in arrays])) and len(shapes) == 4


def test_within_budget_cuts_a_sorted_batch_where_padding_would_exceed_the_budget():
    lengths = [2, 3, 5, 9, 40]
    pieces = list(within_budget(lengths, 10, length=lambda n: n))
    assert pieces == [[2, 3], [5], [9], [40]]  # [2, 3, 5] pads to 3 x 5 = 15 > 10; 40 goes alone, whatever the budget
    assert [n for piece in pieces for n in piece] == lengths
    assert list(within_budget([], 10)) == []


def test_vectors_travel_with_their_utterances_in_training_and_prediction_batches():
    # Utterance i: its segments all equal i, its vector (i, -i), its label i.
    arrays = [np.full((1 + index % 5, 2), index, np.float32) for index in range(13)]
    vectors = [np.array([index, -index], np.float32) for index in range(13)]
    batches = PaddedBatches(arrays, list(range(13)), batch_size=4, seed=1, vectors=vectors)
    epoch = list(batches.epoch())
    for (padded, rows), labels, _ in epoch:
        assert rows.shape == (4, 2) and np.array_equal(rows[:, 0], labels) and np.array_equal(padded[:, 0, 0], labels)
    if keras.backend.backend() == "tensorflow":  # the tf.data pipeline delivers the same pairs
        reference = PaddedBatches(arrays, list(range(13)), batch_size=4, seed=1, vectors=vectors)
        delivered = list(PaddedBatches(arrays, list(range(13)), batch_size=4, seed=1, vectors=vectors).as_keras_data(workers=2))
        for ((padded, rows), labels, _), ((want_padded, want_rows), want_labels, _) in zip(delivered, reference.epoch(), strict=True):
            assert np.array_equal(padded.numpy(), want_padded) and np.array_equal(rows.numpy(), want_rows)
            assert np.array_equal(labels.numpy(), want_labels)
    seen = []

    def forward(padded: np.ndarray, rows: np.ndarray) -> np.ndarray:
        assert np.array_equal(padded[:, 0, 0], rows[:, 0])  # each row's vector beside its segments
        seen.append(len(rows))
        return rows

    np.testing.assert_array_equal(predict(forward, arrays, 3, vectors=vectors), np.stack(vectors))
    assert sum(seen) == 13

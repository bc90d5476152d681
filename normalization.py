"""Standardisation by statistics: the recogniser's speaker and prosody normalisations, and the statistics themselves.

`Standardization` is `recognizer.EmotionRecognizer`'s ``speaker_normalization`` and
``prosody_normalization`` (and the statistics head's); `RunningStatistics` computes a group's
statistics, whole or as they come.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from frontend import PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class Standardization(layers.Layer):
    """Per-feature standardisation ``(x - mean) / std`` with stored statistics, or with statistics the caller gives.

    The recogniser's speaker normalisation: stored are the training speakers' pooled
    statistics (what a single request gets); a group's own statistics (a speaker's, a
    folder's, a stream's running estimate, see `RunningStatistics`) can be given per call.
    The statistics head standardises its pooled statistics with it too.

    Masking: supports masking; the mask passes through unchanged.

    Example:
    >>> layer = Standardization()
    >>> layer.adapt(np.random.normal(3.0, 2.0, size=(100, 4)))
    >>> layer(np.full((1, 2, 4), 3.0, "float32")).shape
    (1, 2, 4)
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.supports_masking = True

    def build(self, input_shape) -> None:
        features = input_shape[-1]
        self.mean = self.add_weight(name="mean", shape=(features,), initializer="zeros", trainable=False, dtype="float32")
        self.std = self.add_weight(name="std", shape=(features,), initializer="ones", trainable=False, dtype="float32")

    def adapt(self, values: np.ndarray | Sequence[np.ndarray]) -> None:
        """Store the statistics of ``values`` (rows of features, or a sequence of such arrays)."""
        statistics = RunningStatistics.of([values] if isinstance(values, np.ndarray) else values)
        if not self.built:
            self.build((None, len(statistics.mean)))
        self.mean.assign(statistics.mean)
        self.std.assign(statistics.std)

    def call(self, values, mean=None, std=None):
        """``values`` (..., features) standardised; ``mean`` and ``std`` of shape (features,) replace the stored ones."""
        mean = self.mean if mean is None else mean
        std = self.std if std is None else std
        return (values - ops.cast(mean, values.dtype)) / ops.cast(std, values.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


class RunningStatistics:
    """Per-feature mean and standard deviation of rows seen so far: a group's statistics, whole or as a running estimate.

    The one definition of the statistics `Standardization` uses: a speaker's files are added
    all at once, a stream's embeddings as they come.

    Example:
    >>> statistics = RunningStatistics()
    >>> statistics.update(np.ones((3, 4)))
    >>> statistics.mean.shape, float(statistics.std[0]) > 0
    ((4,), True)
    """

    EPSILON = 1e-6  # added to the deviation: a feature constant over the group standardises to 0, not NaN

    def __init__(self) -> None:
        self.count = np.zeros(())
        self._sum = np.zeros(())
        self._squares = np.zeros(())

    @classmethod
    def of(cls, arrays: Iterable[np.ndarray]) -> RunningStatistics:
        """The statistics of every row of ``arrays`` (each (steps, features)): a whole group's."""
        statistics = cls()
        for rows in arrays:
            statistics.update(rows)
        return statistics

    def update(self, rows: np.ndarray) -> None:
        """Add ``rows`` (steps, features) to the statistics."""
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, np.shape(rows)[-1])
        self.count = self.count + len(rows)
        self._sum = self._sum + rows.sum(axis=0)
        self._squares = self._squares + np.square(rows).sum(axis=0)

    @property
    def mean(self) -> np.ndarray:
        """(features,) float32."""
        return (self._sum / np.maximum(self.count, 1)).astype(np.float32)

    @property
    def std(self) -> np.ndarray:
        """(features,) float32, with `EPSILON` added."""
        mean = self._sum / np.maximum(self.count, 1)
        variance = np.maximum(self._squares / np.maximum(self.count, 1) - np.square(mean), 0.0)
        return (np.sqrt(variance) + self.EPSILON).astype(np.float32)


class GroupStatistics:
    """A group's statistics (a speaker's, a folder's, a stream's so far): of its segment embeddings and of its prosodic vectors.

    What standardises a group's inputs in place of the training speakers' statistics:
    `standardization` gives `runs.Run.classify` its keyword arguments. A part with fewer rows
    than its minimum (a stream's first seconds) keeps the stored statistics.

    Parameters
    ----------
    min_segments : int >= 1
        Segment embeddings needed before the embeddings' own statistics are used.
    min_vectors : int >= 1
        Prosodic vectors needed before theirs are.

    Example:
    >>> group = GroupStatistics.of([np.ones((3, 4))], [np.zeros(2)])
    >>> sorted(key for key, value in group.standardization().items() if value is not None)
    ['mean', 'prosody_mean', 'prosody_std', 'std']
    """

    def __init__(self, min_segments: int = 1, min_vectors: int = 1) -> None:
        if min(min_segments, min_vectors) < 1:
            raise ValueError(f"min_segments and min_vectors must be >= 1, got {min_segments!r}, {min_vectors!r}")
        self.min_segments, self.min_vectors = min_segments, min_vectors
        self.embeddings, self.prosody = RunningStatistics(), RunningStatistics()

    @classmethod
    def of(cls, embeddings: Iterable[np.ndarray], prosody: Iterable[np.ndarray] | None = None) -> GroupStatistics:
        """The statistics of a whole group: its utterances' embeddings (each (segments, features)) and prosodic vectors (each (values,))."""
        group = cls()
        for rows in embeddings:
            group.embeddings.update(rows)
        for vector in prosody or ():
            group.prosody.update(np.asarray(vector)[np.newaxis])
        return group

    def update(self, embeddings: np.ndarray, prosody: np.ndarray | None = None) -> None:
        """Add ``embeddings`` (segments, features) and an utterance's prosodic vector (values,), if any."""
        self.embeddings.update(embeddings)
        if prosody is not None:
            self.prosody.update(np.asarray(prosody)[np.newaxis])

    def standardization(self) -> dict[str, np.ndarray | None]:
        """``mean``, ``std``, ``prosody_mean`` and ``prosody_std``: the group's, or None (the stored ones) for a part below its minimum."""
        own, own_prosody = self.embeddings.count >= self.min_segments, self.prosody.count >= self.min_vectors
        return {
            "mean": self.embeddings.mean if own else None,
            "std": self.embeddings.std if own else None,
            "prosody_mean": self.prosody.mean if own_prosody else None,
            "prosody_std": self.prosody.std if own_prosody else None,
        }

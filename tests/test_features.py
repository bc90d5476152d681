"""features.py: many files on all cores, with an on-disk cache."""

from __future__ import annotations

import dataclasses
import faulthandler
import logging
import os
import signal
import sys
import types

import numpy as np
import pytest
from conftest import tone

import features
from features import extract_features
from utils import DEFAULT_FEATURES, get_framed_log_melspectrogram


@pytest.fixture
def clips(write_audio):
    """Four short files of different lengths and pitches."""
    return [
        write_audio(f"corpus/clip{index}.wav", tone(200 + 150 * index, 0.5 + 0.4 * index))
        for index in range(4)
    ]


def cached_files(cache_dir):
    return sorted(cache_dir.rglob("*.npy"))


@pytest.mark.parametrize("workers", [1, 2])
def test_features_equal_the_single_file_function(clips, tmp_path, workers):
    result = extract_features(clips, cache_dir=tmp_path / "cache", workers=workers)
    assert list(result.segments) == [str(path) for path in clips]
    assert result.errors == {} and result.cache_hits == 0
    for path in clips:
        np.testing.assert_array_equal(result.segments[str(path)], get_framed_log_melspectrogram(path))


def test_second_run_reads_the_cache(clips, tmp_path):
    cache = tmp_path / "cache"
    first = extract_features(clips, cache_dir=cache, workers=2)
    second = extract_features(clips, cache_dir=cache, workers=2)
    assert second.cache_hits == len(clips)
    for name, segments in first.segments.items():
        np.testing.assert_array_equal(second.segments[name], segments)
    assert len(cached_files(cache)) == len(clips)
    assert not list(cache.rglob("*.partial"))


def test_cache_files_are_plain_numpy(clips, tmp_path):
    cache = tmp_path / "cache"
    extract_features(clips, cache_dir=cache)
    loaded = sorted(np.load(path, allow_pickle=False).shape for path in cached_files(cache))
    assert loaded == sorted(get_framed_log_melspectrogram(path).shape for path in clips)


def test_a_changed_parameter_misses_the_cache(clips, tmp_path):
    cache = tmp_path / "cache"
    extract_features(clips, cache_dir=cache, workers=1)
    changed = extract_features(clips, cache_dir=cache, workers=1, config=DEFAULT_FEATURES.replace(n_mels=40))
    assert changed.cache_hits == 0
    assert all(segments.shape[2] == 40 for segments in changed.segments.values())
    assert extract_features(clips, cache_dir=cache, workers=1, config=DEFAULT_FEATURES.replace(fmin=50.0)).cache_hits == 0
    assert extract_features(clips, cache_dir=cache, workers=1).cache_hits == len(clips)


def test_a_changed_file_misses_the_cache(clips, tmp_path, write_audio):
    cache = tmp_path / "cache"
    extract_features(clips, cache_dir=cache)
    status = os.stat(clips[0])
    write_audio("corpus/clip0.wav", tone(3000, 0.5))
    os.utime(clips[0], ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000_000))
    again = extract_features(clips, cache_dir=cache)
    assert again.cache_hits == len(clips) - 1
    np.testing.assert_array_equal(again.segments[str(clips[0])], get_framed_log_melspectrogram(clips[0]))


def test_a_corrupt_cache_file_is_recomputed(clips, tmp_path, caplog):
    cache = tmp_path / "cache"
    extract_features(clips[:1], cache_dir=cache)
    (cache_file,) = cached_files(cache)
    cache_file.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        again = extract_features(clips[:1], cache_dir=cache)
    assert again.cache_hits == 0
    assert "1 cache entries were unusable and are computed again" in caplog.text and "unreadable" in caplog.text
    np.testing.assert_array_equal(again.segments[str(clips[0])], get_framed_log_melspectrogram(clips[0]))
    assert extract_features(clips[:1], cache_dir=cache).cache_hits == 1


@pytest.mark.parametrize(
    "poison, problem",
    [
        (lambda a: np.where(np.arange(a.size).reshape(a.shape) == 7, np.nan, a).astype(np.float32), "non-finite values"),
        (lambda a: a[:, :32], "shape"),
        (lambda a: a.astype(np.float64), "dtype float64"),
    ],
)
def test_a_poisoned_cache_entry_with_a_valid_header_is_computed_again(clips, tmp_path, caplog, poison, problem):
    cache = tmp_path / "cache"
    extract_features(clips, cache_dir=cache, workers=1)
    victim = cached_files(cache)[0]
    np.save(victim, poison(np.load(victim)))  # a well-formed .npy with the wrong content
    with caplog.at_level(logging.WARNING):
        again = extract_features(clips, cache_dir=cache, workers=1)
    assert again.cache_hits == len(clips) - 1
    assert caplog.text.count("cache entries were unusable") == 1 and problem in caplog.text
    for clip in clips:
        np.testing.assert_array_equal(again.segments[str(clip)], get_framed_log_melspectrogram(clip))
    assert extract_features(clips, cache_dir=cache, workers=1).cache_hits == len(clips)  # repaired


def test_an_unwritable_cache_folder_is_used_as_none_with_one_warning(tmp_path, caplog):
    (tmp_path / "a-file").write_text("")
    with caplog.at_level(logging.WARNING):
        assert features.usable_cache_dir(tmp_path / "a-file" / "cache") is None
        assert features.usable_cache_dir(tmp_path / "cache") == tmp_path / "cache"
    assert caplog.text.count("running without a cache") == 1 and "a-file is a file" in caplog.text


@pytest.mark.parametrize("workers", [1, 2])
def test_a_bad_file_is_reported_once_and_skipped(clips, tmp_path, caplog, workers):
    broken = tmp_path / "corpus" / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00not really a wave file")
    missing = tmp_path / "corpus" / "gone.wav"
    paths = [clips[0], broken, clips[1], missing, clips[2]]
    with caplog.at_level(logging.WARNING):
        result = extract_features(paths, cache_dir=tmp_path / "cache", workers=workers)
    assert list(result.segments) == [str(clips[0]), str(clips[1]), str(clips[2])]
    assert set(result.errors) == {str(broken), str(missing)}
    assert result.errors[str(broken)].startswith(f"{broken}: not readable as audio")
    assert result.errors[str(missing)] == f"{missing}: file not found"
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert sum(str(broken) in line for line in warnings) == 1
    assert sum(str(missing) in line for line in warnings) == 1


@dataclasses.dataclass(frozen=True)
class KillsItsProcess:
    """A transform that ends the process computing it with a signal, as a crashing native library does."""

    signal_number: int

    def apply(self, y: np.ndarray, sr: int) -> np.ndarray:
        faulthandler.disable()  # pytest's handler would print the worker's stack first
        os.kill(os.getpid(), self.signal_number)
        return y


@pytest.mark.parametrize("kill", [signal.SIGSEGV, signal.SIGKILL], ids=["SIGSEGV", "SIGKILL"])
def test_a_worker_killed_by_a_signal_ends_the_work_with_one_line_naming_the_file_and_the_signal(clips, tmp_path, kill):
    sources = [clips[0], clips[1], (clips[2], KillsItsProcess(kill)), clips[3]]
    with pytest.raises(features.WorkerError) as raised:
        extract_features(sources, cache_dir=tmp_path / "cache", workers=2)
    message = str(raised.value)
    assert message.startswith(f"{clips[2]}: a features worker process was killed by {kill.name} while computing it")
    assert "\n" not in message
    for path in sorted((tmp_path / "cache").rglob("*")):  # nothing half-written: whole arrays only
        assert path.is_dir() or np.load(path).dtype == np.float32


def test_without_a_cache_nothing_is_written(clips, tmp_path):
    before = sorted(tmp_path.rglob("*"))
    result = extract_features(clips, cache_dir=None, workers=2)
    assert len(result.segments) == len(clips)
    assert sorted(tmp_path.rglob("*")) == before


def test_returned_arrays_are_read_only(clips, tmp_path):
    for cache in (None, tmp_path / "cache", tmp_path / "cache"):
        result = extract_features(clips[:2], cache_dir=cache, workers=1)
        assert not any(segments.flags.writeable for segments in result.segments.values())


def test_a_bad_worker_count_fails_before_any_file_is_read(clips, tmp_path):
    with pytest.raises(ValueError, match="workers"):
        extract_features(clips, cache_dir=tmp_path / "cache", workers=0)
    assert not (tmp_path / "cache").exists()


def test_duplicate_paths_are_computed_once(clips):
    result = extract_features([clips[0], clips[0], str(clips[0])], workers=1)
    assert list(result.segments) == [str(clips[0])]


def test_workers_start_by_spawn_once_a_threaded_framework_is_loaded(clips, monkeypatch):
    for framework in ("tensorflow", "jax", "torch"):
        monkeypatch.delitem(sys.modules, framework, raising=False)
    assert features._process_context().get_start_method() == ("fork" if sys.platform.startswith("linux") else "spawn")
    monkeypatch.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))
    assert features._process_context().get_start_method() == "spawn"
    result = extract_features(clips[:2], workers=2)
    np.testing.assert_array_equal(result.segments[str(clips[1])], get_framed_log_melspectrogram(clips[1]))


def test_enhanced_sources_are_computed_from_the_enhanced_audio_and_cached_apart(clips, tmp_path):
    from augment import Enhancement
    from utils import load_wav

    cache = tmp_path / "cache"
    enhancement = Enhancement(speed=1.1, shift_seconds=0.1, snr_db=20.0, noise_seed=3)
    sources = [clips[2], (clips[2], enhancement)]
    first = extract_features(sources, cache_dir=cache, workers=2)
    assert list(first.segments) == [str(clips[2]), (str(clips[2]), enhancement)]
    expected = get_framed_log_melspectrogram(enhancement.apply(load_wav(clips[2]), 16000))
    np.testing.assert_array_equal(first.segments[(str(clips[2]), enhancement)], expected)
    assert not np.array_equal(first.segments[str(clips[2])][0], expected[0])
    assert extract_features(sources, cache_dir=cache).cache_hits == 2
    other = Enhancement(speed=0.9, shift_seconds=0.1, snr_db=20.0, noise_seed=3)
    assert extract_features([(clips[2], other)], cache_dir=cache).cache_hits == 0


class FrameCounter:
    """A stand-in embedder: each segment's embedding is its mean over time and Mel bands (3 values); calls are counted."""

    width = 3
    fingerprint = "frame-means"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, segments: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.asarray(segments).mean(axis=(2, 3))


def test_embeddings_are_cached_and_a_damaged_one_is_computed_again(clips, tmp_path, caplog):
    segments = extract_features(clips, workers=1).segments
    model = FrameCounter()

    def embed():
        return features.extract_embeddings(model, segments, width=model.width, fingerprint=model.fingerprint, cache_dir=tmp_path / "embeddings")

    first = embed()
    assert list(first) == list(segments) and model.calls >= 1
    for name, embedding in first.items():
        np.testing.assert_allclose(embedding, np.asarray(segments[name]).mean(axis=(1, 2)), rtol=1e-6)
    calls = model.calls
    assert embed().keys() == first.keys()
    assert model.calls == calls  # all from the cache
    damaged, poisoned = sorted((tmp_path / "embeddings").rglob("*.npy"))[:2]
    damaged.write_bytes(b"garbage")
    np.save(poisoned, np.full_like(np.load(poisoned), np.nan))  # NaN would turn a whole speaker's normalisation into NaN
    with caplog.at_level(logging.WARNING):
        again = embed()
    assert "2 cache entries were unusable" in caplog.text and model.calls == calls + 1  # both in one backbone call
    for name in segments:
        np.testing.assert_array_equal(again[name], first[name])


def test_the_encoder_fingerprint_changes_with_the_weights():
    from tiny_model import tiny_model

    model = tiny_model(compile=False)
    before = features.encoder_fingerprint(model.encoder)
    assert features.encoder_fingerprint(model.encoder) == before
    kernel = model.encoder.backbone.layers[0].kernel
    kernel.assign(kernel + 1.0)
    assert features.encoder_fingerprint(model.encoder) != before


def test_many_utterances_share_a_backbone_call_up_to_the_segment_budget(clips, monkeypatch):
    segments = extract_features(clips, workers=1).segments
    total = sum(len(item) for item in segments.values())
    model = FrameCounter()
    features.extract_embeddings(model, segments, width=model.width)
    assert model.calls == 1  # a few short clips: one call
    monkeypatch.setattr(features, "EMBEDDING_BATCH_SEGMENTS", max(len(item) for item in segments.values()))
    model = FrameCounter()
    features.extract_embeddings(model, segments, width=model.width)
    assert 1 < model.calls <= total


def test_a_bad_file_and_its_enhanced_copies_are_reported_once(clips, tmp_path, caplog):
    from augment import Enhancement

    broken = tmp_path / "corpus" / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00not really a wave file")
    copies = [(broken, Enhancement(1.0, 0.0, 20.0, seed)) for seed in (1, 2)]
    with caplog.at_level(logging.WARNING):
        result = extract_features([clips[0], broken, *copies], cache_dir=tmp_path / "cache", workers=2)
    assert list(result.errors) == [str(broken)] and list(result.segments) == [str(clips[0])]
    assert sum(str(broken) in record.getMessage() for record in caplog.records) == 1


def test_prosody_of_every_source_is_the_sets_function_and_is_cached_apart(clips, tmp_path):
    import prosody
    from augment import Enhancement
    from utils import load_wav

    cache = tmp_path / "cache"
    enhancement = Enhancement(speed=1.1, shift_seconds=0.1, snr_db=20.0, noise_seed=3)
    sources = [*clips[:2], (clips[1], enhancement)]
    vectors = features.extract_prosody(sources, "permissive", cache_dir=cache, workers=2)
    assert list(vectors) == [str(clips[0]), str(clips[1]), (str(clips[1]), enhancement)]
    np.testing.assert_allclose(vectors[str(clips[0])], prosody.prosodic_features(load_wav(clips[0]), 16000), atol=1e-6)
    enhanced = prosody.prosodic_features(enhancement.apply(load_wav(clips[1]), 16000), 16000)
    np.testing.assert_allclose(vectors[(str(clips[1]), enhancement)], enhanced, atol=1e-6)
    assert len(cached_files(cache)) == 3
    again = features.extract_prosody(sources, "permissive", cache_dir=cache, workers=1)
    assert all(np.array_equal(again[key], vectors[key]) for key in vectors) and len(cached_files(cache)) == 3
    extract_features(sources, cache_dir=cache)  # the segments of the same sources: other entries
    assert len(cached_files(cache)) == 6


def test_egemaps_is_extracted_in_fresh_worker_processes_after_tensorflow_loaded(clips, tmp_path):
    pytest.importorskip("opensmile")
    import tensorflow  # noqa: F401  (openSMILE would crash this process now: the workers must not be forks of it)

    vectors = features.extract_prosody(clips[:1], "egemaps", workers=1)
    assert vectors[str(clips[0])].shape == (88,) and np.isfinite(vectors[str(clips[0])]).all()

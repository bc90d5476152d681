"""runs.py: the run folder's layout, naming, validation, the newest usable run, loading."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import SHARED_RUN_FEATURES, SHARED_RUN_LABELS

import runs
from utils import DEFAULT_FEATURES


def test_runs_started_in_the_same_second_get_distinct_names(tmp_path):
    first = runs.new_partial_run(tmp_path, "20260101-000000-x")
    runs.complete(first)
    second = runs.new_partial_run(tmp_path, "20260101-000000-x")
    third = runs.new_partial_run(tmp_path, "20260101-000000-x")
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        ".partial-20260101-000000-x-2", ".partial-20260101-000000-x-3", "20260101-000000-x",
    ]
    assert {second.name, third.name} == {".partial-20260101-000000-x-2", ".partial-20260101-000000-x-3"}


def test_resume_takes_the_newest_partial_run_that_recorded_its_options(tmp_path):
    with pytest.raises(runs.RunError, match="found no interrupted run"):
        runs.newest_partial_run(tmp_path)
    older = runs.new_partial_run(tmp_path, "20260101-000000-a")
    runs.write_json(older / runs.OPTIONS, {})
    runs.new_partial_run(tmp_path, "20270101-000000-b")  # started, but crashed before its options
    assert runs.newest_partial_run(tmp_path) == older


def test_a_loaded_run_carries_its_labels_features_and_a_working_model(shared_run):
    run = runs.load_run(shared_run.folder)
    assert run.labels == SHARED_RUN_LABELS
    assert run.features == DEFAULT_FEATURES.replace(**SHARED_RUN_FEATURES)
    prosody = np.random.default_rng(1).normal(size=(2, run.model.head.config.prosody_features)).astype(np.float32)  # the default branch
    probabilities = run.forward(np.random.default_rng(0).normal(size=(2, 3, 64, 64, 3)).astype(np.float32), prosody)
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_a_run_of_an_earlier_version_is_one_line_saying_to_retrain(tmp_path):
    import keras

    (tmp_path / runs.LABELS).write_text(json.dumps(["neutral", "sad"]))
    segments = keras.Input((None, 8, 8, 3))
    keras.Model(segments, keras.layers.Dense(2)(keras.ops.mean(segments, axis=(1, 2, 3)))).save(tmp_path / runs.MODEL_KERAS)
    (tmp_path / runs.OLD_SAVED_MODEL).write_bytes(b"an earlier version's SavedModel")
    with pytest.raises(runs.RunError, match="written by an earlier version.*retrain it with python train.py"):
        runs.load_run(tmp_path)


def test_a_folder_that_is_not_a_run_lists_what_it_lacks(tmp_path):
    (tmp_path / runs.LABELS).write_text("[]")
    assert runs.missing_files(tmp_path) == [runs.MODEL_KERAS]
    with pytest.raises(runs.RunError, match="is not a training run: it lacks model.keras"):
        runs.load_run(tmp_path)
    with pytest.raises(runs.RunError, match="does not exist"):
        runs.load_run(tmp_path / "nothing")


def test_resume_skips_a_run_that_failed_naming_it_and_takes_it_by_path(tmp_path, caplog):
    interrupted = runs.new_partial_run(tmp_path, "20260101-000000-a")
    runs.write_json(interrupted / runs.OPTIONS, {})
    failed = runs.new_partial_run(tmp_path, "20270101-000000-b")
    runs.write_json(failed / runs.OPTIONS, {})
    runs.mark_failed(failed, OSError(28, "No space left on device"))
    with caplog.at_level("WARNING"):
        assert runs.newest_partial_run(tmp_path) == interrupted
    assert f"skipped {failed.name}, whose last attempt failed (OSError: [Errno 28] No space left on device); " \
           f"to continue it anyway: --resume {failed}" in caplog.text
    assert runs.partial_run(failed) == failed
    done = runs.complete(interrupted)
    with pytest.raises(runs.RunError, match="is not a partial run of train.py"):
        runs.partial_run(done)


@pytest.mark.parametrize("names", [["neutral", "sad"], ["neutral", "sad", "angry", "happy"]])
def test_labels_json_that_disagrees_with_the_models_outputs_is_refused_at_load(shared_run, tmp_path, names):
    copy = shutil.copytree(shared_run.folder, tmp_path / "run")
    (copy / runs.LABELS).write_text(json.dumps(names))
    with pytest.raises(runs.RunError, match=f"labels.json names {len(names)} classes but the model has 3 outputs"):
        runs.load_run(copy)


def egemaps_run(folder):
    """An untrained tiny run whose head joins openSMILE's eGeMAPS set."""
    from tiny_model import tiny_model

    tiny_model(2, prosody_set="egemaps").save(folder / runs.MODEL_KERAS)
    (folder / runs.LABELS).write_text(json.dumps(["neutral", "sad"]))
    return folder


def test_a_run_trained_with_egemaps_names_the_missing_opensmile_at_load(tmp_path, monkeypatch):
    import cli

    folder = egemaps_run(tmp_path)
    monkeypatch.setattr(cli, "installed", lambda package: package != "opensmile")
    with pytest.raises(runs.RunError, match="--prosody egemaps.*pip install opensmile.*--model a run trained with --prosody permissive"):
        runs.load_run(folder)


def test_a_run_trained_with_egemaps_predicts_in_a_process_that_loaded_tensorflow(tmp_path):
    pytest.importorskip("opensmile")
    import prosody

    run = runs.load_run(egemaps_run(tmp_path))
    tone = np.sin(np.arange(32000) * 2 * np.pi * 150 / 16000).astype(np.float32) * 0.3
    windows, probabilities = run.predict_waveform(tone, 16000, 1.0)
    assert windows.shape == (2, 2) and np.isfinite(windows).all()
    np.testing.assert_allclose(probabilities.sum(), 1, atol=1e-5)
    assert prosody._egemaps_extractor.cache_info().currsize == 0  # computed by the worker, not here

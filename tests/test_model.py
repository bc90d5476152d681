"""SpeechModel.py: variable length, masking, attention, backends, save and export."""

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

import SpeechModel as speech_model_module
import utils
from backbones import BackboneWeightsError
from SpeechModel import HeadConfig, SegmentScaling, SpeechModel

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
    probabilities, weights = SpeechModel.attention_model(model).predict(batch, verbose=0)
    np.testing.assert_allclose(probabilities, model.predict(batch, verbose=0), atol=1e-6)
    assert weights.shape == (3, 5)
    for row, length in enumerate(lengths):
        assert weights[row, :length].sum() == pytest.approx(1, abs=1e-5)
        assert (weights[row, :length] > 0).all()
        np.testing.assert_array_equal(weights[row, length:], 0)


def test_an_utterance_of_pure_padding_gives_finite_probabilities():
    batch = padded_batch([3, 1])
    batch[1] = 0
    probabilities, weights = SpeechModel.attention_model(tiny_model()).predict(batch, verbose=0)
    assert np.isfinite(probabilities).all()
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


def test_keras_file_round_trip_gives_the_same_predictions(tmp_path):
    model = tiny_model()
    batch = padded_batch([4, 2])
    model.fit(batch, np.array([0, 2]), verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(batch, verbose=0), model.predict(batch, verbose=0), atol=1e-6)
    _, weights = SpeechModel.attention_model(loaded).predict(batch, verbose=0)
    np.testing.assert_array_equal(weights[1, 2:], 0)


def test_saved_model_export_serves_any_segment_count(tmp_path):
    import tensorflow as tf

    model = tiny_model()
    SpeechModel.export(model, tmp_path / "export")
    served = tf.saved_model.load(str(tmp_path / "export"))
    for lengths in ([3], [7, 2, 5]):
        batch = padded_batch(lengths)
        expected = model.predict(batch, verbose=0)
        np.testing.assert_allclose(served.serve(tf.constant(batch)).numpy(), expected, atol=1e-5)
        signature = served.signatures["serving_default"]
        (output,) = signature(segments=tf.constant(batch)).values()
        np.testing.assert_allclose(output.numpy(), expected, atol=1e-5)


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
    assert model.get_layer("blstm").dtype_policy.name == "mixed_bfloat16"
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


def test_image_size_resizes_segments_inside_the_model_and_the_export_agrees(tmp_path):
    model = SpeechModel.create_model(
        3, weights=None, backbone=tiny_backbone((16, 16, 3)), segment_shape=SEGMENT_SHAPE, image_size=16,
        head=HeadConfig(lstm_units=4, attention_units=4, dense_units=(8,)), compile=False,
    )
    batch = padded_batch([2, 3])
    expected = model.predict(batch, verbose=0)
    assert expected.shape == (2, 3)
    import tensorflow as tf

    SpeechModel.export(model, tmp_path / "exported")
    exported = tf.saved_model.load(str(tmp_path / "exported"))  # held: serve() needs it alive
    np.testing.assert_allclose(exported.serve(tf.constant(batch)).numpy(), expected, atol=1e-5)
    model.save(tmp_path / "model.keras")
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "model.keras").predict(batch, verbose=0), expected, atol=1e-5)


def test_real_resnet50v2_shapes():
    model = SpeechModel.create_model(weights=None)
    assert model.input_shape == (None, None, 64, 64, 3)
    assert model.get_layer("segment_encoder").compute_output_shape((None, None, 64, 64, 3)) == (None, None, 2048)
    assert model.get_layer("blstm").output.shape == (None, None, 256)
    probabilities = model.predict(np.random.default_rng(3).normal(size=(2, 3, 64, 64, 3)).astype("float32"), verbose=0)
    assert probabilities.shape == (2, 8)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)


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
        backbone = model.get_layer("segment_encoder").backbone
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


def test_export_refuses_the_torch_backend_with_the_way_out(monkeypatch):
    model = tiny_model()
    monkeypatch.setattr(speech_model_module.keras.backend, "backend", lambda: "torch")
    with pytest.raises(RuntimeError, match="save model.keras and export it after loading"):
        SpeechModel.export(model, "unused")


def test_a_head_trained_on_embeddings_gives_the_full_model_the_same_predictions():
    model = tiny_model()
    batch = padded_batch([3, 5, 1])
    embeddings = SpeechModel.embedding_model(model).predict(batch, verbose=0)
    assert embeddings.shape == (3, 5, 4)
    # embedding all segments as one long sequence gives each segment's own embedding
    flat = batch.reshape(1, -1, *SEGMENT_SHAPE)
    np.testing.assert_allclose(SpeechModel.embedding_model(model).predict(flat, verbose=0)[0], embeddings.reshape(-1, 4), atol=1e-5)
    embeddings[0, 3:] = 0
    embeddings[2, 1:] = 0  # padding rows as the trainer leaves them
    head = SpeechModel.create_head(3, embedding_size=4, head=tiny_head())
    head.fit(embeddings, np.array([0, 1, 2]), epochs=2, verbose=0)
    SpeechModel.load_head_weights(model, head)
    np.testing.assert_allclose(model.predict(batch, verbose=0), head.predict(embeddings, verbose=0), atol=1e-5)


def test_adapted_normalization_standardises_embeddings_and_padding_stays_masked():
    model = tiny_model()
    batch = padded_batch([3, 5])
    embeddings = SpeechModel.embedding_model(model).predict(batch, verbose=0)
    real = np.concatenate([embeddings[0, :3], embeddings[1, :5]])
    SpeechModel.adapt_normalization(model, real)
    normalization = model.get_layer("embedding_normalization")
    standardised = np.asarray(normalization(real[np.newaxis]))[0]
    np.testing.assert_allclose(standardised.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(standardised.std(axis=0), 1, atol=1e-2)
    together = model.predict(batch, verbose=0)
    np.testing.assert_allclose(model.predict(batch[:1, :3], verbose=0)[0], together[0], atol=1e-5)


def test_a_mixed_precision_copy_computes_in_bfloat16_with_the_same_weights_and_masking():
    model = tiny_model()
    features = model.get_layer("segment_encoder").features
    SpeechModel.adapt_normalization(model, np.random.default_rng(0).normal(0.5, 0.2, (40, features)).astype("float32"))
    batch = padded_batch([2, 5, 3])
    copy = SpeechModel.precision_copy(model)
    np.testing.assert_allclose(  # the adapted statistics (in bfloat16), not the identity
        np.asarray(copy.get_layer("embedding_normalization").mean, np.float32),
        np.asarray(model.get_layer("embedding_normalization").mean), atol=1e-2,
    )
    assert copy.get_layer("blstm").dtype_policy.name == "mixed_bfloat16"
    assert copy.get_layer("segment_encoder").backbone.layers[0].dtype_policy.name == "mixed_bfloat16"
    assert copy.get_layer("emotion").dtype_policy.name == "float32"
    assert model.get_layer("blstm").dtype_policy.name == "float32"  # the original is untouched
    probabilities = copy.predict(batch, verbose=0)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, model.predict(batch, verbose=0), atol=0.03)
    np.testing.assert_allclose(copy.predict(batch[1:2, :5], verbose=0)[0], probabilities[1], atol=1e-2)


def test_a_head_of_another_shape_is_refused_with_the_layers_that_differ():
    model = tiny_model()
    other = SpeechModel.create_head(3, embedding_size=4, head=HeadConfig(lstm_units=8, attention_units=8, dense_units=(16, 8)))
    with pytest.raises(ValueError, match=r"layers \['dense_2', 'emotion'\] differ"):  # a layer more, another input size
        SpeechModel.load_head_weights(model, other)
    wider = SpeechModel.create_head(3, embedding_size=4, head=HeadConfig(lstm_units=6, attention_units=8, dense_units=(16,)))
    with pytest.raises(ValueError, match="blstm"):
        SpeechModel.load_head_weights(model, wider)


def test_a_head_config_refuses_impossible_values():
    with pytest.raises(ValueError, match="dropout"):
        HeadConfig(dropout=1.0)
    with pytest.raises(ValueError, match="units"):
        HeadConfig(dense_units=(16, 0))


def test_the_inference_function_gives_predict_for_any_batch_and_length():
    model = tiny_model()
    forward = SpeechModel.inference_function(model)
    for lengths in ([2, 5], [1], [3, 3, 7]):
        batch = padded_batch(lengths)
        np.testing.assert_allclose(forward(batch), model.predict(batch, verbose=0), atol=1e-5)


def test_the_statistics_head_masks_padding_exactly_and_round_trips(tmp_path):
    model = tiny_model(head=HeadConfig(kind="stats", dense_units=(16,)), compile=False)
    assert "blstm" not in [layer.name for layer in model.layers]
    batch = padded_batch([2, 5, 1])
    together = model.predict(batch, verbose=0)
    for row, length in enumerate([2, 5, 1]):
        np.testing.assert_allclose(model.predict(batch[row : row + 1, :length], verbose=0)[0], together[row], atol=1e-5)
    model.save(tmp_path / "stats.keras")
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "stats.keras").predict(batch, verbose=0), together, atol=1e-5)
    with pytest.raises(ValueError, match="no attention layer"):
        SpeechModel.attention_model(model)
    with pytest.raises(ValueError, match="kind must be one of"):
        HeadConfig(kind="transformer")


def test_embedding_dropout_acts_in_training_only():
    head = HeadConfig(lstm_units=8, attention_units=8, dense_units=(16,), dropout=0.0, embedding_dropout=0.5)
    model = tiny_model(head=head, compile=False)  # no other dropout: a difference is the embeddings'
    batch = padded_batch([3, 4])
    np.testing.assert_allclose(model(batch, training=False), model.predict(batch, verbose=0), atol=1e-6)
    assert not np.allclose(model(batch, training=True), model(batch, training=False), atol=1e-6)


def test_the_standardized_head_is_the_model_after_its_normalisation():
    model = tiny_model(compile=False)
    SpeechModel.adapt_normalization(model, np.random.default_rng(1).normal(0.3, 2.0, (40, 4)).astype("float32"))
    batch = padded_batch([3, 5])
    embeddings = SpeechModel.embedding_model(model).predict(batch, verbose=0)
    normalised = np.array(model.get_layer("embedding_normalization")(embeddings))
    normalised[0, 3:] = 0  # padding rows, masked
    np.testing.assert_allclose(SpeechModel.standardized_head(model).predict(normalised, verbose=0), model.predict(batch, verbose=0), atol=1e-5)


def test_the_statistics_head_is_a_logistic_regression_on_standardised_statistics():
    head = HeadConfig(kind="stats")
    assert (head.dense_units, head.weight_decay) == ((), 1e-2)  # the kind's own defaults
    assert (HeadConfig().dense_units, HeadConfig().weight_decay) == ((256, 128), 0.0)
    model = tiny_model(head=head)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.name for layer in dense] == ["emotion"] and dense[0].kernel_regularizer.l2 == pytest.approx(1e-2)
    rng = np.random.default_rng(2)
    utterances = [rng.normal(3.0, 2.0, (length, 4)).astype("float32") for length in rng.integers(2, 9, 30)]
    SpeechModel.adapt_normalization(model, np.concatenate(utterances))
    SpeechModel.adapt_statistics_normalization(model, utterances)
    layers = [model.get_layer(name) for name in ("embedding_normalization", "statistics", "statistics_normalization")]
    standardised = np.concatenate([np.asarray(layers[2](layers[1](layers[0](u[np.newaxis])))) for u in utterances])
    np.testing.assert_allclose(standardised.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(standardised.std(axis=0), 1, atol=1e-3)
    with pytest.raises(ValueError, match="weight_decay"):
        HeadConfig(weight_decay=-1.0)


def test_the_statistics_normalisation_travels_with_the_head_weights_and_the_saved_model(tmp_path):
    rng = np.random.default_rng(3)
    utterances = [rng.normal(1.0, 3.0, (5, 4)).astype("float32") for _ in range(12)]
    head = SpeechModel.create_head(3, embedding_size=4, head=HeadConfig(kind="stats"))
    SpeechModel.adapt_normalization(head, np.concatenate(utterances))
    SpeechModel.adapt_statistics_normalization(head, utterances)
    model = tiny_model(head=HeadConfig(kind="stats"), compile=False)
    SpeechModel.load_head_weights(model, head)
    batch = padded_batch([3, 5])
    embeddings = SpeechModel.embedding_model(model).predict(batch, verbose=0)
    embeddings[0, 3:] = utils.PAD_VALUE
    np.testing.assert_allclose(model.predict(batch, verbose=0), head.predict(embeddings, verbose=0), atol=1e-5)
    model.save(tmp_path / "stats.keras")
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "stats.keras").predict(batch, verbose=0), model.predict(batch, verbose=0), atol=1e-5)


def test_an_image_size_equal_to_the_segments_resizes_nothing():
    model = tiny_model(image_size=SEGMENT_SHAPE[0], compile=False)
    assert model.get_layer("segment_encoder").get_config()["image_size"] is None
    assert tiny_model(image_size=SEGMENT_SHAPE[0] + 1, compile=False).get_layer("segment_encoder").get_config()["image_size"] == SEGMENT_SHAPE[0] + 1


def test_fine_tuning_settings_slow_the_backbone_and_keep_its_batchnorm(tmp_path):
    batch, labels = padded_batch([3, 4]), np.array([0, 2])

    def one_step(**settings):
        model = tiny_model(**settings)
        backbone = model.get_layer("segment_encoder").backbone
        conv, norm = backbone.layers[0], backbone.layers[1]
        before = [np.array(conv.kernel), np.array(norm.moving_mean), np.array(model.get_layer("emotion").kernel)]
        model.train_on_batch(batch, labels)
        after = [np.array(conv.kernel), np.array(norm.moving_mean), np.array(model.get_layer("emotion").kernel)]
        return model, [not np.allclose(b, a) for b, a in zip(before, after)]

    model, (conv_moved, statistics_moved, head_moved) = one_step(backbone_learning_rate_scale=0.0, freeze_batch_normalization=True)
    assert (conv_moved, statistics_moved, head_moved) == (False, False, True)
    assert (model.optimizer.backbone_scale, model.optimizer.backbone_prefixes) == (0.0, ("tiny_backbone/",))
    model.save(tmp_path / "finetune.keras")
    loaded = keras.models.load_model(tmp_path / "finetune.keras")
    assert isinstance(loaded.optimizer, speech_model_module.BackboneScaledAdam) and loaded.optimizer.backbone_scale == 0.0
    _, moved = one_step()
    assert moved == [True, True, True]
    assert type(tiny_model().optimizer) is keras.optimizers.Adam  # scale 1: Keras' own Adam


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_training_keeps_float32_variables_softmax_and_export(precision):
    shape = (32, 32, 3)
    model = SpeechModel.create_model(
        3, weights=None, backbone="efficientnet_lite0", segment_shape=shape, head=tiny_head(), precision=precision,
        learning_rate=1e-3,
    )
    policy = f"mixed_{precision}"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored after building
    assert model.get_layer("segment_encoder").backbone.layers[2].dtype_policy.name == policy  # the backbone's too
    assert model.get_layer("blstm").dtype_policy.name == policy and model.get_layer("emotion").dtype_policy.name == "float32"
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
    assert {layer.dtype_policy.name for layer in exported.layers} == {"float32"}
    np.testing.assert_allclose(exported.predict(batch, verbose=0), probabilities, atol=0.05)

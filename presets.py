"""The named recognisers: the paper's model, the default recipe and the fast recipe.

Each preset says what the model is, in `recipe.Options`' terms (backbone, image size, stages,
head, prosodic set); `SpeechModel.from_preset` builds one, and train.py's defaults are the
"default" preset's. How each trains is the recipe's: the paper's model is fine-tuned end to end
(``train.py --backbone-mode finetune``), the other two train their head on a frozen backbone,
each speaker standardised by their own statistics. Importing this module loads no
deep-learning framework.
"""

from __future__ import annotations

PAPER, DEFAULT, FAST = "paper", "default", "fast"
_DEFAULT_MODEL = {"backbone": "efficientnet_lite0", "image_size": 224, "stages": "all", "head": "stats", "prosody": "permissive"}
PRESETS = {
    # Zhang et al. 2021: an ImageNet CNN per 64x64 segment (ResNet50V2 stands in for AlexNet,
    # which has no Keras ImageNet weights), its top stage, the BLSTM and attention; no prosody.
    PAPER: {"backbone": "resnet50v2", "image_size": 64, "stages": "last", "head": "blstm-attention", "prosody": "none"},
    # The recipe measured best on held-out speakers (README, "What the recipe reaches").
    DEFAULT: _DEFAULT_MODEL,
    # The default at the segments' own 64x64: about 8x the files/s at inference, a few UAR points lower (docs/RESULTS.md).
    FAST: {**_DEFAULT_MODEL, "image_size": 64},
}

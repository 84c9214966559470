"""The tiny YOLACT the tests build and the configs folder."""
from pathlib import Path

import torch

from models.yolact import YOLACT


TINY = dict(
    backbone="resnet18",
    fpn_channels=16,
    num_prototypes=4,
    proto_channels=16,
    head_channels=16,
    input_size=64,
    anchor_scales=[8, 16, 32, 64, 128],
)


def tiny_model(**overrides) -> YOLACT:
    torch.manual_seed(0)
    return YOLACT(num_classes=3, **{**TINY, **overrides})


CONFIGS = Path(__file__).resolve().parents[3] / "experiments" / "configs"

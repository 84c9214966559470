"""Official YOLACT (dbolya/yolact, v1) ResNet weights -> a maskbench YOLACT Lightning checkpoint.

    convert_yolact_official("yolact_resnet50_54_800000.pth", "yolact_r50_550.ckpt")
    YOLACT.load_from_checkpoint("yolact_r50_550.ckpt")            # or: maskbench validate --ckpt_path ...
    maskbench convert yolact-official yolact_im700_54_800000.pth yolact_r101_700.ckpt   # 700 px, from the name

The square input size the weights were trained at is not in the file: it comes from `input_size`, or else from
the official file name (`yolact_im700_*` -> 700, `yolact_im400_*` -> 400, any other -> 550, yolact_base). The
official im700 config also trains 300 masks per image (`masks_to_train`, yolact_im700_config) instead of 100.

The official file is a raw state dict. Its ResNet depth (blocks per stage), class count (conf_layer rows /
anchors - 1), prototype count and FPN width are read from the shapes; the model is built with the official v1
settings (square anchors, scales 24..384 x input_size / 550, ResNet normalisation). Keys map as:

    backbone.conv1 / bn1                -> backbone.model.conv1 / bn1   (timm's ResNet names)
    backbone.layers.{s}.*               -> backbone.model.layer{s+1}.*
    fpn.lat_layers.{i}, pred_layers.{i} -> neck.lateral.{2-i}, neck.output.{2-i}   (official: coarsest first)
    fpn.downsample_layers.{i}           -> neck.extra.{i}
    proto_net.{j}                       -> protonet.{j}
    prediction_layers.0.upfeature / bbox_layer / conf_layer / mask_layer
                                        -> head.upfeature / box_layer / class_layer / coefficient_layer
    semantic_seg_conv                   -> semantic_head

The head's channel layout (anchor * (C+1) + class) is the official one, so its tensors copy unchanged. Keys the
official loader also drops are tolerated: `backbone.layerN*` (not `layers`) and `fpn.downsample_layers.{i >= 2}`.
Anything else that does not land on the model, and any model tensor left unfilled, is an error listing the keys.
YOLACT++ (9 anchors, DCN backbones, mask-IoU head) and the DarkNet-53 backbone are not convertible here.
"""
from __future__ import annotations

import os
import re
from typing import Any

from torch import Tensor

from models.common.checkpoint import (
    check_converted_state_dict,
    read_state_dict,
    rename_key,
    save_converted_checkpoint,
)
from models.yolact.model import RESNET_MEAN, RESNET_STD, YOLACT

OFFICIAL_SCALES = [24, 48, 96, 192, 384]  # at 550 px
BASE_INPUT_SIZE = 550
# masks_to_train of the official configs by input size (data/config.py: yolact_base / im400 / im700).
OFFICIAL_MASKS_TO_TRAIN = {400: 100, 550: 100, 700: 300}
_SIZE_IN_NAME = re.compile(r"^yolact_im(\d+)_")
RESNET_DEPTHS = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101"}
HEAD_NAMES = {
    "upfeature.0": "upfeature.0",
    "bbox_layer": "box_layer",
    "conf_layer": "class_layer",
    "mask_layer": "coefficient_layer",
}
_PATTERNS = [
    (re.compile(r"^backbone\.(conv1|bn1)\.(.+)$"), lambda m: f"backbone.model.{m[1]}.{m[2]}"),
    (re.compile(r"^backbone\.layers\.(\d+)\.(.+)$"), lambda m: f"backbone.model.layer{int(m[1]) + 1}.{m[2]}"),
    (re.compile(r"^fpn\.lat_layers\.(\d+)\.(.+)$"), lambda m: f"neck.lateral.{2 - int(m[1])}.{m[2]}"),
    (re.compile(r"^fpn\.pred_layers\.(\d+)\.(.+)$"), lambda m: f"neck.output.{2 - int(m[1])}.{m[2]}"),
    (re.compile(r"^fpn\.downsample_layers\.([01])\.(.+)$"), lambda m: f"neck.extra.{m[1]}.{m[2]}"),
    (re.compile(r"^proto_net\.(\d+)\.(.+)$"), lambda m: f"protonet.{m[1]}.{m[2]}"),
    (
        re.compile(r"^prediction_layers\.0\.(upfeature\.0|bbox_layer|conf_layer|mask_layer)\.(.+)$"),
        lambda m: f"head.{HEAD_NAMES[m[1]]}.{m[2]}",
    ),
    (re.compile(r"^semantic_seg_conv\.(.+)$"), lambda m: f"semantic_head.{m[1]}"),
]
# Dropped by the official loader too: stale ResNet names of old checkpoints and unused extra downsample layers.
_TOLERATED = re.compile(r"^(backbone\.layer\d.*|fpn\.downsample_layers\.([2-9]|\d\d+)\..+)$")


def convert_yolact_official(in_path: str, out_path: str, input_size: int | None = None) -> str:
    """Convert the official YOLACT checkpoint at `in_path` into a Lightning checkpoint at `out_path`.

    `input_size` is the square input the weights were trained at (550; 700 for yolact_im700, 400 for im400);
    None reads it from the file name (`input_size_from_name`). Returns `out_path`; raises ValueError naming the
    file when the weights do not map.
    """
    if input_size is None:
        input_size = input_size_from_name(in_path)
    elif input_size < 32:
        raise ValueError(f"{in_path}: input_size must be >= 32 pixels (550, 700, ...), got {input_size}")
    state = read_state_dict(in_path, "a raw state dict of tensors (the official YOLACT format)", wrappers=())
    settings = official_settings(state, in_path, input_size)
    model = YOLACT(**settings)
    model.load_state_dict(map_state_dict(state, model.state_dict(), in_path), strict=True)
    return save_converted_checkpoint(model, out_path, "models.yolact.YOLACT")


def input_size_from_name(path: str) -> int:
    """The input size an official weights file was trained at, by its name: `yolact_im700_54_800000.pth` -> 700,
    `yolact_im400_*` -> 400; any other name (yolact_base_*, yolact_resnet50_*) -> 550."""
    match = _SIZE_IN_NAME.match(os.path.basename(path))
    return int(match[1]) if match else BASE_INPUT_SIZE


def official_settings(state: dict[str, Tensor], path: str, input_size: int = BASE_INPUT_SIZE) -> dict[str, Any]:
    """YOLACT constructor arguments reproducing the official v1 model whose weights are `state`."""
    for key in ("backbone.conv1.weight", "prediction_layers.0.bbox_layer.weight", "proto_net.10.weight"):
        if key not in state:
            raise ValueError(f"{path}: no {key!r}: not an official YOLACT ResNet checkpoint (DarkNet is not supported)")
    if any("conv_offset" in key for key in state) or "maskiou_net.main.0.weight" in state:
        raise ValueError(f"{path}: YOLACT++ checkpoint (DCN / mask-IoU head): not supported, only YOLACT v1")
    blocks = []
    for stage in range(4):
        indices = {int(k.split(".")[3]) for k in state if k.startswith(f"backbone.layers.{stage}.")}
        blocks.append(len(indices))
    backbone = RESNET_DEPTHS.get(tuple(blocks))
    if backbone is None:
        raise ValueError(f"{path}: ResNet with {blocks} blocks per stage: neither ResNet-50 nor ResNet-101")
    num_anchors = state["prediction_layers.0.bbox_layer.weight"].shape[0] // 4
    if num_anchors != 3:
        raise ValueError(f"{path}: {num_anchors} anchors per cell; only YOLACT v1 (3) is supported")
    conf_rows = state["prediction_layers.0.conf_layer.weight"].shape[0]
    if conf_rows % num_anchors:
        raise ValueError(f"{path}: conf_layer has {conf_rows} rows, not a multiple of {num_anchors} anchors")
    return dict(
        num_classes=conf_rows // num_anchors - 1,
        backbone=backbone,
        out_indices=[2, 3, 4],
        pretrained=False,
        frozen_stages=0,
        norm="bn",
        fpn_channels=state["fpn.lat_layers.0.weight"].shape[0],
        num_extra_levels=2,
        num_prototypes=state["proto_net.10.weight"].shape[0],
        proto_channels=state["proto_net.0.weight"].shape[0],
        head_channels=state["prediction_layers.0.upfeature.0.weight"].shape[0],
        input_size=input_size,
        anchor_scales=[int(scale * input_size / BASE_INPUT_SIZE) for scale in OFFICIAL_SCALES],
        aspect_ratios=[1.0, 0.5, 2.0],
        square_anchors=True,
        pixel_mean=list(RESNET_MEAN),
        pixel_std=list(RESNET_STD),
        masks_to_train=OFFICIAL_MASKS_TO_TRAIN.get(input_size, 100),
    )


def map_state_dict(state: dict[str, Tensor], expected: dict[str, Tensor], path: str) -> dict[str, Tensor]:
    """Official keys -> maskbench keys; every model tensor filled, every official key used or tolerated."""
    mapped, unused = {}, []
    for key, value in state.items():
        new_key = rename_key(key, _PATTERNS)
        if new_key is None:
            if not _TOLERATED.match(key):
                unused.append(key)
            continue
        mapped[new_key] = value
    return check_converted_state_dict(mapped, expected, unused, path, "official YOLACT")

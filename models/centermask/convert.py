"""centermask2 (detectron2) CenterMask / CenterMask-Lite VoVNet weights -> a maskbench CenterMask Lightning checkpoint.

    convert_centermask2("centermask2-lite-V-39-eSE-FPN-ms-4x.pth", "centermask_lite_v39.ckpt")
    CenterMask.load_from_checkpoint("centermask_lite_v39.ckpt")        # or: maskbench validate --ckpt_path ...

The file is a detectron2 checkpoint: a torch file with the weights under "model" (a raw state dict is accepted
too). Everything the model needs is read from the tensors: the VoVNet configuration (stem, stage widths, layers per
block, blocks per stage; matched against timm's VoVNet configurations), the class count, the FPN width, the FCOS
tower depth, the SAG-Mask and MaskIoU head sizes. The model is built in the official structure (eSE in every OSA
block, frozen BatchNorm), with detectron2's input convention (BGR, 0..255 means, std 1 — or the file's own
`pixel_mean` / `pixel_std`) and the official test sizes: 600 / 1000 for the Lite models (128-channel FPN),
800 / 1333 otherwise. Keys map as:

    backbone.bottom_up.*                        -> backbone.body.*   (models.common.vovnet.official_key)
    backbone.fpn_lateral{3,4,5}                 -> neck.fpn.inner_blocks.{0,1,2}.0
    backbone.fpn_output{3,4,5}                  -> neck.fpn.layer_blocks.{0,1,2}.0
    backbone.top_block.p6 / p7                  -> neck.fpn.extra_blocks.p6 / p7
    proposal_generator.fcos_head.*              -> fcos_head.*       (same names)
    roi_heads.mask_head.mask_fcn{k}             -> mask_head.convs.{2(k-1)}
    roi_heads.mask_head.spatialAtt.conv         -> mask_head.attention.conv
    roi_heads.mask_head.deconv / predictor      -> mask_head.deconv / predictor
    roi_heads.maskiou_head.maskiou_fcn{k}       -> maskiou_head.convs.{2(k-1)}
    roi_heads.maskiou_head.maskiou_fc1 / _fc2   -> maskiou_head.fc1 / fc2
    roi_heads.maskiou_head.maskiou              -> maskiou_head.predictor

A key that lands nowhere, a model tensor left unfilled or a shape that differs is an error listing them.
ResNet-backed CenterMask files are refused: detectron2's MSRA ResNet strides in the 1x1 convolution, timm's in the
3x3, so the weights would load but compute something else. Depthwise VoVNets (V-19-dw) are not supported either.
"""
from __future__ import annotations

import math
import re
from typing import Any

from timm.models.vovnet import model_cfgs
from torch import Tensor

from models.centermask.model import CenterMask
from models.common.checkpoint import (
    check_converted_state_dict,
    read_state_dict,
    rename_key,
    save_converted_checkpoint,
)
from models.common.vovnet import official_key

# detectron2's default input convention (cfg.MODEL.PIXEL_MEAN / PIXEL_STD, INPUT.FORMAT "BGR"), which the
# CenterMask configs keep.
DETECTRON2_PIXEL_MEAN = [103.530, 116.280, 123.675]
DETECTRON2_PIXEL_STD = [1.0, 1.0, 1.0]
LITE_SIZES, FULL_SIZES = (600, 1000), (800, 1333)

_BACKBONE = "backbone.bottom_up."
_PATTERNS = [
    (re.compile(r"^backbone\.fpn_lateral([345])\.(weight|bias)$"),
     lambda m: f"neck.fpn.inner_blocks.{int(m[1]) - 3}.0.{m[2]}"),
    (re.compile(r"^backbone\.fpn_output([345])\.(weight|bias)$"),
     lambda m: f"neck.fpn.layer_blocks.{int(m[1]) - 3}.0.{m[2]}"),
    (re.compile(r"^backbone\.top_block\.(p6|p7)\.(weight|bias)$"), lambda m: f"neck.fpn.extra_blocks.{m[1]}.{m[2]}"),
    (re.compile(r"^proposal_generator\.fcos_head\.((?:cls_tower|bbox_tower|cls_logits|bbox_pred|ctrness|scales)\..+)$"),
     lambda m: f"fcos_head.{m[1]}"),
    (re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$"),
     lambda m: f"mask_head.convs.{2 * (int(m[1]) - 1)}.{m[2]}"),
    (re.compile(r"^roi_heads\.mask_head\.spatialAtt\.conv\.weight$"), lambda m: "mask_head.attention.conv.weight"),
    (re.compile(r"^roi_heads\.mask_head\.(deconv|predictor)\.(weight|bias)$"), lambda m: f"mask_head.{m[1]}.{m[2]}"),
    (re.compile(r"^roi_heads\.maskiou_head\.maskiou_fcn(\d+)\.(weight|bias)$"),
     lambda m: f"maskiou_head.convs.{2 * (int(m[1]) - 1)}.{m[2]}"),
    (re.compile(r"^roi_heads\.maskiou_head\.maskiou_fc([12])\.(weight|bias)$"), lambda m: f"maskiou_head.fc{m[1]}.{m[2]}"),
    (re.compile(r"^roi_heads\.maskiou_head\.maskiou\.(weight|bias)$"), lambda m: f"maskiou_head.predictor.{m[1]}"),
]
# detectron2's GeneralizedRCNN input statistics: read into the settings, not weights.
_SETTINGS_ONLY = ("pixel_mean", "pixel_std")


def convert_centermask2(in_path: str, out_path: str) -> str:
    """Convert the centermask2 checkpoint at `in_path` into a Lightning checkpoint at `out_path`; returns `out_path`.

    Raises ValueError naming the file when the weights are not a convertible CenterMask.
    """
    state = read_state_dict(
        in_path, "a detectron2 checkpoint with a state dict of tensors under 'model'",
        hint="; a detectron2 training checkpoint with optimizer state may need its 'model' entry saved on its own first")
    model = CenterMask(**official_settings(state, in_path))
    model.load_state_dict(map_state_dict(state, model.state_dict(), in_path), strict=True)
    return save_converted_checkpoint(model, out_path, "models.centermask.CenterMask")


def official_settings(state: dict[str, Tensor], path: str) -> dict[str, Any]:
    """CenterMask constructor arguments reproducing the centermask2 model whose weights are `state`."""
    if any(key.startswith(_BACKBONE + "res") for key in state):
        raise ValueError(f"{path}: a ResNet CenterMask (detectron2's stride-in-1x1 MSRA ResNet): not convertible, "
                         "only VoVNet models are")
    for key in ("proposal_generator.fcos_head.cls_logits.weight", "backbone.fpn_lateral3.weight",
                _BACKBONE + "stem.stem_1/conv.weight", "roi_heads.mask_head.predictor.weight"):
        if key not in state:
            raise ValueError(f"{path}: no {key!r}: not a centermask2 CenterMask VoVNet checkpoint")
    if any("dw_conv3x3" in key for key in state):
        raise ValueError(f"{path}: a depthwise VoVNet (V-19-dw / slim-dw): not supported")
    fpn_channels = state["backbone.fpn_lateral3.weight"].shape[0]
    mask_convs = _count(state, r"^roi_heads\.mask_head\.mask_fcn(\d+)\.weight$")
    maskiou_convs = _count(state, r"^roi_heads\.maskiou_head\.maskiou_fcn(\d+)\.weight$")
    settings: dict[str, Any] = dict(
        num_classes=state["proposal_generator.fcos_head.cls_logits.weight"].shape[0],
        backbone=_vovnet_config(state, path),
        out_indices=[2, 3, 4],
        ese_every_block=True,
        pretrained=False,
        frozen_stages=0,
        norm="frozen_bn",
        fpn_channels=fpn_channels,
        fpn_norm="none",
        input_format="BGR",
        pixel_mean=_statistic(state, "pixel_mean", DETECTRON2_PIXEL_MEAN),
        pixel_std=_statistic(state, "pixel_std", DETECTRON2_PIXEL_STD),
        fcos_num_convs=sum(
            1 for k, v in state.items() if k.startswith("proposal_generator.fcos_head.cls_tower.") and v.ndim == 4
        ),
        mask_head_convs=mask_convs,
        mask_head_channels=state["roi_heads.mask_head.deconv.weight"].shape[1],
        sag_attention="roi_heads.mask_head.spatialAtt.conv.weight" in state,
        maskiou=maskiou_convs > 0,
        post_nms_top_n_test=50,
    )
    settings["min_size"], settings["max_size"] = LITE_SIZES if fpn_channels <= 128 else FULL_SIZES
    if maskiou_convs:
        channels = state["roi_heads.maskiou_head.maskiou_fcn1.weight"].shape[0]
        fc_inputs = state["roi_heads.maskiou_head.maskiou_fc1.weight"].shape[1]
        settings.update(maskiou_convs=maskiou_convs, maskiou_channels=channels,
                        roi_resolution=2 * math.isqrt(fc_inputs // channels))
    return settings


def map_state_dict(state: dict[str, Tensor], expected: dict[str, Tensor], path: str) -> dict[str, Tensor]:
    """Official keys -> maskbench keys; every model tensor filled, every official key used, every shape equal."""
    mapped, unused = {}, []
    for key, value in state.items():
        if key in _SETTINGS_ONLY:
            continue
        new_key = map_key(key)
        if new_key is None:
            unused.append(key)
            continue
        mapped[new_key] = value
    return check_converted_state_dict(mapped, expected, unused, path, "centermask2")


def map_key(key: str) -> str | None:
    """One centermask2 key -> its maskbench key, or None."""
    if key.startswith(_BACKBONE):
        inner = official_key(key[len(_BACKBONE):])
        return None if inner is None else f"backbone.body.{inner}"
    return rename_key(key, _PATTERNS)


def _vovnet_config(state: dict[str, Tensor], path: str) -> str:
    """The timm VoVNet configuration whose shapes the checkpoint's backbone has."""
    prefix = _BACKBONE
    stem = [state[f"{prefix}stem.stem_{j}/conv.weight"].shape[0] for j in (1, 2, 3)]
    stage_conv, stage_out, blocks, layers = [], [], [], set()
    for stage in (2, 3, 4, 5):
        first = f"{prefix}stage{stage}.OSA{stage}_1."
        if f"{first}concat.OSA{stage}_1_concat/conv.weight" not in state:
            raise ValueError(f"{path}: no VoVNet stage {stage} in the backbone")
        stage_conv.append(state[f"{first}layers.0.OSA{stage}_1_0/conv.weight"].shape[0])
        stage_out.append(state[f"{first}concat.OSA{stage}_1_concat/conv.weight"].shape[0])
        blocks.append(_count(state, rf"^{re.escape(prefix)}stage{stage}\.OSA{stage}_(\d+)\.concat\."))
        layers.add(_count(state, rf"^{re.escape(prefix)}stage{stage}\.OSA{stage}_1\.layers\.(\d+)\."))
    if len(layers) != 1:
        raise ValueError(f"{path}: VoVNet stages with different layers per block {sorted(layers)}")
    shape = dict(stem_chs=stem, stage_conv_chs=stage_conv, stage_out_chs=stage_out, block_per_stage=blocks,
                 layer_per_block=layers.pop())
    for name, cfg in sorted(model_cfgs.items()):
        if not cfg["depthwise"] and cfg["attn"] == "ese" and all(cfg[k] == v for k, v in shape.items()):
            return name
    raise ValueError(f"{path}: a VoVNet with {shape} matches no known VoVNet configuration")


def _count(state: dict[str, Tensor], pattern: str) -> int:
    """Distinct values of the pattern's first group among the keys."""
    regex = re.compile(pattern)
    return len({match[1] for key in state if (match := regex.match(key))})


def _statistic(state: dict[str, Tensor], key: str, default: list[float]) -> list[float]:
    """A detectron2 input statistic on the 0..1 scale (the file's own when it has one)."""
    values = state[key].reshape(-1).tolist() if key in state else default
    if len(values) != 3:
        raise ValueError(f"{key} must hold 3 values, got {values}")
    return [float(v) / 255.0 for v in values]

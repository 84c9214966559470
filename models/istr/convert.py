"""Official ISTR V1 weights (hujiecpp/ISTR, detectron2 format) -> a maskbench ISTR Lightning checkpoint.

    convert_istr_official("ISTR-R50-3x.pth", "istr_r50_3x.ckpt")       # or: maskbench convert istr-official IN OUT
    ISTR.load_from_checkpoint("istr_r50_3x.ckpt")

The file is a detectron2 checkpoint (weights under "model", or a raw state dict). The model's sizes are read from
the tensors: ResNet depth (blocks per stage; 18/34/50/101), class count, queries, width, stages, FFN and dynamic
widths, tower depths, K and the mask size; the PCA codec comes from the checkpoint's frozen `mask_encoding.*`
parameters. Keys map as:

    backbone.bottom_up.stem.conv1[.norm]            -> backbone.model.conv1 / bn1        (timm's ResNet names)
    backbone.bottom_up.res{s}.{i}.conv{k}[.norm]    -> backbone.model.layer{s-1}.{i}.conv{k} / bn{k}
    backbone.bottom_up.res{s}.0.shortcut[.norm]     -> backbone.model.layer{s-1}.0.downsample.0 / .1
    backbone.fpn_lateral{l} / fpn_output{l}         -> neck.fpn.inner_blocks.{l-2}.0 / layer_blocks.{l-2}.0
    head.head_series.{i}.*                          -> head.stages.{i}.*   (same sub-module names)
    mask_encoding.components / explained_variances / means -> codec.components / explained_variance / mean
    pos_embeddings, init_proposal_boxes             -> unchanged

The official model uses frozen BatchNorm with stem + res2 frozen, the 800 / 1333 test size and the PCA codec with
its threshold 0.5. V2 checkpoints (convolutional mask branch, DCT / autoencoder codecs) are not convertible here.
Keys that land nowhere, and model tensors left unfilled, are an error listing them.
"""
from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import Tensor

from models.common.checkpoint import (
    check_converted_state_dict,
    read_state_dict,
    rename_key,
    save_converted_checkpoint,
)
from models.istr.model import ISTR

RESNET_BLOCKS = {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet34/50", (3, 4, 23, 3): "resnet101"}
_PATTERNS = [
    (re.compile(r"^backbone\.bottom_up\.stem\.conv1\.weight$"), lambda m: "backbone.model.conv1.weight"),
    (re.compile(r"^backbone\.bottom_up\.stem\.conv1\.norm\.(.+)$"), lambda m: f"backbone.model.bn1.{m[1]}"),
    (re.compile(r"^backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.weight$"),
     lambda m: f"backbone.model.layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}.weight"),
    (re.compile(r"^backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.norm\.(.+)$"),
     lambda m: f"backbone.model.layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}.{m[4]}"),
    (re.compile(r"^backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.weight$"),
     lambda m: f"backbone.model.layer{int(m[1]) - 1}.{m[2]}.downsample.0.weight"),
    (re.compile(r"^backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.norm\.(.+)$"),
     lambda m: f"backbone.model.layer{int(m[1]) - 1}.{m[2]}.downsample.1.{m[3]}"),
    (re.compile(r"^backbone\.fpn_lateral(\d)\.(weight|bias)$"), lambda m: f"neck.fpn.inner_blocks.{int(m[1]) - 2}.0.{m[2]}"),
    (re.compile(r"^backbone\.fpn_output(\d)\.(weight|bias)$"), lambda m: f"neck.fpn.layer_blocks.{int(m[1]) - 2}.0.{m[2]}"),
    (re.compile(r"^head\.head_series\.(\d+)\.(.+)$"), lambda m: f"head.stages.{m[1]}.{m[2]}"),
    (re.compile(r"^mask_encoding\.components$"), lambda m: "codec.components"),
    (re.compile(r"^mask_encoding\.explained_variances$"), lambda m: "codec.explained_variance"),
    (re.compile(r"^mask_encoding\.means$"), lambda m: "codec.mean"),
    (re.compile(r"^(pos_embeddings|init_proposal_boxes)\.weight$"), lambda m: f"{m[1]}.weight"),
]


def convert_istr_official(in_path: str, out_path: str) -> str:
    """Convert the official ISTR V1 checkpoint at `in_path` into a Lightning checkpoint at `out_path`.

    Returns `out_path`; raises ValueError naming the file when the weights do not map.
    """
    state = read_state_dict(in_path, "a detectron2 checkpoint with the weights under 'model' (or a state dict)")
    model = ISTR(**official_settings(state, in_path))
    mapped = map_state_dict(state, model.state_dict(), in_path)
    model.load_state_dict(mapped, strict=True)
    return save_converted_checkpoint(model, out_path, "models.istr.ISTR")


def official_settings(state: dict[str, Tensor], path: str) -> dict[str, Any]:
    """ISTR constructor arguments reproducing the official V1 model whose weights are `state`."""
    for key in ("backbone.bottom_up.stem.conv1.weight", "head.head_series.0.class_logits.weight",
                "mask_encoding.components", "init_proposal_boxes.weight"):
        if key not in state:
            raise ValueError(f"{path}: no {key!r}: not an official ISTR V1 (PCA) checkpoint")
    if "head.head_series.0.mask_logits.weight" not in state:
        raise ValueError(f"{path}: no V1 mask branch (head_series.*.mask_logits): only ISTR V1 is supported")
    blocks = []
    for stage in range(2, 6):
        indices = {int(k.split(".")[3]) for k in state if k.startswith(f"backbone.bottom_up.res{stage}.")}
        blocks.append(len(indices))
    backbone = RESNET_BLOCKS.get(tuple(blocks))
    if backbone is None:
        raise ValueError(f"{path}: ResNet with {blocks} blocks per stage: not ResNet-18/34/50/101")
    if backbone == "resnet34/50":
        backbone = "resnet50" if "backbone.bottom_up.res2.0.conv3.weight" in state else "resnet34"
    num_stages = len({int(k.split(".")[2]) for k in state if k.startswith("head.head_series.")})
    stage = "head.head_series.0."
    components = state["mask_encoding.components"]
    mask_size = math.isqrt(components.shape[1])
    if mask_size * mask_size != components.shape[1]:
        raise ValueError(f"{path}: mask_encoding.components has {components.shape[1]} columns, not a square mask")
    hidden = state["pos_embeddings.weight"].shape[1]
    dynamic = state[stage + "inst_interact.norm1.weight"].shape[0]
    pooled = state[stage + "inst_interact.out_layer.weight"].shape[1] // hidden
    resolution = math.isqrt(pooled)

    def tower_depth(name: str) -> int:
        return sum(1 for k in state if k.startswith(stage + name + ".") and k.endswith(".weight")
                   and state[k].dim() == 2)

    return dict(
        num_classes=state[stage + "class_logits.weight"].shape[0],
        backbone=backbone,
        out_indices=[1, 2, 3, 4],
        pretrained=False,
        frozen_stages=2,
        norm="frozen_bn",
        fpn_channels=hidden,
        fpn_norm="none",
        min_size=800,
        max_size=1333,
        num_queries=state["init_proposal_boxes.weight"].shape[0],
        num_stages=num_stages,
        num_heads=8,
        dim_feedforward=state[stage + "linear1.weight"].shape[0],
        dynamic_dim=dynamic,
        pooler_resolution=resolution,
        num_cls_layers=tower_depth("cls_module"),
        num_reg_layers=tower_depth("reg_module"),
        num_mask_layers=tower_depth("mask_module"),
        codec="pca",
        codec_path=None,
        codec_components=components.shape[0],
        codec_mask_size=mask_size,
        optimizer="adamw",
        lr=2.5e-5,
        weight_decay=1e-4,
        lr_schedule="multistep",
        lr_steps=[210000, 250000],
        warmup_steps=1000,
        warmup_factor=0.01,
    )


def map_state_dict(state: dict[str, Tensor], expected: dict[str, Tensor], path: str) -> dict[str, Tensor]:
    """Official keys -> maskbench keys; every model tensor filled, every official key used."""
    mapped, unused = {}, []
    for key, value in state.items():
        new_key = rename_key(key, _PATTERNS)
        if new_key is None:
            unused.append(key)
            continue
        mapped[new_key] = value
    variance = mapped.get("codec.explained_variance")
    if variance is not None:
        mapped["codec.ready"] = torch.tensor(True)
        # The official file keeps no total variance, so the explained share is unknown.
        mapped["codec.explained_variance_ratio"] = torch.zeros_like(variance)
    return check_converted_state_dict(mapped, expected, unused, path, "official ISTR V1")

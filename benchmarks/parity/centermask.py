"""maskbench's CenterMask against centermask2's own modules (youngwanLEE/centermask2), layer by layer.

    git --git-dir=<mirror of youngwanLEE/centermask2> archive HEAD | tar -x -C ~/src/centermask2
    python -m benchmarks.parity.centermask --official-repo ~/src/centermask2   # parity + tests/fixtures/parity/centermask.pt

The procedure of benchmarks/parity/common.py. Our CenterMask-Lite V-39 (the official structure: VoVNetV2-39 eSE,
frozen BatchNorm, 128-channel FPN with P6/P7 from P5, 2-conv FCOS towers with GroupNorm and per-level scales,
SAG-Mask 2 x 128, MaskIoU 2 x 128, 14 x 14 RoIs, BGR detectron2 input) at 128 x 160 px with 6 classes gets seeded
random weights. centermask2's modules are imported from `--official-repo` (centermask/modeling/backbone/vovnet.py
`VoVNet` + fpn.py `LastLevelP6P7`, fcos/fcos.py `FCOSHead`, centermask/sam.py `SpatialAttentionMaskHead`,
maskiou_head.py `MaskIoUHead`, pooler.py `ROIPooler` with the Lite config's ASSIGN_CRITERION "ratio") on the
detectron2 stand-in of benchmarks/parity/_detectron2_stub.py (which provides detectron2's FPN), configured as
configs/centermask/Base-CenterMask-Lite-VoVNet.yaml + centermask_lite_V_39_eSE_FPN_ms_4x.yaml and the config
defaults. They are held under GeneralizedRCNN's attribute names (backbone, proposal_generator.fcos_head,
roi_heads.mask_head / maskiou_head), so their state_dict() keys are the released checkpoints' keys; the weights go
there through our converter's key function (models.centermask.convert.map_key). The fixture also stores the
key -> shape layouts of the released VoVNet configurations (`RELEASED_LAYOUTS`, built from the official modules at
COCO size; the depthwise V-19-slim-dw, which the converter refuses, in `REFUSED_LAYOUTS`).

Compared, all on the same normalised padded batch (our transform's; detectron2's resize is not part of this):
  * P3..P7 (official VoVNet + detectron2 FPN + LastLevelP6P7 vs our backbone + FPN);
  * the FCOS head per level: class logits, box regression (ReLU of the scaled output, in strides), centerness;
  * fixed boxes on both images (sizes from 4 px to the whole image, and some crossing the border): the RoI
    features (scale-adaptive level assignment, ROIAlignV2 at 14 x 14), the SAG-Mask logits and the MaskIoU
    predictions for the mask probabilities of the boxes' classes;
  * training, on ground truth with overlapping objects and a crowd region: the official `FCOS` module (train mode)
    gives its location assignment (`FCOSOutputs.compute_targets_for_locations`, recorded: labels, and box targets in
    strides at the positives) and `fcos_losses` with its own IOULoss("giou") (+1 smoothing of intersection and
    union, which models.centermask.fcos_loss.smoothed_giou_loss follows), against our CenterMaskLoss: its
    `fcos_targets` and `fcos` terms.
Post-processing (thresholds, NMS, clipping, score) and the mask-branch losses are not in the fixture: the audit
(centermask.md) lists deliberate differences there (clipped boxes, clamped IoU, bitmask vs polygon mask targets),
and models/centermask/postprocess.py is compared by its own tests; the comparison stays on what must be equal.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import importlib
import sys
import types
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.parity import _detectron2_stub
from benchmarks.parity.common import (
    converter_reads, git_head, layout, max_differences, official_layout, save_fixture, script_main, seeded_state,
    state_checksum, tolerances,
)
from models.centermask import CenterMask
from models.centermask.convert import (
    DETECTRON2_PIXEL_MEAN, DETECTRON2_PIXEL_STD, map_key, map_state_dict, official_settings,
)

PARITY_SEED = 18
NUM_CLASSES = 6
SIZE = dict(min_size=128, max_size=160)
FPN_CHANNELS = 128
ROI = 14


# ------------------------------------------------------------------------------------------------------ ours


def parity_model(seed: int = PARITY_SEED) -> tuple[CenterMask, dict[str, Tensor]]:
    """Our CenterMask-Lite V-39 at SIZE with the seeded weights, and them."""
    torch.manual_seed(seed)
    model = CenterMask(
        num_classes=NUM_CLASSES, backbone="ese_vovnet39b", out_indices=[2, 3, 4], ese_every_block=True,
        pretrained=False, frozen_stages=0, norm="frozen_bn", fpn_channels=FPN_CHANNELS, fpn_norm="none",
        input_format="BGR", pixel_mean=[v / 255 for v in DETECTRON2_PIXEL_MEAN],
        pixel_std=[v / 255 for v in DETECTRON2_PIXEL_STD], fcos_num_convs=2, mask_head_convs=2,
        mask_head_channels=128, maskiou_convs=2, maskiou_channels=128, roi_resolution=ROI, evaluate=False, **SIZE,
    ).eval()
    state = seeded_state(model, seed)
    # Box regressions of a few strides (as a trained head gives), so the GIoU term sees real boxes, not points.
    generator = torch.Generator().manual_seed(seed + 1)
    state["fcos_head.bbox_pred.bias"] = torch.rand(4, generator=generator) * 2 + 1
    for level in range(5):  # the per-level scales multiply it (official init 1.0)
        state[f"fcos_head.scales.{level}.scale"] = torch.rand(1, generator=generator) + 0.5
    model.load_state_dict(state, strict=True)
    return model, state


def parity_inputs() -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Two images (one needing a resize), boxes per image (xyxy in the resized frame: 4 px to whole-image, some
    crossing the border) and their classes."""
    generator = torch.Generator().manual_seed(2)
    images = [torch.rand(3, 128, 160, generator=generator), torch.rand(3, 100, 150, generator=generator)]
    boxes = [torch.tensor([[10.0, 12, 70, 90], [0, 0, 160, 128], [60, 30, 64, 34], [130, 100, 175, 140]]),
             torch.tensor([[20.0, 10, 90, 110], [5, 5, 37, 37], [-10, 40, 60, 100]])]
    classes = [torch.tensor([0, 5, 2, 3]), torch.tensor([1, 4, 0])]
    return images, boxes, classes


def ours_outputs(model: CenterMask, images: list[Tensor], boxes: list[Tensor], classes: list[Tensor]
                 ) -> tuple[dict[str, Tensor], Tensor, list[tuple[int, int]]]:
    """Our pyramid, FCOS head, RoI features, mask logits, MaskIoU; also the batch and its image sizes."""
    with torch.no_grad():
        batch, _ = model.transform(model._to_input_format(images))
        levels, (logits, regression, centerness) = model._network(batch)
        pooled = model.roi_pool(levels[:3], boxes, batch.image_sizes)
        mask_logits = model.mask_head(pooled)
        labels = torch.cat(classes)
        probs = mask_logits[torch.arange(len(labels)), labels][:, None].sigmoid()
        maskiou = model.maskiou_head(pooled, probs)
    outputs = {**{f"p{i + 3}": level for i, level in enumerate(levels)},
               "fcos_logits": _flat(logits), "fcos_regression": _flat(regression),
               "fcos_centerness": _flat(centerness), "roi_features": pooled, "mask_logits": mask_logits,
               "mask_probs": probs, "maskiou": maskiou}
    return outputs, batch.tensors, [tuple(int(v) for v in size) for size in batch.image_sizes]


def parity_targets(images: list[Tensor]) -> list[dict[str, Tensor]]:
    """Ground truth for `parity_inputs`' images in the datamodule's format: objects of 6 to 120 px (FCOS levels
    P3..P5), overlapping ones (the smallest-area rule), one crowd region (left out by both)."""
    layouts = [([[10, 12, 70, 90], [40, 30, 60, 50], [0, 0, 150, 120], [100, 90, 106, 96]], [0, 5, 2, 3], [0, 0, 0, 1]),
               ([[20, 10, 90, 90], [5, 5, 37, 37], [60, 40, 148, 98]], [1, 4, 0], [0, 0, 0])]
    targets = []
    for image, (boxes, labels, crowd) in zip(images, layouts):
        boxes = torch.tensor(boxes, dtype=torch.float32)
        masks = torch.zeros(len(boxes), *image.shape[-2:], dtype=torch.uint8)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
            mask[y0:y1, x0:x1] = 1
        targets.append({"boxes": boxes, "labels": torch.tensor(labels), "masks": masks,
                        "iscrowd": torch.tensor(crowd)})
    return targets


def ours_train_outputs(model: CenterMask, images: list[Tensor], targets: list[dict]
                       ) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
    """Our FCOS location assignment (labels [B, P], class index C = background; box targets in strides at the
    positives, 0 elsewhere) and the three FCOS losses, both from the model's CenterMaskLoss (the targets by the
    `fcos_targets` its `fcos` calls); also the targets in the resized frame (for the official)."""
    with torch.no_grad():
        batch, resized = model.transform(model._to_input_format(images), model._instance_targets(targets))
        levels, head = model._network(batch)
        locations = model._locations(levels)
        labels, box_targets = model.criterion.fcos_targets(locations, resized)
        losses = model.criterion.fcos(head, locations, resized)
    labels = labels.view(len(images), -1)
    positive = (labels != NUM_CLASSES)[..., None]
    box_targets = box_targets.view(len(images), -1, 4) * positive
    return {"fcos_labels": labels, "fcos_box_targets": box_targets, **losses}, resized


def _flat(maps: list[Tensor]) -> Tensor:
    """Per level [B, D, H, W] -> [B, sum HW, D]."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)


# -------------------------------------------------------------------------------------------------- official


@contextlib.contextmanager
def official_modules(repo: str):
    """centermask2's modules on the detectron2 stand-in. The package __init__ files that import the whole
    detectron2 meta-architecture (centermask/, modeling/, modeling/centermask/) are not run: those packages are set
    up from their directories; centermask/layers/__init__.py runs as is."""
    root = Path(repo).expanduser().resolve()
    package_dir = root / "centermask"
    if not (package_dir / "modeling" / "backbone" / "vovnet.py").is_file():
        raise FileNotFoundError(f"--official-repo {repo}: no centermask/modeling/backbone/vovnet.py "
                                "(a youngwanLEE/centermask2 checkout)")
    clashes = [name for name in sys.modules if name == "centermask" or name.startswith("centermask.")]
    if clashes:
        raise RuntimeError(f"modules {clashes[:3]} are already imported; the official ones would clash")
    with _detectron2_stub.installed():
        for name, folder in (("centermask", ""), ("centermask.modeling", "modeling"),
                             ("centermask.modeling.backbone", "modeling/backbone"),
                             ("centermask.modeling.fcos", "modeling/fcos"),
                             ("centermask.modeling.centermask", "modeling/centermask")):
            package = types.ModuleType(name)
            package.__path__ = [str(package_dir / folder)]
            sys.modules[name] = package
        sys.path.insert(0, str(root))
        try:
            modules = {short: importlib.import_module(f"centermask.modeling.{path}") for short, path in (
                ("vovnet", "backbone.vovnet"), ("fpn", "backbone.fpn"), ("fcos", "fcos.fcos"),
                ("fcos_outputs", "fcos.fcos_outputs"), ("sam", "centermask.sam"), ("maskiou", "centermask.maskiou_head"), ("pooler", "centermask.pooler"))}
            yield types.SimpleNamespace(root=root, **modules)
        finally:
            sys.path.remove(str(root))
            for name in [n for n in sys.modules if n == "centermask" or n.startswith("centermask.")]:
                sys.modules.pop(name)


def official_cfg(conv_body: str = "V-39-eSE", lite: bool = True, num_classes: int = NUM_CLASSES
                 ) -> types.SimpleNamespace:
    """The config values the modules read: centermask2's config defaults (FPN 256, FCOS 4 convs, mask head 4 x 256,
    MaskIoU 4 x 256) + Base-CenterMask-VoVNet.yaml, or with `lite` Base-CenterMask-Lite-VoVNet.yaml (FPN 128,
    FCOS 2 convs, mask and MaskIoU heads 2 x 128), + the configuration file's CONV_BODY."""
    ns = types.SimpleNamespace
    channels, convs = (128, 2) if lite else (256, 4)
    return ns(MODEL=ns(
        BACKBONE=ns(FREEZE_AT=0),
        VOVNET=ns(CONV_BODY=conv_body, NORM="FrozenBN", OUT_FEATURES=["stage3", "stage4", "stage5"],
                  STAGE_WITH_DCN=(False, False, False, False), WITH_MODULATED_DCN=False, DEFORMABLE_GROUPS=1),
        FPN=ns(IN_FEATURES=["stage3", "stage4", "stage5"], OUT_CHANNELS=channels, NORM="", FUSE_TYPE="sum"),
        FCOS=ns(NUM_CLASSES=num_classes, FPN_STRIDES=[8, 16, 32, 64, 128], NUM_CLS_CONVS=convs,
                NUM_BOX_CONVS=convs, NUM_SHARE_CONVS=0, USE_DEFORMABLE=False, NORM="GN", USE_SCALE=True,
                PRIOR_PROB=0.01, TOP_LEVELS=2, IN_FEATURES=["p3", "p4", "p5", "p6", "p7"], LOSS_ALPHA=0.25,
                LOSS_GAMMA=2.0, CENTER_SAMPLE=True, POS_RADIUS=1.5, INFERENCE_TH_TRAIN=0.05, INFERENCE_TH_TEST=0.05,
                PRE_NMS_TOPK_TRAIN=1000, PRE_NMS_TOPK_TEST=1000, NMS_TH=0.6, POST_NMS_TOPK_TRAIN=100,
                POST_NMS_TOPK_TEST=50, THRESH_WITH_CTR=False, LOC_LOSS_TYPE="giou",
                SIZES_OF_INTEREST=[64, 128, 256, 512]),
        # Only what FCOS.forward returns depends on it: the losses alone here (the mask branch is compared apart).
        MASK_ON=False,
        ROI_HEADS=ns(NUM_CLASSES=num_classes, IN_FEATURES=["p3", "p4", "p5"]),
        ROI_MASK_HEAD=ns(CONV_DIM=channels, NORM="", NUM_CONV=convs, CLS_AGNOSTIC_MASK=False,
                         POOLER_RESOLUTION=ROI, POOLER_SAMPLING_RATIO=0, POOLER_TYPE="ROIAlignV2",
                         ASSIGN_CRITERION="ratio"),
        ROI_MASKIOU_HEAD=ns(CONV_DIM=channels, NUM_CONV=convs),
    ))


# The released VoVNet configurations (configs/centermask/*.yaml, non-DCN): (CONV_BODY, Lite base config).
RELEASED_LAYOUTS = {
    "centermask_lite_V_19_eSE_FPN_ms_4x": ("V-19-eSE", True),
    "centermask_lite_V_19_slim_eSE_FPN_ms_4x": ("V-19-slim-eSE", True),
    "centermask_lite_V_39_eSE_FPN_ms_4x": ("V-39-eSE", True),
    "centermask_V_39_eSE_FPN_ms_3x": ("V-39-eSE", False),
    "centermask_V_57_eSE_FPN_ms_3x": ("V-57-eSE", False),
    "centermask_V_99_eSE_FPN_ms_3x": ("V-99-eSE", False),
}
# Released, and refused by our converter with a clear message (depthwise VoVNet).
REFUSED_LAYOUTS = {"centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x": ("V-19-slim-dw-eSE", True)}


class OfficialModel(nn.Module):
    """centermask2's modules under GeneralizedRCNN's attribute names (see the module docstring)."""

    def __init__(self, official, cfg):
        super().__init__()
        bottom_up = official.vovnet.VoVNet(cfg, 3, out_features=cfg.MODEL.VOVNET.OUT_FEATURES)
        fpn_class = sys.modules["detectron2.modeling.backbone.fpn"].FPN
        channels = cfg.MODEL.FPN.OUT_CHANNELS
        self.backbone = fpn_class(bottom_up=bottom_up, in_features=cfg.MODEL.FPN.IN_FEATURES,
                                  out_channels=channels, norm=cfg.MODEL.FPN.NORM,
                                  top_block=official.fpn.LastLevelP6P7(channels, channels, "p5"),
                                  fuse_type=cfg.MODEL.FPN.FUSE_TYPE)
        shapes = {f"p{int(math.log2(s))}": _detectron2_stub.ShapeSpec(channels=channels, stride=s)
                  for s in cfg.MODEL.FCOS.FPN_STRIDES}
        self.proposal_generator = official.fcos.FCOS(cfg, shapes)
        roi_shape = _detectron2_stub.ShapeSpec(channels=channels, width=ROI, height=ROI)
        self.roi_heads = nn.Module()
        self.roi_heads.mask_head = official.sam.SpatialAttentionMaskHead(cfg, roi_shape)
        self.roi_heads.maskiou_head = official.maskiou.MaskIoUHead(cfg, roi_shape)
        mask = cfg.MODEL.ROI_MASK_HEAD
        self.mask_pooler = official.pooler.ROIPooler(
            output_size=ROI, scales=tuple(1.0 / s for s in (8, 16, 32)), sampling_ratio=mask.POOLER_SAMPLING_RATIO,
            pooler_type=mask.POOLER_TYPE, assign_crit=mask.ASSIGN_CRITERION)


def official_outputs(net: OfficialModel, batch: Tensor, image_sizes, boxes, classes) -> dict[str, Tensor]:
    Instances, Boxes = _detectron2_stub.Instances, _detectron2_stub.Boxes
    with torch.no_grad():
        pyramid = net.backbone(batch)
        levels = [pyramid[f"p{i}"] for i in range(3, 8)]
        logits, regression, centerness, _ = net.proposal_generator.fcos_head(levels)
        instances = [Instances(size, pred_boxes=Boxes(b), pred_classes=c)
                     for size, b, c in zip(image_sizes, boxes, classes)]
        pooled = net.mask_pooler(levels[:3], instances)
        mask_logits = net.roi_heads.mask_head(pooled)
        labels = torch.cat(classes)
        probs = mask_logits[torch.arange(len(labels)), labels][:, None].sigmoid()
        maskiou = net.roi_heads.maskiou_head(pooled, probs)
    return {**{f"p{i + 3}": level for i, level in enumerate(levels)},
            "fcos_logits": _flat(logits), "fcos_regression": _flat(regression),
            "fcos_centerness": _flat(centerness), "roi_features": pooled, "mask_logits": mask_logits,
            "mask_probs": probs, "maskiou": maskiou}


class _ImageSizes(list):
    """What FCOSOutputs reads of detectron2's ImageList: len() and image_sizes."""

    @property
    def image_sizes(self):
        return list(self)


def official_train_outputs(official, net: OfficialModel, batch: Tensor, image_sizes, resized_targets
                           ) -> dict[str, Tensor]:
    """centermask2's FCOS (train mode) on the same pyramid and ground truth: its location assignment
    (compute_targets_for_locations, recorded) and its losses, its own IOULoss("giou") included."""
    Instances, Boxes = _detectron2_stub.Instances, _detectron2_stub.Boxes
    outputs_class = official.fcos_outputs.FCOSOutputs
    original_targets = outputs_class.compute_targets_for_locations
    recorded = {}

    def recording(self, locations, targets, size_ranges):
        result = original_targets(self, locations, targets, size_ranges)
        strides = torch.cat([locations.new_full((n,), float(s)) for n, s in zip(self.num_loc_list, self.strides)])
        recorded["labels"] = torch.stack(result["labels"])
        recorded["box_targets"] = torch.stack([r / strides[:, None] for r in result["reg_targets"]])
        return result

    fcos = net.proposal_generator
    gt = [Instances(size, gt_boxes=Boxes(t["boxes"]), gt_classes=t["labels"])
          for size, t in zip(image_sizes, resized_targets)]
    outputs_class.compute_targets_for_locations = recording
    fcos.train()
    try:
        with torch.no_grad():
            _, losses = fcos(_ImageSizes(image_sizes), net.backbone(batch), gt)
    finally:
        outputs_class.compute_targets_for_locations = original_targets
        fcos.eval()
    positive = (recorded["labels"] != NUM_CLASSES)[..., None]
    return {"fcos_labels": recorded["labels"], "fcos_box_targets": recorded["box_targets"] * positive,
            "loss_fcos_cls": losses["loss_fcos_cls"], "loss_fcos_box": losses["loss_fcos_loc"],
            "loss_fcos_ctr": losses["loss_fcos_ctr"]}


def to_official_layout(ours: dict[str, Tensor], official_keys: list[str]) -> dict[str, Tensor]:
    return official_layout(ours, official_keys, map_key)


def official_layouts(official) -> dict[str, dict[str, list[int]]]:
    """Key -> shape of the official model of every released (and refused) configuration at COCO size."""
    return {name: layout(OfficialModel(official, official_cfg(body, lite, num_classes=80)))
            for name, (body, lite) in {**RELEASED_LAYOUTS, **REFUSED_LAYOUTS}.items()}


def converter_reads_layout(name: str, shapes: dict[str, list[int]]) -> dict:
    """Our converter's settings for one official layout (raises when its keys or shapes do not map)."""
    return converter_reads(shapes, lambda state: official_settings(state, name), CenterMask,
                           lambda state, expected: map_state_dict(state, expected, name))


# ------------------------------------------------------------------------------------------------------ run


def run_parity(args: argparse.Namespace) -> dict[str, Any]:
    model, state = parity_model(args.seed)
    images, boxes, classes = parity_inputs()
    ours, batch, image_sizes = ours_outputs(model, images, boxes, classes)
    targets = parity_targets(images)
    ours_train, resized_targets = ours_train_outputs(model, images, targets)
    ours.update(ours_train)
    with official_modules(args.official_repo) as official:
        net = OfficialModel(official, official_cfg()).eval()
        official_keys = list(net.state_dict())
        net.load_state_dict(to_official_layout(state, official_keys), strict=True)
        official_all = official_outputs(net, batch, image_sizes, boxes, classes)
        official_all.update(official_train_outputs(official, net, batch, image_sizes, resized_targets))
        layouts = official_layouts(official)
    layout_report = {}
    for name, shapes in layouts.items():
        try:
            settings = converter_reads_layout(name, shapes)
            layout_report[name] = {k: settings[k] for k in ("backbone", "fpn_channels", "fcos_num_convs",
                                                            "mask_head_convs", "maskiou_convs", "min_size")}
        except ValueError as error:
            layout_report[name] = f"refused: {str(error)[:120]}"
    settings = official_settings(net.state_dict(), "official")
    settings_equal = {k: v for k, v in settings.items() if k not in ("min_size", "max_size", "post_nms_top_n_test")
                      and model.hparams[k] != v}
    measured = max_differences(official_all, ours)
    allowed = tolerances(measured, official_all)
    allowed["fcos_labels"] = 0.0
    fixture = {
        "seed": args.seed, "checksum": state_checksum(state), "torch": torch.__version__,
        "official_repo_commit": git_head(official.root), "official_keys": official_keys, "images": images,
        "boxes": boxes, "classes": classes, "targets": targets, "layouts": layouts, "official": official_all, "measured": measured, "tolerances": allowed,
    }
    path = save_fixture("centermask", fixture, args.fixture_dir)
    return {"official_keys": len(official_keys), "converter_settings_differing": settings_equal,
            "released_layouts_converted": layout_report,
            "max_abs_diff": measured,
            "fcos_losses": {"ours": {k: float(ours[k]) for k in ("loss_fcos_cls", "loss_fcos_box", "loss_fcos_ctr")},
                            "official": {k: float(official_all[k]) for k in (
                                "loss_fcos_cls", "loss_fcos_box", "loss_fcos_ctr")}},
            "positive_locations": int((official_all["fcos_labels"] != NUM_CLASSES).sum()),
            "label_mismatches": int((official_all["fcos_labels"] != ours["fcos_labels"]).sum()),
            "fixture": path}


def main(argv: list[str] | None = None) -> None:
    script_main(__doc__.split("\n\n")[0], "a youngwanLEE/centermask2 checkout", PARITY_SEED, run_parity, argv)


if __name__ == "__main__":
    main()

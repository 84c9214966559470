"""torchvision `maskrcnn_resnet50_fpn` (v1) weights -> a maskbench MaskRCNN Lightning checkpoint.

    convert_torchvision_maskrcnn("maskrcnn_resnet50_fpn_coco.pth", "mask_rcnn_r50_tv.ckpt")
    MaskRCNN.load_from_checkpoint("mask_rcnn_r50_tv.ckpt")      # or: maskbench validate --ckpt_path ...

The MaskRCNN is built with torchvision's settings (`TORCHVISION_SETTINGS`: timm "resnet50" with frozen
BatchNorm, stem + layer1 frozen as torchvision's three trainable layers, 800/1333, the same RPN / RoI numbers),
so converted weights give torchvision's detections. Keys map by prefix:

    backbone.body.*  -> backbone.model.*   (timm's ResNet uses torchvision's layer names)
    backbone.fpn.*   -> neck.fpn.*
    rpn.*, roi_heads.* unchanged

plus the pre-0.6 torchvision names (`fpn.inner_blocks.i.weight`, `rpn.head.conv.weight`,
`mask_head.mask_fcnN.weight`) rewritten to today's. `num_batches_tracked` counters are read and dropped: they are
BatchNorm's step count, not weights, and the backbone's BatchNorm is frozen here. Every other key must land on a
parameter or buffer of the model, and every parameter and buffer must be filled: otherwise a ValueError lists
the keys.

Labels: torchvision's class index 0 is background, index i > 0 is the object class; MaskRCNN's internal index is
the same (background 0, contiguous label c = internal c + 1). With `num_classes=None` every torchvision class is
kept (contiguous c = torchvision index c + 1). torchvision's COCO models have 91 indices = COCO category ids
(with "N/A" gaps); `num_classes=80` keeps only the 80 real categories in id order, so contiguous c is the c-th
COCO category id — the mapping `CocoDataModule` builds for COCO 2017 (sorted category ids).
"""
from __future__ import annotations

import re

from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

from models.common.checkpoint import read_state_dict, save_converted_checkpoint
from models.mask_rcnn.model import MaskRCNN

# MaskRCNN settings equal to torchvision's maskrcnn_resnet50_fpn defaults (with pretrained weights).
TORCHVISION_SETTINGS = dict(
    backbone="resnet50",
    out_indices=[1, 2, 3, 4],
    pretrained=False,
    frozen_stages=2,
    norm="frozen_bn",
    fpn_channels=256,
    head_norm="none",
    min_size=800,
    max_size=1333,
    anchor_sizes=[32, 64, 128, 256, 512],
    aspect_ratios=[0.5, 1.0, 2.0],
    rpn_pre_nms_top_n_train=2000,
    rpn_pre_nms_top_n_test=1000,
    rpn_post_nms_top_n_train=2000,
    rpn_post_nms_top_n_test=1000,
    rpn_nms_thresh=0.7,
    rpn_fg_iou_thresh=0.7,
    rpn_bg_iou_thresh=0.3,
    rpn_batch_size_per_image=256,
    rpn_positive_fraction=0.5,
    box_fg_iou_thresh=0.5,
    box_bg_iou_thresh=0.5,
    box_batch_size_per_image=512,
    box_positive_fraction=0.25,
    box_head_width=1024,
    box_score_thresh=0.05,
    box_nms_thresh=0.5,
    detections_per_img=100,
    mask_head_layers=4,
    mask_head_channels=256,
    mask_resolution=28,
    mask_aligned=False,  # torchvision's pixel convention, which these weights were trained with
)

PREFIXES = {"backbone.body.": "backbone.model.", "backbone.fpn.": "neck.fpn.", "rpn.": "rpn.", "roi_heads.": "roi_heads."}
LEGACY_NAMES = [
    (re.compile(r"^backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d+)\.(weight|bias)$"), r"backbone.fpn.\1.\2.0.\3"),
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
]
LEGACY_MASK_FCN = re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$")
# Predictor tensors whose leading dimension runs over classes (`per_class` rows per class).
CLASS_ROWS = {
    "roi_heads.box_predictor.cls_score.weight": 1,
    "roi_heads.box_predictor.cls_score.bias": 1,
    "roi_heads.box_predictor.bbox_pred.weight": 4,
    "roi_heads.box_predictor.bbox_pred.bias": 4,
    "roi_heads.mask_predictor.mask_fcn_logits.weight": 1,
    "roi_heads.mask_predictor.mask_fcn_logits.bias": 1,
}


def convert_torchvision_maskrcnn(in_path: str, out_path: str, num_classes: int | None = None) -> str:
    """Convert torchvision Mask R-CNN weights at `in_path` into a Lightning checkpoint at `out_path`.

    `in_path` holds a state dict, raw or as {"model": state_dict} (torchvision's reference training). Returns
    `out_path`. Raises ValueError (naming the file) on an unreadable layout or keys that do not all map.
    """
    state = read_state_dict(in_path, "a state dict of tensors (or {'model': state_dict})")
    cls_key = "roi_heads.box_predictor.cls_score.weight"
    if cls_key not in state:
        raise ValueError(f"{in_path}: no {cls_key!r}: not a torchvision Mask R-CNN state dict")
    kept = _kept_classes(in_path, state[cls_key].shape[0], num_classes)
    model = MaskRCNN(num_classes=len(kept) - 1, **TORCHVISION_SETTINGS)

    mapped, unmapped = {}, []
    for key, value in state.items():
        if key.endswith(".num_batches_tracked"):
            continue
        new_key = _map_key(key)
        if new_key is None:
            unmapped.append(key)
            continue
        rows = CLASS_ROWS.get(new_key)
        if rows is not None:
            value = value.reshape(-1, rows, *value.shape[1:])[kept].reshape(-1, *value.shape[1:])
        mapped[new_key] = value
    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(unmapped + [k for k in mapped if k not in expected])
    wrong_shape = [
        f"{k} {tuple(mapped[k].shape)} vs {tuple(expected[k].shape)}"
        for k in mapped
        if k in expected and mapped[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"{in_path}: weights do not match a torchvision maskrcnn_resnet50_fpn: missing {missing}, "
            f"unused {unexpected}, wrong shape {wrong_shape}"
        )
    model.load_state_dict(mapped, strict=True)
    return save_converted_checkpoint(model, out_path, "models.mask_rcnn.MaskRCNN")



def _kept_classes(path: str, torchvision_classes: int, num_classes: int | None) -> list[int]:
    """torchvision class indices to keep, background (0) first."""
    if num_classes is None or num_classes == torchvision_classes - 1:
        return list(range(torchvision_classes))
    coco = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    real = [i for i, name in enumerate(coco) if name not in ("__background__", "N/A")]
    if torchvision_classes == len(coco) and num_classes == len(real):
        return [0] + real
    raise ValueError(
        f"{path}: has {torchvision_classes} classes (background included); num_classes={num_classes} can only be "
        f"{torchvision_classes - 1} (all) or, for torchvision's 91-index COCO models, {len(real)}"
    )


def _map_key(key: str) -> str | None:
    """The MaskRCNN key for a torchvision key, None for a key outside the model."""
    for pattern, replacement in LEGACY_NAMES:
        key = pattern.sub(replacement, key)
    legacy_mask = LEGACY_MASK_FCN.match(key)
    if legacy_mask:
        key = f"roi_heads.mask_head.{int(legacy_mask.group(1)) - 1}.0.{legacy_mask.group(2)}"
    for old, new in PREFIXES.items():
        if key.startswith(old):
            return new + key[len(old):]
    return None

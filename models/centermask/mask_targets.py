"""Targets of the mask branch: the SAG-Mask head's 28x28 crops and the MaskIoU head's IoUs (the losses: loss.py).

The MaskIoU target of a RoI is the IoU between its predicted mask (logit > 0 on the 28x28 grid of the RoI's
ground-truth class) and its ground-truth instance — the WHOLE instance, part of which may lie outside the RoI.
centermask2 gets the outside part from polygon areas and so crashes on RLE ground truth (its issues #44, #79,
#101); here it comes from the mask itself: the instance's pixel area minus the area inside the box (the mean of
the RoIAlign crop times the box area) is the area outside, added to the union in units of the grid. Polygon and
RLE annotations are both masks by the time they reach the model, so both work.
"""
from __future__ import annotations

import torch
from torch import Tensor

from models.common.masks import crop_and_resize_masks


def mask_crops(gt_masks: Tensor, rois: Tensor, matched: Tensor, size: int) -> Tensor:
    """RoIAlign (aligned) crops of the matched ground-truth masks: float [F, size, size] in 0..1 (not binarised).

    gt_masks: [N, H, W] of one image; rois: float [F, 4] xyxy in its pixels; matched: int64 [F] into gt_masks.
    """
    return crop_and_resize_masks(gt_masks, rois, size, mask_indices=matched, aligned=True)


@torch.no_grad()
def maskiou_targets(selected_logits: Tensor, crops: Tensor, gt_areas: Tensor, rois: Tensor) -> Tensor:
    """IoU of each predicted mask with its whole ground-truth instance, float [F].

    Args:
        selected_logits: float [F, M, M] mask logits of the RoI's ground-truth class (predicted mask: logit > 0).
        crops: float [F, M, M] RoIAlign crops of the ground-truth mask (`mask_crops`); >= 0.5 is the target mask.
        gt_areas: float [F] pixel area of the whole ground-truth instance.
        rois: float [F, 4] xyxy boxes the crops were taken from, in the same pixels.
    """
    size = selected_logits.shape[-1]
    predicted = selected_logits > 0
    target = crops >= 0.5
    overlap = (predicted & target).sum(dim=(1, 2)).float()
    box_area = ((rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1])).clamp(min=1e-6).float()
    cells_per_pixel = size * size / box_area
    inside = crops.float().sum(dim=(1, 2)) / cells_per_pixel  # pixels of the instance inside the box
    outside = (gt_areas.float() - inside).clamp(min=0) * cells_per_pixel  # ... outside it, in grid cells
    union = predicted.sum(dim=(1, 2)).float() + target.sum(dim=(1, 2)).float() - overlap + outside
    return overlap / union.clamp(min=1.0)

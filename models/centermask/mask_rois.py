"""The boxes the mask branch trains on: detached FCOS detections plus the ground truth, foreground only.

As in centermask2's RoI heads: the ground-truth boxes are appended to the image's FCOS detections (so the mask
head has positives from the first step, when the detector still finds nothing), every box is matched to the
ground truth of highest IoU and is foreground at IoU >= `iou_thresh`; of the `batch_size_per_image` RoIs detectron2
would sample, at most `positive_fraction` are foreground, drawn at random — and only those reach the mask head,
so the background share of the sample is never drawn here.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou


@torch.no_grad()
def foreground_rois(
    proposals: list[Tensor],
    gt_boxes: list[Tensor],
    iou_thresh: float = 0.5,
    batch_size_per_image: int = 512,
    positive_fraction: float = 0.25,
) -> list[tuple[Tensor, Tensor]]:
    """Per image (boxes float [F, 4], matched ground-truth index int64 [F]) of the foreground RoIs.

    Args:
        proposals: per image float [K, 4] xyxy detections (detached).
        gt_boxes: per image float [N, 4] xyxy ground truth (crowd regions removed).
        iou_thresh: a box is foreground when its best IoU with a ground-truth box is >= this.
        batch_size_per_image, positive_fraction: at most int(batch_size_per_image * positive_fraction) foreground
            boxes per image, a random subset when there are more.
    """
    max_foreground = int(batch_size_per_image * positive_fraction)
    selected = []
    for boxes, gt in zip(proposals, gt_boxes):
        if gt.numel() == 0:
            selected.append((boxes.new_zeros((0, 4)), torch.zeros(0, dtype=torch.int64, device=boxes.device)))
            continue
        candidates = torch.cat([boxes.detach().to(gt.dtype), gt])
        best_iou, matched = box_iou(gt, candidates).max(dim=0)
        foreground = torch.nonzero(best_iou >= iou_thresh).squeeze(1)
        if foreground.numel() > max_foreground:
            foreground = foreground[torch.randperm(foreground.numel(), device=foreground.device)[:max_foreground]]
        selected.append((candidates[foreground], matched[foreground]))
    return selected

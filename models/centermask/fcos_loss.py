"""A piece of the FCOS losses (the terms themselves: loss.py; the cross-process normaliser:
models/common/distributed.py): centermask2's smoothed GIoU loss. torchvision's generalized_box_iou_loss has no
smoothing (the official is 1.5% lower on the audit's parity case), hence `smoothed_giou_loss`.
"""
from __future__ import annotations

import torch
from torch import Tensor


def smoothed_giou_loss(predicted: Tensor, targets: Tensor) -> Tensor:
    """1 - GIoU per location [K] of two (l, t, r, b) distance sets [K, 4] around the same location, with the IoU
    smoothed as (intersection + 1) / (union + 1) as in centermask2's IOULoss (the enclosing-box term is not)."""
    predicted_area = (predicted[:, 0] + predicted[:, 2]) * (predicted[:, 1] + predicted[:, 3])
    target_area = (targets[:, 0] + targets[:, 2]) * (targets[:, 1] + targets[:, 3])
    smaller, larger = torch.minimum(predicted, targets), torch.maximum(predicted, targets)
    intersection = (smaller[:, 0] + smaller[:, 2]) * (smaller[:, 1] + smaller[:, 3])
    enclosing = (larger[:, 0] + larger[:, 2]) * (larger[:, 1] + larger[:, 3])
    union = predicted_area + target_area - intersection
    iou = (intersection + 1.0) / (union + 1.0)
    return 1.0 - (iou - (enclosing - union) / enclosing)

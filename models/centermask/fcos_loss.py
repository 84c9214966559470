"""FCOS losses as centermask2 computes them: focal classification, centerness-weighted GIoU, centerness BCE.

- `loss_fcos_cls`: sigmoid focal loss (torchvision.ops.sigmoid_focal_loss) summed over every location and class,
  divided by the number of positive locations (averaged over processes, at least 1).
- `loss_fcos_box`: GIoU loss of each positive location's (l, t, r, b) box, weighted by its centerness target and
  divided by the sum of those targets (torchvision's FCOS divides by the number of positives instead), in
  centermask2's form (`centermask/layers/iou_loss.py`, LOC_LOSS_TYPE "giou"): the IoU is smoothed,
  (I + 1) / (U + 1), in stride units, before the enclosing-box term. torchvision's generalized_box_iou_loss has no
  smoothing (1.5% lower on the audit's parity case), hence `smoothed_giou_loss`.
- `loss_fcos_ctr`: BCE of the predicted centerness against sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)),
  summed over positives and divided by their number.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from models.centermask.fcos_targets import centerness_targets


def mean_over_processes(value: float, device: torch.device) -> float:
    """The mean of a per-process number over the data-parallel processes (the value itself when not distributed).

    The normalisers must be the same on every process, or the processes would weight their gradients differently.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return value
    total = torch.tensor([value], dtype=torch.float32, device=device)
    dist.all_reduce(total)
    return float(total) / dist.get_world_size()


def fcos_losses(
    cls_logits: Tensor,
    box_regression: Tensor,
    centerness: Tensor,
    labels: Tensor,
    box_targets: Tensor,
    num_classes: int,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> dict[str, Tensor]:
    """The three FCOS loss terms over all locations of a batch.

    Args:
        cls_logits: float [P, C]; box_regression: float [P, 4] predicted (l, t, r, b) >= 0; centerness: float [P]
            logits; labels: int64 [P] with C = background; box_targets: float [P, 4] target (l, t, r, b) in the same
            unit as `box_regression` (strides). P counts every location of every image.

    Returns:
        `loss_fcos_cls`, `loss_fcos_box`, `loss_fcos_ctr` (scalars).
    """
    positive = torch.nonzero(labels != num_classes).squeeze(1)
    num_positive = mean_over_processes(float(positive.numel()), cls_logits.device)
    class_targets = torch.zeros_like(cls_logits)
    class_targets[positive, labels[positive]] = 1
    loss_cls = sigmoid_focal_loss(
        cls_logits, class_targets, alpha=focal_alpha, gamma=focal_gamma, reduction="sum"
    ) / max(num_positive, 1.0)

    predicted, targets = box_regression[positive], box_targets[positive]
    ctr_targets = centerness_targets(targets)
    ctr_norm = max(mean_over_processes(float(ctr_targets.sum()), cls_logits.device), 1e-6)
    if positive.numel() == 0:
        # No positive here (maybe elsewhere): zero terms that keep every head output in the graph.
        zero = box_regression.sum() * 0 + centerness.sum() * 0
        return {"loss_fcos_cls": loss_cls, "loss_fcos_box": zero, "loss_fcos_ctr": zero}
    loss_box = (smoothed_giou_loss(predicted, targets) * ctr_targets).sum() / ctr_norm
    loss_ctr = F.binary_cross_entropy_with_logits(centerness[positive], ctr_targets, reduction="sum") / max(
        num_positive, 1.0
    )
    return {"loss_fcos_cls": loss_cls, "loss_fcos_box": loss_box, "loss_fcos_ctr": loss_ctr}


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

"""FCOS losses as centermask2 computes them: focal classification, centerness-weighted GIoU, centerness BCE.

- `loss_fcos_cls`: sigmoid focal loss (torchvision.ops.sigmoid_focal_loss) summed over every location and class,
  divided by the number of positive locations (averaged over processes, at least 1).
- `loss_fcos_box`: GIoU loss of each positive location's (l, t, r, b) box, weighted by its centerness target and
  divided by the sum of those targets (torchvision's FCOS divides by the number of positives instead). The
  distances become boxes around the location at the origin, (-l, -t, r, b), so torchvision's
  generalized_box_iou_loss computes it (the official adds 1 to intersection and union; it does not here).
- `loss_fcos_ctr`: BCE of the predicted centerness against sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)),
  summed over positives and divided by their number.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

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
    giou = generalized_box_iou_loss(_around_origin(predicted), _around_origin(targets), reduction="none")
    loss_box = (giou * ctr_targets).sum() / ctr_norm
    loss_ctr = F.binary_cross_entropy_with_logits(centerness[positive], ctr_targets, reduction="sum") / max(
        num_positive, 1.0
    )
    return {"loss_fcos_cls": loss_cls, "loss_fcos_box": loss_box, "loss_fcos_ctr": loss_ctr}


def _around_origin(distances: Tensor) -> Tensor:
    """(l, t, r, b) [K, 4] -> the xyxy box (-l, -t, r, b) of a location at the origin."""
    return torch.stack([-distances[:, 0], -distances[:, 1], distances[:, 2], distances[:, 3]], dim=1)

"""CenterMask's training losses as centermask2 computes them, one method per term.

    loss_fcos_cls  sigmoid focal loss (torchvision.ops.sigmoid_focal_loss, alpha 0.25, gamma 2) summed over every
                   location and class, divided by the number of positive locations
    loss_fcos_box  GIoU loss of each positive location's (l, t, r, b) box in stride units, in centermask2's
                   smoothed form (fcos_loss.smoothed_giou_loss), weighted by its centerness target and divided by
                   the sum of those targets (torchvision's FCOS divides by the number of positives instead)
    loss_fcos_ctr  BCE of the predicted centerness against sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)), summed over
                   positives and divided by their number
    loss_mask      BCE (mean) of each foreground RoI's ground-truth-class 28x28 mask logits against the aligned
                   RoIAlign crop of its ground-truth mask, binarised at 0.5
    loss_maskiou   maskiou_loss_weight x mean over RoIs with target > 0 of 0.5 (predicted IoU - target IoU)^2

The FCOS normalisers are averaged over the data-parallel processes (at least 1 positive, 1e-6 centerness), as the
official code does, so every process weights its gradients alike. Labels are contiguous classes; `num_classes` is
the background label of the FCOS targets.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from models.centermask.fcos_loss import smoothed_giou_loss
from models.common.distributed import mean_over_processes
from models.centermask.fcos_targets import assign_targets, centerness_targets, size_ranges_per_level
from models.centermask.mask_targets import mask_crops

FCOS_TERMS = ("loss_fcos_cls", "loss_fcos_box", "loss_fcos_ctr")


class CenterMaskLoss:
    """Args: num_classes, strides (of the FCOS levels), sizes_of_interest (the 4 boundaries of the 5 levels'
    ranges), center_sampling_radius (strides), focal_alpha, focal_gamma, maskiou_loss_weight. Plain values only.

    `fcos(head, locations, targets) -> {loss_fcos_cls, loss_fcos_box, loss_fcos_ctr}` on every location;
    `mask_targets`, `loss_mask` and `loss_maskiou` serve the mask branch, whose heads the model runs in between.
    """

    def __init__(
        self,
        num_classes: int,
        strides: list[int],
        sizes_of_interest: list[float] = [64, 128, 256, 512],
        center_sampling_radius: float = 1.5,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        maskiou_loss_weight: float = 1.0,
    ):
        self.num_classes = num_classes
        self.strides = list(strides)
        self.size_ranges = size_ranges_per_level(list(sizes_of_interest))
        self.center_sampling_radius = center_sampling_radius
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.maskiou_loss_weight = maskiou_loss_weight

    # ------------------------------------------------------------------------------------------------ FCOS

    def fcos(
        self,
        head: tuple[list[Tensor], list[Tensor], list[Tensor]],
        locations: list[Tensor],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """The three FCOS terms of a batch.

        Args:
            head: per level cls_logits [B, C, H_l, W_l], box_regression [B, 4, H_l, W_l] (strides), centerness
                [B, 1, H_l, W_l].
            locations: per level float [H_l * W_l, 2] cell centres in pixels (fcos_targets.level_locations).
            targets: per image `boxes` float [N, 4] xyxy and `labels` int64 [N] (crowd regions removed).
        """
        cls_logits, box_regression, centerness = (_flatten_levels(maps).float() for maps in head)
        labels, box_targets = self.fcos_targets(locations, targets)
        positive = torch.nonzero(labels != self.num_classes).squeeze(1)
        device = cls_logits.device
        num_positive = max(mean_over_processes(float(positive.numel()), device), 1.0)
        ctr_targets = centerness_targets(box_targets[positive])
        ctr_norm = max(mean_over_processes(float(ctr_targets.sum()), device), 1e-6)
        losses = {"loss_fcos_cls": self.loss_fcos_cls(cls_logits, labels, positive, num_positive)}
        if positive.numel() == 0:
            # No positive here (maybe elsewhere): zero terms that keep every head output in the graph.
            zero = box_regression.sum() * 0 + centerness.sum() * 0
            return {**losses, "loss_fcos_box": zero, "loss_fcos_ctr": zero}
        losses["loss_fcos_box"] = self.loss_fcos_box(
            box_regression[positive], box_targets[positive], ctr_targets, ctr_norm
        )
        losses["loss_fcos_ctr"] = self.loss_fcos_ctr(centerness[positive, 0], ctr_targets, num_positive)
        return losses

    def fcos_targets(self, locations: list[Tensor], targets: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        """Class labels int64 [B * P] (num_classes = background) and (l, t, r, b) targets float [B * P, 4] in
        strides of every location, image by image, each image's locations level by level (fcos_targets)."""
        counts = [len(points) for points in locations]
        location_strides = torch.cat(
            [points.new_full((count,), float(stride)) for points, count, stride in zip(locations, counts, self.strides)]
        )
        size_ranges = torch.cat(
            [points.new_tensor(bounds).expand(count, 2) for points, count, bounds in
             zip(locations, counts, self.size_ranges)]
        )
        all_locations = torch.cat(locations)
        labels, box_targets = [], []
        for target in targets:
            image_labels, distances = assign_targets(
                all_locations, location_strides, size_ranges, target["boxes"], target["labels"], self.num_classes,
                self.center_sampling_radius,
            )
            labels.append(image_labels)
            box_targets.append(distances / location_strides[:, None])  # the head regresses in strides
        return torch.cat(labels), torch.cat(box_targets)

    def loss_fcos_cls(self, cls_logits: Tensor, labels: Tensor, positive: Tensor, num_positive: float) -> Tensor:
        """cls_logits float [P, C]; labels int64 [P]; positive int64 [K] indices of the positive locations."""
        class_targets = torch.zeros_like(cls_logits)
        class_targets[positive, labels[positive]] = 1
        return sigmoid_focal_loss(
            cls_logits, class_targets, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
        ) / num_positive

    def loss_fcos_box(self, predicted: Tensor, targets: Tensor, ctr_targets: Tensor, ctr_norm: float) -> Tensor:
        """predicted, targets float [K, 4] (l, t, r, b) of the positives in strides; ctr_targets float [K]."""
        return (smoothed_giou_loss(predicted, targets) * ctr_targets).sum() / ctr_norm

    def loss_fcos_ctr(self, centerness: Tensor, ctr_targets: Tensor, num_positive: float) -> Tensor:
        """centerness float [K] logits of the positives; ctr_targets float [K]."""
        return F.binary_cross_entropy_with_logits(centerness, ctr_targets, reduction="sum") / num_positive

    # ------------------------------------------------------------------------------------------ mask branch

    def mask_targets(
        self, targets: list[dict[str, Tensor]], rois: list[tuple[Tensor, Tensor]], size: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(labels int64 [F], crops float [F, size, size] in 0..1, whole-instance pixel areas float [F]) of the
        foreground RoIs `rois` (per image: boxes [F_i, 4], matched ground-truth index [F_i]; mask_rois)."""
        labels = torch.cat([t["labels"][matched] for t, (_, matched) in zip(targets, rois)])
        crops = torch.cat([mask_crops(t["masks"], boxes, matched, size) for t, (boxes, matched) in zip(targets, rois)])
        areas = torch.cat([t["masks"].flatten(1).sum(dim=1)[matched].float() for t, (_, matched) in zip(targets, rois)])
        return labels, crops, areas

    def loss_mask(self, mask_logits: Tensor, labels: Tensor, crops: Tensor) -> tuple[Tensor, Tensor]:
        """BCE of each RoI's ground-truth-class mask logits (mask_logits float [F, C, M, M]) against its crop
        (float [F, M, M]) >= 0.5. Returns (the loss, the selected logits [F, M, M]); with no RoI a zero that keeps
        the head in the graph."""
        selected = mask_logits[torch.arange(mask_logits.shape[0], device=mask_logits.device), labels]
        if selected.numel() == 0:
            return mask_logits.sum() * 0, selected
        return F.binary_cross_entropy_with_logits(selected, (crops >= 0.5).to(selected.dtype)), selected

    def loss_maskiou(self, predicted_iou: Tensor, labels: Tensor, iou_targets: Tensor) -> Tensor:
        """predicted_iou float [F, C]; labels int64 [F]; iou_targets float [F] (mask_targets.maskiou_targets)."""
        selected = predicted_iou[torch.arange(predicted_iou.shape[0], device=predicted_iou.device), labels]
        valid = iou_targets > 0
        if not bool(valid.any()):
            return predicted_iou.sum() * 0
        return self.maskiou_loss_weight * 0.5 * ((selected[valid] - iou_targets[valid]) ** 2).mean()


def _flatten_levels(maps: list[Tensor]) -> Tensor:
    """Per level [B, D, H_l, W_l] -> [B * P, D], image by image, each image's locations level by level (the
    order of `level_locations` and of the targets)."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], dim=1).flatten(0, 1)

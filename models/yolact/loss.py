"""YOLACT's training losses (the official multibox loss with the yolact_base settings), one method per term.

    loss_cls       softmax cross-entropy over positives + hard negatives (OHEM, 3 per positive, ranked by
                   -log p(background)), weight 1
    loss_box       smooth L1 on SSD-encoded boxes (variances 0.1 / 0.2) of positives, weight 1.5
    loss_mask      BCE of sigmoid(prototypes @ coefficients) against the ground-truth mask at prototype resolution,
                   both cropped to the ground-truth box (+1 px), summed per instance and divided by the box's area
                   in prototype pixels; at most `masks_to_train` positives per image, sampled at random and the
                   sum scaled back up; weight 6.125
    loss_semantic  per-pixel sigmoid BCE of the semantic head against per-class union masks at P3 size, summed,
                   divided by P3's area and by the batch size, weight 1

cls, box and mask are divided by the number of positives in the batch. Crowd instances are never targets (they
only turn background anchors neutral, see targets.py).

Differences from the official code, all numerically inert in normal training: the mask BCE is computed from logits
(the official sigmoid -> clamp -> BCE saturates at 100 for confidently wrong pixels), a box narrower than half a
prototype pixel is normalised as if it were half a pixel wide (the official divides by its area, unbounded), and an
empty batch divides by one positive rather than zero.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from models.common.box_coder import Float32BoxCoder
from models.common.mask_crop import box_mask_region
from models.yolact.targets import NEUTRAL, match_anchors

# SSD's variances (0.1 for centres, 0.2 for sizes) are torchvision's weights (1/0.1, 1/0.1, 1/0.2, 1/0.2).
SSD_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
MIN_PROTO_BOX_SIDE = 0.5


def ssd_box_coder() -> Float32BoxCoder:
    """torchvision's box coder with SSD's weights; encodes and decodes without a host-to-device copy."""
    return Float32BoxCoder(weights=SSD_BOX_WEIGHTS)


@dataclass
class YolactTarget:
    """One image's training target in the network-input frame.

    boxes float [G, 4] xyxy input pixels; labels int64 [G] contiguous; masks [G, H0, W0] 0/1 at the image's own
    resolution (resized straight to prototype / P3 size by the loss); crowd_boxes float [Q, 4] input pixels.
    """

    boxes: Tensor
    labels: Tensor
    masks: Tensor
    crowd_boxes: Tensor


@dataclass
class YolactOutputs:
    """Raw network outputs for a batch: box_deltas [B, N, 4], class_logits [B, N, C+1], coefficients [B, N, k],
    prototypes [B, k, Hp, Wp], semantic_logits [B, C, H3, W3] (None at inference), anchors [N, 4] input pixels,
    input_size (S_h, S_w)."""

    box_deltas: Tensor
    class_logits: Tensor
    coefficients: Tensor
    prototypes: Tensor
    semantic_logits: Tensor | None
    anchors: Tensor
    input_size: tuple[int, int]


class YolactLoss:
    """The loss terms of a batch; see the module docstring. Plain values only, no parameters."""

    def __init__(
        self,
        pos_iou_thresh: float = 0.5,
        neg_iou_thresh: float = 0.4,
        crowd_iou_thresh: float = 0.7,
        negpos_ratio: int = 3,
        box_weight: float = 1.5,
        mask_weight: float = 6.125,
        semantic_weight: float = 1.0,
        masks_to_train: int = 100,
    ):
        self.pos_iou_thresh = pos_iou_thresh
        self.neg_iou_thresh = neg_iou_thresh
        self.crowd_iou_thresh = crowd_iou_thresh
        self.negpos_ratio = negpos_ratio
        self.box_weight = box_weight
        self.mask_weight = mask_weight
        self.semantic_weight = semantic_weight
        self.masks_to_train = masks_to_train
        self.box_coder = ssd_box_coder()

    def __call__(self, outputs: YolactOutputs, targets: list[YolactTarget]) -> dict[str, Tensor]:
        matches = [
            match_anchors(
                outputs.anchors, t.boxes, t.labels, t.crowd_boxes,
                self.pos_iou_thresh, self.neg_iou_thresh, self.crowd_iou_thresh,
            )
            for t in targets
        ]
        anchor_classes = torch.stack([classes for classes, _ in matches])  # [B, N]
        matched_gt = [gt for _, gt in matches]
        num_positives = (anchor_classes > 0).sum().clamp(min=1).float()
        losses = {
            "loss_cls": self.loss_cls(outputs.class_logits, anchor_classes),
            "loss_box": self.loss_box(outputs, anchor_classes, matched_gt, targets),
            "loss_mask": self.loss_mask(outputs, anchor_classes, matched_gt, targets),
        }
        losses = {name: value / num_positives for name, value in losses.items()}
        if outputs.semantic_logits is not None:
            losses["loss_semantic"] = self.loss_semantic(outputs.semantic_logits, targets) / len(targets)
        return losses

    def loss_cls(self, class_logits: Tensor, anchor_classes: Tensor) -> Tensor:
        """OHEM softmax cross-entropy, summed: class_logits [B, N, C+1], anchor_classes [B, N] (-1 neutral).

        The cross-entropy of every anchor, the selected ones' kept with `where`: selecting first (boolean indexing)
        would read the selection on the host, a device sync."""
        positive = anchor_classes > 0
        class_logits = class_logits.float()  # the cross-entropy in float32 under mixed precision, as F.cross_entropy
        log_partition = torch.logsumexp(class_logits, dim=2)  # [B, N]
        with torch.no_grad():
            # -log p(background) = logsumexp - background logit: how wrongly confident an anchor is.
            hardness = log_partition - class_logits[..., 0]
            hardness = hardness.masked_fill(positive | (anchor_classes == NEUTRAL), 0)
            rank = hardness.argsort(dim=1, descending=True).argsort(dim=1)  # rank of each anchor in its image
            num_negatives = (positive.sum(dim=1, keepdim=True) * self.negpos_ratio).clamp(
                max=anchor_classes.shape[1] - 1
            )
            negative = (rank < num_negatives) & ~positive & (anchor_classes != NEUTRAL)
        selected = positive | negative
        # cross-entropy = logsumexp - the target's logit
        target_logit = class_logits.gather(2, anchor_classes.clamp(min=0).unsqueeze(2)).squeeze(2)
        return torch.where(selected, log_partition - target_logit, 0.0).sum()

    def loss_box(
        self, outputs: YolactOutputs, anchor_classes: Tensor, matched_gt: list[Tensor], targets: list[YolactTarget]
    ) -> Tensor:
        """Smooth L1 (beta 1) between predicted and encoded matched boxes of positives, summed, x box_weight.

        Every anchor is encoded and the positives' terms kept with `where`: selecting the positives first (boolean
        indexing, or a test for any) would read the mask on the host, a device sync per image."""
        batch, num_anchors = anchor_classes.shape
        # Each anchor's matched box; an image without boxes matches every anchor to itself (a zero target that no
        # positive reads).
        matched = torch.stack([target.boxes[gt_index] if len(target.boxes) else outputs.anchors
                               for gt_index, target in zip(matched_gt, targets)])  # [B, N, 4]
        encoded = self.box_coder.encode_single(matched.flatten(0, 1), outputs.anchors.repeat(batch, 1))
        per_anchor = F.smooth_l1_loss(outputs.box_deltas, encoded.view(batch, num_anchors, 4), reduction="none",
                                      beta=1.0)
        return torch.where((anchor_classes > 0)[..., None], per_anchor, 0.0).sum() * self.box_weight

    def loss_mask(
        self, outputs: YolactOutputs, anchor_classes: Tensor, matched_gt: list[Tensor], targets: list[YolactTarget]
    ) -> Tensor:
        """Box-cropped, area-normalised mask BCE of (at most masks_to_train) positives, summed, x mask_weight."""
        prototypes = outputs.prototypes  # [B, k, Hp, Wp]
        proto_h, proto_w = prototypes.shape[-2:]
        input_h, input_w = outputs.input_size
        to_proto = prototypes.new_tensor([proto_w / input_w, proto_h / input_h] * 2)
        total = prototypes.sum() * 0 + outputs.coefficients.sum() * 0
        for index, (classes, gt_index, target) in enumerate(zip(anchor_classes, matched_gt, targets)):
            positive = torch.nonzero(classes > 0).squeeze(1)
            num_positive = positive.numel()
            if num_positive == 0:
                continue
            if num_positive > self.masks_to_train:
                positive = positive[torch.randperm(num_positive, device=positive.device)[: self.masks_to_train]]
            gt = gt_index[positive]
            with torch.no_grad():
                gt_masks = _resize_binary(target.masks, (proto_h, proto_w))[gt]  # [P, Hp, Wp]
            boxes = target.boxes[gt] * to_proto  # [P, 4] prototype pixels
            coefficients = outputs.coefficients[index, positive]  # [P, k]
            logits = (coefficients @ prototypes[index].flatten(1)).view(-1, proto_h, proto_w)
            inside = box_mask_region(boxes, proto_h, proto_w, padding=1.0).to(logits.dtype)
            bce = F.binary_cross_entropy_with_logits(logits, gt_masks, reduction="none") * inside
            sides = (boxes[:, 2:] - boxes[:, :2]).clamp(min=MIN_PROTO_BOX_SIDE)
            per_instance = bce.sum(dim=(1, 2)) / (sides[:, 0] * sides[:, 1])
            total = total + per_instance.sum() * (num_positive / positive.numel())
        return total * self.mask_weight

    def loss_semantic(self, semantic_logits: Tensor, targets: list[YolactTarget]) -> Tensor:
        """Sigmoid BCE against per-class union masks at P3 size, summed per image / (H3 * W3), x semantic_weight."""
        _, num_classes, height, width = semantic_logits.shape
        total = semantic_logits.sum() * 0
        for logits, target in zip(semantic_logits, targets):
            with torch.no_grad():
                union = torch.zeros_like(logits)
                if target.labels.numel():
                    masks = _resize_binary(target.masks, (height, width))
                    # Per-class maximum of the instance masks: scatter_reduce 'amax' over the class index.
                    index = target.labels.view(-1, 1, 1).expand_as(masks)
                    union = union.scatter_reduce(0, index, masks, reduce="amax", include_self=True)
            total = total + F.binary_cross_entropy_with_logits(logits, union, reduction="sum")
        return total / (height * width) * self.semantic_weight


def _resize_binary(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """0/1 masks [G, H, W] -> float 0/1 [G, h, w]: bilinear (align_corners=False), then > 0.5, as the official."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size), dtype=torch.float32)
    resized = F.interpolate(masks[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return (resized > 0.5).float()

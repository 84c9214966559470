"""Box and mask heads on RoIs: torchvision's RoIHeads with detection and losses as two explicit calls.

torchvision's `RoIHeads.forward` samples proposals and returns losses only when `self.training`, and returns
detections only when not. This subclass re-sequences the same torchvision pieces (`select_training_samples`,
`postprocess_detections`, `fastrcnn_loss`, `maskrcnn_loss`, `maskrcnn_inference`) into `detect` and `losses`,
which behave the same in train and eval mode. Nothing in torchvision is patched.

`mask_aligned` switches the mask targets to detectron2's pixel convention (models.common.masks): each positive
RoI's target is the aligned RoIAlign crop of its ground-truth mask, binarised at 0.5 as detectron2's
BitMasks.crop_and_resize; torchvision's `maskrcnn_loss` (aligned=False, soft targets) otherwise. `LevelPool` gives
torchvision's RoIHeads the aligned pooler (ROIAlignV2) in MultiScaleRoIAlign's calling form.

Labels here are the internal ones: 0 is background, object classes are 1..num_classes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import (
    RoIHeads,
    fastrcnn_loss,
    maskrcnn_inference,
    maskrcnn_loss,
    project_masks_on_boxes,
)

from models.common.box_coder import Float32BoxCoder
from models.common.masks import crop_and_resize_masks
from models.common.roi_pooler import LevelRoIAlign


class LevelPool(nn.Module):
    """detectron2's ROIAlignV2 pooler (FPN level rule, aligned, adaptive sampling) over the named pyramid levels.

    `forward(features: dict[name, Tensor[B, C, H_l, W_l]], boxes: list[Tensor[K_i, 4]], image_sizes) ->
    Tensor[sum K_i, C, S, S]`, the call torchvision's RoIHeads makes of its MultiScaleRoIAlign.
    """

    def __init__(self, level_names: list[str], strides: list[int], output_size: int):
        super().__init__()
        self.level_names = list(level_names)
        self.pool = LevelRoIAlign(strides, output_size, level_rule="mask_rcnn", sampling_ratio=0, aligned=True)

    def forward(self, features: dict[str, Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]) -> Tensor:
        return self.pool([features[name] for name in self.level_names], boxes, image_sizes)


class MaskRoIHeads(RoIHeads):
    """Box classification/regression and mask prediction on RoIs pooled from the pyramid.

    Takes torchvision RoIHeads' arguments, plus `mask_aligned` (see the module docstring).
    """

    def __init__(self, *args, mask_aligned: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.mask_aligned = mask_aligned
        # The same coder, decoding in float32 without torchvision's per-call host-to-device copy.
        self.box_coder = Float32BoxCoder(self.box_coder.weights, self.box_coder.bbox_xform_clip)

    def detect(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Final detections per image, in the resized image's coordinates.

        Returns per image: `boxes` [K, 4], `scores` [K], `labels` [K] (internal, >= 1), `mask_probs` [K, 1, M, M]
        (the predicted class's mask in the box frame, probabilities).
        """
        class_logits, box_regression = self._box_outputs(features, proposals, image_sizes)
        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_sizes)
        mask_logits = self._mask_logits(features, boxes, image_sizes)
        mask_probs = maskrcnn_inference(mask_logits, labels)
        return [
            {"boxes": b, "scores": s, "labels": lab, "mask_probs": m}
            for b, s, lab, m in zip(boxes, scores, labels, mask_probs)
        ]

    def losses(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """Classification, box-regression and mask losses on RoIs sampled from `proposals` + ground truth.

        `targets[i]`: `boxes` [N, 4] (resized image), `labels` [N] internal, `masks` [N, H, W] uint8.
        """
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        class_logits, box_regression = self._box_outputs(features, proposals, image_sizes)
        loss_cls, loss_box = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)

        # The mask branch trains on the positive RoIs only.
        positives = [torch.where(image_labels > 0)[0] for image_labels in labels]
        mask_proposals = [p[keep] for p, keep in zip(proposals, positives)]
        mask_matched_idxs = [m[keep] for m, keep in zip(matched_idxs, positives)]
        mask_logits = self._mask_logits(features, mask_proposals, image_sizes)
        mask_loss = aligned_mask_loss if self.mask_aligned else maskrcnn_loss
        loss_mask = mask_loss(
            mask_logits,
            mask_proposals,
            [t["masks"] for t in targets],
            [t["labels"] for t in targets],
            mask_matched_idxs,
        )
        return {"loss_cls": loss_cls, "loss_box": loss_box, "loss_mask": loss_mask}

    def _box_outputs(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """Class logits [R, C+1] and per-class box deltas [R, 4(C+1)] for the R boxes of the batch, float32.

        float32 under mixed precision too: torchvision decodes boxes in the deltas' dtype (bfloat16 would round
        corners to 4-8 px steps) and its scores keep the logits' dtype.
        """
        pooled = self.box_roi_pool(features, boxes, image_sizes)
        class_logits, box_regression = self.box_predictor(self.box_head(pooled))
        return class_logits.float(), box_regression.float()

    def _mask_logits(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> Tensor:
        """Per-class mask logits [R, C+1, M, M] for the R boxes of the batch."""
        pooled = self.mask_roi_pool(features, boxes, image_sizes)
        return self.mask_predictor(self.mask_head(pooled))


def mask_targets(
    proposals: Tensor, gt_masks: Tensor, matched_idxs: Tensor, size: int, aligned: bool
) -> Tensor:
    """One image's mask targets float [R, M, M] of the RoIs `proposals` [R, 4] matched to `gt_masks` [N, H, W]:
    torchvision's (aligned=False crop, soft) or detectron2's (aligned crop binarised at 0.5)."""
    if aligned:
        return (crop_and_resize_masks(gt_masks, proposals, size, mask_indices=matched_idxs, aligned=True) >= 0.5).float()
    return project_masks_on_boxes(gt_masks, proposals, matched_idxs, size)


def aligned_mask_loss(
    mask_logits: Tensor,
    proposals: list[Tensor],
    gt_masks: list[Tensor],
    gt_labels: list[Tensor],
    matched_idxs: list[Tensor],
) -> Tensor:
    """Mean BCE of each positive RoI's ground-truth-class mask logits [R, C+1, M, M] against its aligned target
    (`mask_targets`, detectron2's mask_rcnn_loss); `maskrcnn_loss`'s arguments."""
    size = mask_logits.shape[-1]
    labels = torch.cat([image_labels[index] for image_labels, index in zip(gt_labels, matched_idxs)])
    targets = torch.cat([
        mask_targets(boxes, masks, index, size, aligned=True)
        for masks, boxes, index in zip(gt_masks, proposals, matched_idxs)
    ])
    if targets.numel() == 0:
        return mask_logits.sum() * 0
    selected = mask_logits[torch.arange(labels.shape[0], device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(selected, targets.to(selected.dtype))

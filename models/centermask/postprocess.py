"""From CenterMask's head outputs to detections at each input image's own resolution, as centermask2 + detectron2:

1. FCOS detections (fcos_postprocess): per level the best candidates above `score_thresh`, class-wise NMS, the
   best `post_nms_top_n_test` (the mask branch trains on the best `post_nms_top_n_train`); boxes NOT clipped, so
   the model pools its mask features on the boxes as decoded (centermask2's ROI heads do);
2. after the model's mask branch: `scores` = the box score sqrt(cls x ctr) (box AP) and, with the MaskIoU head,
   `mask_scores` = box score x predicted mask IoU, not clamped to [0, 1] (mask AP; centermask2's
   mask_iou_inference, read by its COCO evaluator for segm as maskbench's evaluator reads `mask_scores`);
3. detectron2's detector_postprocess: boxes rescaled to the input image and clipped to it, boxes left without
   area dropped, and each mask (predicted for the unclipped box) pasted aligned into its clipped box at
   `mask_threshold`.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import clip_boxes_to_image

from models.centermask.fcos_postprocess import fcos_detections
from models.common.masks import paste_masks


class CenterMaskPostProcess:
    """Args: score_thresh, pre_nms_top_n (per level), nms_thresh (class-wise), post_nms_top_n_train,
    post_nms_top_n_test, mask_threshold.

    `detections(head, locations, strides, training)` -> per image FCOS `boxes` [K, 4] (resized frame, unclipped),
    `scores` [K], `labels` [K]; `__call__(detections, mask_probs, predicted_iou, resized_sizes, input_sizes)` ->
    list[dict(boxes [K', 4], scores [K'], labels [K'], masks bool [K', H, W] (+ mask_scores [K']))], in
    decreasing box score, K' <= K.
    """

    def __init__(
        self,
        score_thresh: float = 0.05,
        pre_nms_top_n: int = 1000,
        nms_thresh: float = 0.6,
        post_nms_top_n_train: int = 100,
        post_nms_top_n_test: int = 50,
        mask_threshold: float = 0.5,
    ):
        self.score_thresh = score_thresh
        self.pre_nms_top_n = pre_nms_top_n
        self.nms_thresh = nms_thresh
        self.post_nms_top_n_train = post_nms_top_n_train
        self.post_nms_top_n_test = post_nms_top_n_test
        self.mask_threshold = mask_threshold

    def detections(
        self,
        head: tuple[list[Tensor], list[Tensor], list[Tensor]],
        locations: list[Tensor],
        strides: list[int],
        training: bool = False,
    ) -> list[dict[str, Tensor]]:
        """FCOS detections of the head's (cls_logits, box_regression, centerness) per level; `training` picks the
        mask branch's training top-n, else the test top-n."""
        top_n = self.post_nms_top_n_train if training else self.post_nms_top_n_test
        return fcos_detections(
            *head, locations, strides, self.score_thresh, self.pre_nms_top_n, self.nms_thresh, top_n
        )

    @torch.no_grad()
    def __call__(
        self,
        detections: list[dict[str, Tensor]],
        mask_probs: Tensor,
        predicted_iou: Tensor | None,
        resized_sizes: list[tuple[int, int]],
        input_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """`detections` as `detections` returns them; mask_probs float [sum K, 1, M, M] and predicted_iou float
        [sum K] (None without the MaskIoU head) of every detection of the batch, image by image."""
        counts = [len(d["boxes"]) for d in detections]
        probs_per_image = mask_probs.split(counts)
        iou_per_image = predicted_iou.split(counts) if predicted_iou is not None else [None] * len(counts)
        return [
            self.detect(detection, probs, iou, resized_size, input_size)
            for detection, probs, iou, resized_size, input_size in zip(
                detections, probs_per_image, iou_per_image, resized_sizes, input_sizes
            )
        ]

    def detect(
        self,
        detection: dict[str, Tensor],
        mask_probs: Tensor,
        predicted_iou: Tensor | None,
        resized_size: tuple[int, int],
        input_size: tuple[int, int],
    ) -> dict[str, Tensor]:
        """One image; see the module docstring."""
        input_size = (int(input_size[0]), int(input_size[1]))
        boxes = clip_boxes_to_image(resize_boxes(detection["boxes"], resized_size, input_size), input_size)
        keep = torch.nonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).squeeze(1)
        boxes = boxes[keep].float()
        prediction = {
            "boxes": boxes,
            "scores": detection["scores"][keep].float(),
            "labels": detection["labels"][keep],
            "masks": paste_masks(mask_probs[keep], boxes, input_size, self.mask_threshold, aligned=True),
        }
        if predicted_iou is not None:
            prediction["mask_scores"] = (detection["scores"][keep] * predicted_iou[keep]).float()
        return prediction

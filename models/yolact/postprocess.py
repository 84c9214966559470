"""From raw YOLACT outputs to detections at each input image's own resolution (the official `Detect` +
`postprocess`):

1. softmax class scores, decode boxes; keep anchors whose best non-background score > score_thresh;
2. NMS: "fast" (per-class Fast NMS on the top_k of each class, then the best detections_per_img overall — the
   official default), "cross_class" (Fast NMS over classes) or "batched" (classic per-class NMS);
3. masks = sigmoid(prototypes @ coefficients), cropped to the predicted box (+1 px) at prototype resolution,
   bilinearly up-sampled to the image's size and thresholded at 0.5;
4. boxes scaled from the square network input to the image and clamped to it.

With the default "fast" NMS every shape is fixed by the configuration (top_k per class over all anchors, the
non-candidates ranked last; `detections_per_img` masks assembled), so nothing waits for the device until the one
read of the detection count that cuts the padded results, after all the work is queued: the network and the
post-processing at a fixed input size can be captured in one CUDA graph (`detect_fixed`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models.common.mask_crop import crop_masks
from models.common.nms import batched_class_nms, cross_class_fast_nms, fast_nms_fixed
from models.yolact.loss import YolactOutputs, ssd_box_coder


class YolactPostProcess:
    """Args: score_thresh, nms ("fast" | "cross_class" | "batched"), nms_iou_thresh, nms_top_k (candidates per
    class for Fast NMS), detections_per_img, mask_thresh.

    `__call__(outputs, image_sizes: list[(H_i, W_i)]) -> list[dict(boxes [K,4], scores [K], labels [K],
    masks bool [K, H_i, W_i])]`.
    """

    def __init__(
        self,
        score_thresh: float = 0.05,
        nms: str = "fast",
        nms_iou_thresh: float = 0.5,
        nms_top_k: int = 200,
        detections_per_img: int = 100,
        mask_thresh: float = 0.5,
    ):
        self.score_thresh = score_thresh
        self.nms = nms
        self.nms_iou_thresh = nms_iou_thresh
        self.nms_top_k = nms_top_k
        self.detections_per_img = detections_per_img
        self.mask_thresh = mask_thresh
        self.box_coder = ssd_box_coder()

    def __call__(self, outputs: YolactOutputs, image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        return [self.detect(outputs, index, size) for index, size in enumerate(image_sizes)]

    def detect(self, outputs: YolactOutputs, index: int, image_size: tuple[int, int]) -> dict[str, Tensor]:
        """Detections of image `index` of the batch; see the module docstring."""
        if self.nms == "fast":
            detections, count = self.detect_fixed(outputs, index, image_size)
            count = int(count)  # the one host read, once everything is queued
            return {key: value[:count] for key, value in detections.items()}
        scores = outputs.class_logits[index].float().softmax(dim=1)[:, 1:]  # [N, C]
        candidates = torch.nonzero(scores.max(dim=1).values > self.score_thresh).squeeze(1)
        boxes = self.box_coder.decode_single(outputs.box_deltas[index, candidates], outputs.anchors[candidates])
        candidate_scores = scores[candidates].t()  # [C, n]
        if self.nms == "cross_class":
            kept, labels, kept_scores = cross_class_fast_nms(
                boxes, candidate_scores, self.nms_iou_thresh, self.nms_top_k, self.detections_per_img
            )
        else:
            kept, labels, kept_scores = batched_class_nms(
                boxes, candidate_scores, self.nms_iou_thresh, self.score_thresh, self.detections_per_img
            )
        return self._finish(outputs, index, image_size, boxes[kept], candidates[kept], labels, kept_scores)

    def detect_fixed(
        self, outputs: YolactOutputs, index: int, image_size: tuple[int, int]
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Fast NMS detections of image `index` padded to D = min(detections_per_img, C * top_k), no host sync.

        Returns the detection dict with D rows, the kept ones first (by score), and their count (int64 0-dim tensor).
        """
        scores = outputs.class_logits[index].float().softmax(dim=1)[:, 1:]  # [N, C]
        candidates = scores.max(dim=1).values > self.score_thresh  # [N]
        boxes = self.box_coder.decode_single(outputs.box_deltas[index], outputs.anchors)  # [N, 4], every anchor
        anchor_idx, labels, kept_scores, kept = fast_nms_fixed(
            boxes, scores.t(), self.nms_iou_thresh, self.nms_top_k, self.detections_per_img, valid=candidates
        )
        detections = self._finish(outputs, index, image_size, boxes[anchor_idx], anchor_idx, labels, kept_scores)
        return detections, kept.sum()

    def _finish(
        self, outputs: YolactOutputs, index: int, image_size: tuple[int, int], boxes: Tensor, anchor_idx: Tensor,
        labels: Tensor, scores: Tensor,
    ) -> dict[str, Tensor]:
        """Masks of the detections (boxes [K, 4] in input pixels, anchors [K]), boxes scaled to the image."""
        coefficients = outputs.coefficients[index, anchor_idx]  # [K, k]
        masks = assemble_masks(
            outputs.prototypes[index], coefficients, boxes, outputs.input_size, image_size, self.mask_thresh
        )
        height, width = image_size
        input_h, input_w = outputs.input_size
        boxes = _sanitise(_scale(boxes, width / input_w, height / input_h), height, width)
        return {"boxes": boxes, "scores": scores.float(), "labels": labels.to(torch.int64), "masks": masks}


def assemble_masks(
    prototypes: Tensor,
    coefficients: Tensor,
    boxes: Tensor,
    input_size: tuple[int, int],
    image_size: tuple[int, int],
    threshold: float = 0.5,
) -> Tensor:
    """Linear combination of prototypes, cropped to boxes, at the image's resolution.

    Args:
        prototypes: [k, Hp, Wp]; coefficients: [K, k]; boxes: [K, 4] xyxy in input pixels;
        input_size: (S_h, S_w) the network input; image_size: (H, W) to up-sample to.

    Returns:
        bool [K, H, W].
    """
    num_prototypes, proto_h, proto_w = prototypes.shape
    height, width = image_size
    if coefficients.shape[0] == 0:
        return torch.zeros((0, height, width), dtype=torch.bool, device=prototypes.device)
    probs = (coefficients.float() @ prototypes.float().reshape(num_prototypes, -1)).sigmoid()
    probs = probs.view(-1, proto_h, proto_w)
    probs = crop_masks(probs, _scale(boxes, proto_w / input_size[1], proto_h / input_size[0]), padding=1.0)
    probs = F.interpolate(probs[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    return probs > threshold


def _scale(boxes: Tensor, scale_x: float, scale_y: float) -> Tensor:
    """[K, 4] xyxy scaled by Python numbers (a scale tensor would be a host-to-device copy on every call)."""
    return torch.stack([boxes[:, 0] * scale_x, boxes[:, 1] * scale_y, boxes[:, 2] * scale_x, boxes[:, 3] * scale_y],
                       dim=1)


def _sanitise(boxes: Tensor, height: int, width: int) -> Tensor:
    """Corners ordered (min, max) and clamped to the image, as the official sanitize_coordinates."""
    x0 = torch.minimum(boxes[:, 0], boxes[:, 2]).clamp(0, width)
    x1 = torch.maximum(boxes[:, 0], boxes[:, 2]).clamp(0, width)
    y0 = torch.minimum(boxes[:, 1], boxes[:, 3]).clamp(0, height)
    y1 = torch.maximum(boxes[:, 1], boxes[:, 3]).clamp(0, height)
    return torch.stack([x0, y0, x1, y1], dim=1)

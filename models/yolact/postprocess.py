"""From raw YOLACT outputs to detections at each input image's own resolution (the official `Detect` +
`postprocess`):

1. softmax class scores, decode boxes; keep anchors whose best non-background score > score_thresh;
2. NMS: "fast" (per-class Fast NMS on the top_k of each class, then the best detections_per_img overall — the
   official default), "cross_class" (Fast NMS over classes) or "batched" (classic per-class NMS);
3. masks = sigmoid(prototypes @ coefficients), cropped to the predicted box (+1 px) at prototype resolution,
   bilinearly up-sampled to the image's size and thresholded at 0.5;
4. boxes scaled from the square network input to the image and clamped to it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models.common.mask_crop import crop_masks
from models.common.nms import batched_class_nms, cross_class_fast_nms, fast_nms
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
        scores = outputs.class_logits[index].float().softmax(dim=1)[:, 1:]  # [N, C]
        candidates = torch.nonzero(scores.max(dim=1).values > self.score_thresh).squeeze(1)
        boxes = self.box_coder.decode_single(outputs.box_deltas[index, candidates].float(), outputs.anchors[candidates])
        candidate_scores = scores[candidates].t()  # [C, n]
        if self.nms == "fast":
            kept, labels, kept_scores = fast_nms(
                boxes, candidate_scores, self.nms_iou_thresh, self.nms_top_k, self.detections_per_img
            )
        elif self.nms == "cross_class":
            kept, labels, kept_scores = cross_class_fast_nms(
                boxes, candidate_scores, self.nms_iou_thresh, self.nms_top_k, self.detections_per_img
            )
        else:
            kept, labels, kept_scores = batched_class_nms(
                boxes, candidate_scores, self.nms_iou_thresh, self.score_thresh, self.detections_per_img
            )
        boxes = boxes[kept]
        coefficients = outputs.coefficients[index, candidates[kept]]  # [K, k]
        masks = assemble_masks(
            outputs.prototypes[index], coefficients, boxes, outputs.input_size, image_size, self.mask_thresh
        )
        height, width = image_size
        input_h, input_w = outputs.input_size
        scale = boxes.new_tensor([width / input_w, height / input_h] * 2)
        boxes = _sanitise(boxes * scale, height, width)
        return {"boxes": boxes, "scores": kept_scores.float(), "labels": labels.to(torch.int64), "masks": masks}


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
    to_proto = boxes.new_tensor([proto_w / input_size[1], proto_h / input_size[0]] * 2)
    probs = crop_masks(probs, boxes * to_proto, padding=1.0)
    probs = F.interpolate(probs[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    return probs > threshold


def _sanitise(boxes: Tensor, height: int, width: int) -> Tensor:
    """Corners ordered (min, max) and clamped to the image, as the official sanitize_coordinates."""
    x0 = torch.minimum(boxes[:, 0], boxes[:, 2]).clamp(0, width)
    x1 = torch.maximum(boxes[:, 0], boxes[:, 2]).clamp(0, width)
    y0 = torch.minimum(boxes[:, 1], boxes[:, 3]).clamp(0, height)
    y1 = torch.maximum(boxes[:, 1], boxes[:, 3]).clamp(0, height)
    return torch.stack([x0, y0, x1, y1], dim=1)

"""Fast NMS (Bolya et al., YOLACT 2019): non-maximum suppression as a few tensor operations, no sequential loop.

Sort each class's candidates by score, compute their pairwise IoU matrix, keep only its strict upper triangle (IoU
with higher-scoring boxes), and drop a box whose largest IoU with any higher-scoring box exceeds the threshold —
even when that higher box is itself dropped. That relaxation (an already-suppressed box may still suppress) is
what makes it parallel; it removes slightly more boxes than classic NMS.

torchvision ships classic NMS only (`torchvision.ops.nms` / `batched_nms`, offered here as the "batched" option for
comparison); Fast NMS and the batched per-class IoU it needs are written here by hand.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

NMS_MODES = ("fast", "cross_class", "batched")


def pairwise_iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """IoU of every pair, batched: [..., N, 4], [..., M, 4] xyxy -> [..., N, M] (torchvision's box_iou is 2-D only)."""
    area_a = (boxes_a[..., 2] - boxes_a[..., 0]).clamp(min=0) * (boxes_a[..., 3] - boxes_a[..., 1]).clamp(min=0)
    area_b = (boxes_b[..., 2] - boxes_b[..., 0]).clamp(min=0) * (boxes_b[..., 3] - boxes_b[..., 1]).clamp(min=0)
    top_left = torch.maximum(boxes_a[..., :, None, :2], boxes_b[..., None, :, :2])
    bottom_right = torch.minimum(boxes_a[..., :, None, 2:], boxes_b[..., None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return inter / union.clamp(min=1e-12)


def fast_nms(
    boxes: Tensor, scores: Tensor, iou_threshold: float = 0.5, top_k: int = 200, max_detections: int = 100
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class Fast NMS, then the best `max_detections` over all classes.

    Args:
        boxes: float [N, 4] xyxy candidate boxes (shared by all classes, as in a one-stage detector).
        scores: float [C, N] score of every candidate for every class.
        iou_threshold: a box is dropped when its IoU with a higher-scoring box of its class is > this.
        top_k: candidates per class entering the IoU matrix (the highest-scoring ones).
        max_detections: detections kept over all classes, by score.

    Returns:
        (box_indices int64 [K] into `boxes`, classes int64 [K], scores [K]), sorted by decreasing score:
        `fast_nms_fixed` cut to its kept entries (one host read of their count).
    """
    box_idx, classes, kept_scores, kept = fast_nms_fixed(boxes, scores, iou_threshold, top_k, max_detections)
    count = int(kept.sum())
    return box_idx[:count], classes[:count], kept_scores[:count]


def fast_nms_fixed(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.5,
    top_k: int = 200,
    max_detections: int = 100,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`fast_nms` with shapes fixed by the arguments alone: no host synchronisation (a CUDA graph can hold it).

    `valid` bool [N] (None: all) marks the candidates; the others rank below every candidate (score -inf), so they
    can neither enter a class's top_k ahead of a candidate nor suppress one, and are dropped.

    Returns:
        (box_indices int64 [D], classes int64 [D], scores [D], kept bool [D]) with D = min(max_detections, C * k),
        k = min(top_k, N), sorted by decreasing score: the kept detections first, then filler (kept False).
    """
    num_classes, num_boxes = scores.shape
    top_k = min(top_k, num_boxes)
    if valid is not None:
        scores = torch.where(valid[None], scores, float("-inf"))
    class_scores, order = scores.topk(top_k, dim=1)  # [C, k], sorted
    if top_k == 0:
        empty = order.new_zeros(0)
        return empty, empty, class_scores.new_zeros(0), empty.bool()
    iou = pairwise_iou(boxes[order], boxes[order]).triu_(diagonal=1)  # [C, k, k]: IoU with higher-scoring boxes
    keep = (iou.max(dim=1).values <= iou_threshold) & (class_scores > float("-inf"))
    flat = torch.where(keep, class_scores, float("-inf")).flatten()
    best_scores, best = flat.topk(min(max_detections, flat.numel()))
    return order.flatten()[best], best // top_k, best_scores, best_scores > float("-inf")


def cross_class_fast_nms(
    boxes: Tensor, scores: Tensor, iou_threshold: float = 0.5, top_k: int = 200, max_detections: int = 100
) -> tuple[Tensor, Tensor, Tensor]:
    """Fast NMS over all classes at once: each box takes its best class, and any box may suppress any other.

    Same arguments and returns as `fast_nms`; `top_k` here counts boxes of all classes together.
    """
    best_scores, best_classes = scores.max(dim=0)  # [N]
    order = best_scores.argsort(descending=True)[:top_k]
    iou = pairwise_iou(boxes[order], boxes[order]).triu_(diagonal=1)
    keep = iou.max(dim=0).values <= iou_threshold if order.numel() else order.new_zeros(0, dtype=torch.bool)
    kept = order[keep]
    return _best(kept, best_classes[kept], best_scores[kept], max_detections)


def batched_class_nms(
    boxes: Tensor, scores: Tensor, iou_threshold: float = 0.5, score_threshold: float = 0.05,
    max_detections: int = 100,
) -> tuple[Tensor, Tensor, Tensor]:
    """Classic sequential NMS per class (torchvision's batched_nms) on every (box, class) pair above the threshold.

    Same returns as `fast_nms`; the ablation baseline for Fast NMS.
    """
    class_idx, box_idx = torch.nonzero(scores > score_threshold, as_tuple=True)
    pair_scores = scores[class_idx, box_idx]
    keep = batched_nms(boxes[box_idx].float(), pair_scores.float(), class_idx, iou_threshold)
    return _best(box_idx[keep], class_idx[keep], pair_scores[keep], max_detections)


def _best(box_idx: Tensor, classes: Tensor, scores: Tensor, max_detections: int) -> tuple[Tensor, Tensor, Tensor]:
    scores, order = scores.sort(descending=True)
    order, scores = order[:max_detections], scores[:max_detections]
    return box_idx[order], classes[order], scores

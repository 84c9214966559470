"""FCOS detections from the dense head outputs, as centermask2 selects them.

Per image and level: locations whose class probability exceeds `score_thresh` (before centerness, the official
THRESH_WITH_CTR=False) are candidates; the best `pre_nms_top_n` of them by cls x ctr are decoded into boxes
(location -/+ distances x stride, NOT clipped: centermask2 pools the unclipped boxes for the mask branch, and
detectron2 clips only when it rescales the output). Over all levels: class-wise NMS at `nms_thresh`
(torchvision's batched_nms), then the best `post_nms_top_n`. The score is sqrt(cls x ctr).
torchvision's FCOS thresholds the square-rooted score (0.2 by default) instead, hence this file.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms


@torch.no_grad()
def fcos_detections(
    cls_logits: list[Tensor],
    box_regression: list[Tensor],
    centerness: list[Tensor],
    locations: list[Tensor],
    strides: list[int],
    score_thresh: float = 0.05,
    pre_nms_top_n: int = 1000,
    nms_thresh: float = 0.6,
    post_nms_top_n: int = 100,
) -> list[dict[str, Tensor]]:
    """Detections per image.

    Args:
        cls_logits, box_regression, centerness: per level [B, C, H_l, W_l], [B, 4, H_l, W_l] (distances in strides),
            [B, 1, H_l, W_l] (the head's outputs).
        locations: per level float [H_l * W_l, 2] cell centres in pixels; strides: per level.

    Returns:
        per image `boxes` float [K, 4] xyxy (may cross the image border), `scores` float [K] = sqrt(cls x ctr),
        `labels` int64 [K], K <= post_nms_top_n, sorted by decreasing score.
    """
    results = []
    for image in range(cls_logits[0].shape[0]):
        boxes, scores, labels = [], [], []
        for logits, regression, ctr, points, stride in zip(
            cls_logits, box_regression, centerness, locations, strides
        ):
            num_classes = logits.shape[1]
            probs = logits[image].float().sigmoid().reshape(num_classes, -1).t()  # [HW, C]
            ctr_probs = ctr[image].float().sigmoid().reshape(-1)  # [HW]
            candidate_loc, candidate_cls = torch.nonzero(probs > score_thresh, as_tuple=True)
            candidate_scores = probs[candidate_loc, candidate_cls] * ctr_probs[candidate_loc]
            if candidate_scores.numel() > pre_nms_top_n:
                candidate_scores, top = candidate_scores.topk(pre_nms_top_n)
                candidate_loc, candidate_cls = candidate_loc[top], candidate_cls[top]
            distances = regression[image].float().reshape(4, -1).t()[candidate_loc] * stride
            centres = points[candidate_loc]
            decoded = torch.cat([centres - distances[:, :2], centres + distances[:, 2:]], dim=1)
            boxes.append(decoded)
            scores.append(candidate_scores)
            labels.append(candidate_cls)
        boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        keep = batched_nms(boxes, scores, labels, nms_thresh)[:post_nms_top_n]  # sorted by decreasing score
        results.append({"boxes": boxes[keep], "scores": scores[keep].sqrt(), "labels": labels[keep]})
    return results

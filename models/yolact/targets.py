"""Anchor-to-ground-truth matching of YOLACT (SSD's rule, plus crowd handling).

- IoU of every anchor with every ground-truth box; an anchor takes its best box.
- Every ground truth is forced onto one anchor: greedily, the largest remaining IoU in the whole matrix pairs its
  anchor and box, then both are removed, once per ground truth (so two boxes never fight over one anchor).
- IoU >= pos_thresh: positive; < neg_thresh: background; in between: neutral (no class loss).
- A background anchor covered by a crowd box (intersection / anchor area > crowd_thresh) becomes neutral: crowd
  regions hold unlabelled objects, so "background" there would teach the wrong thing.

torchvision's Matcher implements "allow_low_quality_matches" differently (ties to every anchor sharing a box's
best IoU, no exclusive greedy pass), so the official rule is written here.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

NEUTRAL = -1
BACKGROUND = 0


def match_anchors(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    crowd_boxes: Tensor,
    pos_thresh: float = 0.5,
    neg_thresh: float = 0.4,
    crowd_thresh: float = 0.7,
) -> tuple[Tensor, Tensor]:
    """Match anchors [N, 4] to non-crowd ground truths gt_boxes [G, 4] (labels [G], contiguous 0..C-1).

    crowd_boxes [Q, 4]: crowd regions (may be empty). All boxes xyxy in one coordinate frame.

    Returns:
        anchor_classes int64 [N]: c + 1 for a positive matched to a box of label c, 0 background, -1 neutral.
        matched_gt int64 [N]: index of the ground truth each anchor takes (meaningful for positives; 0 when G = 0).
    """
    num_anchors = anchors.shape[0]
    if gt_boxes.shape[0] == 0:
        anchor_classes = torch.full((num_anchors,), BACKGROUND, dtype=torch.int64, device=anchors.device)
        matched_gt = torch.zeros(num_anchors, dtype=torch.int64, device=anchors.device)
    else:
        overlaps = box_iou(gt_boxes, anchors)  # [G, N]
        best_overlap, matched_gt = overlaps.max(dim=0)  # per anchor
        # The official greedy forced matching: G steps of tensor ops. Indices stay 1-element tensors (index_fill_,
        # scatter_): a 0-dim tensor used as an index would be read on the host, a device sync per ground truth.
        overlaps = overlaps.clone()
        for _ in range(gt_boxes.shape[0]):
            best_per_gt, best_anchor_per_gt = overlaps.max(dim=1)
            gt = best_per_gt.argmax().view(1)
            anchor = best_anchor_per_gt.gather(0, gt)
            overlaps.index_fill_(1, anchor, -1.0)
            overlaps.index_fill_(0, gt, -1.0)
            best_overlap.index_fill_(0, anchor, 2.0)
            matched_gt.scatter_(0, anchor, gt)
        anchor_classes = gt_labels.to(torch.int64)[matched_gt] + 1
        # torch.where rather than boolean-mask assignment, which finds the mask's indices on the host.
        anchor_classes = torch.where(best_overlap < pos_thresh, NEUTRAL, anchor_classes)
        anchor_classes = torch.where(best_overlap < neg_thresh, BACKGROUND, anchor_classes)
    if crowd_boxes.shape[0] > 0 and crowd_thresh < 1:
        covered = (_intersection_over_first(anchors, crowd_boxes).max(dim=1).values > crowd_thresh)
        anchor_classes = torch.where((anchor_classes <= BACKGROUND) & covered, NEUTRAL, anchor_classes)
    return anchor_classes, matched_gt


def _intersection_over_first(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """[N, 4], [M, 4] -> [N, M]: area(a & b) / area(a)."""
    top_left = torch.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = torch.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
    return inter / area_a[:, None].clamp(min=1e-12)

"""One-to-one assignment of queries to ground truths: the Hungarian algorithm on ISTR's matching cost.

    cost = w_cls * focal class cost + w_l1 * L1(normalised xyxy boxes) + w_giou * (-GIoU)
           + w_mask * (-(cos(predicted embedding, GT embedding) + 1) / 2)

The focal class cost is the focal loss of calling the query positive minus that of calling it negative, for the
ground truth's class: alpha (1-p)^gamma (-log p) - (1-alpha) p^gamma (-log(1-p)). Boxes are divided by the image
size (w, h, w, h) for the L1 term. The assignment itself is scipy's `linear_sum_assignment`, run per image on CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import generalized_box_iou


@dataclass
class MatchTarget:
    """Ground truth of one image in the network-input frame.

    labels int64 [T]; boxes float [T, 4] xyxy pixels of the resized input; image_size float [4] (w, h, w, h) of
    the resized input; masks float [T, M, M] 0/1 box crops; embeddings float [T, K] the codec's encoding of masks.
    """

    labels: Tensor
    boxes: Tensor
    image_size: Tensor
    masks: Tensor
    embeddings: Tensor


class HungarianMatcher:
    """Args: cost_class, cost_l1, cost_giou, cost_mask weights; focal_alpha, focal_gamma of the class cost.

    `__call__(class_logits [B, N, C], boxes [B, N, 4], mask_embeddings [B, N, K], targets: list[MatchTarget])
    -> list[(query_index int64 [m], target_index int64 [m])]` with m = min(N, T_b) per image.
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_l1: float = 5.0,
        cost_giou: float = 2.0,
        cost_mask: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        if min(cost_class, cost_l1, cost_giou, cost_mask) < 0 or cost_class + cost_l1 + cost_giou + cost_mask == 0:
            raise ValueError("HungarianMatcher: cost weights must be >= 0 and not all 0, got "
                             f"{cost_class}, {cost_l1}, {cost_giou}, {cost_mask}")
        self.cost_class = cost_class
        self.cost_l1 = cost_l1
        self.cost_giou = cost_giou
        self.cost_mask = cost_mask
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @torch.no_grad()
    def cost_matrix(self, class_logits: Tensor, boxes: Tensor, mask_embeddings: Tensor, target: MatchTarget) -> Tensor:
        """float [N, T] cost of assigning each query of one image ([N, C], [N, 4], [N, K]) to each ground truth."""
        prob = class_logits.float().sigmoid()[:, target.labels]  # [N, T]
        alpha, gamma = self.focal_alpha, self.focal_gamma
        positive = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
        negative = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()
        size = target.image_size.float()
        l1 = torch.cdist(boxes.float() / size, target.boxes.float() / size, p=1)
        giou = generalized_box_iou(boxes.float(), target.boxes.float())
        cosine = F.normalize(mask_embeddings.float(), dim=1) @ F.normalize(target.embeddings.float(), dim=1).T
        return (self.cost_class * (positive - negative) + self.cost_l1 * l1 - self.cost_giou * giou
                - self.cost_mask * (cosine + 1) / 2)

    @torch.no_grad()
    def __call__(
        self, class_logits: Tensor, boxes: Tensor, mask_embeddings: Tensor, targets: list[MatchTarget]
    ) -> list[tuple[Tensor, Tensor]]:
        costs = [
            self.cost_matrix(class_logits[index], boxes[index], mask_embeddings[index], target)
            for index, target in enumerate(targets) if len(target.labels)
        ]
        # One copy to the host for the whole batch (scipy runs there), not one blocking copy per image. A diverged
        # prediction (NaN / inf) must not stop the step here: scipy refuses such costs, so they become large finite
        # numbers and the loss, non-finite too, makes the training loop skip the step.
        if costs:
            flat = torch.nan_to_num(torch.cat([cost.flatten() for cost in costs]), nan=1e8, posinf=1e8, neginf=-1e8)
            costs = list(flat.cpu().split([cost.numel() for cost in costs]))
        matches = []
        for target in targets:
            if len(target.labels) == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                matches.append((empty, empty))
                continue
            cost = costs.pop(0).view(-1, len(target.labels))
            rows, cols = linear_sum_assignment(cost.numpy())
            matches.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return matches

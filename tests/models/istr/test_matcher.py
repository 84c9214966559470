"""ISTR Hungarian matcher: the cost terms by hand, the optimum against brute force, an image without targets."""
import itertools
import math

import pytest
import torch
from torchvision.ops import generalized_box_iou

from models.istr.matcher import HungarianMatcher, MatchTarget


def _target(labels, boxes, embeddings, size=(100.0, 80.0)):
    boxes = torch.tensor(boxes, dtype=torch.float32)
    return MatchTarget(labels=torch.tensor(labels), boxes=boxes, image_size=torch.tensor([*size, *size]),
                       masks=torch.zeros(len(labels), 4, 4), embeddings=embeddings)


def test_matching_cost_terms_by_hand():
    matcher = HungarianMatcher(cost_class=1, cost_l1=1, cost_giou=1, cost_mask=1)
    logits = torch.tensor([[0.0, 2.0]])  # p = 0.5 for class 0
    box = [[10.0, 10.0, 50.0, 30.0]]
    target = _target([0], [[20.0, 10.0, 50.0, 40.0]], torch.tensor([[1.0, 0.0]]))
    cost = matcher.cost_matrix(logits, torch.tensor(box), torch.tensor([[0.0, 2.0]]), target)
    p = 0.5
    focal = 0.25 * (1 - p) ** 2 * -math.log(p) - 0.75 * p**2 * -math.log(1 - p)
    l1 = 10 / 100 + 0 + 0 + 10 / 80
    giou = float(generalized_box_iou(torch.tensor(box), target.boxes))
    cosine = 0.0  # orthogonal embeddings
    assert float(cost) == pytest.approx(focal + l1 - giou - (cosine + 1) / 2, abs=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_hungarian_matching_is_the_brute_force_optimum(seed):
    generator = torch.Generator().manual_seed(seed)
    num_queries, num_targets, num_classes = 5, 3, 4
    logits = torch.randn(1, num_queries, num_classes, generator=generator)
    corners = torch.rand(1, num_queries, 2, generator=generator) * 50
    boxes = torch.cat([corners, corners + 5 + torch.rand(1, num_queries, 2, generator=generator) * 40], dim=2)
    embeddings = torch.randn(1, num_queries, 6, generator=generator)
    gt_corners = torch.rand(num_targets, 2, generator=generator) * 50
    gt_boxes = torch.cat([gt_corners, gt_corners + 5 + torch.rand(num_targets, 2, generator=generator) * 40], 1)
    target = _target(torch.randint(0, num_classes, (num_targets,), generator=generator).tolist(), gt_boxes.tolist(),
                     torch.randn(num_targets, 6, generator=generator))
    matcher = HungarianMatcher()
    rows, cols = matcher(logits, boxes, embeddings, [target])[0]
    cost = matcher.cost_matrix(logits[0], boxes[0], embeddings[0], target)
    best = min(sum(float(cost[q, t]) for t, q in enumerate(perm))
               for perm in itertools.permutations(range(num_queries), num_targets))
    assert len(rows) == num_targets and sorted(cols.tolist()) == list(range(num_targets))
    assert len(set(rows.tolist())) == num_targets
    assert float(cost[rows, cols].sum()) == pytest.approx(best, abs=1e-5)


def test_matching_an_image_without_targets_assigns_nothing():
    target = _target([], torch.zeros(0, 4).tolist(), torch.zeros(0, 6))
    target.boxes = torch.zeros(0, 4)
    rows, cols = HungarianMatcher()(torch.zeros(1, 4, 2), torch.rand(1, 4, 4), torch.zeros(1, 4, 6), [target])[0]
    assert rows.numel() == 0 and cols.numel() == 0

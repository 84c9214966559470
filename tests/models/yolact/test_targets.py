"""YOLACT box coding (SSD variances) and anchor matching: thresholds, forced matches, crowd regions."""
import math

import torch

from models.yolact.loss import ssd_box_coder
from models.yolact.targets import match_anchors


def test_box_encode_decode_round_trip_with_ssd_variances():
    coder = ssd_box_coder()
    generator = torch.Generator().manual_seed(0)
    anchors = torch.rand(50, 2, generator=generator) * 100
    anchors = torch.cat([anchors, anchors + 5 + torch.rand(50, 2, generator=generator) * 40], dim=1)
    boxes = torch.rand(50, 2, generator=generator) * 100
    boxes = torch.cat([boxes, boxes + 5 + torch.rand(50, 2, generator=generator) * 40], dim=1)
    torch.testing.assert_close(coder.decode_single(coder.encode_single(boxes, anchors), anchors), boxes)
    # variances 0.1 / 0.2: a centre shifted by 10 % of the anchor's width encodes as 1; a box e^0.2 wider as 1.
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    shifted = torch.tensor([[1.0, 0.0, 11.0, 20.0]])
    torch.testing.assert_close(coder.encode_single(shifted, anchor), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    wide = math.exp(0.2) * 10
    wider = torch.tensor([[5 - wide / 2, 0.0, 5 + wide / 2, 20.0]])
    torch.testing.assert_close(coder.encode_single(wider, anchor), torch.tensor([[0.0, 0.0, 1.0, 0.0]]))


def test_matching_thresholds_positive_neutral_background():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # IoU 1 -> positive (and the forced best)
            [0.0, 0.0, 10.0, 18.0],  # IoU 10/18 = 0.56 -> positive
            [0.0, 0.0, 10.0, 22.0],  # IoU 0.45 -> neutral
            [0.0, 0.0, 10.0, 30.0],  # IoU 0.33 -> background
            [50.0, 50.0, 60.0, 60.0],  # IoU 0 -> background
        ]
    )
    classes, matched = match_anchors(anchors, gt, torch.tensor([2]), torch.zeros(0, 4))
    assert classes.tolist() == [3, 3, -1, 0, 0]
    assert matched[:2].tolist() == [0, 0]


def test_every_ground_truth_is_forced_onto_its_own_anchor():
    # Box A's best anchor is anchor 0 (IoU 0.3); box B also prefers anchor 0 (IoU 0.36) and anchor 1 next.
    # Greedy: the highest IoU (B, anchor 0) pairs first; A then takes its best remaining anchor (anchor 1).
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    box_a = torch.tensor([3.0, 0.0, 33.0, 10.0])  # IoU 7/33 with anchor 0, 10/30 with anchor 1
    box_b = torch.tensor([0.0, 0.0, 10.0, 28.0])  # IoU 10/28 with anchor 0, 0 with anchor 1
    classes, matched = match_anchors(anchors, torch.stack([box_a, box_b]), torch.tensor([0, 1]), torch.zeros(0, 4))
    assert classes.tolist() == [2, 1, 0]  # both below 0.4, yet both positive
    assert matched[:2].tolist() == [1, 0]


def test_crowd_makes_covered_background_neutral_but_keeps_positives():
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # positive for the gt, inside the crowd
            [20.0, 20.0, 30.0, 30.0],  # background, fully inside the crowd -> neutral
            [35.0, 35.0, 45.0, 45.0],  # background, half inside (0.25 of its area) -> stays background
        ]
    )
    crowd = torch.tensor([[0.0, 0.0, 40.0, 40.0]])
    classes, _ = match_anchors(anchors, torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([0]), crowd)
    assert classes.tolist() == [1, -1, 0]
    # no ground truth at all: everything background except what the crowd covers
    classes, _ = match_anchors(anchors, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), crowd)
    assert classes.tolist() == [-1, -1, 0]

"""FCOS target assignment on hand-built cases: cell centres, inclusive size ranges, center sampling, ties."""
import math

import torch

from models.centermask.fcos_targets import assign_targets, centerness_targets, level_locations, size_ranges_per_level


def _assign(points, stride_list, ranges, boxes, labels, radius=1.5, num_classes=3):
    points = torch.tensor(points, dtype=torch.float32)
    strides = torch.tensor(stride_list, dtype=torch.float32)
    return assign_targets(
        points, strides, torch.tensor(ranges, dtype=torch.float32), torch.tensor(boxes, dtype=torch.float32),
        torch.tensor(labels), num_classes, radius,
    )


def test_locations_are_cell_centres_rows_first():
    (level,) = level_locations([(2, 3)], [8])
    assert level.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]


def test_size_ranges_are_inclusive_at_both_bounds():
    assert size_ranges_per_level([64, 128, 256, 512]) == [(-1, 64), (64, 128), (128, 256), (256, 512), (512, 1e8)]
    # A box whose centre location is exactly 64 px from its farthest side: max distance 64 is in [-1, 64] AND in
    # [64, 128] (centermask2's bounds; torchvision's strict bounds would reject it on P4).
    box = [[36, 36, 164, 164]]  # 128 x 128, centre (100, 100)
    labels, targets = _assign(
        [[100, 100], [100, 100], [100, 100]], [8, 16, 32], [(-1, 64), (64, 128), (128, 256)], box, [2], radius=0
    )
    assert labels.tolist() == [2, 2, 3]
    assert targets[0].tolist() == [64, 64, 64, 64]


def test_center_sampling_keeps_only_locations_near_the_centre():
    box = [[0, 0, 100, 40]]  # centre (50, 20); radius 1.5 x stride 8 = 12 px -> region x in (38, 62), y in (8, 32)
    points = [[50, 20], [61, 20], [63, 20], [50, 9], [50, 7], [90, 20]]
    labels, _ = _assign(points, [8] * 6, [(-1, 1e8)] * 6, box, [1])
    assert labels.tolist() == [1, 1, 3, 1, 3, 3]
    # Without center sampling every location strictly inside the box is positive.
    labels, _ = _assign(points, [8] * 6, [(-1, 1e8)] * 6, box, [1], radius=0)
    assert labels.tolist() == [1, 1, 1, 1, 1, 1]


def test_center_region_is_clipped_to_the_box():
    # A 10 px wide box: the 24 px centre region is cut to the box, so x = 3 (inside the box) is positive, x = -2 not.
    labels, _ = _assign([[3, 50], [-2, 50]], [8, 8], [(-1, 1e8)] * 2, [[0, 0, 10, 100]], [0], radius=1.5)
    assert labels.tolist() == [0, 3]


def test_ambiguous_locations_take_the_smallest_box():
    big, small = [0, 0, 100, 100], [40, 40, 60, 60]
    labels, targets = _assign([[50, 50], [10, 10]], [8, 8], [(-1, 1e8)] * 2, [big, small], [0, 1], radius=0)
    assert labels.tolist() == [1, 0]
    assert targets[0].tolist() == [10, 10, 10, 10] and targets[1].tolist() == [10, 10, 90, 90]


def test_no_ground_truth_means_all_background():
    labels, targets = assign_targets(
        torch.zeros(4, 2), torch.full((4,), 8.0), torch.tensor([[-1.0, 1e8]] * 4), torch.zeros(0, 4),
        torch.zeros(0, dtype=torch.int64), 5,
    )
    assert labels.tolist() == [5] * 4 and targets.shape == (4, 4)


def test_centerness_target():
    distances = torch.tensor([[10.0, 10.0, 10.0, 10.0], [10.0, 20.0, 30.0, 5.0]])
    expected = [1.0, math.sqrt(10 / 30 * 5 / 20)]
    torch.testing.assert_close(centerness_targets(distances), torch.tensor(expected))

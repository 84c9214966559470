import math

import pytest
import torch

from models.common.anchors import grid_anchors


def test_order_centres_and_sizes_follow_yolact():
    # One 2x3 level on a 60x90 input, scale 20, ratios [1, 1/2, 2]: order row, column, ratio.
    anchors = grid_anchors([(2, 3)], (60, 90), [20.0], [1.0, 0.5, 2.0])
    assert anchors.shape == (2 * 3 * 3, 4)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    widths, heights = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    # anchor 3 * (row * 3 + col) + ratio; cell (row 1, col 2) centre = ((2 + 0.5) / 3 * 90, (1 + 0.5) / 2 * 60)
    torch.testing.assert_close(centres[3 * 5 + 1], torch.tensor([75.0, 45.0]))
    torch.testing.assert_close(centres[0], torch.tensor([15.0, 15.0]))
    root = math.sqrt(0.5)
    torch.testing.assert_close(widths[:3], torch.tensor([20.0, 20 * root, 20 / root]))
    torch.testing.assert_close(heights[:3], torch.tensor([20.0, 20 / root, 20 * root]))


def test_square_quirk_makes_height_equal_width():
    anchors = grid_anchors([(1, 1)], (64, 64), [24.0], [1.0, 0.5, 2.0], square=True)
    widths, heights = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    torch.testing.assert_close(widths, heights)
    torch.testing.assert_close(widths, torch.tensor([24.0, 24 * math.sqrt(0.5), 24 * math.sqrt(2)]))


def test_official_550_count_and_level_offsets():
    sizes = [(69, 69), (35, 35), (18, 18), (9, 9), (5, 5)]
    anchors = grid_anchors(sizes, (550, 550), [24, 48, 96, 192, 384], [1, 0.5, 2])
    assert anchors.shape[0] == 19248  # the reference's count at 550 px
    first_p4 = 69 * 69 * 3
    torch.testing.assert_close(anchors[first_p4, 2] - anchors[first_p4, 0], torch.tensor(48.0))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="scales"):
        grid_anchors([(2, 2), (1, 1)], (64, 64), [8.0], [1.0])
    with pytest.raises(ValueError, match="aspect_ratios"):
        grid_anchors([(2, 2)], (64, 64), [8.0], [0.0])

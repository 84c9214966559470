"""RoIAlign over pyramid levels: the scale-adaptive (CenterMask) and FPN (Mask R-CNN) level tables, and pooling from
the assigned level with torchvision's aligned RoIAlign."""
import pytest
import torch
from torchvision.ops import roi_align

from models.common.roi_pooler import LevelRoIAlign, mask_rcnn_levels, scale_adaptive_levels


def _square(area: float) -> list[float]:
    side = area**0.5
    return [0.0, 0.0, side, side]


def test_scale_adaptive_level_table():
    image_area = 512.0 * 512.0
    # k = ceil(5 - log2(input / RoI area)): ratio < 2 -> P5, [2, 4) -> P4, >= 4 -> P3 (the finest pooled level).
    boxes = torch.tensor(
        [[0.0, 0.0, 512.0, 512.0], _square(image_area / 1.99), [0.0, 0.0, 512.0, 256.0], _square(image_area / 3.99),
         [0.0, 0.0, 256.0, 256.0], [0.0, 0.0, 256.0, 128.0], [0.0, 0.0, 16.0, 16.0]]
    )
    levels = scale_adaptive_levels(boxes, torch.full((len(boxes),), image_area), 3, 5)
    assert levels.tolist() == [5, 5, 4, 4, 3, 3, 3]
    # An RoI larger than the image still pools from the coarsest level; an empty one from the finest.
    big_and_empty = torch.tensor([[0.0, 0.0, 1000.0, 1000.0], [5.0, 5.0, 5.0, 9.0]])
    assert scale_adaptive_levels(big_and_empty, torch.full((2,), image_area), 3, 5).tolist() == [5, 3]


def test_scale_adaptive_levels_follow_the_image_not_the_box_size():
    box = torch.tensor([_square(100.0 * 100.0)])
    small_image = scale_adaptive_levels(box, torch.tensor([120.0 * 120.0]), 3, 5)
    large_image = scale_adaptive_levels(box, torch.tensor([1000.0 * 1000.0]), 3, 5)
    assert small_image.tolist() == [5] and large_image.tolist() == [3]


def test_mask_rcnn_level_table():
    sides = [56, 111, 112, 224, 447, 448, 1000]
    boxes = torch.tensor([[0.0, 0.0, s, s] for s in sides])
    assert mask_rcnn_levels(boxes, 2, 5).tolist() == [2, 2, 3, 4, 4, 5, 5]
    assert mask_rcnn_levels(boxes, 3, 5).tolist() == [3, 3, 3, 4, 4, 5, 5]


@pytest.mark.parametrize("rule", ["scale_adaptive", "mask_rcnn"])
def test_each_roi_is_pooled_from_its_level_with_aligned_roialign(rule):
    generator = torch.Generator().manual_seed(0)
    strides = [8, 16, 32]
    features = [torch.randn(2, 4, 256 // s, 256 // s, generator=generator) for s in strides]
    boxes = [torch.tensor([[10.0, 20.0, 60.0, 50.0], [0.0, 0.0, 250.0, 200.0]]), torch.tensor([[30.0, 30.0, 200.0, 140.0]])]
    image_sizes = [(256, 256), (200, 240)]
    pooler = LevelRoIAlign(strides, output_size=7, level_rule=rule)
    pooled = pooler(features, boxes, image_sizes)
    assert pooled.shape == (3, 4, 7, 7)
    levels = pooler.levels(boxes, image_sizes)
    for row, (image, box) in enumerate([(0, boxes[0][0]), (0, boxes[0][1]), (1, boxes[1][0])]):
        index = int(levels[row]) - 3
        rois = torch.cat([torch.tensor([float(image)]), box])[None]
        expected = roi_align(features[index], rois, 7, spatial_scale=1 / strides[index], sampling_ratio=0, aligned=True)
        torch.testing.assert_close(pooled[row : row + 1], expected)
    if rule == "scale_adaptive":
        assert levels.tolist() == [3, 5, 4]


def test_pooling_no_roi_and_bad_arguments():
    features = [torch.randn(1, 2, 8, 8), torch.randn(1, 2, 4, 4)]
    pooler = LevelRoIAlign([8, 16], output_size=5)
    assert pooler(features, [torch.zeros(0, 4)], [(64, 64)]).shape == (0, 2, 5, 5)
    with pytest.raises(ValueError, match="consecutive powers of two"):
        LevelRoIAlign([8, 32])
    with pytest.raises(ValueError, match="level_rule"):
        LevelRoIAlign([8, 16], level_rule="area")
    with pytest.raises(ValueError, match="box lists"):
        pooler(features, [torch.zeros(0, 4)] * 2, [(64, 64)] * 2)

"""RoIAlign over pyramid levels: the scale-adaptive (CenterMask) and FPN (Mask R-CNN, ISTR) level tables, their
official conventions at the level boundaries, and pooling from the assigned level (per level or by gather) with
torchvision's aligned RoIAlign."""
import pytest
import torch
from torchvision.ops import roi_align
from torchvision.ops.poolers import LevelMapper

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


def test_scale_adaptive_levels_at_the_boundaries_follow_centermask2():
    """centermask2's ceil(5 - log2(A_input / A_box + eps)): an area ratio of exactly 2 (or 4) is on the finer side,
    a box a hair larger on the coarser one."""
    image_area = torch.full((6,), 512.0 * 512.0)
    heights = [255.999, 256.0, 256.001]
    boxes = torch.tensor([[0.0, 0.0, 512.0, h] for h in heights] + [[0.0, 0.0, 256.0, h] for h in heights])
    assert scale_adaptive_levels(boxes, image_area, 3, 5).tolist() == [4, 4, 5, 3, 3, 4]


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


def test_mask_rcnn_levels_at_the_boundaries_follow_detectron2():
    """detectron2's `assign_boxes_to_levels` (Mask R-CNN, ISTR): floor(4 + log2(sqrt(area) / 224 + 1e-8)). A box a
    hair under 224 px stays on P3; torchvision's LevelMapper (ISTR's former pooler), with its 1e-6 added outside the
    logarithm, lifts it to P4."""
    sides = [223.999, 223.9999, 224.0, 224.0001, 447.999, 448.0, 448.001]
    boxes = torch.tensor([[10.0, 20.0, 10.0 + s, 20.0 + s] for s in sides])
    assert mask_rcnn_levels(boxes, 2, 5).tolist() == [3, 3, 4, 4, 4, 5, 5]
    assert (LevelMapper(2, 5)([boxes]) + 2).tolist() == [3, 4, 4, 4, 4, 5, 5]  # the convention not taken


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


@pytest.mark.parametrize("rule", ["scale_adaptive", "mask_rcnn"])
def test_gathering_the_levels_equals_pooling_per_level(rule):
    """The device path (every level pools every RoI, an index picks each RoI's level: no host sync) gives exactly
    the per-level path's features, in the features' dtype."""
    generator = torch.Generator().manual_seed(0)
    strides = [4, 8, 16, 32]
    features = [torch.randn(2, 3, 512 // s, 512 // s, generator=generator) for s in strides]
    corners = torch.rand(2, 30, 2, generator=generator) * 300
    boxes = list(torch.cat([corners, corners + 4 + torch.rand(2, 30, 2, generator=generator) * 400], dim=2))
    image_sizes = [(512, 512), (400, 480)]
    per_level = LevelRoIAlign(strides, 7, rule, sampling_ratio=2, gather_levels=False)(features, boxes, image_sizes)
    pooler = LevelRoIAlign(strides, 7, rule, sampling_ratio=2, gather_levels=True)
    assert len(set(pooler.levels(boxes, image_sizes).tolist())) >= 3  # the boxes span the levels
    assert torch.equal(pooler(features, boxes, image_sizes), per_level)
    half = pooler([f.bfloat16() for f in features], boxes, image_sizes)
    assert half.dtype == torch.bfloat16


@pytest.mark.parametrize("gather", [False, True])
def test_pooling_no_roi_and_bad_arguments(gather):
    features = [torch.randn(1, 2, 8, 8), torch.randn(1, 2, 4, 4)]
    pooler = LevelRoIAlign([8, 16], output_size=5, gather_levels=gather)
    assert pooler(features, [torch.zeros(0, 4)], [(64, 64)]).shape == (0, 2, 5, 5)
    with pytest.raises(ValueError, match="needs the image sizes"):
        pooler(features, [torch.zeros(1, 4)])
    with pytest.raises(ValueError, match="consecutive powers of two"):
        LevelRoIAlign([8, 32])
    with pytest.raises(ValueError, match="level_rule"):
        LevelRoIAlign([8, 16], level_rule="area")
    with pytest.raises(ValueError, match="box lists"):
        pooler(features, [torch.zeros(0, 4)] * 2, [(64, 64)] * 2)

import torch

from models.common.mask_crop import box_mask_region, crop_masks


def test_crop_keeps_the_padded_box_only():
    masks = torch.ones(2, 8, 10)
    boxes = torch.tensor([[3.0, 2.0, 6.0, 5.0], [8.5, 6.2, 1.5, 0.0]])  # the second one with swapped corners
    cropped = crop_masks(masks, boxes, padding=1.0)
    expected = torch.zeros(2, 8, 10)
    expected[0, 1:6, 2:7] = 1  # x in [2, 7), y in [1, 6)
    expected[1, 0:8, 0:10] = 1  # x in [0.5, 9.5) -> columns 1..9; y in [-1, 7.2) -> rows 0..7
    expected[1, :, 0] = 0
    assert torch.equal(cropped, expected)


def test_crop_without_padding_and_values_kept():
    masks = torch.arange(16.0).view(1, 4, 4)
    cropped = crop_masks(masks, torch.tensor([[1.0, 1.0, 3.0, 2.0]]), padding=0.0)
    expected = torch.zeros(1, 4, 4)
    expected[0, 1, 1:3] = masks[0, 1, 1:3]
    assert torch.equal(cropped, expected)


def test_region_is_bool_and_shaped():
    region = box_mask_region(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), 3, 5, padding=0.0)
    assert region.dtype == torch.bool and region.shape == (1, 3, 5) and int(region.sum()) == 4

import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image, project_masks_on_boxes

from models.common import masks as masks_module
from models.common.masks import crop_and_resize_masks, paste_masks


def _pixel_centres_in_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """bool [K,H,W]: pixel (y, x) is set when its centre (x + 0.5, y + 0.5) lies strictly inside box k."""
    cx = torch.arange(width) + 0.5
    cy = torch.arange(height) + 0.5
    inside_x = (cx[None] > boxes[:, 0:1]) & (cx[None] < boxes[:, 2:3])  # [K,W]
    inside_y = (cy[None] > boxes[:, 1:2]) & (cy[None] < boxes[:, 3:4])  # [K,H]
    return inside_y[:, :, None] & inside_x[:, None, :]


def _random_boxes(count: int, height: int, width: int, max_side: float, generator: torch.Generator) -> torch.Tensor:
    x0 = torch.rand(count, generator=generator) * (width - max_side)
    y0 = torch.rand(count, generator=generator) * (height - max_side)
    w = 1 + torch.rand(count, generator=generator) * (max_side - 1)
    h = 1 + torch.rand(count, generator=generator) * (max_side - 1)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def test_aligned_paste_of_full_box_mask_fills_exactly_the_box():
    generator = torch.Generator().manual_seed(0)
    height, width, side = 70, 90, 28
    # Up to 2 x side pixels per box side: beyond that, bilinear upsampling rounds the corners of any mask.
    boxes = _random_boxes(64, height, width, max_side=2 * side, generator=generator).round()
    pasted = paste_masks(torch.ones(64, 1, side, side), boxes, (height, width), aligned=True)
    assert pasted.dtype == torch.bool and pasted.shape == (64, height, width)
    assert torch.equal(pasted, _pixel_centres_in_boxes(boxes, height, width))


def test_aligned_paste_of_full_box_mask_with_fractional_boxes():
    # Fractional edges: every pixel whose centre is inside, by half a pixel, is set; none outside the box is. (A
    # centre a hair inside a corner falls below 0.5: bilinear weights multiply there.)
    generator = torch.Generator().manual_seed(0)
    height, width, side = 70, 90, 28
    boxes = _random_boxes(64, height, width, max_side=2 * side, generator=generator)
    pasted = paste_masks(torch.ones(64, side, side), boxes, (height, width), aligned=True)
    inner = _pixel_centres_in_boxes(boxes + torch.tensor([0.5, 0.5, -0.5, -0.5]), height, width)
    assert not (inner & ~pasted).any()
    assert not (pasted & ~_pixel_centres_in_boxes(boxes, height, width)).any()


def test_aligned_paste_puts_mask_content_in_place():
    # Left half of the box mask on: the pasted mask is the left half of the box.
    probs = torch.zeros(1, 28, 28)
    probs[:, :, :14] = 1
    pasted = paste_masks(probs, torch.tensor([[10.0, 20.0, 38.0, 48.0]]), (64, 64), aligned=True)[0]
    expected = torch.zeros(64, 64, dtype=torch.bool)
    expected[20:48, 10:24] = True
    assert torch.equal(pasted, expected)


def test_torchvision_paste_equals_torchvision_and_is_within_one_pixel_of_the_box():
    generator = torch.Generator().manual_seed(1)
    height, width = 60, 80
    boxes = _random_boxes(32, height, width, max_side=40, generator=generator).round()
    probs = torch.rand(32, 1, 28, 28, generator=generator)
    expected = paste_masks_in_image(probs, boxes, (height, width))[:, 0] > 0.5
    assert torch.equal(paste_masks(probs, boxes, (height, width)), expected)

    # torchvision's legacy paste (truncated box + 1-pixel padding) may miss or add one pixel at each box edge.
    full = paste_masks(torch.ones(32, 28, 28), boxes, (height, width))
    inner = _pixel_centres_in_boxes(boxes + torch.tensor([1.0, 1.0, -1.0, -1.0]), height, width)
    outer = _pixel_centres_in_boxes(boxes + torch.tensor([-1.0, -1.0, 1.0, 1.0]), height, width)
    assert not (inner & ~full).any(), "pasted mask misses pixels deep inside its box"
    assert not (full & ~outer).any(), "pasted mask spills more than one pixel out of its box"


@pytest.mark.parametrize("aligned", [False, True])
def test_paste_chunking_and_threshold(monkeypatch, aligned):
    generator = torch.Generator().manual_seed(2)
    boxes = _random_boxes(10, 40, 50, max_side=30, generator=generator)
    probs = torch.rand(10, 1, 14, 14, generator=generator)
    whole = paste_masks(probs, boxes, (40, 50), aligned=aligned)
    monkeypatch.setattr(masks_module, "_PASTE_CHUNK_PIXELS", 3 * 40 * 50)  # 3 masks per chunk
    assert torch.equal(paste_masks(probs, boxes, (40, 50), aligned=aligned), whole)
    # A higher threshold can only remove pixels.
    stricter = paste_masks(probs, boxes, (40, 50), threshold=0.8, aligned=aligned)
    assert not (stricter & ~whole).any() and stricter.sum() < whole.sum()


@pytest.mark.parametrize("aligned", [False, True])
def test_paste_with_no_masks(aligned):
    pasted = paste_masks(torch.zeros(0, 1, 28, 28), torch.zeros(0, 4), (30, 40), aligned=aligned)
    assert pasted.shape == (0, 30, 40) and pasted.dtype == torch.bool


def test_paste_rejects_bad_shapes():
    with pytest.raises(ValueError, match="boxes must be"):
        paste_masks(torch.zeros(2, 28, 28), torch.zeros(3, 4), (30, 40))
    with pytest.raises(ValueError, match="square"):
        paste_masks(torch.zeros(2, 28, 14), torch.zeros(2, 4), (30, 40))


def test_crop_and_resize_equals_torchvision_project_masks_on_boxes():
    generator = torch.Generator().manual_seed(3)
    gt_masks = (torch.rand(4, 48, 64, generator=generator) > 0.5).to(torch.uint8)
    boxes = _random_boxes(12, 48, 64, max_side=30, generator=generator)
    matched = torch.randint(0, 4, (12,), generator=generator)
    expected = project_masks_on_boxes(gt_masks, boxes, matched, 28)
    result = crop_and_resize_masks(gt_masks, boxes, 28, mask_indices=matched)
    assert result.shape == (12, 28, 28) and result.dtype == torch.float32
    assert torch.equal(result, expected)
    # One box per mask (mask_indices=None) is the same as indexing explicitly; bool masks as uint8.
    one_to_one = crop_and_resize_masks(gt_masks[matched].bool(), boxes, 28)
    assert torch.equal(one_to_one, expected)


def test_aligned_crop_and_resize_of_the_pasted_box_inverts_aligned_paste():
    # With aligned=True both directions use the same pixel model: cropping a box-filled mask back gives all ones.
    boxes = torch.tensor([[8.0, 4.0, 36.0, 32.0], [0.0, 0.0, 14.0, 14.0]])
    pasted = paste_masks(torch.ones(2, 14, 14), boxes, (40, 40), aligned=True)
    cropped = crop_and_resize_masks(pasted, boxes, 14, aligned=True)
    assert torch.allclose(cropped, torch.ones(2, 14, 14))


def test_crop_and_resize_with_no_boxes():
    result = crop_and_resize_masks(torch.zeros(0, 20, 30, dtype=torch.uint8), torch.zeros(0, 4), 28)
    assert result.shape == (0, 28, 28) and result.dtype == torch.float32
    result = crop_and_resize_masks(
        torch.ones(3, 20, 30, dtype=torch.uint8), torch.zeros(0, 4), 14, mask_indices=torch.zeros(0, dtype=torch.int64)
    )
    assert result.shape == (0, 14, 14)


def test_crop_and_resize_rejects_mismatched_counts():
    with pytest.raises(ValueError, match="mask_indices"):
        crop_and_resize_masks(torch.zeros(2, 20, 30), torch.zeros(3, 4), 28)


@pytest.mark.parametrize("aligned", [False, True])
def test_batched_paste_equals_the_per_mask_paste(monkeypatch, aligned):
    """The chunked grid_sample paste (the GPU path, forced here on the CPU) gives each mask what pasting it alone
    gives; for the legacy convention, what torchvision's per-mask loop gives (to float rounding, ~4e-6)."""
    monkeypatch.setattr(masks_module, "_PASTE_CHUNK_PIXELS", 7 * 97 * 131)  # several chunks
    generator = torch.Generator().manual_seed(3)
    height, width, side = 97, 131, 28
    probs = torch.rand(40, 1, side, side, generator=generator)
    boxes = _random_boxes(40, height, width, max_side=70, generator=generator) - 3  # some cross the top / left
    boxes[0] = torch.tensor([5.0, 5.0, 5.2, 40.0])  # thinner than a pixel
    boxes[1] = torch.tensor([-20.0, -15.0, 140.0, 110.0])  # beyond every image edge
    batched = paste_masks(probs, boxes, (height, width), aligned=aligned, batched=True)
    if aligned:
        alone = torch.cat([paste_masks(p[None], b[None], (height, width), aligned=True) for p, b in zip(probs, boxes)])
        assert torch.equal(batched, alone)
        return
    loop = paste_masks(probs, boxes, (height, width), aligned=False, batched=False)
    assert torch.equal(batched, loop)
    reference = paste_masks_in_image(probs, boxes, (height, width))[:, 0]
    torch.testing.assert_close(masks_module._paste_legacy(probs, boxes, height, width), reference, rtol=0, atol=1e-5)
    assert loop.any(dim=(1, 2)).all()  # every mask lands somewhere: the comparison is not of empty images

"""The mask branch's RoIs and targets: foreground RoIs, MaskIoU targets against the whole instance."""
import pytest
import torch

from models.centermask.mask_rois import foreground_rois
from models.centermask.mask_targets import mask_crops, maskiou_targets


def test_foreground_rois_append_ground_truth_and_match_at_half_iou():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]])
    proposals = torch.tensor([[0.0, 0.0, 10.0, 12.0], [0.0, 0.0, 10.0, 30.0], [22.0, 20.0, 40.0, 40.0]])
    ((boxes, matched),) = foreground_rois([proposals], [gt])
    # IoU 10/12, 10/30 (< 0.5, dropped), 0.9; then the two ground-truth boxes themselves.
    assert matched.tolist() == [0, 1, 0, 1]
    torch.testing.assert_close(boxes, torch.cat([proposals[[0, 2]], gt]))
    torch.manual_seed(0)
    ((capped, _),) = foreground_rois([proposals], [gt], batch_size_per_image=8, positive_fraction=0.25)
    assert capped.shape == (2, 4)
    ((empty, none),) = foreground_rois([proposals], [torch.zeros(0, 4)])
    assert empty.shape == (0, 4) and none.numel() == 0


def _direct_iou(predicted_cells: torch.Tensor, box: list[int], gt_mask: torch.Tensor) -> float:
    """Paste a binary M x M mask into the image (each cell a whole number of pixels) and compute IoU there."""
    x0, y0, x1, y1 = box
    scale = (x1 - x0) // predicted_cells.shape[-1]
    pasted = torch.zeros_like(gt_mask, dtype=torch.bool)
    pasted[y0:y1, x0:x1] = predicted_cells.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    gt = gt_mask.bool()
    return float((pasted & gt).sum() / (pasted | gt).sum())


@pytest.mark.parametrize("box", [[0, 0, 28, 28], [8, 4, 64, 60]])
def test_maskiou_target_equals_the_iou_with_the_whole_instance(box):
    size = 28
    gt = torch.zeros(1, 72, 72, dtype=torch.uint8)
    gt[0, 10:50, 14:70] = 1  # partly outside both boxes
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, size, size, generator=generator) + 0.5
    rois = torch.tensor([box], dtype=torch.float32)
    crops = mask_crops(gt, rois, torch.tensor([0]), size)
    target = maskiou_targets(logits, crops, gt.flatten(1).sum(1).float(), rois)
    assert float(target) == pytest.approx(_direct_iou(logits[0] > 0, box, gt[0]), abs=1e-5)


def test_maskiou_targets_need_no_polygons():
    # Any mask (an RLE-decoded ring here) works: the instance area comes from its pixels.
    gt = torch.zeros(1, 40, 40, dtype=torch.uint8)
    gt[0, 5:35, 5:35] = 1
    gt[0, 15:25, 15:25] = 0
    rois = torch.tensor([[5.0, 5.0, 33.0, 33.0]])
    crops = mask_crops(gt, rois, torch.tensor([0]), 28)
    perfect = torch.where(crops >= 0.5, 5.0, -5.0)
    target = maskiou_targets(perfect, crops, gt.flatten(1).sum(1).float(), rois)
    # The box cuts 2 px rows/columns of the instance: IoU = inside / whole = (800 - 2*2*30 + 4) / 800
    assert float(target) == pytest.approx((800 - 116) / 800, abs=1e-5)

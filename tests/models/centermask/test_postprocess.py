"""FCOS detection selection and CenterMaskPostProcess: unclipped FCOS boxes, then rescale, clip, drop empty,
paste, and the box / mask scores apart."""
import math

import torch

from models.centermask.fcos_postprocess import fcos_detections
from models.centermask.fcos_targets import level_locations
from models.centermask.postprocess import CenterMaskPostProcess


def _single_level(cls, reg, ctr):
    return [cls[None]], [reg[None]], [ctr[None]]


def test_detections_decode_threshold_and_score():
    # One 2x2 level of stride 8: locations (4,4), (12,4), (4,12), (12,12).
    cls = torch.full((2, 2, 2), -10.0)
    cls[0, 0, 0] = 2.0  # class 0 at (4, 4)
    cls[1, 1, 1] = math.log(0.04 / 0.96)  # class 1 at (12, 12): probability 0.04 < 0.05 -> dropped
    ctr = torch.zeros(1, 2, 2)  # centerness 0.5 everywhere
    reg = torch.zeros(4, 2, 2)
    reg[:, 0, 0] = torch.tensor([0.25, 0.5, 1.0, 2.0])  # in strides -> (2, 4, 8, 16) px
    (det,) = fcos_detections(*_single_level(cls, reg, ctr), level_locations([(2, 2)], [8]), [8])
    assert det["labels"].tolist() == [0]
    torch.testing.assert_close(det["boxes"], torch.tensor([[2.0, 0.0, 12.0, 20.0]]))
    torch.testing.assert_close(det["scores"], torch.sqrt(torch.sigmoid(torch.tensor([2.0])) * 0.5))


def test_detections_nms_is_class_wise_and_boxes_are_not_clipped():
    cls = torch.full((2, 1, 2), -10.0)
    cls[0, 0, 0], cls[0, 0, 1], cls[1, 0, 1] = 3.0, 2.0, 1.0  # same box twice in class 0, once in class 1
    ctr = torch.zeros(1, 1, 2)
    reg = torch.zeros(4, 1, 2)
    reg[:, 0, 0] = torch.tensor([1.0, 1.0, 3.0, 1.0])  # location (4,4): box (-4, -4, 28, 12)
    reg[:, 0, 1] = torch.tensor([2.0, 1.0, 2.0, 1.0])  # location (12,4): box (-4, -4, 28, 12)
    (det,) = fcos_detections(*_single_level(cls, reg, ctr), level_locations([(1, 2)], [8]), [8])
    assert det["labels"].tolist() == [0, 1]
    # centermask2 keeps the boxes as decoded (the 1x2 level's image is 8x16): the mask branch pools them so.
    torch.testing.assert_close(det["boxes"], torch.tensor([[-4.0, -4.0, 28.0, 12.0]] * 2))


def test_postprocess_rescales_clips_drops_empty_boxes_and_scores_masks_apart():
    post = CenterMaskPostProcess(mask_threshold=0.5)
    detections = [{
        "boxes": torch.tensor([[2.0, 2.0, 10.0, 10.0], [-6.0, 20.0, 8.0, 40.0], [33.0, 0.0, 40.0, 8.0]]),
        "scores": torch.tensor([0.9, 0.6, 0.5]), "labels": torch.tensor([2, 0, 1]),
    }]
    probs = torch.ones(3, 1, 28, 28)
    iou = torch.tensor([1.4, -0.2, 0.7])  # outside [0, 1]: used as they are, as centermask2 does
    (out,) = post(detections, probs, iou, [(32, 32)], [(64, 64)])
    # x2 to the 64x64 input, clipped; the third box starts right of the 32 px wide resized image: dropped.
    torch.testing.assert_close(out["boxes"], torch.tensor([[4.0, 4.0, 20.0, 20.0], [0.0, 40.0, 16.0, 64.0]]))
    torch.testing.assert_close(out["scores"], torch.tensor([0.9, 0.6]))
    torch.testing.assert_close(out["mask_scores"], torch.tensor([0.9 * 1.4, 0.6 * -0.2]))
    assert out["labels"].tolist() == [2, 0] and out["masks"].shape == (2, 64, 64)
    assert int(out["masks"][0].sum()) == 16 * 16 and int(out["masks"][1].sum()) == 16 * 24  # filled clipped boxes
    (plain,) = post(detections, probs, None, [(32, 32)], [(64, 64)])
    assert "mask_scores" not in plain

"""CenterMask: FCOS targets / losses / detections on hand-built cases, the RoI path, SAG-Mask, MaskIoU targets,
crowd exclusion, the centermask2 converter and the configs."""
import copy
import math
from pathlib import Path

import pytest
import torch
import yaml

from models.centermask import CenterMask
from models.centermask.convert import convert_centermask2, map_key, map_state_dict, official_settings
from models.centermask.fcos_head import FCOSHead
from models.centermask.fcos_loss import smoothed_giou_loss
from models.centermask.fcos_postprocess import fcos_detections
from models.centermask.fcos_targets import (
    assign_targets,
    centerness_targets,
    level_locations,
    size_ranges_per_level,
)
from models.centermask.loss import CenterMaskLoss
from models.centermask.mask_targets import mask_crops, maskiou_targets
from models.centermask.postprocess import CenterMaskPostProcess
from models.centermask.mask_rois import foreground_rois
from models.centermask.maskiou_head import MaskIoUHead
from models.centermask.sag_mask_head import SAGMaskHead
from models.common.masks import paste_masks
from tests.models.test_contract import NUM_CLASSES, TINY_CONFIGS, frozen_tiny_model, seeded_losses, tiny_batch

CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "configs"
# Frozen BatchNorm: nothing in the network depends on train/eval mode, so both modes must agree exactly.
FROZEN = {**TINY_CONFIGS["centermask"], "norm": "frozen_bn"}


@pytest.fixture(scope="module")
def frozen_model():
    return frozen_tiny_model("centermask")


# ------------------------------------------------------------------------------------------ FCOS targets


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


# -------------------------------------------------------------------------------------------- FCOS loss


def test_fcos_loss_terms_normalisation_and_centerness_weighting():
    criterion = CenterMaskLoss(num_classes=2, strides=[8])
    labels = torch.tensor([0, 1, 2, 2])  # two positives, two background
    positive = torch.tensor([0, 1])
    targets = torch.tensor([[10.0, 10.0, 10.0, 10.0], [10.0, 20.0, 30.0, 5.0]])
    predictions = torch.tensor([[8.0, 10.0, 12.0, 10.0], [10.0, 20.0, 30.0, 5.0]])
    logits = torch.tensor([[2.0, -3.0], [-1.0, 0.5], [-4.0, -4.0], [0.0, 1.0]])
    ctr_logits = torch.tensor([0.3, -0.2])

    from torchvision.ops import sigmoid_focal_loss

    one_hot = torch.tensor([[1.0, 0], [0, 1.0], [0, 0], [0, 0]])
    torch.testing.assert_close(criterion.loss_fcos_cls(logits, labels, positive, 2.0),
                               sigmoid_focal_loss(logits, one_hot, reduction="sum") / 2)
    weights = centerness_targets(targets)
    # The second prediction is perfect: the loss is the first's GIoU loss times its weight share. By hand, in
    # centermask2's smoothed form: areas 20x20 = 400 each, intersection 18x20 = 360, union 440, enclosing 22x20 =
    # 440, so IoU = (360 + 1) / (440 + 1), GIoU = IoU - 0 and the loss 1 - 361/441 = 80/441 (torchvision's
    # unsmoothed GIoU loss would be 80/440).
    torch.testing.assert_close(criterion.loss_fcos_box(predictions, targets, weights, float(weights.sum())),
                               weights[0] * (80 / 441) / weights.sum())
    bce = torch.nn.functional.binary_cross_entropy_with_logits(ctr_logits, weights, reduction="sum") / 2
    torch.testing.assert_close(criterion.loss_fcos_ctr(ctr_logits, weights, 2.0), bce)


def test_smoothed_giou_differs_from_torchvisions_giou_by_the_plus_one_only():
    from torchvision.ops import generalized_box_iou_loss

    predicted = torch.tensor([[1.0, 2.0, 3.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    targets = torch.tensor([[2.0, 1.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    as_box = lambda d: torch.stack([-d[:, 0], -d[:, 1], d[:, 2], d[:, 3]], 1)  # noqa: E731
    # Both are 1 - IoU + (C - U) / C; only the IoU term differs: smoothed - plain = I / U - (I + 1) / (U + 1).
    # First pair: 4x3 and 4x3 boxes, intersection (1 + 2) x (1 + 1) = 6, union 12 + 12 - 6 = 18; second: 1x1 inside
    # 2x2, intersection 1, union 4.
    plain = generalized_box_iou_loss(as_box(predicted), as_box(targets), reduction="none")
    smoothed = smoothed_giou_loss(predicted, targets)
    inter, union = torch.tensor([6.0, 1.0]), torch.tensor([18.0, 4.0])
    torch.testing.assert_close(smoothed - plain, inter / union - (inter + 1) / (union + 1))


def test_fcos_losses_without_positives_are_finite_and_connected():
    criterion = CenterMaskLoss(num_classes=2, strides=[8])
    logits = torch.zeros(1, 2, 1, 3, requires_grad=True)
    regression = torch.ones(1, 4, 1, 3, requires_grad=True)
    ctr = torch.zeros(1, 1, 1, 3, requires_grad=True)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = criterion.fcos(([logits], [regression], [ctr]), level_locations([(1, 3)], [8]), [empty])
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_box", "loss_fcos_ctr"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert regression.grad is not None and ctr.grad is not None


# -------------------------------------------------------------------------------------- FCOS detections


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


def test_fcos_head_shapes_and_scales():
    head = FCOSHead(32, 5, num_levels=2, num_convs=2)
    features = [torch.randn(2, 32, 8, 8), torch.randn(2, 32, 4, 4)]
    cls, reg, ctr = head(features)
    assert [c.shape for c in cls] == [(2, 5, 8, 8), (2, 5, 4, 4)]
    assert reg[0].shape == (2, 4, 8, 8) and ctr[1].shape == (2, 1, 4, 4) and float(reg[0].detach().min()) >= 0
    torch.testing.assert_close(torch.sigmoid(cls[0]).mean(), torch.tensor(0.01), atol=2e-3, rtol=0)
    with torch.no_grad():
        head.scales[1].scale.fill_(2.0)
    _, reg2, _ = head(features)
    torch.testing.assert_close(reg2[1], reg[1] * 2)
    torch.testing.assert_close(reg2[0], reg[0])


def test_fcos_head_names_a_one_by_one_level_it_cannot_normalise():
    head = FCOSHead(32, 5, num_levels=2, num_convs=1, norm_groups=32)  # one channel per GroupNorm group
    features = [torch.randn(1, 32, 2, 2), torch.randn(1, 32, 1, 1)]
    for mode in (True, False):  # torch's GroupNorm refuses in inference too
        with pytest.raises(ValueError, match="level 1 is 1x1"):
            head.train(mode)(features)
    head([torch.cat([f, f]) for f in features])  # a batch of two gives each group two values: fine
    FCOSHead(32, 5, num_levels=2, num_convs=1, norm_groups=8)(features)  # four values per group: fine


# ------------------------------------------------------------------------------------ the mask branch RoIs


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


# ------------------------------------------------------------------------------------------------ SAG-Mask


def test_sag_mask_head_shapes_and_attention_range():
    head = SAGMaskHead(16, num_classes=4, num_convs=2, channels=8)
    x = torch.randn(3, 16, 14, 14)
    assert head(x).shape == (3, 4, 28, 28)
    weights = head.attention.weights(head.convs(x))
    assert weights.shape == (3, 1, 14, 14) and float(weights.min()) > 0 and float(weights.max()) < 1
    assert head(torch.zeros(0, 16, 14, 14)).shape == (0, 4, 28, 28)


def test_turning_attention_off_changes_nothing_else():
    torch.manual_seed(0)
    with_attention = SAGMaskHead(16, num_classes=4, num_convs=2, channels=8, attention=True)
    without = SAGMaskHead(16, num_classes=4, num_convs=2, channels=8, attention=False)
    on_keys, off_keys = set(with_attention.state_dict()), set(without.state_dict())
    assert on_keys - off_keys == {"attention.conv.weight"} and off_keys <= on_keys
    without.load_state_dict({k: v for k, v in with_attention.state_dict().items() if k in off_keys})
    x = torch.randn(2, 16, 14, 14)
    with_attention.attention = torch.nn.Identity()  # attention removed: the rest must compute the same thing
    torch.testing.assert_close(without(x), with_attention(x))


# -------------------------------------------------------------------------------------------------- MaskIoU


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


def test_maskiou_loss_counts_positive_targets_only():
    criterion = CenterMaskLoss(num_classes=2, strides=[8], maskiou_loss_weight=2.0)
    predicted = torch.tensor([[0.2, 0.9], [0.5, 0.1], [0.3, 0.3]])
    loss = criterion.loss_maskiou(predicted, torch.tensor([1, 0, 1]), torch.tensor([0.7, 0.5, 0.0]))
    assert float(loss) == pytest.approx(2.0 * 0.5 * ((0.9 - 0.7) ** 2 + (0.5 - 0.5) ** 2) / 2)
    assert float(criterion.loss_maskiou(predicted, torch.tensor([0, 0, 0]), torch.zeros(3))) == 0.0


def test_maskiou_head_shapes():
    head = MaskIoUHead(16, num_classes=3, num_convs=2, channels=8, resolution=14, fc_dim=32)
    out = head(torch.randn(5, 16, 14, 14), torch.rand(5, 1, 28, 28))
    assert out.shape == (5, 3)
    assert head(torch.zeros(0, 16, 14, 14), torch.zeros(0, 1, 28, 28)).shape == (0, 3)


# ------------------------------------------------------------------------------------------------- the model


def test_crowd_regions_are_excluded_from_training(frozen_model):
    images, targets = tiny_batch()  # instance 2 of image 1 is a crowd region
    first = {k: (v[[0, 1]] if torch.is_tensor(v) and v.shape[:1] == (3,) else v) for k, v in targets[0].items()}
    with_crowd = seeded_losses(frozen_model, images, targets)
    crowd_removed = seeded_losses(frozen_model, images, [first, targets[1]])
    torch.testing.assert_close(with_crowd, crowd_removed, rtol=0, atol=0)
    as_instance = [dict(targets[0], iscrowd=torch.zeros(3, dtype=torch.int64))] + targets[1:]
    assert seeded_losses(frozen_model, images, as_instance)["loss_fcos_cls"] != with_crowd["loss_fcos_cls"]


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


def _with_detections(model, boxes, scores, labels):
    """`model` whose FCOS stage returns these detections (resized frame) for the first image, none for others."""

    def detections(head, locations, strides, training=False):
        first = {"boxes": torch.tensor(boxes), "scores": torch.tensor(scores), "labels": torch.tensor(labels)}
        empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
        return [first] + [empty] * (head[0][0].shape[0] - 1)

    model.postprocess.detections = detections
    return model


def test_box_and_mask_scores_unclipped_mask_branch_and_clipped_output(frozen_model):
    """centermask2's inference on crafted FCOS detections in a 64x64 input (resized frame = input frame): box
    scores in `scores`, box score x predicted IoU (not clamped) in `mask_scores`, the mask branch on the unclipped
    boxes, the output clipped and the box left empty by clipping dropped."""
    model = copy.deepcopy(frozen_model).eval()
    with torch.no_grad():  # predicted IoUs of about 1.7 and -0.3: a clamp would change both
        model.maskiou_head.predictor.bias.copy_(torch.tensor([1.7, -0.3, 0.5]))
    boxes = [[8.0, 8.0, 40.0, 40.0], [-20.0, 30.0, 30.0, 90.0], [70.0, 10.0, 90.0, 30.0]]  # in, crossing, outside
    scores, labels = [0.9, 0.6, 0.5], [0, 1, 0]
    _with_detections(model, boxes, scores, labels)
    # Two images: GroupNorm on the 1x1 top level needs more than one value per group.
    images = list(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        prediction, other = model(images)
        batch, _ = model.transform(images)
        assert batch.image_sizes == [(64, 64)] * 2 and len(other["boxes"]) == 0
        levels, _ = model._network(batch)
        unclipped = torch.tensor(boxes[:2])
        pooled = model.roi_pool(levels[:3], [unclipped, torch.zeros(0, 4)], batch.image_sizes)
        index = torch.arange(2)
        probs = model.mask_head(pooled)[index, torch.tensor(labels[:2])][:, None].sigmoid()
        iou = model.maskiou_head(pooled, probs)[index, torch.tensor(labels[:2])]
    assert iou[0] > 1 and iou[1] < 0
    torch.testing.assert_close(prediction["boxes"], torch.tensor([[8.0, 8.0, 40.0, 40.0], [0.0, 30.0, 30.0, 64.0]]))
    torch.testing.assert_close(prediction["scores"], torch.tensor(scores[:2]))
    torch.testing.assert_close(prediction["mask_scores"], torch.tensor(scores[:2]) * iou)
    assert prediction["labels"].tolist() == labels[:2]
    # The mask predicted for the unclipped box is pasted into the clipped one (detectron2's paste).
    expected = paste_masks(probs, prediction["boxes"], (64, 64), FROZEN.get("mask_threshold", 0.5), aligned=True)
    assert torch.equal(prediction["masks"], expected)


def test_without_maskiou_there_is_one_score(frozen_model):
    images, _ = tiny_batch()
    plain = CenterMask(num_classes=NUM_CLASSES, **{**FROZEN, "maskiou": False})
    plain.load_state_dict({k: v for k, v in frozen_model.state_dict().items() if not k.startswith("maskiou_head.")})
    with torch.no_grad():
        scored = frozen_model.eval()(images)[0]
        box_scored = plain.eval()(images)[0]
    assert len(scored["scores"]) > 0 and "mask_scores" in scored and "mask_scores" not in box_scored
    torch.testing.assert_close(box_scored["scores"], scored["scores"])
    assert not torch.equal(scored["mask_scores"], scored["scores"])


def test_ablation_switches_build_and_train():
    images, targets = tiny_batch()
    torch.manual_seed(0)
    model = CenterMask(
        num_classes=NUM_CLASSES, **{**TINY_CONFIGS["centermask"], "sag_attention": False, "maskiou": False,
                                    "roi_level_rule": "mask_rcnn"},
    )
    assert model.mask_head.attention is None and model.maskiou_head is None
    assert model.roi_pool.level_rule == "mask_rcnn"
    losses = model.compute_losses(images, targets)
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_box", "loss_fcos_ctr", "loss_mask"}


def test_bgr_input_format_flips_the_channels():
    torch.manual_seed(0)
    rgb = CenterMask(num_classes=NUM_CLASSES, **FROZEN).eval()
    bgr = CenterMask(num_classes=NUM_CLASSES, **{**FROZEN, "input_format": "BGR"}).eval()
    bgr.load_state_dict(rgb.state_dict())
    images, _ = tiny_batch()
    with torch.no_grad():
        a = rgb([image.flip(0) for image in images])
        b = bgr(images)
    for x, y in zip(a, b):
        torch.testing.assert_close(x["scores"], y["scores"])


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(out_indices=[1, 2, 3, 4]), "three entries"),
        (dict(input_format="YUV"), "input_format"),
        (dict(roi_level_rule="nearest"), "roi_level_rule"),
        (dict(sizes_of_interest=[64, 128]), "sizes_of_interest"),
        (dict(ese_every_block=True), "VoVNet"),
        (dict(focal_gamma=0.5), "focal_gamma"),
    ],
)
def test_bad_arguments_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        CenterMask(num_classes=NUM_CLASSES, **{**TINY_CONFIGS["centermask"], **bad})


def test_label_out_of_range_names_the_image(frozen_model):
    images, targets = tiny_batch()
    targets[1] = dict(targets[1], labels=torch.tensor([NUM_CLASSES]))
    with pytest.raises(ValueError, match="image 2"):
        frozen_model.compute_losses(images, targets)


def test_v19_lite_is_the_official_vovnet_and_timm_has_no_registered_one():
    model = CenterMask(num_classes=2, backbone="ese_vovnet19b", ese_every_block=True, fpn_channels=32,
                       fcos_num_convs=1, mask_head_convs=1, mask_head_channels=16, maskiou_convs=1,
                       maskiou_channels=16, min_size=64, max_size=64)
    assert model.backbone.channels == [512, 768, 1024] and model.backbone.strides == [8, 16, 32]
    with pytest.raises(ValueError, match="ese_every_block: true"):
        CenterMask(num_classes=2, backbone="ese_vovnet19b", ese_every_block=False)


# ------------------------------------------------------------------------------------------------ converter


def _conv_norm(state, prefix, cin, cout, k):
    state[f"{prefix}/conv.weight"] = (cout, cin, k, k)
    for name in ("weight", "bias", "running_mean", "running_var"):
        state[f"{prefix}/norm.{name}"] = (cout,)


def lite_v39_shapes(num_classes=80) -> dict[str, tuple]:
    """centermask2's CenterMask-Lite V-39 checkpoint, key -> shape, written from the documented key pattern and
    VoVNetV2-39 structure (stem 64/64/128, stage widths 128-224, outputs 256-1024, blocks 1/1/2/2 of 5 layers,
    eSE in every block; 128-channel FPN, 2-conv towers and heads) — independently of the model code."""
    state, bottom_up = {}, "backbone.bottom_up."
    for j, (cin, cout) in enumerate([(3, 64), (64, 64), (64, 128)], start=1):
        _conv_norm(state, f"{bottom_up}stem.stem_{j}", cin, cout, 3)
    cin = 128
    for stage, (width, out, blocks) in enumerate(zip([128, 160, 192, 224], [256, 512, 768, 1024], [1, 1, 2, 2]), 2):
        for block in range(1, blocks + 1):
            name = f"{bottom_up}stage{stage}.OSA{stage}_{block}"
            layer_in = cin
            for i in range(5):
                _conv_norm(state, f"{name}.layers.{i}.OSA{stage}_{block}_{i}", layer_in, width, 3)
                layer_in = width
            _conv_norm(state, f"{name}.concat.OSA{stage}_{block}_concat", cin + 5 * width, out, 1)
            state[f"{name}.ese.fc.weight"], state[f"{name}.ese.fc.bias"] = (out, out, 1, 1), (out,)
            cin = out
    f = 128
    for level, channels in zip((3, 4, 5), (512, 768, 1024)):
        state[f"backbone.fpn_lateral{level}.weight"], state[f"backbone.fpn_lateral{level}.bias"] = (f, channels, 1, 1), (f,)
        state[f"backbone.fpn_output{level}.weight"], state[f"backbone.fpn_output{level}.bias"] = (f, f, 3, 3), (f,)
    for extra in ("p6", "p7"):
        state[f"backbone.top_block.{extra}.weight"], state[f"backbone.top_block.{extra}.bias"] = (f, f, 3, 3), (f,)
    head = "proposal_generator.fcos_head."
    for tower in ("cls_tower", "bbox_tower"):
        for conv in (0, 3):  # conv, GroupNorm, ReLU per layer
            state[f"{head}{tower}.{conv}.weight"], state[f"{head}{tower}.{conv}.bias"] = (f, f, 3, 3), (f,)
            state[f"{head}{tower}.{conv + 1}.weight"], state[f"{head}{tower}.{conv + 1}.bias"] = (f,), (f,)
    for name, out in (("cls_logits", num_classes), ("bbox_pred", 4), ("ctrness", 1)):
        state[f"{head}{name}.weight"], state[f"{head}{name}.bias"] = (out, f, 3, 3), (out,)
    for level in range(5):
        state[f"{head}scales.{level}.scale"] = (1,)
    mask = "roi_heads.mask_head."
    for k in (1, 2):
        state[f"{mask}mask_fcn{k}.weight"], state[f"{mask}mask_fcn{k}.bias"] = (128, f, 3, 3), (128,)
    state[f"{mask}spatialAtt.conv.weight"] = (1, 2, 3, 3)
    state[f"{mask}deconv.weight"], state[f"{mask}deconv.bias"] = (128, 128, 2, 2), (128,)
    state[f"{mask}predictor.weight"], state[f"{mask}predictor.bias"] = (num_classes, 128, 1, 1), (num_classes,)
    iou = "roi_heads.maskiou_head."
    state[f"{iou}maskiou_fcn1.weight"], state[f"{iou}maskiou_fcn1.bias"] = (128, f + 1, 3, 3), (128,)
    state[f"{iou}maskiou_fcn2.weight"], state[f"{iou}maskiou_fcn2.bias"] = (128, 128, 3, 3), (128,)
    state[f"{iou}maskiou_fc1.weight"], state[f"{iou}maskiou_fc1.bias"] = (1024, 128 * 7 * 7), (1024,)
    state[f"{iou}maskiou_fc2.weight"], state[f"{iou}maskiou_fc2.bias"] = (1024, 1024), (1024,)
    state[f"{iou}maskiou.weight"], state[f"{iou}maskiou.bias"] = (num_classes, 1024), (num_classes,)
    return state


@pytest.fixture(scope="module")
def official_lite_v39(tmp_path_factory):
    """The generated checkpoint, each tensor filled with its own key's index (so every landing place is known)."""
    shapes = lite_v39_shapes()
    state = {key: torch.full(shape, float(i)) for i, (key, shape) in enumerate(shapes.items())}
    path = tmp_path_factory.mktemp("centermask2") / "centermask2-lite-V-39-eSE-FPN-ms-4x.pth"
    torch.save({"model": state, "iteration": 360000}, path)
    return path, state


def test_converter_consumes_every_key_with_the_right_shapes(official_lite_v39, tmp_path):
    path, state = official_lite_v39
    out = convert_centermask2(str(path), str(tmp_path / "lite_v39.ckpt"))
    model = CenterMask.load_from_checkpoint(out, map_location="cpu")
    hp = model.hparams
    assert (hp.backbone, hp.ese_every_block, hp.num_classes, hp.fpn_channels) == ("ese_vovnet39b", True, 80, 128)
    assert (hp.fcos_num_convs, hp.mask_head_convs, hp.maskiou_convs, hp.min_size, hp.max_size) == (2, 2, 2, 600, 1000)
    assert hp.input_format == "BGR" and hp.post_nms_top_n_test == 50 and hp.norm == "frozen_bn"
    converted = model.state_dict()
    landed = {map_key(key): key for key in state}
    assert None not in landed
    # Every official tensor sits, unchanged, where the map puts it; every weight of the model came from the file.
    for new_key, old_key in landed.items():
        assert torch.equal(converted[new_key], state[old_key]), old_key
    assert {k for k in converted if not k.endswith("num_batches_tracked")} == set(landed)
    examples = {
        "backbone.bottom_up.stage4.OSA4_2.ese.fc.weight": "backbone.body.stages.2.blocks.1.attn.fc.weight",
        "backbone.bottom_up.stage5.OSA5_1.layers.4.OSA5_1_4/norm.running_var":
            "backbone.body.stages.3.blocks.0.conv_mid.4.bn.running_var",
        "backbone.bottom_up.stem.stem_3/conv.weight": "backbone.body.stem.2.conv.weight",
        "backbone.fpn_lateral4.weight": "neck.fpn.inner_blocks.1.0.weight",
        "backbone.top_block.p7.bias": "neck.fpn.extra_blocks.p7.bias",
        "proposal_generator.fcos_head.bbox_tower.4.weight": "fcos_head.bbox_tower.4.weight",
        "roi_heads.mask_head.mask_fcn2.weight": "mask_head.convs.2.weight",
        "roi_heads.mask_head.spatialAtt.conv.weight": "mask_head.attention.conv.weight",
        "roi_heads.maskiou_head.maskiou.bias": "maskiou_head.predictor.bias",
    }
    for old, new in examples.items():
        assert map_key(old) == new


def test_converter_refuses_what_does_not_fit(official_lite_v39):
    path, state = official_lite_v39
    expected = CenterMask(**official_settings(state, str(path))).state_dict()
    missing = {k: v for k, v in state.items() if k != "roi_heads.mask_head.deconv.bias"}
    with pytest.raises(ValueError, match=r"missing \['mask_head.deconv.bias'\]"):
        map_state_dict(missing, expected, "missing.pth")
    extra = {**state, "roi_heads.box_head.fc1.weight": torch.zeros(2, 2)}
    with pytest.raises(ValueError, match=r"unused \['roi_heads.box_head.fc1.weight'\]"):
        map_state_dict(extra, expected, "extra.pth")
    wrong = {**state, "proposal_generator.fcos_head.ctrness.weight": torch.zeros(2, 128, 3, 3)}
    with pytest.raises(ValueError, match=r"wrong shape \['fcos_head.ctrness.weight"):
        map_state_dict(wrong, expected, "wrong.pth")
    resnet = {"backbone.bottom_up.res2.0.conv1.weight": torch.zeros(1), **state}
    with pytest.raises(ValueError, match="ResNet"):
        official_settings(resnet, "resnet.pth")


def test_convert_verb_through_the_cli(official_lite_v39, tmp_path):
    from experiments.cli import main

    path, _ = official_lite_v39
    out = tmp_path / "cli.ckpt"
    assert main(["convert", "centermask2", str(path), str(out)]) == 0
    assert out.is_file()


# -------------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "config",
    [
        "models/centermask/v39_3x.yaml",
        "models/centermask/v57_3x.yaml",
        "models/centermask/v99_3x.yaml",
        "models/centermask/r50_3x.yaml",
        "models/centermask_lite/v19.yaml",
        "models/centermask_lite/v39.yaml",
        "quickstart/centermask.yaml",
    ],
)
def test_configs_name_real_arguments(config):
    section = yaml.safe_load((CONFIGS / config).read_text())["model"]
    assert section["class_path"] == "models.centermask.CenterMask"
    args = {**section["init_args"], "pretrained": False, "pretrained_path": None}
    model = CenterMask(num_classes=3, **args)
    assert model.hparams.min_size == args["min_size"]
    assert len(model.neck.strides) == 5 and model.backbone.strides == [8, 16, 32]

"""CenterMaskLoss term by term on hand-worked numbers: focal, smoothed GIoU, centerness, MaskIoU."""
import pytest
import torch

from models.centermask.fcos_loss import smoothed_giou_loss
from models.centermask.fcos_targets import centerness_targets, level_locations
from models.centermask.loss import CenterMaskLoss


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


def test_maskiou_loss_counts_positive_targets_only():
    criterion = CenterMaskLoss(num_classes=2, strides=[8], maskiou_loss_weight=2.0)
    predicted = torch.tensor([[0.2, 0.9], [0.5, 0.1], [0.3, 0.3]])
    loss = criterion.loss_maskiou(predicted, torch.tensor([1, 0, 1]), torch.tensor([0.7, 0.5, 0.0]))
    assert float(loss) == pytest.approx(2.0 * 0.5 * ((0.9 - 0.7) ** 2 + (0.5 - 0.5) ** 2) / 2)
    assert float(criterion.loss_maskiou(predicted, torch.tensor([0, 0, 0]), torch.zeros(3))) == 0.0

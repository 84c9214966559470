"""YOLACT losses: by hand on two anchors, OHEM, crowd instances, the masks-to-train cap."""
import math

import torch
import torch.nn.functional as F

from models.yolact.loss import YolactLoss, YolactOutputs, YolactTarget
from models.yolact.targets import match_anchors
from tests.models.yolact.common import tiny_model


def test_losses_by_hand_on_two_anchors():
    # Anchor 0 equals the ground truth (positive), anchor 1 is far (background, the only hard negative).
    # Zero logits / deltas / prototypes make every term a closed form.
    num_classes, proto, k = 3, 8, 2
    anchors = torch.tensor([[8.0, 8.0, 24.0, 24.0], [40.0, 40.0, 60.0, 60.0]])
    outputs = YolactOutputs(
        box_deltas=torch.zeros(1, 2, 4),
        class_logits=torch.zeros(1, 2, num_classes + 1),
        coefficients=torch.zeros(1, 2, k),
        prototypes=torch.zeros(1, k, proto, proto),
        semantic_logits=torch.zeros(1, num_classes, 4, 4),
        anchors=anchors,
        input_size=(64, 64),
    )
    mask = torch.zeros(1, 32, 32, dtype=torch.uint8)
    mask[0, 4:12, 4:12] = 1
    target = YolactTarget(boxes=anchors[:1].clone(), labels=torch.tensor([1]), masks=mask, crowd_boxes=torch.zeros(0, 4))
    losses = YolactLoss()(outputs, [target])
    # 1 positive + 1 negative, uniform softmax over C+1 classes
    torch.testing.assert_close(losses["loss_cls"], torch.tensor(2 * math.log(num_classes + 1)))
    torch.testing.assert_close(losses["loss_box"], torch.tensor(0.0))
    # box [8, 24] px = prototype cells [1, 3) (+1 padding -> [0, 4)): 16 cells of BCE log 2, / area 2 * 2, x 6.125
    torch.testing.assert_close(losses["loss_mask"], torch.tensor(16 * math.log(2) / 4 * 6.125))
    # every semantic pixel of every class: log 2, summed then / (H3 * W3) / batch
    torch.testing.assert_close(losses["loss_semantic"], torch.tensor(num_classes * math.log(2)))


def test_box_loss_sums_the_positives_terms_and_their_gradients_only():
    """loss_box over every anchor with the positives kept by `where` (no host sync) equals the per-image sum over the
    positives' smooth L1 terms, in value and gradient; an image without boxes adds nothing."""
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(40, 2, generator=generator) * 48
    anchors = torch.cat([corners, corners + 4 + torch.rand(40, 2, generator=generator) * 12], 1)
    gt = torch.tensor([[4.0, 4.0, 20.0, 24.0], [30.0, 10.0, 60.0, 40.0], [10.0, 35.0, 28.0, 60.0]])
    no_boxes = YolactTarget(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64),
                            masks=torch.zeros(0, 8, 8), crowd_boxes=torch.zeros(0, 4))
    targets = [YolactTarget(boxes=gt, labels=torch.tensor([0, 2, 1]), masks=torch.zeros(3, 8, 8),
                            crowd_boxes=torch.zeros(0, 4)), no_boxes]
    matches = [match_anchors(anchors, t.boxes, t.labels, t.crowd_boxes) for t in targets]
    classes = torch.stack([c for c, _ in matches])
    assert (classes[0] > 0).sum() >= 3 and not (classes[1] > 0).any()
    deltas = torch.randn(2, 40, 4, generator=generator, requires_grad=True)
    outputs = YolactOutputs(box_deltas=deltas, class_logits=torch.zeros(2, 40, 4), coefficients=torch.zeros(2, 40, 2),
                            prototypes=torch.zeros(2, 2, 8, 8), semantic_logits=None, anchors=anchors,
                            input_size=(64, 64))
    loss = YolactLoss()
    box_loss = loss.loss_box(outputs, classes, [g for _, g in matches], targets)
    (gradient,) = torch.autograd.grad(box_loss, deltas)
    positive = classes[0] > 0
    encoded = loss.box_coder.encode_single(gt[matches[0][1][positive]], anchors[positive])
    expected = F.smooth_l1_loss(deltas[0, positive], encoded, reduction="sum", beta=1.0) * loss.box_weight
    (expected_gradient,) = torch.autograd.grad(expected, deltas)
    torch.testing.assert_close(box_loss, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(gradient, expected_gradient, rtol=0, atol=0)


def test_ohem_takes_three_negatives_per_positive_hardest_first():
    loss = YolactLoss()
    classes = torch.tensor([[2, 0, 0, 0, 0, 0, -1]])
    logits = torch.zeros(1, 7, 3)
    logits[0, 1:6, 1] = torch.tensor([5.0, 1.0, 4.0, 3.0, 0.5])  # hardness order: anchors 1, 3, 4, 2, 5
    logits[0, 6, 1] = 9.0  # neutral: never a negative, however hard
    expected = sum(F.cross_entropy(logits[0, i], torch.tensor(c)) for i, c in ((0, 2), (1, 0), (3, 0), (4, 0)))
    torch.testing.assert_close(loss.loss_cls(logits, classes), expected)


def test_class_loss_is_the_selected_anchors_cross_entropy_in_value_and_gradient():
    """Every anchor's cross-entropy with the OHEM selection kept by `where` (no host sync) equals F.cross_entropy of
    the selected anchors alone; unselected and neutral anchors get no gradient."""
    generator = torch.Generator().manual_seed(0)
    classes = torch.randint(-1, 4, (2, 50), generator=generator)
    classes[1] = torch.where(classes[1] > 0, 0, classes[1])  # an image without positives: no negatives either
    logits = (torch.randn(2, 50, 4, generator=generator) * 3).requires_grad_()
    loss = YolactLoss().loss_cls(logits, classes)
    (gradient,) = torch.autograd.grad(loss, logits)
    with torch.no_grad():
        hardness = torch.logsumexp(logits, 2) - logits[..., 0]
        hardness[(classes > 0) | (classes == -1)] = 0
        rank = hardness.argsort(1, descending=True).argsort(1)
        negative = (rank < (classes > 0).sum(1, keepdim=True) * 3) & (classes == 0)
    selected = (classes > 0) | negative
    expected = F.cross_entropy(logits[selected], classes[selected], reduction="sum")
    (expected_gradient,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-5, atol=1e-6)  # float32 rounding
    assert selected[0].sum() > (classes[0] > 0).sum() and not selected[1].any()


def test_crowd_instances_are_not_training_targets():
    model = tiny_model()
    image = torch.rand(3, 64, 64)
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 4:30, 4:30] = 1
    masks[1] = 1
    target = {
        "boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0], [0.0, 0.0, 64.0, 64.0]]),
        "labels": torch.tensor([0, 2]),
        "masks": masks,
        "iscrowd": torch.tensor([0, 1]),
        "image_id": 1,
        "orig_size": (64, 64),
    }
    converted = model.training_targets([image], [target])[0]
    assert converted.labels.tolist() == [0] and converted.masks.shape[0] == 1
    torch.testing.assert_close(converted.crowd_boxes, torch.tensor([[0.0, 0.0, 64.0, 64.0]]))
    # the crowd (class 2) never enters the semantic target: its logits' loss equals that of an all-zero target
    model.eval()
    with torch.no_grad():
        outputs = model.network(model.preprocess([image]), semantic=True)
        semantic = model.criterion.loss_semantic(outputs.semantic_logits, [converted])
        zero_target = F.binary_cross_entropy_with_logits(
            outputs.semantic_logits[0, 2], torch.zeros(8, 8), reduction="sum"
        )
        masked = outputs.semantic_logits.clone()
        masked[0, 2] = -1e4  # class 2's term vanishes; the difference is class 2's contribution
        without_class_2 = model.criterion.loss_semantic(masked, [converted])
    torch.testing.assert_close(semantic - without_class_2, zero_target / 64, rtol=1e-4, atol=1e-5)


def test_masks_to_train_caps_and_rescales():
    torch.manual_seed(0)
    model = tiny_model()
    images = [torch.rand(3, 64, 64)]
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 8:56, 8:56] = 1
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 56.0, 56.0]]), "labels": torch.tensor([1]), "masks": masks,
                "iscrowd": torch.tensor([0]), "image_id": 1, "orig_size": (64, 64)}]
    model.eval()
    with torch.no_grad():
        outputs = model.network(model.preprocess(images), semantic=False)
        converted = model.training_targets(images, targets)
        classes, matched = match_anchors(outputs.anchors, converted[0].boxes, converted[0].labels, converted[0].crowd_boxes)
        assert int((classes > 0).sum()) >= 2
        full = model.criterion.loss_mask(outputs, classes[None], [matched], converted)
        model.criterion.masks_to_train = 1
        capped = model.criterion.loss_mask(outputs, classes[None], [matched], converted)
    # one sampled instance's loss times the number of positives: same order as the full sum, not 1/P of it
    num_positive = int((classes > 0).sum())
    assert capped != full and 0.3 * float(full) < float(capped) < 3 * float(full)
    assert float(capped) / num_positive < float(full)

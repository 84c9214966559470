"""The model contract, checked for every registered architecture with its tiny configuration.

forward: list of [3,H,W] -> per image boxes float32 [K,4], scores float32 [K], labels int64 [K] in
[0, num_classes), masks bool [K,H,W] at the input's resolution (optionally mask_scores float32 [K]), in train and
eval mode.
compute_losses: scalar finite `loss_*` terms in train and eval mode, gradients down to the backbone's stem.
"""
import pytest
import torch

from models import MODELS
from tests.models.istr.common import TINY as ISTR_TINY
from tests.models.yolact.common import TINY as YOLACT_TINY

NUM_CLASSES = 3

# Each architecture's smallest sensible configuration: tiny backbone, 64-96 px, few RoIs / queries.
TINY_CONFIGS = {
    "mask_rcnn": dict(
        backbone="resnet18",
        norm="bn",
        frozen_stages=0,
        fpn_channels=32,
        min_size=64,
        max_size=96,
        anchor_sizes=[8, 16, 32, 64, 128],
        rpn_pre_nms_top_n_train=200,
        rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_train=100,
        rpn_post_nms_top_n_test=50,
        rpn_batch_size_per_image=64,
        box_batch_size_per_image=32,
        box_head_width=64,
        box_score_thresh=0.0,
        detections_per_img=10,
        mask_head_layers=1,
        mask_head_channels=16,
        mask_resolution=14,
    ),
    "centermask": dict(
        backbone="resnet18",
        ese_every_block=False,
        norm="bn",
        fpn_channels=32,
        min_size=64,
        max_size=96,
        fcos_num_convs=1,
        sizes_of_interest=[16, 32, 64, 128],
        score_thresh=0.0,
        post_nms_top_n_train=20,
        post_nms_top_n_test=10,
        mask_head_convs=1,
        mask_head_channels=16,
        maskiou_convs=1,
        maskiou_channels=16,
    ),
    "yolact": {**YOLACT_TINY, "num_prototypes": 8, "detections_per_img": 20},
    # The data-free DCT codec: a fresh PCA codec needs a fit on data first (tests/models/istr/test_model.py covers it).
    "istr": {**ISTR_TINY, "num_queries": 10, "codec": "dct", "codec_components": 16},
}


def build(name: str):
    torch.manual_seed(0)
    return MODELS[name](num_classes=NUM_CLASSES, **TINY_CONFIGS[name])


def tiny_batch():
    """Two images of different sizes; the first holds a crowd region, the second one instance."""
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 80, generator=generator), torch.rand(3, 72, 64, generator=generator)]
    targets = []
    for image, boxes, labels, crowd in (
        (images[0], [[8, 6, 40, 30], [30, 20, 70, 60], [0, 40, 20, 62]], [0, 2, 1], [0, 0, 1]),
        (images[1], [[10, 12, 50, 60]], [1], [0]),
    ):
        height, width = image.shape[-2:]
        masks = torch.zeros(len(boxes), height, width, dtype=torch.uint8)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes):
            mask[y0:y1, x0:x1] = 1
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "labels": torch.tensor(labels),
                "masks": masks,
                "iscrowd": torch.tensor(crowd),
                "image_id": len(targets) + 1,
                "orig_size": (height, width),
            }
        )
    return images, targets


# Each architecture's named loss terms (style: losses as named terms, the same in every mode).
LOSS_TERMS = {
    "mask_rcnn": {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask"},
    "centermask": {"loss_fcos_cls", "loss_fcos_box", "loss_fcos_ctr", "loss_mask", "loss_maskiou"},
    "yolact": {"loss_cls", "loss_box", "loss_mask", "loss_semantic"},
    "istr": {"loss_cls", "loss_box", "loss_giou", "loss_mask", "loss_dice"},
}
# Train and eval mode must agree exactly (rtol, atol = 0), except where torch itself computes differently by mode:
# nn.MultiheadAttention takes its fused "fast path" in eval mode, which rounds differently (~1e-6 relative).
MODE_TOLERANCE = {"istr": (1e-5, 1e-3)}


@pytest.fixture(params=sorted(MODELS))
def name(request):
    return request.param


def test_every_registered_model_has_a_tiny_configuration():
    assert set(TINY_CONFIGS) == set(MODELS)


@pytest.mark.parametrize("train_mode", [False, True])
def test_predictions_follow_the_contract(name, train_mode):
    model = build(name).train(train_mode)
    images, _ = tiny_batch()
    with torch.no_grad():
        predictions = model(images)
    assert len(predictions) == len(images)
    for prediction, image in zip(predictions, images):
        # `mask_scores` is optional (segm AP ranks masks by it; CenterMask's box score x predicted mask IoU).
        assert set(prediction) - {"mask_scores"} == {"boxes", "scores", "labels", "masks"}
        num = prediction["scores"].shape[0]
        if "mask_scores" in prediction:
            assert prediction["mask_scores"].dtype == torch.float32 and prediction["mask_scores"].shape == (num,)
        height, width = image.shape[-2:]
        assert prediction["boxes"].dtype == torch.float32 and prediction["boxes"].shape == (num, 4)
        assert prediction["scores"].dtype == torch.float32
        assert prediction["labels"].dtype == torch.int64 and prediction["labels"].shape == (num,)
        assert prediction["masks"].dtype == torch.bool and prediction["masks"].shape == (num, height, width)
        if num:
            assert 0 <= int(prediction["labels"].min()) and int(prediction["labels"].max()) < NUM_CLASSES
            assert float(prediction["scores"].min()) >= 0 and float(prediction["scores"].max()) <= 1
            boxes = prediction["boxes"]
            assert float(boxes[:, [0, 2]].min()) >= 0 and float(boxes[:, [0, 2]].max()) <= width
            assert float(boxes[:, [1, 3]].min()) >= 0 and float(boxes[:, [1, 3]].max()) <= height
    assert sum(p["scores"].shape[0] for p in predictions) > 0, "the tiny configuration should produce detections"


def test_losses_are_finite_in_both_modes_and_reach_the_backbone(name):
    model = build(name).train()
    images, targets = tiny_batch()
    losses = model.compute_losses(images, targets)
    assert losses and all(key.startswith("loss_") for key in losses)
    assert all(value.numel() == 1 and torch.isfinite(value) for value in losses.values()), losses
    sum(losses.values()).backward()
    # The first convolution of the network (the backbone's stem) is the farthest from every loss.
    stem = next(p for p in model.parameters() if p.ndim == 4)
    assert stem.grad is not None and float(stem.grad.abs().sum()) > 0

    model.eval()
    with torch.no_grad():
        eval_losses = model.compute_losses(images, targets)
    assert set(eval_losses) == set(losses)
    assert all(torch.isfinite(value) for value in eval_losses.values()), eval_losses


def test_predict_and_losses_equals_the_two_calls(name):
    model = build(name).eval()
    images, targets = tiny_batch()
    with torch.no_grad():
        torch.manual_seed(1)
        predictions, losses = model.predict_and_losses(images, targets)
        separate_predictions = model(images)
        torch.manual_seed(1)
        separate_losses = model.compute_losses(images, targets)
    for joint, separate in zip(predictions, separate_predictions):
        for key in ("boxes", "scores", "labels", "masks"):
            torch.testing.assert_close(joint[key], separate[key])
    torch.testing.assert_close(losses, separate_losses)


def frozen_tiny_model(name: str):
    """The tiny model with frozen BatchNorm: nothing left in it depends on train/eval mode."""
    torch.manual_seed(0)
    return MODELS[name](num_classes=NUM_CLASSES, **{**TINY_CONFIGS[name], "norm": "frozen_bn"})


def seeded_losses(model, images, targets, seed=7):
    torch.manual_seed(seed)  # the samplers of RPN / RoI / mask branches draw random subsets
    with torch.no_grad():
        return model.compute_losses(images, targets)


def test_eval_mode_losses_equal_train_mode_losses(name):
    model = frozen_tiny_model(name)
    images, targets = tiny_batch()
    train_losses = seeded_losses(model.train(), images, targets)
    eval_losses = seeded_losses(model.eval(), images, targets)
    assert set(train_losses) == LOSS_TERMS[name]
    rtol, atol = MODE_TOLERANCE.get(name, (0, 0))
    torch.testing.assert_close(eval_losses, train_losses, rtol=rtol, atol=atol)


def test_inference_is_the_same_in_train_and_eval_mode(name):
    model = frozen_tiny_model(name)
    images, _ = tiny_batch()
    with torch.no_grad():
        in_train = model.train()(images)
        in_eval = model.eval()(images)
    rtol, atol = MODE_TOLERANCE.get(name, (0, 0))
    for a, b in zip(in_train, in_eval):
        assert set(a) == set(b)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=atol, msg=key)

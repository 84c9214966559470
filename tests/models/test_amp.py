"""Mixed precision: every architecture under CPU autocast (float16 and bfloat16) on a 640x480 input.

Boxes, RoIs, pyramid levels and image areas must stay float32 whatever precision the network runs in: float16
overflows an image area above 65504 px (CenterMask's level rule raised, or sent every RoI to P3), and bfloat16 rounds
box corners to 2 px steps above 256 px and 4 px steps above 512 px.

Two checks per model and precision:
- with its random weights, the outputs are finite and follow the contract (boxes and scores float32);
- with constant box deltas (see DELTAS), each float32 detection's box is within 1 px of the autocast detection
  of the same object (same class, IoU >= 0.7). What remains different is the network's own rounding (scores, hence
  which near-tied candidates win), so detections are matched by object rather than by rank, and at least half of
  them must be found.
The honest tolerances for the rest, measured on these random weights: scores of matched detections within 0.01
(float16: ~5e-4; bfloat16: ~3e-3 measured). Masks are not compared pixel by pixel: with random weights their
probabilities sit near the 0.5 threshold, where any rounding flips pixels.
"""
import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from models import MODELS

NUM_CLASSES = 3
HEIGHT, WIDTH = 480, 640
PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16}

# Paper-size inputs (a 480 x 640 image stays 480 x 640, or 544 x 544 for YOLACT) with a tiny backbone and heads.
CONFIGS = {
    "mask_rcnn": dict(
        backbone="test_resnet", norm="bn", frozen_stages=0, fpn_channels=16, min_size=480, max_size=640,
        rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=50, box_head_width=32, box_score_thresh=0.0,
        detections_per_img=20, mask_head_layers=1, mask_head_channels=8, mask_resolution=14,
    ),
    "centermask": dict(
        backbone="test_resnet", ese_every_block=False, norm="bn", fpn_channels=32, min_size=480, max_size=640,
        fcos_num_convs=1, score_thresh=0.0, post_nms_top_n_test=20, mask_head_convs=1, mask_head_channels=8,
        maskiou_convs=1, maskiou_channels=8,
    ),
    "yolact": dict(
        backbone="test_resnet", fpn_channels=16, num_prototypes=8, proto_channels=16, head_channels=16,
        input_size=544, detections_per_img=20,
    ),
    "istr": dict(
        backbone="test_resnet", norm="bn", frozen_stages=0, fpn_channels=32, min_size=480, max_size=640,
        num_queries=20, num_stages=2, num_heads=4, dim_feedforward=64, dynamic_dim=8, codec="dct",
        codec_components=16, codec_mask_size=14, detections_per_img=20,
    ),
}


def box_regressors(model: nn.Module) -> list[nn.Module]:
    """The layers whose outputs move boxes away from anchors / proposals / the previous stage's boxes."""
    names = ("rpn.head.bbox_pred", "roi_heads.box_predictor.bbox_pred", "fcos_head.bbox_pred", "head.box_layer")
    layers = [module for name, module in model.named_modules() if name in names or name.endswith("bboxes_delta")]
    assert layers, f"{type(model).__name__}: no box-regression layer found"
    return layers


# Constant box deltas (the regression layers' weights zeroed, these as biases): every box is then pure box
# arithmetic on anchors / proposals / query boxes, independent of how the network's activations round, and lands on
# fractional coordinates that float16 / bfloat16 cannot hold. FCOS regresses distances in strides (relu), hence the
# larger, positive values there.
DELTAS = {"centermask": (2.37, 1.21, 3.13, 1.29)}
DEFAULT_DELTAS = (0.37, -0.21, 0.13, 0.29)


def build(name: str, constant_box_deltas: bool) -> nn.Module:
    torch.manual_seed(0)
    model = MODELS[name](num_classes=NUM_CLASSES, **CONFIGS[name]).eval()
    if constant_box_deltas:
        deltas = torch.tensor(DELTAS.get(name, DEFAULT_DELTAS))
        with torch.no_grad():
            for layer in box_regressors(model):
                layer.weight.zero_()
                layer.bias.copy_(deltas.repeat(layer.bias.numel() // 4))
    return model


def detect(model: nn.Module, image: torch.Tensor, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        return model([image])[0]


@pytest.fixture(scope="module")
def image():
    return torch.rand(3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(0))


@pytest.fixture(params=sorted(MODELS))
def name(request):
    return request.param


def test_every_registered_model_is_covered():
    assert set(CONFIGS) == set(MODELS)


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_autocast_outputs_are_finite_float32_and_boxes_within_a_pixel(name, precision, image):
    model = build(name, constant_box_deltas=False)
    out = detect(model, image, PRECISIONS[precision])
    assert out["boxes"].dtype == torch.float32 and out["scores"].dtype == torch.float32
    assert out["masks"].dtype == torch.bool and out["masks"].shape[-2:] == (HEIGHT, WIDTH)
    assert len(out["boxes"]) > 0
    for key in ("boxes", "scores"):
        assert torch.isfinite(out[key]).all(), f"{name} {precision}: non-finite {key}"

    model = build(name, constant_box_deltas=True)
    reference, out = detect(model, image, None), detect(model, image, PRECISIONS[precision])
    assert len(reference["boxes"]) > 0 and len(out["boxes"]) > 0
    # The same object: same class, IoU >= 0.7 (a 2 px rounding keeps a box's IoU far above that); each float32
    # detection takes its nearest such autocast detection.
    same_object = (box_iou(reference["boxes"], out["boxes"]) >= 0.7) & (reference["labels"][:, None] == out["labels"][None])
    distance = (reference["boxes"][:, None] - out["boxes"][None]).abs().amax(dim=-1)  # [K_ref, K_out]
    distance[~same_object] = float("inf")
    nearest = distance.min(dim=1).values
    found = torch.isfinite(nearest)
    # Near-tied random scores let a few different candidates win; most must be the same ones.
    assert found.float().mean() >= 0.5, f"{name} {precision}: only {int(found.sum())}/{len(found)} detections found"
    worst = nearest[found].max().item()
    assert worst <= 1.0, f"{name} {precision}: a box moved by {worst:.2f} px under autocast"
    # Identical boxes can carry different scores (queries / classes on one box): compare with the closest one.
    score_gap = (reference["scores"][:, None] - out["scores"][None]).abs()
    score_gap[distance > 1.0] = float("inf")
    score_error = score_gap.min(dim=1).values[found].max().item()
    assert score_error <= 0.01, f"{name} {precision}: matched scores differ by {score_error:.4f}"


@pytest.mark.parametrize("level_rule, gather", [("scale_adaptive", False), ("mask_rcnn", True)])
@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_poolers_keep_rois_float32_under_autocast(level_rule, gather, precision):
    """RoIs at fractional corners above 512 px pool the same features as float32 RoIs would (bfloat16 would move
    them by up to 2 px; float16 overflowed CenterMask's image areas), on CenterMask's path (scale-adaptive, per
    level) and ISTR's (FPN rule, gathered). Only the pooled output takes the low dtype."""
    from models.common.roi_pooler import LevelRoIAlign

    dtype = PRECISIONS[precision]
    generator = torch.Generator().manual_seed(0)
    strides = [8, 16, 32]
    features = [torch.randn(1, 4, 1024 // s, 1024 // s, generator=generator).to(dtype) for s in strides]
    corners = 520 + torch.rand(6, 2, generator=generator) * 300
    boxes = torch.cat([corners, corners + 40 + torch.rand(6, 2, generator=generator) * 150], dim=1)
    pooler = LevelRoIAlign(strides, output_size=7, level_rule=level_rule, gather_levels=gather)
    call = lambda feats: pooler(feats, [boxes], [(1000, 1000)])  # noqa: E731
    expected = call([f.float() for f in features])
    with torch.autocast("cpu", dtype=dtype):
        pooled = call(features)
    assert pooled.dtype == dtype
    torch.testing.assert_close(pooled.float(), expected, rtol=0.02, atol=0.02)

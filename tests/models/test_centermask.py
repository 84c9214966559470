"""CenterMask the model: its two scores, unclipped mask branch and clipped output, crowd exclusion, switches and
bad arguments, the centermask2 converter and the configs. Its parts: tests/models/centermask/."""
import copy
from pathlib import Path

import pytest
import torch
import yaml

from models.centermask import CenterMask
from models.centermask.convert import convert_centermask2, map_key, map_state_dict, official_settings
from models.common.masks import paste_masks
from tests.models.test_contract import NUM_CLASSES, TINY_CONFIGS, frozen_tiny_model, seeded_losses, tiny_batch

CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "configs"
# Frozen BatchNorm: nothing in the network depends on train/eval mode, so both modes must agree exactly.
FROZEN = {**TINY_CONFIGS["centermask"], "norm": "frozen_bn"}


@pytest.fixture(scope="module")
def frozen_model():
    return frozen_tiny_model("centermask")


# ------------------------------------------------------------------------------------------------- the model


def test_crowd_regions_are_excluded_from_training(frozen_model):
    images, targets = tiny_batch()  # instance 2 of image 1 is a crowd region
    first = {k: (v[[0, 1]] if torch.is_tensor(v) and v.shape[:1] == (3,) else v) for k, v in targets[0].items()}
    with_crowd = seeded_losses(frozen_model, images, targets)
    crowd_removed = seeded_losses(frozen_model, images, [first, targets[1]])
    torch.testing.assert_close(with_crowd, crowd_removed, rtol=0, atol=0)
    as_instance = [dict(targets[0], iscrowd=torch.zeros(3, dtype=torch.int64))] + targets[1:]
    assert seeded_losses(frozen_model, images, as_instance)["loss_fcos_cls"] != with_crowd["loss_fcos_cls"]


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

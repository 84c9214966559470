import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from models.yolact import YOLACT
from models.yolact.convert import convert_yolact_official, input_size_from_name, map_state_dict, official_settings
from models.yolact.head import PredictionHead
from models.yolact.loss import YolactLoss, YolactOutputs, YolactTarget, ssd_box_coder
from models.yolact.postprocess import assemble_masks
from models.yolact.targets import match_anchors

TINY = dict(
    backbone="resnet18",
    fpn_channels=16,
    num_prototypes=4,
    proto_channels=16,
    head_channels=16,
    input_size=64,
    anchor_scales=[8, 16, 32, 64, 128],
)


def _tiny_model(**overrides) -> YOLACT:
    torch.manual_seed(0)
    return YOLACT(num_classes=3, **{**TINY, **overrides})


# --------------------------------------------------------------------------------------------- box coding


def test_box_encode_decode_round_trip_with_ssd_variances():
    coder = ssd_box_coder()
    generator = torch.Generator().manual_seed(0)
    anchors = torch.rand(50, 2, generator=generator) * 100
    anchors = torch.cat([anchors, anchors + 5 + torch.rand(50, 2, generator=generator) * 40], dim=1)
    boxes = torch.rand(50, 2, generator=generator) * 100
    boxes = torch.cat([boxes, boxes + 5 + torch.rand(50, 2, generator=generator) * 40], dim=1)
    torch.testing.assert_close(coder.decode_single(coder.encode_single(boxes, anchors), anchors), boxes)
    # variances 0.1 / 0.2: a centre shifted by 10 % of the anchor's width encodes as 1; a box e^0.2 wider as 1.
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    shifted = torch.tensor([[1.0, 0.0, 11.0, 20.0]])
    torch.testing.assert_close(coder.encode_single(shifted, anchor), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    wide = math.exp(0.2) * 10
    wider = torch.tensor([[5 - wide / 2, 0.0, 5 + wide / 2, 20.0]])
    torch.testing.assert_close(coder.encode_single(wider, anchor), torch.tensor([[0.0, 0.0, 1.0, 0.0]]))


# --------------------------------------------------------------------------------------------- matching


def test_matching_thresholds_positive_neutral_background():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # IoU 1 -> positive (and the forced best)
            [0.0, 0.0, 10.0, 18.0],  # IoU 10/18 = 0.56 -> positive
            [0.0, 0.0, 10.0, 22.0],  # IoU 0.45 -> neutral
            [0.0, 0.0, 10.0, 30.0],  # IoU 0.33 -> background
            [50.0, 50.0, 60.0, 60.0],  # IoU 0 -> background
        ]
    )
    classes, matched = match_anchors(anchors, gt, torch.tensor([2]), torch.zeros(0, 4))
    assert classes.tolist() == [3, 3, -1, 0, 0]
    assert matched[:2].tolist() == [0, 0]


def test_every_ground_truth_is_forced_onto_its_own_anchor():
    # Box A's best anchor is anchor 0 (IoU 0.3); box B also prefers anchor 0 (IoU 0.36) and anchor 1 next.
    # Greedy: the highest IoU (B, anchor 0) pairs first; A then takes its best remaining anchor (anchor 1).
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    box_a = torch.tensor([3.0, 0.0, 33.0, 10.0])  # IoU 7/33 with anchor 0, 10/30 with anchor 1
    box_b = torch.tensor([0.0, 0.0, 10.0, 28.0])  # IoU 10/28 with anchor 0, 0 with anchor 1
    classes, matched = match_anchors(anchors, torch.stack([box_a, box_b]), torch.tensor([0, 1]), torch.zeros(0, 4))
    assert classes.tolist() == [2, 1, 0]  # both below 0.4, yet both positive
    assert matched[:2].tolist() == [1, 0]


def test_crowd_makes_covered_background_neutral_but_keeps_positives():
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # positive for the gt, inside the crowd
            [20.0, 20.0, 30.0, 30.0],  # background, fully inside the crowd -> neutral
            [35.0, 35.0, 45.0, 45.0],  # background, half inside (0.25 of its area) -> stays background
        ]
    )
    crowd = torch.tensor([[0.0, 0.0, 40.0, 40.0]])
    classes, _ = match_anchors(anchors, torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([0]), crowd)
    assert classes.tolist() == [1, -1, 0]
    # no ground truth at all: everything background except what the crowd covers
    classes, _ = match_anchors(anchors, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), crowd)
    assert classes.tolist() == [-1, -1, 0]


# ------------------------------------------------------------------------------------------------- head


def test_head_channel_layout_is_anchor_major():
    # Zero weights, bias of channel a*(C+1)+c = 100a + c: anchor a of every cell must read 100a + c for class c.
    head = PredictionHead(in_channels=4, num_classes=2, num_anchors=3, num_prototypes=2, channels=4)
    with torch.no_grad():
        for layer in (head.box_layer, head.class_layer, head.coefficient_layer):
            layer.weight.zero_()
        head.class_layer.bias.copy_(torch.tensor([100.0 * a + c for a in range(3) for c in range(3)]))
        head.box_layer.bias.copy_(torch.arange(12.0))
    boxes, classes, coefficients = head([torch.rand(1, 4, 2, 3), torch.rand(1, 4, 1, 1)])
    assert classes.shape == (1, (6 + 1) * 3, 3) and boxes.shape == (1, 21, 4) and coefficients.shape == (1, 21, 2)
    expected = torch.tensor([[100.0 * a + c for c in range(3)] for a in range(3)]).repeat(7, 1)
    torch.testing.assert_close(classes[0], expected)
    torch.testing.assert_close(boxes[0, 4], torch.arange(4.0, 8.0))  # cell 1, anchor 1


# ------------------------------------------------------------------------------------------ shapes, masks


def test_network_output_shapes_and_ranges():
    model = _tiny_model().eval()
    with torch.no_grad():
        outputs = model.network(model.preprocess([torch.rand(3, 50, 70), torch.rand(3, 64, 64)]), semantic=True)
    # 64 px: P3..P7 = 8, 4, 2, 1, 1 cells a side; prototypes at twice P3.
    num_anchors = (64 + 16 + 4 + 1 + 1) * 3
    assert outputs.box_deltas.shape == (2, num_anchors, 4)
    assert outputs.class_logits.shape == (2, num_anchors, 4)
    assert outputs.coefficients.shape == (2, num_anchors, 4)
    assert float(outputs.coefficients.abs().max()) <= 1
    assert outputs.prototypes.shape == (2, 4, 16, 16) and float(outputs.prototypes.min()) >= 0
    assert outputs.semantic_logits.shape == (2, 3, 8, 8)
    assert outputs.anchors.shape == (num_anchors, 4)


def test_mask_assembly_crops_to_the_box_and_upsamples():
    # Prototype 0 is "on" everywhere, prototype 1 everywhere "off"; coefficient picks prototype 0. The 8x8
    # prototype grid of a 32 px input, box [8, 8, 24, 24] -> prototype cells 2..6 (+1 padding: 1..7) -> at 64 px,
    # bilinear edges at half a cell: rows and columns 8..55 (the corners rounded off, bilinear weights multiply).
    prototypes = torch.stack([torch.full((8, 8), 10.0), torch.zeros(8, 8)])
    masks = assemble_masks(prototypes, torch.tensor([[1.0, 0.0]]), torch.tensor([[8.0, 8.0, 24.0, 24.0]]),
                           (32, 32), (64, 64))
    assert masks.dtype == torch.bool and masks.shape == (1, 64, 64)
    outside = torch.ones(64, 64, dtype=torch.bool)
    outside[8:56, 8:56] = False
    assert not masks[0][outside].any() and masks[0, 12:52, 12:52].all()
    assert masks[0, 32].nonzero().flatten().tolist() == list(range(8, 56))
    assert masks[0, :, 32].nonzero().flatten().tolist() == list(range(8, 56))
    # a negative coefficient switches the mask off; no detections give [0, H, W]
    assert not assemble_masks(prototypes, torch.tensor([[-1.0, 0.0]]), torch.tensor([[8.0, 8, 24, 24]]),
                              (32, 32), (64, 64)).any()
    assert assemble_masks(prototypes, torch.zeros(0, 2), torch.zeros(0, 4), (32, 32), (40, 50)).shape == (0, 40, 50)


# ------------------------------------------------------------------------------------------------- loss


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


def test_ohem_takes_three_negatives_per_positive_hardest_first():
    loss = YolactLoss()
    classes = torch.tensor([[2, 0, 0, 0, 0, 0, -1]])
    logits = torch.zeros(1, 7, 3)
    logits[0, 1:6, 1] = torch.tensor([5.0, 1.0, 4.0, 3.0, 0.5])  # hardness order: anchors 1, 3, 4, 2, 5
    logits[0, 6, 1] = 9.0  # neutral: never a negative, however hard
    expected = sum(F.cross_entropy(logits[0, i], torch.tensor(c)) for i, c in ((0, 2), (1, 0), (3, 0), (4, 0)))
    torch.testing.assert_close(loss.loss_cls(logits, classes), expected)


def test_crowd_instances_are_not_training_targets():
    model = _tiny_model()
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
    model = _tiny_model()
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


# -------------------------------------------------------------------------------------------- inference


@pytest.mark.parametrize("nms", ["fast", "cross_class", "batched"])
def test_inference_contract_for_every_nms(nms):
    model = _tiny_model(nms=nms, score_thresh=0.0, detections_per_img=7).eval()
    images = [torch.rand(3, 48, 80), torch.rand(3, 64, 40)]
    with torch.no_grad():
        predictions = model(images)
    for prediction, image in zip(predictions, images):
        count = prediction["scores"].shape[0]
        assert 0 < count <= 7
        assert prediction["masks"].shape == (count, *image.shape[-2:]) and prediction["masks"].dtype == torch.bool
        assert prediction["labels"].dtype == torch.int64 and int(prediction["labels"].max()) < 3
        boxes = prediction["boxes"]
        assert float(boxes[:, 2].max()) <= image.shape[-1] and float(boxes[:, 3].max()) <= image.shape[-2]
        assert bool((boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all())


def test_bad_hyperparameters_are_rejected():
    with pytest.raises(ValueError, match="nms"):
        YOLACT(num_classes=3, **TINY, nms="soft")
    with pytest.raises(ValueError, match="anchor_scales"):
        YOLACT(num_classes=3, **{**TINY, "anchor_scales": [8, 16]})


# ------------------------------------------------------------------------------------------- conversion


def _official_resnet50_state(num_classes: int = 80) -> dict[str, torch.Tensor]:
    """A state dict with exactly the official YOLACT R-50 keys and shapes (reference section 5), random values."""
    generator = torch.Generator().manual_seed(0)
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, channels: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (channels,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["backbone.conv1.weight"] = (64, 3, 7, 7)
    bn("backbone.bn1", 64)
    in_channels = 64
    for stage, blocks in enumerate((3, 4, 6, 3)):
        width = 64 * 2**stage
        for block in range(blocks):
            prefix = f"backbone.layers.{stage}.{block}"
            shapes[f"{prefix}.conv1.weight"] = (width, in_channels, 1, 1)
            bn(f"{prefix}.bn1", width)
            shapes[f"{prefix}.conv2.weight"] = (width, width, 3, 3)
            bn(f"{prefix}.bn2", width)
            shapes[f"{prefix}.conv3.weight"] = (4 * width, width, 1, 1)
            bn(f"{prefix}.bn3", 4 * width)
            if block == 0:
                shapes[f"{prefix}.downsample.0.weight"] = (4 * width, in_channels, 1, 1)
                bn(f"{prefix}.downsample.1", 4 * width)
            in_channels = 4 * width

    def conv(prefix: str, out_channels: int, in_channels: int, kernel: int) -> None:
        shapes[f"{prefix}.weight"] = (out_channels, in_channels, kernel, kernel)
        shapes[f"{prefix}.bias"] = (out_channels,)

    for index, channels in enumerate((2048, 1024, 512)):
        conv(f"fpn.lat_layers.{index}", 256, channels, 1)
        conv(f"fpn.pred_layers.{index}", 256, 256, 3)
    for index in range(2):
        conv(f"fpn.downsample_layers.{index}", 256, 256, 3)
    for index in (0, 2, 4, 8):
        conv(f"proto_net.{index}", 256, 256, 3)
    conv("proto_net.10", 32, 256, 1)
    conv("prediction_layers.0.upfeature.0", 256, 256, 3)
    conv("prediction_layers.0.bbox_layer", 12, 256, 3)
    conv("prediction_layers.0.conf_layer", 3 * (num_classes + 1), 256, 3)
    conv("prediction_layers.0.mask_layer", 96, 256, 3)
    conv("semantic_seg_conv", num_classes, 256, 1)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.05
    return state


@pytest.fixture(scope="module")
def official_r50():
    return _official_resnet50_state()


def _official_fpn_and_conf(state, features, num_classes):
    """The official FPN (laterals and outputs stored coarsest first) and class head, written from the reference."""
    outputs = [None] * 3
    x = None
    for i in range(3):
        j = 2 - i
        lateral = F.conv2d(features[j], state[f"fpn.lat_layers.{i}.weight"], state[f"fpn.lat_layers.{i}.bias"])
        if x is not None:
            x = F.interpolate(x, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            lateral = lateral + x
        x = outputs[j] = lateral
    for i in range(3):
        j = 2 - i
        outputs[j] = F.relu(
            F.conv2d(outputs[j], state[f"fpn.pred_layers.{i}.weight"], state[f"fpn.pred_layers.{i}.bias"], padding=1)
        )
    for i in range(2):
        weight, bias = state[f"fpn.downsample_layers.{i}.weight"], state[f"fpn.downsample_layers.{i}.bias"]
        outputs.append(F.conv2d(outputs[-1], weight, bias, stride=2, padding=1))
    conf = []
    for level in outputs:
        up = F.relu(F.conv2d(level, state["prediction_layers.0.upfeature.0.weight"],
                             state["prediction_layers.0.upfeature.0.bias"], padding=1))
        logits = F.conv2d(up, state["prediction_layers.0.conf_layer.weight"],
                          state["prediction_layers.0.conf_layer.bias"], padding=1)
        conf.append(logits.permute(0, 2, 3, 1).reshape(1, -1, num_classes + 1))
    return outputs, torch.cat(conf, dim=1)


def test_documented_official_layout_converts_completely(official_r50):
    state = {**official_r50, "backbone.layer1.0.conv1.weight": torch.zeros(1), "fpn.downsample_layers.2.weight":
             torch.zeros(1)}  # extra keys the official loader drops too
    settings = official_settings(state, "official.pth")
    assert settings["backbone"] == "resnet50" and settings["num_classes"] == 80 and settings["square_anchors"]
    assert settings["anchor_scales"] == [24, 48, 96, 192, 384]
    model = YOLACT(**settings)
    mapped = map_state_dict(state, model.state_dict(), "official.pth")
    assert set(mapped) == set(model.state_dict())
    model.load_state_dict(mapped, strict=True)
    assert official_settings(state, "x", input_size=700)["anchor_scales"] == [30, 61, 122, 244, 488]

    # Numerical layout: the converted FPN and class head equal the official computation on the same features.
    model.eval()
    generator = torch.Generator().manual_seed(1)
    features = [torch.randn(1, c, s, s, generator=generator) for c, s in ((512, 9), (1024, 5), (2048, 3))]
    with torch.no_grad():
        levels = model.neck(features)
        _, class_logits, _ = model.head(levels)
        official_levels, official_conf = _official_fpn_and_conf(official_r50, features, 80)
    for ours, theirs in zip(levels, official_levels):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(class_logits, official_conf, rtol=1e-4, atol=1e-4)


def test_conversion_errors_name_the_problem(official_r50, tmp_path):
    model_state = YOLACT(**official_settings(official_r50, "x")).state_dict()
    broken = dict(official_r50)
    del broken["proto_net.4.weight"]
    broken["fpn.something_else"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"official\.pth.*missing \['protonet\.4\.weight'\].*fpn\.something_else"):
        map_state_dict(broken, model_state, "official.pth")
    plus_plus = {**official_r50, "prediction_layers.0.bbox_layer.weight": torch.zeros(36, 256, 3, 3)}
    with pytest.raises(ValueError, match="9 anchors"):
        official_settings(plus_plus, "pp.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        convert_yolact_official(str(garbage), str(tmp_path / "out.ckpt"))


def test_converted_checkpoint_loads_with_lightning(official_r50, tmp_path):
    source = tmp_path / "yolact_resnet50.pth"
    torch.save(official_r50, source)
    out = convert_yolact_official(str(source), str(tmp_path / "converted.ckpt"))
    model = YOLACT.load_from_checkpoint(out, map_location="cpu")
    assert model.hparams.square_anchors and model.hparams.num_classes == 80
    torch.testing.assert_close(model.neck.lateral[0].weight, official_r50["fpn.lat_layers.2.weight"])


@pytest.mark.parametrize(
    "name, size",
    [("yolact_im700_54_800000.pth", 700), ("/w/yolact_im400_53_800000.pth", 400), ("yolact_base_54_800000.pth", 550),
     ("yolact_resnet50_54_800000.pth", 550), ("my_yolact_im700_copy.pth", 550)],
)
def test_input_size_is_read_from_the_official_file_name(name, size):
    assert input_size_from_name(name) == size


def test_convert_verb_takes_the_input_size_from_the_name_or_the_flag(official_r50, tmp_path, capsys):
    from experiments.cli import main

    source = tmp_path / "yolact_im700_54_800000.pth"
    torch.save(official_r50, source)
    assert main(["convert", "yolact-official", str(source), str(tmp_path / "im700.ckpt")]) == 0
    im700 = YOLACT.load_from_checkpoint(str(tmp_path / "im700.ckpt"), map_location="cpu").hparams
    # The official yolact_im700_config, as experiments/configs/models/yolact/r101_700.yaml writes it.
    paper = yaml.safe_load((CONFIGS / "models/yolact/r101_700.yaml").read_text())["model"]["init_args"]
    assert im700.input_size == paper["input_size"] == 700
    assert list(im700.anchor_scales) == paper["anchor_scales"] == [30, 61, 122, 244, 488]
    assert im700.masks_to_train == paper["masks_to_train"] == 300

    assert main(["convert", "yolact-official", str(source), str(tmp_path / "im400.ckpt"), "--input-size", "400"]) == 0
    im400 = YOLACT.load_from_checkpoint(str(tmp_path / "im400.ckpt"), map_location="cpu").hparams
    assert im400.input_size == 400 and list(im400.anchor_scales) == [17, 34, 69, 139, 279]
    assert im400.masks_to_train == 100
    assert main(["convert", "centermask2", str(source), str(tmp_path / "x.ckpt"), "--input-size", "400"]) == 2
    assert "--input-size applies to yolact-official only" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- configs

CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "configs"


@pytest.mark.parametrize(
    "config",
    [
        "models/yolact/r50_550.yaml",
        "models/yolact/r101_550.yaml",
        "models/yolact/d53_550.yaml",
        "models/yolact/r101_400.yaml",
        "models/yolact/r101_700.yaml",
        "quickstart/yolact.yaml",
    ],
)
def test_configs_name_real_arguments(config):
    section = yaml.safe_load((CONFIGS / config).read_text())["model"]
    assert section["class_path"] == "models.yolact.YOLACT"
    args = {**section["init_args"], "pretrained": False}
    # build with a tiny backbone: the arguments, not ResNet-101's weights, are what is checked here
    model = YOLACT(num_classes=3, **{**args, "backbone": "resnet18", "out_indices": [2, 3, 4]})
    assert model.hparams.input_size == args["input_size"]
    assert len(model.hparams.anchor_scales) == 5


# ------------------------------------------------------------------------------------------------- CLI


def test_a_few_training_steps_through_the_cli(small_synthetic_root, tmp_path):
    from experiments.cli import main

    code = main(
        [
            "fit", "--config", str(CONFIGS / "quickstart" / "yolact.yaml"),
            "--data.root", str(small_synthetic_root), "--data.num_workers", "0", "--data.batch_size", "2",
            "--model.init_args.bn_min_batch", "2",  # a smoke test: BN on 2 images, below YOLACT's minimum of 6
            "--model.init_args.input_size", "64", "--model.init_args.anchor_scales", "[8, 16, 32, 64, 128]",
            "--model.init_args.fpn_channels", "16", "--model.init_args.proto_channels", "16",
            "--model.init_args.head_channels", "16",
            "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
        ]
    )
    assert code in (0, None)
    metrics_files = list(tmp_path.rglob("metrics.json"))
    assert metrics_files, "the run wrote no metrics.json"
    import json

    metrics = json.loads(metrics_files[0].read_text())
    assert metrics["global_step"] == 2 and "val/segm_AP" in metrics and "val/loss_mask" in metrics


def test_fast_postprocess_equals_the_candidate_path_with_one_host_read_per_image():
    """Fixed-shape post-processing (top_k over all anchors, candidates ranked first) gives the detections of the
    definition on the candidates alone (anchors whose best class score passes the threshold), and the forward plus
    post-processing reads the device once per image (the detection count), after everything is queued."""
    from torchvision.models.detection._utils import BoxCoder

    from models.yolact.loss import SSD_BOX_WEIGHTS
    from tests.models.common.test_nms import _brute_force_fast_nms
    from tests.models.sync_census import SyncCensus

    model = _tiny_model(detections_per_img=30, nms_top_k=15, score_thresh=0.35).eval()
    with torch.no_grad():
        model.head.class_layer.weight.mul_(6)  # a real subset of candidates, and scores without ties
    images = [torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    with torch.no_grad():
        detections = model(images)
        outputs = model.network(model.preprocess(images), semantic=False)
        with SyncCensus() as census:
            model(images)
    assert census.counts == {"item": 2}, census.counts
    for index, (image, found) in enumerate(zip(images, detections)):
        scores = outputs.class_logits[index].softmax(dim=1)[:, 1:]
        candidates = torch.nonzero(scores.max(dim=1).values > model.postprocess.score_thresh).squeeze(1)
        assert 0 < len(candidates) < len(scores)
        boxes = BoxCoder(SSD_BOX_WEIGHTS).decode_single(outputs.box_deltas[index, candidates], outputs.anchors[candidates])
        expected = _brute_force_fast_nms(boxes, scores[candidates].t(), 0.5, 15, 30)
        assert found["labels"].tolist() == [c for _, _, c in expected]
        torch.testing.assert_close(found["scores"], torch.tensor([s for s, _, _ in expected]))
        height, width = image.shape[-2:]
        scale = torch.tensor([width / 64, height / 64] * 2)
        expected_boxes = (boxes[[j for _, j, _ in expected]] * scale)
        expected_boxes[:, 0::2] = expected_boxes[:, 0::2].clamp(0, width)
        expected_boxes[:, 1::2] = expected_boxes[:, 1::2].clamp(0, height)
        torch.testing.assert_close(found["boxes"], expected_boxes)

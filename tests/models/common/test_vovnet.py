"""VoVNetV2 backbone: the official structure (eSE in every OSA block) next to timm's, and official weight loading."""
import pytest
import timm
import torch

from models.common.vovnet import VOVNET_CONFIGS, VoVNetBackbone, official_key


def test_official_structure_puts_ese_in_every_block_timm_in_the_last():
    official = VoVNetBackbone("ese_vovnet39b", [2, 3, 4], ese_every_block=True, norm="bn")
    timm_like = VoVNetBackbone("ese_vovnet39b", [2, 3, 4], ese_every_block=False, norm="bn")
    for stage in official.body.stages:
        assert all(block.attn is not None for block in stage.blocks)
    # timm's V-39: stages of 1, 1, 2, 2 blocks, eSE only on the last of each.
    assert [[block.attn is not None for block in s.blocks] for s in timm_like.body.stages] == [
        [True], [True], [False, True], [False, True]
    ]
    extra = set(official.state_dict()) - set(timm_like.state_dict())
    assert extra == {f"body.stages.{s}.blocks.0.attn.fc.{p}" for s in (2, 3) for p in ("weight", "bias")}
    # Without the option the structure is exactly timm's registered model (minus its classifier).
    reference = timm.create_model("ese_vovnet39b", pretrained=False, num_classes=0)
    assert {f"body.{k}" for k in reference.state_dict()} == set(timm_like.state_dict())


def test_features_channels_and_strides():
    backbone = VoVNetBackbone("ese_vovnet19b", [0, 2, 3, 4], norm="bn")
    assert backbone.channels == [64, 512, 768, 1024] and backbone.strides == [2, 8, 16, 32]
    outputs = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outputs] == [(1, 64, 32, 48), (1, 512, 8, 12), (1, 768, 4, 6), (1, 1024, 2, 3)]


def test_frozen_norm_and_stages():
    backbone = VoVNetBackbone("ese_vovnet19b", [2, 3, 4], norm="frozen_bn", frozen_stages=2)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    assert not any(p.requires_grad for p in backbone.body.stem.parameters())
    assert not any(p.requires_grad for p in backbone.body.stages[0].parameters())
    assert all(p.requires_grad for p in backbone.body.stages[1].parameters())


def test_official_keys():
    assert official_key("stem.stem_2/norm.running_mean") == "stem.1.bn.running_mean"
    assert official_key("stage4.OSA4_2.layers.3.OSA4_2_3/conv.weight") == "stages.2.blocks.1.conv_mid.3.conv.weight"
    assert official_key("stage2.OSA2_1.concat.OSA2_1_concat/norm.bias") == "stages.0.blocks.0.conv_concat.bn.bias"
    assert official_key("stage5.OSA5_1.ese.fc.bias") == "stages.3.blocks.0.attn.fc.bias"
    assert official_key("stage4.OSA5_1.ese.fc.bias") is None  # stage and module numbers must agree
    assert official_key("classifier.weight") is None


def test_official_imagenet_weights_load_through_pretrained_path(tmp_path):
    source = VoVNetBackbone("ese_vovnet19b", [2, 3, 4], norm="bn")
    inverse = {}
    for j in (1, 2, 3):
        for part, layer in (("conv", "conv"), ("norm", "bn")):
            inverse[f"stem.{j - 1}.{layer}"] = f"stem.stem_{j}/{part}"
    state = {}
    for key, value in source.body.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        parts = key.split(".")
        if parts[0] == "stem":
            name = f"stem.stem_{int(parts[1]) + 1}/{'conv' if parts[2] == 'conv' else 'norm'}.{parts[3]}"
        else:
            stage, block = int(parts[1]) + 2, int(parts[3]) + 1
            module = f"stage{stage}.OSA{stage}_{block}"
            if parts[4] == "conv_mid":
                layer = parts[5]
                name = f"{module}.layers.{layer}.OSA{stage}_{block}_{layer}/{'conv' if parts[6] == 'conv' else 'norm'}.{parts[7]}"
            elif parts[4] == "conv_concat":
                name = f"{module}.concat.OSA{stage}_{block}_concat/{'conv' if parts[5] == 'conv' else 'norm'}.{parts[6]}"
            else:
                name = f"{module}.ese.fc.{parts[6]}"
        assert official_key(name) == key
        state[f"backbone.bottom_up.{name}"] = torch.randn_like(value.float()) if value.is_floating_point() else value
    state["linear.weight"] = torch.zeros(10, 1024)  # a classifier: ignored
    torch.save({"model": state}, tmp_path / "vovnet19_ese_detectron2.pth")
    loaded = VoVNetBackbone("ese_vovnet19b", [2, 3, 4], pretrained_path=str(tmp_path / "vovnet19_ese_detectron2.pth"))
    torch.testing.assert_close(
        loaded.body.stages[3].blocks[0].attn.fc.weight, state["backbone.bottom_up.stage5.OSA5_1.ese.fc.weight"]
    )
    del state["backbone.bottom_up.stage3.OSA3_1.ese.fc.bias"]
    torch.save(state, tmp_path / "incomplete.pth")
    with pytest.raises(ValueError, match=r"stages\.1\.blocks\.0\.attn\.fc\.bias"):
        VoVNetBackbone("ese_vovnet19b", [2, 3, 4], pretrained_path=str(tmp_path / "incomplete.pth"))
    # Another configuration's weights (VoVNet-19's into VoVNet-39): refused, naming the layout.
    with pytest.raises(ValueError, match="do not match the official VoVNet layout"):
        VoVNetBackbone("ese_vovnet39b", [2, 3, 4], pretrained_path=str(tmp_path / "vovnet19_ese_detectron2.pth"))


def test_bad_arguments_are_named():
    assert "ese_vovnet19b" in VOVNET_CONFIGS and "ese_vovnet99b" in VOVNET_CONFIGS
    with pytest.raises(ValueError, match="unknown configuration"):
        VoVNetBackbone("vovnet1000", [2, 3, 4])
    with pytest.raises(ValueError, match="eSE"):
        VoVNetBackbone("vovnet39a", [2, 3, 4], ese_every_block=True)
    with pytest.raises(ValueError, match="out_indices"):
        VoVNetBackbone("ese_vovnet19b", [4, 2])

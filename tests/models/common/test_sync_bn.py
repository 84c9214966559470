"""SyncBatchNorm conversion keeps timm's fused activations, in the backbone (`norm: sync_bn`) and in the Lightning
plugin that `trainer/ddp.yaml` installs; in eval mode a converted network computes exactly what it did before."""
import pytest
import torch
from timm.layers.norm_act import BatchNormAct2d, SyncBatchNormAct
from torch import nn

from models.common.backbone import TimmBackbone
from models.common.sync_bn import TimmSyncBatchNorm
from models.common.vovnet import VoVNetBackbone
from tests.experiments.conftest import REPO_ROOT

# (builder, out_indices): a plain-BatchNorm ResNet, and three timm families whose BatchNorm carries an activation.
BACKBONES = {
    "resnet": lambda norm: TimmBackbone("resnet10t", [2, 3, 4], norm=norm),
    "darknet53": lambda norm: TimmBackbone("darknet53", [3, 4, 5], norm=norm),
    "vovnet39": lambda norm: VoVNetBackbone("ese_vovnet39b", [1, 2, 3], norm=norm),
    "efficientnet": lambda norm: TimmBackbone("efficientnet_b0", [2, 3, 4], norm=norm),
}


def _randomised(module: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine terms, so a dropped activation cannot hide behind BN's identity."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.running_mean.copy_(torch.randn(layer.num_features, generator=generator) * 0.1)
                layer.running_var.copy_(torch.rand(layer.num_features, generator=generator) + 0.5)
                layer.weight.copy_(torch.rand(layer.num_features, generator=generator) + 0.5)
                layer.bias.copy_(torch.randn(layer.num_features, generator=generator) * 0.1)
    return module.eval()


def _outputs(backbone: nn.Module) -> list[torch.Tensor]:
    with torch.no_grad():
        return backbone(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_sync_bn_conversion_keeps_eval_outputs_identical(name):
    torch.manual_seed(0)
    plain = _randomised(BACKBONES[name]("bn"))
    expected = _outputs(plain)

    torch.manual_seed(0)
    synced = BACKBONES[name]("sync_bn")
    synced.load_state_dict(plain.state_dict())
    synced.eval()
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    assert not any(type(m) in (nn.BatchNorm2d, BatchNormAct2d) for m in synced.modules())
    for got, want in zip(_outputs(synced), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)

    # The trainer plugin on the whole module, and back (Lightning reverts after fitting).
    plugin = TimmSyncBatchNorm()
    converted = plugin.apply(_randomised(BACKBONES[name]("bn")).requires_grad_(False))
    converted.load_state_dict(plain.state_dict())
    converted.eval()
    for got, want in zip(_outputs(converted), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    reverted = plugin.revert(converted).eval()
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in reverted.modules())
    if any(isinstance(m, BatchNormAct2d) for m in plain.modules()):
        assert any(type(m) is BatchNormAct2d for m in reverted.modules())
    for got, want in zip(_outputs(reverted), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_plugin_converts_timm_norm_act_with_its_activation():
    layer = BatchNormAct2d(8, act_layer=nn.LeakyReLU)
    converted = TimmSyncBatchNorm().apply(nn.Sequential(layer))[0]
    assert isinstance(converted, SyncBatchNormAct) and isinstance(converted.act, nn.LeakyReLU)


def test_ddp_trainer_config_installs_the_plugin(tmp_path):
    from benchmarks.lightning_cli import run_lightning

    cli = run_lightning(
        ["fit", "--config", str(REPO_ROOT / "experiments/configs/quickstart/yolact.yaml"),
         "--config", str(REPO_ROOT / "experiments/configs/trainer/ddp.yaml"),
         "--trainer.accelerator=cpu", "--trainer.devices=1", f"--trainer.default_root_dir={tmp_path}"],
        run=False,
    )
    layer_sync = cli.trainer.strategy._layer_sync
    assert type(layer_sync) is TimmSyncBatchNorm

"""InstanceSegmentationModule's recipe rules: linear batch scaling of lr / steps / max_steps, the per-architecture
weight-decay rule, and the BatchNorm refusals (dead frozen branches, BN on too few images)."""
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from datamodules.coco import CocoDataModule
from models.base import weight_decay_groups
from tests.models.tiny_model import TinyInstanceModel


@pytest.fixture(scope="module")
def root(small_synthetic_root):
    return str(small_synthetic_root)


@pytest.fixture(scope="module")
def classes(root):
    return CocoDataModule(root=root).num_classes


def _fit(model, root: str, tmp_path: Path, batch_size: int = 2, **trainer_kwargs):
    settings = dict(default_root_dir=tmp_path, accelerator="cpu", devices=1, max_steps=8, limit_train_batches=1,
                    limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
    settings.update(trainer_kwargs)
    trainer = L.Trainer(**settings)
    trainer.fit(model, datamodule=CocoDataModule(root=root, batch_size=batch_size))
    return trainer


def test_linear_scaling_of_lr_steps_warmup_and_max_steps(root, classes, tmp_path, capsys):
    # 2 images per step against a reference of 8: lr x 1/4, every step count x 4.
    model = TinyInstanceModel(classes, lr=0.04, lr_steps=[2, 3], warmup_steps=1, reference_batch_size=8, evaluate=False)
    trainer = _fit(model, root, tmp_path, batch_size=2, max_steps=2, limit_train_batches=4)
    assert model.schedule["factor"] == pytest.approx(0.25)
    assert model.schedule["lr"] == pytest.approx(0.01)
    assert model.schedule["lr_steps"] == [8, 12] and model.schedule["warmup_steps"] == 4
    assert model.schedule["max_steps"] == 8 and trainer.max_steps == 8 and trainer.global_step == 8
    assert trainer.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(0.01)
    assert trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0].steps == [8, 12]
    assert model.schedule["written"] == {"lr": 0.04, "lr_steps": [2, 3], "warmup_steps": 1, "max_steps": 2}
    lines = [line for line in capsys.readouterr().out.splitlines() if "linear scaling" in line]
    assert len(lines) == 1
    assert "lr 0.04 -> 0.01" in lines[0] and "max_steps 2 -> 8" in lines[0] and "[2, 3] -> [8, 12]" in lines[0]


def test_gradient_accumulation_counts_in_the_batch(root, classes, tmp_path):
    model = TinyInstanceModel(classes, lr=0.01, reference_batch_size=2, evaluate=False)
    _fit(model, root, tmp_path, batch_size=2, max_steps=4, accumulate_grad_batches=2, limit_train_batches=8)
    assert model.schedule["batch_size"] == 4 and model.schedule["lr"] == pytest.approx(0.02)
    assert model.schedule["max_steps"] == 2


def test_without_a_reference_nothing_is_scaled(root, classes, tmp_path):
    model = TinyInstanceModel(classes, lr=0.04, lr_steps=[2], evaluate=False)
    trainer = _fit(model, root, tmp_path, max_steps=3, limit_train_batches=3)
    assert model.schedule == {"lr": 0.04, "lr_steps": [2], "warmup_steps": 0, "scaled": False}
    assert trainer.global_step == 3


class _Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


@pytest.mark.parametrize(("rule", "exempt"), [
    ("skip_norm", {"bn.weight", "bn.bias", "gn.weight", "gn.bias", "ln.weight", "ln.bias"}),
    ("all", set()),
    ("skip_bias_and_norm", {"bn.weight", "bn.bias", "gn.weight", "gn.bias", "ln.weight", "ln.bias", "conv.bias",
                            "fc.bias"}),
])
def test_weight_decay_rules(rule, exempt):
    module = _Norms()
    groups = weight_decay_groups(module, 1e-4, rule)
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    names = {name: p for name, p in module.named_parameters() if p.requires_grad}
    assert set(decay_of) == {id(p) for p in names.values()}  # every trainable parameter once, frozen ones never
    assert {name for name, p in names.items() if decay_of[id(p)] == 0.0} == exempt


def test_architecture_defaults_of_the_weight_decay_rule():
    from models.istr import ISTR
    from models.mask_rcnn import MaskRCNN
    from models.yolact import YOLACT
    from models.centermask import CenterMask

    assert (MaskRCNN.WEIGHT_DECAY_RULE, CenterMask.WEIGHT_DECAY_RULE) == ("skip_norm", "skip_norm")  # detectron2
    assert (YOLACT.WEIGHT_DECAY_RULE, ISTR.WEIGHT_DECAY_RULE) == ("all", "all")
    # and the configured optimizer follows it: a conv bias is decayed under detectron2's rule
    model = TinyInstanceModel(3, weight_decay=1e-4)
    groups = model.configure_optimizers()["optimizer"].param_groups
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert decay_of[id(params["stem.0.bias"])] == 1e-4 and decay_of[id(params["stem.1.weight"])] == 0.0


def test_bad_recipe_arguments_are_refused():
    with pytest.raises(ValueError, match="weight_decay_rule must be one of"):
        TinyInstanceModel(3, weight_decay_rule="detectron")
    with pytest.raises(ValueError, match="reference_batch_size must be a positive int"):
        TinyInstanceModel(3, reference_batch_size=0)


class _BNModel(TinyInstanceModel):
    BN_MIN_BATCH = 6

    def __init__(self, num_classes, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.stem[1] = nn.BatchNorm2d(8)


def test_bn_trained_on_fewer_images_than_the_architecture_minimum_is_refused(root, classes, tmp_path):
    with pytest.raises(ValueError, match=r"BatchNorm layers train on 2 images \(per device\).*minimum of 6"):
        _fit(_BNModel(classes, evaluate=False), root, tmp_path, batch_size=2, max_steps=1)
    # the config may lower the minimum explicitly
    _fit(_BNModel(classes, evaluate=False, bn_min_batch=2), root, tmp_path, batch_size=2, max_steps=1)


def test_frozen_bn_from_scratch_is_refused_at_fit(root, classes, tmp_path):
    from models.mask_rcnn import MaskRCNN

    model = MaskRCNN(num_classes=classes, backbone="resnet10t", pretrained=False, norm="frozen_bn", fpn_channels=16,
                     min_size=64, max_size=64, box_head_width=16, mask_head_channels=8, mask_head_layers=1,
                     evaluate=False)
    with pytest.raises(ValueError, match="frozen BatchNorm layers have scale 0.*pretrained: false.*norm: frozen_bn"):
        _fit(model, root, tmp_path, max_steps=1)

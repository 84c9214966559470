"""InstanceSegmentationModule through the tiny model: hyper-parameters, schedule, weight decay, non-finite steps,
a short real fit with evaluation and metrics.json, checkpoints, and the step-skip under 2-process DDP."""
import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch.loggers import CSVLogger

from datamodules.coco import CocoDataModule
from datamodules.evaluation import CocoEvaluator
from models.base import InstanceSegmentationModule
from tests.models.tiny_model import TinyInstanceModel


def _trainer(root_dir: Path, **overrides) -> L.Trainer:
    settings = dict(
        default_root_dir=root_dir,
        accelerator="cpu",
        devices=1,
        max_steps=3,
        limit_train_batches=3,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        logger=CSVLogger(root_dir),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    settings.update(overrides)
    return L.Trainer(**settings)


@pytest.fixture(scope="module")
def datamodule(small_synthetic_root):
    return CocoDataModule(root=str(small_synthetic_root), batch_size=2)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, datamodule):
    """A 3-step fit (validation of 2 batches at the end), its trainer and the checkpoint it wrote."""
    L.seed_everything(0)
    model = TinyInstanceModel(datamodule.num_classes, width=4, lr=0.05, warmup_steps=2, lr_steps=[2])
    trainer = _trainer(tmp_path_factory.mktemp("fit"))
    trainer.fit(model, datamodule=datamodule)
    return model, trainer, Path(trainer.checkpoint_callback.best_model_path)


def _lrs(model: InstanceSegmentationModule, steps: int) -> list[float]:
    config = model.configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "step"
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_warmup_and_multistep_schedule():
    model = TinyInstanceModel(3, lr=0.1, warmup_steps=4, warmup_factor=0.2, lr_steps=[6, 8], lr_gamma=0.5)
    expected = [0.1 * (0.2 + 0.8 * t / 4) for t in range(4)] + [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    assert _lrs(model, 10) == pytest.approx(expected, rel=1e-9)


def test_cosine_schedule_reaches_zero_at_the_trainer_length():
    model = TinyInstanceModel(3, lr=0.1, lr_schedule="cosine", optimizer="adamw")
    model.trainer = L.Trainer(max_steps=10, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    lrs = _lrs(model, 11)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.05)
    assert lrs[10] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(lrs[:10], lrs[1:11]))


def test_constant_schedule():
    assert _lrs(TinyInstanceModel(3, lr=0.02, lr_schedule="constant"), 5) == pytest.approx([0.02] * 5)


def test_no_weight_decay_on_norm_layers_and_biases():
    model = TinyInstanceModel(3, weight_decay=1e-3, weight_decay_rule="skip_bias_and_norm")
    optimizer = model.configure_optimizers()["optimizer"]
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    names = dict(model.named_parameters())
    assert set(decay_of) == {id(p) for p in names.values()}
    assert decay_of[id(names["stem.0.weight"])] == 1e-3  # conv weight
    assert decay_of[id(names["box_class_head.weight"])] == 1e-3
    for name in ("stem.0.bias", "stem.1.weight", "stem.1.bias", "mask_head.bias", "box_class_head.bias"):
        assert decay_of[id(names[name])] == 0.0, name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(optimizer="adam"), "optimizer must be one of"),
        (dict(lr_schedule="poly"), "lr_schedule must be one of"),
        (dict(lr=0.0), "lr must be"),
        (dict(lr_steps=[5, 3]), "strictly increasing"),
        (dict(lr_schedule="cosine", lr_steps=[5]), "only apply to lr_schedule='multistep'"),
        (dict(warmup_factor=0.0), "warmup_factor"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(momentum=1.0), "momentum"),
        (dict(loss_weights={"box": 2.0}), "loss_weights: expected loss_"),
        (dict(loss_weights={"loss_box": -1.0}), "loss_weights: expected loss_"),
        (dict(loss_weights={"loss_box": float("nan")}), "loss_weights: expected loss_"),
    ],
)
def test_bad_hyperparameters_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TinyInstanceModel(3, **kwargs)


def test_base_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        InstanceSegmentationModule(3)


def test_hyperparameters_of_subclass_and_base_are_saved():
    model = TinyInstanceModel(5, width=4, lr=0.3)
    hparams = dict(model.hparams)
    assert hparams["num_classes"] == 5 and hparams["width"] == 4 and hparams["num_slots"] == 3
    assert hparams["lr"] == 0.3 and hparams["momentum"] == 0.9 and hparams["lr_schedule"] == "multistep"
    assert hparams["evaluate"] is True and hparams["lr_steps"] is None
    assert "kwargs" not in hparams


def test_jsonargparse_sees_base_arguments_through_kwargs():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(TinyInstanceModel, "model")
    keys = {action.dest for action in parser._actions}
    assert {"model.num_classes", "model.width", "model.lr", "model.lr_steps", "model.evaluate"} <= keys
    config = parser.parse_args(["--model.num_classes=4", "--model.lr=0.5", "--model.lr_steps=[10, 20]"])
    model = parser.instantiate_classes(config).model
    assert model.hparams.lr == 0.5 and model.hparams.lr_steps == [10, 20] and model.hparams.num_classes == 4


def test_compute_losses_in_eval_mode_equals_train_mode(datamodule):
    datamodule.setup("validate")
    images, targets = next(iter(datamodule.val_dataloader()))
    model = TinyInstanceModel(datamodule.num_classes)
    train_losses = model.train().compute_losses(images, targets)
    eval_losses = model.eval().compute_losses(images, targets)
    assert set(eval_losses) == {"loss_cls", "loss_box", "loss_mask"} == set(train_losses)
    for name, value in eval_losses.items():
        assert torch.isfinite(value) and torch.equal(value, train_losses[name]), name


def test_loss_weights_scale_their_terms_in_the_total(datamodule):
    datamodule.setup("validate")
    images, targets = next(iter(datamodule.val_dataloader()))
    torch.manual_seed(0)
    model = TinyInstanceModel(datamodule.num_classes, loss_weights={"loss_box": 3.0, "loss_mask": 0.0})
    losses = model.compute_losses(images, targets)
    expected = losses["loss_cls"] + 3.0 * losses["loss_box"]
    torch.testing.assert_close(model._total_loss(losses), expected)
    with pytest.raises(ValueError, match=r"loss_weights names \['loss_giou'\].*its terms are \['loss_box'"):
        TinyInstanceModel(datamodule.num_classes, loss_weights={"loss_giou": 1.0})._total_loss(losses)


def test_fit_logs_validation_metrics_and_writes_metrics_json(fitted):
    model, trainer, _ = fitted
    record = json.loads((Path(trainer.log_dir) / "metrics.json").read_text())
    assert record["stage"] == "fit" and record["global_step"] == 3 and record["skipped_steps"] == 0
    for iou_type in ("bbox", "segm"):
        for stat in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"):
            key = f"val/{iou_type}_{stat}"
            assert key in trainer.callback_metrics, key
            assert record[key] == -1.0 or 0.0 <= record[key] <= 1.0, key
    for name in ("val/loss", "val/loss_cls", "val/loss_box", "val/loss_mask"):
        assert math.isfinite(record[name]), name
    assert record["val/loss"] == pytest.approx(record["val/loss_cls"] + record["val/loss_box"] + record["val/loss_mask"])
    assert {"train/loss", "train/loss_mask", "train/skipped_steps"} <= set(trainer.callback_metrics)
    assert not any(key.startswith("train/") for key in record)


def test_metrics_json_holds_the_evaluator_numbers(fitted, datamodule):
    # Re-run the final weights over the same two validation batches: metrics.json must hold exactly those numbers.
    model, trainer, _ = fitted
    record = json.loads((Path(trainer.log_dir) / "metrics.json").read_text())
    evaluator = CocoEvaluator(datamodule.ann_file("val"), datamodule.label_to_cat_id)
    model.eval()
    with torch.no_grad():
        for batch_index, (images, targets) in enumerate(datamodule.val_dataloader()):
            if batch_index == 2:
                break
            evaluator.update(model(images), targets)
    results = evaluator.compute()
    for iou_type, stats in results.items():
        for stat, value in stats.items():
            assert record[f"val/{iou_type}_{stat}"] == value


def test_metrics_json_keeps_full_precision(datamodule, tmp_path, monkeypatch):
    # self.log keeps float32; metrics.json must carry the evaluator's own float64 values.
    import datamodules.evaluation

    class ThirdsEvaluator(CocoEvaluator):
        def compute(self):
            return {iou_type: {stat: 1 / 3 for stat in stats} for iou_type, stats in super().compute().items()}

    monkeypatch.setattr(datamodules.evaluation, "CocoEvaluator", ThirdsEvaluator)
    trainer = _trainer(tmp_path, logger=False, limit_val_batches=1)
    trainer.validate(TinyInstanceModel(datamodule.num_classes), datamodule=datamodule, verbose=False)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["val/segm_AP"] == 1 / 3 and record["val/bbox_ARl"] == 1 / 3
    assert float(trainer.callback_metrics["val/segm_AP"]) == pytest.approx(1 / 3, rel=1e-6)


def test_checkpoint_round_trip_and_test_stage(fitted, datamodule, tmp_path):
    model, _, checkpoint = fitted
    loaded = TinyInstanceModel.load_from_checkpoint(checkpoint)
    assert dict(loaded.hparams) == dict(model.hparams) and loaded.hparams.width == 4
    for name, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name
    assert not any("evaluator" in key for key in torch.load(checkpoint, weights_only=True)["state_dict"])

    trainer = _trainer(tmp_path, logger=False)
    trainer.test(loaded, datamodule=datamodule, verbose=False)
    record = json.loads((tmp_path / "metrics.json").read_text())  # logger=False: default_root_dir
    assert record["stage"] == "test" and "test/segm_AP" in record and "test/loss" in record
    predictions = trainer.predict(loaded, datamodule=datamodule)
    first = predictions[0][0]
    assert first["image_id"] == datamodule.val_dataset[0][1]["image_id"]
    assert first["masks"].dtype == torch.bool and first["masks"].shape[-2:] == datamodule.val_dataset[0][0].shape[-2:]


def test_nonfinite_loss_skips_the_optimizer_step(datamodule, tmp_path):
    model = TinyInstanceModel(datamodule.num_classes, nonfinite_loss=True, evaluate=False, weight_decay=0.1)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 2 and model.skipped_steps == 2
    assert trainer.callback_metrics["train/skipped_steps"] == 2
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed by a skipped step"
    assert all(not state for state in trainer.optimizers[0].state.values())  # no momentum buffer was created

    # Positive control: the same run with finite losses does move the weights.
    model.nonfinite_loss = False
    _trainer(tmp_path / "finite", max_steps=2, limit_val_batches=0).fit(model, datamodule=datamodule)
    assert not torch.equal(model.stem[0].weight, before["stem.0.weight"])
    assert model.skipped_steps == 2


class _NonFiniteOnRankZero(TinyInstanceModel):
    """NaN loss on rank 0 only, at global step 1."""

    def compute_losses(self, images, targets):
        losses = super().compute_losses(images, targets)
        if self.training and self.global_step == 1 and self.global_rank == 0:
            losses["loss_cls"] = losses["loss_cls"] * float("nan")
        return losses


class _CheckReplicas(L.Callback):
    def on_train_end(self, trainer, pl_module):
        weights = trainer.strategy.all_gather(pl_module.stem[0].weight.detach())
        assert torch.equal(weights[0], weights[1]), "replicas diverged"
        assert pl_module.skipped_steps == 1 and trainer.global_step == 4


def _collate(batch):
    return [image for image, _ in batch], [target for _, target in batch]


def _toy_sample(index: int):
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(index))
    masks = torch.zeros(1, 32, 32, dtype=torch.uint8)
    masks[0, 4:20, 6:24] = 1
    target = {
        "boxes": torch.tensor([[6.0, 4.0, 24.0, 20.0]]), "labels": torch.tensor([1]), "masks": masks,
        "iscrowd": torch.tensor([0]), "image_id": index, "orig_size": (32, 32),
    }
    return image, target


def _toy_loader() -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader([_toy_sample(i) for i in range(16)], batch_size=2, collate_fn=_collate)


def test_evaluate_false_validates_losses_only(tmp_path):
    trainer = _trainer(tmp_path, logger=False)
    trainer.validate(TinyInstanceModel(3, evaluate=False), dataloaders=_toy_loader(), verbose=False)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["stage"] == "validate" and math.isfinite(record["val/loss_mask"])
    assert not any("AP" in key for key in record)


def test_evaluate_true_without_a_datamodule_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="evaluate=True needs a datamodule"):
        _trainer(tmp_path, logger=False).validate(TinyInstanceModel(3), dataloaders=_toy_loader(), verbose=False)


# Two spawned processes cost ~20 s of imports on a 2-core machine, hence the slow tier.
@pytest.mark.slow
def test_nonfinite_loss_on_one_process_skips_the_step_on_all(tmp_path):
    loader = _toy_loader()
    model = _NonFiniteOnRankZero(3, width=4, evaluate=False)
    trainer = L.Trainer(
        default_root_dir=tmp_path, accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=4, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[_CheckReplicas()],
    )
    trainer.fit(model, loader)  # the callback's assertions run in each process; a failure fails the fit

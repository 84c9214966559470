"""YOLACT as configured: hyper-parameter checks, the configs' arguments, a few training steps through the CLI."""
import pytest
import yaml

from models.yolact import YOLACT
from tests.models.yolact.common import CONFIGS, TINY


def test_bad_hyperparameters_are_rejected():
    with pytest.raises(ValueError, match="nms"):
        YOLACT(num_classes=3, **TINY, nms="soft")
    with pytest.raises(ValueError, match="anchor_scales"):
        YOLACT(num_classes=3, **{**TINY, "anchor_scales": [8, 16]})


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

"""A few training steps of every quickstart config through the real `maskbench fit`, then `maskbench validate`
on the checkpoint it wrote: the path a user takes, config file to metrics.json."""
import importlib
import json
from pathlib import Path

import pytest
import torch
import yaml

import models
from experiments.cli import main

QUICKSTART = Path(__file__).resolve().parents[2] / "experiments" / "configs" / "quickstart"
QUICKSTART_MODELS = [name for name in models.MODELS if (QUICKSTART / f"{name}.yaml").exists()]
# The 16-image test set holds ~30 masks: ISTR's PCA codec, fitted on them at setup, can span no more dimensions.
SMALL_DATA_OVERRIDES = {"istr": ["--model.init_args.codec_components", "16"]}


def test_every_registered_model_has_a_quickstart_config():
    assert QUICKSTART_MODELS == list(models.MODELS)


@pytest.mark.parametrize("name", QUICKSTART_MODELS)
def test_fit_then_validate_through_the_cli(name, small_synthetic_root, tmp_path):
    config = QUICKSTART / f"{name}.yaml"
    run_dir = tmp_path / "run"
    shrink = [
        "--data.root", str(small_synthetic_root),
        "--data.batch_size", "2",
        "--model.init_args.bn_min_batch", "2",  # a smoke test: BN on 2 images (YOLACT refuses fewer than 6)
        "--data.num_workers", "0",
        "--trainer.max_steps", "2",
        "--trainer.val_check_interval", "2",
        "--trainer.limit_val_batches", "2",
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.enable_progress_bar", "false",
        *SMALL_DATA_OVERRIDES.get(name, []),
    ]
    torch.manual_seed(0)
    assert main(["fit", "--config", str(config), *shrink]) == 0

    log_dirs = sorted(run_dir.glob("lightning_logs/version_*"))
    assert len(log_dirs) == 1
    log_dir = log_dirs[0]
    metrics = json.loads((log_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 2
    for key in ("val/segm_AP", "val/bbox_AP", "val/loss"):
        assert key in metrics
    # The resolved config is saved with the run; the checkpoint carries the class count read from the dataset.
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    module_name, class_name = saved["model"]["class_path"].rsplit(".", 1)
    assert getattr(importlib.import_module(module_name), class_name) is models.MODELS[name]
    categories = json.loads((small_synthetic_root / "annotations" / "instances_val2017.json").read_text())["categories"]
    checkpoint = next((log_dir / "checkpoints").glob("*.ckpt"))
    hparams = torch.load(checkpoint, map_location="cpu", weights_only=False)["hyper_parameters"]
    assert hparams["num_classes"] == len(categories)

    val_dir = tmp_path / "validate"
    assert main(["validate", "--config", str(config), *shrink[:8],
                 "--trainer.limit_val_batches", "2", "--trainer.default_root_dir", str(val_dir),
                 *SMALL_DATA_OVERRIDES.get(name, []), "--ckpt_path", str(checkpoint)]) == 0
    validated = json.loads(next(val_dir.glob("lightning_logs/version_*/metrics.json")).read_text())
    assert validated["stage"] == "validate"
    # Same weights, same images: the validation numbers of the checkpoint are those of the end of training.
    assert validated["val/segm_AP"] == pytest.approx(metrics["val/segm_AP"], abs=1e-9)
    assert validated["val/bbox_AP"] == pytest.approx(metrics["val/bbox_AP"], abs=1e-9)

"""Fixtures of the experiments tests: a cheap model config (BlobModel) that reaches non-zero AP in a few steps."""
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]

BLOB_CONFIG = {
    "seed_everything": 0,  # fixed: LightningCLI's default draws a random seed per command
    "model": {
        "class_path": "tests.experiments.blob_model.BlobModel",
        "init_args": {"width": 8, "optimizer": "adamw", "lr": 0.05, "weight_decay": 0.0, "lr_schedule": "constant"},
    },
    "data": {"batch_size": 2, "num_workers": 0},
    "trainer": {
        "accelerator": "cpu", "devices": 1, "max_steps": 6, "check_val_every_n_epoch": None,
        "val_check_interval": 6, "num_sanity_val_steps": 0, "enable_progress_bar": False,
        "enable_model_summary": False, "log_every_n_steps": 1,
    },
}


@pytest.fixture(scope="session")
def padded_synthetic_root():
    """16 train / 5 val images at 96 px: 5 val images over 2 processes makes DistributedSampler pad one."""
    from datamodules.synthetic import synthetic_root

    return synthetic_root(num_train=16, num_val=5, image_size=96, seed=1)


@pytest.fixture
def blob_config(tmp_path, padded_synthetic_root):
    """A config file for BlobModel on the padded synthetic set: 6 steps, then validation."""
    config = {**BLOB_CONFIG, "data": {**BLOB_CONFIG["data"], "root": str(padded_synthetic_root)}}
    path = tmp_path / "blob.yaml"
    path.write_text(yaml.safe_dump(config))
    return path

"""Test-wide settings.

The synthetic dataset cache goes to the repo's own .cache/ (git-ignored) rather than the user's home, so the
tests neither write outside the checkout nor depend on what an earlier run left there elsewhere.
"""
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("MASKBENCH_CACHE", str(REPO_ROOT / ".cache"))
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="session")
def small_synthetic_root():
    """A small synthetic COCO-format dataset (cached): 16 train / 6 val images at 96 px."""
    from datamodules.synthetic import synthetic_root

    return synthetic_root(num_train=16, num_val=6, image_size=96, seed=0)

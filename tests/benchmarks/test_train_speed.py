"""Training throughput through Lightning, with the loader alone next to it (no speed is asserted)."""
import pytest

from benchmarks.dataloader_speed import measure as measure_loader
from benchmarks.train_speed import format_table, measure_training
from datamodules.coco import CocoDataModule
from models import MODELS
from tests.models.test_contract import TINY_CONFIGS


def test_training_throughput_counts_the_timed_steps_and_the_loader(small_synthetic_root):
    datamodule = CocoDataModule(root=str(small_synthetic_root), batch_size=2)
    # BatchNorm trains on 2 images here: the tiny model's batch, below YOLACT's official minimum of 6.
    model = MODELS["yolact"](num_classes=datamodule.num_classes, **TINY_CONFIGS["yolact"], bn_min_batch=2)
    training = measure_training(model, datamodule, device="cpu", precision="32", warmup=1, steps=1)
    assert training["timed_steps"] == 1 and training["timed_images"] == 2
    assert training["images_per_s"] == pytest.approx(2 / training["timed_seconds"])
    assert 0 <= training["loader_wait_share"] < 1 and training["batch_size"] == 2
    loader = measure_loader(datamodule, epochs=10, warmup=1, batches=2)
    assert loader["timed_images"] == 4 and loader["padding_ratio"] >= 1.0 and loader["grouped_by_aspect_ratio"]
    record = {"training": training, "loader": loader, "loader_over_training": 3.0}
    assert "3.0x" in format_table([record], ["yolact"])
    with pytest.raises(ValueError, match="warmup >= 1"):
        measure_training(model, datamodule, device="cpu", precision="32", warmup=0, steps=2)

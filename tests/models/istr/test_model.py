"""ISTR with its PCA mask codec: a codec file, a wrong or missing one, the fit at setup, the checkpoint, the cache."""
import lightning as L
import pytest
import torch

from datamodules.coco import CocoDataModule
from models.istr import ISTR
from models.istr.codec_data import cached_codec_path, fit_codec_on_split
from models.istr.mask_codec import CodecError
from tests.models.istr.common import TINY, codec_file
from tests.models.test_contract import tiny_batch


def test_model_with_a_pca_codec_file_predicts_and_trains(tmp_path):
    path = codec_file(tmp_path)
    torch.manual_seed(0)
    model = ISTR(num_classes=3, codec_path=path, **TINY)
    assert bool(model.codec.ready)
    images, targets = tiny_batch()
    with torch.no_grad():
        predictions = model.eval()(images)
    for prediction, image in zip(predictions, images):
        count = len(prediction["scores"])  # 10 less the boxes clipped to nothing (untrained boxes can be)
        assert 0 < count <= 10 and prediction["masks"].dtype == torch.bool
        assert prediction["masks"].shape == (count, *image.shape[-2:])
        assert bool((prediction["scores"][:-1] >= prediction["scores"][1:]).all())
    losses = model.train().compute_losses(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.model.conv1.weight.grad.abs().sum() > 0
    assert model.codec.components.grad is None  # buffers: the codec is fixed


def test_codec_file_of_another_size_is_refused_and_missing_codec_is_explained(tmp_path):
    path = codec_file(tmp_path, components=6)
    with pytest.raises(CodecError, match="K=6 components of 14x14 masks, the model expects K=8, 14x14"):
        ISTR(num_classes=3, codec_path=path, **TINY)
    model = ISTR(num_classes=3, codec_path=str(tmp_path / "not-yet.pt"), **TINY)
    with pytest.raises(CodecError, match="not fitted"):
        model(tiny_batch()[0])
    with pytest.raises(ValueError, match="data-free"):
        ISTR(num_classes=3, codec="dct", codec_path=path, **{k: v for k, v in TINY.items()})


def test_fit_fits_the_codec_on_the_training_split_and_the_checkpoint_carries_it(small_synthetic_root, tmp_path):
    path = tmp_path / "codecs" / "synthetic.pt"
    datamodule = CocoDataModule(root=str(small_synthetic_root), batch_size=2)
    torch.manual_seed(0)
    model = ISTR(num_classes=datamodule.num_classes, codec_path=str(path), evaluate=False,
                 **{**TINY, "codec_components": 16, "codec_mask_size": 28})
    trainer = L.Trainer(max_steps=1, limit_train_batches=1, limit_val_batches=0, logger=False, accelerator="cpu",
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=datamodule)
    assert path.is_file() and bool(model.codec.ready)
    image_dir, ann_file = datamodule.split_paths("train")
    expected = fit_codec_on_split(image_dir, ann_file, 16, 28, seed=0, progress=False)
    torch.testing.assert_close(model.codec.components, expected.components)
    assert model.codec.source["num_masks"] == expected.source["num_masks"] > 16

    checkpoint = tmp_path / "model.ckpt"
    trainer.save_checkpoint(checkpoint)
    path.unlink()  # the checkpoint alone must carry the codec
    restored = ISTR.load_from_checkpoint(checkpoint)
    torch.testing.assert_close(restored.codec.components, model.codec.components)
    assert bool(restored.codec.ready)


def test_without_a_codec_path_the_codec_is_cached_by_dataset(small_synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MASKBENCH_CACHE", str(tmp_path / "cache"))
    ann_file = str(small_synthetic_root / "annotations" / "instances_train2017.json")
    path = cached_codec_path(ann_file, 8, 14, seed=0)
    assert str(path).startswith(str(tmp_path / "cache" / "istr_codecs"))
    assert path != cached_codec_path(ann_file, 8, 14, seed=1) != cached_codec_path(ann_file, 16, 14, seed=0)
    model = ISTR(num_classes=6, evaluate=False, **TINY)
    trainer = L.Trainer(max_steps=1, limit_train_batches=1, limit_val_batches=0, logger=False, accelerator="cpu",
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=CocoDataModule(root=str(small_synthetic_root), batch_size=2))
    assert path.is_file() and bool(model.codec.ready)

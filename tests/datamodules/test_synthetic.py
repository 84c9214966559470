"""The embedded default dataset: deterministic, COCO-valid, and containing every case the loader must handle."""
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from datamodules import synthetic
from datamodules.synthetic import synthetic_root, write_synthetic_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("syn") / "shapes", num_train=40, num_val=8,
                                   image_size=96, seed=3)


def _coco(root: Path, split: str = "train") -> COCO:
    return COCO(str(root / "annotations" / f"instances_{split}2017.json"))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_parameters_give_identical_bytes(tmp_path):
    first = write_synthetic_dataset(tmp_path / "a", num_train=5, num_val=3, image_size=64, seed=7)
    second = write_synthetic_dataset(tmp_path / "b", num_train=5, num_val=3, image_size=64, seed=7)
    other_seed = write_synthetic_dataset(tmp_path / "c", num_train=5, num_val=3, image_size=64, seed=8)
    assert _files(first) == _files(second)
    assert _files(first) != _files(other_seed)
    assert len(list((first / "train2017").iterdir())) == 5 and len(list((first / "val2017").iterdir())) == 3


def test_categories_are_non_contiguous_and_shared_by_splits(dataset):
    train = json.loads((dataset / "annotations" / "instances_train2017.json").read_text())
    val = json.loads((dataset / "annotations" / "instances_val2017.json").read_text())
    ids = [c["id"] for c in train["categories"]]
    assert len(ids) >= 4
    assert ids != list(range(ids[0], ids[0] + len(ids)))  # gaps, as in COCO
    assert train["categories"] == val["categories"]
    image_ids = {im["id"] for im in train["images"]} | {im["id"] for im in val["images"]}
    assert len(image_ids) == len(train["images"]) + len(val["images"])  # ids unique across splits


def test_every_storage_form_and_empty_images_occur(dataset):
    annotations = json.loads((dataset / "annotations" / "instances_train2017.json").read_text())
    forms = set()
    for a in annotations["annotations"]:
        seg = a["segmentation"]
        if isinstance(seg, list):
            forms.add("polygon")
            if len(seg) > 1:
                forms.add("multi-part polygon")
        elif isinstance(seg["counts"], list):
            forms.add("uncompressed RLE")
            assert a["iscrowd"] == 1
        else:
            forms.add("compressed RLE")
    assert forms == {"polygon", "multi-part polygon", "uncompressed RLE", "compressed RLE"}
    annotated = {a["image_id"] for a in annotations["annotations"]}
    assert any(im["id"] not in annotated for im in annotations["images"])
    assert any(a["iscrowd"] for a in annotations["annotations"])


def test_boxes_areas_and_occlusion_agree_with_the_stored_masks(dataset):
    coco = _coco(dataset)
    for image_id in coco.getImgIds():
        info = coco.imgs[image_id]
        masks = []
        for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            mask = coco.annToMask(a)
            assert mask.shape == (info["height"], info["width"])
            ys, xs = np.nonzero(mask)
            assert a["area"] == mask.sum() > 0
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            masks.append(mask)
        if masks:
            # Only visible parts are stored: no pixel belongs to two annotations.
            assert np.stack(masks).sum(axis=0).max() == 1


def test_all_coco_area_ranges_at_512(tmp_path):
    root = write_synthetic_dataset(tmp_path / "big", num_train=6, num_val=1, image_size=512, seed=0)
    areas = [a["area"] for a in _coco(root).dataset["annotations"] if not a["iscrowd"]]
    assert min(areas) < 32 ** 2
    assert any(32 ** 2 <= area < 96 ** 2 for area in areas)
    assert max(areas) >= 96 ** 2


def test_cached_root_is_generated_once(tmp_path):
    root = synthetic_root(num_train=3, num_val=2, image_size=64, seed=1, cache_dir=str(tmp_path))
    assert root.parent == tmp_path and "n3-v2-s64-seed1" in root.name
    stamp = (root / "annotations" / "instances_train2017.json").stat().st_mtime_ns
    assert synthetic_root(num_train=3, num_val=2, image_size=64, seed=1, cache_dir=str(tmp_path)) == root
    assert (root / "annotations" / "instances_train2017.json").stat().st_mtime_ns == stamp


def test_a_failed_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    real_write_split = synthetic._write_split

    def fail_on_val(root, split_index, *args):
        if split_index == 1:
            raise RuntimeError("killed mid-way")
        real_write_split(root, split_index, *args)

    monkeypatch.setattr(synthetic, "_write_split", fail_on_val)
    with pytest.raises(RuntimeError, match="killed mid-way"):
        write_synthetic_dataset(tmp_path / "shapes", num_train=3, num_val=2, image_size=64)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_a_non_empty_directory(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(FileExistsError, match="taken"):
        write_synthetic_dataset(tmp_path / "taken", num_train=2, num_val=1, image_size=64)

"""The embedded default dataset: deterministic, COCO-valid, and containing every case the loader must handle."""
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

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


def test_cached_root_is_generated_once(tmp_path, monkeypatch):
    root = synthetic_root(num_train=3, num_val=2, image_size=64, seed=1, cache_dir=str(tmp_path))
    assert root.parent == tmp_path and "n3-v2-s64-seed1" in root.name
    stamp = (root / "annotations" / "instances_train2017.json").stat().st_mtime_ns
    monkeypatch.setattr(synthetic, "write_synthetic_dataset", lambda *a, **k: pytest.fail("regenerated"))
    assert synthetic_root(num_train=3, num_val=2, image_size=64, seed=1, cache_dir=str(tmp_path)) == root
    assert (root / "annotations" / "instances_train2017.json").stat().st_mtime_ns == stamp


def test_the_default_val_split_is_the_datamodules_and_names_its_cache(tmp_path, monkeypatch):
    import inspect

    from datamodules.coco import CocoDataModule

    # 200 val images: at 50 the spread of segm AP over val draws was as large as the gaps the demo ranks.
    assert synthetic.DEFAULT_NUM_VAL == 200
    defaults = inspect.signature(CocoDataModule).parameters
    assert defaults["synthetic_num_val"].default == synthetic.DEFAULT_NUM_VAL
    assert defaults["synthetic_num_train"].default == synthetic.DEFAULT_NUM_TRAIN
    written = []
    monkeypatch.setattr(synthetic, "write_synthetic_dataset", lambda root, **kwargs: written.append(Path(root).name))
    with pytest.raises(FileExistsError):  # the stand-in writes nothing: only the default's cache name is checked
        synthetic_root(cache_dir=str(tmp_path))
    assert written == [f"synthetic-{synthetic.VERSION}-simple-n200-v200-s128-seed0"]


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


def test_images_are_rgb_pngs_of_the_recorded_size(dataset):
    shapes = set()
    for split in ("train", "val"):
        records = json.loads((dataset / "annotations" / f"instances_{split}2017.json").read_text())["images"]
        assert len(list((dataset / f"{split}2017").iterdir())) == len(records)
        for record in records:
            with Image.open(dataset / f"{split}2017" / record["file_name"]) as image:
                assert image.mode == "RGB" and image.size == (record["width"], record["height"])
            assert max(record["height"], record["width"]) == 96 and min(record["height"], record["width"]) >= 72
            shapes.add(np.sign(record["height"] - record["width"]))
    assert shapes == {-1, 0, 1} or shapes == {-1, 1}  # landscape and portrait: an H/W swap cannot go unnoticed


def test_instance_counts_crowds_and_occlusion(dataset):
    data = json.loads((dataset / "annotations" / "instances_train2017.json").read_text())
    instances = Counter(a["image_id"] for a in data["annotations"] if not a["iscrowd"])
    annotated = {a["image_id"] for a in data["annotations"]}
    assert annotated == set(instances)  # a crowd region never comes without instances
    assert all(1 <= count <= 6 for count in instances.values())
    assert 0.05 <= 1 - len(annotated) / len(data["images"]) <= 0.10
    sizes = {record["id"]: [record["height"], record["width"]] for record in data["images"]}
    for crowd in (a for a in data["annotations"] if a["iscrowd"]):
        assert crowd["segmentation"]["size"] == sizes[crowd["image_id"]]
        assert sum(crowd["segmentation"]["counts"]) == np.prod(sizes[crowd["image_id"]])
    # Unoccluded polygonal shapes are stored as polygons, so a polygonal class in RLE is an occluded visible part.
    polygonal = {c["id"] for c in data["categories"] if c["supercategory"] == "polygon"}
    assert any(a["category_id"] in polygonal and isinstance(a["segmentation"], dict) and not a["iscrowd"]
               for a in data["annotations"])


def test_ground_truth_as_detections_scores_perfect_ap(dataset, capsys):
    ground_truth = _coco(dataset, "val")
    detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0,
                   "segmentation": ground_truth.annToRLE(a)}
                  for a in ground_truth.dataset["annotations"] if not a["iscrowd"]]
    for iou_type in ("bbox", "segm"):
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(detections), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        assert evaluation.stats[0] == pytest.approx(1.0) and evaluation.stats[1] == pytest.approx(1.0)


def test_a_racing_generation_uses_the_copy_that_won(tmp_path, monkeypatch):
    """The other process renames its complete copy into place while this one is still generating."""
    real_write_split = synthetic._write_split
    final = tmp_path / f"synthetic-{synthetic.VERSION}-simple-n3-v2-s64-seed1"
    raced = []

    def other_process_wins(root, split_index, *args):
        if not raced:
            raced.append(True)
            write_synthetic_dataset(final, num_train=3, num_val=2, image_size=64, seed=1)
        real_write_split(root, split_index, *args)

    monkeypatch.setattr(synthetic, "_write_split", other_process_wins)
    assert synthetic_root(num_train=3, num_val=2, image_size=64, seed=1, cache_dir=str(tmp_path)) == final
    assert raced and list(tmp_path.iterdir()) == [final]  # the loser's staging directory is gone
    assert all(path.is_file() for path in synthetic._annotation_files(final))


def test_an_incomplete_cache_directory_is_reported_not_used(tmp_path):
    final = tmp_path / f"synthetic-{synthetic.VERSION}-simple-n3-v2-s64-seed1"
    final.mkdir()
    (final / "stray").write_text("x")
    with pytest.raises(FileExistsError, match="not a complete synthetic dataset"):
        synthetic_root(num_train=3, num_val=2, image_size=64, seed=1, cache_dir=str(tmp_path))


@pytest.mark.parametrize("bad, name", [({"num_train": 0}, "num_train"), ({"num_val": 2.5}, "num_val"),
                                       ({"image_size": 32}, "image_size"), ({"seed": -1}, "seed"),
                                       ({"style": "noisy"}, "style")])
def test_rejects_bad_parameters(tmp_path, bad, name):
    with pytest.raises(ValueError, match=name):
        write_synthetic_dataset(tmp_path / "shapes", **{"num_train": 2, "num_val": 1, "image_size": 64, **bad})
    assert list(tmp_path.iterdir()) == []


def _pixels_by_role(root: Path, split: str = "train"):
    """(background pixels, pixels of non-crowd objects), each [N, 3] uint8, over the split's images."""
    coco = _coco(root, split)
    background, objects = [], []
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        pixels = np.asarray(Image.open(root / f"{split}2017" / info["file_name"]).convert("RGB"))
        covered = np.zeros(pixels.shape[:2], dtype=bool)
        for annotation in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            mask = coco.annToMask(annotation).astype(bool)
            covered |= mask
            if not annotation["iscrowd"]:
                objects.append(pixels[mask])
        background.append(pixels[~covered])
    return np.concatenate(background), np.concatenate(objects)


def test_simple_style_is_bright_shapes_on_a_dark_background(dataset):
    """The default: every background channel <= 90 plus noise, every object's brightest channel >= 0.7 * 255
    minus shading and noise — the contrast that lets the quickstarts learn from scratch in 150 CPU steps."""
    background, objects = _pixels_by_role(dataset)
    assert np.percentile(background.max(axis=1), 99.9) <= 90 + 8
    assert np.percentile(objects.max(axis=1), 0.1) >= 0.7 * 255 - 15 - 8


def test_textured_style_has_backgrounds_as_bright_as_objects(tmp_path):
    root = write_synthetic_dataset(tmp_path / "textured", num_train=20, num_val=1, image_size=64, seed=3,
                                   style="textured")
    background, objects = _pixels_by_role(root)
    assert (background.max(axis=1) > 200).mean() > 0.05  # bright backgrounds exist
    assert (objects.max(axis=1) < 100).mean() > 0.02  # and dark objects
    assert _files(root) != _files(write_synthetic_dataset(tmp_path / "simple", num_train=20, num_val=1,
                                                          image_size=64, seed=3))


def test_cache_directory_names_the_style(tmp_path):
    simple = synthetic_root(num_train=2, num_val=1, image_size=64, cache_dir=str(tmp_path))
    textured = synthetic_root(num_train=2, num_val=1, image_size=64, cache_dir=str(tmp_path), style="textured")
    assert simple.name == f"synthetic-{synthetic.VERSION}-simple-n2-v1-s64-seed0"
    assert textured.name == f"synthetic-{synthetic.VERSION}-textured-n2-v1-s64-seed0"

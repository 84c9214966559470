"""CocoInstanceDataset and CocoDataModule on the hand-made dataset of conftest.py (see its docstring)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.coco import CocoDataModule, CocoInstanceDataset, DatasetError

from .conftest import HEIGHT, WIDTH

# image id -> annotation ids kept in its target, in file order
KEPT = {11: [101, 102], 12: [103, 104], 13: [105], 14: [108], 15: [], 16: [], 17: [113]}
LABEL_OF_CATEGORY = {1: 0, 5: 1, 90: 2}


def load_all(dataset):
    return {target["image_id"]: (image, target) for image, target in (dataset[i] for i in range(len(dataset)))}


@pytest.fixture
def dataset(coco_dataset):
    return CocoInstanceDataset(str(coco_dataset.image_dir), str(coco_dataset.ann_file))


def test_category_ids_with_gaps_map_to_contiguous_labels_sorted_by_id(dataset):
    assert dataset.label_to_cat_id == [1, 5, 90]
    assert dataset.class_names == ["person", "airplane", "toothbrush"]
    assert dataset.num_classes == 3


def test_targets_hold_the_drawn_masks_boxes_labels_and_crowd_flags(coco_dataset, dataset):
    annotations = {a["id"]: a for a in coco_dataset.data["annotations"]}
    samples = load_all(dataset)
    assert sorted(samples) == sorted(KEPT)
    for image_id, ann_ids in KEPT.items():
        image, target = samples[image_id]
        n = len(ann_ids)
        assert target["boxes"].shape == (n, 4) and target["boxes"].dtype == torch.float32
        assert target["labels"].shape == (n,) and target["labels"].dtype == torch.int64
        assert target["masks"].shape == (n, HEIGHT, WIDTH) and target["masks"].dtype == torch.uint8
        assert target["iscrowd"].shape == (n,) and target["iscrowd"].dtype == torch.int64
        assert target["orig_size"] == (HEIGHT, WIDTH) and isinstance(target["image_id"], int)
        for k, ann_id in enumerate(ann_ids):
            ann = annotations[ann_id]
            x, y, w, h = ann["bbox"]
            assert target["boxes"][k].tolist() == pytest.approx([x, y, x + w, y + h])
            assert target["labels"][k] == LABEL_OF_CATEGORY[ann["category_id"]]
            assert target["iscrowd"][k] == ann["iscrowd"]
            np.testing.assert_array_equal(target["masks"][k].numpy(), coco_dataset.masks[ann_id], err_msg=str(ann_id))
    assert samples[12][1]["iscrowd"].tolist() == [1, 0]
    assert samples[17][1]["iscrowd"].tolist() == [1]


def test_every_image_becomes_rgb_uint8_in_stored_pixel_order(coco_dataset, dataset):
    stored = {name: Image.open(coco_dataset.image_dir / name) for name in
              ("exif_rgb.jpg", "gray.png", "palette.png", "cmyk.jpg", "rgba.png", "degenerate.bmp")}
    assert {name: image.mode for name, image in stored.items()} == {
        "exif_rgb.jpg": "RGB", "gray.png": "L", "palette.png": "P", "cmyk.jpg": "CMYK", "rgba.png": "RGBA",
        "degenerate.bmp": "RGB"}
    assert stored["exif_rgb.jpg"].getexif()[0x0112] == 6 and "transparency" in stored["palette.png"].info
    samples = load_all(dataset)
    for image, _ in samples.values():
        # the EXIF-rotated JPEG included: rotating it would make it 64 high and 48 wide
        assert image.shape == (3, HEIGHT, WIDTH) and image.dtype == torch.uint8
    for image_id, expected in coco_dataset.pixels.items():  # grayscale, RGBA (alpha dropped), BMP, RGB PNG
        as_bytes = samples[image_id][0].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(as_bytes, expected, err_msg=f"image {image_id}")
    for image_id, name in ((13, "palette.png"), (14, "cmyk.jpg")):
        reference = np.asarray(Image.open(coco_dataset.image_dir / name).convert("RGB"), dtype=np.float32) / 255
        np.testing.assert_allclose(samples[image_id][0].permute(1, 2, 0).numpy() / 255, reference, atol=2 / 255)


def test_degenerate_instances_are_skipped_and_counted_by_reason(dataset):
    # Known from the index alone: everything except the empty decoded mask.
    assert dataset.skipped == {
        "box_too_small": 2,
        "box_outside_image": 1,
        "polygon_too_few_points": 1,
        "polygon_part_too_few_points": 1,
        "empty_rle": 1,
    }
    _, target = dataset[dataset.image_ids.index(14)]
    assert len(target["labels"]) == 1  # the collinear polygon is gone
    assert dataset.skipped["empty_mask"] == 1


def test_images_without_instances_are_kept_for_eval_and_skipped_for_training(coco_dataset):
    args = (str(coco_dataset.image_dir), str(coco_dataset.ann_file))
    assert CocoInstanceDataset(*args).image_ids == [11, 12, 13, 14, 15, 16, 17]
    assert CocoInstanceDataset(*args, skip_empty=True).image_ids == [11, 12, 13, 14]  # 17 holds only a crowd


# --------------------------------------------------------------------------------------- malformed input


def _set(collection: str, record_id: int, **changes):
    def mutate(data):
        record = next(r for r in data[collection] if r["id"] == record_id)
        for key, value in changes.items():
            if value is None:
                del record[key]
            else:
                record[key] = value

    return mutate


def _set_rle_size(data):
    next(a for a in data["annotations"] if a["id"] == 103)["segmentation"]["size"] = [24, 32]


def _set_rle_counts(data):
    next(a for a in data["annotations"] if a["id"] == 104)["segmentation"]["counts"] = "garbage!!"


def _duplicate_image(data):
    data["images"].append(dict(data["images"][0]))


MALFORMED_ANNOTATIONS = {
    "unknown image id": (_set("annotations", 101, image_id=999), ["annotation id 101", "999"]),
    "unknown category id": (_set("annotations", 105, category_id=2), ["annotation id 105", "category_id 2"]),
    "rle size mismatch": (_set_rle_size, ["annotation id 103", "[24, 32]"]),
    "invalid compressed rle": (_set_rle_counts, ["annotation id 104"]),
    "image without width": (_set("images", 13, width=None), ["image id 13", "width"]),
    "image without height": (_set("images", 14, height=None), ["image id 14", "height"]),
    "annotation without segmentation": (_set("annotations", 108, segmentation=None), ["annotation id 108"]),
    "annotation without bbox": (_set("annotations", 101, bbox=None), ["annotation id 101", "bbox"]),
    "polygon with odd coordinate count": (_set("annotations", 105, segmentation=[[1, 2, 3, 4, 5, 6, 7]]),
                                          ["annotation id 105"]),
    "duplicate image id": (_duplicate_image, ["image id 11", "duplicate"]),
    "record size differs from the file": (_set("images", 15, width=65), ["image id 15", "rgba.png"]),
}


def assert_one_line_error(build_and_load, *expected):
    with pytest.raises(DatasetError) as caught:
        build_and_load()
    message = str(caught.value)
    assert "\n" not in message
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"
    assert "Traceback" not in message


@pytest.mark.parametrize("case", sorted(MALFORMED_ANNOTATIONS))
def test_malformed_annotation_raises_one_line_naming_file_and_record(coco_dataset, case):
    mutate, expected = MALFORMED_ANNOTATIONS[case]
    data = coco_dataset.copy_data()
    mutate(data)
    ann_file = coco_dataset.write_annotations(data, name="broken.json")
    assert_one_line_error(lambda: load_all(CocoInstanceDataset(str(coco_dataset.image_dir), str(ann_file))),
                          "broken.json", *expected)


def test_missing_annotation_file(coco_dataset):
    missing = coco_dataset.root / "annotations" / "nope.json"
    assert_one_line_error(lambda: CocoInstanceDataset(str(coco_dataset.image_dir), str(missing)),
                          "nope.json", "not found")


def test_invalid_json_says_where_it_breaks(coco_dataset):
    lines = json.dumps(coco_dataset.data, indent=1).splitlines()
    broken = next(n for n, line in enumerate(lines) if line.startswith(' "annotations"'))
    lines[broken] = " {oops" + lines[broken][1:]  # an object where a key belongs, after one space of indent
    bad = coco_dataset.root / "annotations" / "bad.json"
    bad.write_text("\n".join(lines))
    assert_one_line_error(lambda: CocoInstanceDataset(str(coco_dataset.image_dir), str(bad)),
                          "bad.json", "not valid JSON", f"line {broken + 1} column 2")


def test_missing_image_file_fails_at_construction(coco_dataset):
    (coco_dataset.image_dir / "gray.png").unlink()
    assert_one_line_error(lambda: CocoInstanceDataset(str(coco_dataset.image_dir), str(coco_dataset.ann_file)),
                          "instances_val2017.json", "image id 12", "gray.png", "not found")


@pytest.mark.parametrize("name, image_id, content", [
    ("gray.png", 12, b"not an image at all"),
    ("exif_rgb.jpg", 11, None),  # truncated
])
def test_unreadable_image_file_fails_when_loaded(coco_dataset, name, image_id, content):
    path = coco_dataset.image_dir / name
    path.write_bytes(content if content is not None else path.read_bytes()[:300])
    dataset = CocoInstanceDataset(str(coco_dataset.image_dir), str(coco_dataset.ann_file))
    assert_one_line_error(lambda: dataset[dataset.image_ids.index(image_id)],
                          "instances_val2017.json", f"image id {image_id}", name)


@pytest.mark.parametrize("ann_id, reason", [
    (106, "box_too_small"),
    (112, "box_outside_image"),
    (107, "polygon_too_few_points"),
    (102, "polygon_part_too_few_points"),
    (111, "empty_rle"),
    (109, "empty_mask"),
])
def test_strict_mode_turns_each_degenerate_instance_into_an_error(coco_dataset, ann_id, reason):
    degenerate = {102, 106, 107, 109, 110, 111, 112}
    data = coco_dataset.copy_data()
    data["annotations"] = [a for a in data["annotations"] if a["id"] == ann_id or a["id"] not in degenerate]
    ann_file = coco_dataset.write_annotations(data, name="strict.json")
    assert_one_line_error(
        lambda: load_all(CocoInstanceDataset(str(coco_dataset.image_dir), str(ann_file), strict=True)),
        "strict.json", f"annotation id {ann_id}", reason,
    )


# -------------------------------------------------------------------------------------------- datamodule


def test_datamodule_knows_classes_before_setup_and_builds_both_splits(coco_dataset):
    dm = CocoDataModule(root=str(coco_dataset.root), batch_size=3, hflip_prob=0.0)
    assert (dm.num_classes, dm.class_names, dm.label_to_cat_id) == (3, ["person", "airplane", "toothbrush"], [1, 5, 90])
    assert dm.train_dataset is None and dm.val_dataset is None  # only the categories were read
    assert dm.ann_file("val") == str(coco_dataset.ann_file)
    assert dm.ann_file("train") == str(coco_dataset.root / "annotations" / "instances_train2017.json")

    dm.setup("fit")
    assert len(dm.train_dataset) == 4 and len(dm.val_dataset) == 7
    images, targets = next(iter(dm.train_dataloader()))
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 3
    assert all(image.shape == (3, HEIGHT, WIDTH) and image.dtype == torch.uint8 for image in images)
    assert all(t["image_id"] in (11, 12, 13, 14) for t in targets)
    val_ids = [t["image_id"] for _, targets in dm.val_dataloader() for t in targets]
    assert val_ids == [11, 12, 13, 14, 15, 16, 17]
    assert [t["image_id"] for _, ts in dm.test_dataloader() for t in ts] == val_ids
    assert [t["image_id"] for _, ts in dm.predict_dataloader() for t in ts] == val_ids


def test_explicit_split_paths_win_over_the_layout(coco_dataset, tmp_path):
    data = coco_dataset.copy_data()
    data["images"] = data["images"][:2]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in (11, 12)]
    small = coco_dataset.write_annotations(data, name="small.json")
    dm = CocoDataModule(root=str(tmp_path / "elsewhere"), val_images=str(coco_dataset.image_dir), val_ann=str(small))
    dm.setup("validate")
    assert dm.ann_file("val") == str(small) and dm.val_dataset.image_ids == [11, 12]
    with pytest.raises(ValueError, match="train_images and train_ann"):
        CocoDataModule(train_images=str(coco_dataset.image_dir))


def test_train_and_val_with_different_categories_is_an_error_naming_both_files(coco_dataset):
    train_ann = coco_dataset.root / "annotations" / "instances_train2017.json"
    data = coco_dataset.copy_data()
    data["categories"][0]["name"] = "brush"
    train_ann.write_text(json.dumps(data))
    dm = CocoDataModule(root=str(coco_dataset.root))
    assert_one_line_error(lambda: dm.setup("fit"), "instances_train2017.json", "instances_val2017.json", "categor")


def test_synthetic_default_when_no_paths_are_given():
    dm = CocoDataModule(synthetic_num_train=16, synthetic_num_val=6, synthetic_image_size=96)
    assert dm.num_classes == len(dm.class_names) == len(dm.label_to_cat_id) > 0
    dm.setup("validate")
    assert len(dm.val_dataset) == 6
    image, target = dm.val_dataset[0]
    assert image.shape[0] == 3 and max(image.shape[1:]) == 96  # synthetic images: long side image_size
    assert tuple(image.shape[1:]) == target["orig_size"] == tuple(target["masks"].shape[1:])

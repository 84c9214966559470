"""`data check`: counts over every record, loaded through the real dataset code."""
from __future__ import annotations

import json

import pytest

from datamodules.check import check_dataset, resolve_split
from datamodules.coco import DatasetError


def test_counts_match_the_hand_count_of_the_fixture(coco_dataset):
    image_dir, ann_file = resolve_split(str(coco_dataset.root), "val")
    summary = check_dataset(image_dir, ann_file, progress=False)
    assert summary == {
        "images": 7,
        "instances": 7,
        "crowd": 2,
        "categories": 3,
        "empty_images": 2,
        "skipped": {
            "box_outside_image": 1,
            "box_too_small": 2,
            "empty_mask": 1,  # only visible once the mask is decoded
            "empty_rle": 1,
            "polygon_part_too_few_points": 1,
            "polygon_too_few_points": 1,
        },
    }
    json.dumps(summary)  # the CLI prints it with --json


def test_strict_check_stops_at_the_first_degenerate_instance(coco_dataset):
    with pytest.raises(DatasetError, match="annotation id 102 .*polygon_part_too_few_points"):
        check_dataset(str(coco_dataset.image_dir), str(coco_dataset.ann_file), strict=True, progress=False)


def test_check_decodes_every_image(coco_dataset):
    (coco_dataset.image_dir / "rgba.png").write_bytes(b"\x89PNG broken")  # an image no annotation points at
    with pytest.raises(DatasetError, match="image id 15.*rgba.png"):
        check_dataset(str(coco_dataset.image_dir), str(coco_dataset.ann_file), progress=False)


def test_synthetic_dataset_is_clean(small_synthetic_root):
    summary = check_dataset(*resolve_split(str(small_synthetic_root), "val"), progress=False)
    assert summary["images"] == 6 and summary["skipped"] == {}
    assert summary["instances"] > 0 and 0 < summary["categories"]


@pytest.mark.parametrize("split, folder", [("train", "train2017"), ("val", "val2017"), ("val2017", "val2017")])
def test_resolve_split_follows_the_coco_2017_layout(coco_dataset, split, folder):
    image_dir, ann_file = resolve_split(str(coco_dataset.root), split)
    assert image_dir == str(coco_dataset.root / folder)
    assert ann_file == str(coco_dataset.root / "annotations" / f"instances_{folder}.json")


def test_resolve_split_names_what_is_missing(coco_dataset):
    with pytest.raises(DatasetError, match="instances_test2017.json: annotation file not found"):
        resolve_split(str(coco_dataset.root), "test2017")
    (coco_dataset.root / "val2017").rename(coco_dataset.root / "moved")
    with pytest.raises(DatasetError, match="val2017: image folder not found"):
        resolve_split(str(coco_dataset.root), "val")

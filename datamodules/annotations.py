"""Reading and validating a COCO-format annotation file into an index of records (no image is decoded).

`index_annotations` checks every image, category and annotation record once and keeps what training needs as
`ImageRecord`s; anything structurally wrong is a `DatasetError` whose one-line message names the file and the
record, and degenerate instances are skipped and counted by reason (SKIP_REASONS), or an error in strict mode.
The dataset that decodes the records lazily is datamodules/coco.py.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pycocotools import mask as mask_utils

from datamodules.errors import DatasetError


# Why an instance was left out of the targets: reason -> what it means. `dataset.skipped` counts these.
SKIP_REASONS = {
    "box_too_small": "bbox width or height is below 1 pixel",
    "box_outside_image": "bbox keeps less than 1 pixel of width or height inside the image",
    "polygon_too_few_points": "no polygon part has 3 or more points",
    "polygon_part_too_few_points": "a polygon part has fewer than 3 points (that part dropped, instance kept)",
    "empty_rle": "RLE mask has zero area",
    "empty_mask": "mask decodes to zero pixels",
}


def one_line(text: Any) -> str:
    """`text` on one line (error messages stay one line)."""
    return " ".join(str(text).split())


def load_annotation_json(ann_file: str) -> dict:
    """The parsed annotation file; DatasetError if it is missing, unreadable or not a JSON object."""
    try:
        with open(ann_file, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{ann_file}: annotation file not found") from None
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"{ann_file}: not valid JSON: {err.msg} at line {err.lineno} column {err.colno} (char {err.pos})"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{ann_file}: cannot read annotation file: {one_line(err)}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{ann_file}: top level must be a JSON object, got {type(data).__name__}")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _records(data: dict, key: str, ann_file: str, required: bool = True) -> list:
    if key not in data:
        if required:
            raise DatasetError(f"{ann_file}: missing top-level key '{key}'")
        return []
    if not isinstance(data[key], list):
        raise DatasetError(f"{ann_file}: '{key}' must be a list, got {type(data[key]).__name__}")
    return data[key]


def parse_categories(data: dict, ann_file: str) -> list[tuple[int, str]]:
    """[(category_id, name)] sorted by id: the position in this list is the contiguous label."""
    categories = {}
    for position, record in enumerate(_records(data, "categories", ann_file)):
        cat_id = record.get("id") if isinstance(record, dict) else None
        if not _is_int(cat_id):
            raise DatasetError(f"{ann_file}: category #{position}: 'id' missing or not an integer")
        if cat_id in categories:
            raise DatasetError(f"{ann_file}: category id {cat_id}: duplicate id")
        name = record.get("name")
        if not isinstance(name, str):
            raise DatasetError(f"{ann_file}: category id {cat_id}: 'name' missing or not a string")
        categories[cat_id] = name
    if not categories:
        raise DatasetError(f"{ann_file}: 'categories' is empty")
    return sorted(categories.items())


def read_categories(ann_file: str) -> list[tuple[int, str]]:
    """Categories of an annotation file, without indexing its images or annotations."""
    return parse_categories(load_annotation_json(ann_file), ann_file)


@dataclass(frozen=True)
class InstanceRecord:
    ann_id: int
    label: int  # contiguous, 0..C-1
    iscrowd: int
    box: tuple[float, float, float, float]  # xyxy, clamped to the image
    segmentation: list | dict  # polygon parts with >= 3 points, or an RLE dict (counts: list or str)


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    file_name: str
    height: int
    width: int
    instances: list[InstanceRecord]


def record_error(ann_file: str, record: str, problem: str) -> DatasetError:
    """The one-line error for `record` (e.g. "annotation id 7 (image id 3)") of `ann_file`."""
    return DatasetError(f"{ann_file}: {record}: {problem}")


def count_skip(skipped: Counter, strict: bool, ann_file: str, reason: str, record: str, count: int = 1) -> None:
    """Count `count` instances of `record` left out for `reason` (a SKIP_REASONS key); an error when `strict`."""
    if strict:
        raise record_error(ann_file, record, f"degenerate instance ({reason}: {SKIP_REASONS[reason]}); strict mode")
    skipped[reason] += count


def index_annotations(
    data: dict, ann_file: str, categories: list[tuple[int, str]], strict: bool, skipped: Counter
) -> list[ImageRecord]:
    """The records of every image of the parsed annotation file `data` (`ann_file` names it in errors), in file
    order, with their kept instances; `categories` as `parse_categories` gives them (the position is the label);
    left-out instances are counted into `skipped` by reason."""
    return _AnnotationIndexer(ann_file, categories, strict, skipped).build(data)


class _AnnotationIndexer:
    """One pass over an annotation file's images and annotations (`index_annotations`)."""

    def __init__(self, ann_file: str, categories: list[tuple[int, str]], strict: bool, skipped: Counter):
        self.ann_file = ann_file
        self.categories = categories
        self.strict = strict
        self.skipped = skipped

    def _error(self, record: str, problem: str) -> DatasetError:
        return record_error(self.ann_file, record, problem)

    def _skip(self, reason: str, record: str, count: int = 1) -> None:
        count_skip(self.skipped, self.strict, self.ann_file, reason, record, count)

    def build(self, data: dict) -> list[ImageRecord]:
        images: dict[int, dict] = {}
        for position, image in enumerate(_records(data, "images", self.ann_file)):
            image_id = image.get("id") if isinstance(image, dict) else None
            if not _is_int(image_id):
                raise self._error(f"image #{position}", "'id' missing or not an integer")
            where = f"image id {image_id}"
            if image_id in images:
                raise self._error(where, "duplicate id")
            if not isinstance(image.get("file_name"), str) or not image["file_name"]:
                raise self._error(where, "'file_name' missing or not a string")
            for key in ("width", "height"):
                if not _is_int(image.get(key)) or image[key] <= 0:
                    raise self._error(where, f"'{key}' missing or not a positive integer")
            images[image_id] = image

        cat_id_to_label = {cat_id: label for label, (cat_id, _) in enumerate(self.categories)}
        instances: dict[int, list[InstanceRecord]] = {image_id: [] for image_id in images}
        seen_ann_ids: set[int] = set()
        for position, ann in enumerate(_records(data, "annotations", self.ann_file, required=False)):
            ann_id = ann.get("id") if isinstance(ann, dict) else None
            if not _is_int(ann_id):
                raise self._error(f"annotation #{position}", "'id' missing or not an integer")
            if ann_id in seen_ann_ids:
                raise self._error(f"annotation id {ann_id}", "duplicate id")
            seen_ann_ids.add(ann_id)
            image_id = ann.get("image_id")
            image = images.get(image_id) if _is_int(image_id) else None
            if image is None:
                raise self._error(f"annotation id {ann_id}", f"image_id {image_id!r} is not in 'images'")
            where = f"annotation id {ann_id} (image id {image['id']})"
            category_id = ann.get("category_id")
            label = cat_id_to_label.get(category_id) if _is_int(category_id) else None
            if label is None:
                raise self._error(where, f"category_id {category_id!r} is not in 'categories'")
            instance = self._index_instance(ann, image, label, where)
            if instance is not None:
                instances[image["id"]].append(instance)

        return [
            ImageRecord(image_id, image["file_name"], image["height"], image["width"], instances[image_id])
            for image_id, image in images.items()
        ]

    def _index_instance(self, ann: dict, image: dict, label: int, where: str) -> InstanceRecord | None:
        height, width = image["height"], image["width"]
        iscrowd = ann.get("iscrowd", 0)
        if iscrowd not in (0, 1):
            raise self._error(where, f"'iscrowd' must be 0 or 1, got {iscrowd!r}")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise self._error(where, f"'bbox' missing or not 4 finite numbers [x, y, w, h]: {bbox!r}")
        if "segmentation" not in ann:
            raise self._error(where, "'segmentation' missing")

        x, y, w, h = bbox
        if w < 1 or h < 1:
            self._skip("box_too_small", where)
            return None
        # COCO boxes overshoot the image by fractions of a pixel; targets are clamped (as torchvision's reference).
        x1, x2 = min(max(x, 0.0), width), min(max(x + w, 0.0), width)
        y1, y2 = min(max(y, 0.0), height), min(max(y + h, 0.0), height)
        if x2 - x1 < 1 or y2 - y1 < 1:
            self._skip("box_outside_image", where)
            return None

        segmentation = self._index_segmentation(ann["segmentation"], height, width, where)
        if segmentation is None:
            return None
        box = (float(x1), float(y1), float(x2), float(y2))
        return InstanceRecord(ann["id"], label, int(iscrowd), box, segmentation)

    def _index_segmentation(self, seg: Any, height: int, width: int, where: str) -> list | dict | None:
        if isinstance(seg, list):
            # Coordinates are checked when decoding (pycocotools raises on non-numbers); lengths are checked here
            # because pycocotools reads a 4-number part as a box, not a 2-point polygon.
            if not all(isinstance(part, list) for part in seg):
                raise self._error(where, "polygon 'segmentation' must be a list of lists of coordinates")
            for index, part in enumerate(seg):
                if len(part) % 2:
                    raise self._error(where, f"polygon part {index} has an odd number of coordinates ({len(part)})")
            parts = [part for part in seg if len(part) >= 6]
            if not parts:
                self._skip("polygon_too_few_points", where)
                return None
            if len(parts) < len(seg):
                self._skip("polygon_part_too_few_points", where, count=len(seg) - len(parts))
            return parts
        if isinstance(seg, dict):
            size, counts = seg.get("size"), seg.get("counts")
            if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
                raise self._error(where, f"RLE 'size' must be [height, width], got {size!r}")
            if size != [height, width]:
                raise self._error(where, f"RLE size {size} does not match the image size [{height}, {width}]")
            if isinstance(counts, list):
                if not all(_is_int(v) and v >= 0 for v in counts):
                    raise self._error(where, "uncompressed RLE 'counts' must be non-negative integers")
                if sum(counts) != height * width:
                    raise self._error(where, f"uncompressed RLE counts sum to {sum(counts)}, expected {height * width}")
                area = sum(counts[1::2])
            elif isinstance(counts, str):
                area = int(mask_utils.area({"size": size, "counts": counts.encode("ascii", "replace")}))
                if area > height * width:
                    raise self._error(where, "compressed RLE 'counts' is not a valid RLE string")
            else:
                raise self._error(where, "RLE 'counts' must be a list of integers or a string")
            if area == 0:
                self._skip("empty_rle", where)
                return None
            return {"size": size, "counts": counts}
        raise self._error(where, f"'segmentation' must be polygons (list) or RLE (dict), got {type(seg).__name__}")

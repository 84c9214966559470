"""A small COCO-format dataset with everything real COCO throws at a loader, written to tmp_path.

Images are 64 wide x 48 high. Category ids have gaps (listed out of order: 90, 1, 5). Per image:

  11 exif_rgb.jpg   RGB JPEG tagged EXIF orientation 6 (a decoder that rotates would make it 48 wide)
                    101 rectangle polygon (cat 1); 102 two-part polygon + one 2-point part (cat 5, part dropped)
  12 gray.png       grayscale; 103 crowd, uncompressed RLE (cat 90); 104 compressed RLE triangle (cat 5)
  13 palette.png    palette with transparency; 105 polygon (cat 1); 106 box 0.5 px wide; 107 2-point polygon
  14 cmyk.jpg       CMYK JPEG; 108 polygon (cat 90); 109 collinear polygon (decodes to an empty mask)
  15 rgba.png       RGBA, no annotations
  16 degenerate.bmp BMP (not a torchvision codec: the PIL fallback); 110 box 0.2 px high; 111 empty RLE;
                    112 box outside the image
  17 crowd_only.png RGB; 113 crowd, uncompressed RLE (cat 1)

Hand count: 7 images, 7 kept instances (2 crowd), 3 categories, 2 images without kept instances (15, 16);
skipped: box_too_small 2 (106, 110), box_outside_image 1 (112), polygon_too_few_points 1 (107),
polygon_part_too_few_points 1 (102), empty_rle 1 (111), empty_mask 1 (109).
Training with skip_empty keeps 11, 12, 13, 14 (15, 16 have nothing, 17 only a crowd region).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

HEIGHT, WIDTH = 48, 64
CATEGORIES = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 5, "name": "airplane"}]


def rectangle_mask(top: int, left: int, bottom: int, right: int) -> np.ndarray:
    """uint8 [H,W], ones on rows top..bottom-1 and columns left..right-1."""
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[top:bottom, left:right] = 1
    return mask


def rectangle_polygon(top: int, left: int, bottom: int, right: int) -> list[float]:
    # pycocotools fills a polygon with integer corners exactly over the pixels it encloses
    return [left, top, right, top, right, bottom, left, bottom]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd encoding: run lengths over the column-major pixel order, starting with a run of zeros."""
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"size": [HEIGHT, WIDTH], "counts": [int(c) for c in counts]}


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [HEIGHT, WIDTH], "counts": rle["counts"].decode("ascii")}


def pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


@dataclass
class CocoFixture:
    root: Path  # COCO 2017 layout: annotations/instances_{train,val}2017.json, {train,val}2017/
    image_dir: Path  # root/val2017
    ann_file: Path  # root/annotations/instances_val2017.json
    data: dict  # what ann_file holds
    masks: dict[int, np.ndarray]  # annotation id -> the uint8 [H,W] mask drawn, for every kept instance
    pixels: dict[int, np.ndarray]  # image id -> the uint8 [H,W,3] RGB written (lossless files only)

    def write_annotations(self, data: dict, name: str = "modified.json") -> Path:
        path = self.root / "annotations" / name
        path.write_text(json.dumps(data))
        return path

    def copy_data(self) -> dict:
        return copy.deepcopy(self.data)


def write_images(image_dir: Path) -> dict[int, np.ndarray]:
    image_dir.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 on display
    Image.fromarray(pixels(11)).save(image_dir / "exif_rgb.jpg", quality=95, exif=exif)
    gray = pixels(12)[..., 0]
    Image.fromarray(gray).save(image_dir / "gray.png")
    palette = Image.fromarray(pixels(13)).convert("P")
    palette.save(image_dir / "palette.png", transparency=0)
    Image.fromarray(pixels(14)).convert("CMYK").save(image_dir / "cmyk.jpg", quality=95)
    Image.fromarray(np.dstack([pixels(15), np.full((HEIGHT, WIDTH), 128, np.uint8)])).save(image_dir / "rgba.png")
    Image.fromarray(pixels(16)).save(image_dir / "degenerate.bmp")
    Image.fromarray(pixels(17)).save(image_dir / "crowd_only.png")
    return {12: np.repeat(gray[..., None], 3, axis=2), 15: pixels(15), 16: pixels(16), 17: pixels(17)}


def build_annotations() -> tuple[dict, dict[int, np.ndarray]]:
    files = ["exif_rgb.jpg", "gray.png", "palette.png", "cmyk.jpg", "rgba.png", "degenerate.bmp", "crowd_only.png"]
    images = [{"id": 11 + i, "file_name": f, "width": WIDTH, "height": HEIGHT} for i, f in enumerate(files)]
    triangle = np.tril(np.ones((HEIGHT, WIDTH), dtype=np.uint8))[:, ::-1].copy()
    triangle[20:] = 0
    crowd_region = rectangle_mask(30, 0, 40, 20)
    crowd_only_region = rectangle_mask(0, 40, 48, 64)
    masks = {
        101: rectangle_mask(10, 10, 20, 30),
        102: rectangle_mask(5, 40, 15, 50) | rectangle_mask(30, 40, 40, 60),
        103: crowd_region,
        104: triangle,
        105: rectangle_mask(0, 0, 16, 16),
        108: rectangle_mask(20, 30, 44, 60),
        113: crowd_only_region,
    }

    def ann(ann_id, image_id, cat, bbox, segmentation, iscrowd=0):
        return dict(id=ann_id, image_id=image_id, category_id=cat, bbox=bbox, segmentation=segmentation,
                    iscrowd=iscrowd, area=float(bbox[2] * bbox[3]))

    triangle_box = [float(v) for v in mask_utils.toBbox(mask_utils.encode(np.asfortranarray(triangle)))]
    annotations = [
        ann(101, 11, 1, [10, 10, 20, 10], [rectangle_polygon(10, 10, 20, 30)]),
        ann(102, 11, 5, [40, 5, 20, 35],
            [rectangle_polygon(5, 40, 15, 50), rectangle_polygon(30, 40, 40, 60), [1, 1, 2, 2]]),
        ann(103, 12, 90, [0, 30, 20, 10], uncompressed_rle(crowd_region), iscrowd=1),
        ann(104, 12, 5, triangle_box, compressed_rle(triangle)),
        ann(105, 13, 1, [0, 0, 16, 16], [rectangle_polygon(0, 0, 16, 16)]),
        ann(106, 13, 5, [5, 5, 0.5, 3], [rectangle_polygon(5, 5, 8, 6)]),
        ann(107, 13, 5, [1, 1, 19, 19], [[1, 1, 20, 20]]),
        ann(108, 14, 90, [30, 20, 30, 24], [rectangle_polygon(20, 30, 44, 60)]),
        ann(109, 14, 1, [5, 40, 30, 1], [[5, 40, 20, 40, 35, 40]]),
        ann(110, 16, 1, [5, 5, 10, 0.2], [rectangle_polygon(5, 5, 6, 15)]),
        ann(111, 16, 5, [0, 0, 10, 10], compressed_rle(np.zeros((HEIGHT, WIDTH), np.uint8))),
        ann(112, 16, 5, [70, 10, 5, 5], [rectangle_polygon(10, 60, 15, 64)]),
        ann(113, 17, 1, [40, 0, 24, 48], uncompressed_rle(crowd_only_region), iscrowd=1),
    ]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}, masks


def write_coco_dataset(root: Path) -> CocoFixture:
    data, masks = build_annotations()
    (root / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        written = write_images(root / split)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return CocoFixture(
        root=root,
        image_dir=root / "val2017",
        ann_file=root / "annotations" / "instances_val2017.json",
        data=data,
        masks=masks,
        pixels=written,
    )


@pytest.fixture
def coco_dataset(tmp_path) -> CocoFixture:
    return write_coco_dataset(tmp_path / "coco")

"""`maskbench data check`: load every record of a split through the real dataset code and summarise it.

Constructing the dataset validates the annotation index; iterating it then decodes every image and every mask, so
whatever training would trip over later (an unreadable image, an image whose size disagrees with its record, an
invalid RLE) surfaces now as one DatasetError naming the file and the record.
"""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from datamodules.coco import CocoInstanceDataset, DatasetError, coco_layout


def resolve_split(root: str, split: str) -> tuple[str, str]:
    """(image_dir, ann_file) of `split` in the COCO 2017 layout under `root`.

    `split` is "train" / "val" (-> train2017 / val2017) or a folder name such as "val2017".
    """
    split_dir = f"{split}2017" if split in ("train", "val") else split
    image_dir, ann_file = coco_layout(root, split_dir)
    if not Path(ann_file).is_file():
        raise DatasetError(f"{ann_file}: annotation file not found (split {split!r} of {root})")
    if not Path(image_dir).is_dir():
        raise DatasetError(f"{image_dir}: image folder not found (split {split!r} of {root})")
    return image_dir, ann_file


def check_dataset(image_dir: str, ann_file: str, strict: bool = False, progress: bool = True) -> dict:
    """Load every image and mask of one split; returns
    {"images": int, "instances": int (kept, crowd included), "crowd": int, "categories": int,
     "empty_images": int (images with no kept instance), "skipped": {reason: count}}."""
    dataset = CocoInstanceDataset(image_dir, ann_file, skip_empty=False, strict=strict)
    instances = crowd = empty_images = 0
    for index in tqdm(range(len(dataset)), desc=f"checking {ann_file}", unit="img", disable=not progress):
        _, target = dataset[index]
        kept = len(target["labels"])
        instances += kept
        crowd += int(target["iscrowd"].sum())
        empty_images += int(kept == 0)
    return {
        "images": len(dataset),
        "instances": instances,
        "crowd": crowd,
        "categories": dataset.num_classes,
        "empty_images": empty_images,
        "skipped": dict(sorted(dataset.skipped.items())),
    }


def format_check_summary(summary: dict, where: str) -> str:
    """`check_dataset`'s summary as aligned lines for a person; `where` names the dataset."""
    lines = [
        f"dataset        {where}",
        f"images         {summary['images']}",
        f"instances      {summary['instances']}  (crowd {summary['crowd']})",
        f"categories     {summary['categories']}",
        f"empty images   {summary['empty_images']}",
    ]
    skipped = summary["skipped"]
    if skipped:
        lines.append("skipped        " + ", ".join(f"{reason}: {n}" for reason, n in sorted(skipped.items())))
    else:
        lines.append("skipped        none")
    return "\n".join(lines)

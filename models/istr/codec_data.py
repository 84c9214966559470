"""Box masks of a COCO-format split, streamed for fitting and scoring the PCA mask codec.

`box_mask_batches` goes through the project's own dataset code (`CocoInstanceDataset`): the same annotation
validation, the same mask decoding and the same degenerate-instance rules as training, and a `DatasetError` naming
file and record on bad input. Each image's non-crowd masks are cropped to their boxes in the DataLoader workers
(`crop_box_masks`, the construction of the training targets) and only the uint8 M x M crops travel back, so the
memory in flight is a few batches of crops, whatever the dataset size.

`ensure_codec_file` is what the model runs when it needs a codec at fit time: the codec is fitted once on the
training split and cached (`cached_codec_path`, under $MASKBENCH_CACHE, keyed by the annotation file, K, M and the
seed) or written to the path the configuration names.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from datamodules.coco import CocoInstanceDataset
from models.istr.mask_codec import PCAMaskCodec, crop_box_masks, fit_pca


class BoxMaskCrops(Dataset):
    """`crops[i]`: uint8 [n, M, M], the box-cropped non-crowd masks of image i of a COCO-format split."""

    def __init__(self, image_dir: str, ann_file: str, mask_size: int):
        self.dataset = CocoInstanceDataset(image_dir, ann_file, skip_empty=False)
        self.mask_size = mask_size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tensor:
        _, target = self.dataset[index]
        keep = target["iscrowd"] == 0
        boxes, masks = target["boxes"][keep], target["masks"][keep]
        if len(boxes) == 0:
            return torch.zeros((0, self.mask_size, self.mask_size), dtype=torch.uint8)
        return crop_box_masks(masks, boxes.as_subclass(Tensor), self.mask_size).to(torch.uint8)


def _concatenate(crops: list[Tensor]) -> Tensor:
    return torch.cat(crops)


def box_mask_batches(
    image_dir: str,
    ann_file: str,
    mask_size: int,
    num_workers: int = 0,
    images_per_batch: int = 16,
    progress: bool = True,
    description: str | None = None,
) -> Iterator[Tensor]:
    """Yield uint8 [n, M, M] batches of every non-crowd box mask of the split, in dataset order."""
    crops = BoxMaskCrops(image_dir, ann_file, mask_size)
    loader = DataLoader(crops, batch_size=images_per_batch, shuffle=False, num_workers=num_workers,
                        collate_fn=_concatenate)
    bar = tqdm(total=len(crops), desc=description or f"masks of {ann_file}", unit="img", disable=not progress)
    with bar:
        for batch in loader:
            yield batch
            bar.update(min(images_per_batch, bar.total - bar.n))


def fit_codec_on_split(
    image_dir: str,
    ann_file: str,
    num_components: int,
    mask_size: int,
    seed: int = 0,
    num_workers: int = 0,
    progress: bool = True,
) -> PCAMaskCodec:
    """The K-component PCA codec of the split's box masks (one streaming pass)."""
    fit = fit_pca(box_mask_batches(image_dir, ann_file, mask_size, num_workers, progress=progress,
                                   description="fitting the ISTR mask codec"), mask_size, seed)
    source = {"ann_file": os.path.abspath(ann_file), "image_dir": os.path.abspath(image_dir), "seed": seed}
    return PCAMaskCodec.from_fit(fit, num_components, mask_size, source)


def cached_codec_path(ann_file: str, num_components: int, mask_size: int, seed: int,
                      cache_dir: str | None = None) -> Path:
    """Where the codec fitted on `ann_file` is cached: $MASKBENCH_CACHE/istr_codecs/<name>-k<K>-m<M>-<key>.pt.

    The key hashes the annotation file's absolute path, size and modification time with K, M and the seed, so an
    edited annotation file gets a fresh codec.
    """
    cache = Path(cache_dir or os.environ.get("MASKBENCH_CACHE") or Path.home() / ".cache" / "maskbench")
    stat = os.stat(ann_file)
    identity = json.dumps([os.path.abspath(ann_file), stat.st_size, stat.st_mtime_ns, num_components, mask_size, seed])
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return cache / "istr_codecs" / f"{Path(ann_file).stem}-k{num_components}-m{mask_size}-{key}.pt"


def ensure_codec_file(
    path: str | None,
    image_dir: str,
    ann_file: str,
    num_components: int,
    mask_size: int,
    seed: int = 0,
    num_workers: int = 0,
    progress: bool = True,
) -> str:
    """Path of a codec file for this split: `path` (fitted and written there when missing) or the cache entry."""
    target = Path(path) if path is not None else cached_codec_path(ann_file, num_components, mask_size, seed)
    if not target.is_file():
        codec = fit_codec_on_split(image_dir, ann_file, num_components, mask_size, seed, num_workers, progress)
        codec.save(target)
    return str(target)

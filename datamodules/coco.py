"""COCO-format instance segmentation: `CocoInstanceDataset` and `CocoDataModule`.

Works for any dataset in COCO's annotation format, not only COCO itself, and handles what real COCO contains:
category ids with gaps (mapped to contiguous labels sorted by id), polygon / compressed-RLE / uncompressed-RLE
masks, crowd regions (kept, flagged by `iscrowd`), images without annotations, grayscale / CMYK / palette / RGBA
images, and degenerate instances (skipped and counted by reason in `dataset.skipped`, or an error with strict=True).

The annotation index is validated once at construction (no image decoding; datamodules/annotations.py); images
and masks are decoded lazily in `__getitem__`. Anything structurally wrong is a `DatasetError` whose one-line
message names the file and the record.
"""
from __future__ import annotations

import os
import pickle
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as F

# The annotation index (SKIP_REASONS stays importable from here, beside the dataset that counts by it).
from datamodules.annotations import (  # noqa: F401
    SKIP_REASONS,
    ImageRecord,
    InstanceRecord,
    count_skip,
    index_annotations,
    load_annotation_json,
    one_line,
    parse_categories,
    read_categories,
    record_error,
)
from datamodules.errors import DatasetError
from datamodules.sampler import GroupedBatchSampler, orientation_groups
from datamodules.transforms import build_eval_transforms, build_train_transforms


def coco_layout(root: str | os.PathLike, split: str) -> tuple[str, str]:
    """(image_dir, ann_file) of `split` (e.g. "val2017") in the COCO 2017 layout under `root`."""
    root = Path(root)
    return str(root / split), str(root / "annotations" / f"instances_{split}.json")


class _PackedRecords:
    """Records pickled into one numpy byte buffer.

    Why: DataLoader workers are forked; a list of Python objects has its reference counts written on every read,
    so copy-on-write duplicates it page by page into every worker (pytorch#13246). One flat buffer is only read.
    """

    def __init__(self, records: list[ImageRecord]):
        blobs = [np.frombuffer(pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8) for r in records]
        self._ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._buffer = np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> ImageRecord:
        start = int(self._ends[index - 1]) if index > 0 else 0
        return pickle.loads(self._buffer[start : int(self._ends[index])].tobytes())


class CocoInstanceDataset(Dataset):
    """One split of a COCO-format dataset.

    `dataset[i]` is `(image, target)`: image uint8 [3,H,W] 0..255 (after `transforms`), target a dict with
    boxes float32 [N,4] xyxy pixels, labels int64 [N] contiguous, masks uint8 [N,H,W], iscrowd int64 [N],
    image_id int (the file's own id), orig_size (H0, W0). Crowd regions are included, flagged by iscrowd.

    Args:
        image_dir: folder the records' `file_name` are relative to.
        ann_file: COCO-format instances JSON.
        transforms: `(image, target) -> (image, target)` (see datamodules.transforms); default: eval (identity).
        skip_empty: leave out images with no kept non-crowd instance (for training; crowd-only images too, as
            detectron2 does, since crowd regions give no training signal).
        strict: degenerate instances raise DatasetError instead of being skipped.

    `skipped` counts left-out instances by reason (SKIP_REASONS); "empty_mask" is only known once a mask is
    decoded, so it counts the samples loaded in this process.
    """

    def __init__(
        self,
        image_dir: str,
        ann_file: str,
        transforms: Callable | None = None,
        skip_empty: bool = False,
        strict: bool = False,
    ):
        self.image_dir = str(image_dir)
        self.ann_file = str(ann_file)
        self.transforms = transforms if transforms is not None else build_eval_transforms()
        self.strict = strict
        self.skipped: Counter[str] = Counter()

        data = load_annotation_json(self.ann_file)
        self.categories = parse_categories(data, self.ann_file)
        self.label_to_cat_id = [cat_id for cat_id, _ in self.categories]
        self.class_names = [name for _, name in self.categories]
        self.num_classes = len(self.categories)
        records = index_annotations(data, self.ann_file, self.categories, self.strict, self.skipped)
        del data
        self._check_image_files(records)
        if skip_empty:
            records = [r for r in records if any(not inst.iscrowd for inst in r.instances)]
        self.image_ids = [r.image_id for r in records]
        self._records = _PackedRecords(records)

    # ------------------------------------------------------------------------------------------ index (once)

    def _error(self, record: str, problem: str) -> DatasetError:
        return record_error(self.ann_file, record, problem)

    def _skip(self, reason: str, record: str, count: int = 1) -> None:
        count_skip(self.skipped, self.strict, self.ann_file, reason, record, count)

    def _check_image_files(self, records: list[ImageRecord]) -> None:
        # One directory listing instead of a stat per image: cheap even for 118k files on a network file system.
        if not os.path.isdir(self.image_dir):
            raise DatasetError(f"{self.image_dir}: image folder not found (images of {self.ann_file})")
        present = set(os.listdir(self.image_dir))
        for record in records:
            name = record.file_name
            found = name in present if os.sep not in name and "/" not in name else os.path.isfile(self._path(record))
            if not found:
                raise self._error(f"image id {record.image_id}", f"image file not found: {self._path(record)}")

    # ---------------------------------------------------------------------------------------- samples (lazy)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        record = self._records[index]
        image = self._read_image(record)
        instances, masks = self._decode_masks(record)
        canvas = (record.height, record.width)
        boxes = torch.tensor([inst.box for inst in instances], dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=canvas),
            "labels": torch.tensor([inst.label for inst in instances], dtype=torch.int64),
            "masks": tv_tensors.Mask(torch.from_numpy(masks)),
            "iscrowd": torch.tensor([inst.iscrowd for inst in instances], dtype=torch.int64),
            "image_id": record.image_id,
            "orig_size": canvas,
        }
        return self.transforms(tv_tensors.Image(image), target)

    def _path(self, record: ImageRecord) -> str:
        return os.path.join(self.image_dir, record.file_name)

    def _read_image(self, record: ImageRecord) -> torch.Tensor:
        """uint8 [3,H,W] in stored pixel order: EXIF orientation is NOT applied, COCO annotations refer to the
        stored pixels."""
        path = self._path(record)
        where = f"image id {record.image_id}"
        try:
            encoded = read_file(path)
        except (OSError, RuntimeError) as err:
            raise self._error(where, f"cannot read image file {path}: {one_line(err)}") from None
        try:
            image = decode_image(encoded, mode=ImageReadMode.RGB, apply_exif_orientation=False)
        except RuntimeError:
            # Formats torchvision's decoders lack (BMP, TIFF); PIL also names the problem of a corrupt file.
            image = self._decode_with_pil(path, where)
        if image.dtype != torch.uint8:  # 16-bit PNG
            image = F.to_dtype(image, torch.uint8, scale=True)
        if tuple(image.shape[-2:]) != (record.height, record.width):
            raise self._error(
                where,
                f"image file {path} is {image.shape[-2]}x{image.shape[-1]} (HxW) but the record says "
                f"{record.height}x{record.width}",
            )
        return image

    def _decode_with_pil(self, path: str, where: str) -> torch.Tensor:
        try:
            with Image.open(path) as pil:
                if pil.mode.startswith("I;16"):  # PIL's RGB conversion clips 16-bit grey instead of scaling it
                    grey = torch.from_numpy((np.asarray(pil).astype(np.uint16) >> 8).astype(np.uint8))
                    return grey.expand(3, -1, -1).contiguous()
                if pil.mode == "P" and "transparency" in pil.info:
                    pil = pil.convert("RGBA")
                return F.pil_to_tensor(pil.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise self._error(where, f"cannot decode image file {path}: {one_line(err)}") from None

    def _decode_masks(self, record: ImageRecord) -> tuple[list[InstanceRecord], np.ndarray]:
        """The instances whose mask is not empty, and their masks uint8 [N,H,W]."""
        height, width = record.height, record.width
        rles = [self._instance_rle(inst, height, width, record) for inst in record.instances]
        areas = mask_utils.area(rles) if rles else []
        kept_instances, kept_rles = [], []
        for inst, rle, area in zip(record.instances, rles, areas):
            if area == 0:
                self._skip("empty_mask", f"annotation id {inst.ann_id} (image id {record.image_id})")
            else:
                kept_instances.append(inst)
                kept_rles.append(rle)
        if not kept_rles:
            return [], np.zeros((0, height, width), dtype=np.uint8)
        try:
            masks = mask_utils.decode(kept_rles)  # [H, W, N], Fortran order
        except ValueError:
            for inst, rle in zip(kept_instances, kept_rles):
                try:
                    mask_utils.decode(rle)
                except ValueError as err:
                    raise self._error(
                        f"annotation id {inst.ann_id} (image id {record.image_id})", f"invalid RLE: {one_line(err)}"
                    ) from None
            raise
        return kept_instances, np.ascontiguousarray(masks.transpose(2, 0, 1))

    def _instance_rle(self, inst: InstanceRecord, height: int, width: int, record: ImageRecord) -> dict:
        seg = inst.segmentation
        try:
            if isinstance(seg, list):
                return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
            if isinstance(seg["counts"], list):
                return mask_utils.frPyObjects(seg, height, width)
            return {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
        except (TypeError, ValueError, UnicodeEncodeError) as err:
            raise self._error(
                f"annotation id {inst.ann_id} (image id {record.image_id})",
                f"cannot rasterise 'segmentation': {one_line(err)}",
            ) from None


def collate_instances(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Images keep their own sizes, so a batch is two lists rather than stacked tensors.

    Each target is checked here, on the CPU in the loader's worker (`check_target`), so that the models need not
    check them on the device, where every check would be a host synchronisation per image and step.
    """
    images, targets = zip(*batch)
    for target in targets:
        check_target(target)
    return list(images), list(targets)


def check_target(target: dict) -> None:
    """Raises DatasetError naming the image when a target box is not finite or has no area (x2 > x1, y2 > y1 needed:
    its regression target would be log(0)) or a label is negative. Boxes: float [N, 4] xyxy, labels: int [N]."""
    boxes, labels = target["boxes"], target["labels"]
    bad = ~torch.isfinite(boxes).all(dim=1) | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bool(bad.any()):
        raise DatasetError(
            f"image id {target.get('image_id', '?')}: target box {boxes[bad][0].tolist()} has no area or is not "
            "finite (xyxy needs x2 > x1, y2 > y1) after the transforms"
        )
    if labels.numel() and int(labels.min()) < 0:
        raise DatasetError(f"image id {target.get('image_id', '?')}: negative target label in {labels.tolist()}")


class CocoDataModule(L.LightningDataModule):
    """A COCO-format dataset as train / val splits (test and predict use val).

    Paths: `root` in the COCO 2017 layout (`annotations/instances_{split}.json`, `{split}/`), or explicit
    `{train,val}_images` + `{train,val}_ann` per split (these win over `root`). With neither, the synthetic
    COCO-format dataset (datamodules.synthetic, generated once and cached) is used; `synthetic_*` choose its size,
seed and style ("simple", the default, or the harder "textured").

    Training augmentation: `augmentation` names a recipe (datamodules.transforms.AUGMENTATIONS: "flip", YOLACT's
    "ssd", ISTR's "istr_crop"); `hflip_prob` is its flip probability, `photometric` / `scale_jitter` extend "flip".
    Images leave the workers as uint8; the models normalise on the device.

    `num_classes`, `class_names` and `label_to_cat_id` are readable right after construction (they read only the
    categories of the val annotation file, or train's if there is no val split), because LightningCLI links
    `data.num_classes` into the model before fitting starts.
    """

    def __init__(
        self,
        root: str | None = None,
        train_images: str | None = None,
        train_ann: str | None = None,
        val_images: str | None = None,
        val_ann: str | None = None,
        train_split: str = "train2017",
        val_split: str = "val2017",
        batch_size: int = 2,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        group_by_aspect_ratio: bool = True,
        skip_empty_train: bool = True,
        strict: bool = False,
        hflip_prob: float = 0.5,
        photometric: bool = False,
        scale_jitter: list[float] | None = None,
        augmentation: str = "flip",
        synthetic_num_train: int = 200,
        synthetic_num_val: int = 200,  # datamodules.synthetic.DEFAULT_NUM_VAL (imported there only when used)
        synthetic_image_size: int = 128,
        synthetic_seed: int = 0,
        synthetic_style: str = "simple",
    ):
        super().__init__()
        self.save_hyperparameters()
        if batch_size < 1 or (val_batch_size is not None and val_batch_size < 1):
            raise ValueError(f"batch sizes must be >= 1, got batch_size={batch_size}, val_batch_size={val_batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        for split, images, ann in (("train", train_images, train_ann), ("val", val_images, val_ann)):
            if (images is None) != (ann is None):
                raise ValueError(f"give both {split}_images and {split}_ann, or neither")
        # Build the train pipeline now so a bad hflip_prob / scale_jitter fails at configuration time.
        self.train_transforms = build_train_transforms(hflip_prob, photometric, scale_jitter, augmentation)
        self.eval_transforms = build_eval_transforms()
        self.train_dataset: CocoInstanceDataset | None = None
        self.val_dataset: CocoInstanceDataset | None = None
        self._synthetic_root: Path | None = None
        self._categories: list[tuple[int, str]] | None = None

    # ------------------------------------------------------------------------------------------------- paths

    def _root(self) -> Path | None:
        hp = self.hparams
        if hp.root is not None:
            return Path(hp.root)
        if any(p is not None for p in (hp.train_images, hp.train_ann, hp.val_images, hp.val_ann)):
            return None  # explicit paths given: no silent fallback to synthetic data for the missing split
        if self._synthetic_root is None:
            from datamodules.synthetic import synthetic_root  # only the embedded default needs it

            self._synthetic_root = synthetic_root(
                num_train=hp.synthetic_num_train,
                num_val=hp.synthetic_num_val,
                image_size=hp.synthetic_image_size,
                seed=hp.synthetic_seed,
                style=hp.synthetic_style,
            )
        return self._synthetic_root

    def split_paths(self, split: str) -> tuple[str, str]:
        """(image_dir, ann_file) of split "train" or "val"."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        hp = self.hparams
        images, ann = (hp.train_images, hp.train_ann) if split == "train" else (hp.val_images, hp.val_ann)
        if images is not None:
            return str(images), str(ann)
        root = self._root()
        if root is None:
            raise DatasetError(f"no {split} split configured: give data.root or data.{split}_images + data.{split}_ann")
        return coco_layout(root, hp.train_split if split == "train" else hp.val_split)

    def ann_file(self, split: str) -> str:
        """Path of the annotation JSON of split "train" or "val" (what the evaluator scores against)."""
        return self.split_paths(split)[1]

    # -------------------------------------------------------------------------------------------- categories

    def _read_categories(self) -> list[tuple[int, str]]:
        if self._categories is None:
            if self.val_dataset is not None:
                self._categories = self.val_dataset.categories
            else:
                try:
                    ann = self.ann_file("val")
                except DatasetError:
                    ann = self.ann_file("train")
                self._categories = read_categories(ann)
        return self._categories

    @property
    def num_classes(self) -> int:
        return len(self._read_categories())

    @property
    def class_names(self) -> list[str]:
        return [name for _, name in self._read_categories()]

    @property
    def label_to_cat_id(self) -> list[int]:
        return [cat_id for cat_id, _ in self._read_categories()]

    # ------------------------------------------------------------------------------------------------- setup

    def prepare_data(self) -> None:
        self._root()  # generates the synthetic default once, on one process, before setup() runs everywhere

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if self.val_dataset is None:
            image_dir, ann = self.split_paths("val")
            self.val_dataset = CocoInstanceDataset(image_dir, ann, self.eval_transforms, strict=hp.strict)
        if stage in ("fit", None) and self.train_dataset is None:
            image_dir, ann = self.split_paths("train")
            self.train_dataset = CocoInstanceDataset(
                image_dir, ann, self.train_transforms, skip_empty=hp.skip_empty_train, strict=hp.strict
            )
            if self.train_dataset.categories != self.val_dataset.categories:
                raise DatasetError(
                    f"{self.train_dataset.ann_file} and {self.val_dataset.ann_file}: category lists differ "
                    f"(train {len(self.train_dataset.categories)}, val {len(self.val_dataset.categories)} categories;"
                    " ids and names must be identical)"
                )
        self._categories = self.val_dataset.categories

    def _loader(self, dataset: CocoInstanceDataset, batch_size: int, shuffle: bool,
                group_ids: list[int] | None = None) -> DataLoader:
        hp = self.hparams
        batching: dict[str, Any] = dict(batch_size=batch_size, shuffle=shuffle)
        if group_ids is not None:
            sampler = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
            batching = dict(batch_sampler=GroupedBatchSampler(sampler, group_ids, batch_size))
        return DataLoader(
            dataset,
            **batching,
            num_workers=hp.num_workers,
            pin_memory=hp.pin_memory,
            persistent_workers=hp.persistent_workers and hp.num_workers > 0,
            collate_fn=collate_instances,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled; with `group_by_aspect_ratio` (the default) every batch holds one orientation, so it pads to
        few extra pixels, and under DDP the ranks split each epoch exactly (datamodules.sampler)."""
        if self.train_dataset is None:
            self.setup("fit")
        group_ids = None
        if self.hparams.group_by_aspect_ratio:
            records = self.train_dataset._records  # the canvas sizes, which the train transforms keep
            group_ids = orientation_groups([(records[i].height, records[i].width) for i in range(len(records))])
        return self._loader(self.train_dataset, self.hparams.batch_size, shuffle=True, group_ids=group_ids)

    def val_dataloader(self) -> DataLoader:
        if self.val_dataset is None:
            self.setup("validate")
        return self._loader(self.val_dataset, self.hparams.val_batch_size or self.hparams.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()

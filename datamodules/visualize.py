"""Prediction overlays as PNG files, so a person can see what a model does.

    maskbench predict --config MODEL.yaml --ckpt_path CKPT --visualize OUT_DIR [--score_thresh 0.3]
                      [--trainer.limit_predict_batches 5]

`--visualize OUT_DIR` (an option of `maskbench predict`, benchmarks/lightning_cli.py) adds a PredictionOverlayWriter
to Lightning's predict: for every predicted image it writes OUT_DIR/<image_id>.png, the ground truth on the left and
the detections (score >= threshold) on the right: masks filled with one colour per class (torchvision's
draw_segmentation_masks), boxes with "class score" labels (draw_bounding_boxes). Written batch by batch: nothing
is kept.
"""
from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Any, Sequence

import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor
from torchvision.io import write_png
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from datamodules.files import atomic_path

GAP = 4  # px of white between the two panels
MASK_ALPHA = 0.45
MIN_SIDE = 384  # px: smaller images are zoomed by an integer factor so box captions stay legible


def class_colours(num_classes: int) -> list[tuple[int, int, int]]:
    """Well-separated RGB colours: hues stepped by the golden ratio, so neighbouring labels never look alike."""
    colours = []
    for label in range(max(num_classes, 1)):
        hue = (label * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
        colours.append((int(255 * r), int(255 * g), int(255 * b)))
    return colours


def draw_instances(image: Tensor, masks: Tensor, boxes: Tensor, labels: Tensor, captions: Sequence[str],
                   colours: list[tuple[int, int, int]]) -> Tensor:
    """image uint8 [3,H,W]; masks bool [K,H,W]; boxes float [K,4] xyxy; labels int64 [K] -> uint8 [3,H,W]."""
    if len(labels) == 0:
        return image
    instance_colours = [colours[int(label) % len(colours)] for label in labels]
    image = draw_segmentation_masks(image, masks.bool(), alpha=MASK_ALPHA, colors=instance_colours)
    return draw_bounding_boxes(image, boxes, labels=list(captions), colors=instance_colours, width=1)


def overlay(image: Tensor, target: dict[str, Any], prediction: dict[str, Tensor], class_names: Sequence[str],
            score_thresh: float) -> Tensor:
    """[ground truth | prediction] side by side, uint8 [3, sH, 2sW + GAP]: s, an integer zoom (nearest neighbour)
    that brings small images to MIN_SIDE px so the captions stay readable."""
    pixels = image.detach().cpu() if image.dtype == torch.uint8 else \
        (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()  # the datamodule sends uint8
    zoom = max(1, -(-MIN_SIDE // max(pixels.shape[-2:])))
    pixels = _zoom(pixels, zoom)
    target = {**target, "masks": _zoom(target["masks"].cpu(), zoom), "boxes": target["boxes"].cpu().float() * zoom}
    prediction = {**prediction, "masks": _zoom(prediction["masks"].cpu(), zoom),
                  "boxes": prediction["boxes"].cpu().float() * zoom}
    colours = class_colours(len(class_names))

    def name(label: Tensor) -> str:
        index = int(label)
        return class_names[index] if 0 <= index < len(class_names) else str(index)

    gt_labels = target["labels"].cpu()
    gt = draw_instances(pixels, target["masks"].cpu().bool(), target["boxes"].cpu().float(), gt_labels,
                        [name(label) for label in gt_labels], colours)
    keep = prediction["scores"].cpu() >= score_thresh
    labels, scores = prediction["labels"].cpu()[keep], prediction["scores"].cpu()[keep]
    predicted = draw_instances(pixels, prediction["masks"].cpu()[keep], prediction["boxes"].cpu().float()[keep],
                               labels, [f"{name(l)} {s:.2f}" for l, s in zip(labels, scores.tolist())], colours)
    gap = torch.full((3, pixels.shape[1], GAP), 255, dtype=torch.uint8)
    return torch.cat([gt, gap, predicted], dim=2)


def _zoom(tensor: Tensor, factor: int) -> Tensor:
    """[..., H, W] -> [..., factor*H, factor*W] by pixel repetition."""
    if factor == 1:
        return tensor
    return tensor.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


class PredictionOverlayWriter(BasePredictionWriter):
    """Writes OUT_DIR/<image_id>.png for every image Lightning's predict loop runs (see the module doc)."""

    def __init__(self, out_dir: str, score_thresh: float = 0.3):
        if not 0 <= score_thresh <= 1:
            raise ValueError(f"--score_thresh must lie in [0, 1], got {score_thresh}")
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.score_thresh = score_thresh
        self.written: list[Path] = []

    def on_predict_start(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def write_on_batch_end(self, trainer, pl_module, outputs, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        images, targets = batch
        datamodule = trainer.datamodule
        class_names = list(getattr(datamodule, "class_names", None) or [])
        for image, target, prediction in zip(images, targets, outputs):
            picture = overlay(image, target, prediction, class_names, self.score_thresh)
            image_id = target["image_id"]
            image_id = int(image_id) if isinstance(image_id, (int, Tensor)) else image_id
            stem = f"{image_id:012d}" if isinstance(image_id, int) else str(image_id)
            path = self.out_dir / f"{stem}.png"
            with atomic_path(path) as tmp:
                write_png(picture, str(tmp))
            self.written.append(path)

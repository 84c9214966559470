"""Sample transforms: torchvision.transforms.v2 pipelines on tv_tensors, so image, boxes and masks move together.

A pipeline is called as `image, target = transforms(image, target)` with
    image   tv_tensors.Image uint8 [3,H,W]
    target  {"boxes": tv_tensors.BoundingBoxes [N,4] XYXY, "masks": tv_tensors.Mask uint8 [N,H,W],
             "labels": int64 [N], "iscrowd": int64 [N], "image_id": int, "orig_size": (H0, W0)}
and returns plain tensors: image float32 [3,H',W'] in 0..1 and the same target keys.

Resizing to a model's input size is the model's job (each architecture owns its input spec); the train pipeline only
augments, and keeps every image at its own canvas size.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


class RandomScaleCrop(v2.Transform):
    """Scale jitter relative to the image's own size, then a random crop (or zero pad) back to its original canvas.

    Zooming in (scale > 1) crops a random window, so objects grow relative to the canvas; zooming out pads, so they
    shrink. Because the canvas keeps its size, the jitter survives the model's own resize to its input spec. This
    is the large-scale-jitter recipe of Ghiasi et al. with the image's own size as the target; torchvision's
    v2.ScaleJitter resizes relative to one fixed target size instead, and v2.RandomCrop needs a fixed crop size.
    Only the sampling is written here; resizing and cropping (F.crop pads when the window leaves the image) are
    torchvision kernels, so boxes and masks follow the image exactly.
    """

    def __init__(self, scale_range: Sequence[float]):
        super().__init__()
        low, high = (float(s) for s in scale_range)
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be two numbers 0 < low <= high, got {list(scale_range)}")
        self.scale_range = (low, high)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        low, high = self.scale_range
        scale = low + float(torch.rand(())) * (high - low)
        new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
        # The window's top-left ranges over [0, new - old] when zoomed in and [new - old, 0] (padding) when out.
        top = int(torch.randint(min(0, new_height - height), max(0, new_height - height) + 1, ()))
        left = int(torch.randint(min(0, new_width - width), max(0, new_width - width) + 1, ()))
        return dict(size=[new_height, new_width], top=top, left=left, height=height, width=width)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        resized = self._call_kernel(F.resize, inpt, size=params["size"], antialias=True)
        return self._call_kernel(
            F.crop, resized, top=params["top"], left=params["left"], height=params["height"], width=params["width"]
        )


def _labels_and_crowd_flags(inputs: tuple[Any, dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """What SanitizeBoundingBoxes must filter together with the boxes (masks it finds by itself).

    A module-level function, not a lambda, so the pipeline pickles into spawned DataLoader workers.
    """
    target = inputs[1]
    return target["labels"], target["iscrowd"]


def build_train_transforms(
    hflip_prob: float = 0.5, photometric: bool = False, scale_jitter: Sequence[float] | None = None
) -> v2.Compose:
    """Horizontal flip, optional scale-jitter + crop (then drop instances cropped away), optional photometric
    distortion (SSD-style brightness/contrast/saturation/hue), then float32 0..1 and plain tensors."""
    if not 0.0 <= hflip_prob <= 1.0:
        raise ValueError(f"hflip_prob must be in [0, 1], got {hflip_prob}")
    steps: list[v2.Transform] = []
    if hflip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip_prob))
    if scale_jitter is not None:
        if len(scale_jitter) != 2:
            raise ValueError(f"scale_jitter must be [low, high], got {list(scale_jitter)}")
        steps.append(RandomScaleCrop(scale_jitter))
        steps.append(v2.SanitizeBoundingBoxes(min_size=1, labels_getter=_labels_and_crowd_flags))
    if photometric:
        steps.append(v2.RandomPhotometricDistort(p=0.5))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()]
    return v2.Compose(steps)


def build_eval_transforms() -> v2.Compose:
    """Identity on the geometry: only float32 0..1 and plain tensors."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()])

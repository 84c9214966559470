"""BlobModel: a test fixture that reaches non-zero COCO AP on the synthetic shapes after a few CPU steps.

Foreground / background per pixel from a small conv net with BatchNorm; instances = the connected components of
the foreground (scipy.ndimage.label), each reported once per class with score = its mean foreground probability x
the learned class prior. Crude, but a handful of optimizer steps give real, non-zero AP — what tests of the
runner and of distributed evaluation need to compare numbers that could differ — and the BatchNorm running
statistics are per-process state under DDP, which an evaluation must not depend on.
"""
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn
from torchvision.ops import masks_to_boxes

from models.base import InstanceSegmentationModule


class BlobModel(InstanceSegmentationModule):
    def __init__(self, num_classes: int, width: int = 8, min_area: int = 64, **kwargs: Any):
        super().__init__(num_classes, **kwargs)
        self.save_hyperparameters()
        self.min_area = min_area
        # Input: RGB plus saturation (max - min) and value (max): the shapes are bright and saturated.
        self.net = nn.Sequential(
            nn.Conv2d(5, width, 3, padding=1), nn.BatchNorm2d(width, momentum=None), nn.ReLU(), nn.Conv2d(width, 1, 1),
        )
        self.class_logits = nn.Parameter(torch.zeros(num_classes))
        # Start from "mostly background" (p = 0.1, as focal-loss heads do), so a few steps only need to raise the
        # shapes, not to push the whole image down.
        nn.init.constant_(self.net[-1].bias, -2.2)

    def _foreground_logits(self, images: list[Tensor]) -> list[Tensor]:
        """list of [3,H,W] -> list of [H,W] logits (one image per call: images differ in size)."""
        logits = []
        for image in images:
            image = image.float() / 255 if image.dtype == torch.uint8 else image  # the datamodule sends uint8
            high, low = image.max(0, keepdim=True).values, image.min(0, keepdim=True).values
            logits.append(self.net(torch.cat([image, high - low, high])[None])[0, 0])
        return logits

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        predictions = []
        class_prior = self.class_logits.softmax(0)
        for image, logits in zip(images, self._foreground_logits(images)):
            probability = logits.sigmoid()
            components, count = ndimage.label((probability > 0.5).cpu().numpy())
            ids = torch.arange(1, count + 1).view(-1, 1, 1)
            masks = torch.from_numpy(components.astype(np.int64))[None] == ids
            masks = masks[masks.flatten(1).sum(1) >= self.min_area].to(image.device)
            objectness = torch.stack([probability[m].mean() for m in masks]) if len(masks) else probability.new_zeros(0)
            num_classes = len(class_prior)
            predictions.append({
                "boxes": masks_to_boxes(masks).repeat_interleave(num_classes, 0) if len(masks)
                else image.new_zeros(0, 4),
                "scores": (objectness[:, None] * class_prior[None]).flatten().float(),
                "labels": torch.arange(num_classes, device=image.device).repeat(len(masks)),
                "masks": masks.repeat_interleave(num_classes, 0),
            })
        return predictions

    def compute_losses(self, images: list[Tensor], targets: list[dict[str, Any]]) -> dict[str, Tensor]:
        mask_losses, labels = [], []
        for logits, target in zip(self._foreground_logits(images), targets):
            keep = target["iscrowd"] == 0
            foreground = target["masks"][keep].bool().any(0) if keep.any() else torch.zeros_like(logits, dtype=torch.bool)
            mask_losses.append(F.binary_cross_entropy_with_logits(logits, foreground.float()))
            labels.append(target["labels"][keep])
        labels = torch.cat(labels)
        loss_cls = (F.cross_entropy(self.class_logits[None].expand(len(labels), -1), labels) if len(labels)
                    else self.class_logits.sum() * 0)
        return {"loss_mask": torch.stack(mask_losses).mean(), "loss_cls": loss_cls}

"""TinyInstanceModel: the smallest InstanceSegmentationModule that honours the model contract, for tests of the base.

Every image goes through one strided conv (+ GroupNorm, so there is a norm layer to exclude from weight decay);
a 1x1 conv predicts `num_slots` mask logits, and a linear layer on the pooled features predicts `num_slots`
boxes and class logits. Training pairs slot i with the i-th non-crowd target: trivial, but every loss term depends
on the weights and on the targets.
"""
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import InstanceSegmentationModule


class TinyInstanceModel(InstanceSegmentationModule):
    def __init__(
        self,
        num_classes: int,
        width: int = 8,
        num_slots: int = 3,
        nonfinite_loss: bool = False,
        **kwargs: Any,
    ):
        super().__init__(num_classes, **kwargs)
        self.num_slots = num_slots
        self.nonfinite_loss = nonfinite_loss  # test switch: every loss is NaN, to exercise step skipping
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.GroupNorm(2, width), nn.ReLU())
        self.mask_head = nn.Conv2d(width, num_slots, 1)
        self.box_class_head = nn.Linear(width, num_slots * (4 + num_classes))

    def _raw_outputs(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[3,H,W] -> normalised boxes [S,4] xyxy in 0..1, class logits [S,C], mask logits [S,H,W]."""
        height, width = image.shape[-2:]
        image = image.float() / 255 if image.dtype == torch.uint8 else image  # the datamodule sends uint8
        features = self.stem(image[None])
        mask_logits = F.interpolate(self.mask_head(features), size=(height, width), mode="bilinear")[0]
        head = self.box_class_head(features.mean(dim=(2, 3)))[0].view(self.num_slots, -1)
        centre, extent = head[:, 0:2].sigmoid(), head[:, 2:4].sigmoid() * 0.5
        boxes = torch.cat([(centre - extent).clamp(0, 1), (centre + extent).clamp(0, 1)], dim=1)
        return boxes, head[:, 4:], mask_logits

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        predictions = []
        for image in images:
            height, width = image.shape[-2:]
            boxes, class_logits, mask_logits = self._raw_outputs(image)
            scores, labels = class_logits.softmax(dim=1).max(dim=1)
            scale = boxes.new_tensor([width, height, width, height])
            predictions.append(
                {"boxes": boxes * scale, "scores": scores, "labels": labels, "masks": mask_logits.sigmoid() > 0.5}
            )
        return predictions

    def compute_losses(self, images: list[Tensor], targets: list[dict[str, Any]]) -> dict[str, Tensor]:
        terms: dict[str, list[Tensor]] = {"loss_cls": [], "loss_box": [], "loss_mask": []}
        for image, target in zip(images, targets):
            height, width = image.shape[-2:]
            boxes, class_logits, mask_logits = self._raw_outputs(image)
            keep = target["iscrowd"] == 0  # crowd regions are never a training target
            count = min(self.num_slots, int(keep.sum()))
            # "* 0" keeps an image without targets in the graph, so every parameter still receives a gradient.
            anchor = (boxes.sum() + class_logits.sum() + mask_logits.sum()) * 0
            if count == 0:
                for values in terms.values():
                    values.append(anchor)
                continue
            scale = boxes.new_tensor([width, height, width, height])
            terms["loss_cls"].append(F.cross_entropy(class_logits[:count], target["labels"][keep][:count]) + anchor)
            terms["loss_box"].append(F.l1_loss(boxes[:count], target["boxes"][keep][:count] / scale))
            gt_masks = target["masks"][keep][:count].to(mask_logits.dtype)
            terms["loss_mask"].append(F.binary_cross_entropy_with_logits(mask_logits[:count], gt_masks))
        losses = {name: torch.stack(values).mean() for name, values in terms.items()}
        if self.nonfinite_loss:
            losses = {name: value * float("nan") for name, value in losses.items()}
        return losses

"""The datamodule's targets as Mask R-CNN's training targets: crowd regions out, labels shifted past background."""
from __future__ import annotations

import torch
from torch import Tensor


def training_targets(targets: list[dict], num_classes: int) -> list[dict[str, Tensor]]:
    """Per image `boxes` float [N', 4], `labels` int64 [N'] in 1..num_classes, `masks` uint8 [N', H, W].

    Crowd regions (iscrowd=1) are dropped before any matching. Kept, a crowd box would be matched like an
    instance: anchors and RoIs overlapping it would learn to predict one "object" spanning a whole crowd, and its
    mask would train the mask head on a group. (Detectron marks anchors on crowds as ignored instead; dropping
    them is the simpler correct choice, the one torchvision's reference training makes.)

    Raises ValueError naming the image when a label is out of range or a kept box has no area (its regression
    target would be log(0)).
    """
    converted = []
    for target in targets:
        image_id = target.get("image_id", "?")
        boxes, labels = target["boxes"], target["labels"]
        keep = torch.ones(labels.shape[0], dtype=torch.bool, device=labels.device)
        if "iscrowd" in target:
            keep = target["iscrowd"] == 0
        boxes, labels, masks = boxes[keep].float(), labels[keep], target["masks"][keep]
        # Checked only where it is free: on a GPU each check is a host sync per image and step, and the datamodule's
        # loader has already checked its targets on the CPU (datamodules.coco.check_target).
        if labels.device.type == "cpu":
            _check(boxes, labels, num_classes, image_id)
        converted.append({"boxes": boxes, "labels": labels.long() + 1, "masks": masks.to(torch.uint8)})
    return converted


def _check(boxes: Tensor, labels: Tensor, num_classes: int, image_id) -> None:
    """Raises ValueError naming the image for a label outside [0, num_classes) or a box without area."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"image {image_id}: target labels must be in [0, {num_classes}), got {labels.tolist()}"
        )
    degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if degenerate.any():
        raise ValueError(
            f"image {image_id}: target box {boxes[degenerate][0].tolist()} has no area (xyxy needs x2>x1, y2>y1)"
        )

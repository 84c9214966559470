"""The datamodule's targets as ISTR's matching targets: crowd dropped, boxes in the resized input, box-mask crops.

Masks are cropped at the image's own resolution with its own boxes (`crop_box_masks`, the construction the codec
is fitted on) rather than after the model's resize, so the crops do not depend on the input size.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from models.istr.mask_codec import crop_box_masks
from models.istr.matcher import MatchTarget


def match_targets(
    targets: list[dict[str, Any]],
    input_sizes: list[tuple[int, int]],
    resized_sizes: list[tuple[int, int]],
    codec,
    mask_size: int,
    device: torch.device,
) -> list[MatchTarget]:
    """One MatchTarget per image.

    Args:
        targets: the datamodule's dicts (boxes [N, 4] xyxy pixels, labels [N], masks [N, H, W], iscrowd [N]).
        input_sizes: (H, W) of each image as given to the model; resized_sizes: (H', W') after its resize.
        codec: encodes the crops into the embeddings the mask branch regresses (fresh soft-logit noise per call).
        mask_size: M of the crops.
    """
    converted = []
    for target, (height, width), (resized_h, resized_w) in zip(targets, input_sizes, resized_sizes):
        keep = torch.as_tensor(target["iscrowd"]).to(device) == 0
        boxes = torch.as_tensor(target["boxes"]).as_subclass(Tensor).to(device, torch.float32)[keep]
        labels = torch.as_tensor(target["labels"]).as_subclass(Tensor).to(device, torch.int64)[keep]
        masks = torch.as_tensor(target["masks"]).as_subclass(Tensor).to(device)[keep]
        crops = crop_box_masks(masks, boxes, mask_size) if len(boxes) else boxes.new_zeros((0, mask_size, mask_size))
        scale = boxes.new_tensor([resized_w / width, resized_h / height] * 2)
        with torch.no_grad():
            embeddings = codec.encode(crops) if len(crops) else boxes.new_zeros((0, codec.num_components))
        converted.append(
            MatchTarget(
                labels=labels,
                boxes=boxes * scale,
                image_size=boxes.new_tensor([resized_w, resized_h] * 2),
                masks=crops,
                embeddings=embeddings,
            )
        )
    return converted

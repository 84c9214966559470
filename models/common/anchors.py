"""Dense grid anchors, SSD / YOLACT style: one set of boxes centred on every cell of every pyramid level.

torchvision's AnchorGenerator puts centres at `i * stride` (the cell's corner) and rounds its base anchors to
integers; SSD-family detectors (YOLACT among them) centre anchors at `(i + 0.5) / grid_size` of the image and keep
fractional sizes, and their trained weights depend on it, so the grid is written here by hand (a few lines).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def grid_anchors(
    feature_sizes: list[tuple[int, int]],
    image_size: tuple[int, int],
    scales: list[float],
    aspect_ratios: list[float],
    square: bool = False,
    device: torch.device | str | None = None,
) -> Tensor:
    """Anchors of every level, ordered level, row (y), column (x), then aspect ratio.

    Args:
        feature_sizes: (H_l, W_l) of each level's feature map.
        image_size: (H, W) of the network input, in pixels.
        scales: one anchor scale (pixels of the input) per level.
        aspect_ratios: width / height ratios r; an anchor is scale * sqrt(r) wide and scale / sqrt(r) tall.
        square: YOLACT v1's `use_square_anchors` quirk: height = width, so the "ratios" only change the side
            (scale * sqrt(r)); its released weights were trained that way.
        device: where the anchors are built.

    Returns:
        float32 [sum_l H_l * W_l * len(aspect_ratios), 4] boxes xyxy in input pixels. The centre of cell (i, j) of a
        level is ((j + 0.5) / W_l * W, (i + 0.5) / H_l * H): the grid spans the image whatever the rounding of the
        feature size, as in YOLACT (not `j * stride`).
    """
    if len(scales) != len(feature_sizes):
        raise ValueError(f"grid_anchors: {len(scales)} scales for {len(feature_sizes)} feature levels")
    if not aspect_ratios or any(r <= 0 for r in aspect_ratios):
        raise ValueError(f"grid_anchors: aspect_ratios must be positive, got {aspect_ratios}")
    height, width = image_size
    root_ratios = torch.tensor([math.sqrt(r) for r in aspect_ratios], dtype=torch.float32, device=device)
    levels = []
    for (grid_h, grid_w), scale in zip(feature_sizes, scales):
        anchor_w = scale * root_ratios  # [A]
        anchor_h = anchor_w if square else scale / root_ratios
        centre_y = (torch.arange(grid_h, dtype=torch.float32, device=device) + 0.5) * (height / grid_h)
        centre_x = (torch.arange(grid_w, dtype=torch.float32, device=device) + 0.5) * (width / grid_w)
        cy, cx = torch.meshgrid(centre_y, centre_x, indexing="ij")  # [H_l, W_l]
        cx, cy = cx[..., None], cy[..., None]  # broadcast against the A anchors of a cell
        boxes = torch.stack(
            [
                cx - anchor_w / 2,
                cy - anchor_h / 2,
                cx + anchor_w / 2,
                cy + anchor_h / 2,
            ],
            dim=-1,
        )  # [H_l, W_l, A, 4]
        levels.append(boxes.reshape(-1, 4))
    return torch.cat(levels)

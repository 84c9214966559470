"""Zero every mask outside its box, at the mask's own resolution (YOLACT's `crop`, also used by box-cropped losses).

Unlike `masks.crop_and_resize_masks` (RoIAlign into a fixed M x M grid), the mask keeps its full-image grid and
only the pixels outside the (padded) box are cleared; no library offers that, hence the few lines here.
"""
from __future__ import annotations

import torch
from torch import Tensor


def box_mask_region(boxes: Tensor, height: int, width: int, padding: float = 1.0) -> Tensor:
    """bool [K, H, W]: pixel (y, x) lies in the padded box k.

    Args:
        boxes: float [K, 4] xyxy in pixels of the H x W mask grid (corners in either order).
        padding: pixels added on every side before clamping to the grid (YOLACT uses 1).

    Pixel x (its index, 0..W-1) is inside when x0 - padding <= x < x1 + padding, with x0 = min(box x),
    x1 = max(box x) clamped to [0, W] — YOLACT's sanitised coordinates, kept fractional.
    """
    x0 = torch.minimum(boxes[:, 0], boxes[:, 2]) - padding
    x1 = torch.maximum(boxes[:, 0], boxes[:, 2]) + padding
    y0 = torch.minimum(boxes[:, 1], boxes[:, 3]) - padding
    y1 = torch.maximum(boxes[:, 1], boxes[:, 3]) + padding
    x0, x1 = x0.clamp(min=0), x1.clamp(max=width)
    y0, y1 = y0.clamp(min=0), y1.clamp(max=height)
    cols = torch.arange(width, device=boxes.device, dtype=boxes.dtype)[None, :]
    rows = torch.arange(height, device=boxes.device, dtype=boxes.dtype)[None, :]
    inside_x = (cols >= x0[:, None]) & (cols < x1[:, None])  # [K, W]
    inside_y = (rows >= y0[:, None]) & (rows < y1[:, None])  # [K, H]
    return inside_y[:, :, None] & inside_x[:, None, :]


def crop_masks(masks: Tensor, boxes: Tensor, padding: float = 1.0) -> Tensor:
    """masks [K, H, W] (any dtype), boxes [K, 4] xyxy in mask pixels -> masks with zeros outside each padded box."""
    if masks.dim() != 3 or boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"crop_masks: masks [K,H,W] and boxes [K,4] expected, got {tuple(masks.shape)}, "
                         f"{tuple(boxes.shape)}")
    region = box_mask_region(boxes.float(), masks.shape[1], masks.shape[2], padding)
    return masks * region.to(masks.dtype)

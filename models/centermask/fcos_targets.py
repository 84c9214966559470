"""FCOS training targets: which ground-truth box each feature location regresses, as in centermask2.

A location (x, y) of level l (centre of its cell: j * stride + stride // 2) is positive for a box when
- it lies strictly inside the box's "centre region": the box shrunk to `radius * stride` around its centre
  (center sampling; with radius <= 0 the whole box), and
- the largest of its distances (l, t, r, b) to the box's sides lies in the level's size-of-interest range,
  bounds INCLUDED (centermask2's choice; torchvision's FCOS excludes them);
a location positive for several boxes takes the one of smallest area.

torchvision's FCOS matcher assigns anchors with the same ideas but strict range bounds and no per-level ranges of
this form, so the assignment (a few tensor operations) is written here.
"""
from __future__ import annotations

import torch
from torch import Tensor

INF = 1e8


def level_locations(
    feature_sizes: list[tuple[int, int]], strides: list[int], device: torch.device | str | None = None
) -> list[Tensor]:
    """Pixel coordinates of every cell centre: per level float [H_l * W_l, 2] (x, y), rows then columns."""
    locations = []
    for (height, width), stride in zip(feature_sizes, strides):
        xs = torch.arange(width, dtype=torch.float32, device=device) * stride + stride // 2
        ys = torch.arange(height, dtype=torch.float32, device=device) * stride + stride // 2
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        locations.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1))
    return locations


def size_ranges_per_level(boundaries: list[float]) -> list[tuple[float, float]]:
    """[64, 128, 256, 512] -> [(-1, 64), (64, 128), (128, 256), (256, 512), (512, INF)]: one range per level."""
    edges = [-1.0, *[float(b) for b in boundaries], INF]
    return list(zip(edges[:-1], edges[1:]))


def assign_targets(
    locations: Tensor,
    strides: Tensor,
    size_ranges: Tensor,
    boxes: Tensor,
    labels: Tensor,
    num_classes: int,
    center_radius: float = 1.5,
) -> tuple[Tensor, Tensor]:
    """Class and regression target of every location of one image.

    Args:
        locations: float [P, 2] (x, y) of all locations of all levels.
        strides: float [P], the stride of each location's level.
        size_ranges: float [P, 2] (low, high) size of interest of each location's level (inclusive).
        boxes: float [N, 4] xyxy ground-truth boxes (crowd regions already removed).
        labels: int64 [N] contiguous classes 0..num_classes-1.
        num_classes: the background label given to negative locations.
        center_radius: center-sampling radius in strides; <= 0 uses the whole box.

    Returns:
        labels int64 [P] (num_classes = background) and box targets float [P, 4] (l, t, r, b) in pixels (those of
        negative locations are meaningless).
    """
    num_locations = locations.shape[0]
    if boxes.numel() == 0:
        return labels.new_full((num_locations,), num_classes), locations.new_zeros((num_locations, 4))
    xs, ys = locations[:, 0:1], locations[:, 1:2]  # [P, 1]
    left, top = xs - boxes[None, :, 0], ys - boxes[None, :, 1]
    right, bottom = boxes[None, :, 2] - xs, boxes[None, :, 3] - ys
    distances = torch.stack([left, top, right, bottom], dim=2)  # [P, N, 4]

    if center_radius > 0:
        centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
        centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
        reach = strides[:, None] * center_radius  # [P, 1]
        region_x0 = torch.maximum(centre_x[None] - reach, boxes[None, :, 0])
        region_y0 = torch.maximum(centre_y[None] - reach, boxes[None, :, 1])
        region_x1 = torch.minimum(centre_x[None] + reach, boxes[None, :, 2])
        region_y1 = torch.minimum(centre_y[None] + reach, boxes[None, :, 3])
        region = torch.stack([xs - region_x0, ys - region_y0, region_x1 - xs, region_y1 - ys], dim=2)
        inside = region.min(dim=2).values > 0
    else:
        inside = distances.min(dim=2).values > 0

    largest = distances.max(dim=2).values
    in_range = (largest >= size_ranges[:, 0:1]) & (largest <= size_ranges[:, 1:2])

    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    candidate_areas = areas[None].expand(num_locations, -1).clone()
    candidate_areas[~(inside & in_range)] = float("inf")
    smallest, chosen = candidate_areas.min(dim=1)  # ties: the first box, as torch.min / the official code
    target_labels = labels[chosen].clone()
    target_labels[torch.isinf(smallest)] = num_classes
    return target_labels, distances[torch.arange(num_locations, device=boxes.device), chosen]


def centerness_targets(distances: Tensor) -> Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of float [K, 4] (l, t, r, b) distances -> [K]."""
    left_right, top_bottom = distances[:, [0, 2]], distances[:, [1, 3]]
    ratio = (left_right.min(dim=1).values / left_right.max(dim=1).values) * (
        top_bottom.min(dim=1).values / top_bottom.max(dim=1).values
    )
    return torch.sqrt(ratio)

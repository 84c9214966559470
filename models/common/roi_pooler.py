"""RoIAlign over pyramid levels with a choice of the rule that picks each RoI's level.

Two level-assignment rules exist:
- "mask_rcnn" (Lin et al., FPN, Eq. 1): k = floor(k0 + log2(sqrt(w h) / 224)), k0 = 4, from the box's own size;
- "scale_adaptive" (Lee & Park, CenterMask, Eq. 2): k = ceil(k_max - log2(A_input / A_RoI)), from the box's area
  relative to the (resized, unpadded) input image, so the rule does not depend on ImageNet's 224 px and small
  inputs still use the coarse levels for large objects.
Both are clamped to the pooled levels.

torchvision's MultiScaleRoIAlign implements only the first rule and always pools with `aligned=False`;
detectron2-trained heads need the half-pixel-corrected RoIAlign (`aligned=True`, ROIAlignV2), so the pooling loop
(one torchvision `roi_align` call per level) is written here.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

LEVEL_RULES = ("scale_adaptive", "mask_rcnn")
# detectron2 adds this inside the logarithm so that a box of exactly the boundary size lands on a stable side.
_EPS = 2.220446049250313e-16


def scale_adaptive_levels(boxes: Tensor, image_areas: Tensor, min_level: int, max_level: int) -> Tensor:
    """CenterMask's level of each box: ceil(max_level - log2(A_input / A_box)) clamped to [min_level, max_level].

    Args:
        boxes: float [K, 4] xyxy in pixels of the resized input.
        image_areas: float [K], the area (h x w, unpadded) of the input image each box belongs to.

    Returns:
        int64 [K] pyramid levels (3 = stride 8 ...). An input-to-box area ratio below 2 gives max_level, [2, 4)
        max_level - 1, and so on; an empty box gets min_level.
    """
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    levels = torch.ceil(max_level - torch.log2(image_areas / areas + _EPS))
    return levels.clamp(min=min_level, max=max_level).to(torch.int64)


def mask_rcnn_levels(
    boxes: Tensor, min_level: int, max_level: int, canonical_size: float = 224.0, canonical_level: int = 4
) -> Tensor:
    """FPN's level of each box: floor(canonical_level + log2(sqrt(area) / canonical_size)), clamped. int64 [K]."""
    areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0)
    levels = torch.floor(canonical_level + torch.log2(torch.sqrt(areas) / canonical_size + _EPS))
    return levels.clamp(min=min_level, max=max_level).to(torch.int64)


class LevelRoIAlign(nn.Module):
    """Pools every RoI from the one pyramid level its rule assigns it.

    Args:
        strides: stride of each pooled level, finest first, consecutive powers of two (e.g. [8, 16, 32]).
        output_size: side S of the pooled grid.
        level_rule: "scale_adaptive" or "mask_rcnn" (see the module docstring).
        sampling_ratio: RoIAlign samples per bin side; 0 = adaptive (ceil(roi size / S)), detectron2's default.
        aligned: the half-pixel correction (detectron2's ROIAlignV2).

    `forward(features: list[Tensor[B,C,H_l,W_l]], boxes: list[Tensor[K_i,4]], image_sizes: list[(h, w)])
    -> Tensor[sum K_i, C, S, S]`, boxes in pixels of the input, RoIs in the order of the images, then boxes.
    """

    def __init__(
        self,
        strides: list[int],
        output_size: int = 14,
        level_rule: str = "scale_adaptive",
        sampling_ratio: int = 0,
        aligned: bool = True,
    ):
        super().__init__()
        if level_rule not in LEVEL_RULES:
            raise ValueError(f"LevelRoIAlign: level_rule must be one of {LEVEL_RULES}, got {level_rule!r}")
        levels = [int(round(math.log2(s))) for s in strides]
        if not strides or [2**k for k in levels] != list(strides) or levels != list(range(levels[0], levels[-1] + 1)):
            raise ValueError(f"LevelRoIAlign: strides must be consecutive powers of two, got {strides}")
        self.strides = list(strides)
        self.min_level, self.max_level = levels[0], levels[-1]
        self.output_size = output_size
        self.level_rule = level_rule
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def levels(self, boxes: list[Tensor], image_sizes: list[tuple[int, int]]) -> Tensor:
        """int64 [sum K_i]: the pyramid level (3 = stride 8 ...) of every box.

        Computed in float32 whatever the boxes' dtype: an image area above 65504 px overflows float16, and bfloat16
        rounds box sides to 4-8 px steps above 512 px.
        """
        flat = torch.cat(boxes).float() if boxes else torch.zeros(0, 4)
        if self.level_rule == "mask_rcnn":
            return mask_rcnn_levels(flat, self.min_level, self.max_level)
        areas = torch.cat(
            [flat.new_full((len(b),), float(h * w)) for b, (h, w) in zip(boxes, image_sizes)]
        ) if boxes else flat.new_zeros(0)
        return scale_adaptive_levels(flat, areas, self.min_level, self.max_level)

    def forward(self, features: list[Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]) -> Tensor:
        if len(features) != len(self.strides):
            raise ValueError(f"LevelRoIAlign: {len(features)} feature maps for strides {self.strides}")
        if len(boxes) != features[0].shape[0] or len(image_sizes) != len(boxes):
            raise ValueError(
                f"LevelRoIAlign: {len(boxes)} box lists and {len(image_sizes)} image sizes for a batch of "
                f"{features[0].shape[0]}"
            )
        reference = features[0]
        # RoIs stay float32 under mixed precision (see `levels`); only the pooled features take the features' dtype.
        rois = torch.cat(
            [torch.cat([b.new_full((len(b), 1), float(i)), b], dim=1) for i, b in enumerate(boxes)]
        ).float()
        levels = self.levels(boxes, image_sizes)
        pooled = reference.new_zeros((rois.shape[0], reference.shape[1], self.output_size, self.output_size))
        for index, (feature, stride) in enumerate(zip(features, self.strides)):
            chosen = torch.nonzero(levels == self.min_level + index).squeeze(1)
            if chosen.numel() == 0:
                continue
            # roi_align in float32 (torchvision's autocast wrapper would up-cast the level anyway; this also holds
            # for half-precision weights outside autocast, where the kernel needs matching dtypes).
            pooled[chosen] = roi_align(
                feature.float(), rois[chosen], self.output_size, spatial_scale=1.0 / stride,
                sampling_ratio=self.sampling_ratio, aligned=self.aligned,
            ).to(pooled.dtype)
        return pooled

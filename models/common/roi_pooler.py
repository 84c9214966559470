"""RoIAlign over pyramid levels with a choice of the rule that picks each RoI's level.

Two level-assignment rules exist, each written as its official code computes it (the epsilon and where it sits
decide the level of a box exactly at a boundary, which tests pin):
- "mask_rcnn" (Lin et al., FPN, Eq. 1), used by Mask R-CNN and ISTR: detectron2's `assign_boxes_to_levels`,
  k = floor(4 + log2(sqrt(w h) / 224 + 1e-8)) with w h the box's area (no +1). torchvision's `LevelMapper` adds
  its 1e-6 outside the logarithm instead, which moves boxes up to ~7e-7 (relative) below a boundary one level up.
- "scale_adaptive" (Lee & Park, CenterMask, Eq. 2), used by CenterMask: centermask2's
  `assign_boxes_to_levels_by_ratio`, k = ceil(k_max - log2(A_input / A_RoI + eps)), eps = float64's machine
  epsilon, from the box's area relative to the (resized, unpadded) input image, so the rule does not depend on
  ImageNet's 224 px and small inputs still use the coarse levels for large objects.
Both are clamped to the pooled levels.

torchvision's MultiScaleRoIAlign implements only the first rule (torchvision's epsilon) and always pools with
`aligned=False`; detectron2-trained heads need the half-pixel-corrected RoIAlign (`aligned=True`, ROIAlignV2), so
the pooling (torchvision `roi_align` per level) is written here.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

LEVEL_RULES = ("scale_adaptive", "mask_rcnn")
# The official epsilons inside the logarithms (they also keep an empty box's log finite): centermask2's
# sys.float_info.epsilon, detectron2's 1e-8.
_SCALE_ADAPTIVE_EPS = 2.220446049250313e-16
_MASK_RCNN_EPS = 1e-8


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
    levels = torch.ceil(max_level - torch.log2(image_areas / areas + _SCALE_ADAPTIVE_EPS))
    return levels.clamp(min=min_level, max=max_level).to(torch.int64)


def mask_rcnn_levels(
    boxes: Tensor, min_level: int, max_level: int, canonical_size: float = 224.0, canonical_level: int = 4
) -> Tensor:
    """FPN's level of each box: floor(canonical_level + log2(sqrt(area) / canonical_size + 1e-8)), clamped.

    int64 [K]. A box of exactly 224 px (sqrt of its area) gets canonical_level, one a float32 step smaller the level
    below. An empty (or inverted) box gets min_level.
    """
    areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0)
    levels = torch.floor(canonical_level + torch.log2(torch.sqrt(areas) / canonical_size + _MASK_RCNN_EPS))
    return levels.clamp(min=min_level, max=max_level).to(torch.int64)


class LevelRoIAlign(nn.Module):
    """Pools every RoI from the one pyramid level its rule assigns it.

    Boxes, levels and RoIAlign stay float32 under mixed precision (float16 overflows image areas above 65504 px,
    bfloat16 rounds RoI corners to 4-8 px steps above 512 px); only the pooled features take the features' dtype.

    Two ways to pick each RoI's level, with equal results:
    - per level (`gather_levels=False`): every level pools only its own RoIs, found with `nonzero`, a host sync per
      level; the least arithmetic, for many RoIs of varied sizes (Mask R-CNN's 512 per image; CenterMask), whose
      heads wait for the device elsewhere anyway (NMS, proposal counts);
    - gather (`gather_levels=True`): every level pools every RoI and an index picks each RoI's level, so shapes are
      fixed and nothing waits for the device, at L times the RoIAlign work; for few RoIs pooled many times (ISTR's
      N queries in each of 6 stages, a head otherwise free of host syncs).
    `gather_levels=None` gathers on any device but the CPU, where a sync costs nothing.

    Args:
        strides: stride of each pooled level, finest first, consecutive powers of two (e.g. [8, 16, 32]).
        output_size: side S of the pooled grid.
        level_rule: "scale_adaptive" or "mask_rcnn" (see the module docstring).
        sampling_ratio: RoIAlign samples per bin side; 0 = adaptive (ceil(roi size / S)), detectron2's default.
        aligned: the half-pixel correction (detectron2's ROIAlignV2).
        gather_levels: see above.

    `forward(features: list[Tensor[B,C,H_l,W_l]], boxes: list[Tensor[K_i,4]], image_sizes: list[(h, w)] | None)
    -> Tensor[sum K_i, C, S, S]`, boxes in pixels of the input, RoIs in the order of the images, then boxes;
    image_sizes (resized, unpadded) only needed by "scale_adaptive".
    """

    def __init__(
        self,
        strides: list[int],
        output_size: int = 14,
        level_rule: str = "scale_adaptive",
        sampling_ratio: int = 0,
        aligned: bool = True,
        gather_levels: bool | None = False,
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
        self.gather_levels = gather_levels

    def levels(self, boxes: list[Tensor], image_sizes: list[tuple[int, int]] | None = None) -> Tensor:
        """int64 [sum K_i]: the pyramid level (3 = stride 8 ...) of every box, computed in float32."""
        flat = torch.cat(boxes).float() if boxes else torch.zeros(0, 4)
        if self.level_rule == "mask_rcnn":
            return mask_rcnn_levels(flat, self.min_level, self.max_level)
        if image_sizes is None:
            raise ValueError("LevelRoIAlign: the scale_adaptive level rule needs the image sizes")
        areas = torch.cat(
            [flat.new_full((len(b),), float(h * w)) for b, (h, w) in zip(boxes, image_sizes)]
        ) if boxes else flat.new_zeros(0)
        return scale_adaptive_levels(flat, areas, self.min_level, self.max_level)

    def forward(
        self, features: list[Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]] | None = None
    ) -> Tensor:
        if len(features) != len(self.strides):
            raise ValueError(f"LevelRoIAlign: {len(features)} feature maps for strides {self.strides}")
        if len(boxes) != features[0].shape[0] or (image_sizes is not None and len(image_sizes) != len(boxes)):
            raise ValueError(
                f"LevelRoIAlign: {len(boxes)} box lists and {len(image_sizes or [])} image sizes for a batch of "
                f"{features[0].shape[0]}"
            )
        dtype = features[0].dtype
        rois = torch.cat(
            [torch.cat([b.new_full((len(b), 1), float(i), dtype=torch.float32), b.float()], dim=1)
             for i, b in enumerate(boxes)]
        )
        index = self.levels(boxes, image_sizes) - self.min_level
        gather = self.gather_levels if self.gather_levels is not None else rois.device.type != "cpu"
        if gather:
            every = torch.stack([self._pool(f, rois, stride) for f, stride in zip(features, self.strides)])
            return every[index, torch.arange(rois.shape[0], device=rois.device)].to(dtype)
        pooled = features[0].new_zeros((rois.shape[0], features[0].shape[1], self.output_size, self.output_size))
        for level, (feature, stride) in enumerate(zip(features, self.strides)):
            chosen = torch.nonzero(index == level).squeeze(1)
            if chosen.numel():
                pooled[chosen] = self._pool(feature, rois[chosen], stride).to(dtype)
        return pooled

    def _pool(self, feature: Tensor, rois: Tensor, stride: int) -> Tensor:
        # float32 (torchvision's autocast wrapper would up-cast the level anyway; this also holds for half-precision
        # weights outside autocast, where the kernel needs matching dtypes).
        return roi_align(feature.float(), rois, self.output_size, spatial_scale=1.0 / stride,
                         sampling_ratio=self.sampling_ratio, aligned=self.aligned)

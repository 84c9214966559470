"""Feature Pyramid Network over backbone feature maps: torchvision's FeaturePyramidNetwork with named levels.

Levels are named by their stride, "p<log2(stride)>" ("p2" at stride 4 ... "p5" at stride 32), and the extra
levels continue the count: "pool" adds "p6" by max-pooling P5 (Mask R-CNN); "p6p7" adds "p6" and "p7" by
stride-2 3x3 convolutions, fed from P5 (`extra_source="p5"`: FCOS, CenterMask) or from the backbone's last map
C5 (`extra_source="c5"`: RetinaNet, YOLACT).
"""
from __future__ import annotations

import math
from collections import OrderedDict

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

EXTRA_LEVELS = ("none", "pool", "p6p7")
NORMS = {"none": None, "bn": nn.BatchNorm2d}


class FPN(nn.Module):
    """Top-down pyramid with lateral connections; every output level has `out_channels` channels.

    Args:
        in_channels: channels of each input map, finest first (a backbone's `channels`).
        in_strides: stride of each input map, finest first, powers of two (a backbone's `strides`).
        out_channels: channels of every pyramid level.
        extra_levels: "none", "pool" (P6 = max-pool of P5) or "p6p7" (P6, P7 by strided convolutions).
        extra_source: for "p6p7", what P6 is computed from: "p5" or "c5".
        norm: "none" (the original FPN) or "bn" (BatchNorm after every lateral and output convolution, as in
            torchvision's Mask R-CNN v2; it helps a network trained from scratch).

    `forward(features: list[Tensor[B, in_channels[i], H_i, W_i]]) -> OrderedDict[name, Tensor[B, out_channels,
    H_i, W_i]]` ordered finest first; the names are `level_names`, the strides `strides`.
    """

    def __init__(
        self,
        in_channels: list[int],
        in_strides: list[int],
        out_channels: int = 256,
        extra_levels: str = "pool",
        extra_source: str = "p5",
        norm: str = "none",
    ):
        super().__init__()
        if len(in_channels) != len(in_strides) or not in_channels:
            raise ValueError(f"FPN: in_channels {in_channels} and in_strides {in_strides} must be non-empty and align")
        if extra_levels not in EXTRA_LEVELS:
            raise ValueError(f"FPN: extra_levels must be one of {EXTRA_LEVELS}, got {extra_levels!r}")
        if extra_source not in ("p5", "c5"):
            raise ValueError(f"FPN: extra_source must be 'p5' or 'c5', got {extra_source!r}")
        if norm not in NORMS:
            raise ValueError(f"FPN: norm must be one of {tuple(NORMS)}, got {norm!r}")
        input_levels = [int(round(math.log2(s))) for s in in_strides]
        if [2**level for level in input_levels] != list(in_strides):
            raise ValueError(f"FPN: in_strides must be powers of two, got {in_strides}")

        extra_blocks, num_extra = None, 0
        if extra_levels == "pool":
            extra_blocks, num_extra = LastLevelMaxPool(), 1
        elif extra_levels == "p6p7":
            source_channels = out_channels if extra_source == "p5" else in_channels[-1]
            extra_blocks, num_extra = LastLevelP6P7(source_channels, out_channels), 2
            # torchvision infers the source from channel equality, which is wrong when C5 happens to have
            # `out_channels` channels; the choice is explicit here.
            extra_blocks.use_P5 = extra_source == "p5"
        self.fpn = FeaturePyramidNetwork(
            list(in_channels), out_channels, extra_blocks=extra_blocks, norm_layer=NORMS[norm]
        )

        last = input_levels[-1]
        levels = input_levels + [last + i for i in range(1, num_extra + 1)]
        self.level_names: list[str] = [f"p{level}" for level in levels]
        self.strides: list[int] = [2**level for level in levels]
        self.out_channels = out_channels
        self._input_names = [f"c{level}" for level in input_levels]

    def forward(self, features: list[Tensor]) -> OrderedDict[str, Tensor]:
        if len(features) != len(self._input_names):
            raise ValueError(f"FPN: expected {len(self._input_names)} feature maps, got {len(features)}")
        pyramid = self.fpn(OrderedDict(zip(self._input_names, features)))
        return OrderedDict(zip(self.level_names, pyramid.values()))

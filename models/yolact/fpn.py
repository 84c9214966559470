"""YOLACT's feature pyramid (P3-P7), which differs from torchvision's FeaturePyramidNetwork in three ways that its
trained weights depend on, so models.common.fpn (torchvision's FPN) cannot express it:

- the top-down path up-samples bilinearly (align_corners=False) to the next level's exact size, not nearest;
- every output conv (3x3) of P3-P5 is followed by a ReLU;
- P6 and P7 are stride-2 3x3 convs fed from the P5 *output*, P7 from P6 directly, with no ReLU anywhere on them
  (torchvision's LastLevelP6P7 puts a ReLU between P6 and P7).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class YolactFPN(nn.Module):
    """Args: in_channels of C3..C5 (finest first), out_channels of every level, num_extra levels (P6, P7).

    Modules are stored finest first (`lateral[0]` reads C3, `output[0]` makes P3); the official checkpoints store
    them coarsest first, which models.yolact.convert reverses.

    `forward(features: list[Tensor[B, in_channels[i], H_i, W_i]]) -> list[Tensor[B, out_channels, h, w]]`:
    P3, P4, P5 at the inputs' sizes, then the extra levels, each half the previous (rounded up).
    """

    def __init__(self, in_channels: list[int], out_channels: int = 256, num_extra: int = 2):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.extra = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1) for _ in range(num_extra)
        )

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        if len(features) != len(self.lateral):
            raise ValueError(f"YolactFPN: expected {len(self.lateral)} feature maps, got {len(features)}")
        merged: list[Tensor] = [None] * len(features)  # type: ignore[list-item]
        top_down = None
        for level in reversed(range(len(features))):
            lateral = self.lateral[level](features[level])
            if top_down is not None:
                top_down = F.interpolate(top_down, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
                lateral = lateral + top_down
            merged[level] = top_down = lateral
        outputs = [F.relu(conv(x)) for conv, x in zip(self.output, merged)]
        for conv in self.extra:
            outputs.append(conv(outputs[-1]))
        return outputs

"""The prototype network: an FCN on P3 that outputs k image-sized "prototype" masks at twice P3's resolution.

    P3 [B, C, h, w] -> 3 x (conv3x3 + ReLU) -> bilinear x2 + ReLU -> conv3x3 + ReLU -> conv1x1 -> ReLU
    -> prototypes [B, k, 2h, 2w]

The layers sit in one nn.Sequential in the official order, so their indices (0, 2, 4, 8, 10) are the official
checkpoint's `proto_net.*` keys.
"""
from __future__ import annotations

from torch import Tensor, nn


class Protonet(nn.Sequential):
    """Args: in_channels (P3's), channels of the hidden convs, num_prototypes k.

    `forward(p3: Tensor[B, in_channels, h, w]) -> Tensor[B, k, 2h, 2w]`, non-negative (final ReLU).
    """

    def __init__(self, in_channels: int = 256, channels: int = 256, num_prototypes: int = 32):
        super().__init__(
            nn.Conv2d(in_channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, num_prototypes, 1),
            nn.ReLU(inplace=True),  # the prototype activation
        )

    def forward(self, p3: Tensor) -> Tensor:
        return super().forward(p3)

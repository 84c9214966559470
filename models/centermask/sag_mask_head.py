"""Spatial attention-guided mask head (SAG-Mask, CenterMask Sec. 3.4).

RoI features [R, C, 14, 14] -> n x (conv3x3 + ReLU) -> spatial attention -> 2x2 stride-2 deconv + ReLU
-> 1x1 predictor with one 28x28 mask per class. The spatial attention module weighs every position of the feature
map by sigmoid(conv3x3([mean over channels, max over channels])), so the head attends to informative pixels and
suppresses noisy ones. `attention=False` removes that module and nothing else (an ablation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SpatialAttention(nn.Module):
    """x * sigmoid(conv3x3(concat(mean_c(x), max_c(x)))): [R, C, H, W] -> [R, C, H, W]."""

    def __init__(self, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def weights(self, x: Tensor) -> Tensor:
        """The attention map [R, 1, H, W] in (0, 1)."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weights(x)


class SAGMaskHead(nn.Module):
    """Class-specific mask logits of RoIs.

    Args:
        in_channels: channels of the pooled RoI features.
        num_classes: one mask channel per class.
        num_convs: 3x3 conv + ReLU layers before the attention (4; CenterMask-Lite 2).
        channels: width of those convs and of the deconvolution (256; Lite 128).
        attention: use the spatial attention module (False for the ablation: the head is then a Mask R-CNN head).

    `forward(x: Tensor[R, in_channels, S, S]) -> Tensor[R, num_classes, 2S, 2S]` mask logits.
    """

    def __init__(
        self, in_channels: int, num_classes: int, num_convs: int = 4, channels: int = 256, attention: bool = True
    ):
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(num_convs):
            layers += [nn.Conv2d(in_channels if index == 0 else channels, channels, 3, padding=1), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        self.attention = SpatialAttention() if attention else None
        self.deconv = nn.ConvTranspose2d(channels if num_convs else in_channels, channels, 2, stride=2)
        self.predictor = nn.Conv2d(channels, num_classes, 1)
        for module in [*self.convs, self.deconv]:
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                # detectron2's c2_msra_fill: He-normal on the fan-out, zero bias
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.convs(x)
        if self.attention is not None:
            x = self.attention(x)
        return self.predictor(F.relu(self.deconv(x)))

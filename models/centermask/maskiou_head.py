"""MaskIoU head (Mask Scoring R-CNN, as CenterMask uses it): predicts the IoU of each predicted mask.

Input: the RoI features [R, C, 14, 14] concatenated with the predicted mask (probabilities of the RoI's class,
28x28, max-pooled 2x2 to 14x14) -> n x (conv3x3 + ReLU), the last with stride 2 (-> 7x7) -> FC 1024 -> FC 1024
-> one IoU per class. At inference the mask score is box score x predicted IoU of the predicted class.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaskIoUHead(nn.Module):
    """Per-class IoU predictions of RoI masks.

    Args:
        in_channels: channels of the pooled RoI features (the mask is one more input channel).
        num_classes: one IoU output per class.
        num_convs: conv layers (4; CenterMask-Lite 2), the last one of stride 2.
        channels: their width (256; Lite 128).
        resolution: side of the pooled RoI features (14); the fully connected input is channels x (side/2)^2.
        fc_dim: width of the two fully connected layers (1024).

    `forward(features: Tensor[R, in_channels, S, S], mask_probs: Tensor[R, 1, 2S, 2S]) -> Tensor[R, num_classes]`.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_convs: int = 4,
        channels: int = 256,
        resolution: int = 14,
        fc_dim: int = 1024,
    ):
        super().__init__()
        if num_convs < 1 or resolution % 2:
            raise ValueError(f"MaskIoUHead: needs >= 1 conv and an even resolution, got {num_convs}, {resolution}")
        layers: list[nn.Module] = []
        for index in range(num_convs):
            stride = 2 if index == num_convs - 1 else 1
            layers += [nn.Conv2d(in_channels + 1 if index == 0 else channels, channels, 3, stride, 1), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        self.fc1 = nn.Linear(channels * (resolution // 2) ** 2, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        self.predictor = nn.Linear(fc_dim, num_classes)
        for module in [*self.convs, self.fc1, self.fc2]:
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, features: Tensor, mask_probs: Tensor) -> Tensor:
        x = torch.cat([features, F.max_pool2d(mask_probs, kernel_size=2, stride=2)], dim=1)
        x = torch.flatten(self.convs(x), 1)
        return self.predictor(F.relu(self.fc2(F.relu(self.fc1(x)))))

"""YOLACT's prediction head, one module shared by every pyramid level, and the training-only semantic head.

Per level: conv3x3 + ReLU ("upfeature"), then three parallel 3x3 convs — box deltas (A*4), class logits
(A*(C+1), index 0 = background) and mask coefficients (A*k, tanh). Channel a*(C+1) + c is anchor a's class c
(likewise a*4 + i, a*k + j), and predictions are flattened level by level, then row, column, anchor: the order of
models.common.anchors.grid_anchors and of the official implementation.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class PredictionHead(nn.Module):
    """Args: in_channels (the FPN's), num_classes C (background excluded), num_anchors A per cell,
    num_prototypes k, channels of the shared upfeature conv.

    `forward(levels: list[Tensor[B, in_channels, H_l, W_l]]) -> (box_deltas [B, N, 4], class_logits [B, N, C+1],
    coefficients [B, N, k] in -1..1)` with N = sum_l H_l * W_l * A.
    """

    def __init__(
        self, in_channels: int, num_classes: int, num_anchors: int, num_prototypes: int, channels: int = 256
    ):
        super().__init__()
        self.num_anchors = num_anchors
        self.upfeature = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(inplace=True))
        self.box_layer = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        self.class_layer = nn.Conv2d(channels, num_anchors * (num_classes + 1), 3, padding=1)
        self.coefficient_layer = nn.Conv2d(channels, num_anchors * num_prototypes, 3, padding=1)

    def forward(self, levels: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        boxes, classes, coefficients = [], [], []
        for x in levels:
            x = self.upfeature(x)
            boxes.append(self._flatten(self.box_layer(x)))
            classes.append(self._flatten(self.class_layer(x)))
            coefficients.append(self._flatten(self.coefficient_layer(x)))
        return torch.cat(boxes, 1), torch.cat(classes, 1), torch.tanh(torch.cat(coefficients, 1))

    def _flatten(self, x: Tensor) -> Tensor:
        """[B, A*D, H, W] -> [B, H*W*A, D]: channel a*D + d becomes anchor a's d-th value."""
        batch, channels, height, width = x.shape
        return x.permute(0, 2, 3, 1).reshape(batch, height * width * self.num_anchors, channels // self.num_anchors)

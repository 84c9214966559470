"""FCOS head as CenterMask uses it: separate classification and box towers, centerness from the box tower.

torchvision's FCOSHead has the same two towers, but regresses box deltas against anchors with an exp-free linear
coder and has no per-level scale; CenterMask's head (the "improved FCOS") predicts (l, t, r, b) distances in units
of the level's stride as relu(scale_l * x) with one learnable scalar per level, so it is written here. The layer
names (`cls_tower`, `bbox_tower`, `cls_logits`, `bbox_pred`, `ctrness`, `scales.{l}.scale`) and the tower layout
(conv, GroupNorm, ReLU per layer) are the official ones, which keeps centermask2 weights a renaming away.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Scale(nn.Module):
    """One learnable scalar multiplying its input (initialised to `init`)."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([float(init)]))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _tower(channels: int, num_convs: int, norm_groups: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(norm_groups, channels), nn.ReLU()]
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """Dense per-location predictions on every pyramid level (weights shared across levels, scale per level).

    Args:
        channels: channels of every pyramid level (and of the towers).
        num_classes: object classes (sigmoid outputs, no background channel).
        num_levels: pyramid levels (one Scale each).
        num_convs: conv-GN-ReLU layers per tower (4; CenterMask-Lite 2).
        norm_groups: GroupNorm groups (32; must divide `channels`).
        prior_prob: initial foreground probability of the classifier (focal-loss initialisation).

    `forward(features: list[Tensor[B,channels,H_l,W_l]]) -> (cls_logits, box_regression, centerness)`, each a list
    over levels of [B, num_classes, H_l, W_l], [B, 4, H_l, W_l] (l, t, r, b >= 0 in strides), [B, 1, H_l, W_l].
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        num_levels: int = 5,
        num_convs: int = 4,
        norm_groups: int = 32,
        prior_prob: float = 0.01,
    ):
        super().__init__()
        if channels % norm_groups:
            raise ValueError(f"FCOSHead: GroupNorm groups {norm_groups} must divide the {channels} channels")
        self.cls_tower = _tower(channels, num_convs, norm_groups)
        self.bbox_tower = _tower(channels, num_convs, norm_groups)
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, 4, 3, padding=1)
        self.ctrness = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        self.group_size = channels // norm_groups
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        if len(features) != len(self.scales):
            raise ValueError(f"FCOSHead: {len(features)} levels for {len(self.scales)} scales")
        cls_logits, box_regression, centerness = [], [], []
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            if feature.shape[0] * self.group_size * feature.shape[-2] * feature.shape[-1] == 1:
                # torch's GroupNorm refuses to normalise single values (in any mode), deep inside the tower; say why.
                raise ValueError(
                    f"FCOSHead: pyramid level {level} is 1x1 in a batch of one and each GroupNorm group holds one "
                    "channel, so there is nothing to normalise: use larger inputs (min_size), a larger batch or "
                    "fewer fcos_norm_groups than channels")
            cls_feature = self.cls_tower(feature)
            box_feature = self.bbox_tower(feature)
            cls_logits.append(self.cls_logits(cls_feature))
            centerness.append(self.ctrness(box_feature))
            box_regression.append(torch.relu(scale(self.bbox_pred(box_feature))))
        return cls_logits, box_regression, centerness

"""Random weights that time like trained ones: every model makes detections with extent, so its per-detection work
(mask pasting, and ISTR's mask decoding) is in its time.

A speed figure measured with random weights (the GPU check times the four paper configs without checkpoints, score
thresholds 0) counts only if each model keeps about the detections a trained one keeps. Two official
initialisations give boxes without area, which the post-processing then drops, as the official code does
(detectron2's `boxes.nonempty()`):

- CenterMask's FCOS head regresses the (l, t, r, b) distances as relu(scale_l * x), bbox_pred initialised
  normal(0.01) with bias 0 (centermask2): about half the distances are exactly 0, so a quarter of the boxes have no
  width and a quarter no height, and in some draws every one of the top 50 is such a box (0 detections per image in
  the GPU check's smoke bench). A bias of `FCOS_DISTANCE` strides puts every distance above 0; 4 strides is where
  each level's range of regression targets begins (sizes_of_interest 64 / 128 / 256 / 512 px over strides
  16 / 32 / 64 / 128), so the boxes have the sizes their level detects.
- ISTR refines its whole-image proposal boxes in 6 stages by Xavier-initialised deltas: a random walk of
  exp(+-1)-sized steps that carries many boxes off the image, where clipping leaves them no area (10-49 of 100
  detections per image at smoke size). Scaled by `ISTR_DELTA_SCALE`, the deltas move each box by a few percent per
  stage and every box stays on the image.

Mask R-CNN and YOLACT keep their caps (100 per image) with their own initialisation and are left as they are.
Only values change: the same layers run with the same shapes, so the timed computation per detection is the
model's own. The model's training and inference code is untouched; this is for speed measurements only.
"""
from __future__ import annotations

import torch
from torch import nn

from models.centermask.fcos_head import FCOSHead
from models.istr.head import ISTRStage

FCOS_DISTANCE = 4.0  # strides; see the module docstring
ISTR_DELTA_SCALE = 0.1


@torch.no_grad()
def prepare_random_weights(model: nn.Module) -> list[str]:
    """Sets, in place, the box regressors of a randomly initialised `model` that would make boxes without area (see
    the module docstring). Returns the names of the parameters it set ([] for a model that needs nothing)."""
    changed = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, FCOSHead):
            module.bbox_pred.bias.fill_(FCOS_DISTANCE)
            changed.append(f"{prefix}bbox_pred.bias")
        elif isinstance(module, ISTRStage):
            module.bboxes_delta.weight.mul_(ISTR_DELTA_SCALE)
            changed.append(f"{prefix}bboxes_delta.weight")
    return changed

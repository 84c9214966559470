"""Parameters and FLOPs of a model at its own test input size, on real images.

    complexity(model, images) -> {"params", "gflops", "gflops_std", "gmacs", "flops_images"}

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` over one full inference call per image (batch 1:
the model's own resize to its test size, network, post-processing). They depend on the image where the work
does (the RoI heads of a two-stage model run on the detections it keeps; a model that keeps the aspect ratio
resizes each image differently), so they are averaged over the images given, as detectron2's analyze_model and
mmdetection's get_flops do; `gflops_std` is their spread (population standard deviation).

Conventions:
  * FlopCounterMode counts a multiply-add as 2 FLOPs; `gmacs` = gflops / 2 is the figure most detection papers
    and fvcore / detectron2 call "FLOPs" (ResNet-50 at 224 px: ~4.1 GMACs).
  * Only the operations FlopCounterMode knows are counted: convolutions and matrix products (mm, addmm, bmm,
    baddbmm, attention). Element-wise ops, normalisation, interpolation, RoIAlign and NMS are not, as in fvcore.
  * params counts every parameter, trainable or frozen (buffers such as frozen BatchNorm statistics excluded).
"""
from __future__ import annotations

import statistics
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def model_device(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def image_flops(model: nn.Module, image: Tensor) -> int:
    """FLOPs (2 per multiply-add) of one inference call `model([image])`."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model([image])
    return int(counter.get_total_flops())


def complexity(model: nn.Module, images: Sequence[Tensor]) -> dict[str, Any]:
    """params, and GFLOPs averaged over `images` (float [3,H,W] in 0..1, one call each, on the model's device);
    with no images, only params (gflops None). The model is run in eval mode and its train/eval mode restored."""
    record: dict[str, Any] = {
        "params": count_parameters(model), "gflops": None, "gflops_std": None, "gmacs": None, "flops_images": 0,
    }
    if not images:
        return record
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        flops = [image_flops(model, image.to(device)) for image in images]
    finally:
        model.train(was_training)
    gflops = statistics.fmean(flops) / 1e9
    record.update(
        gflops=gflops,
        gflops_std=statistics.pstdev(flops) / 1e9,
        gmacs=gflops / 2,
        flops_images=len(flops),
    )
    return record

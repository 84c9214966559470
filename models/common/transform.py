"""The input side every model shares: pixel statistics of a backbone's weights, and the resize-normalise-pad
transform of the FPN models (Mask R-CNN, CenterMask, ISTR).

Images reach a model as uint8 [3,H,W] 0..255 (what the datamodule's workers send: a quarter of float32's bytes
through shared memory and the host-to-device copy) or as float [3,H,W] 0..1 (the inference API); both are
normalised on the device with the same statistics, which are always given on the 0..1 scale.
"""
from __future__ import annotations

from typing import Sequence

import timm
import torch
from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform

# timm's own fallback for a model without a pretrained config (and what torchvision's detection models use).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def backbone_pixel_stats(
    backbone: str, pixel_mean: Sequence[float] | None = None, pixel_std: Sequence[float] | None = None
) -> tuple[list[float], list[float]]:
    """(mean, std) on the 0..1 scale: the ones given, else those the backbone's weights were trained with.

    The weights' statistics come from timm's pretrained config of `backbone` ("resnet50.tv_in1k": ImageNet's;
    "tf_efficientnet_lite0": 0.5 / 0.5); a name timm does not register (a VoVNet built by models.common.vovnet)
    falls back to ImageNet's. timm's configs are all on the 0..1 scale; a 0..255 recipe (detectron2's
    means with std 1) is written on the 0..1 scale by dividing by 255.
    """
    if (pixel_mean is None) != (pixel_std is None):
        raise ValueError(f"backbone {backbone!r}: give both pixel_mean and pixel_std, or neither (the weights' own "
                         f"statistics); got pixel_mean={pixel_mean}, pixel_std={pixel_std}")
    if pixel_mean is None:
        try:
            cfg = timm.models.get_pretrained_cfg(backbone)
        except RuntimeError:  # a name outside timm's registry
            cfg = None
        pixel_mean = cfg.mean if cfg is not None else IMAGENET_MEAN
        pixel_std = cfg.std if cfg is not None else IMAGENET_STD
    mean, std = [float(v) for v in pixel_mean], [float(v) for v in pixel_std]
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"backbone {backbone!r}: pixel_mean / pixel_std need 3 values each (std > 0), got {mean}, "
                         f"{std}")
    if max(mean) > 1.0:
        raise ValueError(f"backbone {backbone!r}: pixel_mean {mean} is on the 0..255 scale; give it on the 0..1 "
                         "scale (divide by 255), as the images are")
    return mean, std


def input_scale(images: Sequence[Tensor]) -> float:
    """255.0 for uint8 images, 1.0 for float 0..1 images; one dtype per batch."""
    dtypes = {image.dtype for image in images}
    if len(dtypes) > 1:
        raise TypeError(f"images of one batch must share a dtype, got {sorted(map(str, dtypes))}")
    dtype = dtypes.pop() if dtypes else torch.float32
    if dtype == torch.uint8:
        return 255.0
    if not dtype.is_floating_point:
        raise TypeError(f"images must be uint8 (0..255) or float (0..1), got {dtype}")
    return 1.0


class ResizeNormalizeTransform(GeneralizedRCNNTransform):
    """torchvision's resize / normalise / pad-to-32 with multi-scale training, for uint8 or float images.

    Args:
        min_size: the short side after resizing, or a list of them: in train mode each image draws one
            (detectron2's ResizeShortestEdge "choice", e.g. [640, 672, ..., 800]); in eval mode the LAST one is the
            test size (torchvision's convention; in every official recipe here it is also the largest).
        max_size: the long side never exceeds it.
        image_mean, image_std: per-channel statistics on the 0..1 scale (see `backbone_pixel_stats`).

    With one size nothing is drawn, so the global RNG is not consumed (torchvision's parent draws even then).
    """

    def __init__(self, min_size: int | Sequence[int], max_size: int, image_mean: Sequence[float],
                 image_std: Sequence[float]):
        sizes = [min_size] if isinstance(min_size, int) else list(min_size)
        if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"min_size must be a positive int or a non-empty list of them, got {min_size!r}")
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < max(sizes):
            raise ValueError(f"max_size must be an int >= every min_size {sizes}, got {max_size!r}")
        super().__init__(tuple(sizes), max_size, list(image_mean), list(image_std))

    @property
    def train_sizes(self) -> tuple[int, ...]:
        return tuple(self.min_size)

    @property
    def test_size(self) -> int:
        return self.min_size[-1]

    def torch_choice(self, k: Sequence[int]) -> int:
        return k[0] if len(k) == 1 else super().torch_choice(k)

    def normalize(self, image: Tensor) -> Tensor:
        # uint8 is normalised with 255x the statistics: one pass, and equal to (x / 255 - mean) / std.
        scale = input_scale([image])
        image = image.float() if scale != 1.0 else image
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device) * scale
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device) * scale
        return (image - mean[:, None, None]) / std[:, None, None]

"""Sample transforms: torchvision.transforms.v2 pipelines on tv_tensors, so image, boxes and masks move together.

A pipeline is called as `image, target = transforms(image, target)` with
    image   tv_tensors.Image uint8 [3,H,W]
    target  {"boxes": tv_tensors.BoundingBoxes [N,4] XYXY, "masks": tv_tensors.Mask uint8 [N,H,W],
             "labels": int64 [N], "iscrowd": int64 [N], "image_id": int, "orig_size": (H0, W0)}
and returns plain tensors: image uint8 [3,H',W'] (0..255: a quarter of float32's bytes through the workers' shared
memory and the host-to-device copy; the model converts and normalises on the device) and the same target keys.

Resizing to a model's input size is the model's job (each architecture owns its input spec, multi-scale training
included); the train pipeline only augments. The augmentation is a recipe per config (`AUGMENTATIONS`):
    "flip"       horizontal flip, with the optional photometric distortion and scale jitter + crop below;
    "ssd"        YOLACT's (SSD's): photometric distortion without the channel swap, expand (zoom out 1-4x, filled
                 with the mean), IoU-constrained random crop, horizontal flip (dbolya/yolact utils/augmentations.py
                 SSDAugmentation);
    "istr_crop"  ISTR's (Sparse R-CNN's dataset mapper): horizontal flip, then half the time a resize of the short
                 side to one of 400 / 500 / 600 and a random crop of 0.7 x 0.7 of that image (detectron2
                 RandomCrop "relative"); the model's multi-scale resize follows.
An instance whose box or mask a crop removes is dropped with its label and crowd flag.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

AUGMENTATIONS = ("flip", "ssd", "istr_crop")
# YOLACT's fill for the expanded canvas: its MEANS (BGR 103.94, 116.78, 123.68) in RGB, as uint8.
SSD_MEAN_FILL = (124, 117, 104)
# YOLACT's RandomSampleCrop options as torchvision's sampler_options: 1.0 = the whole image (the official None),
# 0.1 / 0.3 / 0.7 / 0.9 = a patch whose IoU with some box is at least that, 0.0 = any patch (the official
# (None, None)); 50 trials per option, patch sides 0.3-1 of the image, aspect ratio 0.5-2.
SSD_CROP_OPTIONS = [1.0, 0.1, 0.3, 0.7, 0.9, 0.0]
SSD_CROP_TRIALS = 50
# ISTR's crop branch (projects/ISTR/istr/dataset_mapper.py; configs/Base-ISTR.yaml INPUT.CROP relative 0.7).
ISTR_CROP_SHORT_SIDES = [400, 500, 600]
ISTR_CROP_FRACTION = 0.7
ISTR_CROP_PROB = 0.5


class RandomScaleCrop(v2.Transform):
    """Scale jitter relative to the image's own size, then a random crop (or zero pad) back to its original canvas.

    Zooming in (scale > 1) crops a random window, so objects grow relative to the canvas; zooming out pads, so they
    shrink. Because the canvas keeps its size, the jitter survives the model's own resize to its input spec. This
    is the large-scale-jitter recipe of Ghiasi et al. with the image's own size as the target; torchvision's
    v2.ScaleJitter resizes relative to one fixed target size instead, and v2.RandomCrop needs a fixed crop size.
    Only the sampling is written here; resizing and cropping (F.crop pads when the window leaves the image) are
    torchvision kernels, so boxes and masks follow the image exactly.
    """

    def __init__(self, scale_range: Sequence[float]):
        super().__init__()
        low, high = (float(s) for s in scale_range)
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be two numbers 0 < low <= high, got {list(scale_range)}")
        self.scale_range = (low, high)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        low, high = self.scale_range
        scale = low + float(torch.rand(())) * (high - low)
        new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
        # The window's top-left ranges over [0, new - old] when zoomed in and [new - old, 0] (padding) when out.
        top = int(torch.randint(min(0, new_height - height), max(0, new_height - height) + 1, ()))
        left = int(torch.randint(min(0, new_width - width), max(0, new_width - width) + 1, ()))
        return dict(size=[new_height, new_width], top=top, left=left, height=height, width=width)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        resized = self._call_kernel(F.resize, inpt, size=params["size"], antialias=True)
        return self._call_kernel(
            F.crop, resized, top=params["top"], left=params["left"], height=params["height"], width=params["width"]
        )


class PhotometricDistort(v2.Transform):
    """SSD's photometric distortion without its random channel swap (YOLACT: "Don't shuffle the channels please").

    Each step with probability 1/2: additive brightness +-`brightness_delta` (0..255 scale), then contrast (SSD's
    "contrast" multiplies the pixel values: torchvision's adjust_brightness), saturation and hue (+-`hue_delta` of
    a turn), with the contrast step moved after saturation and hue half the time — SSD's order. torchvision's
    RandomPhotometricDistort cannot leave out its channel permutation, so the sampling is written here; the
    colour kernels are torchvision's. Differences from the official, which works on unclipped float BGR: values
    are clamped to 0..255 after each step, and saturation blends with the grey image (torchvision) rather than
    scaling HSV's S channel. Only the image changes.
    """

    def __init__(self, brightness_delta: float = 32.0, contrast: tuple[float, float] = (0.5, 1.5),
                 saturation: tuple[float, float] = (0.5, 1.5), hue_delta: float = 18.0 / 360.0):
        super().__init__()
        self.brightness_delta = brightness_delta
        self.contrast = contrast
        self.saturation = saturation
        self.hue_delta = hue_delta

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        def maybe(low: float, high: float) -> float | None:
            return low + float(torch.rand(())) * (high - low) if torch.rand(()) < 0.5 else None

        return dict(
            brightness=maybe(-self.brightness_delta, self.brightness_delta),
            contrast=maybe(*self.contrast),
            saturation=maybe(*self.saturation),
            hue=maybe(-self.hue_delta, self.hue_delta),
            contrast_last=bool(torch.rand(()) < 0.5),
        )

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        image = inpt.as_subclass(torch.Tensor)
        if params["brightness"] is not None:
            shifted = image.float() + params["brightness"] * (1.0 if image.dtype == torch.uint8 else 1.0 / 255)
            image = shifted.round().clamp(0, 255).to(torch.uint8) if image.dtype == torch.uint8 else shifted.clamp(0, 1)
        if params["contrast"] is not None and not params["contrast_last"]:
            image = F.adjust_brightness(image, params["contrast"])
        if params["saturation"] is not None:
            image = F.adjust_saturation(image, params["saturation"])
        if params["hue"] is not None:
            image = F.adjust_hue(image, params["hue"])
        if params["contrast"] is not None and params["contrast_last"]:
            image = F.adjust_brightness(image, params["contrast"])
        return tv_tensors.wrap(image, like=inpt)


class RandomRelativeCrop(v2.Transform):
    """A random window of `fraction` of the image's height and width (detectron2's RandomCrop "relative").

    v2.RandomCrop takes a fixed size in pixels; here the size follows each image. The crop is torchvision's.
    """

    def __init__(self, fraction: float):
        super().__init__()
        if not 0 < fraction <= 1:
            raise ValueError(f"crop fraction must lie in (0, 1], got {fraction}")
        self.fraction = fraction

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        crop_h, crop_w = int(height * self.fraction + 0.5), int(width * self.fraction + 0.5)
        top = int(torch.randint(0, height - crop_h + 1, ()))
        left = int(torch.randint(0, width - crop_w + 1, ()))
        return dict(top=top, left=left, height=crop_h, width=crop_w)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


class DropEmptyInstances:
    """Leave out the instances a crop has emptied: a box under 1 px (SanitizeBoundingBoxes) or no mask pixel left
    (detectron2's filter_empty_instances), with their labels, crowd flags and masks.

    A plain callable on (image, target), not a v2.Transform, because it edits the target dict as a whole.
    """

    def __init__(self):
        self.sanitize = v2.SanitizeBoundingBoxes(min_size=1, labels_getter=_labels_and_crowd_flags)

    def __call__(self, image: Any, target: dict) -> tuple[Any, dict]:
        image, target = self.sanitize(image, target)
        keep = target["masks"].flatten(1).any(dim=1)
        if not bool(keep.all()):
            boxes, masks = target["boxes"], target["masks"]
            target = {**target, "boxes": tv_tensors.wrap(boxes[keep], like=boxes),
                      "masks": tv_tensors.wrap(masks[keep], like=masks), "labels": target["labels"][keep],
                      "iscrowd": target["iscrowd"][keep]}
        return image, target


def _labels_and_crowd_flags(inputs: tuple[Any, dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """What SanitizeBoundingBoxes must filter together with the boxes (masks it finds by itself).

    A module-level function, not a lambda, so the pipeline pickles into spawned DataLoader workers.
    """
    target = inputs[1]
    return target["labels"], target["iscrowd"]


def build_train_transforms(
    hflip_prob: float = 0.5,
    photometric: bool = False,
    scale_jitter: Sequence[float] | None = None,
    augmentation: str = "flip",
) -> v2.Compose:
    """The training pipeline of recipe `augmentation` (see the module docstring), then plain tensors (uint8 image).

    "flip": horizontal flip with `hflip_prob`, optional scale-jitter + crop (`scale_jitter` [low, high]), optional
    photometric distortion (`photometric`, SSD's, no channel swap). "ssd" and "istr_crop" are whole recipes: their
    flip probability is `hflip_prob` (0.5 in both officials), and `photometric` / `scale_jitter` must stay unset.
    """
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {augmentation!r}")
    if not 0.0 <= hflip_prob <= 1.0:
        raise ValueError(f"hflip_prob must be in [0, 1], got {hflip_prob}")
    if augmentation != "flip" and (photometric or scale_jitter is not None):
        raise ValueError(f"augmentation {augmentation!r} is a whole recipe; photometric / scale_jitter apply to "
                         f"'flip' only (got photometric={photometric}, scale_jitter={scale_jitter})")
    flip = [v2.RandomHorizontalFlip(p=hflip_prob)] if hflip_prob > 0 else []
    steps: list[Any] = []
    if augmentation == "ssd":
        steps += [
            PhotometricDistort(),
            v2.RandomZoomOut(fill={tv_tensors.Image: SSD_MEAN_FILL, tv_tensors.Mask: 0}, side_range=(1.0, 4.0), p=0.5),
            v2.RandomIoUCrop(min_scale=0.3, max_scale=1.0, min_aspect_ratio=0.5, max_aspect_ratio=2.0,
                             sampler_options=SSD_CROP_OPTIONS, trials=SSD_CROP_TRIALS),
            DropEmptyInstances(),
            *flip,
        ]
    elif augmentation == "istr_crop":
        crop = v2.Compose([v2.RandomShortestSize(ISTR_CROP_SHORT_SIDES, antialias=True),
                           RandomRelativeCrop(ISTR_CROP_FRACTION)])
        steps += [*flip, v2.RandomApply([crop], p=ISTR_CROP_PROB), DropEmptyInstances()]
    else:
        steps += flip
        if scale_jitter is not None:
            if len(scale_jitter) != 2:
                raise ValueError(f"scale_jitter must be [low, high], got {list(scale_jitter)}")
            steps += [RandomScaleCrop(scale_jitter), DropEmptyInstances()]
        if photometric:
            steps.append(PhotometricDistort())
    steps.append(v2.ToPureTensor())
    return v2.Compose(steps)


def build_eval_transforms() -> v2.Compose:
    """Identity: the uint8 image and the target as plain tensors."""
    return v2.ToPureTensor()

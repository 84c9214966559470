"""Train / eval pipelines: image, boxes and masks must move together."""
from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes

from datamodules.coco import CocoInstanceDataset
from datamodules.transforms import RandomScaleCrop, build_eval_transforms, build_train_transforms


def mask_extents(masks: torch.Tensor) -> torch.Tensor:
    """[N,4] xyxy with exclusive x2/y2, the convention of a box that covers whole pixels."""
    return masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])


def toy_sample(height: int = 40, width: int = 40):
    """A top-left crowd square (label 0) and a bottom-right instance (label 1), masks exactly their boxes."""
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 40.0, 40.0]])
    masks = torch.zeros(2, height, width, dtype=torch.uint8)
    masks[0, 0:10, 0:10] = 1
    masks[1, 30:40, 30:40] = 1
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
        "labels": torch.tensor([0, 1]),
        "masks": tv_tensors.Mask(masks),
        "iscrowd": torch.tensor([1, 0]),
        "image_id": 7,
        "orig_size": (height, width),
    }
    return tv_tensors.Image(image), target


def test_eval_pipeline_only_converts_to_float_and_plain_tensors():
    image, target = toy_sample()
    out_image, out = build_eval_transforms()(image, target)
    assert type(out_image) is torch.Tensor and out_image.dtype == torch.float32
    torch.testing.assert_close(out_image, image.float() / 255)
    assert type(out["boxes"]) is torch.Tensor and type(out["masks"]) is torch.Tensor
    torch.testing.assert_close(out["boxes"], target["boxes"].as_subclass(torch.Tensor))
    assert torch.equal(out["masks"], target["masks"]) and out["masks"].dtype == torch.uint8
    assert (out["image_id"], out["orig_size"]) == (7, (40, 40))


def test_horizontal_flip_moves_image_boxes_and_masks_together(coco_dataset):
    args = (str(coco_dataset.image_dir), str(coco_dataset.ann_file))
    plain = CocoInstanceDataset(*args)
    flipped = CocoInstanceDataset(*args, transforms=build_train_transforms(hflip_prob=1.0))
    width = 64
    for index in range(len(plain)):
        image, target = plain[index]
        f_image, f_target = flipped[index]
        torch.testing.assert_close(f_image, image.flip(-1))
        assert torch.equal(f_target["masks"], target["masks"].flip(-1))
        x1, y1, x2, y2 = target["boxes"].unbind(-1)
        torch.testing.assert_close(f_target["boxes"], torch.stack([width - x2, y1, width - x1, y2], dim=-1))
        assert torch.equal(f_target["labels"], target["labels"])
        assert torch.equal(f_target["iscrowd"], target["iscrowd"])
    # The rectangles' masks cover exactly their boxes; after the flip they still do.
    _, f_target = flipped[0]
    torch.testing.assert_close(mask_extents(f_target["masks"]), f_target["boxes"])


def test_no_flip_and_no_jitter_is_the_eval_pipeline():
    image, target = toy_sample()
    out_image, out = build_train_transforms(hflip_prob=0.0)(image, target)
    torch.testing.assert_close(out_image, image.float() / 255)
    assert torch.equal(out["masks"], target["masks"])


def test_scale_jitter_zoom_in_keeps_canvas_and_drops_cropped_instances_with_their_labels():
    pipeline = build_train_transforms(hflip_prob=0.0, scale_jitter=[2.0, 2.0])
    seen_counts, seen_labels = set(), set()
    for seed in range(40):
        torch.manual_seed(seed)
        out_image, out = pipeline(*toy_sample())
        assert out_image.shape == (3, 40, 40)  # the canvas keeps its size
        n = len(out["boxes"])
        assert out["masks"].shape == (n, 40, 40) and out["labels"].shape == out["iscrowd"].shape == (n,)
        # each survivor keeps its own label and crowd flag: label 0 was the crowd, label 1 was not
        assert torch.equal(out["iscrowd"], 1 - out["labels"])
        if n:
            torch.testing.assert_close(mask_extents(out["masks"]), out["boxes"])  # 2x of whole pixels is exact
            assert ((out["boxes"][:, 2:] - out["boxes"][:, :2]) >= 1).all()
        seen_counts.add(n)
        seen_labels.update(out["labels"].tolist())
    # A 40 px window of the 80 px image sometimes holds neither square; each one survives in some windows.
    assert 0 in seen_counts and seen_labels == {0, 1}


def test_scale_jitter_zoom_out_pads_and_shrinks_everything_by_the_same_factor():
    torch.manual_seed(0)
    out_image, out = build_train_transforms(hflip_prob=0.0, scale_jitter=[0.5, 0.5])(*toy_sample())
    assert out_image.shape == (3, 40, 40) and len(out["boxes"]) == 2
    sizes = out["boxes"][:, 2:] - out["boxes"][:, :2]
    torch.testing.assert_close(sizes, torch.full((2, 2), 5.0))
    torch.testing.assert_close(mask_extents(out["masks"]), out["boxes"])
    # The 20x20 content sits somewhere in the 40x40 canvas; outside it the padding is zero.
    content = out_image.sum(0) > 0
    rows, cols = content.any(1).nonzero(), content.any(0).nonzero()
    assert rows.max() - rows.min() + 1 <= 20 and cols.max() - cols.min() + 1 <= 20
    assert content.sum() > 0.9 * 400  # random pixels: almost none of the content is exactly black


def test_photometric_distortion_changes_colours_not_geometry():
    image, target = toy_sample()
    torch.manual_seed(0)
    outputs = [build_train_transforms(hflip_prob=0.0, photometric=True)(image, target) for _ in range(4)]
    assert any(not torch.allclose(out_image, image.float() / 255) for out_image, _ in outputs)
    for out_image, out in outputs:
        assert out_image.dtype == torch.float32 and 0.0 <= out_image.min() and out_image.max() <= 1.0
        assert torch.equal(out["masks"], target["masks"])
        torch.testing.assert_close(out["boxes"], target["boxes"].as_subclass(torch.Tensor))


@pytest.mark.parametrize("kwargs", [dict(hflip_prob=1.5), dict(scale_jitter=[2.0, 1.0]), dict(scale_jitter=[1.0])])
def test_bad_augmentation_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        build_train_transforms(**kwargs)


def test_random_scale_crop_rejects_non_positive_scales():
    with pytest.raises(ValueError, match="scale_range"):
        RandomScaleCrop([0.0, 1.0])

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


def test_eval_pipeline_only_converts_to_plain_tensors_and_keeps_uint8():
    image, target = toy_sample()
    out_image, out = build_eval_transforms()(image, target)
    assert type(out_image) is torch.Tensor and out_image.dtype == torch.uint8  # the model normalises on the device
    assert torch.equal(out_image, image.as_subclass(torch.Tensor))
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
    assert out_image.dtype == torch.uint8 and torch.equal(out_image, image.as_subclass(torch.Tensor))
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
    assert any(not torch.equal(out_image, image.as_subclass(torch.Tensor)) for out_image, _ in outputs)
    for out_image, out in outputs:
        assert out_image.dtype == torch.uint8
        assert torch.equal(out["masks"], target["masks"])
        torch.testing.assert_close(out["boxes"], target["boxes"].as_subclass(torch.Tensor))


@pytest.mark.parametrize("kwargs", [dict(hflip_prob=1.5), dict(scale_jitter=[2.0, 1.0]), dict(scale_jitter=[1.0])])
def test_bad_augmentation_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        build_train_transforms(**kwargs)


def test_random_scale_crop_rejects_non_positive_scales():
    with pytest.raises(ValueError, match="scale_range"):
        RandomScaleCrop([0.0, 1.0])


# ------------------------------------------------------------------------------- recipes: YOLACT's SSD, ISTR's crop

def rectangles_sample(height: int = 60, width: int = 80, count: int = 5, seed: int = 0):
    """`count` random rectangles (masks exactly their boxes) on a random image, none of them a crowd."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    boxes, masks = [], torch.zeros(count, height, width, dtype=torch.uint8)
    for i in range(count):
        x1, y1 = (int(torch.randint(0, n - 8, (), generator=generator)) for n in (width, height))
        x2 = x1 + int(torch.randint(4, min(30, width - x1) + 1, (), generator=generator))
        y2 = y1 + int(torch.randint(4, min(30, height - y1) + 1, (), generator=generator))
        masks[i, y1:y2, x1:x2] = 1
        boxes.append([x1, y1, x2, y2])
    target = {
        "boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32), format="XYXY",
                                          canvas_size=(height, width)),
        "labels": torch.arange(count), "masks": tv_tensors.Mask(masks),
        "iscrowd": torch.zeros(count, dtype=torch.int64),
        "image_id": 1, "orig_size": (height, width),
    }
    return tv_tensors.Image(image), target


def _check_consistent(image, target, height_range=None):
    n = len(target["boxes"])
    assert image.dtype == torch.uint8 and target["masks"].dtype == torch.uint8
    assert target["masks"].shape == (n, *image.shape[-2:]) and target["labels"].shape == target["iscrowd"].shape == (n,)
    if n:
        assert target["masks"].flatten(1).any(1).all()  # no instance left with an empty mask
        # boxes still equal the masks' extents (rectangles: exactly, up to the 1 px the crops may round)
        assert (mask_extents(target["masks"]) - target["boxes"]).abs().max() <= 1.0


def test_ssd_recipe_moves_boxes_and_masks_with_the_image_through_expand_and_crop():
    pipeline = build_train_transforms(augmentation="ssd")
    sizes, counts, labels_seen = set(), set(), set()
    for seed in range(60):
        torch.manual_seed(seed)
        image, target = rectangles_sample(seed=seed)
        out_image, out = pipeline(image, target)
        _check_consistent(out_image, out)
        sizes.add(tuple(out_image.shape[-2:]))
        counts.add(len(out["boxes"]))
        labels_seen.update(out["labels"].tolist())
        # each surviving instance is its own original (labels are the instance index here): its size is kept
        # unless a crop cut it, never enlarged
        original = target["boxes"].as_subclass(torch.Tensor)
        for box, label in zip(out["boxes"], out["labels"]):
            sides, orig_sides = box[2:] - box[:2], original[label, 2:] - original[label, :2]
            assert (sides <= orig_sides + 1e-4).all()
    assert len(sizes) > 10  # expand and crop changed the canvas
    assert any(h > 60 or w > 80 for h, w in sizes)  # expand (zoom out) happened and survived some crops
    assert any(c < 5 for c in counts) and 5 in counts  # crops dropped instances, and sometimes kept all
    assert labels_seen == set(range(5))


def test_ssd_expand_fills_with_the_mean_and_masks_with_zero():
    from torchvision.transforms import v2

    from datamodules.transforms import SSD_MEAN_FILL

    torch.manual_seed(0)
    zoom = v2.RandomZoomOut(fill={tv_tensors.Image: SSD_MEAN_FILL, tv_tensors.Mask: 0}, side_range=(3.0, 3.0), p=1.0)
    image, target = rectangles_sample()
    out_image, out = zoom(image, target)
    assert out_image.shape[-2:] == (180, 240)
    torch.testing.assert_close(mask_extents(out["masks"]), out["boxes"].as_subclass(torch.Tensor))
    outside = out["masks"].sum(0) == 0
    corner = out_image[:, 0, 0] if not (out_image[:, 0, 0] == image[:, 0, 0]).all() else out_image[:, -1, -1]
    assert corner.tolist() == list(SSD_MEAN_FILL) and out["masks"].sum() == target["masks"].sum() and outside.any()


def test_photometric_distortion_never_permutes_channels():
    from datamodules.transforms import PhotometricDistort

    # A pure red image: any channel permutation would move the 255 to another channel. Hue shifts of +-18
    # degrees and the other steps keep red the dominant channel.
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    image[0] = 200
    image[1] = 30
    image[2] = 20
    distort = PhotometricDistort()
    changed = 0
    for seed in range(200):
        torch.manual_seed(seed)
        out = distort(tv_tensors.Image(image))
        assert out.dtype == torch.uint8 and out.shape == image.shape
        mean = out.float().mean(dim=(1, 2))
        assert mean[0] >= mean[1] and mean[0] >= mean[2], (seed, mean)
        changed += not torch.equal(out, image)
    assert changed > 150  # 1 - 1/16 of the draws change something


def test_photometric_brightness_is_additive_32_levels_at_most():
    from datamodules.transforms import PhotometricDistort

    image = torch.full((3, 4, 4), 100, dtype=torch.uint8)
    out = PhotometricDistort().transform(tv_tensors.Image(image), dict(brightness=31.6, contrast=None,
                                                                       saturation=None, hue=None, contrast_last=False))
    assert out.unique().tolist() == [132]


def test_istr_crop_recipe_crops_0_7_of_a_400_to_600_image_half_the_time():
    pipeline = build_train_transforms(augmentation="istr_crop")
    cropped, kept = 0, 0
    for seed in range(40):
        torch.manual_seed(seed)
        image, target = rectangles_sample(height=120, width=160, seed=seed)
        out_image, out = pipeline(image, target)
        _check_consistent(out_image, out)
        height, width = out_image.shape[-2:]
        if (height, width) == (120, 160):
            kept += 1
        else:
            cropped += 1
            # short side 400 / 500 / 600 (from 120x160: 400x533, 500x667, 600x800), then 0.7 of each side
            assert (height, width) in {(280, 373), (350, 466), (420, 560)}, (height, width)
    assert 10 <= cropped <= 30 and kept + cropped == 40


def test_recipes_refuse_extra_knobs_and_unknown_names():
    with pytest.raises(ValueError, match="augmentation must be one of"):
        build_train_transforms(augmentation="lsj")
    with pytest.raises(ValueError, match="whole recipe"):
        build_train_transforms(augmentation="ssd", photometric=True)


def test_the_datamodule_builds_the_configured_recipe(coco_dataset):
    from datamodules.coco import CocoDataModule
    from datamodules.transforms import PhotometricDistort

    dm = CocoDataModule(root=str(coco_dataset.root), augmentation="ssd")
    assert any(isinstance(t, PhotometricDistort) for t in dm.train_transforms.transforms)
    with pytest.raises(ValueError, match="augmentation must be one of"):
        CocoDataModule(root=str(coco_dataset.root), augmentation="mosaic")

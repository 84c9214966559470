"""Mask R-CNN: crowd exclusion, label shift, torchvision weight conversion (mode independence: test_contract.py)."""
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torchvision.models.detection import maskrcnn_resnet50_fpn

from models.mask_rcnn import MaskRCNN
from models.mask_rcnn.convert import _map_key, convert_torchvision_maskrcnn
from models.mask_rcnn.targets import training_targets
from tests.models.test_contract import NUM_CLASSES, TINY_CONFIGS, frozen_tiny_model, seeded_losses, tiny_batch

# Frozen BatchNorm: nothing in the network depends on train/eval mode, so both modes must agree exactly.
FROZEN = {**TINY_CONFIGS["mask_rcnn"], "norm": "frozen_bn"}


@pytest.fixture(scope="module")
def frozen_model():
    return frozen_tiny_model("mask_rcnn")


def _without(targets, index_in_first):
    first = {k: (v[[i for i in range(len(v)) if i != index_in_first]] if torch.is_tensor(v) else v)
             for k, v in targets[0].items()}
    return [first] + targets[1:]


def test_crowd_regions_are_excluded_from_training(frozen_model):
    images, targets = tiny_batch()  # instance 2 of image 1 is a crowd region
    with_crowd = seeded_losses(frozen_model, images, targets)
    crowd_removed = seeded_losses(frozen_model, images, _without(targets, 2))
    torch.testing.assert_close(with_crowd, crowd_removed, rtol=0, atol=0)

    as_instance = [dict(targets[0], iscrowd=torch.zeros(3, dtype=torch.int64))] + targets[1:]
    counted = seeded_losses(frozen_model, images, as_instance)
    assert counted["loss_rpn_cls"] != with_crowd["loss_rpn_cls"]  # the region would matter if it were kept


def test_training_targets_shift_labels_past_background_and_reject_bad_ones():
    _, targets = tiny_batch()
    converted = training_targets(targets, NUM_CLASSES)
    assert converted[0]["labels"].tolist() == [1, 3]  # contiguous 0, 2 -> internal 1, 3; the crowd is gone
    assert converted[0]["masks"].shape == (2, 64, 80) and converted[0]["masks"].dtype == torch.uint8

    bad_label = [dict(targets[1], labels=torch.tensor([NUM_CLASSES]))]
    with pytest.raises(ValueError, match=r"image 2: target labels must be in \[0, 3\)"):
        training_targets(bad_label, NUM_CLASSES)
    flat_box = [dict(targets[1], boxes=torch.tensor([[10.0, 12.0, 10.0, 60.0]]))]
    with pytest.raises(ValueError, match="image 2: target box .* has no area"):
        training_targets(flat_box, NUM_CLASSES)


def test_anchor_sizes_must_match_the_pyramid():
    with pytest.raises(ValueError, match="one size per pyramid level"):
        MaskRCNN(num_classes=2, **{**FROZEN, "anchor_sizes": [16, 32]})


# ----------------------------------------------------------------------------------- torchvision weights

TV_SIZE = dict(min_size=128, max_size=160)  # small inputs and few RoIs keep a ResNet-50 quick on a CPU


@pytest.fixture(scope="module")
def torchvision_model(tmp_path_factory):
    """torchvision's maskrcnn_resnet50_fpn with random weights, non-trivial BatchNorm statistics, saved to disk."""
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=5, rpn_post_nms_top_n_test=100, box_detections_per_img=20,
        **TV_SIZE,
    )
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1, generator=generator)
            module.running_var.uniform_(0.5, 1.5, generator=generator)
            module.weight.data.uniform_(0.5, 1.0, generator=generator)
    path = tmp_path_factory.mktemp("torchvision") / "maskrcnn.pth"
    torch.save({"model": model.state_dict()}, path)  # the reference scripts' layout
    return model.eval(), str(path)


def test_converted_weights_reproduce_torchvision(torchvision_model, tmp_path):
    reference, weights = torchvision_model
    checkpoint = convert_torchvision_maskrcnn(weights, str(tmp_path / "converted.ckpt"))
    ours = MaskRCNN.load_from_checkpoint(
        checkpoint, rpn_post_nms_top_n_test=100, detections_per_img=20, **TV_SIZE
    ).eval()
    assert ours.hparams.num_classes == 4 and ours.hparams.backbone == "resnet50"

    generator = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 120, 150, generator=generator), torch.rand(3, 140, 110, generator=generator)]
    with torch.no_grad():
        expected = reference(images)
        predicted = ours(images)
    for exp, pred in zip(expected, predicted):
        assert len(exp["boxes"]) > 0
        torch.testing.assert_close(pred["boxes"], exp["boxes"], rtol=1e-6, atol=1e-4)
        torch.testing.assert_close(pred["scores"], exp["scores"], rtol=1e-6, atol=1e-4)
        assert torch.equal(pred["labels"], exp["labels"] - 1)  # torchvision index i <-> contiguous i - 1
        assert torch.equal(pred["masks"], exp["masks"][:, 0] > 0.5)


def test_conversion_rejects_unmapped_or_missing_keys(torchvision_model, tmp_path):
    _, weights = torchvision_model
    state = torch.load(weights, weights_only=True)["model"]
    extra = dict(state, **{"roi_heads.keypoint_head.0.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"extra.pth: .*unused \['roi_heads.keypoint_head.0.weight'\]"):
        convert_torchvision_maskrcnn(str(tmp_path / "extra.pth"), str(tmp_path / "out.ckpt"))

    missing = {k: v for k, v in state.items() if k != "rpn.head.cls_logits.bias"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing \['rpn.head.cls_logits.bias'\]"):
        convert_torchvision_maskrcnn(str(tmp_path / "missing.pth"), str(tmp_path / "out.ckpt"))
    with pytest.raises(ValueError, match="num_classes=2"):
        convert_torchvision_maskrcnn(weights, str(tmp_path / "out.ckpt"), num_classes=2)
    assert not (tmp_path / "out.ckpt").exists()


def test_coco_conversion_keeps_the_80_real_categories(tmp_path):
    torch.manual_seed(0)
    state = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    torch.save(state, tmp_path / "coco.pth")
    checkpoint = torch.load(
        convert_torchvision_maskrcnn(str(tmp_path / "coco.pth"), str(tmp_path / "coco.ckpt"), num_classes=80),
        weights_only=True,
    )
    assert checkpoint["hyper_parameters"]["num_classes"] == 80
    assert checkpoint["hyper_parameters"]["_class_path"] == "models.mask_rcnn.MaskRCNN"  # what LightningCLI reads
    converted = checkpoint["state_dict"]
    # COCO category id 12 is unused ("N/A" in torchvision's 91 indices): internal index 12 (contiguous 11) is id 13.
    kept = [0] + [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
    key = "roi_heads.box_predictor.cls_score.weight"
    assert torch.equal(converted[key], state[key][kept])
    box = "roi_heads.box_predictor.bbox_pred.bias"
    assert torch.equal(converted[box].view(81, 4)[12], state[box].view(91, 4)[13])


def test_legacy_torchvision_key_names_are_mapped():
    assert _map_key("backbone.body.layer1.0.conv1.weight") == "backbone.model.layer1.0.conv1.weight"
    assert _map_key("backbone.fpn.inner_blocks.2.bias") == "neck.fpn.inner_blocks.2.0.bias"
    assert _map_key("backbone.fpn.layer_blocks.0.0.weight") == "neck.fpn.layer_blocks.0.0.weight"
    assert _map_key("rpn.head.conv.weight") == "rpn.head.conv.0.0.weight"
    assert _map_key("roi_heads.mask_head.mask_fcn1.weight") == "roi_heads.mask_head.0.0.weight"
    assert _map_key("roi_heads.mask_head.mask_fcn4.bias") == "roi_heads.mask_head.3.0.bias"
    assert _map_key("transform.mean") is None


# ------------------------------------------------------------------------------------------------ configs

CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "configs"


@pytest.mark.parametrize(
    "config", ["models/mask_rcnn/r50_fpn.yaml", "models/mask_rcnn/r101_fpn.yaml", "quickstart/mask_rcnn.yaml"]
)
def test_configs_name_real_arguments(config):
    section = yaml.safe_load((CONFIGS / config).read_text())["model"]
    assert section["class_path"] == "models.mask_rcnn.MaskRCNN"
    # pretrained weights are not on the test machine; every other argument is used as written
    model = MaskRCNN(num_classes=80, **{**section["init_args"], "pretrained": False})
    assert model.hparams.min_size == section["init_args"]["min_size"]


# ------------------------------------------------------------------------------------------ pixel convention


@pytest.fixture(scope="module")
def synthetic_val():
    """The default synthetic val split (50 images at 128 px; image i does not depend on the train split's size)."""
    from pycocotools.coco import COCO

    from datamodules.synthetic import synthetic_root

    root = synthetic_root(num_train=1, num_val=50, image_size=128, seed=0)
    ann_file = str(root / "annotations" / "instances_val2017.json")
    return ann_file, COCO(ann_file)


def _oracle_segm(ann_file, coco, mask_aligned, training_targets=False):
    """segm AP of a perfect detector through the model's mask convention: every non-crowd ground truth as a
    detection (its box, label, score 1) whose 28x28 mask is the crop of its ground-truth mask in the model's
    convention (soft; or with `training_targets` the model's own training target, binarised when aligned), pasted
    back by the model (the network itself plays no part). Resized frame = input frame, as for the val set's 96-128
    x 128 px images at min_size = max_size = 128."""
    from datamodules.evaluation import CocoEvaluator
    from models.common.masks import crop_and_resize_masks
    from models.mask_rcnn.roi_heads import mask_targets

    torch.manual_seed(0)
    settings = {**FROZEN, "mask_resolution": 28, "mask_aligned": mask_aligned}
    model = MaskRCNN(num_classes=len(coco.getCatIds()), **settings).eval()
    category_ids = sorted(coco.getCatIds())
    image_ids = sorted(coco.getImgIds())
    sizes = [(coco.imgs[i]["height"], coco.imgs[i]["width"]) for i in image_ids]

    def detection(image_id):
        annotations = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in annotations)])
        boxes = boxes.reshape(-1, 4).float()
        labels = torch.tensor([category_ids.index(a["category_id"]) + 1 for a in annotations], dtype=torch.int64)
        probs = torch.zeros(0, 28, 28)
        if annotations:
            masks = torch.from_numpy(np.stack([coco.annToMask(a) for a in annotations]))
            if training_targets:
                probs = mask_targets(boxes, masks, torch.arange(len(boxes)), 28, mask_aligned)
            else:
                probs = crop_and_resize_masks(masks, boxes, 28, aligned=mask_aligned)
        return {"boxes": boxes, "scores": torch.ones(len(boxes)), "labels": labels, "mask_probs": probs[:, None]}

    predictions = model.to_input_resolution([detection(image_id) for image_id in image_ids], sizes, sizes)
    evaluator = CocoEvaluator(ann_file, category_ids, backend="pycocotools")
    evaluator.update(predictions, [{"image_id": image_id} for image_id in image_ids])
    return evaluator.compute()


def test_oracle_scores_the_pixel_conventions(synthetic_val):
    """Legacy (torchvision): the aligned=False crop samples half a pixel off, and the paste truncates the box to
    integers and pads it by one pixel, so a perfect 28x28 mask comes back up to a pixel off at each edge. On this
    val set (64 % of instances small) the mask IoU of small objects drops below the 0.9 / 0.95 thresholds: segm AP
    0.857 (APs 0.822, APm 0.919, AP75 still 1.0). Aligned (detectron2): crop and paste sample the same pixel
    centres, so every mask returns onto its own pixels: 1.000. Boxes are the ground truth in both: bbox AP 1.0.
    (The aligned model's binarised training targets, detectron2's, pasted back score 0.955: a 0/1 28x28 grid
    cannot hold a mask's sub-cell edges; the legacy targets are the soft crops themselves.)"""
    ann_file, coco = synthetic_val
    legacy = _oracle_segm(ann_file, coco, mask_aligned=False)
    aligned = _oracle_segm(ann_file, coco, mask_aligned=True)
    assert legacy["bbox"]["AP"] == aligned["bbox"]["AP"] == pytest.approx(1.0)
    assert legacy["segm"]["AP"] == pytest.approx(0.857, abs=0.001)
    assert legacy["segm"]["APs"] == pytest.approx(0.822, abs=0.001)
    assert legacy["segm"]["APm"] == pytest.approx(0.919, abs=0.001)
    assert legacy["segm"]["AP50"] == legacy["segm"]["AP75"] == pytest.approx(1.0)
    assert aligned["segm"]["AP"] == pytest.approx(1.0)
    assert aligned["segm"]["APs"] == pytest.approx(1.0)
    binary = _oracle_segm(ann_file, coco, mask_aligned=True, training_targets=True)
    assert binary["segm"]["AP"] == pytest.approx(0.955, abs=0.001)


def test_aligned_model_pools_and_trains_with_detectron2s_convention(frozen_model):
    from models.mask_rcnn.roi_heads import LevelPool

    torch.manual_seed(0)
    aligned = MaskRCNN(num_classes=NUM_CLASSES, **{**FROZEN, "mask_aligned": True})
    aligned.load_state_dict(frozen_model.state_dict())
    for pool in (aligned.roi_heads.box_roi_pool, aligned.roi_heads.mask_roi_pool):
        assert isinstance(pool, LevelPool)
        assert (pool.pool.aligned, pool.pool.sampling_ratio, pool.pool.level_rule) == (True, 0, "mask_rcnn")
        assert pool.pool.strides == [4, 8, 16, 32]
    images, targets = tiny_batch()
    legacy_losses = seeded_losses(frozen_model, images, targets)
    aligned_losses = seeded_losses(aligned, images, targets)
    assert set(aligned_losses) == set(legacy_losses) and all(torch.isfinite(v) for v in aligned_losses.values())
    # Same weights, RNG and RPN: the RPN terms agree, the RoI terms see other pooling and mask targets.
    assert aligned_losses["loss_rpn_cls"] == legacy_losses["loss_rpn_cls"]
    assert aligned_losses["loss_mask"] != legacy_losses["loss_mask"]


def test_aligned_mask_targets_are_binarised_aligned_crops():
    from models.mask_rcnn.roi_heads import mask_targets

    masks = torch.zeros(1, 16, 16, dtype=torch.uint8)
    masks[0, 4:12, 4:12] = 1
    box = torch.tensor([[4.0, 4.0, 12.0, 12.0]])
    aligned = mask_targets(box, masks, torch.tensor([0]), 8, aligned=True)
    assert torch.equal(aligned, torch.ones(1, 8, 8))  # the box is exactly the mask: every cell inside
    legacy = mask_targets(box, masks, torch.tensor([0]), 8, aligned=False)
    assert legacy.min() < 1  # the half-pixel shift reaches past the mask's last row and column

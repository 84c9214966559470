"""ISTR: matcher against brute force, dynamic interaction, box deltas, RoI levels, loss and inference details,
the PCA codec inside the model (file, fit at setup, checkpoint), and the official-checkpoint converter."""
import itertools
import math

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou, roi_align

from datamodules.coco import CocoDataModule
from models.istr import ISTR
from models.istr.codec_data import cached_codec_path, fit_codec_on_split
from models.istr.convert import convert_istr_official, official_settings
from models.istr.head import BOX_SCALE_CLAMP, MultiLevelRoIAlign, StageOutput, istr_box_coder
from models.istr.interaction import DynamicInteraction
from models.istr.loss import ISTRLoss
from models.istr.mask_codec import CodecError, DCTMaskCodec, PCAMaskCodec, fit_pca
from models.istr.matcher import HungarianMatcher, MatchTarget
from models.istr.model import initial_proposals
from models.istr.postprocess import ISTRPostProcess

TINY = dict(
    backbone="resnet18", norm="bn", frozen_stages=0, fpn_channels=32, min_size=64, max_size=96, num_queries=12,
    num_stages=2, num_heads=4, dim_feedforward=64, dynamic_dim=8, codec_components=8, codec_mask_size=14,
    detections_per_img=10,
)


def box_masks(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """uint8 [count, size, size] random rectangles."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(count, size, size, dtype=torch.uint8)
    for mask in masks:
        y0, x0 = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        y1 = y0 + int(torch.randint(2, size - y0 + 1, (1,), generator=generator))
        x1 = x0 + int(torch.randint(2, size - x0 + 1, (1,), generator=generator))
        mask[y0:y1, x0:x1] = 1
    return masks


def codec_file(tmp_path, components: int = 8, size: int = 14) -> str:
    fit = fit_pca([box_masks(300, size)], size, seed=0)
    return PCAMaskCodec.from_fit(fit, components, size).save(tmp_path / f"codec-{components}-{size}.pt")


def batch():
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 80, generator=generator), torch.rand(3, 72, 64, generator=generator)]
    targets = []
    for image, boxes, labels, crowd in (
        (images[0], [[8, 6, 40, 30], [30, 20, 70, 60], [0, 40, 20, 62]], [0, 2, 1], [0, 0, 1]),
        (images[1], [[10, 12, 50, 60]], [1], [0]),
    ):
        height, width = image.shape[-2:]
        masks = torch.zeros(len(boxes), height, width, dtype=torch.uint8)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes):
            mask[y0:y1, x0:x1] = 1
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
                        "masks": masks, "iscrowd": torch.tensor(crowd), "image_id": len(targets),
                        "orig_size": (height, width)})
    return images, targets


# ------------------------------------------------------------------------------------------------- matcher


def _target(labels, boxes, embeddings, size=(100.0, 80.0)):
    boxes = torch.tensor(boxes, dtype=torch.float32)
    return MatchTarget(labels=torch.tensor(labels), boxes=boxes, image_size=torch.tensor([*size, *size]),
                       masks=torch.zeros(len(labels), 4, 4), embeddings=embeddings)


def test_matching_cost_terms_by_hand():
    matcher = HungarianMatcher(cost_class=1, cost_l1=1, cost_giou=1, cost_mask=1)
    logits = torch.tensor([[0.0, 2.0]])  # p = 0.5 for class 0
    box = [[10.0, 10.0, 50.0, 30.0]]
    target = _target([0], [[20.0, 10.0, 50.0, 40.0]], torch.tensor([[1.0, 0.0]]))
    cost = matcher.cost_matrix(logits, torch.tensor(box), torch.tensor([[0.0, 2.0]]), target)
    p = 0.5
    focal = 0.25 * (1 - p) ** 2 * -math.log(p) - 0.75 * p**2 * -math.log(1 - p)
    l1 = 10 / 100 + 0 + 0 + 10 / 80
    giou = float(generalized_box_iou(torch.tensor(box), target.boxes))
    cosine = 0.0  # orthogonal embeddings
    assert float(cost) == pytest.approx(focal + l1 - giou - (cosine + 1) / 2, abs=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_hungarian_matching_is_the_brute_force_optimum(seed):
    generator = torch.Generator().manual_seed(seed)
    num_queries, num_targets, num_classes = 5, 3, 4
    logits = torch.randn(1, num_queries, num_classes, generator=generator)
    corners = torch.rand(1, num_queries, 2, generator=generator) * 50
    boxes = torch.cat([corners, corners + 5 + torch.rand(1, num_queries, 2, generator=generator) * 40], dim=2)
    embeddings = torch.randn(1, num_queries, 6, generator=generator)
    gt_corners = torch.rand(num_targets, 2, generator=generator) * 50
    gt_boxes = torch.cat([gt_corners, gt_corners + 5 + torch.rand(num_targets, 2, generator=generator) * 40], 1)
    target = _target(torch.randint(0, num_classes, (num_targets,), generator=generator).tolist(), gt_boxes.tolist(),
                     torch.randn(num_targets, 6, generator=generator))
    matcher = HungarianMatcher()
    rows, cols = matcher(logits, boxes, embeddings, [target])[0]
    cost = matcher.cost_matrix(logits[0], boxes[0], embeddings[0], target)
    best = min(sum(float(cost[q, t]) for t, q in enumerate(perm))
               for perm in itertools.permutations(range(num_queries), num_targets))
    assert len(rows) == num_targets and sorted(cols.tolist()) == list(range(num_targets))
    assert len(set(rows.tolist())) == num_targets
    assert float(cost[rows, cols].sum()) == pytest.approx(best, abs=1e-5)


def test_matching_an_image_without_targets_assigns_nothing():
    target = _target([], torch.zeros(0, 4).tolist(), torch.zeros(0, 6))
    target.boxes = torch.zeros(0, 4)
    rows, cols = HungarianMatcher()(torch.zeros(1, 4, 2), torch.rand(1, 4, 4), torch.zeros(1, 4, 6), [target])[0]
    assert rows.numel() == 0 and cols.numel() == 0


# ----------------------------------------------------------------------------------------- head pieces


def test_dynamic_interaction_is_a_per_query_two_layer_network():
    torch.manual_seed(0)
    layer = DynamicInteraction(hidden_dim=16, dynamic_dim=4, pooler_resolution=3)
    queries, rois = torch.randn(5, 16), torch.randn(5, 9, 16)
    out = layer(queries, rois)
    assert out.shape == (5, 16)
    assert layer.dynamic_layer.weight.shape == (2 * 16 * 4, 16)
    assert layer.out_layer.weight.shape == (16, 16 * 9)
    # Query 2 alone, with its generated kernels applied by explicit matrix products.
    params = layer.dynamic_layer(queries[2])
    first, second = params[: 16 * 4].view(16, 4), params[16 * 4 :].view(4, 16)
    x = F.elu(F.layer_norm(rois[2] @ first, (4,), layer.norm1.weight, layer.norm1.bias))
    x = F.elu(F.layer_norm(x @ second, (16,), layer.norm2.weight, layer.norm2.bias))
    expected = F.elu(F.layer_norm(layer.out_layer(x.flatten()), (16,), layer.norm3.weight, layer.norm3.bias))
    torch.testing.assert_close(out[2], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="roi_features must be"):
        layer(queries, torch.randn(4, 9, 16))


def test_box_deltas_apply_and_invert_with_weights_2_2_1_1():
    coder = istr_box_coder()
    boxes = torch.tensor([[10.0, 20.0, 50.0, 40.0]])  # w 40, h 20
    # dx / 2 of the width: a delta of 2 moves the centre by one width; dw = log 2 doubles the width.
    moved = coder.decode_single(torch.tensor([[2.0, 0.0, math.log(2.0), 0.0]]), boxes)
    torch.testing.assert_close(moved, torch.tensor([[30.0, 20.0, 110.0, 40.0]]))
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(20, 2, generator=generator) * 100
    targets = torch.cat([corners, corners + 1 + torch.rand(20, 2, generator=generator) * 50], 1)
    anchors = torch.cat([corners + 3, corners + 20], 1)
    deltas = coder.encode_single(targets, anchors)
    torch.testing.assert_close(coder.decode_single(deltas, anchors), targets, rtol=1e-4, atol=1e-3)
    # Huge width deltas are clamped (no overflow to inf).
    clamped = coder.decode_single(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), boxes)
    assert torch.isfinite(clamped).all()
    assert float(clamped[0, 2] - clamped[0, 0]) == pytest.approx(40 * math.exp(BOX_SCALE_CLAMP), rel=1e-4)


def test_rois_are_pooled_from_the_level_their_size_selects():
    torch.manual_seed(0)
    pooler = MultiLevelRoIAlign([4, 8, 16, 32], output_size=7)
    features = [torch.randn(1, 3, 512 // s, 512 // s) for s in (4, 8, 16, 32)]
    boxes = torch.tensor([[[0.0, 0.0, 56.0, 56.0], [0.0, 0.0, 224.0, 224.0], [10.0, 10.0, 500.0, 500.0]]])
    pooled = pooler(features, boxes)
    assert pooled.shape == (3, 3, 7, 7)
    # 56 px -> P2 (224 / 4), 224 px -> P4, ~490 px -> P5 (floor(4 + log2(490 / 224)) = 5).
    for index, level, stride in ((0, 0, 4), (1, 2, 16), (2, 3, 32)):
        rois = torch.cat([torch.zeros(1, 1), boxes[0, index : index + 1]], 1)
        expected = roi_align(features[level], rois, 7, 1 / stride, sampling_ratio=2, aligned=True)
        torch.testing.assert_close(pooled[index : index + 1], expected)


# ---------------------------------------------------------------------------------------- loss, inference


def test_classifier_bias_alone_gets_the_focal_prior(tmp_path):
    # num_classes == K == dim_feedforward: the official initialisation would overwrite mask_logits' bias and
    # linear2's weights (last dimension 8) too.
    model = ISTR(num_classes=8, **{**TINY, "dim_feedforward": 8, "codec": "dct"})
    prior = -math.log(99)
    for stage in model.head.stages:
        torch.testing.assert_close(stage.class_logits.bias, torch.full((8,), prior))
        assert not torch.allclose(stage.mask_logits.bias, torch.full((8,), prior))
        assert stage.linear2.weight.std() > 0.05  # Xavier-initialised, not a constant
    boxes = model.init_proposal_boxes.weight
    torch.testing.assert_close(boxes, torch.tensor([[0.5, 0.5, 1.0, 1.0]]).expand_as(boxes))


def test_grid_proposals_start_on_distinct_cells():
    boxes = initial_proposals(12, "grid")  # 3 rows x 4 columns
    assert boxes.shape == (12, 4)
    assert len({(round(float(x), 4), round(float(y), 4)) for x, y in boxes[:, :2]}) == 12
    torch.testing.assert_close(boxes[0], torch.tensor([0.125, 1 / 6, 0.5, 2 / 3]))
    torch.testing.assert_close(boxes[-1], torch.tensor([0.875, 5 / 6, 0.5, 2 / 3]))
    with pytest.raises(ValueError, match="proposal_init"):
        ISTR(num_classes=3, proposal_init="random", **{**TINY, "codec": "dct"})


def _perfect_stage(targets: list[MatchTarget], num_queries: int, num_classes: int) -> StageOutput:
    logits = torch.full((len(targets), num_queries, num_classes), -8.0)
    boxes = torch.tensor([10.0, 10.0, 20.0, 20.0]).repeat(len(targets), num_queries, 1)
    embeddings = torch.zeros(len(targets), num_queries, targets[0].embeddings.shape[1])
    for image, target in enumerate(targets):
        for query, (label, box, embedding) in enumerate(zip(target.labels, target.boxes, target.embeddings)):
            logits[image, query, label] = 8.0
            boxes[image, query] = box
            embeddings[image, query] = embedding
    return StageOutput(logits, boxes, embeddings)


def test_loss_is_near_zero_for_perfect_predictions_and_counts_every_stage():
    codec = DCTMaskCodec(196, 14)  # exact at full size: perfect embeddings decode to the exact masks
    masks = box_masks(3, 14).float()
    targets = [
        MatchTarget(torch.tensor([0, 2]), torch.tensor([[5.0, 5.0, 30.0, 40.0], [40.0, 10.0, 60.0, 30.0]]),
                    torch.tensor([64.0, 48.0, 64.0, 48.0]), masks[:2], codec.encode(masks[:2])),
        MatchTarget(torch.tensor([1]), torch.tensor([[0.0, 0.0, 20.0, 20.0]]), torch.tensor([64.0, 48.0, 64.0, 48.0]),
                    masks[2:], codec.encode(masks[2:])),
    ]
    criterion = ISTRLoss(3, HungarianMatcher())
    perfect = _perfect_stage(targets, num_queries=4, num_classes=3)
    losses = criterion([perfect], targets, codec)
    assert set(losses) == {"loss_cls", "loss_box", "loss_giou", "loss_mask", "loss_dice"}
    for name in ("loss_box", "loss_giou", "loss_mask", "loss_dice"):
        assert float(losses[name]) < 1e-4, (name, losses)
    assert float(losses["loss_cls"]) < 1e-3
    worse = StageOutput(perfect.class_logits, perfect.boxes + 3.0, perfect.mask_embeddings + 0.5)
    two_stages = criterion([worse, perfect], targets, codec)
    assert float(two_stages["loss_box"]) > 0.1 and float(two_stages["loss_mask"]) > 0.1
    # Deep supervision adds the stages' terms; without it only the last stage (perfect) counts.
    last_only = ISTRLoss(3, HungarianMatcher(), deep_supervision=False)([worse, perfect], targets, codec)
    assert float(last_only["loss_box"]) < 1e-4
    # L1 x 5 on image-normalised boxes: 4 coordinates off by 3 px on a 64 x 48 image, 3 ground truths.
    expected_l1 = 5 * 3 * (2 * 3 / 64 + 2 * 3 / 48) / 3
    assert float(two_stages["loss_box"]) == pytest.approx(expected_l1, rel=1e-4)


def test_inference_takes_the_best_query_class_pairs():
    codec = DCTMaskCodec(4, 8)
    logits = torch.full((1, 3, 2), -5.0)
    logits[0, 1, 0], logits[0, 2, 1], logits[0, 0, 1] = 3.0, 2.0, 1.0
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [10.0, 10.0, 30.0, 20.0], [0.0, 0.0, 40.0, 30.0]]])
    embeddings = torch.zeros(1, 3, 4)
    embeddings[0, :, 0] = 8.0  # DC term 8 / 8 = 1: a full box mask
    stage = StageOutput(logits, boxes, embeddings)
    post = ISTRPostProcess(detections_per_img=3)
    result = post([stage], codec, [(30, 40)], [(60, 80)])[0]
    assert result["labels"].tolist() == [0, 1, 1]
    torch.testing.assert_close(result["scores"], torch.sigmoid(torch.tensor([3.0, 2.0, 1.0])))
    # Boxes scaled from the 40 x 30 resized input to the 80 x 60 image.
    torch.testing.assert_close(result["boxes"][0], torch.tensor([20.0, 20.0, 60.0, 40.0]))
    assert result["masks"].shape == (3, 60, 80)
    # A full box mask fills its box (bilinear pasting may clip the 4 corner pixels) and nothing outside it.
    inside = torch.zeros(60, 80, dtype=torch.bool)
    inside[20:40, 20:60] = True
    assert not bool(result["masks"][0][~inside].any()) and int(result["masks"][0].sum()) >= 40 * 20 - 4



def test_stage_average_is_v2s_rule_logits_of_the_third_stage_on_boxes_and_masks_of_the_last():
    codec = DCTMaskCodec(4, 8)
    torch.manual_seed(0)
    stages = [
        StageOutput(torch.randn(1, 3, 2) * 3, torch.tensor([[[0.0, 0.0, 10.0, 10.0]] * 3]) + 5 * i,
                    torch.full((1, 3, 4), 8.0 * i))
        for i in range(4)
    ]
    post = ISTRPostProcess(detections_per_img=6, stage_average=True)
    result = post(stages, codec, [(30, 40)], [(30, 40)])[0]
    # Stages 3 and 4 of 4 (0-based 2, 3): the mean of their logits, then the sigmoid.
    expected = torch.sigmoid((stages[2].class_logits + stages[3].class_logits) / 2)[0]
    torch.testing.assert_close(result["scores"], expected.flatten().sort(descending=True).values)
    torch.testing.assert_close(result["boxes"], stages[3].boxes[0, :1].expand(6, 4))  # last stage's boxes
    assert bool(result["masks"].any())  # last stage's embeddings (DC 24 / 8): the first stage's (0) paste nothing
    # Fewer than three stages: the last stage alone, as V1.
    two = post(stages[2:], codec, [(30, 40)], [(30, 40)])[0]
    last_only = ISTRPostProcess(detections_per_img=6)(stages[2:], codec, [(30, 40)], [(30, 40)])[0]
    torch.testing.assert_close(two["scores"], last_only["scores"])
    torch.testing.assert_close(post(stages[3:], codec, [(30, 40)], [(30, 40)])[0]["scores"],
                               torch.sigmoid(stages[3].class_logits[0]).flatten().sort(descending=True).values)


def test_boxes_without_area_after_clipping_are_dropped():
    codec = DCTMaskCodec(4, 8)
    logits = torch.tensor([[[4.0], [3.0], [2.0]]])  # 3 queries, 1 class
    boxes = torch.tensor([[[5.0, 5.0, 20.0, 20.0], [45.0, 5.0, 60.0, 20.0], [-9.0, 10.0, -1.0, 20.0]]])
    stage = StageOutput(logits, boxes, torch.zeros(1, 3, 4))
    result = ISTRPostProcess(detections_per_img=3)([stage], codec, [(30, 40)], [(30, 40)])[0]
    # Queries 2 and 3 lie right / left of the 40 px wide image: clipped to zero width, dropped (detectron2's nonempty).
    torch.testing.assert_close(result["boxes"], torch.tensor([[5.0, 5.0, 20.0, 20.0]]))
    torch.testing.assert_close(result["scores"], torch.sigmoid(torch.tensor([4.0])))
    assert result["labels"].tolist() == [0] and result["masks"].shape == (1, 30, 40)


# -------------------------------------------------------------------------------------- the model + codec


def test_model_with_a_pca_codec_file_predicts_and_trains(tmp_path):
    path = codec_file(tmp_path)
    torch.manual_seed(0)
    model = ISTR(num_classes=3, codec_path=path, **TINY)
    assert bool(model.codec.ready)
    images, targets = batch()
    with torch.no_grad():
        predictions = model.eval()(images)
    for prediction, image in zip(predictions, images):
        count = len(prediction["scores"])  # 10 less the boxes clipped to nothing (untrained boxes can be)
        assert 0 < count <= 10 and prediction["masks"].dtype == torch.bool
        assert prediction["masks"].shape == (count, *image.shape[-2:])
        assert bool((prediction["scores"][:-1] >= prediction["scores"][1:]).all())
    losses = model.train().compute_losses(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.model.conv1.weight.grad.abs().sum() > 0
    assert model.codec.components.grad is None  # buffers: the codec is fixed


def test_codec_file_of_another_size_is_refused_and_missing_codec_is_explained(tmp_path):
    path = codec_file(tmp_path, components=6)
    with pytest.raises(CodecError, match="K=6 components of 14x14 masks, the model expects K=8, 14x14"):
        ISTR(num_classes=3, codec_path=path, **TINY)
    model = ISTR(num_classes=3, codec_path=str(tmp_path / "not-yet.pt"), **TINY)
    with pytest.raises(CodecError, match="not fitted"):
        model(batch()[0])
    with pytest.raises(ValueError, match="data-free"):
        ISTR(num_classes=3, codec="dct", codec_path=path, **{k: v for k, v in TINY.items()})


def test_fit_fits_the_codec_on_the_training_split_and_the_checkpoint_carries_it(small_synthetic_root, tmp_path):
    path = tmp_path / "codecs" / "synthetic.pt"
    datamodule = CocoDataModule(root=str(small_synthetic_root), batch_size=2)
    torch.manual_seed(0)
    model = ISTR(num_classes=datamodule.num_classes, codec_path=str(path), evaluate=False,
                 **{**TINY, "codec_components": 16, "codec_mask_size": 28})
    trainer = L.Trainer(max_steps=1, limit_train_batches=1, limit_val_batches=0, logger=False, accelerator="cpu",
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=datamodule)
    assert path.is_file() and bool(model.codec.ready)
    image_dir, ann_file = datamodule.split_paths("train")
    expected = fit_codec_on_split(image_dir, ann_file, 16, 28, seed=0, progress=False)
    torch.testing.assert_close(model.codec.components, expected.components)
    assert model.codec.source["num_masks"] == expected.source["num_masks"] > 16

    checkpoint = tmp_path / "model.ckpt"
    trainer.save_checkpoint(checkpoint)
    path.unlink()  # the checkpoint alone must carry the codec
    restored = ISTR.load_from_checkpoint(checkpoint)
    torch.testing.assert_close(restored.codec.components, model.codec.components)
    assert bool(restored.codec.ready)


def test_without_a_codec_path_the_codec_is_cached_by_dataset(small_synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MASKBENCH_CACHE", str(tmp_path / "cache"))
    ann_file = str(small_synthetic_root / "annotations" / "instances_train2017.json")
    path = cached_codec_path(ann_file, 8, 14, seed=0)
    assert str(path).startswith(str(tmp_path / "cache" / "istr_codecs"))
    assert path != cached_codec_path(ann_file, 8, 14, seed=1) != cached_codec_path(ann_file, 16, 14, seed=0)
    model = ISTR(num_classes=6, evaluate=False, **TINY)
    trainer = L.Trainer(max_steps=1, limit_train_batches=1, limit_val_batches=0, logger=False, accelerator="cpu",
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=CocoDataModule(root=str(small_synthetic_root), batch_size=2))
    assert path.is_file() and bool(model.codec.ready)


# ---------------------------------------------------------------------------------------------- converter


def official_state_dict(num_classes=5, hidden=32, queries=7, stages=2, feedforward=48, dynamic=8, k=12, mask=14):
    """An ISTR V1 checkpoint in the documented detectron2 layout (reference section 5) for a ResNet-18 body."""
    generator = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    state = {"backbone.bottom_up.stem.conv1.weight": rand(64, 3, 7, 7)}
    norm = lambda prefix, c: {f"{prefix}.norm.{n}": rand(c) if n != "running_var" else torch.rand(c) + 0.5  # noqa
                              for n in ("weight", "bias", "running_mean", "running_var")}
    state.update(norm("backbone.bottom_up.stem.conv1", 64))
    channels = {2: 64, 3: 128, 4: 256, 5: 512}
    for stage_index, width in channels.items():
        for block in range(2):
            prefix = f"backbone.bottom_up.res{stage_index}.{block}"
            in_width = channels.get(stage_index - 1, 64) if block == 0 else width
            state[f"{prefix}.conv1.weight"] = rand(width, in_width, 3, 3)
            state.update(norm(f"{prefix}.conv1", width))
            state[f"{prefix}.conv2.weight"] = rand(width, width, 3, 3)
            state.update(norm(f"{prefix}.conv2", width))
            if block == 0 and stage_index > 2:
                state[f"{prefix}.shortcut.weight"] = rand(width, in_width, 1, 1)
                state.update(norm(f"{prefix}.shortcut", width))
        state[f"backbone.fpn_lateral{stage_index}.weight"] = rand(hidden, width, 1, 1)
        state[f"backbone.fpn_lateral{stage_index}.bias"] = rand(hidden)
        state[f"backbone.fpn_output{stage_index}.weight"] = rand(hidden, hidden, 3, 3)
        state[f"backbone.fpn_output{stage_index}.bias"] = rand(hidden)
    state["pos_embeddings.weight"] = rand(queries, hidden)
    state["init_proposal_boxes.weight"] = torch.rand(queries, 4, generator=generator)
    components = torch.linalg.qr(rand(mask * mask, k))[0].T.contiguous()
    state["mask_encoding.components"] = components
    state["mask_encoding.explained_variances"] = torch.rand(k, generator=generator) + 0.5
    state["mask_encoding.means"] = rand(mask * mask)
    for i in range(stages):
        p = f"head.head_series.{i}."
        state.update({
            p + "self_attn.in_proj_weight": rand(3 * hidden, hidden), p + "self_attn.in_proj_bias": rand(3 * hidden),
            p + "self_attn.out_proj.weight": rand(hidden, hidden), p + "self_attn.out_proj.bias": rand(hidden),
            p + "inst_interact.dynamic_layer.weight": rand(2 * hidden * dynamic, hidden),
            p + "inst_interact.dynamic_layer.bias": rand(2 * hidden * dynamic),
            p + "inst_interact.norm1.weight": rand(dynamic), p + "inst_interact.norm1.bias": rand(dynamic),
            p + "inst_interact.norm2.weight": rand(hidden), p + "inst_interact.norm2.bias": rand(hidden),
            p + "inst_interact.out_layer.weight": rand(hidden, hidden * 49), p + "inst_interact.out_layer.bias": rand(hidden),
            p + "inst_interact.norm3.weight": rand(hidden), p + "inst_interact.norm3.bias": rand(hidden),
            p + "linear1.weight": rand(feedforward, hidden), p + "linear1.bias": rand(feedforward),
            p + "linear2.weight": rand(hidden, feedforward), p + "linear2.bias": rand(hidden),
            p + "class_logits.weight": rand(num_classes, hidden), p + "class_logits.bias": rand(num_classes),
            p + "bboxes_delta.weight": rand(4, hidden), p + "bboxes_delta.bias": rand(4),
            p + "mask_logits.weight": rand(k, hidden), p + "mask_logits.bias": rand(k),
        })
        for n in (1, 2, 3):
            state[p + f"norm{n}.weight"], state[p + f"norm{n}.bias"] = rand(hidden), rand(hidden)
        for tower in ("cls_module", "reg_module", "mask_module"):
            for layer in (0, 3, 6):
                state[p + f"{tower}.{layer}.weight"] = rand(hidden, hidden)
                state[p + f"{tower}.{layer + 1}.weight"] = rand(hidden)
                state[p + f"{tower}.{layer + 1}.bias"] = rand(hidden)
    return state


def test_official_checkpoint_converts_and_its_tensors_land_in_place(tmp_path):
    state = official_state_dict()
    source = tmp_path / "istr_official.pth"
    torch.save({"model": state, "iteration": 270000}, source)
    out = convert_istr_official(str(source), str(tmp_path / "istr.ckpt"))
    model = ISTR.load_from_checkpoint(out).eval()
    hp = model.hparams
    assert (hp.num_classes, hp.backbone, hp.num_queries, hp.num_stages, hp.fpn_channels) == (5, "resnet18", 7, 2, 32)
    assert (hp.codec_components, hp.codec_mask_size, hp.dynamic_dim, hp.dim_feedforward) == (12, 14, 8, 48)
    own = model.state_dict()
    pairs = {
        "backbone.bottom_up.stem.conv1.weight": "backbone.model.conv1.weight",
        "backbone.bottom_up.stem.conv1.norm.running_var": "backbone.model.bn1.running_var",
        "backbone.bottom_up.res3.0.shortcut.weight": "backbone.model.layer2.0.downsample.0.weight",
        "backbone.bottom_up.res5.1.conv2.norm.bias": "backbone.model.layer4.1.bn2.bias",
        "backbone.fpn_lateral2.weight": "neck.fpn.inner_blocks.0.0.weight",
        "backbone.fpn_output5.bias": "neck.fpn.layer_blocks.3.0.bias",
        "head.head_series.1.inst_interact.dynamic_layer.weight": "head.stages.1.inst_interact.dynamic_layer.weight",
        "head.head_series.0.mask_module.4.bias": "head.stages.0.mask_module.4.bias",
        "head.head_series.1.class_logits.bias": "head.stages.1.class_logits.bias",
        "mask_encoding.components": "codec.components",
        "mask_encoding.explained_variances": "codec.explained_variance",
        "mask_encoding.means": "codec.mean",
        "pos_embeddings.weight": "pos_embeddings.weight",
    }
    for official, ours in pairs.items():
        torch.testing.assert_close(own[ours], state[official], rtol=0, atol=0)
    assert bool(model.codec.ready)
    with torch.no_grad():
        predictions = model([torch.rand(3, 64, 80)])
    assert predictions[0]["masks"].shape[-2:] == (64, 80)

    del state["head.head_series.0.linear1.bias"]
    state["head.head_series.0.extra.weight"] = torch.zeros(1)
    torch.save(state, source)
    with pytest.raises(ValueError, match=r"missing \['head.stages.0.linear1.bias'\].*unused \['head.stages.0.extra"):
        convert_istr_official(str(source), str(tmp_path / "bad.ckpt"))


def test_converter_reads_the_resnet_depth_and_refuses_other_models(tmp_path):
    state = {key: value for key, value in official_state_dict(stages=1).items() if "bottom_up.res" not in key}
    for stage_index, blocks in zip(range(2, 6), (3, 4, 6, 3)):
        for block in range(blocks):
            state[f"backbone.bottom_up.res{stage_index}.{block}.conv3.weight"] = torch.zeros(1)
    assert official_settings(state, "x.pth")["backbone"] == "resnet50"
    state = {k: v for k, v in state.items() if "mask_logits" not in k}
    with pytest.raises(ValueError, match="only ISTR V1"):
        official_settings(state, "x.pth")
    torch.save({"model": {"backbone.conv1.weight": torch.zeros(1)}}, tmp_path / "yolact.pth")
    with pytest.raises(ValueError, match="not an official ISTR V1"):
        convert_istr_official(str(tmp_path / "yolact.pth"), str(tmp_path / "x.ckpt"))


def test_level_selection_by_gather_equals_the_per_level_pooling_and_never_syncs():
    """The device path (every level pools every box, a gather picks each box's level) equals the CPU path; with it
    the whole head (6 stages of pooling and box decoding) runs without a host sync."""
    from tests.models.sync_census import SyncCensus
    from tests.models.test_contract import NUM_CLASSES, TINY_CONFIGS

    generator = torch.Generator().manual_seed(0)
    features = [torch.randn(2, 3, 512 // s, 512 // s, generator=generator) for s in (4, 8, 16, 32)]
    corners = torch.rand(2, 30, 2, generator=generator) * 300
    boxes = torch.cat([corners, corners + 4 + torch.rand(2, 30, 2, generator=generator) * 400], dim=2)
    by_level = MultiLevelRoIAlign([4, 8, 16, 32], output_size=7, gather_levels=False)(features, boxes)
    gathered = MultiLevelRoIAlign([4, 8, 16, 32], output_size=7, gather_levels=True)(features, boxes)
    assert torch.equal(gathered, by_level)

    torch.manual_seed(0)
    model = ISTR(num_classes=NUM_CLASSES, **{**TINY_CONFIGS["istr"], "num_stages": 6}).eval()
    model.head.pooler.gather_levels = True
    with torch.no_grad():
        batch, _ = model.transform([torch.rand(3, 64, 80, generator=generator)])
        features = list(model.neck(model.backbone(batch.tensors)).values())
        unit = torch.tensor([[0.5, 0.5, 1.0, 1.0]]).expand(1, TINY_CONFIGS["istr"]["num_queries"], 4) * 40
        queries = torch.zeros(1, TINY_CONFIGS["istr"]["num_queries"], TINY_CONFIGS["istr"]["fpn_channels"])
        with SyncCensus() as census:
            stages = model.head(features, unit, queries)
    assert len(stages) == 6 and census.syncs == 0, census.counts

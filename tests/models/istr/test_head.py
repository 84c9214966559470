"""ISTR head pieces: dynamic interaction, box deltas, RoI levels, a sync-free head, focal prior, grid proposals."""
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from models.istr import ISTR
from models.istr.head import BOX_SCALE_CLAMP, istr_box_coder
from models.istr.interaction import DynamicInteraction
from models.istr.model import initial_proposals
from tests.models.istr.common import TINY


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


def test_rois_are_pooled_from_the_level_detectron2s_rule_selects():
    """The head pools with the shared LevelRoIAlign as the official ROIPooler does: ROIAlignV2, sampling 2, levels by
    detectron2's floor(4 + log2(sqrt(area) / 224 + 1e-8)), so a box a hair under 224 px stays on P3."""
    torch.manual_seed(0)
    pooler = ISTR(num_classes=3, **{**TINY, "codec": "dct"}).head.pooler
    assert (pooler.level_rule, pooler.sampling_ratio, pooler.aligned, pooler.gather_levels) == (
        "mask_rcnn", 2, True, None)
    strides = [4, 8, 16, 32]
    pooler = type(pooler)(strides, 7, pooler.level_rule, pooler.sampling_ratio, pooler.aligned)
    features = [torch.randn(1, 3, 512 // s, 512 // s) for s in strides]
    boxes = torch.tensor([[0.0, 0.0, 56.0, 56.0], [0.0, 0.0, 223.9999, 223.9999], [0.0, 0.0, 224.0, 224.0],
                          [10.0, 10.0, 500.0, 500.0]])
    assert pooler.levels([boxes]).tolist() == [2, 3, 4, 5]
    pooled = pooler(features, [boxes])
    assert pooled.shape == (4, 3, 7, 7)
    for index, level in enumerate((0, 1, 2, 3)):
        rois = torch.cat([torch.zeros(1, 1), boxes[index : index + 1]], 1)
        expected = roi_align(features[level], rois, 7, 1 / strides[level], sampling_ratio=2, aligned=True)
        torch.testing.assert_close(pooled[index : index + 1], expected)


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


def test_the_six_stage_head_never_syncs_with_gathered_levels():
    """With the device path of the pooler (every level pools every box, a gather picks each box's level; equal to
    the per-level path, see tests/models/common/test_roi_pooler.py) the whole head (6 stages of pooling and box
    decoding) runs without a host sync."""
    from tests.models.sync_census import SyncCensus
    from tests.models.test_contract import NUM_CLASSES, TINY_CONFIGS

    generator = torch.Generator().manual_seed(0)
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

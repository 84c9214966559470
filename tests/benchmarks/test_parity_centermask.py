"""CenterMask against centermask2 without the official checkout: the fixture written by
benchmarks/parity/centermask.py (centermask2's VoVNet, FPN top block, FCOS head, pooler, SAG-Mask and MaskIoU heads
on our seeded weights) replayed on our model, and the converter checked against the official key layout."""
import pytest
import torch

from benchmarks.parity import centermask as parity
from benchmarks.parity.common import compare, replay as replay_fixture
from models.centermask.convert import map_state_dict, official_settings

# Settings the converter sets from the official test recipe rather than from the weights.
RECIPE_SETTINGS = ("min_size", "max_size", "post_nms_top_n_test")


@pytest.fixture(scope="module")
def replay():
    return replay_fixture("centermask", parity.parity_model, "benchmarks.parity.centermask")


def test_converter_reads_the_official_layout_back_into_our_model(replay):
    """The 269 keys of centermask2's modules (VoVNet-39 backbone, FPN, FCOS head, mask and MaskIoU heads), stored in
    the fixture, through the converter: the same settings and every tensor in place."""
    fixture, model, state = replay
    official = parity.to_official_layout(state, fixture["official_keys"])
    settings = {k: v for k, v in official_settings(official, "official").items() if k not in RECIPE_SETTINGS}
    assert settings == {k: model.hparams[k] for k in settings}
    mapped = map_state_dict(official, model.state_dict(), "official")
    assert all(torch.equal(mapped[k], v) for k, v in state.items())


def test_pyramid_heads_and_roi_branch_match_centermask2(replay):
    fixture, model, _ = replay
    ours, _, _ = parity.ours_outputs(model, fixture["images"], fixture["boxes"], fixture["classes"])
    failures = compare(fixture["official"], ours, fixture["tolerances"])
    assert not failures, failures

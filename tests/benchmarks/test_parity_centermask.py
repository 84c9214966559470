"""CenterMask against centermask2 without the official checkout: the fixture written by
benchmarks/parity/centermask.py (centermask2's VoVNet, FPN top block, FCOS head, pooler, SAG-Mask and MaskIoU heads
on our seeded weights; its FCOS location assignment and losses) replayed on our model, and the converter checked
against the official key layouts."""
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


@pytest.mark.parametrize("name", sorted(parity.RELEASED_LAYOUTS))
def test_converter_reads_the_released_official_layouts(replay, name):
    """Key -> shape layouts of the released VoVNet configurations, built by the script from centermask2's modules:
    every key maps, every tensor of our model is filled, shapes agree, and the structure read is the right one."""
    fixture, _, _ = replay
    settings = parity.converter_reads_layout(name, fixture["layouts"][name])
    body, lite = parity.RELEASED_LAYOUTS[name]
    expected_backbone = {"V-19-eSE": "ese_vovnet19b", "V-19-slim-eSE": "ese_vovnet19b_slim",
                         "V-39-eSE": "ese_vovnet39b", "V-57-eSE": "ese_vovnet57b", "V-99-eSE": "ese_vovnet99b"}
    assert settings["backbone"] == expected_backbone[body] and settings["num_classes"] == 80
    assert (settings["fpn_channels"], settings["fcos_num_convs"], settings["mask_head_convs"]) == (
        (128, 2, 2) if lite else (256, 4, 4))


@pytest.mark.parametrize("name", sorted(parity.REFUSED_LAYOUTS))
def test_converter_refuses_the_depthwise_layouts_by_name(replay, name):
    fixture, _, _ = replay
    with pytest.raises(ValueError, match="depthwise"):
        parity.converter_reads_layout(name, fixture["layouts"][name])


def test_pyramid_heads_roi_branch_fcos_assignment_and_losses_match_centermask2(replay):
    fixture, model, _ = replay
    ours, _, _ = parity.ours_outputs(model, fixture["images"], fixture["boxes"], fixture["classes"])
    ours.update(parity.ours_train_outputs(model, fixture["images"], fixture["targets"])[0])
    failures = compare(fixture["official"], ours, fixture["tolerances"])
    assert not failures, failures

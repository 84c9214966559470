"""ISTR against the official V1 code without the official checkout: the fixture written by benchmarks/parity/istr.py
(official DynamicHead, matcher, losses and PCA codec on our seeded weights) replayed on our model."""
import pytest
import torch

from benchmarks.parity import istr as parity
from benchmarks.parity.common import compare, replay as replay_fixture
from models.istr.convert import map_state_dict, official_settings

# Settings the converter takes from the official training / test recipe rather than from the weights.
RECIPE_SETTINGS = ("frozen_stages", "min_size", "max_size", "evaluate")


@pytest.fixture(scope="module")
def replay():
    return replay_fixture("istr", parity.parity_model, "benchmarks.parity.istr")


def test_converter_reads_the_official_layout_back_into_our_model(replay):
    """The official modules' state_dict() keys (detectron2's ResNet-18 + FPN, head, mask_encoding, queries), stored
    in the fixture, through the converter: the same architecture settings and every tensor in place."""
    fixture, model, state = replay
    official = parity.to_official_layout(state, fixture["official_keys"])
    settings = official_settings(official, "official")
    architecture = [k for k in parity.SETTINGS if k not in RECIPE_SETTINGS]
    assert {k: settings[k] for k in architecture} == {k: model.hparams[k] for k in architecture}
    mapped = map_state_dict(official, model.state_dict(), "official")
    assert all(torch.equal(mapped[k], v) for k, v in state.items() if k not in parity.CONVERTER_FILLED)


@pytest.mark.parametrize("name", sorted(parity.RELEASED_LAYOUTS))
def test_converter_reads_the_released_official_layouts(replay, name):
    """Key -> shape layouts of the released V1 models (detectron2 ResNet-50/101 + FPN, 6 stages, 300 queries, K 60),
    built by the script from the official modules: every key maps, every tensor is filled, shapes agree."""
    fixture, _, _ = replay
    settings = parity.converter_reads_layout(name, fixture["layouts"][name])
    expected = parity.RELEASED_LAYOUTS[name]
    assert {k: settings[k] for k in expected} == expected


def test_stage_outputs_assignments_and_losses_match_the_official(replay):
    fixture, model, _ = replay
    ours, _, _ = parity.ours_outputs(model, fixture["images"], fixture["targets"])
    failures = compare(fixture["official"], ours, fixture["tolerances"])
    assert not failures, failures

"""ISTR against the official V1 code without the official checkout: the fixture written by benchmarks/parity/istr.py
(official DynamicHead, matcher, losses and PCA codec on our seeded weights) replayed on our model."""
import pytest

from benchmarks.parity import istr as parity
from benchmarks.parity.common import compare, replay as replay_fixture


@pytest.fixture(scope="module")
def replay():
    return replay_fixture("istr", parity.parity_model, "benchmarks.parity.istr")


def test_converter_key_table_maps_the_official_head_layout_onto_our_tensors(replay):
    """The official modules' state_dict() keys (head, mask_encoding, pos_embeddings, init_proposal_boxes), stored in
    the fixture, through the converter's key table: every key lands on one of our tensors, none of ours is left."""
    fixture, _, state = replay
    official = parity.to_official_layout(state, fixture["official_keys"])
    assert len(official) == len(fixture["official_keys"])


def test_stage_outputs_assignments_and_losses_match_the_official(replay):
    fixture, model, _ = replay
    ours, _, _ = parity.ours_outputs(model, fixture["images"], fixture["targets"])
    failures = compare(fixture["official"], ours, fixture["tolerances"])
    assert not failures, failures

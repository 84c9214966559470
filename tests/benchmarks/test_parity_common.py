"""The shared parity procedure (benchmarks/parity/common.py): seeded weights, checksum, inverse key mapping."""
import pytest
import torch
from torch import nn

from benchmarks.parity.common import check_checksum, official_layout, seeded_state, state_checksum


def _net(extra: bool = False) -> nn.Module:
    layers = [nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)] + ([nn.Conv2d(4, 4, 1)] if extra else [])
    return nn.Sequential(*layers)


def test_seeded_weights_are_reproducible_and_independent_of_other_tensors():
    first, again, grown = seeded_state(_net(), 5), seeded_state(_net(), 5), seeded_state(_net(extra=True), 5)
    assert state_checksum(first) == state_checksum(again)
    assert all(torch.equal(first[k], grown[k]) for k in first)  # adding a layer leaves the others as they were
    assert not torch.equal(first["0.weight"], seeded_state(_net(), 6)["0.weight"])
    assert float(first["1.running_var"].min()) >= 0.5  # usable BatchNorm statistics


def test_a_changed_rng_or_layout_names_the_script_that_regenerates_the_fixture():
    state = seeded_state(_net(), 5)
    fixture = {"seed": 5, "checksum": state_checksum(state), "torch": torch.__version__}
    check_checksum(state, fixture, "benchmarks.parity.x")
    state["0.bias"] = state["0.bias"] + 1e-7
    with pytest.raises(AssertionError, match=r"python -m benchmarks\.parity\.x --official-repo"):
        check_checksum(state, fixture, "benchmarks.parity.x")


def test_official_layout_inverts_the_converter_key_function_and_refuses_gaps():
    ours = seeded_state(_net(), 5)
    official_keys = [f"official.{k}" for k in ours]
    layout = official_layout(ours, official_keys, lambda key: key.removeprefix("official."))
    assert all(torch.equal(layout[f"official.{k}"], v) for k, v in ours.items())
    with pytest.raises(ValueError, match="no official key fills"):
        official_layout(ours, official_keys[1:], lambda key: key.removeprefix("official."))
    with pytest.raises(ValueError, match="mapping nowhere"):
        official_layout(ours, official_keys + ["official.extra"], lambda key: key.removeprefix("official."))

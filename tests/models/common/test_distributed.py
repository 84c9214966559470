"""The shared cross-process normaliser in a single process: the value itself, no floor of its own."""
import pytest
import torch
import torch.distributed as dist

from models.common.distributed import mean_over_processes


def test_single_process_returns_the_value_unchanged():
    assert not (dist.is_available() and dist.is_initialized())
    assert mean_over_processes(7.0, torch.device("cpu")) == 7.0
    # No floor here: FCOS and ISTR each clamp at their own minimum.
    assert mean_over_processes(0.0, torch.device("cpu")) == 0.0


def test_one_process_group_averages_over_a_world_of_one(tmp_path):
    """An initialised group of one goes through the all-reduce and divides by a world size of 1."""
    if not dist.is_available():
        pytest.skip("torch.distributed is not built in")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        assert mean_over_processes(2.5, torch.device("cpu")) == pytest.approx(2.5)
    finally:
        dist.destroy_process_group()

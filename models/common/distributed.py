"""What the data-parallel processes agree on: loss normalisers averaged over them."""
from __future__ import annotations

import torch
import torch.distributed as dist


def mean_over_processes(value: float, device: torch.device) -> float:
    """The mean of a per-process number over the data-parallel processes (the value itself when not distributed).

    The normalisers must be the same on every process, or the processes would weight their gradients differently.
    A single process needs no tensor (and so no host-device round trip). Floors (FCOS's 1.0, ISTR's 1.0) are the
    caller's: each loss states its own.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return value
    total = torch.tensor([value], dtype=torch.float32, device=device)
    dist.all_reduce(total)
    return float(total) / dist.get_world_size()

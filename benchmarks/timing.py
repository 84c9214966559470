"""The timing of the speed protocol (benchmarks/speed.py): device synchronisation, a synchronised stopwatch around
one call, per-stage timing through forward hooks, and the round-robin order in which models take turns.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (the protocol's only syncs; a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Stopwatch:
    """`with Stopwatch(device) as watch: ...` -> `watch.seconds`, the block's wall time with the device synchronised
    right before and right after it (the only syncs; on an exception nothing is measured)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = float("nan")

    def __enter__(self) -> "Stopwatch":
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc_type is None:
            synchronize(self.device)
            self.seconds = time.perf_counter() - self._start
        return False


class StageTimer:
    """Forward pre/post hooks that add each stage submodule's time to its stage.

    On a GPU each call is bracketed by CUDA events (no host sync inside the call; the spans are read after the
    call's final sync); elsewhere by the protocol's `synchronize` + perf_counter.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.use_events = device.type == "cuda"
        self._open: dict[str, list[Any]] = {}
        self._spans: list[tuple[str, Any, Any]] = []
        self._stage_of: dict[str, str] = {}

    def reset(self) -> None:
        self._open.clear()
        self._spans.clear()

    def _mark(self) -> Any:
        if self.use_events:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        synchronize(self.device)
        return time.perf_counter()

    def pre_hook(self, stage: str, dotted: str) -> Callable:
        self._stage_of[dotted] = stage

        def hook(module, args):
            self._open.setdefault(dotted, []).append(self._mark())

        return hook

    def post_hook(self, dotted: str) -> Callable:
        def hook(module, args, output):
            start = self._open[dotted].pop()
            self._spans.append((self._stage_of[dotted], start, self._mark()))

        return hook

    def stage_seconds(self) -> dict[str, float]:
        seconds = {stage: 0.0 for stage in dict.fromkeys(self._stage_of.values())}
        for stage, start, end in self._spans:
            seconds[stage] += start.elapsed_time(end) / 1e3 if self.use_events else end - start
        return seconds


def round_robin(runs: Sequence[Any], calls: int, fn: Callable[[Any, int], Any]) -> list[list[Any]]:
    """fn(run, i) for i in range(calls), alternating the runs call by call: A0 B0 A1 B1 ..."""
    results: list[list[Any]] = [[] for _ in runs]
    for index in range(calls):
        for position, run in enumerate(runs):
            results[position].append(fn(run, index))
    return results

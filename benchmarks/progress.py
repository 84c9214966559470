"""A progress bar over the model calls of a speed measurement, for `maskbench bench` and the benchmark stage of
`maskbench run`: FLOPs counting, warm-up and the timed passes take minutes on a CPU, and say nothing meanwhile.

The bar counts calls of each model's forward (a forward pre-hook, which costs one Python call: nothing next to a
model's forward, and the same for every model compared), so it needs nothing from the protocol's internals; its
total is an estimate (FLOPs images + warm-up + three passes of `iters`; a model without a stage split makes one
pass only), closed at the true count. It writes to
stderr, like tqdm's other bars in the project (`data check`, `sweep`, `fit-codec`).
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence

from torch import nn


def expected_calls(models: int, *, warmup: int, iters: int, flops_images: int, breakdown: bool) -> int:
    """About how many forward calls the speed protocol makes: per model the FLOPs images, the warm-up, and the
    end-to-end, model-only and (with breakdown) per-stage passes of `iters` calls, the last two after their own
    warm-up calls."""
    from benchmarks.speed import PASS_WARMUP

    passes = 3 if breakdown else 2
    return models * (flops_images + warmup + (passes - 1) * PASS_WARMUP + passes * iters)


@contextlib.contextmanager
def call_progress(models: Sequence[nn.Module], total: int, description: str, enabled: bool = True) -> Iterator[None]:
    from tqdm import tqdm

    bar = tqdm(total=total, desc=description, unit="call", file=sys.stderr, disable=not enabled, dynamic_ncols=True)

    def tick(module, args) -> None:  # None: a pre-hook's return value would replace the call's arguments
        bar.update(1)

    handles = [model.register_forward_pre_hook(tick) for model in models]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        bar.total = bar.n  # the estimate's remainder, if any, was never going to come
        bar.refresh()
        bar.close()

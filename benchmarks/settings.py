"""The speed protocol's settings for one run (`maskbench run`, `sweep`, `quickstart`) and their command-line form.

They live with the benchmarks so that dependencies run one way: experiments -> benchmarks. Importing this module
imports nothing heavy (torch only inside `resolved`), so the verbs' parsers stay cheap to build.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class BenchmarkSettings:
    """The speed protocol's settings for a run (benchmarks.speed.benchmark); device "auto" = the GPU when present."""

    warmup: int = 10
    iters: int = 100
    precision: str = "32"
    batch_size: int = 1
    channels_last: bool = False
    compile: bool = False
    breakdown: bool = True
    device: str = "auto"

    def resolved(self) -> "BenchmarkSettings":
        """With "auto" replaced by the device it means in this process."""
        if self.device != "auto":
            return self
        import torch

        return BenchmarkSettings(**{**asdict(self), "device": "cuda" if torch.cuda.is_available() else "cpu"})


def add_benchmark_arguments(parser: argparse.ArgumentParser, defaults: BenchmarkSettings = BenchmarkSettings()) -> None:
    bench = parser.add_argument_group("speed benchmark (benchmarks.speed)")
    bench.add_argument("--bench-warmup", type=int, default=defaults.warmup, help="untimed calls per pass")
    bench.add_argument("--bench-iters", type=int, default=defaults.iters, help="timed calls per pass")
    bench.add_argument("--bench-precision", choices=("32", "16", "bf16"), default=defaults.precision,
                       help="fp32, or AMP autocast in fp16 / bf16")
    bench.add_argument("--bench-batch-size", type=int, default=defaults.batch_size, help="images per timed call")
    bench.add_argument("--bench-channels-last", action="store_true", default=defaults.channels_last,
                       help="channels_last memory format")
    bench.add_argument("--bench-compile", action="store_true", default=defaults.compile,
                       help="torch.compile the network submodules")
    bench.add_argument("--bench-no-breakdown", dest="bench_breakdown", action="store_false",
                       default=defaults.breakdown, help="skip the per-stage timing pass")
    bench.add_argument("--bench-device", default=defaults.device, help="auto (the GPU when present), cpu, cuda")


def benchmark_settings(args: argparse.Namespace) -> BenchmarkSettings:
    return BenchmarkSettings(
        warmup=args.bench_warmup, iters=args.bench_iters, precision=args.bench_precision,
        batch_size=args.bench_batch_size, channels_last=args.bench_channels_last, compile=args.bench_compile,
        breakdown=args.bench_breakdown, device=args.bench_device,
    )


def benchmark_arguments(settings: BenchmarkSettings) -> list[str]:
    """`settings` as `maskbench run` options (what a sweep passes to each run process)."""
    tokens = [f"--bench-warmup={settings.warmup}", f"--bench-iters={settings.iters}",
              f"--bench-precision={settings.precision}", f"--bench-batch-size={settings.batch_size}",
              f"--bench-device={settings.device}"]
    if settings.channels_last:
        tokens.append("--bench-channels-last")
    if settings.compile:
        tokens.append("--bench-compile")
    if not settings.breakdown:
        tokens.append("--bench-no-breakdown")
    return tokens

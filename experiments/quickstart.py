"""Every architecture on the embedded default, end to end: what `make demo` runs.

    maskbench quickstart [--results results/quickstart] [--models mask_rcnn,yolact] [--force] [--no-wandb]
                         [--bench-iters 20 --bench-warmup 3 ...]

The synthetic COCO-format dataset (generated and cached on first use) is checked, then for every model of
models.MODELS that has experiments/configs/quickstart/<name>.yaml: train with that config, evaluate on the val
split, benchmark (a short speed protocol: 3 warm-up + 20 timed calls per pass at the quickstart input size), write
the result record to RESULTS/records/ (a model whose record exists is not trained again; --force retrains). Then
the leaderboard table is printed and written with the AP-vs-FPS plot to RESULTS/leaderboard/. On a machine with a
GPU the models train and are benchmarked on it; otherwise on the CPU.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.settings import BenchmarkSettings, add_benchmark_arguments, benchmark_settings
from experiments.paths import QUICKSTART_DIR, REPO_ROOT
from experiments.run import add_output_arguments, run_experiment

RESULTS_DEFAULT = "results/quickstart"
BENCHMARK_DEFAULTS = BenchmarkSettings(warmup=3, iters=20)
TARGET_SEGM_AP = 0.50  # what every quickstart config is tuned to reach on the synthetic val split


def quickstart_configs(names: list[str] | None = None) -> dict[str, Path]:
    """MODELS name -> its quickstart config, in the MODELS table's order (names: a subset, checked)."""
    import models

    available = {name: QUICKSTART_DIR / f"{name}.yaml" for name in models.MODELS
                 if (QUICKSTART_DIR / f"{name}.yaml").is_file()}
    if names is None:
        return available
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ValueError(f"no quickstart config for {', '.join(unknown)}; available: {', '.join(available)}")
    return {name: available[name] for name in names}


def quickstart(
    results_dir: str | Path = RESULTS_DEFAULT,
    names: list[str] | None = None,
    *,
    force: bool = False,
    wandb: str = "offline",
    benchmark: BenchmarkSettings = BENCHMARK_DEFAULTS,
    extra_overrides: list[str] | None = None,
) -> int:
    """Train, evaluate and benchmark every quickstart model, then print the leaderboard; exit status (1 if a run
    failed)."""
    import torch

    from experiments.leaderboard import write_leaderboard

    start = time.perf_counter()
    configs = quickstart_configs(names)
    _print_dataset_summary()
    overrides = list(extra_overrides or [])
    if torch.cuda.is_available():
        overrides += ["--trainer.accelerator=gpu", "--trainer.devices=1"]
    print(f"device: {'GPU ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'}", flush=True)
    failed = []
    for name, config in configs.items():
        print(f"\n=== {name}: {config.relative_to(REPO_ROOT)}", flush=True)
        record = run_experiment([str(config)], overrides, results_dir=results_dir, seed=0, benchmark=benchmark,
                                name=name, force=force, wandb=wandb)
        if record["status"] != "ok":
            failed.append(name)
    out_dir = Path(results_dir) / "leaderboard"
    text = write_leaderboard([results_dir], out_dir, wandb=wandb)
    print("\n" + text)
    print(f"plot: {out_dir / 'ap_vs_fps.png'}   tables: {out_dir / 'leaderboard.md'}, {out_dir / 'leaderboard.csv'}")
    print(f"quickstart took {time.perf_counter() - start:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)} (errors in {Path(results_dir) / 'records'})", flush=True)
    return 1 if failed else 0


def _print_dataset_summary() -> None:
    from datamodules.check import check_dataset, format_check_summary
    from datamodules.coco import CocoDataModule

    image_dir, ann_file = CocoDataModule().split_paths("val")  # the embedded default, generated on first use
    print(format_check_summary(check_dataset(image_dir, ann_file, progress=False), str(Path(ann_file).parent.parent)),
          flush=True)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default=None, help="comma-separated MODELS names (default: every model with a "
                                                       "quickstart config)")
    add_output_arguments(parser, RESULTS_DEFAULT)
    add_benchmark_arguments(parser, BENCHMARK_DEFAULTS)
    parser.set_defaults(handler=_quickstart_command)


def _quickstart_command(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else None
    return quickstart(args.results, names, force=args.force, wandb=args.wandb, benchmark=benchmark_settings(args))

"""Training throughput per architecture (images/s, data loader included) next to the loader's own throughput.

    python -m benchmarks.train_speed --config experiments/configs/quickstart/yolact.yaml [--config B.yaml ...]
        [--data-config DATA.yaml] [--set KEY=VALUE ...] [--device cpu|cuda] [--precision 32|16-mixed|bf16-mixed]
        [--warmup 2] [--steps 10] [--loader-batches 20] [--out result.json]

Each --config is built exactly as `maskbench fit` builds it (benchmarks.bench_cli.build_from_config), and trained
through Lightning's Trainer for --warmup + --steps optimizer steps (training_step, backward, optimizer, logging; the
config's gradient clipping) with the config's own DataLoader (workers, pinning, grouped batches). The figure is
images of the timed steps / wall time from the end of the last warm-up step to the end of the last step, so the
waits for the loader between steps are in it; `loader_wait_share` is the part of that time spent outside the
steps (fetching a batch, moving it to the device, Lightning's bookkeeping). Validation is off.

Then the same datamodule's train loader runs alone (benchmarks.dataloader_speed.measure: no model, --warmup
batches left out, --loader-batches timed), and `loader_over_training` = loader images/s / training images/s says
how far the loader is from being the bottleneck (goal >= 2: the loader keeps up with twice the consumption).
The figures are measurements of this machine; nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LOADER_GOAL = 2.0


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_timer(device):
    """A Lightning callback recording, per training batch, the wall time at its start and its end (synchronised)."""
    import lightning as L

    class StepTimer(L.Callback):
        def __init__(self):
            self.starts: list[float] = []
            self.ends: list[float] = []
            self.images: list[int] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            _synchronize(device)
            self.starts.append(time.perf_counter())
            self.images.append(len(batch[0]))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            _synchronize(device)
            self.ends.append(time.perf_counter())

    return StepTimer()


def build(config: str, data_config: str | None, overrides: list[str]):
    """(model, datamodule, gradient clipping kwargs) as `maskbench fit --config CONFIG` builds them."""
    import warnings

    from benchmarks.bench_cli import cli_arguments
    from benchmarks.lightning_cli import run_lightning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = run_lightning(cli_arguments(config, data_config, overrides), run=False)
    trainer_config = cli.config.get("trainer", {})
    clipping = {key: trainer_config.get(key) for key in ("gradient_clip_val", "gradient_clip_algorithm")}
    return _timing_only(cli.model), cli.datamodule, clipping


def _timing_only(model):
    """The model as the fit-start BatchNorm checks (models/base.py) let it train, with the same computation.

    Those checks refuse set-ups that cannot learn: frozen BatchNorm layers with scale 0 (random weights with
    norm: frozen_bn, as the GPU check times paper configs) and trainable BatchNorm on fewer images per device than
    the architecture's official minimum (the throughput runs use small batches). A speed measurement needs neither
    refusal: the zero scales become 1 (a frozen layer costs the same whatever its values) and the minimum is lifted.
    """
    import torch

    with torch.no_grad():
        for module in model.modules():
            if "FrozenBatchNorm" in type(module).__name__ and not torch.any(module.weight != 0):
                module.weight.fill_(1.0)
    model.hparams.bn_min_batch = 1
    return model


def measure_training(model, datamodule, *, device: str, precision: str, warmup: int, steps: int,
                     clipping: dict[str, Any] | None = None) -> dict[str, Any]:
    """images/s of `steps` training steps after `warmup` steps, loader waits included (see the module docstring)."""
    import lightning as L
    import torch

    if warmup < 1 or steps < 1:
        raise ValueError(f"need warmup >= 1 and steps >= 1, got warmup={warmup}, steps={steps}")
    torch_device = torch.device(device)
    timer = _step_timer(torch_device)
    with tempfile.TemporaryDirectory(prefix="train_speed-") as root:  # the module writes metrics.json at fit end
        trainer = L.Trainer(
            accelerator="gpu" if torch_device.type == "cuda" else torch_device.type, devices=1, precision=precision,
            max_steps=warmup + steps, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
            default_root_dir=root, **{key: value for key, value in (clipping or {}).items() if value is not None},
        )
        trainer.fit(model, datamodule=datamodule)
    if len(timer.ends) < warmup + steps:
        raise RuntimeError(f"training ran {len(timer.ends)} steps, expected {warmup + steps} (too few train images "
                           "for one epoch of them? the loader restarts each epoch, which is then timed too)")
    start, end = timer.ends[warmup - 1], timer.ends[warmup + steps - 1]
    images = sum(timer.images[warmup:warmup + steps])
    inside = sum(e - s for s, e in zip(timer.starts[warmup:warmup + steps], timer.ends[warmup:warmup + steps]))
    seconds = end - start
    return {
        "images_per_s": images / seconds,
        "timed_steps": steps,
        "timed_images": images,
        "timed_seconds": seconds,
        "step_s_median": statistics.median(
            e - s for s, e in zip(timer.starts[warmup:warmup + steps], timer.ends[warmup:warmup + steps])),
        "loader_wait_share": max(0.0, 1 - inside / seconds),
        "skipped_steps": int(getattr(model, "skipped_steps", 0) or 0),
        "warmup_steps": warmup,
        "precision": precision,
        "batch_size": datamodule.hparams.batch_size,
        "num_workers": datamodule.hparams.num_workers,
    }


def measure_config(config: str, *, data_config: str | None = None, overrides: list[str] = (), device: str = "cpu",
                   precision: str = "32", warmup: int = 2, steps: int = 10, loader_batches: int | None = 20,
                   ) -> dict[str, Any]:
    """Training and loader-only throughput of one config, and their ratio."""
    from benchmarks.dataloader_speed import measure as measure_loader

    model, datamodule, clipping = build(config, data_config, list(overrides))
    training = measure_training(model, datamodule, device=device, precision=precision, warmup=warmup, steps=steps,
                                clipping=clipping)
    loader = measure_loader(datamodule, epochs=100, warmup=warmup, batches=loader_batches)
    return {
        "config": config,
        "model": type(model).__name__,
        "training": training,
        "loader": loader,
        "loader_over_training": loader["images_per_s"] / training["images_per_s"],
    }


def format_table(records: list[dict[str, Any]], names: list[str]) -> str:
    width = max(12, *(len(name) for name in names))
    lines = [f"{'name':<{width}} {'batch':>5} {'workers':>7} {'train img/s':>11} {'loader wait':>11} "
             f"{'loader img/s':>12} {'loader/train':>12}"]
    for name, record in zip(names, records):
        training, loader = record["training"], record["loader"]
        ratio = record["loader_over_training"]
        lines.append(
            f"{name:<{width}} {training['batch_size']:>5} {training['num_workers']:>7} "
            f"{training['images_per_s']:11.2f} {training['loader_wait_share']:10.0%} "
            f"{loader['images_per_s']:12.1f} {ratio:11.1f}x{'' if ratio >= LOADER_GOAL else ' < goal'}"
        )
    lines.append(f"train img/s: images of the timed steps / their wall time, loader waits included; loader wait: the "
                 f"share of that time outside the steps; loader/train: goal >= {LOADER_GOAL:g}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.bench_cli import BenchError, run_names
    from datamodules.coco import DatasetError
    from datamodules.files import write_json_atomic

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", required=True, metavar="MODEL.yaml[,MORE.yaml]")
    parser.add_argument("--data-config", default=None, metavar="DATA.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Lightning CLI override for every config, e.g. data.num_workers=4")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32", help="Lightning's: 32 | 16-mixed | bf16-mixed")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (and untimed loader batches)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--loader-batches", type=int, default=20, help="timed batches of the loader-only run")
    parser.add_argument("--out", default=None, help="write the JSON here (atomically)")
    args = parser.parse_args(argv)

    names = run_names(args.config)
    records = []
    try:
        for config in args.config:
            records.append(measure_config(
                config, data_config=args.data_config, overrides=args.overrides, device=args.device,
                precision=args.precision, warmup=args.warmup, steps=args.steps, loader_batches=args.loader_batches,
            ))
            print(json.dumps({"name": names[len(records) - 1], **records[-1]}), flush=True)
    except (BenchError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(records, names))
    if args.out:
        write_json_atomic(Path(args.out), {"runs": [{"name": n, **r} for n, r in zip(names, records)]})
    return 0


if __name__ == "__main__":
    sys.exit(main())

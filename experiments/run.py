"""Train, evaluate and benchmark one configuration, and store its result record.

    maskbench run --config MODEL.yaml [--config MORE.yaml ...] [--seed N] [--results DIR] [--force]
                  [--wandb offline|online|off | --no-wandb] [--bench-iters 100 --bench-warmup 10 ...]
                  [Lightning overrides: --model.init_args.lr 0.01 --data.root DIR --trainer.devices 4 ...]

One run = `maskbench fit` of the configs (the same LightningCLI, so the overrides are its dotted options) -> COCO
evaluation of the trained weights on the val split -> the speed protocol (benchmarks.speed) on val images -> one
JSON record in RESULTS/records/<run_id>.json (experiments.results), written atomically. The detections of the final
validation are kept as a standard COCO results file, RESULTS/runs/<run_id>/results.json (`maskbench eval-json`
reads it back).

A run whose record exists with status "ok" is skipped (--force runs it again from scratch); a failed run is
recorded with its error and exit status 1; an interrupted run resumes, the next time it is started, from its
newest checkpoint (RESULTS/runs/<run_id>/checkpoints/last.ckpt, or the HPC checkpoint Lightning saves when SLURM
signals a job before its time limit). Under DDP (`--trainer.devices N --trainer.strategy ddp`, torchrun, srun)
every process trains and evaluates; global rank 0 benchmarks and writes the record.

wandb: a WandbLogger in offline mode by default (curves under RUNS/<run_id>/wandb; upload later with `wandb sync`),
plus the record's numbers as the wandb run's summary. `--no-wandb` or WANDB_MODE=disabled turns it off; a CSV
logger always writes the curves to RUNS/<run_id>/logs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from benchmarks.settings import BenchmarkSettings, add_benchmark_arguments, benchmark_settings
from experiments import results as store
from experiments.paths import REPO_ROOT
from experiments.record import RunRecord

WANDB_MODES = ("offline", "online", "off")
WANDB_PROJECT = "maskbench"
RESULTS_FILE = "results.json"  # the run's COCO results file (datamodules/results_writer.py), in its run folder


# ----------------------------------------------------------------------------------------------- the run


def run_experiment(
    config_files: Sequence[str | os.PathLike],
    overrides: Sequence[str] = (),
    *,
    results_dir: str | os.PathLike = "results",
    seed: int = 0,
    benchmark: BenchmarkSettings = BenchmarkSettings(),
    name: str | None = None,
    sweep: dict[str, Any] | None = None,
    force: bool = False,
    wandb: str = "offline",
) -> dict[str, Any]:
    """fit -> evaluate on val -> benchmark -> record; returns the record (the existing one if it was skipped).

    `overrides` are LightningCLI tokens (`--model.init_args.x 3`, `--trainer.max_steps=10`); `sweep` is the sweep
    context stored in the record ({name, point, baseline}); `wandb` one of WANDB_MODES. Exceptions of the run
    itself are recorded (status "failed") and not raised; KeyboardInterrupt / SystemExit are not caught.
    """
    if wandb not in WANDB_MODES:
        raise ValueError(f"wandb must be one of {WANDB_MODES}, got {wandb!r}")
    config_files = [str(path) for path in config_files]
    pairs = store.parse_overrides(list(overrides))
    # The id takes the benchmark settings as given ("auto", not the device it resolves to here), so a sweep planned
    # on a login node without a GPU finds the records its jobs wrote on GPU nodes.
    settings = store.identity(config_files, pairs, seed, asdict(benchmark))
    run_id, config_id = store.run_ids(settings)
    benchmark = benchmark.resolved()
    label = name or run_id

    existing = store.find_record(results_dir, run_id)
    if existing is not None and existing["status"] == "ok" and not force:
        print(f"[run {run_id}] {label}: finished earlier, skipped ({store.record_path(results_dir, run_id)})",
              flush=True)
        return existing
    directory = store.run_dir(results_dir, run_id)
    if force and _launched_as_rank_zero():
        # From scratch: no resuming from the previous attempt. Only the checkpoints go (logs get a new version
        # folder), and only rank 0 touches them: under srun / torchrun every rank runs this at the same moment.
        shutil.rmtree(directory / "checkpoints", ignore_errors=True)
        for hpc_checkpoint in directory.glob("hpc_ckpt_*.ckpt"):
            hpc_checkpoint.unlink()
    directory.mkdir(parents=True, exist_ok=True)

    identity = dict(run_id=run_id, config_id=config_id, name=label, sweep=sweep, seed=seed,
                    config_files=config_files, overrides=[list(pair) for pair in pairs])
    # What the run finds out as it goes; a failed run's record keeps what it got to.
    found: dict[str, Any] = {
        "git": store.git_revision(REPO_ROOT), "benchmark": asdict(benchmark), "started_at": _now(),
        "paths": {"run_dir": str(directory), "log_dir": None, "checkpoint": None},
    }
    error = None
    print(f"[run {run_id}] {label}: {' '.join(config_files)} {' '.join(overrides)} (seed {seed})", flush=True)
    start = time.perf_counter()
    wandb_run = None
    is_global_zero = True
    try:
        from datamodules.results_writer import CocoResultsWriter

        cli = _build(config_files, pairs, seed, directory, label, run_id, sweep, wandb)
        trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
        trainer.callbacks.append(CocoResultsWriter(directory / RESULTS_FILE))
        is_global_zero = trainer.is_global_zero
        wandb_run = _wandb_experiment(trainer)
        found.update(_describe(cli))
        training = _train(trainer, model, datamodule, directory)
        found["training"] = training
        metrics, metrics_step = _evaluate(trainer, model, datamodule, training["monitor"])
        del training["monitor"]
        found.update(metrics=metrics, metrics_step=metrics_step)
        found["paths"].update(log_dir=trainer.log_dir, checkpoint=_last_checkpoint(directory),
                              results_json=str(directory / RESULTS_FILE))
        if not is_global_zero:
            # This process's share (training, evaluation) is done; rank 0 writes the record.
            return RunRecord.ok(**identity, **found).to_dict()
        speed = _benchmark(model, datamodule, benchmark)
        found.update(
            speed=speed, params=speed.get("params"), gflops=speed.get("gflops"), environment=speed.get("environment"),
            input_size=speed.get("input_size") or found.get("input_size"),
        )
    except Exception as err:  # noqa: BLE001 — a failed run is a result: recorded, and the caller goes on
        error = _error_text(err)
        print(f"[run {run_id}] {label}: FAILED: {error.splitlines()[0]}", file=sys.stderr, flush=True)
    found.update(finished_at=_now(), duration_s=time.perf_counter() - start)
    outcome = RunRecord.failed(error, **identity, **found) if error else RunRecord.ok(**identity, **found)
    record = outcome.to_dict()
    if not is_global_zero:
        return record
    path = store.write_record(results_dir, record)
    if wandb_run is not None:
        _log_record_to_wandb(wandb_run, record, path)
    if record["status"] == "ok":
        print(f"[run {run_id}] {label}: {summary_line(record)} -> {path}", flush=True)
    return record


def summary_line(record: dict[str, Any]) -> str:
    segm, bbox = record["metrics"].get("segm", {}), record["metrics"].get("bbox", {})
    speed = record.get("speed") or {}
    parts = []
    if segm:
        parts.append(f"segm AP {100 * segm['AP']:.1f}")
    if bbox:
        parts.append(f"bbox AP {100 * bbox['AP']:.1f}")
    if speed:
        parts.append(f"{speed['fps']:.1f} FPS ({speed['environment']['device_name']})")
    if record.get("training"):
        parts.append(f"trained {record['training']['time_s']:.0f} s")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------- the four stages


def _build(config_files, pairs, seed, directory: Path, label: str, run_id: str, sweep, wandb: str):
    """LightningCLI of `maskbench fit` with the run's loggers and checkpointing, instantiated but not run."""
    from benchmarks.lightning_cli import run_lightning

    loggers = [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(directory), "name": "logs"}}]
    if wandb != "off" and os.environ.get("WANDB_MODE") != "disabled":
        tags = [sweep["name"]] if sweep else []
        loggers.append({"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {
            "project": WANDB_PROJECT, "name": label, "save_dir": str(directory), "offline": wandb == "offline",
            "group": sweep["name"] if sweep else None, "tags": tags, "config": {"run_id": run_id, "sweep": sweep},
        }})
    # A fixed checkpoint folder with last.ckpt: what ckpt_path="last" looks for when a killed run restarts.
    checkpoint = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(directory / "checkpoints"), "save_last": "link", "save_top_k": 1}}
    argv = ["fit"]
    for path in config_files:
        argv += ["--config", path]
    argv += store.override_tokens(pairs)
    argv += [
        f"--seed_everything={seed}",
        f"--trainer.default_root_dir={directory}",
        f"--trainer.logger={json.dumps(loggers)}",
        f"--trainer.callbacks+={json.dumps(checkpoint)}",
    ]
    # A configuration that cannot be built raises ConfigurationError (one line naming the option): recorded as is.
    return run_lightning(argv, run=False)


def _describe(cli) -> dict[str, Any]:
    """Model name, backbone, nominal input size, dataset and resolved config of the built run."""
    import yaml

    import models
    from models.common.backbone import loaded_pretrained_weights

    model, datamodule = cli.model, cli.datamodule
    name = next((key for key, cls in models.MODELS.items() if type(model) is cls), type(model).__name__)
    hparams = dict(model.hparams)
    input_size = hparams.get("input_size") or hparams.get("min_size")
    if isinstance(input_size, (list, tuple)):  # multi-scale training: the last size is the test size
        input_size = input_size[-1]
    val_images, val_ann = datamodule.split_paths("val")
    return {
        "model": name,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "backbone": hparams.get("backbone"),
        "pretrained_weights": loaded_pretrained_weights(model),  # [{name, tag, file, source}] per backbone
        "input_size": input_size,
        "dataset": {
            "name": Path(val_ann).parent.parent.name,
            "val_images": val_images,
            "val_ann": val_ann,
            "num_classes": datamodule.num_classes,
        },
        "config": yaml.safe_load(cli.parser.dump(cli.config, skip_none=False, skip_check=True)),
    }


def _train(trainer, model, datamodule, directory: Path) -> dict[str, Any]:
    """Fit, resuming from the run's last.ckpt when an earlier attempt left one; timing and throughput."""
    from experiments.monitor import RunMonitor

    monitor = RunMonitor()
    trainer.callbacks.append(monitor)
    resume = _resume_checkpoint(directory)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume)
    wall = time.perf_counter() - start
    if trainer.interrupted:
        raise RuntimeError("training was interrupted")
    train_seconds = monitor.train_seconds()
    # A run resumed at its final step trains no further: Lightning skips the whole training loop.
    start_step = monitor.start_step if monitor.trained else trainer.global_step
    return {
        "time_s": wall,
        "train_loop_s": train_seconds,
        "steps": trainer.global_step - start_step,
        "global_step": trainer.global_step,
        "images": monitor.images,
        "images_per_s": monitor.images / train_seconds if train_seconds > 0 else None,
        "resumed_from_step": start_step if resume else None,
        "devices": trainer.world_size,
        "accelerator": type(trainer.accelerator).__name__,
        "strategy": type(trainer.strategy).__name__,
        "precision": str(trainer.precision),
        "schedule": model.schedule,  # lr / steps as trained: linearly scaled to the real batch (models/base.py)
        "monitor": monitor,
    }


def _evaluate(trainer, model, datamodule, monitor) -> tuple[dict[str, dict[str, float]], int | None]:
    """COCO metrics of the final weights on val: those of the last validation if it ran at the final step,
    otherwise a validation run now. {} for a model built with evaluate=False."""
    from models.base import METRICS_FILE

    if not model.hparams.get("evaluate", True):
        return {}, None
    if monitor.last_validation_step != trainer.global_step:
        trainer.validate(model, datamodule=datamodule, verbose=False)
    flat = json.loads((Path(trainer.log_dir) / METRICS_FILE).read_text())
    metrics = {
        iou_type: {stat: flat[f"val/{iou_type}_{stat}"] for stat in store.COCO_STATS}
        for iou_type in store.IOU_TYPES
        if f"val/{iou_type}_AP" in flat
    }
    if not metrics:
        raise RuntimeError(f"validation wrote no COCO metrics to {Path(trainer.log_dir) / METRICS_FILE}")
    return metrics, flat.get("global_step")


def _benchmark(model, datamodule, settings: BenchmarkSettings) -> dict[str, Any]:
    from benchmarks.progress import call_progress, expected_calls
    from benchmarks.speed import benchmark, load_val_images

    images = load_val_images(datamodule, min(settings.iters * settings.batch_size, 200))
    total = expected_calls(1, warmup=settings.warmup, iters=settings.iters, flops_images=5,
                           breakdown=settings.breakdown)
    with call_progress([model], total, "benchmark (model calls)"):
        return benchmark(
            model, images, device=settings.device, precision=settings.precision, batch_size=settings.batch_size,
            warmup=settings.warmup, iters=settings.iters, channels_last=settings.channels_last,
            compile=settings.compile, breakdown=settings.breakdown,
        )


def _resume_checkpoint(directory: Path) -> str | None:
    """The newest loadable checkpoint an earlier attempt of this run left: checkpoints/last.ckpt (written at each
    validation) or hpc_ckpt_<n>.ckpt (written by Lightning's SLURM environment when SLURM signals the job before
    its time limit); None to start from scratch."""
    candidates = [directory / "checkpoints" / "last.ckpt", *directory.glob("hpc_ckpt_*.ckpt")]
    usable = [path for path in candidates if _usable_checkpoint(path)]
    return str(max(usable, key=lambda path: path.stat().st_mtime)) if usable else None


def _usable_checkpoint(path: Path) -> bool:
    """Whether `path` exists and loads. Lightning writes checkpoints in place, so a process killed while writing
    one leaves a truncated file: it is set aside (*.corrupt) and the run starts from scratch."""
    if not path.exists():
        return False
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return True
    except Exception as err:  # noqa: BLE001 — any failure to read means: do not resume from it
        if _launched_as_rank_zero():
            print(f"warning: {path} does not load ({type(err).__name__}: {err}); set aside as *.corrupt, training "
                  "from scratch", file=sys.stderr, flush=True)
            os.replace(path, path.with_name(path.name + ".corrupt"))
        return False


def _launched_as_rank_zero() -> bool:
    """Whether this process is the first of its launch, before any process group exists: torchrun sets RANK,
    srun SLURM_PROCID, Lightning's own DDP launcher LOCAL_RANK in the processes it starts."""
    return all(os.environ.get(name, "0") == "0" for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"))


def _last_checkpoint(directory: Path) -> str | None:
    path = directory / "checkpoints" / "last.ckpt"
    return str(path) if path.exists() else None


# ------------------------------------------------------------------------------------------------- wandb


def _wandb_experiment(trainer):
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            return logger.experiment
    return None


def flat_numbers(record: dict[str, Any]) -> dict[str, float]:
    """The record's headline numbers as flat keys (segm/AP, speed/fps, ...), for wandb summaries and tables."""
    out: dict[str, float] = {}
    for iou_type, stats in record["metrics"].items():
        out.update({f"{iou_type}/{stat}": value for stat, value in stats.items()})
    speed = record.get("speed") or {}
    for key in ("fps", "fps_model", "peak_memory_mb", "params", "gflops"):
        if speed.get(key) is not None:
            out[f"speed/{key}"] = speed[key]
    if speed.get("latency_ms"):
        out["speed/latency_p50_ms"] = speed["latency_ms"]["p50"]
    training = record.get("training") or {}
    for key in ("time_s", "images_per_s"):
        if training.get(key) is not None:
            out[f"training/{key}"] = training[key]
    return out


def _log_record_to_wandb(run, record: dict[str, Any], path: Path) -> None:
    run.summary.update({**flat_numbers(record), "run_id": record["run_id"], "status": record["status"]})
    run.config.update({"record_file": str(path)}, allow_val_change=True)
    run.save(str(path), base_path=str(path.parent), policy="now")
    run.finish()


# ------------------------------------------------------------------------------------------------ helpers


def _error_text(err: BaseException, tail_lines: int = 12) -> str:
    """A one-line summary (what tables show), then the message and the traceback's tail."""
    message = str(err)
    summary = (message.splitlines() or [""])[0]  # a ConfigurationError's one line names the option already
    trace = "".join(traceback.format_exception(type(err), err, err.__traceback__)).strip().splitlines()
    return f"{type(err).__name__}: {summary}\n{message}\n" + "\n".join(trace[-tail_lines:])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------------- CLI


def add_output_arguments(parser: argparse.ArgumentParser, results_default: str) -> None:
    """Options shared by `run`, `sweep` and `quickstart`: where results go, re-running, wandb."""
    parser.add_argument("--results", default=results_default,
                        help="results folder: records/, runs/, leaderboard/")
    parser.add_argument("--force", action="store_true", help="run again even where a record exists")
    parser.add_argument("--wandb", choices=WANDB_MODES, default="offline",
                        help="wandb logging: offline (`wandb sync` later), online, or off")
    parser.add_argument("--no-wandb", dest="wandb", action="store_const", const="off", help="same as --wandb off")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", required=True,
                        help="LightningCLI config file (repeatable, applied in order)")
    parser.add_argument("--seed", type=int, default=0, help="seed_everything value")
    parser.add_argument("--name", default=None, help="a label for tables (default: the run id)")
    # Set by `maskbench sweep` for the runs it launches: {name, point, baseline} as JSON.
    parser.add_argument("--sweep-context", default=None, help=argparse.SUPPRESS)
    add_output_arguments(parser, "results")
    add_benchmark_arguments(parser)
    parser.epilog = ("Any other --key value is a LightningCLI override, as for `maskbench fit` "
                     "(e.g. --model.init_args.lr 0.01 --trainer.max_steps 1000 --data.root /data/coco).")
    # `maskbench` hands the options this parser does not know to `overrides` (experiments/cli.py).
    parser.set_defaults(handler=_run_command, overrides=[], passes_overrides=True)


def _run_command(args: argparse.Namespace) -> int:
    record = run_experiment(
        args.config, args.overrides, results_dir=args.results, seed=args.seed, benchmark=benchmark_settings(args),
        name=args.name, sweep=json.loads(args.sweep_context) if args.sweep_context else None, force=args.force,
        wandb=args.wandb,
    )
    return 0 if record["status"] == "ok" else 1

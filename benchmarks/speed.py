"""The speed protocol every architecture is measured by: FPS, latency, per-stage breakdown, peak memory, FLOPs.

    record = benchmark(model, load_val_images(datamodule, 100), device="cuda", precision="16", iters=100)
    result = compare([("mask_rcnn", model_a, images_a), ("yolact", model_b, images_b)], device="cuda")

Protocol (the field's practice, /work/shared/reference/benchmarking.md):
  * inputs are real val images, decoded once and moved to the device BEFORE any timing; batch `batch_size`
    (1 by default), the images cycled in a fixed order so every model sees the same ones;
  * the model in eval mode under torch.inference_mode, with the optional speed-ups as flags: AMP autocast
    (`precision` "16-mixed" / "bf16-mixed", Lightning's names), weights cast to that half type once
    (`half_weights`: no per-call weight casts), channels_last weights, torch.compile (with its `mode`, e.g.
    "reduce-overhead" = CUDA graphs), cudnn.benchmark, TF32 on or off (`tf32`; None leaves torch's setting);
  * `warmup` untimed calls, then more untimed calls until every distinct batch of input sizes has run once (a
    shape first met inside a timed call would time cuDNN's plan choice, its autotuning with cudnn.benchmark, or a
    torch.compile re-trace); then `iters` timed calls; the device is synchronised right before and right after
    each timed call (benchmarks.timing's `synchronize`) and nowhere else inside it;
  * end to end = raw uint8 images -> the model's own resize/normalise -> network -> post-processing -> boxes and
    masks pasted at each image's full resolution (left on the device: no host copy);
  * model only = the same call stopped right after the network's last raw head output (the model class's
    SPEED_SPLIT, models.common.speed_split), timed in calls of its own: its stop hook is attached for those calls
    only, never during an end-to-end call;
  * per-stage breakdown from calls of its own too (forward hooks timing the stage submodules, attached for those
    calls only; CUDA events on a GPU); post-processing = the call minus its stages;
  * the three kinds of call are interleaved round by round (end to end i, model only i, breakdown i), so a change
    in machine load hits them alike;
  * FPS = batch_size / mean latency, the statistic of the official YOLACT, detectron2 and mmdetection figures
    (per-image detection counts make the latencies skewed, so mean and median differ), with its 95 % interval
    from the spread between rounds (batch means, benchmarks.stats); `fps_median` = batch_size / median latency
    resists the load spikes of a shared machine (order-statistic interval); peak device memory from a last,
    untimed pass (CUDA only; null elsewhere: CPU allocations go through malloc, which torch does not account for);
  * params and FLOPs from `benchmarks.complexity` on the unmodified fp32 model, before any flag is applied.

Comparison mode (`compare`): the models take turns call by call, A B A B ..., in one process, so drift in machine
load hits all of them alike; ratios are given relative to the first model.
"""
from __future__ import annotations

import contextlib
import os
import statistics
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks.complexity import complexity
from benchmarks.environment import environment
from benchmarks.speed_run import SpeedRun
from benchmarks.stats import fps_intervals, paired_ratio
from benchmarks.timing import round_robin

# Untimed calls that open the model-only and breakdown passes (their hooks may make torch.compile re-trace).
PASS_WARMUP = 1
# Untimed end-to-end calls of the peak-memory pass (CUDA only).
MEMORY_ITERS = 10


def load_val_images(datamodule, count: int) -> list[Tensor]:
    """The first `count` val images of `datamodule` (fewer if the split is smaller), uint8 [3,H,W] as its loader sends,
    decoded once through the datamodule's own eval pipeline, on the CPU. The benchmark cycles through them."""
    if count < 1:
        raise ValueError(f"load_val_images: count must be >= 1, got {count}")
    if getattr(datamodule, "val_dataset", None) is None:
        datamodule.setup("validate")
    dataset = datamodule.val_dataset
    if len(dataset) == 0:
        raise ValueError(f"load_val_images: the val split of {type(datamodule).__name__} has no images")
    return [dataset[index][0] for index in range(min(count, len(dataset)))]


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """mean / p50 / p90 / min / max / std of per-call latencies, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {
        "mean": float(ms.mean()),
        "p50": float(np.percentile(ms, 50)),
        "p90": float(np.percentile(ms, 90)),
        "min": float(ms.min()),
        "max": float(ms.max()),
        "std": float(ms.std()),
    }


# ------------------------------------------------------------------------------------------------ the protocol


def _median_stages(calls: list[dict[str, float]]) -> dict[str, float]:
    return {stage: statistics.median(call[stage] for call in calls) * 1e3 for stage in calls[0]}


def measure(
    runs: list[SpeedRun], *, warmup: int, iters: int, breakdown: bool, breakdown_iters: int | None = None
) -> list[dict[str, Any]]:
    """Time prepared runs; returns per run its raw measurements (seconds per call).

    Warm-up: `warmup` untimed end-to-end calls per run, then one more per batch of input sizes those calls did not
    meet (network input size and detections counted meanwhile; alternating too), then PASS_WARMUP untimed calls
    with each pass's hooks. Timed: `iters` rounds; round i runs, model after model (A B A B ...), the end-to-end
    call i, then the model-only call i (stop hook attached for that call only), then,
    in the first `breakdown_iters` rounds (at most `iters`), the breakdown call i (stage hooks attached for that
    call only). So drift in machine load hits every model and every pass alike, and no hook is attached during an
    end-to-end call. Peak memory (CUDA) last, each run alone. Everything under torch.inference_mode.
    """
    if warmup < 0 or iters < 1:
        raise ValueError(f"need warmup >= 0 and iters >= 1, got warmup={warmup}, iters={iters}")
    breakdown_iters = min(iters, iters if breakdown_iters is None else breakdown_iters) if breakdown else 0
    split_runs = [run for run in runs if run.split is not None]
    out: list[dict[str, Any]] = [{"end_to_end": []} for _ in runs]
    for run in split_runs:
        out[runs.index(run)]["model"] = []
        if breakdown_iters:
            out[runs.index(run)]["stages"] = []

    def model_only(run: SpeedRun, index: int, timed: bool) -> float | None:
        with run.stop_at_raw_outputs():
            return run.timed_model_call(index) if timed else run.model_call(index)

    def stages(run: SpeedRun, index: int, timed: bool) -> dict[str, float] | None:
        with run.stage_timer() as timer:
            if timed:
                return run.breakdown_call(index, timer)
            run.call(index)
            return None

    with torch.inference_mode():
        with contextlib.ExitStack() as probes:
            for run in runs:
                probes.enter_context(run.network_input_probe())
            round_robin(runs, warmup, lambda run, i: run.warmup_call(i))
            unseen = [run.unseen_size_batches(warmup) for run in runs]
            for position in range(max(len(indices) for indices in unseen)):
                for run, indices in zip(runs, unseen):
                    if position < len(indices):
                        run.warmup_call(indices[position])
        for index in range(PASS_WARMUP):
            for run in split_runs:
                model_only(run, index, timed=False)
            for run in split_runs if breakdown_iters else []:
                stages(run, index, timed=False)

        for index in range(iters):
            for run, record in zip(runs, out):
                record["end_to_end"].append(run.timed_call(index))
            for run in split_runs:
                out[runs.index(run)]["model"].append(model_only(run, index, timed=True))
            for run in split_runs if index < breakdown_iters else []:
                out[runs.index(run)]["stages"].append(stages(run, index, timed=True))

        for position, run in enumerate(runs):
            out[position]["peak_memory_mb"] = run.peak_memory_mb(MEMORY_ITERS)
    return out


def build_record(
    run: SpeedRun, measured: dict[str, Any], complexity_record: dict[str, Any], *, warmup: int, iters: int
) -> dict[str, Any]:
    """The JSON-serialisable speed record of one run (the record the runner stores and the leaderboard reads)."""
    latency = latency_summary(measured["end_to_end"])
    model_latency = latency_summary(measured["model"]) if "model" in measured else None
    stage_calls = measured.get("stages")
    stages_ms = _median_stages(stage_calls) if stage_calls else None
    breakdown_total_ms = stages_ms.pop("total") if stages_ms else None
    network_size = run.network_input_sizes.most_common(1)
    intervals = fps_intervals(measured["end_to_end"], run.batch_size)
    return {
        "name": run.name,
        "model": run.model_class,
        "fps": run.batch_size * 1e3 / latency["mean"],
        "fps_ci95": intervals["fps_mean_ci95"],
        "fps_median": run.batch_size * 1e3 / latency["p50"],
        "fps_median_ci95": intervals["fps_median_ci95"],
        "fps_model": run.batch_size * 1e3 / model_latency["mean"] if model_latency else None,
        "fps_model_median": run.batch_size * 1e3 / model_latency["p50"] if model_latency else None,
        "latency_ms": latency,
        "latency_model_ms": model_latency,
        "stages_ms": stages_ms,
        "breakdown_total_ms": breakdown_total_ms,
        "peak_memory_mb": measured["peak_memory_mb"],
        **complexity_record,
        "input_size": list(network_size[0][0]) if network_size else run.image_size,
        "input_size_from": "network input" if network_size else "images",
        "image_size": run.image_size,
        "detections_per_image": statistics.fmean(run.detections) if run.detections else None,
        "num_images": run.num_images,
        "batch_size": run.batch_size,
        "precision": run.precision,
        "device": str(run.device),
        "flags": {
            "channels_last": run.channels_last,
            "compile": run.compile,
            "compile_mode": run.compile_mode,
            "half_weights": run.half_weights,
            "cudnn_benchmark": run.cudnn_benchmark,
            "warmup": warmup,
            "warmup_calls": run.warmup_calls,
            "iters": iters,
            "breakdown_iters": len(stage_calls or []),
        },
        "model_only_stop_missed": run.model_stop_missed if "model" in measured else None,
        "timed_calls": {
            "end_to_end": len(measured["end_to_end"]),
            "model": len(measured.get("model", [])),
            "breakdown": len(stage_calls or []),
        },
    }


RATIO_KEYS = ("fps", "fps_model", "params", "gflops")


def ratios_to_first(records: list[dict[str, Any]]) -> list[dict[str, float | None]]:
    """Each record's fps, fps_model, latency p50, params and GFLOPs divided by the first record's."""
    first = records[0]

    def ratio(a, b):
        return None if a is None or b in (None, 0) else a / b

    return [
        {
            "name": record["name"],
            **{key: ratio(record.get(key), first.get(key)) for key in RATIO_KEYS},
            "latency_p50": ratio(record["latency_ms"]["p50"], first["latency_ms"]["p50"]),
        }
        for record in records
    ]


PER_ENTRY_SETTINGS = ("precision", "channels_last", "compile", "compile_mode", "half_weights")
# What each record's environment adds to the shared one: the settings of that run that change its numerics.
RUN_SETTINGS = ("precision", "half_weights", "channels_last", "compile_mode")


def compare(
    entries: Sequence[tuple],
    *,
    device: str | torch.device = "cpu",
    precision: str = "32",
    batch_size: int = 1,
    warmup: int = 10,
    iters: int = 100,
    channels_last: bool = False,
    compile: bool = False,
    breakdown: bool = True,
    cudnn_benchmark: bool = False,
    breakdown_iters: int | None = None,
    flops_images: int = 5,
    compile_mode: str | None = None,
    half_weights: bool = False,
    tf32: bool | None = None,
) -> dict[str, Any]:
    """Benchmark several (name, model, images) alternately in this process: {"runs": [record...], "ratios": [...],
    "environment": {...}}; ratios are to the first entry. Settings as in `benchmark`.

    An entry may carry a 4th element, a dict overriding `precision`, `channels_last`, `compile`, `compile_mode` or
    `half_weights` for that model alone, e.g. ours in fp16 + channels_last against a reference in fp32 in one
    alternating run.
    """
    if not entries:
        raise ValueError("compare needs at least one (name, model, images) entry")
    common = {"precision": precision, "channels_last": channels_last, "compile": compile,
              "compile_mode": compile_mode, "half_weights": half_weights}
    settings = []
    for entry in entries:
        overrides = dict(entry[3]) if len(entry) > 3 else {}
        unknown = set(overrides) - set(PER_ENTRY_SETTINGS)
        if unknown:
            raise ValueError(f"entry {entry[0]!r}: per-model settings are {PER_ENTRY_SETTINGS}, got {sorted(unknown)}")
        settings.append({**common, **overrides})
    load_start = _load_average()
    # FLOPs and params of each model on the device in fp32 with no flag applied yet, before anything is timed.
    complexities = [
        complexity(entry[1].eval().to(device), list(entry[2])[:flops_images]) for entry in entries
    ]
    runs: list[SpeedRun] = []
    try:
        for entry, setting in zip(entries, settings):
            runs.append(SpeedRun(entry[1], entry[2], name=entry[0], device=device, batch_size=batch_size,
                                 cudnn_benchmark=cudnn_benchmark, tf32=tf32, **setting))
        measured = measure(runs, warmup=warmup, iters=iters, breakdown=breakdown, breakdown_iters=breakdown_iters)
        env = environment(device)  # while the runs' settings (cudnn.benchmark, TF32) are in force
    finally:
        for run in reversed(runs):  # each restores what it found, so the first restores the original state
            run.close()
    env["load_average"] = {"start": load_start, "end": _load_average()}
    records = []
    for run, measurement, complexity_record in zip(runs, measured, complexities):
        record = build_record(run, measurement, complexity_record, warmup=warmup, iters=iters)
        record["environment"] = {**env, **{key: record["flags"].get(key, record.get(key)) for key in RUN_SETTINGS}}
        records.append(record)
    ratios = ratios_to_first(records)
    for ratio, measurement in zip(ratios, measured):  # round i timed every model back to back: paired ratios
        paired = paired_ratio(measured[0]["end_to_end"], measurement["end_to_end"])
        ratio["fps_paired"], ratio["fps_ci95"] = paired["ratio"], paired["ci95"]
    return {"runs": records, "ratios": ratios, "environment": env}


def benchmark(model: nn.Module, images: Sequence[Tensor], **settings: Any) -> dict[str, Any]:
    """The speed record of one model on `images` (list of uint8 [3,H,W] 0..255 or float 0..1, e.g. `load_val_images`).

    `settings` are `compare`'s keyword arguments (its signature holds the defaults): device "cpu" | "cuda" |
    "cuda:N"; precision "32" | "16-mixed" | "bf16-mixed" (AMP autocast; "16" / "bf16" accepted); `batch_size`
    images per call; `warmup` untimed calls (then one per batch of input sizes not met yet) and `iters` timed calls
    per pass; `channels_last`, `compile` (`compile_mode`: torch.compile's mode, implies compile),
    `cudnn_benchmark`, `half_weights` (weights cast to the half type once), `tf32` (True / False: set cuDNN's and
    the matmuls' TF32 for the run; None: leave torch's setting): the speed-up flags; `breakdown`: also time the
    stages (`breakdown_iters` calls, default `iters`); `flops_images`: images the FLOPs are averaged over (0:
    params only).

    The record: fps, fps_model (batch / mean latency), fps_median, fps_model_median, latency_ms {mean, p50, p90,
    min, max, std}, latency_model_ms, stages_ms (ms per stage, medians; null for a model without a SPEED_SPLIT or
    with breakdown=False), breakdown_total_ms, peak_memory_mb (CUDA; null elsewhere), params, gflops, gflops_std,
    gmacs, input_size (the network input [H, W]), image_size, batch_size, precision, flags {channels_last, compile,
    compile_mode, half_weights, cudnn_benchmark, warmup, warmup_calls, iters, breakdown_iters}, timed_calls,
    environment (with the load average at start and end, the math settings in force: TF32, float32 matmul
    precision, cudnn.benchmark, and this run's precision, half_weights, channels_last, compile_mode). The model is
    left in eval mode on `device` (in channels_last memory format, and with half weights, if asked).
    """
    result = compare([(type(model).__name__, model, images)], **settings)
    return result["runs"][0]


def _load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (None where the OS has none): the context of every CPU figure."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None

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
  * model only = the same call stopped right after the network's last raw head output (see `ModelSplit`), timed
    in calls of its own: its stop hook is attached for those calls only, never during an end-to-end call;
  * per-stage breakdown from calls of its own too (forward hooks timing the stage submodules, attached for those
    calls only; CUDA events on a GPU); post-processing = the call minus its stages;
  * the three kinds of call are interleaved round by round (end to end i, model only i, breakdown i), so a change
    in machine load hits them alike;
  * FPS = batch_size / mean latency, the statistic of the official YOLACT, detectron2 and mmdetection figures
    (per-image detection counts make the latencies skewed, so mean and median differ), with its 95 % interval
    from the spread between rounds (batch means, benchmarks.stats); `fps_median` = batch_size / median latency
    resists the load spikes of a shared machine (order-statistic interval); peak device memory from a last, untimed pass (CUDA only; null elsewhere: CPU allocations
    go through malloc, which torch does not account for);
  * params and FLOPs from `benchmarks.complexity` on the unmodified fp32 model, before any flag is applied.

Comparison mode (`compare`): the models take turns call by call, A B A B ..., in one process, so drift in machine
load hits all of them alike; ratios are given relative to the first model.
"""
from __future__ import annotations

import contextlib
import os
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks.complexity import complexity
from benchmarks.environment import environment, math_settings, restore_math_settings
from benchmarks.stats import fps_intervals, paired_ratio
from benchmarks.timing import StageTimer, Stopwatch, round_robin, synchronize  # synchronize: the protocol's syncs

# Lightning's precision names -> the autocast dtype (None: fp32, no autocast).
PRECISIONS = {"32": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
# Other accepted spellings (the runner and older records say "16" / "bf16").
PRECISION_ALIASES = {"32-true": "32", "fp32": "32", "16": "16-mixed", "fp16": "16-mixed", "bf16": "bf16-mixed"}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# The remainder of a breakdown call: everything outside the listed stage submodules.
REMAINDER_STAGE = "postprocess"
# Untimed calls that open the model-only and breakdown passes (their hooks may make torch.compile re-trace).
PASS_WARMUP = 1
# Untimed end-to-end calls of the peak-memory pass (CUDA only).
MEMORY_ITERS = 10


@dataclass(frozen=True)
class ModelSplit:
    """How one architecture's forward divides, for the model-only timing and the per-stage breakdown.

    stages: stage name -> dotted names of the submodules whose forward calls make up that stage (all calls during
        one forward are summed). The names of all stages are disjoint and none lies inside another, so no time is
        counted twice. Whatever runs outside them (anchors, box decoding, NMS, mask assembly and pasting, and any
        input transform that is not a module) is the remainder, reported as "postprocess". A name whose attribute
        is None on a model instance (an optional part switched off, e.g. CenterMask's MaskIoU head) is skipped.
    raw_outputs: candidates, in order, for the submodule whose forward produces the network's last raw head
        output (the first present on the instance is used); the model-only timing stops right after it returns
        (a hook raises `_RawOutputsReady`). A call in which it never runs (e.g. a mask head that only runs on
        detections, and there were none) is timed whole and counted in the record's `model_only_stop_missed`.
    """

    stages: dict[str, tuple[str, ...]]
    raw_outputs: tuple[str, ...]

    @property
    def stage_modules(self) -> list[str]:
        return [name for names in self.stages.values() for name in names]

    @property
    def network_modules(self) -> list[str]:
        """The dense network (what `compile=True` compiles): every stage but the input transform."""
        return [name for stage, names in self.stages.items() if stage != "preprocess" for name in names]


# Model class name -> its split. Explicit on purpose: a model not listed gets no model-only FPS and no breakdown
# (null in the record), never an error. Architectures are read here, never changed for the benchmark.
# "Model only" ends where the last network module has run; for a model whose mask head runs on its detections
# (Mask R-CNN, CenterMask) that is after the detection NMS, for the dense ones (YOLACT, ISTR) before any NMS.
SPLITS: dict[str, ModelSplit] = {
    # transform (resize, normalise, pad) -> backbone -> FPN -> RPN head -> [anchors, proposal decoding + NMS] ->
    # box RoI pool/head/predictor -> [box decoding + per-class NMS] -> mask RoI pool/head/predictor ->
    # [mask probabilities of the predicted class, boxes rescaled, masks pasted at full resolution].
    "MaskRCNN": ModelSplit(
        stages={
            "preprocess": ("transform",),
            "backbone_neck": ("backbone", "neck"),
            "heads": (
                "rpn.head",
                "roi_heads.box_roi_pool", "roi_heads.box_head", "roi_heads.box_predictor",
                "roi_heads.mask_roi_pool", "roi_heads.mask_head", "roi_heads.mask_predictor",
            ),
        },
        raw_outputs=("roi_heads.mask_predictor",),
    ),
    # resize + normalise (a method, so in the remainder) -> backbone -> FPN -> Protonet -> shared prediction head
    # -> [anchors, box decoding, Fast NMS, prototypes x coefficients, crop, up-sampling to full resolution].
    "YOLACT": ModelSplit(
        stages={"backbone_neck": ("backbone", "neck"), "heads": ("protonet", "head")},
        raw_outputs=("head",),
    ),
    # transform -> backbone -> FPN -> FCOS head -> [locations, box decoding, class-wise NMS, top n] ->
    # RoIAlign -> SAG-Mask head -> MaskIoU head (optional) -> [mask scores, masks pasted at full resolution].
    "CenterMask": ModelSplit(
        stages={
            "preprocess": ("transform",),
            "backbone_neck": ("backbone", "neck"),
            "heads": ("fcos_head", "roi_pool", "mask_head", "maskiou_head"),
        },
        raw_outputs=("maskiou_head", "mask_head"),
    ),
    # transform -> backbone -> FPN -> [query boxes and features] -> dynamic head (every stage: RoIAlign,
    # attention, dynamic interaction, class / box / mask-embedding outputs) -> [top-k, codec decoding, pasting].
    "ISTR": ModelSplit(
        stages={"preprocess": ("transform",), "backbone_neck": ("backbone", "neck"), "heads": ("head",)},
        raw_outputs=("head",),
    ),
}


class _RawOutputsReady(Exception):
    """Raised by the model-only stop hook: the network's raw outputs exist, post-processing is skipped."""


def canonical_precision(precision: str) -> str:
    """"32", "16-mixed" or "bf16-mixed" for any accepted spelling; ValueError naming the choices otherwise."""
    name = PRECISION_ALIASES.get(str(precision), str(precision))
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {(*PRECISIONS, *PRECISION_ALIASES)}, got {precision!r}")
    return name


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


class SpeedRun:
    """One model prepared for timing on one device: images batched on the device, flags applied.

    Each `*_call(index)` runs batch `index` (cycling through the images) once. `close()` undoes what the flags
    changed in the model (compiled submodules) and in torch (cudnn.benchmark); the model stays in eval mode on
    the device.
    """

    def __init__(
        self,
        model: nn.Module,
        images: Sequence[Tensor],
        *,
        name: str | None = None,
        device: str | torch.device = "cpu",
        precision: str = "32",
        batch_size: int = 1,
        channels_last: bool = False,
        compile: bool = False,
        cudnn_benchmark: bool = False,
        compile_mode: str | None = None,
        half_weights: bool = False,
        tf32: bool | None = None,
    ):
        precision = canonical_precision(precision)
        if half_weights and PRECISIONS[precision] is None:
            raise ValueError("half_weights needs a half precision: precision '16-mixed' or 'bf16-mixed', got '32'")
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not images:
            raise ValueError("benchmark needs at least one image")
        for index, image in enumerate(images):
            valid = isinstance(image, Tensor) and image.dim() == 3 and image.shape[0] == 3 and (
                image.is_floating_point() or image.dtype == torch.uint8)
            if not valid:
                raise ValueError(
                    f"image {index}: expected a uint8 (0..255) or float (0..1) tensor [3,H,W], got "
                    f"{type(image).__name__} {tuple(getattr(image, 'shape', ()))} {getattr(image, 'dtype', '')}"
                )
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
        self.name = name or type(model).__name__
        self.model_class = type(model).__name__
        self.precision = precision
        self.batch_size = batch_size
        self.channels_last = channels_last
        self.compile = compile or compile_mode is not None
        self.compile_mode = (compile_mode or "default") if self.compile else None
        self.cudnn_benchmark = cudnn_benchmark
        self.half_weights = half_weights
        self.split = SPLITS.get(self.model_class)

        self.model = model.eval().to(self.device)
        self.stage_modules: list[str] = []
        self.raw_outputs: str | None = None
        if self.split is not None:
            self.stage_modules, self.raw_outputs = _check_split(self.model, self.split, self.model_class)
        self.model_stop_missed = 0
        if half_weights:
            # Cast once; autocast stays on, so the ops it keeps in fp32 (norms, softmax) and the models' fp32 box
            # paths run as in the mixed mode, while its per-call weight casts become no-ops.
            self.model.to(PRECISIONS[precision])
        self.weights_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        # Images go to the device once, here, never inside a timed call. uint8 stays uint8, as the loader sends it
        # and the model normalises it (a float cast alone would hand the model 0..255 values on its 0..1 scale:
        # inputs 255x too bright, fp16 activations that overflow, and detection counts unlike real inference).
        on_device = [image.to(self.device) if image.dtype == torch.uint8 else image.to(self.device, torch.float32)
                     for image in images]
        num_batches = -(-len(on_device) // batch_size)  # ceil: every image in some batch, the last one wrapping
        self.batches = [
            [on_device[(b * batch_size + j) % len(on_device)] for j in range(batch_size)] for b in range(num_batches)
        ]
        self.num_images = len(on_device)
        self.image_size = list(Counter(tuple(image.shape[-2:]) for image in on_device).most_common(1)[0][0])
        self.network_input_sizes: Counter = Counter()
        self.detections: list[int] = []  # per image, counted in the warm-up calls
        self.warmup_calls = 0

        self._previous_math = math_settings()
        torch.backends.cudnn.benchmark = cudnn_benchmark
        if tf32 is not None:
            torch.backends.cudnn.allow_tf32 = tf32
            torch.set_float32_matmul_precision("high" if tf32 else "highest")
        self._swapped: list[tuple[nn.Module, str, nn.Module]] = []
        self._callable: Callable[[list[Tensor]], Any] = self.model
        if self.compile:
            self._compile()

    # ------------------------------------------------------------------------------------------------ flags

    def _compile(self) -> None:
        """torch.compile the dense network submodules of the split (post-processing stays eager: its shapes are
        data-dependent); a model without a split is compiled whole. The compiled wrappers replace the submodules
        until `close()`, and hooks go on the wrappers, i.e. outside the compiled graphs."""
        options = {} if self.compile_mode == "default" else {"mode": self.compile_mode}
        if self.split is None:
            self._callable = torch.compile(self.model, **options)
            return
        for dotted in self.split.network_modules:
            if dotted not in self.stage_modules:
                continue
            parent_name, _, attribute = dotted.rpartition(".")
            parent = self.model.get_submodule(parent_name)
            original = getattr(parent, attribute)
            setattr(parent, attribute, torch.compile(original, **options))
            self._swapped.append((parent, attribute, original))

    def close(self) -> None:
        for parent, attribute, original in reversed(self._swapped):
            setattr(parent, attribute, original)
        self._swapped.clear()
        self._callable = self.model
        restore_math_settings(self._previous_math)

    def _autocast(self):
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    # ------------------------------------------------------------------------------------------------ calls

    def batch(self, index: int) -> list[Tensor]:
        return self.batches[index % len(self.batches)]

    def unseen_size_batches(self, calls: int) -> list[int]:
        """The batch indices, in order, whose input sizes the first `calls` calls (batches 0, 1, ... cycling) did
        not meet: one batch per distinct tuple of image sizes still unseen."""
        def sizes(index: int) -> tuple:
            return tuple(tuple(image.shape) for image in self.batches[index])

        seen = {sizes(index) for index in range(min(calls, len(self.batches)))}
        unseen = []
        for index in range(len(self.batches)):
            if sizes(index) not in seen:
                seen.add(sizes(index))
                unseen.append(index)
        return unseen

    def call(self, index: int) -> Any:
        """One untimed end-to-end call on batch `index`."""
        with self._autocast():
            return self._callable(self.batch(index))

    def warmup_call(self, index: int) -> None:
        """An untimed call that also counts the detections per image (post-processing and pasting scale with
        them, so they belong next to every speed figure)."""
        self.warmup_calls += 1
        for prediction in self.call(index):
            if isinstance(prediction, dict) and isinstance(prediction.get("scores"), Tensor):
                self.detections.append(int(prediction["scores"].numel()))

    def timed_call(self, index: int) -> float:
        """Seconds of one end-to-end call, synchronised before and after."""
        batch = self.batch(index)
        with self._autocast(), Stopwatch(self.device) as watch:
            outputs = self._callable(batch)
        del outputs  # freed outside the timed region
        return watch.seconds

    def timed_model_call(self, index: int) -> float:
        """Seconds of one call stopped at the raw head outputs; needs `stop_at_raw_outputs()` to be active."""
        batch = self.batch(index)
        with self._autocast(), Stopwatch(self.device) as watch:
            try:
                self._callable(batch)
            except _RawOutputsReady:
                pass
            else:  # the last head never ran (nothing detected): the whole forward was the network's work
                self.model_stop_missed += 1
        return watch.seconds

    def breakdown_call(self, index: int, timer: StageTimer) -> dict[str, float]:
        """Seconds per stage of one call (and the remainder, and the call's total); needs `timer` hooked in."""
        batch = self.batch(index)
        timer.reset()
        with self._autocast(), Stopwatch(self.device) as watch:
            outputs = self._callable(batch)
        del outputs
        total = watch.seconds
        stages = timer.stage_seconds()
        stages[REMAINDER_STAGE] = total - sum(stages.values())
        stages["total"] = total
        return stages

    # ------------------------------------------------------------------------------------------------ hooks

    @contextlib.contextmanager
    def stop_at_raw_outputs(self) -> Iterator[None]:
        def stop(module, args, output):
            raise _RawOutputsReady

        handle = self.model.get_submodule(self.raw_outputs).register_forward_hook(stop)
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def stage_timer(self) -> Iterator[StageTimer]:
        timer = StageTimer(self.device)
        handles = []
        for stage, names in self.split.stages.items():
            for dotted in names:
                if dotted not in self.stage_modules:
                    continue
                module = self.model.get_submodule(dotted)
                handles.append(module.register_forward_pre_hook(timer.pre_hook(stage, dotted)))
                handles.append(module.register_forward_hook(timer.post_hook(dotted)))
        try:
            yield timer
        finally:
            for handle in handles:
                handle.remove()

    @contextlib.contextmanager
    def network_input_probe(self) -> Iterator[None]:
        """Record the [H, W] of the 4-D tensor entering the first stage module (the network's input size)."""
        if self.split is None:
            yield
            return
        first = next(name for name in self.split.network_modules if name in self.stage_modules)

        def probe(module, args):
            tensors = [a for a in args if isinstance(a, Tensor) and a.dim() == 4]
            if tensors:
                self.network_input_sizes[tuple(int(s) for s in tensors[0].shape[-2:])] += 1

        handle = self.model.get_submodule(first).register_forward_pre_hook(probe)
        try:
            yield
        finally:
            handle.remove()

    def peak_memory_mb(self, calls: int) -> float | None:
        """Weights + the largest transient allocation over `calls` end-to-end calls run alone (CUDA only)."""
        if self.device.type != "cuda":
            return None
        synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        resident = torch.cuda.memory_allocated(self.device)
        for index in range(calls):
            self.call(index)
        synchronize(self.device)
        transient = torch.cuda.max_memory_allocated(self.device) - resident
        return (self.weights_bytes + transient) / 2**20


def _find(model: nn.Module, dotted: str, model_class: str) -> nn.Module | None:
    """The submodule `dotted`, None if that attribute is None (an optional part switched off); a name the model
    lacks altogether is an error in SPLITS."""
    parent_name, _, attribute = dotted.rpartition(".")
    try:
        parent = model.get_submodule(parent_name)
    except AttributeError:
        parent = None
    value = getattr(parent, attribute, _MISSING) if parent is not None else _MISSING
    if value is None:
        return None
    if not isinstance(value, nn.Module):
        raise ValueError(f"SPLITS[{model_class!r}] names submodule {dotted!r}, which the model lacks")
    return value


_MISSING = object()


def _check_split(model: nn.Module, split: ModelSplit, model_class: str) -> tuple[list[str], str]:
    """(the stage modules present on this instance, the raw-outputs module used). Every name must exist (None
    allowed), at least one raw-outputs candidate must be present, and no stage module may lie inside another
    (its time would count twice)."""
    stage_modules = split.stage_modules
    if len(set(stage_modules)) != len(stage_modules):
        raise ValueError(f"SPLITS[{model_class!r}]: a submodule is listed twice: {stage_modules}")
    for outer in stage_modules:
        for inner in stage_modules:
            if inner != outer and inner.startswith(outer + "."):
                raise ValueError(f"SPLITS[{model_class!r}]: {inner!r} lies inside {outer!r}")
    present = [name for name in stage_modules if _find(model, name, model_class) is not None]
    raw = [name for name in split.raw_outputs if _find(model, name, model_class) is not None]
    if not raw:
        raise ValueError(f"SPLITS[{model_class!r}]: none of the raw-output modules {split.raw_outputs} is present")
    return present, raw[0]


# ------------------------------------------------------------------------------------------------ the protocol


def _median_stages(calls: list[dict[str, float]]) -> dict[str, float]:
    return {stage: statistics.median(call[stage] for call in calls) * 1e3 for stage in calls[0]}


def measure(
    runs: list[SpeedRun], *, warmup: int, iters: int, breakdown: bool, breakdown_iters: int | None = None
) -> list[dict[str, Any]]:
    """Time prepared runs; returns per run its raw measurements (seconds per call).

    Warm-up: `warmup` untimed end-to-end calls per run, then one more per batch of input sizes those calls did not
    meet (network input size and detections counted meanwhile; alternating too), then PASS_WARMUP untimed calls with each pass's hooks. Timed: `iters` rounds; round i runs, model after model
    (A B A B ...), the end-to-end call i, then the model-only call i (stop hook attached for that call only), then,
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
            return run.timed_model_call(index) if timed else _ignore_stop(run, index)

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


def _ignore_stop(run: SpeedRun, index: int) -> None:
    try:
        run.call(index)
    except _RawOutputsReady:
        pass
    return None


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
    `half_weights` for that model alone, e.g. ours in fp16 + channels_last against a reference in fp32 in one alternating run.
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


def benchmark(
    model: nn.Module,
    images: Sequence[Tensor],
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
    """The speed record of one model on `images` (list of uint8 [3,H,W] 0..255 or float 0..1, e.g. `load_val_images`).

    device "cpu" | "cuda" | "cuda:N"; precision "32" | "16-mixed" | "bf16-mixed" (AMP autocast; "16" / "bf16"
    accepted); `batch_size` images per call; `warmup` untimed calls (then one per batch of input sizes not met yet)
    and `iters` timed calls per pass; `channels_last`, `compile` (`compile_mode`: torch.compile's mode, implies
    compile), `cudnn_benchmark`, `half_weights` (weights cast to the half type once), `tf32` (True / False: set
    cuDNN's and the matmuls' TF32 for the run; None: leave torch's setting): the speed-up flags; `breakdown`: also time the stages (`breakdown_iters` calls, default `iters`);
    `flops_images`: images the FLOPs are averaged over (0: params only).

    The record: fps, fps_model (batch / mean latency), fps_median, fps_model_median, latency_ms {mean, p50, p90, min, max, std}, latency_model_ms, stages_ms (ms per
    stage, medians; null for a model without a `SPLITS` entry or with breakdown=False), breakdown_total_ms,
    peak_memory_mb (CUDA; null elsewhere), params, gflops, gflops_std, gmacs, input_size (the network input
    [H, W]), image_size, batch_size, precision, flags {channels_last, compile, compile_mode, half_weights,
    cudnn_benchmark, warmup, warmup_calls, iters, breakdown_iters}, timed_calls, environment (with the load
    average at start and end, the math settings in force: TF32, float32 matmul precision, cudnn.benchmark, and
    this run's precision, half_weights, channels_last, compile_mode). The model is left in eval mode on `device`
    (in channels_last memory format, and with half weights, if asked).
    """
    result = compare(
        [(type(model).__name__, model, images)], device=device, precision=precision, batch_size=batch_size,
        warmup=warmup, iters=iters, channels_last=channels_last, compile=compile, breakdown=breakdown,
        cudnn_benchmark=cudnn_benchmark, breakdown_iters=breakdown_iters, flops_images=flops_images,
        compile_mode=compile_mode, half_weights=half_weights, tf32=tf32,
    )
    return result["runs"][0]


def _load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (None where the OS has none): the context of every CPU figure."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None

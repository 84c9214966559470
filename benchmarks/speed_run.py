"""SpeedRun: one model prepared for the speed protocol (benchmarks.speed) on one device, and its calls.

Preparing: the images batched and moved to the device once, the flags applied (autocast precision, half weights,
channels_last, torch.compile of the network stages, cudnn.benchmark, TF32) and undone by `close()`. Calling: an
untimed call, a timed end-to-end call, a model-only call stopped at the raw head outputs, a breakdown call timed per
stage, each on one batch; the hooks that stop or time them are attached only inside their context managers. Which
submodules are stages and raw outputs is the model class's SPEED_SPLIT (models.common.speed_split).
"""
from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from benchmarks.environment import math_settings, restore_math_settings
from benchmarks.timing import StageTimer, Stopwatch, synchronize  # synchronize: the protocol's syncs
from models.common.speed_split import ModelSplit

# Lightning's precision names -> the autocast dtype (None: fp32, no autocast).
PRECISIONS = {"32": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
# Other accepted spellings (the runner and older records say "16" / "bf16").
PRECISION_ALIASES = {"32-true": "32", "fp32": "32", "16": "16-mixed", "fp16": "16-mixed", "bf16": "bf16-mixed"}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# The remainder of a breakdown call: everything outside the listed stage submodules.
REMAINDER_STAGE = "postprocess"

class _RawOutputsReady(Exception):
    """Raised by the model-only stop hook: the network's raw outputs exist, post-processing is skipped."""


def canonical_precision(precision: str) -> str:
    """"32", "16-mixed" or "bf16-mixed" for any accepted spelling; ValueError naming the choices otherwise."""
    name = PRECISION_ALIASES.get(str(precision), str(precision))
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {(*PRECISIONS, *PRECISION_ALIASES)}, got {precision!r}")
    return name


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
        self.split: ModelSplit | None = getattr(type(model), "SPEED_SPLIT", None)

        self.model = model.eval().to(self.device)
        self.stage_modules: list[str] = []
        self.raw_outputs: str | None = None
        if self.split is not None:
            self.stage_modules, self.raw_outputs = self.split.check(self.model)
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

    def model_call(self, index: int) -> None:
        """An untimed call stopped at the raw head outputs; needs `stop_at_raw_outputs()` to be active."""
        try:
            self.call(index)
        except _RawOutputsReady:
            pass

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

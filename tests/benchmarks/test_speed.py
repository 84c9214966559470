"""The speed protocol's structure, without wall-clock assertions.

A fake clock stands in for time.perf_counter and fake networks advance it by known amounts, so the recorded
latencies are exact: warm-up calls are made slow on purpose, and any of them leaking into a timed figure shows.
The protocol's synchronize is replaced by a spy that writes into the same log as the networks, so the log is
the exact sequence of syncs and calls.
"""
import json
import math
import types

import pytest
import torch
from torch import nn

from benchmarks import speed, speed_run, timing
from benchmarks.speed import benchmark, compare
from models.common.speed_split import ModelSplit

WARMUP_SECONDS = 5.0  # every part of a warm-up call takes this long: far off any timed figure
BACKBONE_S, HEAD_S, POST_S = 0.010, 0.003, 0.002


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


class Part(nn.Module):
    """A submodule that logs its call and advances the clock: `seconds`, or WARMUP_SECONDS during warm-up."""

    def __init__(self, net, label, seconds):
        super().__init__()
        self.label, self.seconds = label, seconds
        self.conv = nn.Conv2d(3, 3, 1)
        object.__setattr__(self, "net", net)  # a back-reference, not a submodule

    def forward(self, x):
        self.net.log.append(f"{self.net.name}.{self.label}")
        self.net.clock.now += WARMUP_SECONDS if self.net.calls <= self.net.slow_calls else self.seconds
        return self.conv(x)


class ClockedNet(nn.Module):
    """backbone -> head -> post-processing, taking BACKBONE_S, HEAD_S and POST_S on the fake clock."""

    def __init__(self, clock, log, name="A", slow_calls=0):
        super().__init__()
        self.clock, self.log, self.name, self.slow_calls, self.calls = clock, log, name, slow_calls, 0
        self.backbone = Part(self, "backbone", BACKBONE_S)
        self.head = Part(self, "head", HEAD_S)
        self.autocast_dtypes = []
        self.run_head = True  # False: like a mask head that only runs on detections, when there are none

    def forward(self, images):
        self.calls += 1
        self.log.append(f"{self.name}.call")
        self.autocast_dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        features = self.backbone(torch.stack(images))
        if self.run_head:
            features = self.head(features)
        self.clock.now += WARMUP_SECONDS if self.calls <= self.slow_calls else POST_S
        self.log.append(f"{self.name}.post")
        return [{"features": features}]


class UnlistedNet(ClockedNet):
    """The same network without a SPEED_SPLIT."""

    SPEED_SPLIT = None


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


@pytest.fixture
def log(monkeypatch):
    entries = []
    monkeypatch.setattr(timing, "synchronize", lambda device: entries.append("sync"))  # the timed calls' syncs
    monkeypatch.setattr(speed_run, "synchronize", lambda device: entries.append("sync"))  # the memory pass's
    return entries


@pytest.fixture
def split(monkeypatch):
    monkeypatch.setattr(
        ClockedNet, "SPEED_SPLIT",
        ModelSplit(stages={"backbone_neck": ("backbone",), "heads": ("head",)}, raw_outputs=("head",)), raising=False,
    )


def images(count=3):
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, 8, 8, generator=generator) for _ in range(count)]


def test_warmup_is_excluded_and_every_timed_call_is_synchronised(clock, log):
    net = UnlistedNet(clock, log, slow_calls=3)
    record = benchmark(net, images(), warmup=3, iters=5, flops_images=0)
    assert log == untimed("A") * 3 + e2e("A") * 5  # no sync inside a call, one right before and right after each
    assert record["timed_calls"] == {"end_to_end": 5, "model": 0, "breakdown": 0}
    total_ms = (BACKBONE_S + HEAD_S + POST_S) * 1e3
    for stat in ("mean", "p50", "p90", "min", "max"):
        assert record["latency_ms"][stat] == pytest.approx(total_ms)  # the slow warm-up calls left no trace
    assert record["fps"] == pytest.approx(1e3 / total_ms)
    # a model without a SPEED_SPLIT: no model-only figure and no breakdown, and no error
    assert record["fps_model"] is None and record["stages_ms"] is None and record["latency_model_ms"] is None


def untimed(n):
    return [f"{n}.call", f"{n}.backbone", f"{n}.head", f"{n}.post"]


def e2e(n):  # synchronised right before and right after, nothing in between
    return ["sync", *untimed(n), "sync"]


def model_only(n):  # stopped right after the head: post-processing never runs
    return ["sync", f"{n}.call", f"{n}.backbone", f"{n}.head", "sync"]


def breakdown(n):  # the CPU stage timer syncs around each stage module; the call is synchronised as a whole
    return ["sync", f"{n}.call", "sync", f"{n}.backbone", "sync", "sync", f"{n}.head", "sync", f"{n}.post", "sync"]


def test_model_only_and_breakdown_passes(clock, log, split):
    net = ClockedNet(clock, log, slow_calls=2)
    record = benchmark(net, images(), warmup=2, iters=4, breakdown_iters=3, flops_images=0)
    assert log == (
        untimed("A") * 2  # warm-up
        + model_only("A")[1:-1] + breakdown("A")[1:-1]  # one untimed call with each pass's hooks
        + (e2e("A") + model_only("A") + breakdown("A")) * 3  # rounds: end to end, model only, breakdown
        + e2e("A") + model_only("A")  # breakdown_iters=3 < iters=4
    )
    assert record["timed_calls"] == {"end_to_end": 4, "model": 4, "breakdown": 3}
    assert record["flags"]["breakdown_iters"] == 3
    assert record["latency_ms"]["p50"] == pytest.approx((BACKBONE_S + HEAD_S + POST_S) * 1e3)
    assert record["latency_model_ms"]["max"] == pytest.approx((BACKBONE_S + HEAD_S) * 1e3)
    assert record["fps_model"] == pytest.approx(1 / (BACKBONE_S + HEAD_S))
    assert record["stages_ms"] == pytest.approx({"backbone_neck": 10.0, "heads": 3.0, "postprocess": 2.0})
    assert record["breakdown_total_ms"] == pytest.approx(15.0)
    assert record["input_size"] == [8, 8] and record["input_size_from"] == "network input"
    assert not net.backbone._forward_hooks and not net.backbone._forward_pre_hooks  # hooks removed
    assert not net.head._forward_hooks and not net.head._forward_pre_hooks


def test_a_comparison_alternates_the_models_call_by_call(clock, log, split):
    a, b = ClockedNet(clock, log, "A"), ClockedNet(clock, log, "B")
    b.backbone.seconds = 2 * BACKBONE_S
    result = compare([("a", a, images()), ("b", b, images())], warmup=2, iters=3, flops_images=0)
    assert log == (
        (untimed("A") + untimed("B")) * 2
        + model_only("A")[1:-1] + model_only("B")[1:-1] + breakdown("A")[1:-1] + breakdown("B")[1:-1]
        + (e2e("A") + e2e("B") + model_only("A") + model_only("B") + breakdown("A") + breakdown("B")) * 3
    )
    runs = {record["name"]: record for record in result["runs"]}
    assert runs["b"]["latency_ms"]["p50"] == pytest.approx((2 * BACKBONE_S + HEAD_S + POST_S) * 1e3)
    assert runs["b"]["stages_ms"]["backbone_neck"] == pytest.approx(2 * BACKBONE_S * 1e3)
    ratios = {ratio["name"]: ratio for ratio in result["ratios"]}
    assert ratios["a"]["fps"] == 1.0
    assert ratios["b"]["fps"] == pytest.approx(15.0 / 25.0)
    assert ratios["b"]["latency_p50"] == pytest.approx(25.0 / 15.0)


REQUIRED_FIELDS = {
    "fps", "fps_model", "latency_ms", "latency_model_ms", "stages_ms", "peak_memory_mb", "params", "gflops",
    "gflops_std", "input_size", "batch_size", "precision", "flags", "environment", "detections_per_image",
    "model_only_stop_missed", "timed_calls", "breakdown_total_ms", "image_size",
}


def test_the_record_has_every_field_and_is_strict_json(clock, log, split):
    record = benchmark(ClockedNet(clock, log), images(), warmup=1, iters=2, flops_images=2)
    assert REQUIRED_FIELDS <= set(record)
    assert set(record["latency_ms"]) >= {"mean", "p50", "p90"}
    assert record["flags"] == {"channels_last": False, "compile": False, "compile_mode": None, "half_weights": False,
                               "cudnn_benchmark": False, "warmup": 1, "warmup_calls": 1, "iters": 2,
                               "breakdown_iters": 2}
    assert {"device_name", "torch", "torchvision", "cuda", "cudnn", "cpu_threads", "platform", "hostname"} <= set(
        record["environment"])
    assert record["environment"]["cpu_threads"] == torch.get_num_threads()
    environment = record["environment"]
    assert {"cudnn_allow_tf32", "cuda_matmul_allow_tf32", "float32_matmul_precision", "cudnn_benchmark"} <= set(
        environment)
    assert (environment["precision"], environment["half_weights"], environment["channels_last"],
            environment["compile_mode"]) == ("32", False, False, None)
    assert record["peak_memory_mb"] is None  # not measured on the CPU
    assert record["params"] == 2 * (3 * 3 + 3)  # two 1x1 convs 3 -> 3
    assert record["gflops"] == pytest.approx(2 * 2 * (3 * 3 * 8 * 8) / 1e9)  # two convs, 2 FLOPs per MAC
    assert record["precision"] == "32" and record["batch_size"] == 1
    json.dumps(record, allow_nan=False)


def test_batches_cycle_through_the_images(clock, log):
    net = UnlistedNet(clock, log)
    seen = []
    net.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    record = benchmark(net, images(3), batch_size=2, warmup=0, iters=4, flops_images=0)
    assert seen == [2] * (1 + 4)  # warmup=0 still meets the one input size once before timing
    assert record["batch_size"] == 2 and record["num_images"] == 3
    assert record["fps"] == pytest.approx(2 / (BACKBONE_S + HEAD_S + POST_S))


def test_the_model_gets_the_images_as_given_uint8_unscaled(clock, log):
    """uint8 images reach the model as uint8 (it normalises them, as for the loader's batches): a bare float cast
    would hand it 0..255 on its 0..1 scale. Float images reach it as float32 with their values."""
    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.seen = nn.Conv2d(3, 3, 1), []

        def forward(self, images):
            self.seen += [image.clone() for image in images]
            clock.now += 0.01
            return [{"scores": torch.zeros(0)} for _ in images]

    generator = torch.Generator().manual_seed(0)
    photo = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=generator)
    scaled = torch.rand(3, 8, 9, dtype=torch.float64, generator=generator)
    net = Recorder()
    benchmark(net, [photo, scaled], warmup=1, iters=2, flops_images=0, breakdown=False)
    photos = [image for image in net.seen if image.shape == photo.shape]
    floats = [image for image in net.seen if image.shape == scaled.shape]
    assert photos and all(image.dtype == torch.uint8 and torch.equal(image, photo) for image in photos)
    assert floats and all(image.dtype == torch.float32 and torch.equal(image, scaled.float()) for image in floats)


def test_precision_runs_the_calls_under_autocast(clock, log):
    net = UnlistedNet(clock, log)
    record = benchmark(net, images(), precision="bf16-mixed", warmup=1, iters=2, flops_images=1)
    # the FLOP count runs in fp32; warm-up and timed calls under bf16 autocast
    assert net.autocast_dtypes == [None, torch.bfloat16, torch.bfloat16, torch.bfloat16]
    assert record["precision"] == "bf16-mixed" and net.backbone.conv.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="precision"):
        benchmark(net, images(), precision="fp8", iters=1, flops_images=0)


@pytest.mark.parametrize("given, name, dtype", [
    ("32", "32", None), ("32-true", "32", None), ("16", "16-mixed", torch.float16),
    ("16-mixed", "16-mixed", torch.float16), ("bf16", "bf16-mixed", torch.bfloat16),
])
def test_precision_names(clock, log, given, name, dtype):
    net = UnlistedNet(clock, log)
    record = benchmark(net, images(), precision=given, warmup=0, iters=1, flops_images=0)
    assert record["precision"] == name and set(net.autocast_dtypes) == {dtype}


def test_half_weights_cast_the_model_once_and_keep_autocast(clock, log):
    net = UnlistedNet(clock, log)
    weight_dtypes = []
    net.backbone.register_forward_pre_hook(lambda module, args: weight_dtypes.append(module.conv.weight.dtype))
    record = benchmark(net, images(), precision="bf16-mixed", half_weights=True, warmup=1, iters=2, flops_images=0)
    assert set(weight_dtypes) == {torch.bfloat16} and set(net.autocast_dtypes) == {torch.bfloat16}
    assert record["flags"]["half_weights"] and record["environment"]["half_weights"]
    with pytest.raises(ValueError, match="half_weights needs a half precision"):
        benchmark(UnlistedNet(clock, log), images(), half_weights=True, iters=1, flops_images=0)


class ShapeLoggingNet(UnlistedNet):
    def forward(self, images):
        self.shapes = getattr(self, "shapes", []) + [tuple(tuple(image.shape) for image in images)]
        return super().forward([image[:, :8, :8] for image in images])


def test_warmup_meets_every_distinct_input_size_before_timing(clock, log):
    sizes = [(8, 8), (8, 12), (8, 8), (12, 8), (8, 12)]
    net = ShapeLoggingNet(clock, log)
    record = benchmark(net, [torch.rand(3, h, w) for h, w in sizes], warmup=1, iters=5, flops_images=0)
    # 1 warm-up call, then one per size it did not meet: (8, 12) and (12, 8)
    assert record["flags"]["warmup_calls"] == 3
    warmup, timed = net.shapes[:3], net.shapes[3:]
    assert set(timed) <= set(warmup) and len(set(warmup)) == 3
    # batches of two: a batch is a tuple of sizes, each distinct tuple warmed up once
    net = ShapeLoggingNet(clock, log)
    record = benchmark(net, [torch.rand(3, h, w) for h, w in sizes], batch_size=2, warmup=0, iters=3, flops_images=0)
    assert record["flags"]["warmup_calls"] == 3 and set(net.shapes[3:]) <= set(net.shapes[:3])


class SkewedNet(UnlistedNet):
    """Every third call takes 10x longer in post-processing (a image with many detections)."""

    def forward(self, images):
        outputs = super().forward(images)
        if self.calls % 3 == 0:
            self.clock.now += 9 * POST_S
        return outputs


def test_fps_is_on_the_mean_latency_and_the_median_is_reported_too(clock, log):
    record = benchmark(SkewedNet(clock, log), images(), warmup=0, iters=6, flops_images=0)
    latency = record["latency_ms"]
    assert latency["mean"] > latency["p50"] * 1.1
    assert record["fps"] == pytest.approx(1e3 / latency["mean"])
    assert record["fps_median"] == pytest.approx(1e3 / latency["p50"])


def test_tf32_is_set_for_the_run_recorded_and_restored(clock, log):
    before = (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    for tf32 in (True, False):
        record = benchmark(UnlistedNet(clock, log), images(), tf32=tf32, warmup=0, iters=1, flops_images=0)
        assert record["environment"]["cudnn_allow_tf32"] is tf32
        assert record["environment"]["float32_matmul_precision"] == ("high" if tf32 else "highest")
        assert (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()) == before
    record = benchmark(UnlistedNet(clock, log), images(), warmup=0, iters=1, flops_images=0)
    assert record["environment"]["cudnn_allow_tf32"] == before[0]  # None: torch's own setting


def test_channels_last_compile_and_cudnn_flags(clock, log, split, monkeypatch):
    compiled = []

    class Compiled(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.inner = module

        def forward(self, *args):
            compiled.append(self.inner.label)
            return self.inner(*args)

    monkeypatch.setattr(speed.torch, "compile", Compiled)
    net = ClockedNet(clock, log)
    backbone, head = net.backbone, net.head
    before = torch.backends.cudnn.benchmark
    record = benchmark(net, images(), channels_last=True, compile=True, cudnn_benchmark=not before, warmup=1,
                       iters=2, flops_images=0)
    assert record["flags"]["channels_last"] and record["flags"]["compile"]
    assert record["flags"]["cudnn_benchmark"] == (not before)
    assert record["environment"]["cudnn_benchmark"] == (not before)  # in force while measured
    assert torch.backends.cudnn.benchmark == before  # restored
    assert net.backbone.conv.weight.is_contiguous(memory_format=torch.channels_last)
    # the network submodules ran compiled in every pass, and the originals are back afterwards
    assert compiled.count("backbone") == 1 + 2 + 3 + 3 and compiled.count("head") == 1 + 2 + 3 + 3
    assert net.backbone is backbone and net.head is head


def test_a_split_naming_a_missing_submodule_is_a_clear_error(clock, log, monkeypatch):
    monkeypatch.setattr(ClockedNet, "SPEED_SPLIT", ModelSplit(stages={"heads": ("neck",)}, raw_outputs=("head",)),
                        raising=False)
    with pytest.raises(ValueError, match="SPEED_SPLIT of ClockedNet names submodule 'neck'"):
        benchmark(ClockedNet(clock, log), images(), iters=1, flops_images=0)
    monkeypatch.setattr(ClockedNet, "SPEED_SPLIT", ModelSplit(stages={"a": ("head",), "b": ("head.conv",)},
                                                               raw_outputs=("head",)), raising=False)
    with pytest.raises(ValueError, match="inside"):
        benchmark(ClockedNet(clock, log), images(), iters=1, flops_images=0)


def test_optional_parts_and_a_head_that_did_not_run(clock, log, monkeypatch):
    # "extra" is None on the instance (an optional part switched off): skipped, and the next raw-output candidate
    # is used
    monkeypatch.setattr(ClockedNet, "SPEED_SPLIT", ModelSplit(
        stages={"backbone_neck": ("backbone",), "heads": ("head", "extra")}, raw_outputs=("extra", "head")),
        raising=False)
    net = ClockedNet(clock, log)
    net.extra = None
    record = benchmark(net, images(), warmup=0, iters=3, flops_images=0)
    assert record["model_only_stop_missed"] == 0
    assert record["latency_model_ms"]["p50"] == pytest.approx((BACKBONE_S + HEAD_S) * 1e3)
    assert set(record["stages_ms"]) == {"backbone_neck", "heads", "postprocess"}
    # the head never runs: each model-only call is the whole forward, and the record says so
    net.run_head = False
    record = benchmark(net, images(), warmup=0, iters=3, flops_images=0)
    assert record["model_only_stop_missed"] == 3
    assert record["latency_model_ms"]["p50"] == pytest.approx((BACKBONE_S + POST_S) * 1e3)
    assert record["stages_ms"]["heads"] == 0.0


def test_synchronize_waits_for_a_cuda_device(monkeypatch):
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    timing.synchronize(torch.device("cuda", 1))
    timing.synchronize(torch.device("cpu"))
    assert waited == [torch.device("cuda", 1)]


def test_latency_summary():
    summary = speed.latency_summary([0.001 * v for v in range(1, 11)])
    assert summary["p50"] == pytest.approx(5.5) and summary["mean"] == pytest.approx(5.5)
    assert summary["p90"] == pytest.approx(9.1) and summary["min"] == pytest.approx(1.0)
    assert math.isclose(summary["max"], 10.0)


def test_load_val_images(small_synthetic_root):
    from datamodules.coco import CocoDataModule

    datamodule = CocoDataModule(root=str(small_synthetic_root))
    loaded = speed.load_val_images(datamodule, 4)
    assert len(loaded) == 4
    assert all(image.dtype == torch.uint8 and image.shape[0] == 3 for image in loaded)  # as the loader sends them
    assert len(speed.load_val_images(datamodule, 1000)) == len(datamodule.val_dataset)  # 6 val images


def test_a_comparison_entry_can_carry_its_own_precision(clock, log):
    a, b = UnlistedNet(clock, log, "A"), UnlistedNet(clock, log, "B")
    result = compare([("a", a, images()), ("b", b, images(), {"precision": "bf16"})], warmup=1, iters=2,
                     flops_images=0)
    assert [run["precision"] for run in result["runs"]] == ["32", "bf16-mixed"]
    assert [run["environment"]["precision"] for run in result["runs"]] == ["32", "bf16-mixed"]
    assert set(a.autocast_dtypes) == {None} and set(b.autocast_dtypes) == {torch.bfloat16}
    with pytest.raises(ValueError, match="per-model settings"):
        compare([("a", a, images(), {"batch_size": 2})], iters=1, flops_images=0)


def test_compile_mode_reaches_torch_compile(clock, log, split, monkeypatch):
    modes = []

    def fake_compile(module, **options):
        modes.append(options.get("mode"))
        return module

    monkeypatch.setattr(speed.torch, "compile", fake_compile)
    record = benchmark(ClockedNet(clock, log), images(), compile_mode="reduce-overhead", warmup=0, iters=1,
                       flops_images=0)
    assert modes == ["reduce-overhead", "reduce-overhead"]  # backbone and head
    assert record["flags"]["compile"] and record["flags"]["compile_mode"] == "reduce-overhead"
    assert record["environment"]["compile_mode"] == "reduce-overhead"
    modes.clear()
    benchmark(ClockedNet(clock, log), images(), compile=True, warmup=0, iters=1, flops_images=0)
    assert modes == [None, None]  # torch.compile's own default mode
    with pytest.raises(ValueError, match="compile_mode"):
        benchmark(ClockedNet(clock, log), images(), compile_mode="fastest", iters=1, flops_images=0)

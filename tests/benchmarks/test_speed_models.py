"""The protocol on every registered architecture (tiny configurations): its SPEED_SPLIT names real submodules,
the model-only pass stops at the raw head outputs, and the breakdown covers its stages."""
import pytest
import torch

from benchmarks.speed import benchmark
from benchmarks.speed_run import SpeedRun
from models import MODELS
from models.common.speed_split import ModelSplit
from tests.models.test_contract import NUM_CLASSES, TINY_CONFIGS

# Batch 1 (the protocol's) puts a single value per GroupNorm group in CenterMask's FCOS towers on the 1x1 P7 of a
# 64 px image when groups == channels (32), which torch rejects; 8 groups keep the tiny model valid at batch 1.
BATCH_ONE_FIXES = {"centermask": {"fcos_norm_groups": 8}}


def build(name: str):
    torch.manual_seed(0)
    return MODELS[name](num_classes=NUM_CLASSES, **{**TINY_CONFIGS[name], **BATCH_ONE_FIXES.get(name, {})})


@pytest.fixture(params=sorted(MODELS))
def name(request):
    return request.param


def tiny_images():
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, 64, 80, generator=generator), torch.rand(3, 72, 64, generator=generator)]


def test_every_registered_model_declares_its_split():
    assert all(isinstance(cls.SPEED_SPLIT, ModelSplit) for cls in MODELS.values())


def test_the_protocol_on_a_tiny_model(name):
    model = build(name)
    record = benchmark(model, tiny_images(), warmup=1, iters=2, breakdown_iters=1, flops_images=1)
    assert record["timed_calls"] == {"end_to_end": 2, "model": 2, "breakdown": 1}
    # the tiny configs keep low score thresholds, so every head runs and the stop point is reached every time
    assert record["model_only_stop_missed"] == 0
    split = type(model).SPEED_SPLIT
    assert set(record["stages_ms"]) == set(split.stages) | {"postprocess"}
    assert all(value >= 0 for stage, value in record["stages_ms"].items() if stage != "postprocess")
    assert record["params"] == sum(p.numel() for p in model.parameters())
    assert record["gflops"] > 0 and record["flops_images"] == 1
    assert record["input_size_from"] == "network input"
    if name == "yolact":
        assert record["input_size"] == [TINY_CONFIGS[name]["input_size"]] * 2


def test_model_only_pass_skips_the_post_processing(name, monkeypatch):
    """The model-only call raises out of the forward right after the raw-outputs module: nothing after it runs."""
    model = build(name)
    run = SpeedRun(model, tiny_images())
    after = []
    raw = model.get_submodule(run.raw_outputs)
    raw.register_forward_hook(lambda module, args, output: after.append("raw outputs"))
    with torch.inference_mode(), run.stop_at_raw_outputs():
        run.timed_model_call(0)
    assert after == ["raw outputs"] and run.model_stop_missed == 0
    run.close()


@pytest.mark.slow
def test_compile_on_a_tiny_model(name):
    """torch.compile of the network submodules really runs (inductor on the CPU) and the model is restored."""
    model = build(name)
    backbone = model.backbone
    record = benchmark(model, tiny_images(), warmup=2, iters=2, breakdown_iters=1, compile=True, flops_images=0)
    assert record["flags"]["compile"] and model.backbone is backbone
    assert record["timed_calls"]["model"] == 2


@pytest.mark.parametrize("precision, half_weights", [("bf16-mixed", False), ("16-mixed", True)])
def test_half_precisions_on_a_tiny_model(name, precision, half_weights):
    """Every architecture runs the protocol under autocast, and with its weights cast to the half type once."""
    model = build(name)
    record = benchmark(model, tiny_images(), precision=precision, half_weights=half_weights, warmup=1, iters=1,
                       breakdown=False, flops_images=0)
    assert record["precision"] == precision and record["flags"]["half_weights"] == half_weights
    assert record["detections_per_image"] > 0 and record["model_only_stop_missed"] == 0
    half = torch.float16 if precision == "16-mixed" else torch.bfloat16
    assert {p.dtype for p in model.parameters()} == ({half} if half_weights else {torch.float32})

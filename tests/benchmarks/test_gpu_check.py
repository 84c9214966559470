"""The GPU check's own tests: the AMP contract on CUDA (a `gpu` test that benchmarks/gpu_check.sh runs), and the
check's CPU dry run (`slow`), so the script cannot rot between the sessions that have a GPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import MODELS
from tests.models.test_contract import NUM_CLASSES, TINY_CONFIGS

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS_SHORT = ("mask_rcnn", "centermask_lite", "yolact", "istr")  # the check's names of the four paper configs

# Tiny networks at a real input size: box coordinates above 256 px are where fp16 / bf16 coordinates break.
# (CenterMask: 8 GroupNorm groups keep its batch-1 towers valid, as in test_speed_models.)
AMP_SIZES = {
    "mask_rcnn": dict(min_size=480, max_size=640),
    "centermask": dict(min_size=480, max_size=640, fcos_norm_groups=8),
    "yolact": dict(input_size=544),
    "istr": dict(min_size=480, max_size=640),
}
# Box agreement with fp32 on the same weights, in pixels of the 640x480 image. fp16 keeps 11 bits of mantissa
# (0.25 px steps at 256..512 px, 0.5 px above); bf16 keeps 8, so its raw regression outputs alone move a box edge of
# a 300 px box by ~1 px: the honest bound for bf16 is looser.
BOX_TOLERANCE_PX = {torch.float16: 1.0, torch.bfloat16: 2.0}


def amp_contract(name: str, device: torch.device, dtype: torch.dtype) -> None:
    """Finite outputs under autocast, boxes in float32, and every one of fp32's 10 best boxes found again under
    autocast within BOX_TOLERANCE_PX (matched over all boxes: near-equal scores may swap ranks)."""
    torch.manual_seed(0)
    model = MODELS[name](num_classes=NUM_CLASSES, **{**TINY_CONFIGS[name], **AMP_SIZES[name]}).eval().to(device)
    image = torch.rand(3, 480, 640, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        reference = model([image])[0]
        with torch.autocast(device.type, dtype=dtype):
            mixed = model([image])[0]
    for key in ("boxes", "scores", "masks"):
        assert torch.isfinite(mixed[key].float()).all(), f"{name}: non-finite {key} under {dtype} autocast"
    assert mixed["boxes"].dtype == torch.float32, f"{name}: boxes leave autocast as {mixed['boxes'].dtype}"
    assert len(reference["boxes"]) > 0 and len(mixed["boxes"]) > 0, f"{name}: no detections to compare"
    best = reference["boxes"][reference["scores"].argsort(descending=True)[:10]]
    distance = (best[:, None, :] - mixed["boxes"][None, :, :]).abs().amax(-1).amin(1)
    assert float(distance.max()) <= BOX_TOLERANCE_PX[dtype], (
        f"{name}: a box of fp32's 10 best moved {float(distance.max()):.2f} px under {dtype} autocast")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_amp_contract_on_cuda(name, dtype):
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need CUDA (run them with -m gpu on a GPU machine)")
    amp_contract(name, torch.device("cuda"), dtype)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_amp_contract_on_the_cpu_in_bf16(name):
    """The same contract under CPU autocast (bf16; CPU fp16 autocast belongs to tests/models), so the CUDA test's
    own logic is exercised where there is no GPU."""
    amp_contract(name, torch.device("cpu"), torch.bfloat16)


@pytest.mark.slow
def test_the_gpu_check_dry_run_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.sh --device cpu --smoke: every stage runs (gpu tests collected only) and the table and
    JSON hold every stage's rows and the goals."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh"), "--no-install", "--device", "cpu",
                           "--smoke", "--out", str(out)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=1800)
    print(done.stdout[-6000:])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    stages = {record["stage"]: record["status"] for record in result["stages"]}
    assert set(stages) == {"data", "gpu tests", "bench 32", "bench 16-mixed", "vs torchvision", "train mask_rcnn",
                           "train centermask_lite", "train yolact", "train istr"}
    assert set(stages.values()) == {"ok"}
    goals = {goal["goal"] for goal in result["results"]["goals"]}
    assert {"yolact / mask_rcnn FPS end to end", "centermask_lite / mask_rcnn FPS end to end",
            "yolact FPS end to end (fp16)", "maskbench / torchvision inference FPS", "loader / training images/s"} <= goals
    for precision in ("32", "16-mixed"):
        bench = result["results"][f"bench {precision}"]
        assert set(bench) >= {"mask_rcnn", "centermask_lite", "yolact", "istr"}
        assert all(bench[name]["fps"] > 0 and bench[name]["fps_model"] > 0 for name in MODELS_SHORT)
        assert all(bench[name]["detections_per_image"] > 0 for name in MODELS_SHORT)  # thresholds 0: heads run
    table = (out / "gpu_check.md").read_text()
    assert table.count("\n| ") > 20 and "| goal | met |" in table
    # the package installs without network or build isolation, as the script does on the GPU image
    dry = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-build-isolation",
                          "--no-index", "-e", str(REPO_ROOT)], capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-2000:]

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

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS_SHORT = ("mask_rcnn", "centermask_lite", "yolact", "istr")  # the check's names of the four paper configs
# The paper configs' caps of detections per image (detections_per_img; CenterMask-Lite: post_nms_top_n_test),
# which random weights with score thresholds 0 reach (benchmarks/random_weights.py).
PAPER_CAPS = {"mask_rcnn": 100, "centermask_lite": 50, "yolact": 100, "istr": 100}


def amp_contract(name: str, precision: str, device: torch.device, monkeypatch) -> None:
    """tests/models/test_amp.py's contract (finite float32 outputs; with constant box deltas, every matched box
    within 1 px of float32 and scores within 0.01) with the model and the image on `device` under that device's
    autocast. Its own test is reused, with only its `detect` replaced, so the two cannot drift apart."""
    test_amp = pytest.importorskip("tests.models.test_amp", reason="the CPU AMP contract (tests/models/test_amp.py) "
                                   "is not in this checkout")

    def detect(model, image, dtype):
        model = model.to(device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                    enabled=dtype is not None):
            prediction = model([image.to(device)])[0]
        return {key: value.cpu() if isinstance(value, torch.Tensor) else value for key, value in prediction.items()}

    monkeypatch.setattr(test_amp, "detect", detect)
    image = torch.rand(3, test_amp.HEIGHT, test_amp.WIDTH, generator=torch.Generator().manual_seed(0))
    test_amp.test_autocast_outputs_are_finite_float32_and_boxes_within_a_pixel(name, precision, image)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_amp_contract_on_cuda(name, precision, monkeypatch):
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need CUDA (run them with -m gpu on a GPU machine)")
    amp_contract(name, precision, torch.device("cuda"), monkeypatch)


@pytest.mark.slow
def test_the_gpu_check_dry_run_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.sh --device cpu --smoke: every stage runs (gpu tests collected only) and the table and
    JSON hold every stage's rows and the goals."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh"), "--no-install", "--device", "cpu",
                           "--smoke", "--out", str(out)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=3900)
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
        # thresholds 0 and --random-weights: every model's mask head and pasting run on its full cap
        assert {name: bench[name]["detections_per_image"] for name in MODELS_SHORT} == PAPER_CAPS
    table = (out / "gpu_check.md").read_text()
    assert table.count("\n| ") > 20 and "| goal | met |" in table
    # the package builds its editable install with no dependencies, as the script's two tries do
    pip = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "-e", str(REPO_ROOT)]
    dry = subprocess.run([*pip, "--no-build-isolation"], capture_output=True, text=True, timeout=300)
    if dry.returncode != 0:  # a setuptools without bdist_wheel (< 70.1 and no `wheel`): the isolated build
        dry = subprocess.run(pip, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-2000:]

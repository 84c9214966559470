"""benchmarks/random_weights.py: random models make their cap of detections whatever the seed, so a speed figure
with random weights times the per-detection work (mask pasting) a trained model does."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.random_weights import prepare_random_weights
from models import MODELS
from tests.models.test_contract import NUM_CLASSES, TINY_CONFIGS

REPO_ROOT = Path(__file__).resolve().parents[2]
CAP_KEYS = {"mask_rcnn": "detections_per_img", "centermask": "post_nms_top_n_test", "yolact": "detections_per_img",
            "istr": "detections_per_img"}
SEEDS = range(4)


def uint8_images():
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, size, dtype=torch.uint8, generator=generator) for size in ((3, 64, 80), (3, 96, 72))]


def detections(name: str, seed: int, prepare: bool) -> list[int]:
    torch.manual_seed(seed)
    model = MODELS[name](num_classes=NUM_CLASSES, **TINY_CONFIGS[name]).eval()
    if prepare:
        prepare_random_weights(model)
    with torch.inference_mode():
        return [len(prediction["scores"]) for prediction in model(uint8_images())]


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_every_random_model_makes_its_cap_of_detections_for_every_seed(name):
    cap = TINY_CONFIGS[name][CAP_KEYS[name]]
    assert {seed: detections(name, seed, prepare=True) for seed in SEEDS} == {seed: [cap, cap] for seed in SEEDS}


@pytest.mark.parametrize("name", ["centermask", "istr"])
def test_without_it_the_official_initialisations_drop_boxes_without_area(name):
    """What the set-up is for: CenterMask's relu regression and ISTR's Xavier deltas give boxes without area, which
    the post-processing drops, so those models make fewer detections than their cap."""
    cap = TINY_CONFIGS[name][CAP_KEYS[name]]
    assert all(min(detections(name, seed, prepare=False)) < cap for seed in SEEDS)


def test_only_the_box_regressors_change_and_models_that_need_nothing_are_left_alone():
    for name in ("mask_rcnn", "yolact"):
        model = MODELS[name](num_classes=NUM_CLASSES, **TINY_CONFIGS[name])
        before = {key: value.clone() for key, value in model.state_dict().items()}
        assert prepare_random_weights(model) == []
        assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    for name, expected in (("centermask", ["fcos_head.bbox_pred.bias"]),
                           ("istr", [f"head.stages.{i}.bboxes_delta.weight" for i in range(2)])):
        model = MODELS[name](num_classes=NUM_CLASSES, **TINY_CONFIGS[name])
        before = {key: value.clone() for key, value in model.state_dict().items()}
        assert prepare_random_weights(model) == expected
        assert [key for key, value in model.state_dict().items() if not torch.equal(before[key], value)] == expected


@pytest.mark.slow
def test_the_gpu_checks_paper_configs_make_their_caps_at_smoke_size_for_several_seeds(tmp_path):
    """The four paper configs as the GPU check's smoke bench builds them (its overlays, synthetic data and ISTR
    codec; `maskbench bench --random-weights`), three seeds in one alternating run each."""
    from benchmarks.gpu_check import MODEL_CLASSES, PAPER_CONFIGS, Check, Settings
    from tests.benchmarks.test_gpu_check import PAPER_CAPS

    check = Check(tmp_path, 600, Settings(smoke=True, device="cpu"))
    assert check.data(), (tmp_path / "gpu_check.log").read_text()[-2000:]
    caps = {MODEL_CLASSES[name]: cap for name, cap in PAPER_CAPS.items()}
    for seed in (0, 1, 2):
        out = tmp_path / f"bench_{seed}.json"
        argv = [sys.executable, "-m", "experiments.cli", "bench", "--data-config", str(check.data_yaml),
                "--random-weights", "--set", f"seed_everything={seed}", "--warmup", "1", "--iters", "2",
                "--images", "2", "--no-breakdown", "--flops-images", "0", "--out", str(out)]
        for name in PAPER_CONFIGS:
            argv += ["--config", check.configs[name]]
        done = subprocess.run(argv, cwd=REPO_ROOT, env=check.env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        runs = json.loads(out.read_text())["runs"]
        assert {run["model"]: run["detections_per_image"] for run in runs} == caps, f"seed {seed}"

"""One prepared GPU check: everything maskbench can only measure on a GPU, in one run of at most 8 minutes.

    bash benchmarks/gpu_check.sh [--out DIR] [--device cuda] [--budget 450]      # installs, then runs this
    python -m benchmarks.gpu_check --device cpu --smoke --out DIR                  # the dry run (tests/benchmarks)

Stages, each in a subprocess of its own with its own time limit (a stage that fails, crashes or runs out of time is
a row of the table; the rest still run), all inside --budget seconds:
  1. data: a synthetic COCO-format set at COCO's image size (640 px long side) and an ISTR PCA codec of the paper
     shape (K 60, 28x28) fitted on it (`maskbench fit-codec`), so every paper config builds with random weights;
  2. gpu tests: `pytest -m gpu` (the CUDA AMP contract in tests/benchmarks/test_gpu_check.py among them);
  3. bench fp32 and bench fp16: `maskbench bench` on the four paper configs (Mask R-CNN R50-FPN, CenterMask-Lite
     V-39, YOLACT-550 R50, ISTR R50) in one alternating run per precision, batch 1, end to end and model only,
     random weights (`--random-weights`: no pretrained weights, and the CenterMask and ISTR box regressors set so
     that no box is without area, benchmarks/random_weights.py) with score thresholds 0, so every model keeps its
     cap of detections and its mask head and pasting are timed (untrained scores sit below the paper thresholds);
     the table gives each model's detections per image;
  4. Mask R-CNN vs torchvision's maskrcnn_resnet50_fpn on the same weights (benchmarks/mask_rcnn_vs_torchvision.py);
  5. training throughput per architecture (benchmarks/train_speed.py: images/s with the loader, and the loader alone).
It writes ONE Markdown table (gpu_check.md) and its JSON (gpu_check.json) to --out (default $OUT), and every
stage's output to gpu_check.log there. The table ends with the issue's goals: YOLACT >= 4x and CenterMask-Lite >=
1.5x Mask R-CNN's FPS (the papers' ratios), YOLACT fp16 end to end >= 200 FPS (an H100), our Mask R-CNN >= 1.2x
torchvision's, and the loader >= 2x each architecture's training consumption. FPS: batch / mean latency.

--smoke shrinks every setting (input sizes ~128 px, 2 timed calls, 1 training step) and, with no GPU, only
collects the gpu tests: a dry run of every stage on the CPU that keeps this script from rotting. --seed draws other
random weights (Lightning's seed_everything, 0 by default) for the bench and training stages.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_cli import RANDOM_WEIGHT_OVERRIDES

REPO_ROOT = Path(__file__).resolve().parent.parent

# The four paper configs, by the architecture's short name.
PAPER_CONFIGS = {
    "mask_rcnn": "experiments/configs/models/mask_rcnn/r50_fpn.yaml",
    "centermask_lite": "experiments/configs/models/centermask_lite/v39.yaml",
    "yolact": "experiments/configs/models/yolact/r50_550.yaml",
    "istr": "experiments/configs/models/istr/r50_3x.yaml",
}
MODEL_CLASSES = {"mask_rcnn": "MaskRCNN", "centermask_lite": "CenterMask", "yolact": "YOLACT", "istr": "ISTR"}
# Score thresholds to 0 (random weights score below the paper thresholds; see the module docstring); the per-GPU
# training batch of each official recipe (Mask R-CNN, CenterMask-Lite and ISTR 16 over 8 GPUs, YOLACT 8 on one).
OVERLAYS = {
    "mask_rcnn": {"model": {"box_score_thresh": 0.0}, "batch_size": 2},
    "centermask_lite": {"model": {"score_thresh": 0.0}, "batch_size": 2},
    "yolact": {"model": {"score_thresh": 0.0}, "batch_size": 8},
    "istr": {"model": {}, "batch_size": 2},
}
# --smoke: input sizes a 2-core CPU runs in seconds.
SMOKE_SIZES = {
    "mask_rcnn": {"min_size": 128, "max_size": 160},
    "centermask_lite": {"min_size": 128, "max_size": 160},
    "yolact": {"input_size": 160},
    "istr": {"min_size": 128, "max_size": 160},
}
# The training stages' random weights (the bench stages take --random-weights, which also sets box regressors).
RANDOM_WEIGHTS = [arg for override in RANDOM_WEIGHT_OVERRIDES for arg in ("--set", override)]

GOALS = {
    "yolact_over_mask_rcnn": 4.0,
    "centermask_lite_over_mask_rcnn": 1.5,
    "yolact_fp16_fps": 200.0,
    "ours_over_torchvision": 1.2,
    "loader_over_training": 2.0,
}


class Settings:
    """What --smoke changes: sizes, counts and the time limits of the stages (seconds)."""

    def __init__(self, smoke: bool, device: str, seed: int = 0):
        self.smoke, self.device, self.seed_value = smoke, device, seed
        self.seed = ["--set", f"seed_everything={seed}"]
        # The codec needs more independent training masks than its 60 components: ~100 at 48 images.
        self.data = dict(num_train=48, num_val=3, image_size=96) if smoke else dict(
            num_train=64, num_val=16, image_size=640)
        self.bench = (["--warmup", "1", "--iters", "2", "--images", "2", "--breakdown-iters", "1", "--flops-images", "0"]
                      if smoke else
                      ["--warmup", "10", "--iters", "40", "--images", "16", "--breakdown-iters", "10",
                       "--flops-images", "1"])
        self.versus = (["--infer-size", "96", "--infer-max-size", "128", "--infer-warmup", "1", "--infer-iters", "2",
                        "--skip", "training"]
                       if smoke else ["--infer-iters", "30", "--train-steps", "5", "--train-rounds", "2"])
        self.train = (["--warmup", "1", "--steps", "1", "--loader-batches", "2", "--set", "data.num_workers=0"]
                      if smoke else ["--warmup", "2", "--steps", "6", "--loader-batches", "10",
                                     "--set", "data.num_workers=6", "--set", "data.pin_memory=true"])
        # Time limits: together they stay inside the default budget (450 s) on one H100-class GPU.
        self.limits = {"data": 45, "gpu_tests": 60, "bench": 75, "versus": 45, "train": 28}
        if smoke:  # a 2-core CPU, perhaps shared: generous, since the smoke run checks the plumbing, not the speed
            self.limits = {"data": 300, "gpu_tests": 300, "bench": 900, "versus": 600, "train": 600}


class Check:
    """Runs the stages, keeps their rows, and writes the table and the JSON."""

    def __init__(self, out: Path, budget: float, settings: Settings):
        self.out, self.settings = out, settings
        self.deadline = time.monotonic() + budget
        self.work = Path(tempfile.mkdtemp(prefix="maskbench-gpu-check-"))
        self.log = out / "gpu_check.log"
        self.stages: list[dict[str, Any]] = []
        self.rows: list[tuple[str, str, str, str, str]] = []  # stage, measurement, value, goal, met
        self.results: dict[str, Any] = {}
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "MASKBENCH_CACHE": str(self.work / "cache"), "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}

    # -------------------------------------------------------------------------------------------- running

    def run(self, stage: str, argv: list[str], limit: float) -> dict[str, Any]:
        """One subprocess, killed with its whole process group (DataLoader workers too) at its time limit."""
        limit = min(limit, self.deadline - time.monotonic())
        record: dict[str, Any] = {"stage": stage, "command": " ".join(argv), "limit_s": round(limit, 1)}
        if limit < 5:
            record.update(status="skipped", detail="no time left in the budget", seconds=0.0)
            self.stages.append(record)
            return record
        start = time.monotonic()
        with open(self.log, "a", encoding="utf-8") as log:
            log.write(f"\n===== {stage}: {record['command']}\n")
            log.flush()
            process = subprocess.Popen(argv, cwd=REPO_ROOT, env=self.env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, start_new_session=True)
            try:
                output, _ = process.communicate(timeout=limit)
                status = "ok" if process.returncode == 0 else f"failed (exit {process.returncode})"
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                output, _ = process.communicate()
                status = f"timed out ({limit:.0f} s)"
            log.write(output or "")
        record.update(status=status, seconds=round(time.monotonic() - start, 1), rc=process.returncode,
                      output_tail=(output or "")[-2000:])
        if status != "ok":
            record["detail"] = _last_error_line(output or "")
            if process.returncode is not None and process.returncode < 0 and not status.startswith("timed out"):
                # a crash (a segmentation fault in a kernel, say) leaves no Python error behind
                record["detail"] = f"killed by {signal.Signals(-process.returncode).name}; last line: {record['detail']}"
        self.stages.append(record)
        return record

    def python(self, stage: str, args: list[str], limit: float) -> dict[str, Any]:
        return self.run(stage, [sys.executable, *args], limit)

    def failed_row(self, stage: str, record: dict[str, Any]) -> None:
        self.rows.append((stage, record.get("detail", "") or "see gpu_check.log", record["status"], "", "no"))

    # -------------------------------------------------------------------------------------------- stages

    def environment(self) -> None:
        import torch

        from benchmarks.environment import environment

        device = self.settings.device
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but torch.cuda.is_available() is False (use --device cpu --smoke)")
        self.results["environment"] = environment(device)
        env = self.results["environment"]
        self.rows.append(("environment", "device", f"{env['device_name']} ({device})", "", ""))
        self.rows.append(("environment", "versions", f"torch {env['torch']}, torchvision {env['torchvision']}, "
                                                     f"CUDA {env['cuda']}, cuDNN {env['cudnn']}", "", ""))
        self.rows.append(("environment", "math", f"cudnn TF32 {env['cudnn_allow_tf32']}, fp32 matmul "
                                                 f"{env['float32_matmul_precision']}, cudnn.benchmark "
                                                 f"{env['cudnn_benchmark']}", "", ""))

    def data(self) -> bool:
        """The synthetic set (generated in the data stage's subprocess), the data config and the overlays."""
        data = self.settings.data
        data_yaml = self.work / "data.yaml"
        _write_yaml(data_yaml, {"data": {"root": None, "synthetic_num_train": data["num_train"],
                                         "synthetic_num_val": data["num_val"],
                                         "synthetic_image_size": data["image_size"], "synthetic_seed": 0}})
        self.data_yaml = data_yaml
        codec = self.work / "istr_codec60.pt"
        record = self.python("data", ["-m", "experiments.cli", "fit-codec", "--config", str(data_yaml),
                                      "--components", "60", "--mask-size", "28", "--out", str(codec),
                                      "--num-workers", "0", "--no-progress"], self.settings.limits["data"])
        if record["status"] != "ok":
            self.failed_row("data", record)
            return False
        self.rows.append(("data", "synthetic set, ISTR PCA codec (K 60, 28x28)",
                          f"{data['num_train']} train / {data['num_val']} val images at {data['image_size']} px",
                          "", ""))
        self.configs = {}
        for name, config in PAPER_CONFIGS.items():
            init_args = dict(OVERLAYS[name]["model"])
            if name == "istr":
                init_args["codec_path"] = str(codec)
            if self.settings.smoke:
                init_args.update(SMOKE_SIZES[name])
            overlay = self.work / f"{name}.yaml"
            batch = 1 if self.settings.smoke else OVERLAYS[name]["batch_size"]
            _write_yaml(overlay, {"model": {"init_args": init_args}, "data": {"batch_size": batch}})
            self.configs[name] = f"{config},{overlay}"
        return True

    def gpu_tests(self) -> None:
        collect = ["--collect-only"] if not self.settings.device.startswith("cuda") else []
        record = self.python("gpu tests", ["-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *collect,
                                           "tests"], self.settings.limits["gpu_tests"])
        summary = _pytest_summary(record.get("output_tail", ""))
        self.results["gpu_tests"] = {"status": record["status"], "summary": summary}
        what = "pytest -m gpu" + (" --collect-only (no GPU)" if collect else "")
        met = "yes" if record["status"] == "ok" else "no"
        self.rows.append(("gpu tests", what, summary or record["status"], "all pass", met))

    def bench(self, precision: str) -> None:
        stage = f"bench {precision}"
        out = self.work / f"bench_{precision}.json"
        argv = ["-m", "experiments.cli", "bench", "--device", self.settings.device, "--precision", precision,
                "--data-config", str(self.data_yaml), "--random-weights", *self.settings.seed, *self.settings.bench,
                "--out", str(out)]
        for name in PAPER_CONFIGS:
            argv += ["--config", self.configs[name]]
        record = self.python(stage, argv, self.settings.limits["bench"])
        if record["status"] != "ok":
            self.failed_row(stage, record)
            return
        result = json.loads(out.read_text())
        by_class = {run["model"]: run for run in result["runs"]}
        runs = {name: by_class.get(cls) for name, cls in MODEL_CLASSES.items()}
        self.results[stage] = {name: _bench_summary(run) for name, run in runs.items() if run is not None}
        for name, run in runs.items():
            if run is None:
                continue
            self.rows.append((stage, f"{name} FPS end to end / model only (median e2e; dets/img; input)",
                              f"{run['fps']:.1f} / {_fmt(run['fps_model'])} ({run['fps_median']:.1f}; "
                              f"{_fmt(run['detections_per_image'])}; {'x'.join(map(str, run['input_size']))})",
                              "", ""))
        mask_rcnn = runs.get("mask_rcnn")
        for name, goal in (("yolact", "yolact_over_mask_rcnn"), ("centermask_lite", "centermask_lite_over_mask_rcnn")):
            if runs.get(name) and mask_rcnn:
                ratio = runs[name]["fps"] / mask_rcnn["fps"]
                self.results[stage][f"{name}_over_mask_rcnn"] = ratio
                self._goal(stage, f"{name} / mask_rcnn FPS end to end", ratio, GOALS[goal], "x")
        if precision == "16-mixed" and runs.get("yolact"):
            self._goal(stage, "yolact FPS end to end (fp16)", runs["yolact"]["fps"], GOALS["yolact_fp16_fps"], "")

    def versus_torchvision(self) -> None:
        stage = "vs torchvision"
        out = self.work / "versus.json"
        record = self.python(stage, ["-m", "benchmarks.mask_rcnn_vs_torchvision", "--device", self.settings.device,
                                     *self.settings.versus, "--out", str(out)], self.settings.limits["versus"])
        if record["status"] != "ok":
            self.failed_row(stage, record)
            return
        result = json.loads(out.read_text())
        self.results[stage] = result
        inference, training = result.get("inference"), result.get("training")
        if inference:
            fps = inference["fps"]
            self.rows.append((stage, "inference FPS maskbench / torchvision (median, same weights, batch 1; dets)",
                              f"{fps['maskbench']:.1f} / {fps['torchvision']:.1f} "
                              f"({inference['detections_per_image']})", "", ""))
            self._goal(stage, "maskbench / torchvision inference FPS", inference["ratio_maskbench_over_torchvision"],
                       GOALS["ours_over_torchvision"], "x")
        if training:
            ips = training["images_per_s"]
            self.rows.append((stage, "training images/s maskbench (Lightning) / torchvision loop",
                              f"{ips['maskbench']:.1f} / {ips['torchvision']:.1f} "
                              f"({training['ratio_maskbench_over_torchvision']:.2f}x)", "", ""))

    def train(self, name: str) -> None:
        stage = f"train {name}"
        out = self.work / f"train_{name}.json"
        record = self.python(stage, ["-m", "benchmarks.train_speed", "--config", self.configs[name],
                                     "--data-config", str(self.data_yaml), *RANDOM_WEIGHTS, *self.settings.seed,
                                     "--device", self.settings.device, *self.settings.train, "--out", str(out)],
                             self.settings.limits["train"])
        if record["status"] != "ok":
            self.failed_row(stage, record)
            return
        run = json.loads(out.read_text())["runs"][0]
        self.results[stage] = run
        training, loader = run["training"], run["loader"]
        self.rows.append((stage, "training images/s (batch, loader wait share) / loader alone images/s",
                          f"{training['images_per_s']:.1f} (batch {training['batch_size']}, "
                          f"{training['loader_wait_share']:.0%}) / {loader['images_per_s']:.1f}", "", ""))
        self._goal(stage, "loader / training images/s", run["loader_over_training"], GOALS["loader_over_training"],
                   "x")

    def _goal(self, stage: str, what: str, value: float, target: float, unit: str) -> None:
        met = value >= target
        self.results.setdefault("goals", []).append(
            {"stage": stage, "goal": what, "value": value, "target": target, "met": met})
        self.rows.append((stage, what, f"{value:.2f}{unit}", f">= {target:g}{unit}", "yes" if met else "no"))

    # -------------------------------------------------------------------------------------------- output

    def write(self, started: float) -> str:
        seconds = time.monotonic() - started
        lines = [
            f"# maskbench GPU check ({'smoke, ' if self.settings.smoke else ''}device {self.settings.device}, "
            f"seed {self.settings.seed_value}, {seconds:.0f} s)",
            "",
            "| stage | measurement | value | goal | met |",
            "|---|---|---|---|---|",
        ]
        for row in self.rows:
            lines.append("| " + " | ".join(str(cell).replace("|", "/") for cell in row) + " |")
        for record in self.stages:
            lines.append(f"| time | {record['stage']}: {record['status']} | {record.get('seconds', 0):.0f} s | "
                         f"<= {record['limit_s']:.0f} s | |")
        lines += ["", "FPS: batch / mean latency, batch 1, random weights with score thresholds 0 (every model keeps "
                      "its cap of detections); ratios are of end-to-end FPS in one alternating run."]
        table = "\n".join(lines) + "\n"
        (self.out / "gpu_check.md").write_text(table, encoding="utf-8")
        payload = {"seconds": seconds, "smoke": self.settings.smoke, "device": self.settings.device,
                   "seed": self.settings.seed_value,
                   "stages": self.stages, "results": self.results,
                   "rows": [dict(zip(("stage", "measurement", "value", "goal", "met"), row)) for row in self.rows]}
        (self.out / "gpu_check.json").write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
        return table


def _write_yaml(path: Path, content: dict) -> None:
    import yaml

    path.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")


def _fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _bench_summary(run: dict[str, Any]) -> dict[str, Any]:
    keys = ("fps", "fps_median", "fps_model", "fps_model_median", "latency_ms", "latency_model_ms", "stages_ms",
            "detections_per_image", "input_size", "peak_memory_mb", "precision", "flags")
    return {key: run.get(key) for key in keys}


def _pytest_summary(output: str) -> str:
    """pytest's last summary line ("3 passed, 1 skipped in 4.2s"), or ''."""
    for line in reversed(output.strip().splitlines()):
        if any(word in line for word in ("passed", "failed", "error", "no tests ran", "collected", "tests collected",
                                         "deselected")):
            return line.strip("= ").strip()
    return ""


def _last_error_line(output: str) -> str:
    lines = [line.strip() for line in output.strip().splitlines() if line.strip() and "Tip:" not in line]
    for line in reversed(lines):
        if "Error" in line or "error:" in line or "Traceback" in line or "FAILED" in line:
            return line[:300]
    return lines[-1][:300] if lines else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_check.md / .json / .log "
                        "(default: $OUT)")
    parser.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (cpu: with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="tiny settings: a dry run of every stage")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole check (default 450: 8 minutes with a margin; smoke: 3600)")
    parser.add_argument("--train-precision", default="32", help="precision of the training-throughput runs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (bench and training)")
    args = parser.parse_args(argv)
    if not args.out:
        parser.error("give --out DIR (or set $OUT)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.log").write_text("", encoding="utf-8")
    started = time.monotonic()
    settings = Settings(args.smoke, args.device, args.seed)
    settings.train += ["--precision", args.train_precision]
    check = Check(out, args.budget or (3600 if args.smoke else 450), settings)
    check.environment()
    data_ready = check.data()
    check.gpu_tests()
    if data_ready:  # the paper configs need the data config and ISTR's codec
        check.bench("32")
        check.bench("16-mixed")
    check.versus_torchvision()
    for name in PAPER_CONFIGS if data_ready else []:
        check.train(name)
    table = check.write(started)
    print(table)
    failed = [record["stage"] for record in check.stages if record["status"] != "ok"]
    print(f"stages not ok: {', '.join(failed)}" if failed else "every stage ran")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

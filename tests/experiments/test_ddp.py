"""`maskbench fit` with two CPU processes (DDP over gloo) evaluates exactly like one process evaluating the
checkpoint it wrote: DistributedSampler's padding, the evaluator's gather and de-duplication, and the BatchNorm
statistics (different in each process while training) must all leave the COCO numbers unchanged."""
import json
import os
import subprocess
import sys

from experiments.cli import main
from tests.experiments.conftest import REPO_ROOT

TRAINER_DDP = REPO_ROOT / "experiments" / "configs" / "trainer" / "ddp.yaml"
COCO_KEYS = [f"val/{iou}_{stat}" for iou in ("bbox", "segm")
             for stat in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")]


def test_two_process_fit_metrics_equal_single_process_validation(blob_config, tmp_path):
    ddp_dir = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "experiments.cli", "fit", "--config", str(blob_config), "--config", str(TRAINER_DDP),
        "--trainer.accelerator=cpu", "--trainer.devices=2",
        # SyncBatchNorm needs CUDA; per-process statistics are the harder case. The plugin line converts by itself.
        "--trainer.sync_batchnorm=false", "--trainer.plugins=null",
        "--trainer.benchmark=false", f"--trainer.default_root_dir={ddp_dir}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "MEMBER: 2/2" in output and "gloo" in output  # two processes really ran, over gloo

    (log_dir,) = sorted(ddp_dir.glob("lightning_logs/version_*"))
    distributed = json.loads((log_dir / "metrics.json").read_text())
    assert distributed["global_step"] == 6
    assert distributed["val/segm_AP"] > 0 and distributed["val/bbox_AP"] > 0  # real numbers, not all zeros
    (checkpoint,) = (log_dir / "checkpoints").glob("*.ckpt")

    single_dir = tmp_path / "single"
    assert main(["validate", "--config", str(blob_config), f"--trainer.default_root_dir={single_dir}",
                 "--ckpt_path", str(checkpoint)]) == 0
    single = json.loads(next(single_dir.glob("lightning_logs/version_*/metrics.json")).read_text())
    assert single["stage"] == "validate"
    assert {key: single[key] for key in COCO_KEYS} == {key: distributed[key] for key in COCO_KEYS}

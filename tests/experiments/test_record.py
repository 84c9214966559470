"""The run record: its JSON layout (what the leaderboard and results.py read), the store round trip, and one shape
for every failed run, whether `maskbench run` caught the error or the sweep found a dead run process."""
import json

import pytest

from experiments import results as store
from experiments.record import RunRecord
from experiments.run import BenchmarkSettings, run_experiment
from experiments.sweep import _crash_record, load_sweep, plan
from tests.experiments.test_sweep import write_sweep

# The fields records have had since schema 1, in the order run_experiment returns them (the file sorts its keys);
# records already on disk and their readers rely on them.
RECORD_KEYS = [
    "schema", "run_id", "config_id", "status", "error", "name", "sweep", "model", "model_class", "backbone",
    "pretrained_weights", "input_size", "dataset", "seed", "config_files", "overrides", "config", "git", "metrics",
    "metrics_step", "speed", "params", "gflops", "training", "benchmark", "environment", "started_at", "finished_at",
    "duration_s", "paths",
]


def _finished_run() -> dict:
    stats = {name: 0.5 for name in store.COCO_STATS}
    return dict(
        run_id="abc123", config_id="def456", name="width=2", seed=1, config_files=["a.yaml"],
        overrides=[["model.init_args.width", "2"]], sweep={"name": "widths", "point": {"w": 2}, "baseline": {"w": 4}},
        model="BlobModel", model_class="tests.experiments.blob_model.BlobModel", backbone="resnet10t",
        input_size=128, dataset={"name": "v4", "val_images": "val", "val_ann": "a.json", "num_classes": 6},
        config={"seed_everything": 1}, git={"revision": None, "dirty": False}, metrics={"bbox": stats, "segm": stats},
        metrics_step=6, speed={"fps": 12.5, "fps_ci95": [12.0, 13.0]}, params=10, gflops=0.1,
        training={"time_s": 3.0, "steps": 6}, benchmark={"iters": 2}, environment={"device_name": "cpu"},
        started_at="2026-01-01T00:00:00+00:00", finished_at="2026-01-01T00:01:00+00:00", duration_s=60.0,
        paths={"run_dir": "r", "log_dir": "l", "checkpoint": "c", "results_json": "r/results.json"},
    )


def test_a_finished_record_has_the_schema_1_layout_and_reads_back_unchanged(tmp_path):
    record = RunRecord.ok(**_finished_run()).to_dict()
    assert list(record) == RECORD_KEYS
    assert record["schema"] == store.RECORD_SCHEMA and record["status"] == "ok" and record["error"] is None
    path = store.write_record(tmp_path, record)
    assert list(json.loads(path.read_text())) == sorted(RECORD_KEYS)
    assert store.read_record(path) == record
    assert store.load_records([tmp_path]) == [record]


def test_a_failed_record_must_say_why():
    fields = {key: value for key, value in _finished_run().items() if key not in ("metrics", "speed")}
    record = RunRecord.failed("RuntimeError: out of memory", **fields).to_dict()
    assert record["status"] == "failed" and record["metrics"] == {} and record["speed"] is None
    store.check_record(record, "failed record")
    with pytest.raises(ValueError, match="abc123.*needs the error"):
        RunRecord.failed("  ", **fields)


def test_failed_runs_of_maskbench_run_and_of_the_sweep_have_the_same_keys(tmp_path, blob_config):
    """A run refused at build time (maskbench run records the exception) and a run process the sweep found dead
    (killed before it could write) give records of one layout, so tables and the leaderboard read both alike."""
    caught = run_experiment([blob_config], ["--model.init_args.no_such_option", "3"], results_dir=tmp_path / "a",
                            benchmark=BenchmarkSettings(warmup=0, iters=1, breakdown=False), wandb="off")
    sweep = load_sweep(write_sweep(tmp_path, blob_config))
    log = tmp_path / "run.log"
    log.write_text("Epoch 0: 50%\rKilled\n")
    dead = _crash_record(sweep, plan(sweep)[0], -9, log)
    for record in (caught, dead):
        assert list(record) == RECORD_KEYS and record["status"] == "failed"
        assert list(record["paths"])[:3] == ["run_dir", "log_dir", "checkpoint"]
        store.check_record(record, "failed record")
    assert "no_such_option" in caught["error"].splitlines()[0]
    assert dead["error"].startswith("run process exited with status -9") and dead["error"].endswith("Killed")
    assert dead["sweep"]["point"] == {"model.init_args.width": 2} and dead["model"] is None

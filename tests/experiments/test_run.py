"""`maskbench run`: fit -> evaluate -> benchmark -> one atomic record; skipping, failures, resuming, run ids, wandb."""
import json
from pathlib import Path

import pytest

from experiments import results as store
from experiments.cli import main
from experiments.run import BenchmarkSettings, run_experiment

FAST_BENCH = ["--bench-warmup=1", "--bench-iters=2", "--bench-no-breakdown"]
FAST_SETTINGS = BenchmarkSettings(warmup=1, iters=2, breakdown=False)


def test_run_writes_a_complete_record_then_skips_it(blob_config, tmp_path, capsys):
    results = tmp_path / "results"
    argv = ["run", "--config", str(blob_config), "--results", str(results), "--no-wandb", "--seed", "3",
            *FAST_BENCH, "--model.init_args.width", "6"]  # a Lightning override, passed through
    assert main(argv) == 0
    (path,) = (results / "records").glob("*.json")
    record = store.read_record(path)

    assert record["status"] == "ok" and record["error"] is None
    assert record["seed"] == 3 and record["config"]["seed_everything"] == 3
    assert record["config"]["model"]["init_args"]["width"] == 6  # the override reached the model
    assert record["overrides"] == [["model.init_args.width", "6"]]
    assert record["model"] == "BlobModel" and record["model_class"] == "tests.experiments.blob_model.BlobModel"
    for iou_type in ("bbox", "segm"):
        assert set(record["metrics"][iou_type]) == set(store.COCO_STATS)
    assert record["metrics"]["segm"]["AP"] > 0  # a trained model's real numbers
    assert record["metrics_step"] == 6
    # The metrics are those Lightning's validation wrote for the final weights.
    metrics_file = json.loads((Path(record["paths"]["log_dir"]) / "metrics.json").read_text())
    assert record["metrics"]["segm"]["AP"] == metrics_file["val/segm_AP"]
    training = record["training"]
    assert training["global_step"] == 6 and training["steps"] == 6 and training["resumed_from_step"] is None
    assert training["images"] == 12 and training["images_per_s"] > 0  # 6 steps x batch 2
    speed = record["speed"]
    assert speed["fps"] > 0 and speed["timed_calls"]["end_to_end"] == 2
    # width 6: conv 3x3 over 5 input channels (6*5*9 + 6), BatchNorm (2*6), conv 1x1 (6 + 1), class prior (6)
    assert record["params"] == speed["params"] == 6 * 5 * 9 + 6 + 2 * 6 + 6 + 1 + 6
    assert record["dataset"]["num_classes"] == 6 and record["dataset"]["val_ann"].endswith("instances_val2017.json")
    assert record["git"]["revision"] is None or len(record["git"]["revision"]) == 40
    assert Path(record["paths"]["checkpoint"]).name == "last.ckpt"
    # The final validation's detections, as a COCO results file in the run folder, score to the recorded numbers.
    from datamodules.evaluation import evaluate_results_file

    rescored = evaluate_results_file(record["dataset"]["val_ann"], record["paths"]["results_json"])
    assert rescored == record["metrics"]
    assert path.name == f"{record['run_id']}.json"

    # Same settings again: the record is found, nothing is trained (the file is not rewritten).
    before = path.stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    assert "finished earlier, skipped" in capsys.readouterr().out
    assert path.stat().st_mtime_ns == before
    assert [r["run_id"] for r in store.load_records([results])] == [record["run_id"]]


def test_a_crashed_run_is_recorded_then_resumes_from_its_last_checkpoint(blob_config, tmp_path):
    results = tmp_path / "results"
    crash = {"class_path": "tests.experiments.crash_once.CrashOnce",
             "init_args": {"step": 4, "marker": str(tmp_path / "crashed")}}
    overrides = ["--trainer.val_check_interval=3", f"--trainer.callbacks+={json.dumps(crash)}"]

    failed = run_experiment([blob_config], overrides, results_dir=results, benchmark=FAST_SETTINGS, wandb="off")
    assert failed["status"] == "failed"
    assert "simulated crash at step 4" in failed["error"]
    assert store.read_record(store.record_path(results, failed["run_id"]))["status"] == "failed"
    assert (store.run_dir(results, failed["run_id"]) / "checkpoints" / "last.ckpt").exists()  # saved at step 3

    # The same run again: a failed record is retried, and training continues from last.ckpt (step 3).
    done = run_experiment([blob_config], overrides, results_dir=results, benchmark=FAST_SETTINGS, wandb="off")
    assert done["run_id"] == failed["run_id"] and done["status"] == "ok"
    assert done["training"]["resumed_from_step"] == 3
    assert done["training"]["steps"] == 3 and done["training"]["global_step"] == 6
    assert done["metrics_step"] == 6


def test_a_bad_option_is_a_failed_record_naming_it(blob_config, tmp_path, capsys):
    results = tmp_path / "results"
    code = main(["run", "--config", str(blob_config), "--results", str(results), "--no-wandb", *FAST_BENCH,
                 "--model.init_args.no_such_option", "3"])
    assert code == 1
    (record,) = store.load_records([results])
    assert record["status"] == "failed"
    first_line = record["error"].splitlines()[0]  # what tables and the sweep's progress show
    assert first_line.startswith("ConfigurationError: invalid --model (tests.experiments.blob_model.BlobModel): ")
    assert "'no_such_option' is not accepted" in first_line


def test_run_id_is_the_settings_not_the_output_place(tmp_path):
    config = tmp_path / "a.yaml"
    config.write_text("model:\n  init_args:\n    width: 4\n")
    bench = {"iters": 2}

    def ids(overrides, seed=0, bench=bench):
        return store.run_ids(store.identity([config], store.parse_overrides(overrides), seed, bench))

    base = ids(["--trainer.max_steps", "6"])
    assert base == ids(["--trainer.max_steps=6", "--trainer.default_root_dir=/elsewhere",
                        "--trainer.enable_progress_bar", "false"])
    assert ids(["--trainer.max_steps=7"])[0] != base[0]
    seeded = ids(["--trainer.max_steps=6"], seed=1)
    assert seeded[0] != base[0] and seeded[1] == base[1]  # another seed of the same setting
    assert ids(["--trainer.max_steps=6"], bench={"iters": 3})[0] != base[0]
    moved = tmp_path / "moved" / "b.yaml"
    moved.parent.mkdir()
    moved.write_text(config.read_text())
    assert store.run_ids(store.identity([moved], store.parse_overrides(["--trainer.max_steps=6"]), 0, bench)) == base
    config.write_text("model:\n  init_args:\n    width: 5\n")
    assert ids(["--trainer.max_steps=6"])[0] != base[0]  # the contents count, not the path


def test_parse_overrides_forms_and_errors():
    assert store.parse_overrides(["--a.b", "1", "--c=-2", "--flag", "--d", "x y"]) == [
        ("a.b", "1"), ("c", "-2"), ("flag", "true"), ("d", "x y")]
    with pytest.raises(ValueError, match="not of the form"):
        store.parse_overrides(["stray"])


def test_a_corrupt_record_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "records" / "abc.json"
    path.parent.mkdir()
    path.write_text('{"schema": 1, "run_id": "abc"')
    with pytest.raises(store.RecordError, match="abc.json"):
        store.load_records([tmp_path])
    path.write_text(json.dumps({"schema": 1, "run_id": "abc", "config_id": "x", "status": "done", "model": "m",
                                "seed": 0, "metrics": {}, "speed": None}))
    with pytest.raises(store.RecordError, match="status"):
        store.read_record(path)


def test_fit_resumes_with_ckpt_path_last(blob_config, tmp_path):
    """`maskbench fit ... --ckpt_path last`: Lightning looks for last.ckpt in the ModelCheckpoint's folder, so the
    folder must be fixed (dirpath) for a restarted command to find it."""
    checkpoints = tmp_path / "checkpoints"
    common = ["fit", "--config", str(blob_config), f"--trainer.default_root_dir={tmp_path / 'fit'}",
              "--trainer.val_check_interval=3",
              "--trainer.callbacks+=ModelCheckpoint", f"--trainer.callbacks.dirpath={checkpoints}",
              "--trainer.callbacks.save_last=true"]
    assert main([*common, "--trainer.max_steps=3"]) == 0
    assert (checkpoints / "last.ckpt").exists()
    assert main([*common, "--trainer.max_steps=6", "--ckpt_path", "last"]) == 0
    first, second = sorted((tmp_path / "fit").glob("lightning_logs/version_*"))
    assert json.loads((second / "metrics.json").read_text())["global_step"] == 6
    # The second command trained steps 3..5 only: it started from the first one's step 3.
    import csv

    with open(second / "metrics.csv") as handle:
        steps = sorted({int(row["step"]) for row in csv.DictReader(handle) if row.get("train/loss")})
    assert steps == [3, 4, 5]

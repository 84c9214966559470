"""`maskbench sweep`: grid x seeds planned with the ids `maskbench run` gives; resumable after kill -9; failures
recorded and the sweep goes on; SLURM job arrays over the unfinished runs; the shipped sweep files are valid."""
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from experiments import results as store
from experiments.cli import main, parse_command
from experiments.run import benchmark_settings
from experiments.sweep import SweepError, load_sweep, plan
from tests.experiments.conftest import REPO_ROOT

SWEEPS = REPO_ROOT / "experiments" / "sweeps"
FAST_BENCHMARK = {"warmup": 0, "iters": 1, "breakdown": False}


def write_sweep(tmp_path, blob_config, **changes) -> Path:
    spec = {
        "name": "widths",
        "configs": [str(blob_config)],
        "overrides": {"trainer.max_steps": 2, "trainer.val_check_interval": 2},
        "grid": {"model.init_args.width": [2, 3, 4]},
        "seeds": [0],
        "baseline": {"model.init_args.width": 4},
        "benchmark": FAST_BENCHMARK,
        **changes,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def sweep_command(sweep: Path, results: Path) -> list[str]:
    return [sys.executable, "-m", "experiments.cli", "sweep", str(sweep), "--results", str(results), "--no-wandb"]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "WANDB_MODE": "disabled"}


def test_plan_is_the_grid_times_the_seeds_with_the_ids_of_maskbench_run(tmp_path, blob_config):
    sweep = load_sweep(write_sweep(tmp_path, blob_config, seeds=[0, 1]))
    runs = plan(sweep)
    assert [(r.point["model.init_args.width"], r.seed) for r in runs] == [(w, s) for w in (2, 3, 4) for s in (0, 1)]
    assert len({r.run_id for r in runs}) == 6 and len({r.config_id for r in runs}) == 3
    first = runs[0]
    assert first.label == "width=2"
    assert first.overrides == [("trainer.max_steps", "2"), ("trainer.val_check_interval", "2"),
                               ("model.init_args.width", "2")]
    # The id `maskbench run` computes from the same settings (experiments.run.run_experiment does exactly this).
    settings = store.identity(first.configs, first.overrides, first.seed, asdict(sweep.benchmark))
    assert store.run_ids(settings) == (first.run_id, first.config_id)


def test_config_axis_values_are_named_by_file_and_folder_when_names_clash(tmp_path, blob_config):
    for width, folder in ((2, "arch_a"), (3, "arch_b")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "r50.yaml").write_text(f"model: {{init_args: {{width: {width}}}}}\n")
    (tmp_path / "solo.yaml").write_text("trainer: {max_steps: 1}\n")
    sweep = load_sweep(write_sweep(tmp_path, blob_config, grid={
        "config": ["arch_a/r50.yaml", "arch_b/r50.yaml", ["solo.yaml", "arch_a/r50.yaml"]]}, baseline={}))
    runs = plan(sweep)
    assert [run.label for run in runs] == ["arch_a/r50", "arch_b/r50", "solo+arch_a/r50"]
    # The axis's files first, then the base configs (which therefore win where both set a value).
    assert [Path(c).name for c in runs[2].configs] == ["solo.yaml", "r50.yaml", "blob.yaml"]
    assert len({run.run_id for run in runs}) == 3  # different contents, different runs


def test_a_run_process_that_dies_without_a_record_is_recorded_as_failed(tmp_path, blob_config, monkeypatch):
    """A run process killed by the OS (out of memory, a segfault) writes nothing: the sweep records the failure
    with the end of the run's log and goes on to the next run."""
    import experiments.sweep as sweep_module

    sweep = load_sweep(write_sweep(tmp_path, blob_config, grid={"model.init_args.width": [2, 3]}, baseline={}))
    runs = plan(sweep)
    results = tmp_path / "results"
    launched = []

    def fake_run(command, stdout, **kwargs):
        launched.append(command)
        if len(launched) == 1:
            stdout.write("Epoch 0: 50%\rEpoch 0: 60%\rKilled\n")
            return subprocess.CompletedProcess(command, -9)
        run = runs[1]  # the second one writes its record as `maskbench run` would
        store.write_record(results, {"schema": store.RECORD_SCHEMA, "run_id": run.run_id, "config_id": run.config_id,
                                     "status": "ok", "model": "BlobModel", "seed": 0, "metrics": {}, "speed": None})
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(sweep_module.subprocess, "run", fake_run)
    counts = sweep_module.run_local(sweep, runs, results, "off", force=False)
    assert counts == {"ok": 1, "failed": 1, "skipped": 0}
    crashed = store.find_record(results, runs[0].run_id)
    assert crashed["status"] == "failed" and crashed["sweep"]["point"] == {"model.init_args.width": 2}
    assert crashed["error"].startswith("run process exited with status -9 without writing its record")
    assert crashed["error"].rstrip().endswith("Killed")
    assert "--model.init_args.width=2" in launched[0] and "--model.init_args.width=3" in launched[1]


@pytest.mark.slow  # four run processes and two sweep processes: ~1-2 min on 2 cores
def test_sweep_killed_mid_way_resumes_without_redoing_finished_runs(tmp_path, blob_config):
    # Three settings; a negative learning rate is refused when the model is built, so the first run fails: it is
    # recorded as failed and the sweep goes on.
    sweep = write_sweep(tmp_path, blob_config, grid={"model.init_args.lr": [-1.0, 0.05, 0.02]}, baseline={})
    results = tmp_path / "results"
    records = results / "records"

    def ok_records():
        return [p for p in records.glob("*.json") if store.read_record(p)["status"] == "ok"]

    process = subprocess.Popen(sweep_command(sweep, results), cwd=REPO_ROOT, env=env(), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not ok_records() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert ok_records(), "the second run never finished"
        time.sleep(1.0)  # into the third run
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the sweep and the run process it started
        process.wait()
    finished = {path: path.read_bytes() for path in ok_records()}
    assert len(finished) == 1
    assert len(list(records.glob("*.json"))) == 2  # the failed first run and the finished second one
    for path in records.glob("*.json"):
        store.read_record(path)  # every record there is whole

    done = subprocess.run(sweep_command(sweep, results), cwd=REPO_ROOT, env=env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 1  # the failing run failed again
    assert "1 finished earlier, 2 to run" in done.stdout  # the failed run is retried, the finished one is not
    assert "1 ok, 1 failed, 1 finished earlier" in done.stdout
    for path, content in finished.items():
        assert path.read_bytes() == content  # not redone, not rewritten
    by_lr = {r["sweep"]["point"]["model.init_args.lr"]: r for r in store.load_records([results])}
    assert sorted(by_lr) == [-1.0, 0.02, 0.05]
    assert by_lr[-1.0]["status"] == "failed" and "lr must be a positive" in by_lr[-1.0]["error"]
    assert by_lr[0.05]["status"] == by_lr[0.02]["status"] == "ok"
    assert all(r["sweep"]["name"] == "widths" for r in by_lr.values())
    # The sweep ends with its leaderboard, failed runs listed.
    board = (results / "leaderboard" / "leaderboard.md").read_text()
    assert "### failed runs" in board and "lr must be a positive" in board


def test_slurm_launcher_writes_a_job_array_over_unfinished_runs(tmp_path, blob_config, capsys):
    sweep_path = write_sweep(tmp_path, blob_config, slurm={"partition": "gpu", "gpus_per_node": 4, "nodes": 2})
    results = tmp_path / "results"
    runs = plan(load_sweep(sweep_path))
    # Pretend the first run finished.
    store.write_record(results, {
        "schema": store.RECORD_SCHEMA, "run_id": runs[0].run_id, "config_id": runs[0].config_id, "status": "ok",
        "model": "BlobModel", "seed": 0, "metrics": {}, "speed": None})
    assert main(["sweep", str(sweep_path), "--results", str(results), "--launcher", "slurm",
                 "--time", "01:00:00"]) == 0
    script = results / "slurm" / "widths.sbatch"
    assert f"wrote {script}" in capsys.readouterr().out
    text = script.read_text()
    assert "#SBATCH --array=0-1" in text  # two unfinished runs
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gres=gpu:4",
                 "#SBATCH --partition=gpu", "#SBATCH --time=01:00:00", "#SBATCH --signal=SIGUSR1@90"):
        assert line in text
    assert 'srun bash -c "$COMMAND"' in text
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0  # valid shell
    commands = (results / "slurm" / "widths.commands").read_text().splitlines()
    assert len(commands) == 2
    # Each line is the `maskbench run` of one unfinished run: it computes the id the sweep planned.
    for run, line in zip(runs[1:], commands):
        argv = shlex.split(line)
        assert argv[1:5] == ["-m", "experiments.cli", "run", "--config"]
        args = parse_command(argv[3:])
        settings = store.identity(args.config, store.parse_overrides(args.overrides), args.seed,
                                  asdict(benchmark_settings(args)))
        assert store.run_ids(settings)[0] == run.run_id
        assert json.loads(args.sweep_context)["point"] == run.point


@pytest.mark.parametrize("change, message", [
    ({"grid": {"model.init_args.width": []}}, "non-empty list"),
    ({"baseline": {"model.init_args.depth": 1}}, "not a grid axis"),
    ({"baseline": {"model.init_args.width": 9}}, "not one of the grid's values"),
    ({"seeds": "0"}, "seeds"),
    ({"configs": ["nowhere.yaml"]}, "nowhere.yaml"),
    ({"gird": {}}, "unknown key"),
])
def test_bad_sweep_files_name_the_problem(tmp_path, blob_config, change, message):
    with pytest.raises(SweepError, match=message):
        load_sweep(write_sweep(tmp_path, blob_config, **change))


def test_shipped_sweeps_load_and_plan():
    files = sorted(SWEEPS.glob("*.yaml"))
    assert files, "no sweep files shipped"
    for path in files:
        sweep = load_sweep(path)
        runs = plan(sweep)
        assert runs and len({r.run_id for r in runs}) == len(runs), path
    cpu_variants = {p.stem.removesuffix("_cpu") for p in files if p.stem.endswith("_cpu")}
    full = {p.stem for p in files if not p.stem.endswith("_cpu")}
    assert full <= cpu_variants  # every sweep has a CPU-sized variant


def test_a_baseline_naming_some_axes_keeps_the_others_free(tmp_path, blob_config):
    grid = {"model.init_args.width": [2, 3], "model.init_args.lr": [0.05, 0.02]}
    partial = load_sweep(write_sweep(tmp_path, blob_config, grid=grid, baseline={"model.init_args.width": 3}))
    assert partial.baseline == {"model.init_args.width": 3}  # lr is compared within: no lr is "the" reference
    whole = load_sweep(write_sweep(tmp_path, blob_config, grid=grid, baseline={}))
    assert whole.baseline == {"model.init_args.width": 2, "model.init_args.lr": 0.05}

"""Run every combination of a grid of overrides and seeds (an ablation study), locally or as SLURM jobs.

    maskbench sweep SWEEP.yaml [--results DIR] [--force] [--no-wandb] [--dry-run]
                    [--launcher local|slurm] [--submit] [--partition P --time T --gpus-per-node G --nodes N ...]

A sweep file:

    name: mask_rcnn_mask_resolution            # default: the file's stem; default results folder results/<name>
    description: ...
    configs: [experiments/configs/quickstart/mask_rcnn.yaml]   # base config files, applied in order
    overrides: {trainer.max_steps: 150}        # dotted LightningCLI overrides applied to every run
    grid:                                      # every combination of these values is one setting
      model.init_args.mask_resolution: [14, 28]
      config: [a.yaml, b.yaml]                 # the special axis `config`: a config file (or a list of files)
                                               # applied before the base configs, e.g. one per architecture
    seeds: [0, 1, 2]                           # each setting runs once per seed (default [0])
    baseline: {model.init_args.mask_resolution: 28}   # the ablation view's reference values (default: the
                                               # first value of every axis; axes not named are compared within)
    benchmark: {warmup: 10, iters: 100}        # speed protocol settings (experiments.run.BenchmarkSettings)
    slurm: {partition: gpu, time: "24:00:00", gpus_per_node: 8, nodes: 1, cpus_per_task: 8, mem: 0}

Config paths are relative to the sweep file's folder or to the repository root. Each run is `maskbench run` in
its own process (so DDP runs launch their workers cleanly and a crash ends one run, not the sweep), its output
in RESULTS/runs/<run_id>/run.log. Runs whose record exists with status "ok" are skipped, so a sweep killed at
any moment resumes where it stopped when started again; a run that fails is recorded as failed (its error in the
record) and the sweep goes on. At the end the leaderboard and ablation tables of the results folder are written
(experiments.leaderboard; a delta smaller than the seed-to-seed spread is marked ≈, within noise, so give a
sweep several seeds).

`--launcher slurm` writes RESULTS/slurm/<name>.sbatch, a job array with one task per unfinished run (each task
one `srun maskbench run ...` line of RESULTS/slurm/<name>.commands), and submits it with `--submit` when sbatch
is on PATH. Lightning's SLURMEnvironment takes the ranks from srun; `--signal=SIGUSR1@90` lets Lightning save a
checkpoint and requeue the task before its time limit.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.settings import BenchmarkSettings, benchmark_arguments
from experiments import results as store
from experiments.paths import REPO_ROOT
from experiments.record import RunRecord
from experiments.results import CONFIG_AXIS, point_label
from experiments.run import add_output_arguments

RESULTS_DEFAULT = "results/<sweep name>"
SWEEP_KEYS = {"name", "description", "configs", "overrides", "grid", "seeds", "baseline", "benchmark", "slurm"}
SLURM_DEFAULTS = {
    "partition": None, "time": "24:00:00", "nodes": 1, "gpus_per_node": 1, "cpus_per_task": 8, "mem": None,
    "max_parallel": None, "account": None,
}


class SweepError(ValueError):
    """A sweep file that cannot be run; the message names the file and the entry."""


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its configs, overrides, seed, place in the grid, and the id `maskbench run` will give it."""

    configs: list[str]
    overrides: list[tuple[str, str]]
    seed: int
    point: dict[str, Any]
    label: str
    run_id: str
    config_id: str


@dataclass
class Sweep:
    path: Path
    name: str
    description: str
    configs: list[str]
    overrides: list[tuple[str, str]]
    grid: dict[str, list[Any]]
    seeds: list[int]
    baseline: dict[str, Any]
    benchmark: BenchmarkSettings
    slurm: dict[str, Any] = field(default_factory=dict)

    def context(self, point: dict[str, Any]) -> dict[str, Any]:
        """What a run's record keeps of the sweep: enough for the ablation view (display: each axis's value as
        tables show it)."""
        return {"name": self.name, "point": point, "display": self.display(point), "baseline": self.baseline,
                "axes": list(self.grid)}

    def display(self, point: dict[str, Any]) -> dict[str, str]:
        """{axis: value as text}; a config axis by file name, with its folder when two values share a name
        (models/centermask/r50_3x.yaml and models/istr/r50_3x.yaml -> centermask/r50_3x, istr/r50_3x)."""
        out = {}
        for axis, value in point.items():
            if axis != CONFIG_AXIS:
                out[axis] = value if isinstance(value, str) else json.dumps(value)
                continue
            all_files = [f for v in self.grid[CONFIG_AXIS] for f in ([v] if isinstance(v, str) else v)]
            stems = [Path(f).stem for f in all_files]
            names = {f: (Path(f).stem if stems.count(Path(f).stem) == 1 else f"{Path(f).parent.name}/{Path(f).stem}")
                     for f in all_files}
            out[axis] = "+".join(names[f] for f in ([value] if isinstance(value, str) else value))
        return out


# ------------------------------------------------------------------------------------------------ loading


def load_sweep(path: str | os.PathLike) -> Sweep:
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SweepError(f"sweep file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise SweepError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(spec, dict):
        raise SweepError(f"{path}: a sweep file is a mapping (name, configs, grid, seeds, ...)")
    unknown = sorted(set(spec) - SWEEP_KEYS)
    if unknown:
        raise SweepError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(SWEEP_KEYS))}")

    configs = _as_list(spec.get("configs", []), path, "configs")
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict):
        raise SweepError(f"{path}: grid must map a dotted key to a list of values")
    for axis, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: grid[{axis!r}] must be a non-empty list of values, got {values!r}")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise SweepError(f"{path}: grid[{axis!r}] repeats a value: {values}")
    if not configs and CONFIG_AXIS not in grid:
        raise SweepError(f"{path}: no config files: give `configs` or a grid axis `{CONFIG_AXIS}`")
    seeds = spec.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise SweepError(f"{path}: seeds must be a non-empty list of integers, got {seeds!r}")
    baseline = spec.get("baseline") or {}
    if not isinstance(baseline, dict):
        raise SweepError(f"{path}: baseline must map grid axes to values")
    for axis, value in baseline.items():
        if axis not in grid:
            raise SweepError(f"{path}: baseline names {axis!r}, which is not a grid axis ({', '.join(grid)})")
        if value not in grid[axis]:
            raise SweepError(f"{path}: baseline {axis}={value!r} is not one of the grid's values {grid[axis]}")
    if not baseline:  # none given: the first value of every axis
        baseline = {axis: values[0] for axis, values in grid.items()}
    # A baseline naming some axes only is kept so: each setting is compared with the baseline values on those axes
    # and its own on the others (an architecture x backbone grid: each backbone within its architecture).
    overrides = spec.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise SweepError(f"{path}: overrides must map dotted keys to values")
    try:
        benchmark = BenchmarkSettings(**(spec.get("benchmark") or {}))
    except TypeError as err:
        raise SweepError(f"{path}: benchmark: {err}") from None
    slurm = spec.get("slurm") or {}
    unknown = sorted(set(slurm) - set(SLURM_DEFAULTS))
    if unknown:
        raise SweepError(f"{path}: slurm: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(SLURM_DEFAULTS)}")

    sweep = Sweep(
        path=path,
        name=str(spec.get("name") or path.stem),
        description=str(spec.get("description") or ""),
        configs=[_resolve_config(c, path) for c in configs],
        overrides=[(key, store.override_value(value)) for key, value in overrides.items()],
        grid=grid,
        seeds=seeds,
        baseline=baseline,
        benchmark=benchmark,
        slurm={**SLURM_DEFAULTS, **slurm},
    )
    if CONFIG_AXIS in grid:
        for value in grid[CONFIG_AXIS]:
            for config in _as_list(value, path, f"grid[{CONFIG_AXIS!r}]"):
                _resolve_config(config, path)
    return sweep


def _as_list(value: Any, path: Path, where: str) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise SweepError(f"{path}: {where} must be a config file path or a list of them, got {value!r}")
    return values


def _resolve_config(config: str, sweep_path: Path) -> str:
    """A config path as given (absolute), or relative to the sweep file's folder, or to the repository root."""
    candidates = [Path(config)] if Path(config).is_absolute() else [sweep_path.parent / config, REPO_ROOT / config]
    for candidate in candidates:
        if candidate.is_file():
            return os.path.relpath(candidate.resolve(), Path.cwd()) if _inside_cwd(candidate) else str(
                candidate.resolve())
    raise SweepError(f"{sweep_path}: config file {config!r} not found (looked in {', '.join(map(str, candidates))})")


def _inside_cwd(path: Path) -> bool:
    try:
        path.resolve().relative_to(Path.cwd().resolve())
        return True
    except ValueError:
        return False


# ----------------------------------------------------------------------------------------------- planning


def plan(sweep: Sweep) -> list[PlannedRun]:
    """Every (grid point, seed) as a run, with the run id `maskbench run` computes from the same settings."""
    axes = list(sweep.grid)
    runs = []
    for values in itertools.product(*(sweep.grid[axis] for axis in axes)):
        point = dict(zip(axes, values))
        configs = list(sweep.configs)
        overrides = list(sweep.overrides)
        for axis, value in point.items():
            if axis == CONFIG_AXIS:
                configs = [_resolve_config(c, sweep.path) for c in _as_list(value, sweep.path, axis)] + configs
            else:
                overrides.append((axis, store.override_value(value)))
        label = point_label(sweep.display(point)) or sweep.name
        for seed in sweep.seeds:
            settings = store.identity(configs, overrides, seed, asdict(sweep.benchmark))
            run_id, config_id = store.run_ids(settings)
            runs.append(PlannedRun(configs, overrides, seed, point, label, run_id, config_id))
    return runs


def run_command(sweep: Sweep, run: PlannedRun, results_dir: Path, wandb: str, force: bool) -> list[str]:
    """The `maskbench run` command line of one planned run."""
    command = [sys.executable, "-m", "experiments.cli", "run"]
    for config in run.configs:
        command += ["--config", config]
    command += [f"--seed={run.seed}", f"--name={run.label}", f"--results={results_dir}", f"--wandb={wandb}",
                f"--sweep-context={json.dumps(sweep.context(run.point), sort_keys=True)}"]
    command += benchmark_arguments(sweep.benchmark)
    if force:
        command.append("--force")
    command += store.override_tokens(run.overrides)
    return command


def is_finished(results_dir: Path, run: PlannedRun) -> bool:
    record = store.find_record(results_dir, run.run_id)
    return record is not None and record["status"] == "ok"


# ------------------------------------------------------------------------------------------------- local


def run_local(sweep: Sweep, runs: list[PlannedRun], results_dir: Path, wandb: str, force: bool) -> dict[str, int]:
    """Run the planned runs one after another, each in its own process; returns counts per outcome."""
    from tqdm import tqdm

    counts = {"ok": 0, "failed": 0, "skipped": 0}
    todo = [run for run in runs if force or not is_finished(results_dir, run)]
    counts["skipped"] = len(runs) - len(todo)
    print(f"sweep {sweep.name}: {len(runs)} runs, {counts['skipped']} finished earlier, {len(todo)} to run "
          f"-> {results_dir}", flush=True)
    bar = tqdm(total=len(runs), initial=counts["skipped"], desc=sweep.name, unit="run", dynamic_ncols=True)
    for run in todo:
        bar.set_postfix_str(f"{run.label} seed {run.seed}")
        log_path = store.run_dir(results_dir, run.run_id) / "run.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        path = store.record_path(results_dir, run.run_id)
        before = _identity_of(path)
        with open(log_path, "a") as log:
            log.write(f"\n$ {shlex.join(run_command(sweep, run, results_dir, wandb, force))}\n")
            log.flush()
            status = subprocess.run(run_command(sweep, run, results_dir, wandb, force), stdout=log,
                                    stderr=subprocess.STDOUT, cwd=Path.cwd()).returncode
        if path.exists() and _identity_of(path) != before:  # os.replace gives every new record a new inode
            record = store.read_record(path)
        else:
            # The run process died without writing its record (killed, out of memory, a crash in C code).
            record = _crash_record(sweep, run, status, log_path)
            store.write_record(results_dir, record)
        counts[record["status"]] += 1
        outcome = ("ok  " + _short_summary(record)) if record["status"] == "ok" else (
            "FAILED  " + record["error"].splitlines()[0] + f"  (log: {log_path})")
        bar.write(f"[{run.run_id}] {run.label} seed {run.seed}: {outcome}")
        bar.update(1)
    bar.close()
    return counts


def _identity_of(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _crash_record(sweep: Sweep, run: PlannedRun, status: int, log_path: Path) -> dict[str, Any]:
    # Progress bars redraw with carriage returns: split on them too, keep the last lines.
    lines = [line for line in re.split(r"[\r\n]", log_path.read_text()) if line.strip()] if log_path.exists() else []
    error = f"run process exited with status {status} without writing its record (see {log_path})\n" + "\n".join(
        lines[-10:])
    return RunRecord.failed(
        error, run_id=run.run_id, config_id=run.config_id, name=run.label, sweep=sweep.context(run.point),
        seed=run.seed, config_files=run.configs, overrides=[list(p) for p in run.overrides],
        paths={"run_dir": str(log_path.parent), "log_dir": None, "checkpoint": None},
    ).to_dict()


def _short_summary(record: dict[str, Any]) -> str:
    from experiments.run import summary_line

    return summary_line(record)


# ------------------------------------------------------------------------------------------------- SLURM


def write_slurm(sweep: Sweep, runs: list[PlannedRun], results_dir: Path, wandb: str, force: bool,
                options: dict[str, Any]) -> Path | None:
    """Write the job-array script and its command list for the unfinished runs; returns the script (None if
    every run is finished)."""
    todo = [run for run in runs if force or not is_finished(results_dir, run)]
    if not todo:
        return None
    slurm_dir = results_dir / "slurm"
    (slurm_dir / "logs").mkdir(parents=True, exist_ok=True)
    commands = slurm_dir / f"{sweep.name}.commands"
    script = slurm_dir / f"{sweep.name}.sbatch"
    lines = [shlex.join(run_command(sweep, run, results_dir.resolve(), wandb, force)) for run in todo]
    commands.write_text("\n".join(lines) + "\n")
    gpus, nodes = int(options["gpus_per_node"]), int(options["nodes"])
    array = f"0-{len(todo) - 1}" + (f"%{options['max_parallel']}" if options.get("max_parallel") else "")
    header = [
        "#!/bin/bash",
        f"#SBATCH --job-name=maskbench-{sweep.name}",
        f"#SBATCH --array={array}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={max(gpus, 1)}",  # one process per GPU: Lightning reads the ranks from srun
        f"#SBATCH --cpus-per-task={options['cpus_per_task']}",
        f"#SBATCH --time={options['time']}",
        f"#SBATCH --output={(slurm_dir / 'logs').resolve()}/%A_%a.out",
        "#SBATCH --signal=SIGUSR1@90",  # Lightning saves an HPC checkpoint and requeues before the time limit
        "#SBATCH --requeue",
    ]
    if gpus > 0:
        header.append(f"#SBATCH --gres=gpu:{gpus}")
    for key, flag in (("partition", "partition"), ("account", "account"), ("mem", "mem")):
        if options.get(key) is not None:
            header.append(f"#SBATCH --{flag}={options[key]}")
    body = [
        "",
        f"# {len(todo)} unfinished runs of sweep {sweep.name} ({sweep.path}); task i runs line i+1 of",
        f"# {commands.resolve()}. The trainer config must ask for devices={max(gpus, 1)} num_nodes={nodes}.",
        "set -euo pipefail",
        f"cd {shlex.quote(str(Path.cwd().resolve()))}",
        f'COMMAND=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(str(commands.resolve()))})',
        'srun bash -c "$COMMAND"',
        "",
    ]
    script.write_text("\n".join(header + body))
    script.chmod(0o755)
    return script


# ---------------------------------------------------------------------------------------------------- CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="sweep YAML file (see experiments/sweeps/)")
    add_output_arguments(parser, RESULTS_DEFAULT)
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state; run nothing")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local",
                        help="local: the runs one after another here; slurm: write (and with --submit, submit) an "
                        "sbatch job array")
    slurm = parser.add_argument_group("--launcher slurm (defaults from the sweep file's `slurm:` section)")
    slurm.add_argument("--submit", action="store_true", help="call sbatch on the script it writes")
    for key, default in SLURM_DEFAULTS.items():
        slurm.add_argument(f"--{key.replace('_', '-')}", dest=f"slurm_{key}", default=None,
                           help=f"overrides the sweep file's slurm.{key} (built-in default: {default})")
    parser.set_defaults(handler=_sweep_command)


def _sweep_command(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.sweep)
    results_dir = Path("results") / sweep.name if args.results == RESULTS_DEFAULT else Path(args.results)
    runs = plan(sweep)
    if args.dry_run:
        for run in runs:
            state = "done" if is_finished(results_dir, run) else "todo"
            print(f"{run.run_id}  {state}  seed {run.seed}  {run.label}")
        return 0
    if args.launcher == "slurm":
        options = {key: getattr(args, f"slurm_{key}") or sweep.slurm[key] for key in SLURM_DEFAULTS}
        script = write_slurm(sweep, runs, results_dir, args.wandb, args.force, options)
        if script is None:
            print(f"sweep {sweep.name}: every run is finished; nothing to submit")
            return 0
        print(f"wrote {script} (job array over the unfinished runs)")
        if args.submit:
            if shutil.which("sbatch") is None:
                print("error: sbatch is not on PATH; submit the script on the cluster's login node", file=sys.stderr)
                return 2
            return subprocess.run(["sbatch", str(script)]).returncode
        print(f"submit with: sbatch {script}")
        return 0
    counts = run_local(sweep, runs, results_dir, args.wandb, args.force)
    print(f"sweep {sweep.name}: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} finished earlier")
    from experiments.leaderboard import write_leaderboard

    text = write_leaderboard([results_dir], results_dir / "leaderboard", wandb=args.wandb)
    print(text)
    return 0 if counts["failed"] == 0 else 1

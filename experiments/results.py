"""The results store: one JSON record per run, its id, where it lives, and how it is written and read back.

A results folder looks like

    RESULTS/records/<run_id>.json    one record per run (status ok | failed), written atomically
    RESULTS/runs/<run_id>/           that run's checkpoints, logs (CSV, wandb), resolved config, run.log
    RESULTS/leaderboard/             what `maskbench leaderboard RESULTS` writes

The run id is a stable hash of what decides a run's outcome: the contents of its config files (not their paths),
its dotted overrides, its seed and its benchmark settings. A sweep restarted after a crash therefore finds the
records of the runs it had finished, and `maskbench run` with the same settings finds the sweep's record.
Settings that only say where output goes or how it is shown (default_root_dir, progress bar, logger) are not part
of the id.

A record (schema RECORD_SCHEMA) is the JSON of an experiments.record.RunRecord; its fields are listed there.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from datamodules.files import write_json_atomic

RECORD_SCHEMA = 1
RECORDS_DIR = "records"
RUNS_DIR = "runs"
# The sweep axis whose values are config files (experiments.sweep), shown by file name in labels.
CONFIG_AXIS = "config"
STATUSES = ("ok", "failed")
COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")
INTERVAL_KEYS = ("fps_ci95", "fps_median_ci95")  # the speed record's intervals (benchmarks.stats.fps_intervals)

# Overrides that change where output goes or how progress is shown, never what a run computes.
NON_IDENTIFYING_KEYS = frozenset({
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.logger",
})


class RecordError(ValueError):
    """A record file that is not a valid result record; the message names the file."""


# ------------------------------------------------------------------------------------------------ overrides


def parse_overrides(tokens: Sequence[str]) -> list[tuple[str, str]]:
    """Lightning-CLI style overrides -> ordered (dotted key, value) pairs.

    Accepts `--a.b value` and `--a.b=value`; a key followed by another `--key` (or by nothing) is a bare flag and
    gets the value "true", as jsonargparse reads it.
    """
    pairs: list[tuple[str, str]] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if not token.startswith("--") or len(token) == 2:
            raise ValueError(f"override {token!r} is not of the form --key value or --key=value "
                             f"(in {' '.join(tokens)!r})")
        if "=" in token:
            key, value = token[2:].split("=", 1)
            index += 1
        elif index + 1 < len(tokens) and not tokens[index + 1].startswith("--"):
            key, value = token[2:], tokens[index + 1]
            index += 2
        else:
            key, value = token[2:], "true"
            index += 1
        pairs.append((key, value))
    return pairs


def override_tokens(pairs: Iterable[tuple[str, str]]) -> list[str]:
    """(key, value) pairs -> `--key=value` tokens (the form that survives values starting with '-')."""
    return [f"--{key}={value}" for key, value in pairs]


def override_value(value: Any) -> str:
    """A YAML value (from a sweep file) as the string the CLI would be given: strings as they are, the rest as
    JSON (which jsonargparse parses back to the same int / float / bool / list / null)."""
    return value if isinstance(value, str) else json.dumps(value)


# ------------------------------------------------------------------------------------------------------- ids


def identity(config_files: Sequence[str | os.PathLike], overrides: Sequence[tuple[str, str]], seed: int | None,
             benchmark: dict[str, Any]) -> dict[str, Any]:
    """What decides a run's outcome, as plain JSON: config file contents, identifying overrides, seed, benchmark."""
    configs = []
    for path in config_files:
        path = Path(path)
        try:
            configs.append(yaml.safe_load(path.read_text()))
        except FileNotFoundError:
            raise FileNotFoundError(f"config file {path} does not exist") from None
        except yaml.YAMLError as err:
            raise ValueError(f"config file {path} is not valid YAML: {err}") from None
    return {
        "configs": configs,
        "overrides": [[key, value] for key, value in overrides if key not in NON_IDENTIFYING_KEYS],
        "seed": seed,
        "benchmark": dict(sorted(benchmark.items())),
    }


def stable_hash(payload: Any, length: int = 12) -> str:
    """Hex digest of canonical JSON (sorted keys, no whitespace): equal settings give equal ids on any machine."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def run_ids(settings: dict[str, Any]) -> tuple[str, str]:
    """(run_id, config_id) of an identity dict; config_id leaves the seed out, grouping the seeds of one setting."""
    return stable_hash(settings), stable_hash({**settings, "seed": None})


# ----------------------------------------------------------------------------------------------------- paths


def record_path(results_dir: str | os.PathLike, run_id: str) -> Path:
    return Path(results_dir) / RECORDS_DIR / f"{run_id}.json"


def run_dir(results_dir: str | os.PathLike, run_id: str) -> Path:
    return Path(results_dir) / RUNS_DIR / run_id


# ------------------------------------------------------------------------------------------- write and read


def write_record(results_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Validate and write `record` atomically (temporary file + rename): a crash leaves the old file or none."""
    check_record(record, where=f"record of run {record.get('run_id')!r}")
    path = record_path(results_dir, record["run_id"])
    write_json_atomic(path, record)
    return path


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """One record file, validated; RecordError naming the file if it is not a record."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RecordError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    check_record(record, where=str(path))
    return record


def find_record(results_dir: str | os.PathLike, run_id: str) -> dict[str, Any] | None:
    path = record_path(results_dir, run_id)
    return read_record(path) if path.exists() else None


def load_records(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Every record under the given results folders (searched recursively for records/*.json) or record files.

    Temporary files of an interrupted write start with a dot and are never read."""
    records = []
    seen: set[Path] = set()
    for given in paths:
        given = Path(given)
        if given.is_file():
            files = [given]
        elif given.is_dir():
            files = sorted(p for p in given.rglob(f"{RECORDS_DIR}/*.json") if not p.name.startswith("."))
        else:
            raise FileNotFoundError(f"results path {given} does not exist")
        for file in files:
            resolved = file.resolve()
            if resolved not in seen:
                seen.add(resolved)
                records.append(read_record(file))
    return records


def check_record(record: Any, where: str) -> None:
    """Raise RecordError unless `record` has the fields every reader relies on."""
    if not isinstance(record, dict):
        raise RecordError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    for key in ("schema", "run_id", "config_id", "status", "model", "seed", "metrics", "speed"):
        if key not in record:
            raise RecordError(f"{where}: missing field {key!r}")
    if record["schema"] != RECORD_SCHEMA:
        raise RecordError(f"{where}: record schema {record['schema']!r}, this code reads schema {RECORD_SCHEMA}")
    if record["status"] not in STATUSES:
        raise RecordError(f"{where}: status must be one of {STATUSES}, got {record['status']!r}")
    if record["status"] == "failed" and not record.get("error"):
        raise RecordError(f"{where}: a failed record must say its error")
    if record["status"] == "ok":
        for iou_type, stats in record["metrics"].items():
            missing = [s for s in COCO_STATS if s not in stats]
            if missing:
                raise RecordError(f"{where}: metrics[{iou_type!r}] lacks {', '.join(missing)}")
        for key in INTERVAL_KEYS:
            interval = (record["speed"] or {}).get(key)
            if interval is not None and not _is_interval(interval):
                raise RecordError(f"{where}: speed.{key} must be [low, high] with low <= high, got {interval!r}")


def _is_interval(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
            and value[0] <= value[1])


# ------------------------------------------------------------------------------------------------ provenance


def git_revision(repo: str | os.PathLike) -> dict[str, Any]:
    """{revision, dirty} of the checkout at `repo`; nulls when it is not a git checkout or git is missing."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    revision = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if revision else None
    return {"revision": revision, "dirty": bool(status) if status is not None else None}


def point_label(display: dict[str, str]) -> str:
    """`mask_resolution=14 nms=fast` from a point's display values: the last part of each dotted axis; a config
    axis by its file name alone."""
    return " ".join(value if axis == CONFIG_AXIS else f"{axis.rsplit('.', 1)[-1]}={value}"
                    for axis, value in display.items())

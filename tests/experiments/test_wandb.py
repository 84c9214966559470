"""wandb offline (no network): the training curves, the record's numbers, and the leaderboard table and plot."""
import json
import time

import pytest

from experiments.leaderboard import write_leaderboard
from experiments.run import BenchmarkSettings, run_experiment


def wait_for(path, marker: bytes, timeout: float = 60.0) -> bytes:
    """The file's bytes once `marker` is in them: wandb's service process writes the log asynchronously."""
    deadline = time.monotonic() + timeout
    while marker not in (data := path.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return data


def test_offline_wandb_logs_the_run_and_the_leaderboard(blob_config, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # the test session disables wandb; this test wants it offline
    monkeypatch.setenv("WANDB_SILENT", "true")
    results = tmp_path / "results"
    record = run_experiment([blob_config], [], results_dir=results, benchmark=BenchmarkSettings(warmup=0, iters=1,
                            breakdown=False), wandb="offline")
    assert record["status"] == "ok", record["error"]

    # wandb offline keeps a run as one binary log (run-<id>.wandb, protobuf records with JSON values, uploaded
    # later by `wandb sync`); the keys and values are in it verbatim.
    (run_dir,) = (results / "runs" / record["run_id"] / "wandb").glob("offline-run-*")
    (log,) = run_dir.glob("run-*.wandb")
    data = wait_for(log, record["run_id"].encode())
    assert b"train/loss" in data and b"val/segm_AP" in data  # the curves, through Lightning's WandbLogger
    ap = record["metrics"]["segm"]["AP"]
    assert b"segm/AP" in data and json.dumps(ap).encode() in data  # the record's numbers, as the run's summary
    assert record["run_id"].encode() in data
    assert (run_dir / "files" / f"{record['run_id']}.json").read_text() == (
        results / "records" / f"{record['run_id']}.json").read_text()  # the record file itself

    out = tmp_path / "board"
    write_leaderboard([results], out, wandb="offline")
    (board_run,) = (out / "wandb").glob("offline-run-*")
    media = [path for path in (board_run / "files" / "media").rglob("*") if path.is_file()]
    tables = [path for path in media if path.name.endswith(".table.json")]
    images = [path for path in media if path.suffix == ".png"]
    assert len(tables) == 1 and len(images) == 1
    table = json.loads(tables[0].read_text())
    assert "segm AP" in table["columns"]
    assert table["data"][0][table["columns"].index("segm AP")] == pytest.approx(100 * ap)

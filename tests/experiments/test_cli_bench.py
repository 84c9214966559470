"""`maskbench bench` runs a shipped config as it is: ISTR's quickstart config names no codec file, so bench fits
one of the config's shape on the config's dataset (cached) and records which codec it timed."""
import json
from pathlib import Path

import torch

from experiments.cli import main

ISTR = Path(__file__).resolve().parents[2] / "experiments" / "configs" / "quickstart" / "istr.yaml"


def test_bench_runs_istr_quickstart_config_as_it_is(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--config", str(ISTR), "--warmup", "1", "--iters", "1", "--no-breakdown", "--images", "1",
                 "--flops-images", "0", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["model"] == "ISTR" and record["fps"] > 0
    codec = record["codec"]
    assert codec["kind"] == "pca" and Path(codec["file"]).is_file()
    saved = torch.load(codec["file"], map_location="cpu", weights_only=False)
    assert saved["num_components"] == 60 and saved["mask_size"] == 28  # the config's K and M
    assert f"istr: pca mask codec from {codec['file']}" in capsys.readouterr().out

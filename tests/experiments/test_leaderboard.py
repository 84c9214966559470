"""`maskbench leaderboard`: tables per device with mean ± std over seeds, the Pareto front, the ablation view,
failed runs, CSV and the AP-vs-FPS plot — on records with known numbers."""
import csv

import matplotlib.image
import pytest

from experiments import results as store
from experiments.cli import main
from experiments.leaderboard import build_ablation, build_rows, write_leaderboard


def record(model, segm_ap, fps, *, seed=0, config_id=None, device="GPU-A", backbone="r50", bbox_ap=None,
           sweep=None, status="ok", params=1_000_000, input_size=(512, 512)):
    config_id = config_id or f"{model}-{backbone}"
    stats = {stat: 0.5 for stat in store.COCO_STATS}
    return {
        "schema": store.RECORD_SCHEMA, "run_id": f"{config_id}-s{seed}-{device}", "config_id": config_id,
        "status": status, "error": None if status == "ok" else "RuntimeError: out of memory\ntrace",
        "name": None, "model": model, "backbone": backbone, "input_size": list(input_size), "seed": seed,
        "sweep": sweep,
        "metrics": {} if status != "ok" else {"segm": {**stats, "AP": segm_ap}, "bbox": {**stats, "AP": bbox_ap or segm_ap}},
        "speed": None if status != "ok" else {
            "fps": fps, "fps_model": 2 * fps, "latency_ms": {"p50": 1000 / fps}, "precision": "32",
            "environment": {"device_name": device}},
        "params": params, "gflops": 10.0, "training": {"time_s": 100.0},
    }


def table_rows(markdown: str, device: str) -> list[list[str]]:
    section = markdown.split(f"### {device}")[1].split("###")[0]
    lines = [line for line in section.strip().splitlines() if line.startswith("| ")][1:]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_pareto_front_means_over_seeds_and_one_table_per_device(tmp_path):
    records = [
        record("a", 0.40, 10.0, seed=0), record("a", 0.42, 12.0, seed=1),  # mean 41 AP, 11 FPS
        record("b", 0.30, 30.0),                                            # fastest
        record("c", 0.25, 20.0),                                            # dominated by b
        record("d", 0.40, 5.0),                                             # dominated by a
        record("e", 0.10, 100.0, device="CPU-B"),                           # alone on its device: optimal
        record("f", 0.50, 1.0, status="failed"),
    ]
    rows = build_rows(records)
    assert {row.model: row.pareto for row in rows} == {"a": True, "b": True, "c": False, "d": False, "e": True}
    a = next(row for row in rows if row.model == "a")
    assert a.mean("segm AP") == pytest.approx(41.0) and a.std("segm AP") == pytest.approx(2 ** 0.5)
    assert a.seeds == [0, 1]

    for path in records:
        store.write_record(tmp_path / "results", path)
    text = write_leaderboard([tmp_path / "results"], tmp_path / "out")
    gpu = table_rows(text, "GPU-A · fp32")
    assert [row[1] for row in gpu] == ["a", "d", "b", "c"]  # sorted by segm AP
    assert gpu[0][0] == "★" and gpu[0][5] == "2" and gpu[0][6] == "41.0 ± 1.4" and gpu[0][13] == "11.00 ± 1.41"
    assert [row[0] for row in gpu] == ["★", "", "★", ""]
    assert [row[1] for row in table_rows(text, "CPU-B · fp32")] == ["e"]
    assert "### failed runs" in text and "RuntimeError: out of memory" in text

    with open(tmp_path / "out" / "leaderboard.csv") as handle:
        parsed = list(csv.DictReader(handle))
    by_model = {row["model"]: row for row in parsed}
    assert float(by_model["a"]["segm AP"]) == pytest.approx(41.0)
    assert float(by_model["a"]["segm AP std"]) == pytest.approx(2 ** 0.5, rel=1e-5)
    assert by_model["b"]["pareto"] == "1" and by_model["c"]["pareto"] == "0"
    assert by_model["b"]["segm AP std"] == ""  # one seed: no spread

    image = matplotlib.image.imread(tmp_path / "out" / "ap_vs_fps.png")
    assert image.shape[0] > 300 and image.shape[1] > 1000  # two device panels side by side


def sweep_context(point, baseline, name="abl"):
    return {"name": name, "point": point, "baseline": baseline, "axes": list(point)}


def test_ablation_deltas_against_the_baseline_of_each_group():
    records = []
    for arch, r18, r34 in (("x", (0.30, 20.0), (0.34, 16.0)), ("y", (0.50, 10.0), (0.49, 8.0))):
        for backbone, (ap, fps) in (("r18", r18), ("r34", r34)):
            point = {"arch": arch, "model.init_args.backbone": backbone}
            records.append(record(arch, ap, fps, config_id=f"{arch}{backbone}", backbone=backbone,
                                  sweep=sweep_context(point, {"model.init_args.backbone": "r18"})))
    items = build_ablation(build_rows(records))
    delta = {(i.point["arch"], i.point["model.init_args.backbone"]): i for i in items}
    assert delta[("x", "r18")].is_baseline and delta[("y", "r18")].is_baseline
    # Each ResNet-34 against the ResNet-18 of its own architecture.
    assert delta[("x", "r34")].delta("segm AP") == pytest.approx(4.0)
    assert delta[("y", "r34")].delta("segm AP") == pytest.approx(-1.0)
    assert delta[("x", "r34")].delta("FPS") == pytest.approx(-20.0)  # percent
    assert delta[("y", "r34")].delta("FPS") == pytest.approx(-20.0)


def test_ablation_reference_missing_is_not_a_number(tmp_path):
    records = [record("m", 0.3, 10.0, config_id="r14", sweep=sweep_context({"res": 14}, {"res": 28}))]
    for item in records:
        store.write_record(tmp_path, item)
    text = write_leaderboard([tmp_path], tmp_path / "board")
    assert "### ablation: abl" in text and "n/a" in text


def test_leaderboard_command_prints_and_writes(tmp_path, capsys):
    store.write_record(tmp_path / "r", record("m", 0.3, 10.0, sweep=sweep_context({"res": 28}, {"res": 28})))
    assert main(["leaderboard", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "| ★ | m | r50 | 512x512 | res=28 | 1 | 30.0 |" in out
    assert "res | seeds" in out and "28 (baseline)" in out
    for name in ("leaderboard.md", "leaderboard.csv", "ablation.csv", "ap_vs_fps.png"):
        assert (tmp_path / "r" / "leaderboard" / name).stat().st_size > 0


def test_leaderboard_of_a_missing_folder_is_an_error(tmp_path, capsys):
    assert main(["leaderboard", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err

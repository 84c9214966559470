"""`maskbench leaderboard`: tables per device with mean ± std over seeds and FPS ± its interval, the noise-aware
Pareto front, the ablation view with its within-noise flags, failed runs, CSV and the AP-vs-FPS plot — on records
with known numbers."""
import csv
import json

import matplotlib.image
import pytest

from experiments import results as store
from experiments.cli import main
from experiments.leaderboard import build_ablation, build_rows, write_leaderboard


def record(model, segm_ap, fps, *, seed=0, config_id=None, device="GPU-A", backbone="r50", bbox_ap=None,
           sweep=None, status="ok", params=1_000_000, input_size=(512, 512), fps_ci=None):
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
            "environment": {"device_name": device}, **({"fps_ci95": list(fps_ci)} if fps_ci else {})},
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
    # Records without FPS intervals (as before them): two seeds' FPS span 10..12 is the noise, one seed's is none.
    assert gpu[0][0] == "★" and gpu[0][5] == "2" and gpu[0][6] == "41.0 ± 1.4" and gpu[0][13] == "11.00 ± 1.00"
    assert gpu[2][6] == "30.0 (n = 1)" and gpu[2][13] == "30.00"
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
    assert "| ★ | m | r50 | 512x512 | res=28 | 1 | 30.0 (n = 1) |" in out
    assert "res | seeds" in out and "28 (baseline)" in out
    for name in ("leaderboard.md", "leaderboard.csv", "ablation.csv", "ap_vs_fps.png"):
        assert (tmp_path / "r" / "leaderboard" / name).stat().st_size > 0


def test_leaderboard_of_a_missing_folder_is_an_error(tmp_path, capsys):
    assert main(["leaderboard", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


# ISTR and YOLACT as `make demo` measured them: ISTR 0.7 % faster (39.63 against 39.34 FPS, one run each, 95 %
# intervals from their rounds that overlap) at 0.3 against 16.5 segm AP.
ISTR_CI, YOLACT_CI = (39.21, 40.02), (38.95, 39.70)


def test_a_speed_lead_within_noise_crowns_nothing():
    rows = build_rows([record("istr", 0.003, 39.63, fps_ci=ISTR_CI),
                       record("yolact", 0.165, 39.34, fps_ci=YOLACT_CI)])
    front = {row.model: row.front for row in rows}
    assert front == {"istr": "dominated", "yolact": "optimal"}  # the plain Pareto front made both optimal


def test_two_points_0_7_percent_apart_with_overlapping_intervals_are_tied(tmp_path):
    # A is ahead on both means, but only within noise on both: A on the front, B tied with it (not dominated).
    records = [record("a", 0.302, 39.63, fps_ci=ISTR_CI, seed=0), record("a", 0.312, 39.63, fps_ci=ISTR_CI, seed=1),
               record("b", 0.300, 39.34, fps_ci=YOLACT_CI, seed=0),
               record("b", 0.308, 39.34, fps_ci=YOLACT_CI, seed=1)]
    rows = build_rows(records)
    assert {row.model: row.front for row in rows} == {"a": "optimal", "b": "tied"}
    # The same with one seed each: APs count as exact (A beats B on AP beyond noise) unless --ap-noise says more.
    single = [records[0], records[2]]
    assert {row.model: row.front for row in build_rows(single)} == {"a": "optimal", "b": "dominated"}
    assert {row.model: row.front for row in build_rows(single, ap_noise=1.0)} == {"a": "optimal", "b": "tied"}

    for item in records:
        store.write_record(tmp_path / "r", item)
    text = write_leaderboard([tmp_path / "r"], tmp_path / "out")
    table = table_rows(text, "GPU-A · fp32")
    assert [(row[0], row[1]) for row in table] == [("★", "a"), ("≈", "b")]
    # FPS ± the larger distance to an end of the interval (envelope of the seeds' intervals): 40.02 - 39.63.
    assert table[0][13] == "39.63 ± 0.42" and table[1][13] == "39.34 ± 0.39"
    with open(tmp_path / "out" / "leaderboard.csv") as handle:
        parsed = {row["model"]: row for row in csv.DictReader(handle)}
    assert parsed["b"]["front"] == "tied" and parsed["b"]["pareto"] == "0"
    assert float(parsed["a"]["FPS low"]) == pytest.approx(39.21) and float(parsed["a"]["FPS high"]) == 40.02


def test_a_clear_winner_is_not_tied():
    # 14 % faster with intervals far apart, AP within the seeds' spread: the slower one is dominated.
    fast = (44.5, 45.5)
    records = [record("fast", 0.30, 45.0, fps_ci=fast, seed=0), record("fast", 0.31, 45.0, fps_ci=fast, seed=1),
               record("slow", 0.31, 39.34, fps_ci=YOLACT_CI, seed=0),
               record("slow", 0.32, 39.34, fps_ci=YOLACT_CI, seed=1)]
    assert {row.model: row.front for row in build_rows(records)} == {"fast": "optimal", "slow": "dominated"}
    # Better AP beyond the seeds' spread keeps the slower one on the front.
    records[2:] = [record("slow", 0.40, 39.34, fps_ci=YOLACT_CI, seed=0),
                   record("slow", 0.41, 39.34, fps_ci=YOLACT_CI, seed=1)]
    assert {row.model: row.front for row in build_rows(records)} == {"fast": "optimal", "slow": "optimal"}


def test_ablation_flags_deltas_within_the_seed_to_seed_spread(tmp_path):
    baseline = {"res": 28}
    settings = {28: (0.30, 0.32, 0.34), 14: (0.31, 0.33, 0.35), 56: (0.40, 0.41, 0.42)}  # std 2, 2, 1 points
    records = [record("m", ap, 10.0 + seed, seed=seed, config_id=f"r{res}",
                      sweep=sweep_context({"res": res}, baseline, name="res"))
               for res, aps in settings.items() for seed, ap in enumerate(aps)]
    items = {item.point["res"]: item for item in build_ablation(build_rows(records))}
    assert items[14].delta("segm AP") == pytest.approx(1.0) and items[14].spread("segm AP") == pytest.approx(2.0)
    assert items[14].within_noise("segm AP") is True  # +1 < the larger std, 2
    assert items[56].delta("segm AP") == pytest.approx(9.0) and items[56].within_noise("segm AP") is False
    assert items[56].within_noise("FPS") is True  # same FPS seeds: delta 0
    assert items[28].within_noise("segm AP") is None  # the baseline has no delta
    assert items[56].within_noise("params M") is False  # no spread over seeds: exact, never noise

    for item in records:
        store.write_record(tmp_path / "r", item)
    text = write_leaderboard([tmp_path / "r"], tmp_path / "out")
    ablation = text.split("### ablation: res")[1]
    assert "| 14 | 3 | 33.0 ± 2.0 | +1.0 ≈ |" in ablation and "| 56 | 3 | 41.0 ± 1.0 | +9.0 |" in ablation
    with open(tmp_path / "out" / "ablation.csv") as handle:
        parsed = {row["setting"]: row for row in csv.DictReader(handle)}
    assert parsed["res=14"]["within noise segm AP"] == "1" and parsed["res=56"]["within noise segm AP"] == "0"
    assert parsed["res=28"]["within noise segm AP"] == ""


def test_one_seed_ablation_has_no_known_spread_unless_assumed():
    records = [record("m", ap, 10.0, config_id=f"r{res}", sweep=sweep_context({"res": res}, {"res": 28}))
               for res, ap in ((28, 0.30), (14, 0.31))]
    item = next(i for i in build_ablation(build_rows(records)) if i.point["res"] == 14)
    assert item.within_noise("segm AP") is None
    item = next(i for i in build_ablation(build_rows(records, ap_noise=1.5)) if i.point["res"] == 14)
    assert item.within_noise("segm AP") is True


def test_records_with_a_malformed_interval_are_named(tmp_path):
    bad = record("m", 0.3, 10.0, fps_ci=(12.0, 11.0))
    path = store.record_path(tmp_path, bad["run_id"])
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(bad))  # as another tool (or a hand edit) might have written it
    with pytest.raises(store.RecordError, match=r"m-r50-s0-GPU-A\.json: speed\.fps_ci95 must be \[low, high\]"):
        write_leaderboard([tmp_path], tmp_path / "board")


def test_leaderboard_command_takes_an_assumed_ap_noise(tmp_path, capsys):
    store.write_record(tmp_path / "r", record("m", 0.3, 10.0))
    assert main(["leaderboard", str(tmp_path / "r"), "--ap-noise", "1.5"]) == 0
    assert "| ★ | m | r50 | 512x512 |  | 1 | 30.0 ± 1.5 (n = 1, assumed) |" in capsys.readouterr().out
    assert main(["leaderboard", str(tmp_path / "r"), "--ap-noise", "-1"]) == 2
    assert "ap_noise must be" in capsys.readouterr().err

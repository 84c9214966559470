"""Accuracy against speed: tables and a plot from a folder of result records.

    maskbench leaderboard RESULTS [RESULTS ...] [--out DIR] [--wandb off|offline|online]

Reads every record under the given folders (experiments.results) and writes to DIR (default RESULTS/leaderboard):
  leaderboard.md    one table per device (speed numbers only compare on one device): model, backbone, input
                    size, setting, seeds, segm AP / AP50 / AP75 / APs / APm / APl, bbox AP, FPS end to end and model
                    only, latency p50, params, GFLOPs, training time; mean ± std over seeds (sample std); ★ marks
                    the Pareto-optimal rows (no other row has both higher segm AP and higher FPS);
                    then an ablation table per sweep (each setting against the sweep's baseline), then failed runs;
  leaderboard.csv   the same rows, mean and std in separate columns;
  ablation.csv      the ablation rows;
  ap_vs_fps.png     segm AP against end-to-end FPS (log x), one panel per device, the Pareto front drawn.
AP values are percentages, as papers print them. With --wandb offline|online, the table and plot are also logged
to a wandb run (wandb.Table, wandb.Image).
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import os
import statistics
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from datamodules.files import atomic_path, write_text_atomic
from experiments import results as store

# (column, how to read it from a record); AP as percentages.
METRICS: list[tuple[str, Callable[[dict], float | None]]] = [
    ("segm AP", lambda r: _pct(r, "segm", "AP")),
    ("segm AP50", lambda r: _pct(r, "segm", "AP50")),
    ("segm AP75", lambda r: _pct(r, "segm", "AP75")),
    ("segm APs", lambda r: _pct(r, "segm", "APs")),
    ("segm APm", lambda r: _pct(r, "segm", "APm")),
    ("segm APl", lambda r: _pct(r, "segm", "APl")),
    ("bbox AP", lambda r: _pct(r, "bbox", "AP")),
    ("FPS", lambda r: _speed(r, "fps")),
    ("FPS model", lambda r: _speed(r, "fps_model")),
    ("latency p50 ms", lambda r: (r.get("speed") or {}).get("latency_ms", {}).get("p50")),
    ("params M", lambda r: None if r.get("params") is None else r["params"] / 1e6),
    ("GFLOPs", lambda r: r.get("gflops")),
    ("train s", lambda r: (r.get("training") or {}).get("time_s")),
]
DECIMALS = {"FPS": 2, "FPS model": 2, "latency p50 ms": 1, "params M": 2, "GFLOPs": 2, "train s": 0}
ACCURACY, SPEED = "segm AP", "FPS"
PARETO_MARK = "★"


def _pct(record: dict, iou_type: str, stat: str) -> float | None:
    value = record["metrics"].get(iou_type, {}).get(stat)
    return None if value is None or value < 0 else 100 * value  # COCO's -1 = no instance of that size


def _speed(record: dict, key: str) -> float | None:
    return (record.get("speed") or {}).get(key)


@dataclass
class Row:
    """One setting (all seeds of one config_id) on one device."""

    device: str
    model: str
    backbone: str
    input_size: str
    setting: str
    run_ids: list[str]
    seeds: list[int]
    sweep: dict[str, Any] | None
    values: dict[str, list[float]] = field(default_factory=dict)
    pareto: bool = False

    def mean(self, column: str) -> float | None:
        values = self.values.get(column) or []
        return statistics.fmean(values) if values else None

    def std(self, column: str) -> float | None:
        values = self.values.get(column) or []
        return statistics.stdev(values) if len(values) > 1 else None


# ----------------------------------------------------------------------------------------------------- rows


def device_of(record: dict) -> str:
    speed = record.get("speed") or {}
    name = (speed.get("environment") or {}).get("device_name") or speed.get("device") or "unknown device"
    precision = speed.get("precision", "32")
    return f"{name} · {'fp32' if precision == '32' else precision}"


def _input_text(record: dict) -> str:
    size = record.get("input_size")
    if isinstance(size, (list, tuple)):
        return "x".join(str(s) for s in size)
    return "" if size is None else str(size)


def _setting(record: dict) -> str:
    sweep = record.get("sweep")
    if sweep and sweep.get("point"):
        from experiments.results import point_label

        return point_label(_display(sweep))
    name = record.get("name")
    return "" if name in (None, record["run_id"], record.get("model")) else str(name)


def build_rows(records: Sequence[dict]) -> list[Row]:
    """ok records grouped by (device, config_id), i.e. the seeds of one setting on one device."""
    groups: "OrderedDict[tuple[str, str], list[dict]]" = OrderedDict()
    for record in records:
        if record["status"] == "ok":
            groups.setdefault((device_of(record), record["config_id"]), []).append(record)
    rows = []
    for (device, _), members in groups.items():
        first = members[0]
        row = Row(
            device=device, model=str(first.get("model")), backbone=str(first.get("backbone") or ""),
            input_size=_input_text(first), setting=_setting(first), run_ids=[m["run_id"] for m in members],
            seeds=sorted(m["seed"] for m in members), sweep=first.get("sweep"),
        )
        for column, read in METRICS:
            values = [v for v in (read(m) for m in members) if v is not None and math.isfinite(v)]
            row.values[column] = values
        rows.append(row)
    for device in dict.fromkeys(row.device for row in rows):
        mark_pareto([row for row in rows if row.device == device])
    return rows


def mark_pareto(rows: list[Row]) -> None:
    """Set row.pareto: no other row is at least as good on segm AP and FPS (means) and better on one."""
    scored = [(row, row.mean(ACCURACY), row.mean(SPEED)) for row in rows]
    scored = [(row, ap, fps) for row, ap, fps in scored if ap is not None and fps is not None]
    for row, ap, fps in scored:
        row.pareto = not any(
            other_ap >= ap and other_fps >= fps and (other_ap > ap or other_fps > fps)
            for other, other_ap, other_fps in scored if other is not row
        )


# -------------------------------------------------------------------------------------------------- tables


def _cell(row: Row, column: str) -> str:
    mean, std = row.mean(column), row.std(column)
    if mean is None:
        return "–"
    decimals = DECIMALS.get(column, 1)
    return f"{mean:.{decimals}f}" + (f" ± {std:.{decimals}f}" if std is not None else "")


def _sorted(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: -(r.mean(ACCURACY) if r.mean(ACCURACY) is not None else -1))


def markdown_table(headers: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |" for cells in body]
    return "\n".join(lines)


def leaderboard_markdown(rows: list[Row]) -> str:
    sections = []
    for device in dict.fromkeys(row.device for row in rows):
        device_rows = _sorted([row for row in rows if row.device == device])
        headers = ["", "model", "backbone", "input", "setting", "seeds"] + [c for c, _ in METRICS]
        body = [
            [PARETO_MARK if row.pareto else "", row.model, row.backbone, row.input_size, row.setting,
             str(len(row.seeds))] + [_cell(row, column) for column, _ in METRICS]
            for row in device_rows
        ]
        sections.append(f"### {device}\n\n" + markdown_table(headers, body))
    return "\n\n".join(sections) if sections else "(no finished runs)"


def leaderboard_csv(rows: list[Row]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    header = ["device", "model", "backbone", "input", "setting", "seeds", "run_ids", "pareto"]
    for column, _ in METRICS:
        header += [column, f"{column} std"]
    writer.writerow(header)
    for row in rows:
        cells = [row.device, row.model, row.backbone, row.input_size, row.setting,
                 " ".join(map(str, row.seeds)), " ".join(row.run_ids), int(row.pareto)]
        for column, _ in METRICS:
            cells += [_csv_number(row.mean(column)), _csv_number(row.std(column))]
        writer.writerow(cells)
    return out.getvalue()


def _csv_number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


# ------------------------------------------------------------------------------------------------ ablation

ABLATION_COLUMNS = ["segm AP", "bbox AP", "FPS", "params M", "GFLOPs"]


@dataclass
class AblationRow:
    sweep: str
    device: str
    point: dict[str, Any]
    row: Row
    reference: Row | None
    is_baseline: bool

    def delta(self, column: str) -> float | None:
        if self.reference is None:
            return None
        mine, theirs = self.row.mean(column), self.reference.mean(column)
        if mine is None or theirs is None:
            return None
        if column == "FPS":
            return 100 * (mine / theirs - 1) if theirs else None  # speed changes read best as a ratio
        return mine - theirs


def _point_key(point: dict[str, Any]) -> str:
    import json

    return json.dumps(point, sort_keys=True)


def build_ablation(rows: list[Row]) -> list[AblationRow]:
    """For each sweep setting, its reference: the setting with the baseline value on every baseline axis and
    this setting's values elsewhere (so an architecture x backbone grid compares each backbone within its
    architecture when the baseline names only the backbone)."""
    out = []
    by_point: dict[tuple[str, str, str], Row] = {}
    for row in rows:
        if row.sweep:
            by_point[(row.sweep["name"], row.device, _point_key(row.sweep["point"]))] = row
    for row in rows:
        if not row.sweep:
            continue
        sweep, point = row.sweep, row.sweep["point"]
        baseline = sweep.get("baseline") or {}
        reference_point = {**point, **{axis: value for axis, value in baseline.items() if axis in point}}
        reference = by_point.get((sweep["name"], row.device, _point_key(reference_point)))
        out.append(AblationRow(sweep["name"], row.device, point, row, reference, reference_point == point))
    axis_order = {}
    for item in out:
        axes = list(item.point)
        axis_order.setdefault(item.sweep, axes)
    return sorted(out, key=lambda a: (a.sweep, a.device, [_sort_value(a.point[k]) for k in axis_order[a.sweep]]))


def _sort_value(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, str(value))


def ablation_markdown(items: list[AblationRow]) -> str:
    sections = []
    for (sweep, device) in dict.fromkeys((a.sweep, a.device) for a in items):
        group = [a for a in items if a.sweep == sweep and a.device == device]
        axes = list(group[0].point)
        headers = [axis.rsplit(".", 1)[-1] for axis in axes] + ["seeds"]
        for column in ABLATION_COLUMNS:
            headers += [column, "Δ" if column != "FPS" else "Δ %"]
        body = []
        for item in group:
            display = _display(item.row.sweep)
            cells = [display[axis] for axis in axes]
            cells[0] = cells[0] + (" (baseline)" if item.is_baseline else "")
            cells.append(str(len(item.row.seeds)))
            for column in ABLATION_COLUMNS:
                delta = None if item.is_baseline else item.delta(column)
                decimals = DECIMALS.get(column, 1)
                cells += [_cell(item.row, column),
                          "" if item.is_baseline else ("n/a" if delta is None else f"{delta:+.{decimals}f}")]
            body.append(cells)
        sections.append(f"### ablation: {sweep} ({device})\n\n" + markdown_table(headers, body))
    return "\n\n".join(sections)


def _display(sweep: dict[str, Any]) -> dict[str, str]:
    """Each axis's value as the sweep displays it (records from before `display` existed: the raw value)."""
    display = sweep.get("display") or {}
    return {axis: display.get(axis, value if isinstance(value, str) else str(value))
            for axis, value in sweep["point"].items()}


def ablation_csv(items: list[AblationRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["sweep", "device", "setting", "baseline", "seeds"]
                    + [h for c in ABLATION_COLUMNS for h in (c, f"{c} std", f"delta {c}")])
    from experiments.results import point_label

    for item in items:
        cells = [item.sweep, item.device, point_label(_display(item.row.sweep)), int(item.is_baseline),
                 len(item.row.seeds)]
        for column in ABLATION_COLUMNS:
            cells += [_csv_number(item.row.mean(column)), _csv_number(item.row.std(column)),
                      _csv_number(None if item.is_baseline else item.delta(column))]
        writer.writerow(cells)
    return out.getvalue()


def failed_markdown(records: Sequence[dict]) -> str:
    failed = [r for r in records if r["status"] == "failed"]
    if not failed:
        return ""
    body = [[r["run_id"], str(r.get("name") or ""), str(r["seed"]), r["error"].splitlines()[0]] for r in failed]
    return "### failed runs\n\n" + markdown_table(["run", "name", "seed", "error"], body)


# ----------------------------------------------------------------------------------------------------- plot


def plot(rows: list[Row], path: Path) -> Path | None:
    """segm AP against end-to-end FPS (log x), one panel per device, Pareto front as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    devices = [d for d in dict.fromkeys(row.device for row in rows)
               if any(r.mean(ACCURACY) is not None and r.mean(SPEED) is not None for r in rows if r.device == d)]
    if not devices:
        return None
    figure, axes = plt.subplots(1, len(devices), figsize=(7 * len(devices), 5.5), squeeze=False)
    for ax, device in zip(axes[0], devices):
        points = [r for r in rows if r.device == device and r.mean(ACCURACY) is not None and r.mean(SPEED)]
        models = list(dict.fromkeys(r.model for r in points))
        colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
        log_speeds = [math.log(r.mean(SPEED)) for r in points]
        middle = (min(log_speeds) + max(log_speeds)) / 2
        for row in points:
            ax.errorbar(row.mean(SPEED), row.mean(ACCURACY), xerr=row.std(SPEED) or 0, yerr=row.std(ACCURACY) or 0,
                        fmt="*" if row.pareto else "o", markersize=12 if row.pareto else 7,
                        color=colours[row.model], capsize=3, label=row.model)
            # Ablation settings go on a second line, and labels point inwards (right of the points in the left
            # half, left of them in the right half), so they stay inside the axes; kept out of tight_layout, which
            # would otherwise shrink the axes to make room for the long ones.
            text = "\n".join(part for part in (" ".join(filter(None, (row.model, row.backbone))), row.setting) if part)
            right_half = math.log(row.mean(SPEED)) > middle
            label = ax.annotate(text, (row.mean(SPEED), row.mean(ACCURACY)), textcoords="offset points",
                                xytext=(-6, 4) if right_half else (6, 4), ha="right" if right_half else "left",
                                fontsize=8)
            label.set_in_layout(False)
        front = sorted((r for r in points if r.pareto), key=lambda r: r.mean(SPEED))
        if front:
            xs = [r.mean(SPEED) for r in front]
            ys = [r.mean(ACCURACY) for r in front]
            ax.step(xs, ys, where="post", color="black", linestyle="--", linewidth=1, label="Pareto front")
        ax.set_xscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")  # 20, 50, 100 rather than 2x10^1
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel("end-to-end FPS (batch 1, log scale)")
        ax.set_ylabel("segm AP (%)")
        ax.set_title(device, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=8, loc="best")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


# ----------------------------------------------------------------------------------------------- top level


def write_leaderboard(results: Sequence[str | os.PathLike], out_dir: str | os.PathLike, wandb: str = "off") -> str:
    """Read the records, write leaderboard.md / .csv, ablation.csv and ap_vs_fps.png to `out_dir`; returns the
    Markdown."""
    records = store.load_records(results)
    rows = build_rows(records)
    ablation = build_ablation(rows)
    out_dir = Path(out_dir)
    parts = ["## Leaderboard: segm AP vs FPS (★ = Pareto-optimal)", leaderboard_markdown(rows)]
    if ablation:
        parts += ["## Ablations (Δ against the sweep's baseline; Δ FPS in %)", ablation_markdown(ablation)]
    failed = failed_markdown(records)
    if failed:
        parts.append(failed)
    text = "\n\n".join(parts) + "\n"
    write_text_atomic(out_dir / "leaderboard.md", text)
    write_text_atomic(out_dir / "leaderboard.csv", leaderboard_csv(rows))
    if ablation:
        write_text_atomic(out_dir / "ablation.csv", ablation_csv(ablation))
    png = plot(rows, out_dir / "ap_vs_fps.png")
    if wandb != "off" and os.environ.get("WANDB_MODE") != "disabled":
        log_to_wandb(rows, png, out_dir, wandb)
    return text


def log_to_wandb(rows: list[Row], png: Path | None, out_dir: Path, mode: str) -> None:
    """The leaderboard as a wandb.Table and the plot as a wandb.Image, in a run of job type "leaderboard"."""
    import wandb

    from experiments.run import WANDB_PROJECT

    columns = ["device", "model", "backbone", "input", "setting", "seeds", "pareto"] + [c for c, _ in METRICS]
    data = [[row.device, row.model, row.backbone, row.input_size, row.setting, len(row.seeds), row.pareto]
            + [row.mean(column) for column, _ in METRICS] for row in rows]
    run = wandb.init(project=WANDB_PROJECT, job_type="leaderboard", name="leaderboard", dir=str(out_dir),
                     mode=mode, reinit="finish_previous")
    payload: dict[str, Any] = {"leaderboard": wandb.Table(columns=columns, data=data)}
    if png is not None:
        payload["ap_vs_fps"] = wandb.Image(str(png))
    run.log(payload)
    run.finish()


# ---------------------------------------------------------------------------------------------------- CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", help="results folders (searched for records/*.json) or record files")
    parser.add_argument("--out", default=None, help="output folder (default: FIRST_RESULTS/leaderboard)")
    parser.add_argument("--wandb", choices=("off", "offline", "online"), default="off",
                        help="also log the table and plot to wandb (default off)")
    parser.set_defaults(handler=_leaderboard_command)


def _leaderboard_command(args: argparse.Namespace) -> int:
    out_dir = Path(args.out) if args.out else Path(args.results[0]) / "leaderboard"
    try:
        text = write_leaderboard(args.results, out_dir, wandb=args.wandb)
    except (store.RecordError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    print(text)
    print(f"wrote {out_dir}/leaderboard.md, leaderboard.csv, ap_vs_fps.png")
    return 0

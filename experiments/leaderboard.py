"""Accuracy against speed: tables and a plot from a folder of result records, which say which differences are
larger than the noise.

    maskbench leaderboard RESULTS [RESULTS ...] [--out DIR] [--ap-noise POINTS] [--wandb off|offline|online]

Reads every record under the given folders (experiments.results) and writes to DIR (default RESULTS/leaderboard):
  leaderboard.md    one table per device (speed numbers only compare on one device): model, backbone, input
                    size, setting, seeds, segm AP / AP50 / AP75 / APs / APm / APl, bbox AP, FPS end to end and model
                    only, latency p50, params, GFLOPs, training time; AP and the other columns as mean ± std over
                    seeds (sample std; "(n = 1)" after an AP with one seed), FPS as value ± its noise (below);
                    ★ marks the rows on the noise-aware Pareto front, ≈ the rows within noise of it;
                    then an ablation table per sweep (each setting against the sweep's baseline, deltas within the
                    seed-to-seed spread marked ≈), then failed runs;
  leaderboard.csv   the same rows, mean and std in separate columns, the FPS interval and the front status;
  ablation.csv      the ablation rows;
  ap_vs_fps.png     segm AP against end-to-end FPS (log x), one panel per device, error bars = the noise below,
                    the front drawn through the ★ rows.
AP values are percentages, as papers print them. With --wandb offline|online, the table and plot are also logged
to a wandb run (wandb.Table, wandb.Image).

Noise, per row (one setting = the seeds of one config on one device), as an interval on each axis:
  FPS      the 95 % interval of the run's headline FPS from the spread between its timed rounds (record
           speed.fps_ci95, benchmarks.stats: batch means over the per-round latencies). Several seeds: from the
           lowest to the highest end of their intervals, which also spans the drift of machine load between the
           runs (one run's rounds cannot see it). Records without an interval (older ones, or fewer than 6
           rounds): the span of the seeds' FPS, and for one seed none (the FPS counts as exact).
  segm AP  mean ± std over seeds (n >= 2). With one seed no spread is measured: the AP counts as exact unless
           --ap-noise P assumes a std of P AP points for such rows (take it from a setting measured with several
           seeds on the same data; e.g. 1-2 points on a 50-image val set).
A row B beats a row A beyond noise on an axis when B's interval lies wholly above A's (the difference exceeds
the noise of both). A is dominated when some B beats it beyond noise on one axis and is not beaten by it beyond
noise on the other. Of the rows no one dominates, those with no other such row at least as good on both means
(and better on one) are optimal (★, the front); the others are tied with the front (≈): some row is better on
the means, but only within noise. With every interval empty this is the plain Pareto front of the means.
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

from benchmarks.stats import half_width
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
OPTIMAL, TIED, DOMINATED = "optimal", "tied", "dominated"
FRONT_MARKS = {OPTIMAL: "★", TIED: "≈", DOMINATED: ""}
WITHIN_NOISE_MARK = "≈"


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
    fps_intervals: list[tuple[float, float]] = field(default_factory=list)  # per seed that has one (speed.fps_ci95)
    ap_noise: float | None = None  # the std assumed for an AP measured with one seed (--ap-noise); None: exact
    front: str = DOMINATED  # OPTIMAL | TIED | DOMINATED, see mark_front

    @property
    def pareto(self) -> bool:
        return self.front == OPTIMAL

    def mean(self, column: str) -> float | None:
        values = self.values.get(column) or []
        return statistics.fmean(values) if values else None

    def std(self, column: str) -> float | None:
        values = self.values.get(column) or []
        return statistics.stdev(values) if len(values) > 1 else None

    def interval(self, column: str) -> tuple[float, float] | None:
        """The noise around mean(column) as (low, high), as the module docstring defines it for FPS and AP
        (mean ± std over seeds for any other column); None where no noise is known (the value counts as exact)."""
        mean = self.mean(column)
        if mean is None:
            return None
        if column == SPEED:
            values = self.values.get(column) or []
            ends = [end for interval in self.fps_intervals for end in interval] + (values if len(values) > 1 else [])
            return (min(ends), max(ends)) if ends else None
        spread = self.spread(column)
        return None if spread is None else (mean - spread, mean + spread)

    def spread(self, column: str) -> float | None:
        """The std over seeds; for a segm AP measured with one seed, the assumed ap_noise (None: not known)."""
        std = self.std(column)
        if std is None and column == ACCURACY and len(self.values.get(column) or []) == 1:
            return self.ap_noise
        return std

    def bounds(self, column: str) -> tuple[float, float]:
        """interval(column), or the mean itself at both ends where no noise is known."""
        return self.interval(column) or (self.mean(column), self.mean(column))


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


def _fps_interval(record: dict) -> tuple[float, float] | None:
    """speed.fps_ci95 (checked by the store when the record was read); None in records from before it."""
    interval = (record.get("speed") or {}).get("fps_ci95")
    return None if interval is None else (float(interval[0]), float(interval[1]))


def build_rows(records: Sequence[dict], ap_noise: float | None = None) -> list[Row]:
    """ok records grouped by (device, config_id), i.e. the seeds of one setting on one device; `ap_noise`: the
    std assumed for an AP measured with one seed (None: exact)."""
    if ap_noise is not None and not (math.isfinite(ap_noise) and ap_noise >= 0):
        raise ValueError(f"ap_noise must be a finite number of AP points >= 0, got {ap_noise!r}")
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
            seeds=sorted(m["seed"] for m in members), sweep=first.get("sweep"), ap_noise=ap_noise,
            fps_intervals=[i for i in (_fps_interval(m) for m in members) if i is not None],
        )
        for column, read in METRICS:
            values = [v for v in (read(m) for m in members) if v is not None and math.isfinite(v)]
            row.values[column] = values
        rows.append(row)
    for device in dict.fromkeys(row.device for row in rows):
        mark_front([row for row in rows if row.device == device])
    return rows


def beats_beyond_noise(a: Row, b: Row, column: str) -> bool:
    """a's interval on `column` lies wholly above b's: the difference exceeds the noise of both."""
    return a.bounds(column)[0] > b.bounds(column)[1]


def dominates(a: Row, b: Row) -> bool:
    """a beats b beyond noise on one axis (segm AP, FPS) and is not beaten by b beyond noise on the other."""
    return any(beats_beyond_noise(a, b, axis) and not beats_beyond_noise(b, a, other)
               for axis, other in ((ACCURACY, SPEED), (SPEED, ACCURACY)))


def mark_front(rows: list[Row]) -> None:
    """Set row.front (rows of one device): DOMINATED when another row dominates it beyond noise; of the others,
    OPTIMAL when none of them is at least as good on both means and better on one, else TIED (better only
    within noise). Rows without both means stay DOMINATED (nothing to place)."""
    scored = [row for row in rows if row.mean(ACCURACY) is not None and row.mean(SPEED) is not None]
    for row in rows:
        row.front = DOMINATED
    undominated = [row for row in scored if not any(dominates(other, row) for other in scored if other is not row)]
    for row in undominated:
        ap, fps = row.mean(ACCURACY), row.mean(SPEED)
        better_on_means = any(
            other.mean(ACCURACY) >= ap and other.mean(SPEED) >= fps
            and (other.mean(ACCURACY) > ap or other.mean(SPEED) > fps)
            for other in undominated if other is not row
        )
        row.front = TIED if better_on_means else OPTIMAL


# -------------------------------------------------------------------------------------------------- tables


def _cell(row: Row, column: str) -> str:
    """mean ± std over seeds; FPS ± its noise (the larger distance to an end of its interval, so the ± covers
    the interval); segm AP with one seed says n = 1 (and "assumed" where --ap-noise gave its ±)."""
    mean, std = row.mean(column), row.std(column)
    if mean is None:
        return "–"
    decimals = DECIMALS.get(column, 1)
    if column == SPEED:
        std = half_width(mean, row.interval(column))
    single = column == ACCURACY and len(row.values.get(column) or []) == 1
    if single and row.ap_noise is not None:
        return f"{mean:.{decimals}f} ± {row.ap_noise:.{decimals}f} (n = 1, assumed)"
    return (f"{mean:.{decimals}f}" + (f" ± {std:.{decimals}f}" if std is not None else "")
            + (" (n = 1)" if single else ""))


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
            [FRONT_MARKS[row.front], row.model, row.backbone, row.input_size, row.setting,
             str(len(row.seeds))] + [_cell(row, column) for column, _ in METRICS]
            for row in device_rows
        ]
        sections.append(f"### {device}\n\n" + markdown_table(headers, body))
    return "\n\n".join(sections) if sections else "(no finished runs)"


def leaderboard_csv(rows: list[Row]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    header = ["device", "model", "backbone", "input", "setting", "seeds", "run_ids", "pareto", "front"]
    for column, _ in METRICS:
        header += [column, f"{column} std"]
    header += [f"{SPEED} low", f"{SPEED} high"]  # the FPS noise interval (empty: none known)
    writer.writerow(header)
    for row in rows:
        cells = [row.device, row.model, row.backbone, row.input_size, row.setting,
                 " ".join(map(str, row.seeds)), " ".join(row.run_ids), int(row.pareto), row.front]
        for column, _ in METRICS:
            cells += [_csv_number(row.mean(column)), _csv_number(row.std(column))]
        cells += [_csv_number(end) for end in (row.interval(SPEED) or (None, None))]
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

    def spread(self, column: str) -> float | None:
        """The seed-to-seed spread a delta on `column` is judged against: the larger std over seeds of this
        setting and its reference (for FPS in % of the reference's mean, as its delta; for segm AP with one
        seed the --ap-noise assumption); None where neither setting ran with several seeds."""
        if self.reference is None:
            return None
        stds = [std for std in (self.row.spread(column), self.reference.spread(column)) if std is not None]
        if not stds:
            return None
        if column == "FPS":
            theirs = self.reference.mean(column)
            return 100 * max(stds) / theirs if theirs else None
        return max(stds)

    def within_noise(self, column: str) -> bool | None:
        """True when the delta is smaller than the seed-to-seed spread, or (FPS) the two FPS intervals overlap;
        False when it is larger; None where no noise is known (one seed each and no FPS intervals)."""
        delta = None if self.is_baseline else self.delta(column)
        if delta is None:
            return None
        verdicts = []
        spread = self.spread(column)
        if spread is not None:
            verdicts.append(abs(delta) < spread)
        if column == SPEED and self.row.interval(SPEED) and self.reference.interval(SPEED):
            verdicts.append(not beats_beyond_noise(self.row, self.reference, SPEED)
                            and not beats_beyond_noise(self.reference, self.row, SPEED))
        return any(verdicts) if verdicts else None


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
                mark = f" {WITHIN_NOISE_MARK}" if item.within_noise(column) else ""
                cells += [_cell(item.row, column),
                          "" if item.is_baseline else ("n/a" if delta is None else f"{delta:+.{decimals}f}{mark}")]
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
                    + [h for c in ABLATION_COLUMNS for h in (c, f"{c} std", f"delta {c}", f"within noise {c}")])
    from experiments.results import point_label

    for item in items:
        cells = [item.sweep, item.device, point_label(_display(item.row.sweep)), int(item.is_baseline),
                 len(item.row.seeds)]
        for column in ABLATION_COLUMNS:
            within = item.within_noise(column)
            cells += [_csv_number(item.row.mean(column)), _csv_number(item.row.std(column)),
                      _csv_number(None if item.is_baseline else item.delta(column)),
                      "" if within is None else int(within)]
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
    """segm AP against end-to-end FPS (log x), one panel per device: error bars = each row's noise (FPS interval,
    AP std over seeds), ★ the optimal rows joined by the front as a step line, hollow ≈ the tied ones, small
    faint dots the dominated ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    styles = {  # front status -> marker style
        OPTIMAL: {"fmt": "*", "markersize": 13},
        TIED: {"fmt": "o", "markersize": 8, "markerfacecolor": "none", "markeredgewidth": 1.5},
        DOMINATED: {"fmt": "o", "markersize": 5, "alpha": 0.45},
    }

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
            x, y = row.mean(SPEED), row.mean(ACCURACY)
            x_low, x_high = row.bounds(SPEED)
            y_low, y_high = row.bounds(ACCURACY)
            ax.errorbar(x, y, xerr=[[x - x_low], [x_high - x]], yerr=[[y - y_low], [y_high - y]],
                        color=colours[row.model], capsize=3, label=row.model, **styles[row.front])
            # Ablation settings go on a second line, and labels point inwards (right of the points in the left
            # half, left of them in the right half), so they stay inside the axes; kept out of tight_layout, which
            # would otherwise shrink the axes to make room for the long ones.
            name = " ".join(filter(None, (FRONT_MARKS[row.front], row.model, row.backbone)))
            text = "\n".join(part for part in (name, row.setting) if part)
            right_half = math.log(row.mean(SPEED)) > middle
            label = ax.annotate(text, (row.mean(SPEED), row.mean(ACCURACY)), textcoords="offset points",
                                xytext=(-6, 4) if right_half else (6, 4), ha="right" if right_half else "left",
                                fontsize=8)
            label.set_in_layout(False)
        front = sorted((r for r in points if r.pareto), key=lambda r: r.mean(SPEED))
        if front:
            xs = [r.mean(SPEED) for r in front]
            ys = [r.mean(ACCURACY) for r in front]
            ax.step(xs, ys, where="post", color="black", linestyle="--", linewidth=1, label="front (★ optimal)")
        ax.set_xscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")  # 20, 50, 100 rather than 2x10^1
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel("end-to-end FPS (batch 1, log scale)\nbars: FPS 95 % interval, segm AP ± std over seeds "
                      "(no bar: not known, e.g. one seed)", fontsize=9)
        ax.set_ylabel("segm AP (%)")
        ax.set_title(device, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        for status, text in ((TIED, "≈ tied with the front (within noise)"), (DOMINATED, "dominated beyond noise")):
            if any(row.front == status for row in points):
                style = {k: v for k, v in styles[status].items() if k != "fmt"}
                unique[text] = Line2D([], [], marker="o", linestyle="none", color="grey", **style)
        ax.legend(unique.values(), unique.keys(), fontsize=8, loc="best")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


# ----------------------------------------------------------------------------------------------- top level


def write_leaderboard(results: Sequence[str | os.PathLike], out_dir: str | os.PathLike, wandb: str = "off",
                      ap_noise: float | None = None) -> str:
    """Read the records, write leaderboard.md / .csv, ablation.csv and ap_vs_fps.png to `out_dir`; returns the
    Markdown. `ap_noise`: the std (AP points) assumed for a segm AP measured with one seed (None: exact)."""
    records = store.load_records(results)
    rows = build_rows(records, ap_noise=ap_noise)
    ablation = build_ablation(rows)
    out_dir = Path(out_dir)
    one_seed = (f"one seed: ± {ap_noise:g} assumed (--ap-noise)" if ap_noise is not None
                else "\"(n = 1)\": one seed, no spread known, counted as exact")
    parts = ["## Leaderboard: segm AP vs FPS (★ = Pareto-optimal beyond noise, ≈ = tied with the front within "
             "noise)",
             f"FPS ± its 95 % interval from the timed rounds (several seeds: the span of their intervals); "
             f"AP ± std over seeds; {one_seed}.",
             leaderboard_markdown(rows)]
    if ablation:
        parts += ["## Ablations (Δ against the sweep's baseline; Δ FPS in %; ≈ = within noise: smaller than the "
                  "seed-to-seed std, or FPS intervals that overlap)", ablation_markdown(ablation)]
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

    columns = ["device", "model", "backbone", "input", "setting", "seeds", "pareto", "front"] + [c for c, _ in METRICS]
    data = [[row.device, row.model, row.backbone, row.input_size, row.setting, len(row.seeds), row.pareto, row.front]
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
    parser.add_argument("--ap-noise", type=float, default=None, metavar="POINTS",
                        help="std of segm AP (in AP points) assumed for settings run with one seed, in the noise-aware "
                        "front and the ablation's within-noise flags (default: none, such an AP counts as exact)")
    parser.add_argument("--wandb", choices=("off", "offline", "online"), default="off",
                        help="also log the table and plot to wandb (default off)")
    parser.set_defaults(handler=_leaderboard_command)


def _leaderboard_command(args: argparse.Namespace) -> int:
    out_dir = Path(args.out) if args.out else Path(args.results[0]) / "leaderboard"
    try:
        text = write_leaderboard(args.results, out_dir, wandb=args.wandb, ap_noise=args.ap_noise)
    except (store.RecordError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    print(text)
    print(f"wrote {out_dir}/leaderboard.md, leaderboard.csv, ap_vs_fps.png")
    return 0

"""The result record of one run: its fields, and the two ways a run ends (`RunRecord.ok`, `RunRecord.failed`).

`maskbench run` (experiments.run) and a sweep whose run process died before writing its record (experiments.sweep)
both build their records here, so a record has the same keys however its run ended. `to_dict()` is the JSON object
in RESULTS/records/<run_id>.json (the file sorts the keys); experiments.results validates, writes and reads it,
and the leaderboard reads it. Fields a run did not get to (a crash before the model was built) are null.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from experiments.results import RECORD_SCHEMA


@dataclass(kw_only=True)
class RunRecord:
    schema: int = RECORD_SCHEMA
    run_id: str
    config_id: str  # the id without the seed: the runs that differ only by seed
    status: str  # "ok" | "failed" (set by the constructor)
    error: str | None = None  # a failed run's exception type, message and traceback tail (or its log's tail)
    name: str  # a label
    sweep: dict[str, Any] | None = None  # {name, point {axis: value}, baseline {axis: value}}
    model: str | None = None  # the MODELS name
    model_class: str | None = None
    backbone: str | None = None
    pretrained_weights: list[dict[str, Any]] | None = None  # [{name, tag, file, source}] per backbone
    input_size: int | None = None
    dataset: dict[str, Any] | None = None  # {name, val_images, val_ann, num_classes}
    seed: int
    config_files: list[str]
    overrides: list[list[str]]  # dotted (key, value) pairs
    config: dict[str, Any] | None = None  # the resolved LightningCLI config
    git: dict[str, Any] | None = None  # {revision, dirty}
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # {"bbox": {12 COCO numbers}, "segm": ...}
    metrics_step: int | None = None  # the optimizer step the metrics belong to
    # The benchmarks.speed record; its 95 % intervals fps_ci95 (of the mean FPS) and fps_median_ci95 are
    # [low, high] or null, and absent from records written before them.
    speed: dict[str, Any] | None = None
    params: int | None = None
    gflops: float | None = None
    # {time_s, steps, images, images_per_s, resumed_from_step, devices, strategy, precision, ...}
    training: dict[str, Any] | None = None
    benchmark: dict[str, Any] | None = None  # the benchmark settings (benchmarks.settings)
    environment: dict[str, Any] | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    paths: dict[str, Any] = field(default_factory=dict)  # {run_dir, log_dir, checkpoint, results_json}

    @classmethod
    def ok(cls, **fields: Any) -> RunRecord:
        """A run that trained, evaluated (and, on rank 0, benchmarked): `fields` as named above."""
        return cls(status="ok", **fields)

    @classmethod
    def failed(cls, error: str, **fields: Any) -> RunRecord:
        """A run that stopped: `error` says why (its first line is what tables and progress show); `fields` hold
        whatever the run had found out before it stopped."""
        if not error or not error.strip():
            raise ValueError(f"RunRecord.failed: run {fields.get('run_id')!r} needs the error that stopped it")
        return cls(status="failed", error=error, **fields)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

"""Paper configs hold to experiments/configs/RECIPES.md; every YAML under experiments/configs/ parses and builds.

RECIPES.md's tables are the machine-readable recipe: one column per paper config, one row per (setting, config key);
each config is loaded through the real CLI parser (maskbench fit's LightningCLI, defaults resolved) and every cell
must equal the config's value. Editing a config away from the table fails here.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from benchmarks.lightning_cli import run_lightning

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "experiments" / "configs"
RECIPES = CONFIGS / "RECIPES.md"
PAPER_CONFIGS = sorted(str(p.relative_to(CONFIGS)) for p in (CONFIGS / "models").rglob("*.yaml"))
ALL_CONFIGS = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml"))
# What the issue asks every table to show.
REQUIRED_SETTINGS = {
    "input size train", "input size test", "augmentation", "backbone weights", "norm policy", "batch", "lr",
    "warm-up", "steps", "weight decay", "loss weights", "test thresholds", "detections per image",
}
NOT_CHECKED = "—"


@dataclass
class Row:
    setting: str
    key: str
    cells: dict[str, str]  # config path (relative to experiments/configs) -> its cell


def recipe_tables() -> list[list[Row]]:
    """The tables of RECIPES.md whose header reads `| setting | key | <config>... | official | ...`."""
    tables, rows, configs = [], None, []
    for line in RECIPES.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            if rows is not None:
                tables.append(rows)
            rows = None
        elif cells[:2] == ["setting", "key"]:
            configs = cells[2:cells.index("official")]
            rows = []
        elif rows is not None and not set(cells[0]) <= {"-"}:
            key = cells[1].strip("`")
            rows.append(Row(cells[0], key, dict(zip(configs, cells[2:2 + len(configs)]))))
    if rows is not None:
        tables.append(rows)
    return tables


def parsed_config(monkeypatch, *argv: str) -> dict:
    """`maskbench fit ARGV` parsed by the real LightningCLI (defaults resolved), nothing instantiated."""
    from lightning.pytorch.cli import LightningCLI

    monkeypatch.setattr(LightningCLI, "instantiate_classes", lambda self: None)
    cli = run_lightning(["fit", *argv], run=False)
    return cli.config.as_dict()


def lookup(config: dict, key: str):
    index = None
    if key.endswith("[-1]"):
        key, index = key[:-4], -1
    value = config
    for part in key.split("."):
        value = value[part]
    if index is not None:
        value = value[index] if isinstance(value, list) else value
    return value


def test_recipes_cover_every_paper_config_and_every_setting():
    tables = recipe_tables()
    covered = sorted(config for table in tables for config in table[0].cells)
    assert covered == PAPER_CONFIGS
    for table in tables:
        settings = {row.setting for row in table}
        assert REQUIRED_SETTINGS <= settings, f"{list(table[0].cells)}: missing {REQUIRED_SETTINGS - settings}"
        for row in table:
            assert row.key.startswith(("model.init_args.", "data.", "trainer.")), row


@pytest.mark.parametrize("config", PAPER_CONFIGS)
def test_paper_config_matches_its_recipe_row_by_row(config, monkeypatch):
    parsed = parsed_config(monkeypatch, "--config", str(CONFIGS / config))
    rows = [row for table in recipe_tables() for row in table if config in row.cells]
    assert rows, f"{config} has no column in RECIPES.md"
    drift = []
    for row in rows:
        cell = row.cells[config]
        if cell == NOT_CHECKED:
            continue
        expected, actual = yaml.safe_load(cell), lookup(parsed, row.key)
        if actual != expected:
            drift.append(f"{row.key}: config {actual!r}, RECIPES.md {expected!r} ({row.setting})")
    assert not drift, f"{config} drifted from RECIPES.md:\n  " + "\n  ".join(drift)


# ------------------------------------------------------------------------------------ every YAML builds

TINY = {
    "models.mask_rcnn.MaskRCNN": dict(
        backbone="resnet10t", out_indices=[1, 2, 3, 4], pretrained=False, pretrained_path=None, norm="bn",
        frozen_stages=0, fpn_channels=16, min_size=[48, 64], max_size=64, box_head_width=16, mask_head_layers=1,
        mask_head_channels=8),
    "models.centermask.CenterMask": dict(
        backbone="resnet10t", out_indices=[2, 3, 4], ese_every_block=False, pretrained=False, pretrained_path=None,
        norm="bn", frozen_stages=0, fpn_channels=16, fcos_num_convs=1, fcos_norm_groups=4, mask_head_convs=1,
        mask_head_channels=8, maskiou_convs=1, maskiou_channels=8, min_size=[48, 64], max_size=64),
    "models.istr.ISTR": dict(
        backbone="resnet10t", out_indices=[1, 2, 3, 4], pretrained=False, pretrained_path=None, norm="bn",
        frozen_stages=0, fpn_channels=16, num_heads=2, num_queries=4, num_stages=1, dim_feedforward=16,
        dynamic_dim=4, min_size=[48, 64], max_size=64),
    "models.yolact.YOLACT": dict(
        backbone="resnet10t", out_indices=[2, 3, 4], pretrained=False, pretrained_path=None, input_size=64,
        anchor_scales=[8, 16, 32, 64, 128], fpn_channels=16, proto_channels=8, head_channels=8, num_prototypes=4),
}
CPU_TRAINER = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto"]


def _model_class(config: str) -> str | None:
    model = (yaml.safe_load((CONFIGS / config).read_text()) or {}).get("model") or {}
    return model.get("class_path")


@pytest.mark.parametrize("config", ALL_CONFIGS)
def test_every_yaml_under_configs_parses_and_builds_with_tiny_settings(config, small_synthetic_root, tmp_path):
    from models.base import InstanceSegmentationModule

    files = [str(CONFIGS / config)]
    model_class = _model_class(config)
    if model_class is None:  # a data or trainer config: built with the Mask R-CNN quickstart model
        files.insert(0, str(CONFIGS / "quickstart" / "mask_rcnn.yaml"))
        model_class = "models.mask_rcnn.MaskRCNN"
    assert model_class in TINY, f"{config}: no tiny settings for {model_class}"
    overrides = [f"--model.init_args.{name}={value if isinstance(value, str) else json.dumps(value)}"
                 for name, value in TINY[model_class].items()]
    argv = ["fit", *(arg for f in files for arg in ("--config", f)), *overrides, *CPU_TRAINER,
            "--data.root", str(small_synthetic_root), "--data.num_workers", "0",
            "--trainer.default_root_dir", str(tmp_path)]
    cli = run_lightning(argv, run=False)
    module, name = model_class.rsplit(".", 1)
    assert isinstance(cli.model, InstanceSegmentationModule) and type(cli.model) is getattr(
        __import__(module, fromlist=[name]), name)
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes


SWEEPS = sorted(p.name for p in (REPO_ROOT / "experiments" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_sweep_plans_runs_whose_configs_parse(sweep, monkeypatch):
    from experiments.sweep import load_sweep, plan

    monkeypatch.chdir(REPO_ROOT)
    seen = set()
    for run in plan(load_sweep(REPO_ROOT / "experiments" / "sweeps" / sweep)):
        # one parse per combination of config files and override names: the values of an axis share a type
        key = (tuple(run.configs), tuple(name for name, _ in run.overrides))
        if key in seen:
            continue
        seen.add(key)
        files = [Path(c).resolve() for c in run.configs]
        argv = [arg for c in run.configs for arg in ("--config", c)]
        argv += [f"--{name}={value}" for name, value in run.overrides]
        parsed_config(monkeypatch, *argv)


# ------------------------------------------------------------------------ a paper config through `maskbench fit`

def _tiny_fit_argv(config: str, root, tmp_path) -> list[str]:
    model_class = _model_class(config)
    return ["fit", "--config", str(CONFIGS / config),
            *(f"--model.init_args.{name}={value if isinstance(value, str) else json.dumps(value)}"
              for name, value in TINY[model_class].items()),
            *CPU_TRAINER, "--data.root", str(root), "--data.num_workers", "0", "--data.batch_size", "2",
            "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path)]


def test_fit_of_a_paper_config_prints_the_scaled_schedule(small_synthetic_root, tmp_path, capsys):
    from experiments.cli import main

    # Mask R-CNN 1x at 1 device x 2 images against its reference of 16: lr / 8, every step count x 8; the
    # config's max_steps is overridden to 1 reference step, i.e. 8 steps at this batch.
    argv = _tiny_fit_argv("models/mask_rcnn/r50_fpn.yaml", small_synthetic_root, tmp_path)
    assert main([*argv, "--trainer.max_steps", "1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "linear scaling" in line]
    assert lines == ["[MaskRCNN] linear scaling: 1 device(s) x 2 images x 1 accumulated = 2 per step vs reference 16 "
                     "(x0.125): lr 0.02 -> 0.0025, lr_steps [60000, 80000] -> [480000, 640000], warmup_steps 1000 -> "
                     "8000, max_steps 1 -> 8"]


def test_fit_of_yolact_refuses_batchnorm_on_two_images_per_device(small_synthetic_root, tmp_path):
    from experiments.cli import main

    argv = _tiny_fit_argv("models/yolact/r50_550.yaml", small_synthetic_root, tmp_path)
    with pytest.raises(ValueError, match=r"BatchNorm layers train on 2 images \(per device\).*minimum of 6"):
        main([*argv, "--trainer.max_steps", "1"])

"""The `maskbench` command.

Training-side verbs go through Lightning's CLI so every run saves its resolved config:

    maskbench fit|validate|test|predict --config FILE.yaml [--config MORE.yaml] [--data.root DIR] [--x.y value]

The model is chosen by the config (`model: {class_path: models.mask_rcnn.MaskRCNN, init_args: ...}` or the short
class name `--model MaskRCNN`); `data.num_classes` is read from the dataset and linked into the model.

The other verbs are plain argparse sub-commands:

    maskbench data synth --out DIR [--num-train N --num-val M --image-size S --seed K --style simple|textured]
    maskbench data check --root DIR [--split train|val] [--strict] [--json]
    maskbench eval-json --ann ANN.json --results RESULTS.json [--json]
    maskbench convert FORMAT IN OUT
    maskbench demo

Bad input (a `DatasetError`) ends every verb with one line `error: ...` and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from datamodules.coco import DatasetError

LIGHTNING_VERBS = ("fit", "validate", "test", "predict")

# Explicit table of checkpoint converters: format name -> "module:function(in_path, out_path)".
# Imported lazily so `maskbench data ...` does not pay for building models.
CONVERTERS = {
    "torchvision-maskrcnn": "models.mask_rcnn.convert:convert_torchvision_maskrcnn",
    "yolact-official": "models.yolact.convert:convert_yolact_official",
    "centermask2": "models.centermask.convert:convert_centermask2",
    "istr-official": "models.istr.convert:convert_istr_official",
}

# Explicit table of verbs that live in their own module: verb -> module. The module defines
# `configure_parser(parser)`, which adds its arguments and `parser.set_defaults(handler=...)`; the handler returns the
# exit status. Modules keep heavy imports (torch, models) inside their handlers so building this parser stays cheap.
VERB_MODULES: dict[str, str] = {
    "bench": "benchmarks.bench_cli",
    "run": "experiments.run",
    "sweep": "experiments.sweep",
    "leaderboard": "experiments.leaderboard",
    "quickstart": "experiments.quickstart",
    "fit-codec": "experiments.fit_codec",
}

REPO_ROOT = Path(__file__).resolve().parent.parent
QUICKSTART_DIR = Path(__file__).resolve().parent / "configs" / "quickstart"


def run_lightning(argv: Sequence[str], run: bool = True):
    """Run Lightning's CLI on `argv` (verb first); returns the LightningCLI object."""
    from lightning.pytorch.cli import LightningCLI

    import models  # noqa: F401  (imports every architecture so short class names resolve)
    from datamodules.coco import CocoDataModule
    from models.base import InstanceSegmentationModule

    class MaskbenchCLI(LightningCLI):
        def add_arguments_to_parser(self, parser):
            # The class count is a property of the dataset, not a model setting.
            parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    return MaskbenchCLI(
        InstanceSegmentationModule,
        CocoDataModule,
        subclass_mode_model=True,
        args=list(argv) if run else list(argv[1:]),
        run=run,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


# --------------------------------------------------------------------------------------------- data


def _data_synth(args) -> int:
    from datamodules.synthetic import write_synthetic_dataset

    out = write_synthetic_dataset(
        args.out, num_train=args.num_train, num_val=args.num_val, image_size=args.image_size, seed=args.seed,
        style=args.style,
    )
    print(f"wrote synthetic COCO-format dataset to {out}")
    return 0


def format_check_summary(summary: dict, where: str) -> str:
    lines = [
        f"dataset        {where}",
        f"images         {summary['images']}",
        f"instances      {summary['instances']}  (crowd {summary['crowd']})",
        f"categories     {summary['categories']}",
        f"empty images   {summary['empty_images']}",
    ]
    skipped = summary["skipped"]
    if skipped:
        lines.append("skipped        " + ", ".join(f"{reason}: {n}" for reason, n in sorted(skipped.items())))
    else:
        lines.append("skipped        none")
    return "\n".join(lines)


def _data_check(args) -> int:
    from datamodules.check import check_dataset, resolve_split

    image_dir, ann_file = resolve_split(args.root, args.split)
    summary = check_dataset(image_dir, ann_file, strict=args.strict, progress=not args.json)
    if args.json:
        print(json.dumps(summary, sort_keys=False))
    else:
        print(format_check_summary(summary, f"{ann_file}"))
    return 0


# ---------------------------------------------------------------------------------------- eval-json


def _eval_json(args) -> int:
    from datamodules.evaluation import evaluate_results_file

    metrics = evaluate_results_file(args.ann, args.results)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(format_metrics_table(metrics))
    return 0


def format_metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    """Rows = iou types, columns = the 12 COCO numbers (AP as percentages, as papers print them)."""
    keys = list(next(iter(metrics.values())).keys())
    header = "type  " + " ".join(f"{k:>6}" for k in keys)
    rows = [header]
    for iou_type, stats in metrics.items():
        rows.append(f"{iou_type:<5} " + " ".join(f"{100 * stats[k]:6.2f}" for k in keys))
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------ convert


def _load_converter(name: str) -> Callable[[str, str], object]:
    module_name, function_name = CONVERTERS[name].split(":")
    return getattr(importlib.import_module(module_name), function_name)


def _convert(args) -> int:
    options = {}
    if args.input_size is not None:
        if args.format != "yolact-official":
            raise SystemExit(f"maskbench convert: --input-size applies to yolact-official only, not {args.format}")
        options["input_size"] = args.input_size
    out = _load_converter(args.format)(args.input, args.output, **options)
    print(f"wrote {out or args.output}")
    return 0


# --------------------------------------------------------------------------------------------- demo


def _demo(args) -> int:
    """An alias of `maskbench quickstart` (experiments/quickstart.py) with its defaults."""
    from experiments.quickstart import quickstart

    return quickstart(args.out)


# --------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskbench",
        description="Instance-segmentation benchmarking. Training verbs: maskbench fit|validate|test|predict "
        "--config FILE.yaml (Lightning CLI; see `maskbench fit --help`).",
    )
    verbs = parser.add_subparsers(dest="verb", required=True)

    data = verbs.add_parser("data", help="make or check a COCO-format dataset")
    data_verbs = data.add_subparsers(dest="data_verb", required=True)
    synth = data_verbs.add_parser("synth", help="write the synthetic COCO-format dataset")
    synth.add_argument("--out", required=True)
    synth.add_argument("--num-train", type=int, default=200)
    synth.add_argument("--num-val", type=int, default=50)
    synth.add_argument("--image-size", type=int, default=128)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--style", default="simple", choices=["simple", "textured"],
                       help="simple: bright shapes on dark gradients (default); textured: the harder look")
    synth.set_defaults(handler=_data_synth)
    check = data_verbs.add_parser("check", help="load every record of a split through the dataset code")
    check.add_argument("--root", required=True, help="dataset root in the COCO 2017 layout")
    check.add_argument("--split", default="train", choices=["train", "val"])
    check.add_argument("--strict", action="store_true", help="degenerate instances are errors, not skips")
    check.add_argument("--json", action="store_true")
    check.set_defaults(handler=_data_check)

    ev = verbs.add_parser("eval-json", help="COCO metrics of a standard results file")
    ev.add_argument("--ann", required=True)
    ev.add_argument("--results", required=True)
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(handler=_eval_json)

    conv = verbs.add_parser("convert", help="turn another codebase's checkpoint into a maskbench checkpoint")
    conv.add_argument("format", choices=sorted(CONVERTERS))
    conv.add_argument("input")
    conv.add_argument("output")
    conv.add_argument("--input-size", type=int, default=None,
                      help="yolact-official: the square input size the weights were trained at (default: from the "
                           "file name, yolact_im700_* -> 700, yolact_im400_* -> 400, else 550)")
    conv.set_defaults(handler=_convert)

    demo = verbs.add_parser("demo", help="alias of `maskbench quickstart`: every quickstart model trained, evaluated, "
                                         "benchmarked; leaderboard printed")
    demo.add_argument("--out", default="results/quickstart")
    demo.set_defaults(handler=_demo)

    for verb, module_name in VERB_MODULES.items():
        module = importlib.import_module(module_name)
        summary = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else None
        module.configure_parser(verbs.add_parser(verb, help=summary, description=module.__doc__,
                                                 formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in LIGHTNING_VERBS:
            if argv[0] == "predict":  # --visualize OUT_DIR: prediction overlays as PNG (experiments/visualize.py)
                from experiments.visualize import visualize_args

                argv = visualize_args(argv)
            run_lightning(argv)
            return 0
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except DatasetError as err:
        print(f"error: {one_line_message(err)}", file=sys.stderr)
        return 2


def one_line_message(err: DatasetError) -> str:
    """The dataset's own one-line message, also when a DataLoader worker raised it: PyTorch re-raises a worker's
    exception with the worker's whole traceback as its message, whose last line is `<type>: <message>`."""
    text = str(err).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


if __name__ == "__main__":
    sys.exit(main())

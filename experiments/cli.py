"""The `maskbench` command.

Training-side verbs go through Lightning's CLI (benchmarks/lightning_cli.py), so every run saves its resolved config:

    maskbench fit|validate|test|predict --config FILE.yaml [--config MORE.yaml] [--data.root DIR] [--x.y value]
    maskbench validate|test|predict ... --results_json FILE     (a standard COCO results file)

The other verbs are plain argparse sub-commands:

    maskbench data synth --out DIR [--num-train N --num-val M --image-size S --seed K --style simple|textured]
    maskbench data check --root DIR [--split train|val] [--strict] [--json]
    maskbench eval-json --ann ANN.json --results RESULTS.json [--segm-area mask|box] [--json]
    maskbench convert FORMAT IN OUT
    maskbench demo | quickstart | run | sweep | leaderboard | bench | fit-codec

Bad input (a `DatasetError`, a `ConfigurationError`) ends every verb with `error: ...` and exit status 2;
`--verbose` anywhere on the line (or MASKBENCH_VERBOSE=1) shows the full traceback instead.

Building this parser stays cheap (no torch, no models): every verb imports what it needs inside its handler.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Callable, Sequence

from datamodules.errors import ConfigurationError, DatasetError

LIGHTNING_VERBS = {
    "fit": "train a model (Lightning CLI: maskbench fit --help)",
    "validate": "COCO metrics of a model on the val split; --results_json writes its detections",
    "test": "the same on the test split (COCO: val); --results_json writes its detections",
    "predict": "run a model over the val split: --results_json FILE and/or --visualize DIR, streamed",
}
VERBOSE_ENV = "MASKBENCH_VERBOSE"

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
# exit status. Modules import nothing heavy at the top (tests/test_imports.py keeps it so).
VERB_MODULES: dict[str, str] = {
    "bench": "benchmarks.bench_cli",
    "run": "experiments.run",
    "sweep": "experiments.sweep",
    "leaderboard": "experiments.leaderboard",
    "quickstart": "experiments.quickstart",
    "fit-codec": "experiments.fit_codec",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (their usage blocks), and the default of every option that takes a value after its
    help (argparse's ArgumentDefaultsHelpFormatter, less its "(default: None)" on required options and its
    "(default: False)" / "(default: True)" on flags, which say nothing or the opposite of what the flag does, and
    on help that already names its default)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.nargs == 0 or action.required or action.default in (None, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


# --------------------------------------------------------------------------------------------- data


def _data_synth(args) -> int:
    from datamodules.synthetic import write_synthetic_dataset

    out = write_synthetic_dataset(
        args.out, num_train=args.num_train, num_val=args.num_val, image_size=args.image_size, seed=args.seed,
        style=args.style,
    )
    print(f"wrote synthetic COCO-format dataset to {out}")
    return 0


def _data_check(args) -> int:
    from datamodules.check import check_dataset, format_check_summary, resolve_split

    image_dir, ann_file = resolve_split(args.root, args.split)
    summary = check_dataset(image_dir, ann_file, strict=args.strict, progress=not args.json)
    if args.json:
        print(json.dumps(summary, sort_keys=False))
    else:
        print(format_check_summary(summary, f"{ann_file}"))
    return 0


# ---------------------------------------------------------------------------------------- eval-json

SEGM_AREA_NOTE = {
    "mask": "segm APs/APm/APl: objects ranged by their mask area (maskbench and detectron2; --segm-area box for "
            "plain pycocotools' box area)",
    "box": "segm APs/APm/APl: objects ranged by their box area where a record has a bbox (plain pycocotools on "
           "the file as given)",
}


def _eval_json(args) -> int:
    from datamodules.evaluation import evaluate_results_file

    metrics = evaluate_results_file(args.ann, args.results, segm_area=args.segm_area)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(format_metrics_table(metrics))
        if "segm" in metrics:
            print(SEGM_AREA_NOTE[args.segm_area])
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
    if not os.path.isfile(args.input):
        raise DatasetError(f"{args.input}: checkpoint file not found")
    options = {}
    if args.input_size is not None:
        if args.format != "yolact-official":
            raise DatasetError(f"--input-size applies to yolact-official only, not {args.format}")
        options["input_size"] = args.input_size
    converter = _load_converter(args.format)
    try:
        out = converter(args.input, args.output, **options)
    except (ValueError, KeyError, OSError, RuntimeError) as err:  # a file that is not a `format` checkpoint
        raise DatasetError(f"{args.input}: cannot be converted as {args.format}: {type(err).__name__}: "
                           f"{' '.join(str(err).split())}") from err
    print(f"wrote {out or args.output}")
    return 0


# --------------------------------------------------------------------------------------------- demo


def _demo(args) -> int:
    """An alias of `maskbench quickstart` (experiments/quickstart.py) with its defaults."""
    from experiments.quickstart import quickstart

    return quickstart(args.results)


# --------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskbench", formatter_class=HelpFormatter,
        description="Instance-segmentation benchmarking: Mask R-CNN, CenterMask, YOLACT and ISTR on one data "
        "pipeline, one evaluator and one speed protocol.",
        epilog="fit|validate|test|predict are Lightning's CLI: `maskbench fit --help` lists their options. "
        "Add --verbose (or set MASKBENCH_VERBOSE=1) to see the traceback behind an `error:` line.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, summary in LIGHTNING_VERBS.items():  # listed here; main() hands them to Lightning's CLI
        verbs.add_parser(verb, help=summary, add_help=False)

    data = verbs.add_parser("data", help="make or check a COCO-format dataset", formatter_class=HelpFormatter)
    data_verbs = data.add_subparsers(dest="data_verb", required=True, metavar="{synth,check}")
    synth = data_verbs.add_parser("synth", help="write the synthetic COCO-format dataset", formatter_class=HelpFormatter,
                                  description="Write the seeded synthetic COCO-format dataset (the embedded "
                                  "default's generator):\nOUT/annotations/instances_{train,val}2017.json and the "
                                  "images.")
    synth.add_argument("--out", required=True, metavar="DIR", help="dataset root to write (COCO 2017 layout)")
    synth.add_argument("--num-train", type=int, default=200, help="training images")
    synth.add_argument("--num-val", type=int, default=50, help="validation images")
    synth.add_argument("--image-size", type=int, default=128, help="side of the square images, pixels")
    synth.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same dataset")
    synth.add_argument("--style", default="simple", choices=["simple", "textured"],
                       help="simple: bright shapes on dark gradients; textured: the harder look")
    synth.set_defaults(handler=_data_synth)
    check = data_verbs.add_parser("check", help="load every record of a split through the dataset code",
                                  formatter_class=HelpFormatter)
    check.add_argument("--root", required=True, metavar="DIR", help="dataset root in the COCO 2017 layout")
    check.add_argument("--split", default="train", choices=["train", "val"], help="which split to load")
    check.add_argument("--strict", action="store_true", help="degenerate instances are errors, not skips")
    check.add_argument("--json", action="store_true", help="print the summary as JSON (and no progress bar)")
    check.set_defaults(handler=_data_check)

    ev = verbs.add_parser(
        "eval-json", help="COCO metrics of a standard results file", formatter_class=HelpFormatter,
        description="COCO bbox and segm metrics (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl)\n"
        "of a standard COCO results file against an annotation file, every image of which counts.\n\n"
        "--segm-area: plain pycocotools ranges a segm detection small/medium/large by its BOX area when its\n"
        "record also has a bbox; maskbench (like detectron2) uses the MASK area: the default here, and what\n"
        "`maskbench validate` reports. --segm-area box gives exactly plain pycocotools on the file as given.",
    )
    ev.add_argument("--ann", required=True, metavar="ANN.json", help="the dataset's COCO annotation file")
    ev.add_argument("--results", "--results-json", dest="results", required=True, metavar="RESULTS.json",
                    help="the detections: a JSON list of {image_id, category_id, score, bbox, segmentation}")
    ev.add_argument("--segm-area", choices=["mask", "box"], default="mask",
                    help="what ranges segm detections into small/medium/large: mask area (maskbench, detectron2) "
                    "or box area (plain pycocotools)")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON ({iou_type: {stat: value}})")
    ev.set_defaults(handler=_eval_json)

    conv = verbs.add_parser(
        "convert", help="turn another codebase's checkpoint into a maskbench checkpoint", formatter_class=HelpFormatter,
        description="Convert an official checkpoint into a maskbench checkpoint (a Lightning .ckpt with the model's "
        "hyper-parameters), loadable with --ckpt_path or Model.load_from_checkpoint.",
    )
    conv.add_argument("format", choices=sorted(CONVERTERS), help="the checkpoint's codebase")
    conv.add_argument("input", help="the checkpoint file to read")
    conv.add_argument("output", help="the maskbench checkpoint to write (.ckpt)")
    conv.add_argument("--input-size", type=int, default=None,
                      help="yolact-official: the square input size the weights were trained at (default: from the "
                           "file name, yolact_im700_* -> 700, yolact_im400_* -> 400, else 550)")
    conv.set_defaults(handler=_convert)

    demo = verbs.add_parser("demo", help="alias of `maskbench quickstart`: every quickstart model trained, evaluated, "
                                         "benchmarked; leaderboard printed", formatter_class=HelpFormatter)
    demo.add_argument("--results", default="results/quickstart", metavar="DIR",
                      help="results folder: records/, runs/, leaderboard/")
    demo.set_defaults(handler=_demo)

    for verb, module_name in VERB_MODULES.items():
        module = importlib.import_module(module_name)
        summary = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else None
        module.configure_parser(verbs.add_parser(verb, help=summary, description=module.__doc__,
                                                 formatter_class=HelpFormatter))
    return parser


def parse_command(argv: Sequence[str]) -> argparse.Namespace:
    """The arguments of a non-Lightning verb. `run` hands the options it does not know to Lightning's CLI, in their
    order, as `overrides`; every other verb rejects them."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if not getattr(args, "passes_overrides", False):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.overrides = list(args.overrides) + unknown
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv or os.environ.get(VERBOSE_ENV, "") not in ("", "0")
    argv = [token for token in argv if token != "--verbose"]
    try:
        if argv and argv[0] in LIGHTNING_VERBS:
            from benchmarks.lightning_cli import run_lightning

            run_lightning(argv)
            return 0
        args = parse_command(argv)
        return args.handler(args)
    except (DatasetError, ConfigurationError) as err:
        if verbose:
            raise
        print(f"error: {one_line_message(err)}", file=sys.stderr)
        if isinstance(err, ConfigurationError):
            print(f"(--verbose or {VERBOSE_ENV}=1 shows the traceback)", file=sys.stderr)
        return 2


def one_line_message(err: Exception) -> str:
    """The error's own one-line message, also when a DataLoader worker raised it: PyTorch re-raises a worker's
    exception with the worker's whole traceback as its message, whose last line is `<type>: <message>`."""
    text = str(err).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text.splitlines()[0] if text else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())

"""maskbench's LightningCLI: the `fit|validate|test|predict` verbs, and the builder `run` and `bench` use.

It lives in the benchmarks layer, the lowest that both the runner (experiments/) and the benchmarks' own front ends
(`maskbench bench`, the training-throughput benchmark) reach, so that configs become objects in one place and
imports still run one way; it needs only models and datamodules (its output writers live in datamodules/).

    maskbench fit|validate|test|predict --config FILE.yaml [--config MORE.yaml] [--data.root DIR] [--x.y value]
    maskbench validate|test ... [--results_json FILE]
    maskbench predict ...       [--results_json FILE] [--visualize DIR [--score_thresh 0.3]]

The model is chosen by the config (`model: {class_path: models.mask_rcnn.MaskRCNN, init_args: ...}` or the short
class name `--model MaskRCNN`); `data.num_classes` is read from the dataset and linked into the model.
`--results_json FILE` writes the evaluated images' detections as a standard COCO results file
(datamodules/results_writer.py); `--visualize DIR` writes prediction overlays (datamodules/visualize.py). Both stream:
`predict` keeps no predictions in memory (its `return_predictions` defaults to false here).

A configuration that cannot be parsed or built (an unknown option, a bad value, a constructor that refuses its
arguments: missing weights, a bad hyper-parameter, an unknown backbone, a codec file that does not fit) raises
`ConfigurationError`, whose message is one line naming the option or the component and the constructor's own words;
jsonargparse's wrapping ("Does not validate against any of the Union subtypes", the whole resolved namespace) is
taken off. `maskbench` prints it as `error: ...` with exit status 2; `--verbose` or MASKBENCH_VERBOSE=1 shows the
full traceback instead.
"""
from __future__ import annotations

import os
import re
import traceback
from typing import Any, Optional, Sequence

from jsonargparse import ArgumentError
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI

from datamodules.errors import ConfigurationError

# The subcommands that evaluate or predict, and so can write a results file.
RESULTS_VERBS = ("validate", "test", "predict")


class MaskbenchCLI(LightningCLI):
    """LightningCLI with maskbench's links, output options and one-line configuration errors (module docstring)."""

    def add_arguments_to_parser(self, parser) -> None:
        # The class count is a property of the dataset, not a model setting.
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any):
        # LightningCLI's per-subcommand parser (the one place that knows the subcommand), plus maskbench's outputs.
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in RESULTS_VERBS:
            parser.add_argument(
                "--results_json", "--results-json", type=Optional[str], default=None,
                help="write the detections as a standard COCO results file (image_id, category_id, score, bbox "
                "[x,y,w,h], segmentation as compressed RLE), streamed, gathered across processes, written atomically",
            )
        if subcommand == "predict":
            parser.add_argument("--visualize", type=Optional[str], default=None,
                                help="write a PNG per image to this folder: ground truth | detections")
            parser.add_argument("--score_thresh", "--score-thresh", type=float, default=0.3,
                                help="lowest score drawn by --visualize")
            # Predictions go to the writers as they come; Lightning's default would keep every full-resolution mask.
            parser.set_defaults(return_predictions=False)
        return parser

    def parse_arguments(self, parser, args) -> None:
        """Parse `args` (always given explicitly, so LightningCLI's warning about sys.argv holding tokens too does
        not apply); a parse error becomes a ConfigurationError."""
        try:
            self.config = parser.parse_args(args)
        except ArgumentError as err:
            raise ConfigurationError(parse_error_message(err)) from err

    def before_instantiate_classes(self) -> None:
        # Lightning looks for the checkpoint only after building everything, and then raises from deep inside.
        path = self.config[self.subcommand].get("ckpt_path") if self.subcommand else None
        if isinstance(path, str) and path not in ("last", "best", "hpc") and "://" not in path \
                and not path.startswith("registry") and not os.path.isfile(path):
            raise ConfigurationError(f"invalid --ckpt_path: {path}: checkpoint file not found")

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as err:  # noqa: BLE001 — whatever a constructor raised, said in one line
            raise ConfigurationError(build_error_message(err)) from err

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.extend(self._output_callbacks())
        return trainer

    def _output_callbacks(self) -> list[Callback]:
        if self.subcommand not in RESULTS_VERBS:
            return []
        options = self.config[self.subcommand]
        callbacks: list[Callback] = []
        if options.get("results_json"):
            from datamodules.results_writer import CocoResultsWriter

            callbacks.append(CocoResultsWriter(options.results_json))
        if self.subcommand == "predict" and options.get("visualize"):
            from datamodules.visualize import PredictionOverlayWriter

            callbacks.append(PredictionOverlayWriter(options.visualize, options.score_thresh))
        return callbacks


def run_lightning(argv: Sequence[str], run: bool = True) -> MaskbenchCLI:
    """Lightning's CLI on `argv` (verb first); returns the LightningCLI object. `run=False` parses `argv[1:]`
    without subcommands and builds the model, datamodule and trainer without running anything (run, bench).

    Raises ConfigurationError for a configuration that cannot be parsed or built, and for a codec that turns out
    unusable while running (ISTR without a fitted codec in validate/test/predict); other errors propagate.
    """
    import models  # noqa: F401  (imports every architecture so short class names resolve)
    from datamodules.coco import CocoDataModule
    from models.base import InstanceSegmentationModule
    from models.istr.mask_codec import CodecError

    try:
        return MaskbenchCLI(
            InstanceSegmentationModule,
            CocoDataModule,
            subclass_mode_model=True,
            args=list(argv) if run else list(argv[1:]),
            run=run,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_kwargs={"exit_on_error": False},
            seed_everything_default=0,  # Lightning's own default (True) seeds 0 too, with a warning on every run
        )
    except CodecError as err:
        raise ConfigurationError(f"model: {err}") from err


# ------------------------------------------------------------------------------------------ error messages


# jsonargparse's scaffolding around the one informative line of a parse error.
_PARSE_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value",
                "Expected a <class 'NoneType'>", "Expected a path but")


def parse_error_message(err: BaseException) -> str:
    """jsonargparse's parse error as one line: the option (its nested "Parser key" names), the class it was
    given, and the first line that says what is wrong, e.g. `invalid --model.init_args.lr
    (models.mask_rcnn.MaskRCNN): Expected a <class 'float'>. Got value: abc`."""
    keys: list[str] = []
    class_path = None
    problem = None
    for line in str(err).splitlines():
        text = line.strip().removeprefix("- ").strip()
        key = re.match(r'Parser key "([^"]+)":\s*(.*)', text)
        if key:
            keys.append(key[1])
            text = key[2]
        given = re.match(r"Problem with given class_path '([^']+)':\s*(.*)", text)
        if given:
            class_path, text = given[1], given[2]
        if text and not text.startswith(_PARSE_NOISE):
            problem = text
            break
    problem = problem or " ".join(str(err).split())
    if not keys:
        return f"invalid configuration: {problem}"
    option = keys[0] + "".join(f".init_args.{key}" if class_path else f".{key}" for key in keys[1:])
    return f"invalid --{option}" + (f" ({class_path})" if class_path else "") + f": {problem}"


def build_error_message(err: BaseException) -> str:
    """What a constructor raised while the config was built, as `<component> (<class>): <its message>`.

    jsonargparse wraps a constructor's exception (`raise ... from`) in a "Does not validate against any of the Union
    subtypes" error that repeats the whole namespace: the innermost cause is the constructor's own. The component
    is the LightningModule / LightningDataModule / Trainer / Callback whose `__init__` was running when it raised.
    """
    root = err
    while root.__cause__ is not None:
        root = root.__cause__
    message = str(root).strip().splitlines()[0] if str(root).strip() else type(root).__name__
    if not isinstance(root, (ValueError, OSError)):  # their messages speak for themselves; others need the type
        message = f"{type(root).__name__}: {message}"
    component = _component_of(root)
    return f"{component}: {message}" if component else message


_COMPONENTS = ((LightningModule, "model"), (LightningDataModule, "data"), (Trainer, "trainer"), (Callback, "callback"))


def _component_of(err: BaseException) -> str | None:
    """'model (models.mask_rcnn.MaskRCNN)' for an exception raised inside that object's constructor, else None."""
    for frame, _ in reversed(list(traceback.walk_tb(err.__traceback__))):
        if frame.f_code.co_name != "__init__":
            continue
        owner = frame.f_locals.get("self")
        for base, name in _COMPONENTS:
            if isinstance(owner, base):
                cls = type(owner)
                return f"{name} ({cls.__module__}.{cls.__qualname__})"
    return None

"""InstanceSegmentationModule: what every architecture shares — steps, evaluation, optimizer, schedule, metrics file.

A subclass implements two methods (the model contract):
- `forward(images: list[Tensor[3,H,W]]) -> list[Prediction]`, Prediction = dict(boxes float32 [K,4] xyxy pixels of
  the input image, scores float32 [K], labels int64 [K] contiguous, masks bool [K,H,W]) — the same in train and eval
  mode;
- `compute_losses(images, targets) -> dict[str, Tensor]` of scalar `loss_*` terms, working in train AND eval mode
  (so validation loss exists); crowd targets (iscrowd=1) are excluded by the model.
It may override `predict_and_losses` to share one backbone pass between the two during validation.

Constructor arguments are plain values; a subclass takes its own and forwards `**kwargs` here, and
`save_hyperparameters()` below records the subclass's and these together, so `Subclass.load_from_checkpoint(path)`
rebuilds the model and LightningCLI / jsonargparse see these arguments through the subclass's `**kwargs`.

Gradient clipping is not a model hyper-parameter: use Lightning's `Trainer(gradient_clip_val=...)`
(`--trainer.gradient_clip_val` on the CLI).
"""
import bisect
import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from timm.optim import param_groups_weight_decay
from torch import Tensor

from datamodules.files import write_json_atomic

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("multistep", "cosine", "constant")
METRICS_FILE = "metrics.json"
_EVAL_PREFIXES = ("val/", "test/")


class InstanceSegmentationModule(L.LightningModule, ABC):
    """Base LightningModule of the instance-segmentation architectures.

    Args:
        num_classes: number of object classes (contiguous labels 0..num_classes-1, no background).
        optimizer: "sgd" (with `momentum`) or "adamw".
        lr: peak learning rate (after warm-up).
        momentum: SGD momentum (unused by AdamW).
        weight_decay: applied to weights only; biases and norm-layer parameters (every parameter with ndim <= 1)
            get none, the standard practice (timm's param_groups_weight_decay).
        lr_schedule: "multistep" (multiply by `lr_gamma` at each of `lr_steps`), "cosine" (to 0 at the trainer's
            estimated_stepping_batches) or "constant".
        lr_steps: optimizer steps at which "multistep" decays the learning rate (increasing).
        lr_gamma: multistep decay factor.
        warmup_steps: linear warm-up length in optimizer steps, from `warmup_factor * lr` to `lr`; it multiplies
            the schedule (detectron2's convention), and 0 disables it.
        warmup_factor: learning-rate factor at step 0 of the warm-up.
        evaluate: run the COCO evaluator during validation / test (False: losses only).
        loss_weights: multipliers of named loss terms in the total, e.g. {"loss_box": 2.0}; terms not named keep
            weight 1. Each model's own weights (the papers') are already inside its terms: these are for ablations
            and re-balancing. The logged terms stay unweighted; `train/loss` is the weighted total.

    The schedule is stepped after every optimizer step. A non-finite training loss skips that optimizer step (the
    weights and optimizer state stay as they were; counted in `skipped_steps`, logged as `train/skipped_steps`);
    the decision is shared by all processes so data-parallel replicas stay identical.
    """

    def __init__(
        self,
        num_classes: int,
        optimizer: str = "sgd",
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        lr_schedule: str = "multistep",
        lr_steps: list[int] | None = None,
        lr_gamma: float = 0.1,
        warmup_steps: int = 0,
        warmup_factor: float = 0.001,
        evaluate: bool = True,
        loss_weights: dict[str, float] | None = None,
    ):
        super().__init__()
        for name, weight in (loss_weights or {}).items():
            if not name.startswith("loss_") or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                    or weight < 0:
                raise ValueError(f"loss_weights: expected loss_* names with finite weights >= 0, got {name!r}: "
                                 f"{weight!r}")
        _check_hyperparameters(
            num_classes, optimizer, lr, momentum, weight_decay, lr_schedule, lr_steps, lr_gamma, warmup_steps,
            warmup_factor,
        )
        self.save_hyperparameters()
        self.skipped_steps = 0
        # Set by a non-finite loss; sticky over a gradient-accumulation window until the optimizer step drops it.
        self._drop_gradients = False
        # Evaluators live in a plain dict, outside the module tree: their state must never reach state_dict,
        # checkpoints, the model summary or DDP's buffer sync. They are moved to the device explicitly.
        self._evaluators: dict[str, Any] = {}
        # The evaluator's float64 results: metrics.json reports these exact values rather than the float32 copies
        # that self.log keeps.
        self._exact_metrics: dict[str, float] = {}

    # ---------------------------------------------------------------------------------------- model contract

    @abstractmethod
    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """list of [3,H,W] float 0..1 -> list of dict(boxes [K,4], scores [K], labels [K], masks bool [K,H,W])."""

    @abstractmethod
    def compute_losses(self, images: list[Tensor], targets: list[dict[str, Any]]) -> dict[str, Tensor]:
        """Scalar `loss_*` terms for a batch, in train and eval mode."""

    def predict_and_losses(
        self, images: list[Tensor], targets: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Predictions and losses of one batch; override to share the backbone pass between the two."""
        return self(images), self.compute_losses(images, targets)

    # ------------------------------------------------------------------------------------------------ steps

    def training_step(self, batch: tuple[list[Tensor], list[dict]], batch_idx: int) -> Tensor:
        images, targets = batch
        losses = self.compute_losses(images, targets)
        total = self._total_loss(losses)
        finite = bool(torch.isfinite(total))
        if self._trainer is not None:
            # Every process must drop the same step, or the data-parallel replicas would drift apart.
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            self._drop_gradients = True
            bad_terms = sorted(name for name, value in losses.items() if not torch.isfinite(value))
            log.warning(
                "step %d: non-finite training loss (%s); this optimizer step is skipped",
                self.global_step, ", ".join(bad_terms) or "on another process",
            )
        else:
            batch_size = len(images)
            values = {f"train/{name}": value.detach() for name, value in losses.items()}
            self.log_dict(values, batch_size=batch_size)
            self.log("train/loss", total.detach(), prog_bar=True, batch_size=batch_size)
        # Returned even when non-finite: Lightning refuses a None return under DDP, where every process must join
        # the gradient all-reduce of backward. optimizer_step then drops the gradients instead of applying them.
        return total

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Lightning's default step, except that gradients of a non-finite loss are dropped rather than applied."""

        def closure_dropping_nonfinite() -> Tensor | None:
            loss = optimizer_closure() if optimizer_closure is not None else None
            if not self._drop_gradients:
                return loss
            self._drop_gradients = False
            # A parameter without a gradient is left alone by SGD / AdamW: no update, no momentum or decay.
            optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            return None  # None also makes Lightning's AMP plugin skip unscaling and the GradScaler step

        optimizer.step(closure=closure_dropping_nonfinite)
        self.log("train/skipped_steps", float(self.skipped_steps))

    def validation_step(self, batch: tuple[list[Tensor], list[dict]], batch_idx: int) -> list[dict[str, Tensor]]:
        """The batch's predictions, returned for callbacks (the COCO results-file writer); Lightning keeps none."""
        return self._evaluation_step(batch, "val")

    def test_step(self, batch: tuple[list[Tensor], list[dict]], batch_idx: int) -> list[dict[str, Tensor]]:
        return self._evaluation_step(batch, "test")

    def predict_step(self, batch: tuple[list[Tensor], list[dict]], batch_idx: int) -> list[dict[str, Any]]:
        """Predictions of a (images, targets) batch, each with the target's `image_id` added."""
        images, targets = batch
        return [{**pred, "image_id": target["image_id"]} for pred, target in zip(self(images), targets)]

    def _evaluation_step(self, batch: tuple[list[Tensor], list[dict]], stage: str) -> list[dict[str, Tensor]]:
        images, targets = batch
        preds, losses = self.predict_and_losses(images, targets)
        total = self._total_loss(losses)
        values = {f"{stage}/{name}": value.detach() for name, value in losses.items()}
        values[f"{stage}/loss"] = total.detach()
        self.log_dict(values, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(images))
        if stage in self._evaluators:
            self._evaluators[stage].update(preds, targets)
        return preds

    def _total_loss(self, losses: dict[str, Tensor]) -> Tensor:
        if not losses:
            raise ValueError(f"{type(self).__name__}.compute_losses returned no loss terms")
        for name, value in losses.items():
            if not name.startswith("loss_") or not isinstance(value, Tensor) or value.numel() != 1:
                raise ValueError(
                    f"{type(self).__name__}.compute_losses must return scalar tensors named loss_*, got {name!r}: "
                    f"{type(value).__name__} {tuple(getattr(value, 'shape', ()))}"
                )
        weights = self.hparams.get("loss_weights") or {}
        unknown = sorted(set(weights) - set(losses))
        if unknown:
            raise ValueError(f"loss_weights names {unknown}, which {type(self).__name__} does not compute; its terms "
                             f"are {sorted(losses)}")
        # Summed in float32 whatever precision autocast computed the terms in.
        return torch.stack([value.reshape(()).float() * weights.get(name, 1.0) for name, value in losses.items()]).sum()

    # ------------------------------------------------------------------------------------------- evaluation

    def on_validation_epoch_start(self) -> None:
        self._start_evaluation("val")

    def on_test_epoch_start(self) -> None:
        self._start_evaluation("test")

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")

    def _start_evaluation(self, stage: str) -> None:
        self._evaluators.pop(stage, None)
        if not self.hparams.evaluate:
            return
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "ann_file") or not hasattr(datamodule, "label_to_cat_id"):
            raise ValueError(
                f"{type(self).__name__}: evaluate=True needs a datamodule with ann_file() and label_to_cat_id "
                "(e.g. trainer.validate(model, datamodule=CocoDataModule(...))); set evaluate=False to log losses only"
            )
        from datamodules.evaluation import CocoEvaluator  # the evaluation stack is needed only when evaluating

        # The test split of CocoDataModule is its val split (COCO's test-dev has no public annotations).
        self._evaluators[stage] = CocoEvaluator(datamodule.ann_file("val"), list(datamodule.label_to_cat_id)).to(
            self.device
        )

    def _finish_evaluation(self, stage: str) -> None:
        evaluator = self._evaluators.pop(stage, None)
        if evaluator is None:
            return
        results = evaluator.compute()  # gathered across processes: identical on every rank
        metrics = {
            f"{stage}/{iou_type}_{stat}": float(value)
            for iou_type, stats in results.items()
            for stat, value in stats.items()
        }
        self.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=True)
        if not self.trainer.sanity_checking:  # Lightning discards what the sanity check logs; so do we
            self._exact_metrics.update(metrics)

    # -------------------------------------------------------------------------------------------- metrics.json

    def on_validation_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._write_metrics_file()

    def on_test_end(self) -> None:
        self._write_metrics_file()

    def on_fit_end(self) -> None:
        self._write_metrics_file()

    def _write_metrics_file(self) -> None:
        """Latest val/test metrics + stage, global_step, epoch -> <log dir>/metrics.json, on global rank 0."""
        trainer = self.trainer
        directory = trainer.log_dir or trainer.default_root_dir  # log_dir is a collective call: every rank runs it
        if not trainer.is_global_zero:
            return
        record: dict[str, Any] = {
            name: _json_number(float(value))
            for name, value in trainer.callback_metrics.items()
            if name.startswith(_EVAL_PREFIXES)
        }
        record.update({name: _json_number(value) for name, value in self._exact_metrics.items()})
        record.update(
            stage=trainer.state.fn.value if trainer.state.fn is not None else None,
            global_step=trainer.global_step,
            epoch=trainer.current_epoch,
            skipped_steps=self.skipped_steps,
        )
        write_json_atomic(Path(directory) / METRICS_FILE, record)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_steps = int(checkpoint.get("skipped_steps", 0))

    # ------------------------------------------------------------------------------------ optimizer, schedule

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        param_groups = param_groups_weight_decay(self, hp.weight_decay)
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(param_groups, lr=hp.lr, momentum=hp.momentum)
        else:
            optimizer = torch.optim.AdamW(param_groups, lr=hp.lr)
        total_steps = 0
        if hp.lr_schedule == "cosine":
            total_steps = self.trainer.estimated_stepping_batches
            if not math.isfinite(total_steps) or total_steps < 1:
                raise ValueError(
                    f"lr_schedule='cosine' needs a finite training length; the trainer estimates {total_steps} "
                    "optimizer steps (set trainer.max_steps or max_epochs)"
                )
        schedule = LRMultiplier(
            kind=hp.lr_schedule,
            warmup_steps=hp.warmup_steps,
            warmup_factor=hp.warmup_factor,
            steps=list(hp.lr_steps or []),
            gamma=hp.lr_gamma,
            total_steps=int(total_steps),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}


@dataclass
class LRMultiplier:
    """Learning-rate factor at optimizer step t: warm-up ramp x (multistep | cosine | constant) schedule.

    Closed-form (as detectron2's WarmupParamScheduler) rather than torch's chained recursive schedulers, so the
    value at step t is exact and a resumed run continues on the same curve. A dataclass, so LambdaLR's state_dict
    saves its fields.
    """

    kind: str
    warmup_steps: int
    warmup_factor: float
    steps: list[int]
    gamma: float
    total_steps: int

    def __call__(self, step: int) -> float:
        if self.kind == "multistep":
            factor = self.gamma ** bisect.bisect_right(self.steps, step)
        elif self.kind == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))
        else:
            factor = 1.0
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            factor *= self.warmup_factor * (1.0 - alpha) + alpha
        return factor


def _check_hyperparameters(
    num_classes: int,
    optimizer: str,
    lr: float,
    momentum: float,
    weight_decay: float,
    lr_schedule: str,
    lr_steps: list[int] | None,
    lr_gamma: float,
    warmup_steps: int,
    warmup_factor: float,
) -> None:
    """Raise one clear ValueError for the first bad value, at construction rather than at step 1000."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {lr_schedule!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")
    if not (weight_decay >= 0 and math.isfinite(weight_decay)):
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if not 0 < lr_gamma <= 1:
        raise ValueError(f"lr_gamma must lie in (0, 1], got {lr_gamma!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
    if not 0 < warmup_factor <= 1:
        raise ValueError(f"warmup_factor must lie in (0, 1], got {warmup_factor!r}")
    if lr_steps:
        if lr_schedule != "multistep":
            raise ValueError(f"lr_steps {list(lr_steps)} only apply to lr_schedule='multistep', not {lr_schedule!r}")
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in lr_steps):
            raise ValueError(f"lr_steps must be positive ints (optimizer steps), got {list(lr_steps)}")
        if list(lr_steps) != sorted(set(lr_steps)):
            raise ValueError(f"lr_steps must be strictly increasing, got {list(lr_steps)}")


def _json_number(value: float) -> float | None:
    """Strict JSON has no NaN / Infinity: a non-finite value (e.g. a diverged loss) is written as null."""
    return value if math.isfinite(value) else None

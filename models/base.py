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
from torch import Tensor, nn

from datamodules.files import write_json_atomic
from models.common.speed_split import ModelSplit

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("multistep", "cosine", "constant")
# Which parameters weight decay applies to: "skip_norm" (detectron2: weights and biases, not normalisation layers;
# WEIGHT_DECAY_NORM = 0, WEIGHT_DECAY_BIAS = WEIGHT_DECAY), "all" (every trainable parameter: YOLACT's and ISTR's
# torch.optim over model.parameters()), "skip_bias_and_norm" (timm's rule: nothing with ndim <= 1).
WEIGHT_DECAY_RULES = ("skip_norm", "all", "skip_bias_and_norm")
# The layers detectron2's build_optimizer treats as norms (its NORM_MODULE_TYPES, plus timm's subclasses of these).
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
METRICS_FILE = "metrics.json"
_EVAL_PREFIXES = ("val/", "test/")


class InstanceSegmentationModule(L.LightningModule, ABC):
    # Per-architecture defaults of the official recipes; a subclass overrides them (see the Args below).
    WEIGHT_DECAY_RULE = "skip_norm"
    BN_MIN_BATCH = 1
    # The stages the speed protocol times (models.common.speed_split); None: end-to-end timing only.
    SPEED_SPLIT: ModelSplit | None = None

    """Base LightningModule of the instance-segmentation architectures.

    Args:
        num_classes: number of object classes (contiguous labels 0..num_classes-1, no background).
        optimizer: "sgd" (with `momentum`) or "adamw".
        lr: peak learning rate (after warm-up).
        momentum: SGD momentum (unused by AdamW).
        weight_decay: the decay of the parameters `weight_decay_rule` picks (the others get none).
        weight_decay_rule: one of WEIGHT_DECAY_RULES; None: the architecture's official rule (the class attribute
            WEIGHT_DECAY_RULE: detectron2's "skip_norm" unless a subclass says otherwise).
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
        reference_batch_size: the images per optimizer step that lr, lr_steps, warmup_steps and the trainer's
            max_steps are written for (a paper's batch, e.g. 16). At fit start they are scaled linearly to the real
            batch, world_size x data batch_size x accumulate_grad_batches (detectron2's REFERENCE_WORLD_SIZE rule:
            lr x k, step counts / k), one line says what was scaled, and `schedule` keeps the values. None: no
            scaling (the values are used as written).
        bn_min_batch: the fewest images a trainable BatchNorm may normalise over (per device; across devices under
            SyncBatchNorm); fit refuses fewer. None: the architecture's rule (class attribute BN_MIN_BATCH, 1 = no
            limit; YOLACT's official code freezes BN below 6 images per GPU).

    max_steps lives on the Trainer, yet with a reference batch it is a schedule length like lr_steps: at fit start
    the model rescales it with the same factor (in `trainer.fit_loop.epoch_loop.max_steps`, where Lightning keeps
    Trainer(max_steps)), so a config's `trainer.max_steps` is always the reference-batch value. A model trained from
    scratch with frozen BatchNorm (timm zero-initialises the last norm of each residual block: frozen, that branch
    never learns) is refused at fit start.

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
        weight_decay_rule: str | None = None,
        reference_batch_size: int | None = None,
        bn_min_batch: int | None = None,
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
        if weight_decay_rule is not None and weight_decay_rule not in WEIGHT_DECAY_RULES:
            raise ValueError(f"weight_decay_rule must be one of {WEIGHT_DECAY_RULES} (or None: the architecture's "
                             f"{self.WEIGHT_DECAY_RULE!r}), got {weight_decay_rule!r}")
        for name, value in (("reference_batch_size", reference_batch_size), ("bn_min_batch", bn_min_batch)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        self.save_hyperparameters()
        self.skipped_steps = 0
        # What configure_optimizers scaled and to which values (the run record stores it); None before fit.
        self.schedule: dict[str, Any] | None = None
        # Set by a non-finite loss; sticky over a gradient-accumulation window until the optimizer step drops it.
        self._drop_gradients = False
        # The step's finiteness, a bool tensor on the device ANDed over micro-batches (see training_step).
        self._finite: Tensor | None = None
        self._step_losses: dict[str, Tensor] = {}
        # Evaluators live in a plain dict, outside the module tree: their state must never reach state_dict,
        # checkpoints, the model summary or DDP's buffer sync. They are moved to the device explicitly.
        self._evaluators: dict[str, Any] = {}
        # The evaluator's float64 results: metrics.json reports these exact values rather than the float32 copies
        # that self.log keeps.
        self._exact_metrics: dict[str, float] = {}

    # ---------------------------------------------------------------------------------------- model contract

    @abstractmethod
    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """list of [3,H,W] uint8 0..255 or float 0..1 -> list of dict(boxes [K,4], scores [K], labels [K],
        masks bool [K,H,W])."""

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
        # The finiteness flag stays on the device until optimizer_step reads it (`_nonfinite_step`), after backward
        # has been queued: reading it here would make every step wait for its own forward pass. A non-finite step's
        # logged values are NaN / inf.
        finite = torch.isfinite(total.detach())
        self._finite = finite if self._finite is None else self._finite & finite
        self._step_losses = {name: value.detach() for name, value in losses.items()}
        batch_size = len(images)
        self.log_dict({f"train/{name}": value for name, value in self._step_losses.items()}, batch_size=batch_size)
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=batch_size)
        # Returned even when non-finite: Lightning refuses a None return under DDP, where every process must join
        # the gradient all-reduce of backward. optimizer_step then drops the gradients instead of applying them.
        return total

    def _nonfinite_step(self) -> bool:
        """Whether this optimizer step's loss (any micro-batch, on any process) was non-finite.

        The one host read of the flag per optimizer step, after backward. Every process must drop the same step, or
        the data-parallel replicas would drift apart, so the flag is summed over processes on the device first.
        """
        if self._finite is None:
            return self._drop_gradients
        nonfinite = (~self._finite).float()
        self._finite = None
        if self._trainer is not None:
            nonfinite = self.trainer.strategy.reduce(nonfinite, reduce_op="sum")
        if bool(nonfinite > 0):
            bad_terms = sorted(name for name, value in self._step_losses.items() if not torch.isfinite(value))
            log.warning(
                "step %d: non-finite training loss (%s); this optimizer step is skipped",
                self.global_step, ", ".join(bad_terms) or "on another process",
            )
            self._drop_gradients = True
        return self._drop_gradients

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Lightning's default step, except that gradients of a non-finite loss are dropped rather than applied."""

        def closure_dropping_nonfinite() -> Tensor | None:
            loss = optimizer_closure() if optimizer_closure is not None else None
            if not self._nonfinite_step():
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
        if self._trainer is not None:
            self._check_norm_layers()
        self.schedule = self._scaled_schedule()
        lr = self.schedule["lr"]
        param_groups = weight_decay_groups(self, hp.weight_decay, hp.weight_decay_rule or self.WEIGHT_DECAY_RULE)
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(param_groups, lr=lr, momentum=hp.momentum)
        else:
            optimizer = torch.optim.AdamW(param_groups, lr=lr)
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
            warmup_steps=self.schedule["warmup_steps"],
            warmup_factor=hp.warmup_factor,
            steps=self.schedule["lr_steps"],
            gamma=hp.lr_gamma,
            total_steps=int(total_steps),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def _scaled_schedule(self) -> dict[str, Any]:
        """lr, lr_steps, warmup_steps (and the trainer's max_steps) for the real batch: the linear scaling rule."""
        hp = self.hparams
        written = dict(lr=hp.lr, lr_steps=list(hp.lr_steps or []), warmup_steps=hp.warmup_steps)
        trainer = self._trainer
        if hp.reference_batch_size is None or trainer is None:
            return {**written, "scaled": False}
        batch_size = getattr(getattr(trainer, "datamodule", None), "hparams", {}).get("batch_size")
        if not isinstance(batch_size, int):
            raise ValueError(f"{type(self).__name__}: reference_batch_size={hp.reference_batch_size} scales the "
                             "schedule by the real batch, but the trainer has no datamodule with a batch_size "
                             "hyper-parameter (fit with CocoDataModule, or set model reference_batch_size: null)")
        total = trainer.world_size * batch_size * trainer.accumulate_grad_batches
        factor = total / hp.reference_batch_size
        record: dict[str, Any] = dict(
            scaled=True, reference_batch_size=hp.reference_batch_size, batch_size=total, world_size=trainer.world_size,
            batch_size_per_device=batch_size, accumulate_grad_batches=trainer.accumulate_grad_batches, factor=factor,
            lr=hp.lr * factor, lr_steps=[max(1, round(s / factor)) for s in written["lr_steps"]],
            warmup_steps=round(hp.warmup_steps / factor), written=written,
        )
        # Rescale trainer.max_steps once per fit: a second configure_optimizers call (a tuner) must not compound it.
        max_steps = trainer.fit_loop.max_steps
        if max_steps is not None and max_steps > 0 and max_steps != getattr(self, "_scaled_max_steps", None):
            written["max_steps"] = max_steps
            self._scaled_max_steps = trainer.fit_loop.epoch_loop.max_steps = max(1, round(max_steps / factor))
        record["max_steps"] = trainer.fit_loop.max_steps if max_steps is not None and max_steps > 0 else None
        if trainer.is_global_zero:
            steps = (f", lr_steps {written['lr_steps']} -> {record['lr_steps']}" if written["lr_steps"] else "")
            maximum = (f", max_steps {written['max_steps']} -> {record['max_steps']}" if "max_steps" in written
                       else ", max_steps unset (epoch-based length not scaled)")
            print(f"[{type(self).__name__}] linear scaling: {trainer.world_size} device(s) x {batch_size} images x "
                  f"{trainer.accumulate_grad_batches} accumulated = {total} per step vs reference "
                  f"{hp.reference_batch_size} (x{factor:g}): lr {hp.lr:g} -> {record['lr']:g}{steps}, warmup_steps "
                  f"{hp.warmup_steps} -> {record['warmup_steps']}{maximum}", flush=True)
        return record

    def _check_norm_layers(self) -> None:
        """Refuse, at fit start, the two BatchNorm set-ups that cannot train as intended (clear message, not AP 0)."""
        name = type(self).__name__
        dead = [module_name for module_name, module in self.named_modules()
                if "FrozenBatchNorm" in type(module).__name__ and not torch.any(module.weight != 0)]
        if dead:
            raise ValueError(
                f"{name}: {len(dead)} frozen BatchNorm layers have scale 0 (e.g. {dead[0]}): the backbone is built "
                "from scratch (pretrained: false) with norm: frozen_bn, and timm zero-initialises the last norm of "
                "every residual block, so frozen those branches never learn. Set model.init_args.norm to bn (or "
                "sync_bn) with frozen_stages: 0, or load weights (pretrained: true / pretrained_path / a converted "
                "checkpoint)"
            )
        minimum = self.hparams.bn_min_batch or self.BN_MIN_BATCH
        trainable = [module for module in self.modules()
                     if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training
                     and any(p.requires_grad for p in module.parameters(recurse=False))]
        if not trainable or minimum <= 1:
            return
        batch_size = getattr(getattr(self.trainer, "datamodule", None), "hparams", {}).get("batch_size")
        if not isinstance(batch_size, int):
            return
        synced = all(isinstance(module, nn.SyncBatchNorm) for module in trainable)
        images = batch_size * (self.trainer.world_size if synced else 1)
        if images < minimum:
            raise ValueError(
                f"{name}: {len(trainable)} BatchNorm layers train on {images} images "
                f"({'across devices, sync BN' if synced else 'per device'}), fewer than this architecture's minimum "
                f"of {minimum} (its official code freezes BatchNorm below that). Set data.batch_size >= {minimum}, "
                f"or trainer.sync_batchnorm: true with world_size x batch_size >= {minimum}, or "
                "model.init_args.norm: frozen_bn (pretrained weights), or model.init_args.bn_min_batch to override"
            )


def weight_decay_groups(model: nn.Module, weight_decay: float, rule: str) -> list[dict[str, Any]]:
    """Two optimizer parameter groups: the trainable parameters `rule` decays, and the rest (decay 0).

    Written here because detectron2's rule (decay biases, not norms) has no library helper: timm's
    param_groups_weight_decay exempts every 1-D parameter, biases included.
    """
    if rule not in WEIGHT_DECAY_RULES:
        raise ValueError(f"weight_decay_rule must be one of {WEIGHT_DECAY_RULES}, got {rule!r}")
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if rule == "all":
                exempt = False
            elif rule == "skip_norm":
                exempt = isinstance(module, NORM_LAYERS)
            else:
                exempt = param.ndim <= 1 or isinstance(module, NORM_LAYERS)
            (no_decay if exempt else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


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

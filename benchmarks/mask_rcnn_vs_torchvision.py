"""maskbench's MaskRCNN against torchvision's maskrcnn_resnet50_fpn with the same weights and the same inputs.

    python -m benchmarks.mask_rcnn_vs_torchvision [--device cpu] [--infer-size 800 --infer-iters 10]
        [--train-size 512 --train-batch 2 --train-rounds 2 --train-steps 5] [--out result.json]

(a) Inference: torchvision's model as built with pretrained weights (frozen BatchNorm, three trainable layers)
    with random weights; its state dict converted by `convert_torchvision_maskrcnn` gives ours. Both run batch 1 on
    the same image (short side `--infer-size`), timed ALTERNATELY call by call (the order swapped every
    iteration, so drift in machine load hits both), warm-up excluded, device synchronised around every call.
    Reports images/s of each and ours / torchvision (goal >= 0.95).
(b) Training: ours through Lightning's Trainer (training_step, logging, LR schedule included) against a plain
    torchvision training loop (forward -> summed losses -> backward -> SGD step), same weights, same settings,
    the same pre-loaded batches of the synthetic dataset at short side `--train-size`. Rounds alternate the two;
    each round's first step is warm-up. Reports images/s of each and the ratio (goal >= 0.95).

Speed figures belong in reports, never in tests; this script asserts nothing about them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import lightning as L
import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision.models.detection import MaskRCNN as TorchvisionMaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

from datamodules.files import write_json_atomic
from models.mask_rcnn import MaskRCNN
from models.mask_rcnn.convert import convert_torchvision_maskrcnn
from models.mask_rcnn.targets import training_targets


def torchvision_model(num_classes: int, min_size: int, max_size: int) -> torch.nn.Module:
    """torchvision's maskrcnn_resnet50_fpn exactly as built with pretrained weights, but random."""
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=3
    )
    return TorchvisionMaskRCNN(backbone, num_classes=num_classes, min_size=min_size, max_size=max_size)


def paired_models(num_classes: int, min_size: int, max_size: int, workdir: str):
    """(torchvision model, our model) holding the same weights, via the checkpoint converter."""
    torch.manual_seed(0)
    reference = torchvision_model(num_classes, min_size, max_size)
    weights, checkpoint = os.path.join(workdir, "tv.pth"), os.path.join(workdir, "ours.ckpt")
    torch.save(reference.state_dict(), weights)
    convert_torchvision_maskrcnn(weights, checkpoint)
    ours = MaskRCNN.load_from_checkpoint(checkpoint, min_size=min_size, max_size=max_size, evaluate=False)
    return reference, ours


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def benchmark_inference(args, device: torch.device, workdir: str) -> dict:
    reference, ours = paired_models(91, args.infer_size, args.infer_max_size, workdir)
    reference, ours = reference.eval().to(device), ours.eval().to(device)
    generator = torch.Generator().manual_seed(0)
    height = args.infer_size
    image = torch.rand(3, height, height * 4 // 3, generator=generator).to(device)
    calls = {"torchvision": lambda: reference([image]), "maskbench": lambda: ours([image])}
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for _ in range(args.infer_warmup):
            for call in calls.values():
                call()
        for i in range(args.infer_iters):
            order = list(calls) if i % 2 == 0 else list(reversed(calls))
            for name in order:
                times[name].append(_timed(calls[name], device))
        detections = {name: len(call()[0]["boxes"]) for name, call in calls.items()}
    fps = {name: 1.0 / statistics.median(t) for name, t in times.items()}
    return {
        "input": [3, height, height * 4 // 3],
        "batch": 1,
        "warmup_iters": args.infer_warmup,
        "timed_iters": args.infer_iters,
        "detections_per_image": detections,
        "median_s": {name: statistics.median(t) for name, t in times.items()},
        "fps": fps,
        "ratio_maskbench_over_torchvision": fps["maskbench"] / fps["torchvision"],
    }


def _training_batches(args) -> tuple[list, int]:
    """Pre-loaded (images, targets) batches of the synthetic train split, and its class count."""
    from datamodules.coco import CocoDataModule

    # The embedded synthetic dataset (128 px images); both models resize them to --train-size themselves.
    datamodule = CocoDataModule(batch_size=args.train_batch, num_workers=0, hflip_prob=0.0)
    datamodule.setup("fit")
    loader = iter(datamodule.train_dataloader())
    # float 0..1 for both: torchvision's transform refuses the datamodule's uint8 images.
    batches = [([image.float() / 255 for image in images], targets) for images, targets in
               (next(loader) for _ in range(args.train_steps))]
    return batches, datamodule.num_classes


class _StepTimer(L.Callback):
    """Wall time of every training batch (training_step, backward, optimizer step, logging)."""

    def __init__(self, device: torch.device):
        self.device, self.times, self._start = device, [], 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter() - self._start)


def _lightning_round(model: MaskRCNN, batches: list, device: torch.device) -> list[float]:
    timer = _StepTimer(device)
    # A throw-away root: the module writes metrics.json at the end of fit, which must not land in the caller's cwd.
    with tempfile.TemporaryDirectory(prefix="mask_rcnn_vs_torchvision-") as root:
        trainer = L.Trainer(
            accelerator=device.type, devices=1, max_steps=len(batches), logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=[timer], limit_val_batches=0,
            default_root_dir=root,
        )
        # The batches are already collated: batch_size=None hands them to the model as they are.
        trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None, shuffle=False))
    return timer.times[1:]


def _torchvision_round(model, optimizer, batches: list, num_classes: int, device: torch.device) -> list[float]:
    model.train()
    times = []
    for images, targets in batches:
        images = [image.to(device) for image in images]
        # The same target preparation as ours (crowds dropped, background-shifted labels), outside the timer.
        targets = [{k: v.to(device) for k, v in t.items()} for t in training_targets(targets, num_classes)]

        def step():
            losses = model(images, targets)
            optimizer.zero_grad()
            loss = sum(losses.values())
            loss.backward()
            optimizer.step()
            if not torch.isfinite(loss):
                raise RuntimeError("non-finite torchvision training loss: lower --train-lr, the timing is void")

        times.append(_timed(step, device))
    return times[1:]


def benchmark_training(args, device: torch.device, workdir: str) -> dict:
    batches, num_classes = _training_batches(args)
    reference, ours = paired_models(num_classes + 1, args.train_size, args.train_max_size, workdir)
    reference = reference.to(device)
    # Both optimisers: SGD, momentum 0.9, weight decay 1e-4 (ours: not on biases and norms), a small constant lr:
    # random weights under frozen BatchNorm are unnormalised, and a diverging run would skip steps (ours skips
    # the backward pass of a non-finite loss), which would time less work.
    ours.hparams.lr, ours.hparams.warmup_steps, ours.hparams.lr_schedule = args.train_lr, 0, "constant"
    optimizer = torch.optim.SGD(
        [p for p in reference.parameters() if p.requires_grad], lr=args.train_lr, momentum=0.9, weight_decay=1e-4
    )
    times: dict[str, list[float]] = {"torchvision": [], "maskbench": []}
    for _ in range(args.train_rounds):
        times["torchvision"] += _torchvision_round(reference, optimizer, batches, num_classes, device)
        times["maskbench"] += _lightning_round(ours, batches, device)
    if ours.skipped_steps:
        raise RuntimeError(f"{ours.skipped_steps} non-finite training steps: lower --train-lr, the timing is void")
    images_per_s = {name: args.train_batch / statistics.median(t) for name, t in times.items()}
    return {
        "input_short_side": args.train_size,
        "batch": args.train_batch,
        "timed_steps": {name: len(t) for name, t in times.items()},
        "median_step_s": {name: statistics.median(t) for name, t in times.items()},
        "images_per_s": images_per_s,
        "ratio_maskbench_over_torchvision": images_per_s["maskbench"] / images_per_s["torchvision"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--infer-size", type=int, default=800)
    parser.add_argument("--infer-max-size", type=int, default=1333)
    parser.add_argument("--infer-warmup", type=int, default=2)
    parser.add_argument("--infer-iters", type=int, default=10)
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--train-max-size", type=int, default=683)
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=5, help="steps per round; the first is warm-up")
    parser.add_argument("--train-rounds", type=int, default=2)
    parser.add_argument("--train-lr", type=float, default=1e-5)
    parser.add_argument("--skip", choices=["inference", "training"], default=None)
    parser.add_argument("--out", default=None, help="also write the result JSON here (atomically)")
    args = parser.parse_args()

    device = torch.device(args.device)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    with tempfile.TemporaryDirectory() as workdir:
        if args.skip != "inference":
            result["inference"] = benchmark_inference(args, device, workdir)
            print(json.dumps(result["inference"], indent=2), flush=True)
        if args.skip != "training":
            result["training"] = benchmark_training(args, device, workdir)
            print(json.dumps(result["training"], indent=2), flush=True)
    if args.out:
        write_json_atomic(args.out, result, sort_keys=False)


if __name__ == "__main__":
    main()

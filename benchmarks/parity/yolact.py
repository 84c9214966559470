"""maskbench's YOLACT against the official implementation (dbolya/yolact): parity (default) and speed (--timing).

    python -m benchmarks.parity.yolact --official-repo ~/src/yolact            # parity + tests/fixtures/parity/yolact.pt
    python -m benchmarks.parity.yolact --official-repo ~/src/yolact --timing [--threads 2 --iters 30 --warmup 3]
        [--images DIR] [--max-images 20] [--candidates 1000 | --score-thresh T] [--profile-iters 10] [--out r.json]

PARITY (the procedure of benchmarks/parity/common.py). Our YOLACT in the official v1 ResNet-50 layout at a small
size (`PARITY_SETTINGS`: 128 px input, anchor scales int(s x 128 / 550), 8 classes) gets seeded random weights; they
go to the official layout through our converter's key function (models.yolact.convert) and into the official
`yolact_resnet50_config` model with `max_size` 128, the same scales and class count. Compared:
  * eval mode, two images (non-square, so both resize): the normalised input (official FastBaseTransform vs our
    preprocess), box deltas, softmax class scores, tanh coefficients, prototypes and anchors (official priors
    cx, cy, w, h / 128), i.e. everything the official `Detect` receives; post-processing is not in the fixture
    (detections are compared by --timing, with its own tolerances);
  * train mode (BatchNorm on batch statistics on both sides), a batch of two 128 x 128 images with 3 objects and a
    crowd box: the official `MultiBoxLoss` terms B, C, M, S against loss_box, loss_cls, loss_mask, loss_semantic,
    and the anchor assignments (the official `match`'s conf_t: -1 neutral, 0 background, class + 1) against
    models.yolact.targets.match_anchors.
The fixture stores the seed, the weights' checksum, the official state-dict keys, the inputs, the official tensors
and 10x the measured differences as tolerances; tests/benchmarks/test_parity_yolact.py replays it. It also stores
the key -> shape layouts of the released v1 ResNet configurations (`RELEASED_LAYOUTS`: R-50, R-101 at 550, 400,
700 px, built from the official code at COCO size), which the test runs through the converter without weights.

TIMING (--timing):
1. The official code is imported from `--official-repo` (a checkout of dbolya/yolact; nothing of it lives in this
   project) and its `yolact_resnet50_config` model (ResNet-50, 550 x 550, 81 classes) built with random weights:
   the official `init_weights` (Xavier on the non-backbone convs) fed a randomly initialised backbone file.
2. Its state dict goes through our converter (models.yolact.convert.convert_yolact_official) into our YOLACT, and
   both must give the same detections on one image (the one the score threshold comes from): same count, and in
   score order labels equal, scores within 1e-4, boxes within 1 px (the official truncates them to integers),
   masks agreeing on >= 99.9 % of their pixels; else the run stops: the timings compare the same computation.
3. Timing, batch 1, `torch.set_num_threads(--threads)`, under torch.no_grad() (as eval.py), `--warmup` untimed
   rounds, then `--iters` timed rounds calling the two ALTERNATELY (official first on even rounds, ours first on
   odd ones), each round on the next image of the cycle:
     official = what `eval.py --benchmark` times: `net(batch)` (backbone, FPN, protonet, heads, softmax, Detect with
                Fast NMS) + eval.py's own `prep_benchmark` (postprocess: mask assembly, crop, bilinear up-sampling
                to the image size, binarisation, box sanitising; top-k slice and copy to numpy). The input is
                already resized and normalised by the official FastBaseTransform, untimed (eval.py's data
                loading is not timed either).
     ours     = `model([image])`: our resize + normalisation (timed, unlike the official's), network,
                post-processing, boxes and bool masks at the image's own size.
   A third, alternating pass (`--profile-iters`) splits both into comparable stages: the official's own
   utils.timer sections, and wrappers around our submodules and post-processing functions.

Representative work. A randomly initialised network scores every class at about 1/81 after the softmax, below
the official 0.05 threshold, so neither implementation would keep a candidate: the timing would skip NMS and mask
assembly. Both thresholds (the official `Detect.conf_thresh`, our `postprocess.score_thresh`) are therefore set to
the SAME value, by default the one that keeps `--candidates` anchors (1000 of 19,248) on the median image (half
the images keep more, half fewer; a random network's score spread differs a lot from image to image), so that
Fast NMS works on full per-class top-200 lists and both keep the official maximum of 100 detections per image, as
a trained model does (the official Fast NMS has no second score threshold). The candidate and detection counts of
every image are measured in an untimed pass and reported.

What is shimmed to run the official code on a CPU (its numerics untouched):
  * `torch.cuda.current_device` returns 0 when no GPU is present: yolact.py calls it at import as a Windows
    CUDA-initialisation workaround and uses the result for nothing;
  * `torch.cuda.synchronize` is a no-op when no GPU is present: eval.py's prep_benchmark calls it "just in case",
    and on a CPU there is nothing to wait for;
  * a stub `cv2` module (only when OpenCV is not installed): data/, utils/augmentations.py, layers/output_utils.py
    and eval.py import it for image reading, cv2-based augmentation and display, none of which runs here; any use
    raises an error naming the attribute;
  * FastBaseTransform's constructor moves its mean / std with `.cuda()`: it is built with `Tensor.cuda` briefly
    returning the tensor itself (its forward moves them to the image's device anyway);
  * matplotlib (imported by eval.py) gets the non-interactive Agg backend unless MPLBACKEND is set.
Settings, not shims: `net.detect.use_fast_nms = True`, `use_cross_class_nms = False`, `cfg.mask_proto_debug =
False` (what eval.py's evaluate() sets from its defaults; Detect's own default is the Cython NMS) and eval.py's
default arguments via its `parse_args([])` (crop True, score_threshold 0, top_k 5) for prep_benchmark. The
official FPN and box utilities are TorchScript (yolact.py scripts when fewer than 2 GPUs are visible), so the
warm-up rounds also cover its profiling executor's first runs.

The result JSON holds each implementation's ms per image (median, p90, mean, min), the ratio of the medians, the
per-round paired ratios (each round's two calls ran back to back under the same load: on a shared machine their
median is the steadier figure), every round's raw times, and the stage medians.

Speed figures belong in reports, never in tests; this script asserts nothing about them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, read_image

import models.yolact.postprocess as our_postprocess
from datamodules.synthetic import synthetic_root
from datamodules.files import write_json_atomic
from models.yolact import YOLACT
from models.yolact.model import RESNET_MEAN, RESNET_STD
from models.yolact.convert import (
    _PATTERNS, _TOLERATED, convert_yolact_official, map_state_dict, official_settings,
)
from models.common.checkpoint import rename_key
from benchmarks.parity.common import (
    FIXTURE_DIR, converter_reads, git_head, layout, max_differences, official_layout, save_fixture, seeded_state,
    state_checksum, tolerances,
)

OFFICIAL_CONFIG = "yolact_resnet50_config"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
OFFICIAL_MODULES = ("data", "layers", "utils", "backbone", "yolact", "eval")

# The like-for-like check (see the module docstring).
SCORE_TOL = 1e-4
BOX_TOL_PX = 1.0 + 1e-3  # the official casts its boxes to integers (truncation)
MASK_AGREEMENT = 0.999


# ---------------------------------------------------------------------------------------------- the official code


def import_official(repo: str) -> types.SimpleNamespace:
    """Import the official YOLACT from the checkout `repo`, with the CPU shims of the module docstring.

    Returns a namespace with `cfg`, `set_cfg`, `Yolact`, `FastBaseTransform`, `postprocess`, `timer` and the eval
    module (`eval`).
    """
    root = Path(repo).expanduser().resolve()
    missing = [name for name in ("yolact.py", "eval.py", "data/config.py", "layers/output_utils.py")
               if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(f"--official-repo {root}: not a dbolya/yolact checkout (missing {missing})")
    clashes = [name for name in OFFICIAL_MODULES
               if name in sys.modules and not str(getattr(sys.modules[name], "__file__", "")).startswith(str(root))]
    if clashes:
        raise RuntimeError(f"modules {clashes} are already imported from elsewhere; the official ones would clash")

    if not torch.cuda.is_available():
        torch.cuda.current_device = lambda: 0
        torch.cuda.synchronize = lambda device=None: None
    try:
        import cv2  # noqa: F401
    except ImportError:
        sys.modules["cv2"] = _cv2_stub()
    os.environ.setdefault("MPLBACKEND", "Agg")

    sys.path.insert(0, str(root))
    import eval as official_eval  # the official eval.py
    import yolact
    from data.config import cfg, set_cfg
    from layers.output_utils import postprocess
    from utils import timer
    from utils.augmentations import FastBaseTransform

    for name in OFFICIAL_MODULES:
        origin = str(getattr(sys.modules[name], "__file__", ""))
        if not origin.startswith(str(root)):
            raise RuntimeError(f"module {name!r} was imported from {origin}, not from {root}")
    official_eval.parse_args([])  # eval.py's defaults, read by prep_benchmark through its global `args`
    return types.SimpleNamespace(
        cfg=cfg, set_cfg=set_cfg, Yolact=yolact.Yolact, FastBaseTransform=FastBaseTransform,
        postprocess=postprocess, timer=timer, eval=official_eval, root=root,
    )


def _cv2_stub() -> types.ModuleType:
    stub = types.ModuleType("cv2")
    stub.__file__ = "<maskbench cv2 stub>"

    def missing(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise RuntimeError(f"cv2.{name}: OpenCV is not installed; the benchmark's cv2 stub only satisfies imports")

    stub.__getattr__ = missing  # type: ignore[method-assign]
    return stub


def build_official(official: types.SimpleNamespace, seed: int, workdir: str) -> torch.nn.Module:
    """The official yolact_resnet50_config model, randomly initialised the official way, in eval mode."""
    official.set_cfg(OFFICIAL_CONFIG)
    torch.manual_seed(seed)
    net = official.Yolact()
    # init_weights reads ImageNet backbone weights (torchvision names: layer1..layer4); give it the random ones.
    backbone_file = os.path.join(workdir, "random_backbone.pth")
    backbone_state = {
        (f"layer{int(key.split('.')[1]) + 1}." + key.split(".", 2)[2] if key.startswith("layers.") else key): value
        for key, value in net.backbone.state_dict().items()
    }
    torch.save(backbone_state, backbone_file)
    net.init_weights(backbone_path=backbone_file)
    net.eval()  # the official train() returns None: no chaining
    # What eval.py's evaluate() sets from its default arguments before evaluating.
    net.detect.use_fast_nms = True
    net.detect.use_cross_class_nms = False
    official.cfg.mask_proto_debug = False
    return net


def official_transform(official: types.SimpleNamespace) -> torch.nn.Module:
    """FastBaseTransform, whose constructor calls .cuda() on its constants (see the module docstring)."""
    original = Tensor.cuda
    try:
        if not torch.cuda.is_available():
            Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
        return official.FastBaseTransform()
    finally:
        Tensor.cuda = original  # type: ignore[method-assign]


def official_input(transform: torch.nn.Module, image: Tensor) -> Tensor:
    """float RGB [3, H, W] in 0..1 -> the official network input [1, 3, 550, 550] (its input is BGR 0..255 NHWC)."""
    bgr = (image[[2, 1, 0]] * 255.0).permute(1, 2, 0)[None].contiguous()
    return transform(bgr)


def official_detections(official: types.SimpleNamespace, net, batch: Tensor, height: int, width: int) -> dict:
    """The official detections at the image's size, through its postprocess (as prep_benchmark / prep_metrics)."""
    classes, scores, boxes, masks = official.postprocess(net(batch), width, height, crop_masks=True,
                                                         score_threshold=0)
    if scores.numel() == 0:
        return {"labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0), "boxes": torch.zeros(0, 4),
                "masks": torch.zeros(0, height, width, dtype=torch.bool)}
    return {"labels": classes.long(), "scores": scores.float(), "boxes": boxes.float(), "masks": masks > 0.5}


# ---------------------------------------------------------------------------------------------- ours and the check


def convert_to_ours(net: torch.nn.Module, workdir: str, input_size: int = 550) -> YOLACT:
    """Our YOLACT holding the official network's weights, through the real converter and a Lightning checkpoint."""
    weights, checkpoint = os.path.join(workdir, "official.pth"), os.path.join(workdir, "ours.ckpt")
    torch.save(net.state_dict(), weights)
    convert_yolact_official(weights, checkpoint, input_size=input_size)
    return YOLACT.load_from_checkpoint(checkpoint, evaluate=False, map_location="cpu").eval()


def best_scores(model: YOLACT, images: list[Tensor]) -> list[Tensor]:
    """Per image, every anchor's best foreground score (what both thresholds compare), sorted descending."""
    ranked = []
    for image in images:
        outputs = model.network(model.preprocess([image]), semantic=False)
        scores = outputs.class_logits[0].float().softmax(dim=1)[:, 1:].max(dim=1).values
        ranked.append(scores.sort(descending=True).values)
    return ranked


def threshold_for_candidates(ranked: list[Tensor], candidates: int) -> tuple[float, int]:
    """(threshold, image index): the threshold keeping `candidates` anchors on the median image.

    Each image's own threshold lies half-way between its candidates-th and next best score; the median (low) of
    those is chosen, so half the images keep at least `candidates` anchors, and the image it comes from has no
    anchor within float noise of it (the like-for-like check runs on that image).
    """
    if not 0 < candidates < min(len(scores) for scores in ranked):
        raise ValueError(f"--candidates must be in 1..{min(len(scores) for scores in ranked) - 1}, got {candidates}")
    own = [float((scores[candidates - 1] + scores[candidates]) / 2) for scores in ranked]
    threshold = statistics.median_low(own)
    return threshold, own.index(threshold)


def compare_detections(official: dict[str, Tensor], ours: dict[str, Tensor]) -> dict[str, Any]:
    """How far our detections are from the official ones (both sorted by score). Returns the differences and
    `same` (count equal, labels equal, scores within SCORE_TOL, boxes within BOX_TOL_PX, masks agreeing on at
    least MASK_AGREEMENT of their pixels)."""
    count_official, count_ours = len(official["scores"]), len(ours["scores"])
    report: dict[str, Any] = {"detections_official": count_official, "detections_ours": count_ours}
    if count_official != count_ours:
        return {**report, "same": False, "reason": "different detection counts"}
    if count_ours == 0:
        return {**report, "same": True}
    if official["masks"].shape != ours["masks"].shape:
        return {**report, "same": False, "reason": f"mask shapes {tuple(official['masks'].shape)} vs "
                                                   f"{tuple(ours['masks'].shape)}"}
    label_mismatches = int((official["labels"] != ours["labels"]).sum())
    score_diff = float((official["scores"] - ours["scores"]).abs().max())
    box_diff = float((official["boxes"] - ours["boxes"]).abs().max())
    mask_agreement = float((official["masks"] == ours["masks"]).float().flatten(1).mean(1).min())
    report.update(label_mismatches=label_mismatches, max_score_diff=score_diff, max_box_diff_px=box_diff,
                  min_mask_pixel_agreement=mask_agreement)
    report["same"] = (label_mismatches == 0 and score_diff <= SCORE_TOL and box_diff <= BOX_TOL_PX
                      and mask_agreement >= MASK_AGREEMENT)
    return report


def load_images(folder: str, limit: int) -> list[Tensor]:
    """Up to `limit` images of `folder` (sorted by name) as float RGB [3, H, W] in 0..1."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise FileNotFoundError(f"--images {folder}: no {'/'.join(IMAGE_SUFFIXES)} images")
    return [read_image(str(p), ImageReadMode.RGB).float() / 255.0 for p in paths]


# ---------------------------------------------------------------------------------------------------- parity

PARITY_SEED = 18
PARITY_SIZE = 128
PARITY_CLASSES = 8
LOSS_NAMES = {"B": "loss_box", "C": "loss_cls", "M": "loss_mask", "S": "loss_semantic"}  # official -> ours


def parity_model(seed: int = PARITY_SEED) -> tuple[YOLACT, dict[str, Tensor]]:
    """Our YOLACT in the official v1 ResNet-50 layout at PARITY_SIZE px, with the seeded weights (and them).

    The official normalisation is named: left at None, the statistics would be timm's ImageNet ones, not YOLACT's.
    """
    torch.manual_seed(seed)
    model = YOLACT(
        num_classes=PARITY_CLASSES, backbone="resnet50", out_indices=[2, 3, 4], pretrained=False, norm="bn",
        input_size=PARITY_SIZE, anchor_scales=[int(s * PARITY_SIZE / 550) for s in (24, 48, 96, 192, 384)],
        square_anchors=True, pixel_mean=RESNET_MEAN, pixel_std=RESNET_STD, evaluate=False,
    )
    return model, seeded_state(model, seed)


def official_key_to_ours(key: str) -> str | None:
    """The converter's own key table (models.yolact.convert), official name -> ours."""
    return rename_key(key, _PATTERNS)


def to_official_layout(ours: dict[str, Tensor], official_keys: list[str]) -> dict[str, Tensor]:
    """Our seeded tensors under the official names (BatchNorm step counters and tolerated stale keys skipped)."""
    return official_layout(ours, official_keys, official_key_to_ours,
                           ignored=lambda key: key.endswith("num_batches_tracked") or bool(_TOLERATED.match(key)))


def parity_images() -> list[Tensor]:
    """Two non-square float RGB images in 0..1 (eval inputs; both get resized to PARITY_SIZE)."""
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, 96, 112, generator=generator), torch.rand(3, 140, 120, generator=generator)]


def parity_batch() -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Two PARITY_SIZE^2 images (no resize, so the official loss sees the same masks) with 2 + 1 objects and one
    crowd box on the first image; targets in the datamodule's format (boxes in pixels, contiguous labels)."""
    generator = torch.Generator().manual_seed(2)
    size = PARITY_SIZE
    images = [torch.rand(3, size, size, generator=generator) for _ in range(2)]
    layouts = [([[10, 12, 70, 90], [60, 30, 120, 100], [0, 64, 64, 128]], [1, 5, 3], [0, 0, 1]),
               ([[30, 20, 100, 110]], [7], [0])]
    targets = []
    for boxes, labels, crowd in layouts:
        boxes = torch.tensor(boxes, dtype=torch.float32)
        masks = torch.zeros(len(boxes), size, size)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
            mask[y0:y1, x0:x1] = 1
            mask[(y0 + y1) // 2:y1, x0:(x0 + x1) // 2] = 0  # an L shape: not the box itself
        targets.append({"boxes": boxes, "labels": torch.tensor(labels), "masks": masks,
                        "iscrowd": torch.tensor(crowd)})
    return images, targets


def ours_eval_outputs(model: YOLACT, images: list[Tensor]) -> dict[str, Tensor]:
    """What the official Detect receives, from our model (eval mode): see the module docstring."""
    model.eval()
    with torch.no_grad():
        batch = model.preprocess(images)
        outputs = model.network(batch, semantic=False)
    anchors = outputs.anchors / PARITY_SIZE
    priors = torch.cat([(anchors[:, :2] + anchors[:, 2:]) / 2, anchors[:, 2:] - anchors[:, :2]], dim=1)
    return {"input": batch, "box_deltas": outputs.box_deltas, "class_scores": outputs.class_logits.softmax(-1),
            "coefficients": outputs.coefficients, "prototypes": outputs.prototypes, "anchors": priors}


def ours_train_outputs(model: YOLACT, images: list[Tensor], targets: list[dict]) -> dict[str, Tensor]:
    """Our losses (train mode, BatchNorm on batch statistics) and anchor assignments on the training batch."""
    from models.yolact.targets import match_anchors

    model.train()
    losses = model.compute_losses(images, targets)
    with torch.no_grad():
        anchors = model.network(model.preprocess(images), semantic=False).anchors
    model.eval()
    crit = model.criterion
    assignments = torch.stack([
        match_anchors(anchors, t.boxes, t.labels, t.crowd_boxes, crit.pos_iou_thresh, crit.neg_iou_thresh,
                      crit.crowd_iou_thresh)[0]
        for t in model.training_targets(images, targets)
    ])
    return {**{name: value.detach() for name, value in losses.items()}, "assignments": assignments}


def build_official_small(official: types.SimpleNamespace) -> torch.nn.Module:
    """The official yolact_resnet50_config at PARITY_SIZE px with PARITY_CLASSES classes (weights to be loaded)."""
    official.set_cfg(OFFICIAL_CONFIG)
    cfg = official.cfg
    cfg.replace({
        "max_size": PARITY_SIZE, "num_classes": PARITY_CLASSES + 1,
        "backbone": cfg.backbone.copy({"pred_scales": [[int(s[0] * PARITY_SIZE / 550)]
                                                       for s in cfg.backbone.pred_scales]}),
    })
    cfg.mask_proto_debug = False
    net = official.Yolact()
    net.detect.use_fast_nms = True
    net.detect.use_cross_class_nms = False
    return net


def official_eval_outputs(official, net, images: list[Tensor]) -> dict[str, Tensor]:
    """The official network's inputs to Detect (captured by wrapping net.detect) on `images`, resized by the
    official FastBaseTransform."""
    transform = official_transform(official)
    captured = {}
    detect = net.detect

    def capture(pred_outs, net_):
        captured.update({key: value.clone() for key, value in pred_outs.items() if isinstance(value, Tensor)})
        return []

    net.eval()
    net.detect = capture
    try:
        with torch.no_grad():
            batch = torch.cat([official_input(transform, image) for image in images])
            net(batch)
    finally:
        net.detect = detect
    return {"input": batch, "box_deltas": captured["loc"], "class_scores": captured["conf"],
            "coefficients": captured["mask"], "prototypes": captured["proto"].permute(0, 3, 1, 2),
            "anchors": captured["priors"]}


def official_train_outputs(official, net, images: list[Tensor], targets: list[dict]) -> dict[str, Tensor]:
    """The official MultiBoxLoss terms and `match` assignments (conf_t) on the training batch, train mode."""
    import layers.modules.multibox_loss as multibox  # the official module, importable once import_official ran
    from layers.modules import MultiBoxLoss

    cfg = official.cfg
    transform = official_transform(official)
    batch = torch.cat([official_input(transform, image) for image in images])
    official_targets, masks, num_crowds = [], [], []
    for target in targets:
        order = torch.argsort(target["iscrowd"], stable=True)  # the official wants crowds last
        boxes = target["boxes"][order] / PARITY_SIZE
        official_targets.append(torch.cat([boxes, target["labels"][order, None].float()], dim=1))
        masks.append(target["masks"][order].float())
        num_crowds.append(int(target["iscrowd"].sum()))
    assignments = {}
    original_match = multibox.match

    def recording_match(pos_thresh, neg_thresh, truths, priors, labels, crowd_boxes, loc_t, conf_t, idx_t, idx,
                        loc_data):
        original_match(pos_thresh, neg_thresh, truths, priors, labels, crowd_boxes, loc_t, conf_t, idx_t, idx,
                       loc_data)
        assignments[idx] = conf_t[idx].clone()

    criterion = MultiBoxLoss(num_classes=cfg.num_classes, pos_threshold=cfg.positive_iou_threshold,
                             neg_threshold=cfg.negative_iou_threshold, negpos_ratio=cfg.ohem_negpos_ratio)
    net.train()
    multibox.match = recording_match
    try:
        losses = criterion(net, net(batch), official_targets, masks, num_crowds)
    finally:
        multibox.match = original_match
        net.eval()
    return {**{LOSS_NAMES[key]: value.detach() for key, value in losses.items()},
            "assignments": torch.stack([assignments[i] for i in range(len(images))])}


# The released v1 ResNet checkpoints' configurations (README model zoo) and the input size each was trained at.
RELEASED_LAYOUTS = {"yolact_resnet50_config": 550, "yolact_base_config": 550, "yolact_im400_config": 400,
                    "yolact_im700_config": 700}


def official_layouts(official: types.SimpleNamespace) -> dict[str, dict]:
    """Key -> shape of the official model of every RELEASED_LAYOUTS configuration (COCO, 81 classes)."""
    layouts = {}
    for name, input_size in RELEASED_LAYOUTS.items():
        official.set_cfg(name)
        layouts[name] = {"input_size": input_size, "shapes": layout(official.Yolact())}
    return layouts


def converter_reads_layout(name: str, entry: dict) -> dict:
    """Our converter's settings for one official layout (raises when its keys or shapes do not map)."""
    return converter_reads(entry["shapes"], lambda state: official_settings(state, name, entry["input_size"]),
                           YOLACT, lambda state, expected: map_state_dict(state, expected, name))


def run_parity(args: argparse.Namespace) -> dict[str, Any]:
    official = import_official(args.official_repo)
    layouts = official_layouts(official)
    layout_report = {name: {k: converter_reads_layout(name, entry)[k] for k in ("backbone", "num_classes",
                                                                                   "input_size", "anchor_scales")}
                     for name, entry in layouts.items()}
    seed = PARITY_SEED if args.seed is None else args.seed
    model, ours_state = parity_model(seed)
    net = build_official_small(official)
    official_keys = list(net.state_dict())
    net.load_state_dict(to_official_layout(ours_state, official_keys), strict=True)
    # The converter on the official layout must give back our settings and weights.
    with tempfile.TemporaryDirectory() as workdir:
        converted = convert_to_ours(net, workdir, input_size=PARITY_SIZE)
    roundtrip = all(torch.equal(converted.state_dict()[k], v) for k, v in ours_state.items())
    settings = official_settings(net.state_dict(), "official", PARITY_SIZE)
    same_settings = all(model.hparams[k] == v for k, v in settings.items())

    images = parity_images()
    batch_images, targets = parity_batch()
    official_eval = official_eval_outputs(official, net, images)
    official_train = official_train_outputs(official, net, batch_images, targets)
    ours = {**ours_eval_outputs(model, images), **ours_train_outputs(model, batch_images, targets)}
    official_all = {**official_eval, **official_train}
    measured = max_differences(official_all, ours)
    allowed = tolerances(measured, official_all)
    allowed["assignments"] = 0.0  # identical or wrong
    fixture = {
        "seed": seed, "checksum": state_checksum(ours_state), "torch": torch.__version__,
        "official_repo_commit": git_head(official.root), "official_keys": official_keys, "layouts": layouts,
        "images": images, "batch_images": batch_images, "targets": targets,
        "official": official_all, "measured": measured, "tolerances": allowed,
    }
    path = save_fixture("yolact", fixture, args.fixture_dir)
    return {"converter_roundtrip_equal": roundtrip, "converter_settings_equal": same_settings,
            "official_keys": len(official_keys), "max_abs_diff": measured, "released_layouts_converted": layout_report,
            "official_losses": {k: float(official_train[k]) for k in LOSS_NAMES.values()},
            "ours_losses": {k: float(ours[k]) for k in LOSS_NAMES.values()},
            "assignments": {"positives": int((official_train["assignments"] > 0).sum()),
                            "neutral": int((official_train["assignments"] < 0).sum()),
                            "mismatches": int((official_train["assignments"] != ours["assignments"]).sum())},
            "fixture": path}


# ---------------------------------------------------------------------------------------------------- timing


def alternate(calls: dict[str, Callable[[int], Any]], rounds: int) -> dict[str, list[float]]:
    """Wall seconds of every call, the callers alternating: round r calls them in order, reversed on odd rounds.
    Each call receives the round index (to pick its image)."""
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names if index % 2 == 0 else reversed(names):
            start = time.perf_counter()
            calls[name](index)
            times[name].append(time.perf_counter() - start)
    return times


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {"median": 1000 * statistics.median(ordered), "p90": 1000 * p90, "mean": 1000 * statistics.fmean(ordered),
            "min": 1000 * ordered[0], "n": len(ordered)}


class _OursStageTimer:
    """Wall time of our stages during one forward: wrappers around the submodules' forward, the model's
    preprocess / network / postprocess and the post-processing's mask assembly (installed for the profile pass
    only, removed by `close`)."""

    MODULES = {"backbone": "backbone", "fpn": "neck", "protonet": "protonet", "head": "head"}

    def __init__(self, model: YOLACT):
        self.model, self.times, self._undo = model, {}, []
        for stage, name in self.MODULES.items():
            self._wrap(getattr(model, name), "forward", stage)
        self._wrap(model, "preprocess", "preprocess")
        self._wrap(model, "network", "network")
        self._wrap(model, "postprocess", "postprocess")
        self._wrap(our_postprocess, "assemble_masks", "masks")

    def _wrap(self, owner: Any, attribute: str, stage: str) -> None:
        original = getattr(owner, attribute)
        had_own = attribute in vars(owner)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - start

        setattr(owner, attribute, timed)
        self._undo.append((owner, attribute, original, had_own))

    def stages(self) -> dict[str, float]:
        """Comparable stages of the last call: network remainder = anchors and output packing; detect = the
        post-processing minus mask assembly (softmax, threshold, decode, Fast NMS, box scaling)."""
        t = self.times
        network_parts = sum(t.get(s, 0.0) for s in self.MODULES)
        return {
            "preprocess": t.get("preprocess", 0.0),
            **{s: t.get(s, 0.0) for s in self.MODULES},
            "priors/anchors+other": t.get("network", 0.0) - network_parts,
            "detect (softmax, decode, NMS)": t.get("postprocess", 0.0) - t.get("masks", 0.0),
            "masks (assemble, crop, upsample)": t.get("masks", 0.0),
        }

    def close(self) -> None:
        for owner, attribute, original, had_own in reversed(self._undo):
            if had_own:
                setattr(owner, attribute, original)
            else:
                delattr(owner, attribute)  # the class's method shows through again


def official_stages(timer_module: types.ModuleType, total: float) -> dict[str, float]:
    """The official utils.timer sections of the last call, grouped like ours; time outside any section (the
    softmax and concatenation in Yolact.forward) is counted with detect."""
    t = {name: seconds for name, seconds in timer_module._total_times.items()}
    stages = {
        "preprocess": 0.0,
        "backbone": t.get("backbone", 0.0),
        "fpn": t.get("fpn", 0.0),
        "protonet": t.get("proto", 0.0),
        "head": t.get("pred_heads", 0.0),
        "priors/anchors+other": t.get("makepriors", 0.0),
        "masks (assemble, crop, upsample)": t.get("Postprocess", 0.0) + t.get("Copy", 0.0) + t.get("Sync", 0.0),
    }
    stages["detect (softmax, decode, NMS)"] = total - sum(stages.values())
    return stages


# ------------------------------------------------------------------------------------------------------ main


def run_timing(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    official = import_official(args.official_repo)
    images = load_images(args.images or str(synthetic_root() / "val2017"), args.max_images)
    result: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_before": os.getloadavg(),
        "official_repo": str(official.root),
        "official_config": OFFICIAL_CONFIG,
        "images": {"folder": args.images or str(synthetic_root() / "val2017"), "count": len(images),
                   "sizes": sorted({tuple(image.shape[-2:]) for image in images})},
    }
    with tempfile.TemporaryDirectory() as workdir, torch.no_grad():
        net = build_official(official, 0 if args.seed is None else args.seed, workdir)
        ours = convert_to_ours(net, workdir)
        transform = official_transform(official)
        batches = [official_input(transform, image) for image in images]  # untimed, as eval.py's data loading

        ranked = best_scores(ours, images)
        threshold, check_index = args.score_thresh, 0
        if threshold is None:
            threshold, check_index = threshold_for_candidates(ranked, args.candidates)
        net.detect.conf_thresh = threshold
        ours.postprocess.score_thresh = threshold
        result["score_thresh"] = threshold
        result["score_thresh_rule"] = ("--score-thresh" if args.score_thresh is not None
                                       else f"keeps {args.candidates} candidates on the median image")

        check_image = images[check_index]
        height, width = check_image.shape[-2:]
        check = compare_detections(official_detections(official, net, batches[check_index], height, width),
                                   ours([check_image])[0])
        result["same_detections_check"] = {"image_index": check_index, **check}
        print(json.dumps({"same_detections_check": result["same_detections_check"]}, indent=2), flush=True)
        if not check["same"]:
            raise RuntimeError(f"the two implementations disagree on image {check_index}: {check}; timing would "
                               "compare different computations")

        # The work each image makes (untimed): candidates above the threshold, detections kept.
        result["work_per_image"] = {
            "candidates_min_median_max": _spread([int((scores > threshold).sum()) for scores in ranked]),
            "detections_min_median_max": _spread([len(ours([image])[0]["scores"]) for image in images]),
        }

        def call_official(index: int) -> None:
            image = images[index % len(images)]
            official.timer.reset()
            official.eval.prep_benchmark(net(batches[index % len(images)]), image.shape[-2], image.shape[-1])

        def call_ours(index: int) -> None:
            ours([images[index % len(images)]])

        calls = {"official": call_official, "ours": call_ours}
        alternate(calls, args.warmup)
        times = alternate(calls, args.iters)
        medians = {name: statistics.median(t) for name, t in times.items()}
        result["timing"] = {
            "protocol": "batch 1, alternating official/ours call by call (order swapped every round), warm-up "
                        "excluded, torch.no_grad",
            "warmup_rounds": args.warmup,
            "timed_rounds": args.iters,
            "ms_per_image": {name: summary_ms(t) for name, t in times.items()},
            "ratio_ours_over_official_median": medians["ours"] / medians["official"],
            # Each round's two calls ran back to back under the same load: the median of their ratios resists
            # load drift better than the ratio of the medians.
            "paired_ratio_ours_over_official": _paired_ratios(times["ours"], times["official"]),
            "per_round_ms": {name: [round(1000 * t, 3) for t in ts] for name, ts in times.items()},
            "ours_no_slower": medians["ours"] <= medians["official"],
        }
        print(json.dumps({"timing": result["timing"]}, indent=2), flush=True)

        if args.profile_iters > 0:
            result["stages_ms_median"] = profile(official, net, ours, images, batches, args.profile_iters)
            print(json.dumps({"stages_ms_median": result["stages_ms_median"]}, indent=2), flush=True)
    result["load_average_after"] = os.getloadavg()
    return result


def profile(official, net, ours: YOLACT, images: list[Tensor], batches: list[Tensor], rounds: int) -> dict:
    """Per-stage medians (ms) of both, from a separate alternating pass (its wrappers add a little overhead)."""
    per_call: dict[str, list[dict[str, float]]] = {"official": [], "ours": []}
    ours_timer = _OursStageTimer(ours)
    try:
        def call_official(index: int) -> None:
            image = images[index % len(images)]
            official.timer.reset()
            start = time.perf_counter()
            official.eval.prep_benchmark(net(batches[index % len(images)]), image.shape[-2], image.shape[-1])
            per_call["official"].append(official_stages(official.timer, time.perf_counter() - start))

        def call_ours(index: int) -> None:
            ours_timer.times = {}
            ours([images[index % len(images)]])
            per_call["ours"].append(ours_timer.stages())

        alternate({"official": call_official, "ours": call_ours}, rounds + 1)
    finally:
        ours_timer.close()
    return {
        name: {stage: 1000 * statistics.median(call[stage] for call in calls[1:]) for stage in calls[0]}
        for name, calls in per_call.items()
    }


def _paired_ratios(ours: list[float], official: list[float]) -> dict[str, float]:
    ratios = sorted(a / b for a, b in zip(ours, official))
    return {"median": statistics.median(ratios), "p10": ratios[int(round(0.1 * (len(ratios) - 1)))],
            "p90": ratios[int(round(0.9 * (len(ratios) - 1)))], "rounds_ours_faster": sum(r < 1 for r in ratios)}


def _spread(values: list[int]) -> list[float]:
    return [min(values), statistics.median(values), max(values)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-repo", required=True, help="a checkout of github.com/dbolya/yolact")
    parser.add_argument("--timing", action="store_true", help="time the two (else: parity and the fixture)")
    parser.add_argument("--fixture-dir", default=FIXTURE_DIR, help="where the parity fixture is written")
    parser.add_argument("--images", default=None,
                        help="folder of real images (default: the synthetic val split of datamodules.synthetic)")
    parser.add_argument("--max-images", type=int, default=20, help="images cycled through (first N by name)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3, help="untimed alternating rounds")
    parser.add_argument("--iters", type=int, default=30, help="timed alternating rounds")
    parser.add_argument("--profile-iters", type=int, default=10, help="per-stage rounds (0: no breakdown)")
    threshold = parser.add_mutually_exclusive_group()
    threshold.add_argument("--candidates", type=int, default=1000,
                           help="set both score thresholds to keep this many anchors on the median image")
    threshold.add_argument("--score-thresh", type=float, default=None, help="set both score thresholds to this")
    parser.add_argument("--seed", type=int, default=None, help=f"weights seed (default: {PARITY_SEED} for parity, 0 for timing)")
    parser.add_argument("--out", default=None, help="also write the result JSON here (atomically)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run_timing(args) if args.timing else run_parity(args)
    print(json.dumps(result, indent=2))
    if args.out:
        write_json_atomic(args.out, result, sort_keys=False)


if __name__ == "__main__":
    main()

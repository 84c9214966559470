"""maskbench's ISTR against the official V1 code (hujiecpp/ISTR at 02279fc): head, codec, matching and losses.

    git --git-dir=<mirror of hujiecpp/ISTR> archive 02279fc | tar -x -C ~/src/istr_v1
    python -m benchmarks.parity.istr --official-repo ~/src/istr_v1     # parity + tests/fixtures/parity/istr.pt

The procedure of benchmarks/parity/common.py. Our ISTR at a small size (`parity_model`: ResNet-18 stand-in backbone,
hidden 32, 8 attention heads, 3 stages, 7 queries, 5 classes, K = 16, 128 x 160 input) gets seeded random weights.
The official V1 modules are imported from `--official-repo` (projects/ISTR/istr: head.py `DynamicHead`, loss.py
`SetCriterion` + `HungarianMatcher`, MaskEncoding.py `PCAMaskEncoding`, inseg.py's `ImgFeatExtractor`, util/box_ops)
on the detectron2 / fvcore stand-in of benchmarks/parity/_detectron2_stub.py, configured like the official
config.py + Base-ISTR.yaml (ROIAlignV2, 7 x 7, sampling 2, P2..P5; NUM_DYNAMIC 2; ELU; dropout 0) at our sizes.
The official meta-architecture's own parameters (`pos_embeddings`, `init_proposal_boxes`, `mask_encoding.*`) and
the head's (`head.head_series.*`) get our weights through our converter's key table (models.istr.convert).

The backbone is detectron2's own ResNet + FPN as the checkout ships it (detectron2/layers/{wrappers,blocks}.py,
detectron2/modeling/backbone/{backbone,resnet,fpn}.py, loaded as files into the stand-in packages;
`build_resnet_fpn_backbone` with ISTR-R50-3x.yaml's STRIDE_IN_1X1 False, FrozenBN, depth 18 here), so the whole
official state dict's keys (the released checkpoints' layout) go through our converter, and the whole network runs
on both sides from the same normalised padded batch (our transform's).
  * eval: the pyramid P2..P5, the query initialisation (boxes from init_proposal_boxes x image size; features = sum over levels of the
    spatial mean + pos_embeddings, official `ImgFeatExtractor`) and every stage's class logits, boxes and mask
    embeddings (official `DynamicHead` with deep supervision);
  * train: the Hungarian assignments of every stage and the five loss totals (the official per-stage terms
    loss_ce, loss_bbox, loss_giou, loss_feat, loss_dice x their weights, summed over stages, as inseg.py weights
    them) against ours. The targets are ours (models.istr.targets: crops and the resized frame) handed to both.
    The official encoder draws soft-logit noise (torch.rand_like) at every call; ours once per batch: both are fed
    the constant noise r = 0.025 (the official `torch.rand_like` returns 0.5 during the run, ours encodes with
    `constant_soft_logits`), so the comparison is exact rather than statistical.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import types
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.parity import _detectron2_stub
from benchmarks.parity.common import (
    converter_reads, git_head, layout, max_differences, official_layout, save_fixture, script_main, seeded_state,
    state_checksum, tolerances,
)
from models.common.checkpoint import rename_key
from models.istr import ISTR
from models.istr.convert import _PATTERNS, map_state_dict, official_settings
from models.istr.mask_codec import SOFT_MAX
from models.istr.targets import match_targets

PARITY_SEED = 18
SETTINGS = dict(
    num_classes=5, backbone="resnet18", out_indices=[1, 2, 3, 4], pretrained=False, frozen_stages=0,
    norm="frozen_bn", fpn_channels=32, min_size=128, max_size=160, num_queries=7, num_stages=3, num_heads=8,
    dim_feedforward=64, dynamic_dim=16, pooler_resolution=7, num_cls_layers=1, num_reg_layers=3, num_mask_layers=3,
    codec="pca", codec_components=16, codec_mask_size=28, evaluate=False,
)
CONSTANT_NOISE = SOFT_MAX / 2  # r = 0.05 x 0.5: the official VALUE_MAX x rand_like when rand_like returns 0.5
OFFICIAL_TERMS = {"loss_ce": "loss_cls", "loss_bbox": "loss_box", "loss_giou": "loss_giou", "loss_feat": "loss_mask",
                  "loss_dice": "loss_dice"}
# Our converter fills these itself (the official file has no such tensors).
CONVERTER_FILLED = ("codec.ready", "codec.explained_variance_ratio")


# ------------------------------------------------------------------------------------------------------ ours


def parity_model(seed: int = PARITY_SEED) -> tuple[ISTR, dict[str, Tensor]]:
    """Our small ISTR with the seeded weights (a usable codec: positive variances, `ready`), and them."""
    torch.manual_seed(seed)
    model = ISTR(**SETTINGS).eval()
    state = seeded_state(model, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    state["codec.explained_variance"] = torch.rand(state["codec.explained_variance"].shape, generator=generator) + 0.5
    state["codec.ready"] = torch.tensor(True)
    state["codec.explained_variance_ratio"] = torch.zeros_like(state["codec.explained_variance_ratio"])
    # The query boxes as the official init (whole image), jittered so every query starts elsewhere.
    boxes = torch.tensor([0.5, 0.5, 1.0, 1.0]).repeat(SETTINGS["num_queries"], 1)
    state["init_proposal_boxes.weight"] = boxes + (torch.rand(boxes.shape, generator=generator) - 0.5) * 0.4
    model.load_state_dict(state, strict=True)
    return model, state


def official_key_to_ours(key: str) -> str | None:
    return rename_key(key, _PATTERNS)


def to_official_layout(ours: dict[str, Tensor], official_keys: list[str]) -> dict[str, Tensor]:
    """Our tensors under the official names (the converter fills CONVERTER_FILLED itself)."""
    return official_layout(ours, official_keys, official_key_to_ours, ignored=lambda key: key in CONVERTER_FILLED)


def parity_batch() -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Two 128 x 160 images (the model's own size: no resize) with 3 and 2 objects, L-shaped masks."""
    generator = torch.Generator().manual_seed(2)
    images = [torch.rand(3, 128, 160, generator=generator) for _ in range(2)]
    targets = []
    for boxes, labels in (([[10, 12, 70, 90], [60, 30, 150, 100], [5, 60, 50, 120]], [0, 2, 4]),
                          ([[20, 10, 90, 120], [40, 50, 100, 110]], [1, 2])):
        boxes = torch.tensor(boxes, dtype=torch.float32)
        masks = torch.zeros(len(boxes), 128, 160, dtype=torch.uint8)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
            mask[y0:y1, x0:x1] = 1
            mask[(y0 + y1) // 2:y1, x0:(x0 + x1) // 2] = 0
        targets.append({"boxes": boxes, "labels": torch.tensor(labels), "masks": masks,
                        "iscrowd": torch.zeros(len(boxes), dtype=torch.int64)})
    return images, targets


class ConstantNoiseCodec:
    """Our codec, encoding with the constant soft-logit noise CONSTANT_NOISE (see the module docstring)."""

    def __init__(self, codec):
        self.codec, self.num_components = codec, codec.num_components

    def encode(self, masks: Tensor) -> Tensor:
        return self.codec.encode_logits(constant_soft_logits(masks))


def constant_soft_logits(masks: Tensor) -> Tensor:
    values = masks.flatten(1).float()
    return torch.logit(torch.where(values >= 0.5, 1 - values.new_tensor(CONSTANT_NOISE), CONSTANT_NOISE))


def ours_outputs(model: ISTR, images: list[Tensor], targets: list[dict]) -> tuple[dict[str, Tensor], list]:
    """Our query initialisation, stage outputs, assignments and losses; also the match targets (for the official)."""
    captured = {}
    hooks = [model.head.register_forward_pre_hook(lambda module, args: captured.update(
        features=[f.clone() for f in args[0]], boxes=args[1].clone(), queries=args[2].clone())),
        model.backbone.register_forward_pre_hook(lambda module, args: captured.update(batch=args[0].clone()))]
    try:
        with torch.no_grad():
            stages, resized = model.network(images)
    finally:
        for hook in hooks:
            hook.remove()
    sizes = [(int(i.shape[-2]), int(i.shape[-1])) for i in images]
    wanted = match_targets(targets, sizes, resized, ConstantNoiseCodec(model.codec), SETTINGS["codec_mask_size"],
                           stages[-1].boxes.device)
    with torch.no_grad():
        losses = model.criterion(stages, wanted, model.codec)
        matches = [model.criterion.matcher(s.class_logits, s.boxes, s.mask_embeddings, wanted) for s in stages]
    outputs = {**{f"p{i + 2}": f for i, f in enumerate(captured["features"])}, "init_boxes": captured["boxes"], "init_queries": captured["queries"],
               "class_logits": torch.stack([s.class_logits for s in stages]),
               "boxes": torch.stack([s.boxes for s in stages]),
               "mask_embeddings": torch.stack([s.mask_embeddings for s in stages]),
               "assignments": _assignment_table(matches, SETTINGS["num_queries"]), **losses}
    return outputs, captured["batch"], wanted


def _assignment_table(matches, num_queries: int) -> Tensor:
    """int64 [S, B, N]: per stage and image, the ground truth each query is matched to (-1: none)."""
    table = torch.full((len(matches), len(matches[0]), num_queries), -1, dtype=torch.int64)
    for stage, per_image in enumerate(matches):
        for image, (queries, gts) in enumerate(per_image):
            table[stage, image, queries] = gts
    return table


# -------------------------------------------------------------------------------------------------- official


@contextlib.contextmanager
def official_modules(repo: str):
    """The official V1 modules (namespace) on the detectron2 stand-in; istr/__init__.py (which also imports the
    dataset mapper's detectron2 data stack) is not run: the package is set up from its directory."""
    root = Path(repo).expanduser().resolve() / "projects" / "ISTR"
    if not (root / "istr" / "head.py").is_file() or not (root / "istr" / "MaskEncoding.py").is_file():
        raise FileNotFoundError(f"--official-repo {repo}: no projects/ISTR/istr/head.py + MaskEncoding.py "
                                "(an ISTR V1 checkout, commit 02279fc)")
    import torchvision

    detectron2 = root.parent.parent / "detectron2"
    with _detectron2_stub.installed():
        layers = sys.modules["detectron2.layers"]
        layers.Conv2d = _detectron2_stub.load_file("detectron2.layers.wrappers", detectron2 / "layers/wrappers.py").Conv2d
        layers.CNNBlockBase = _detectron2_stub.load_file("detectron2.layers.blocks",
                                                         detectron2 / "layers/blocks.py").CNNBlockBase
        for name in ("backbone", "resnet", "fpn"):
            backbone_module = _detectron2_stub.load_file(f"detectron2.modeling.backbone.{name}",
                                                         detectron2 / f"modeling/backbone/{name}.py")
        package = types.ModuleType("istr")
        package.__path__ = [str(root / "istr")]
        sys.modules["istr"] = package
        # util/misc.py (from DETR) tests `float(torchvision.__version__[:3]) < 0.7`, which reads "0.2x" as 0.2 and
        # imports helpers gone since torchvision 0.7: give it a version string it parses as intended.
        version, torchvision.__version__ = torchvision.__version__, "9.9"
        try:
            names = ("head", "loss", "MaskEncoding", "util.box_ops", "inseg")
            loaded = {name: importlib.import_module(f"istr.{name}") for name in names}
        finally:
            torchvision.__version__ = version
        try:
            yield types.SimpleNamespace(root=root.parent.parent, d2_fpn=backbone_module,
                                        **{k.split(".")[-1]: v for k, v in loaded.items()})
        finally:
            for name in [n for n in sys.modules if n == "istr" or n.startswith("istr.")]:
                sys.modules.pop(name)


def official_cfg(settings: dict = SETTINGS) -> types.SimpleNamespace:
    """The official config.py / Base-ISTR.yaml / ISTR-R*-3x.yaml values the modules read, at `settings`' sizes."""
    istr = types.SimpleNamespace(
        NUM_CLASSES=settings["num_classes"], NUM_PROPOSALS=settings["num_queries"], NHEADS=settings["num_heads"],
        DROPOUT=0.0, DIM_FEEDFORWARD=settings["dim_feedforward"], ACTIVATION="relu",
        HIDDEN_DIM=settings["fpn_channels"], NUM_CLS=settings["num_cls_layers"], NUM_REG=settings["num_reg_layers"],
        NUM_MASK=settings["num_mask_layers"], NUM_HEADS=settings["num_stages"], MASK_DIM=settings["codec_components"],
        NUM_DYNAMIC=2, DIM_DYNAMIC=settings["dynamic_dim"], CLASS_WEIGHT=2.0, GIOU_WEIGHT=2.0, L1_WEIGHT=5.0,
        DEEP_SUPERVISION=True, NO_OBJECT_WEIGHT=0.1, MASK_WEIGHT=2.0, ALPHA=0.25, GAMMA=2.0, PRIOR_PROB=0.01,
    )
    resnets = types.SimpleNamespace(
        NORM="FrozenBN", STEM_OUT_CHANNELS=64, OUT_FEATURES=["res2", "res3", "res4", "res5"],
        DEPTH=int(settings["backbone"].removeprefix("resnet")), NUM_GROUPS=1, WIDTH_PER_GROUP=64,
        RES2_OUT_CHANNELS=64 if settings["backbone"] in ("resnet18", "resnet34") else 256, STRIDE_IN_1X1=False,
        RES5_DILATION=1, DEFORM_ON_PER_STAGE=[False] * 4, DEFORM_MODULATED=False, DEFORM_NUM_GROUPS=1)
    fpn = types.SimpleNamespace(IN_FEATURES=["res2", "res3", "res4", "res5"], OUT_CHANNELS=settings["fpn_channels"],
                                NORM="", FUSE_TYPE="sum")
    return types.SimpleNamespace(MODEL=types.SimpleNamespace(
        BACKBONE=types.SimpleNamespace(FREEZE_AT=0), RESNETS=resnets, FPN=fpn,
        ISTR=istr, ROI_HEADS=types.SimpleNamespace(IN_FEATURES=["p2", "p3", "p4", "p5"]),
        ROI_BOX_HEAD=types.SimpleNamespace(POOLER_RESOLUTION=settings["pooler_resolution"], POOLER_SAMPLING_RATIO=2,
                                           POOLER_TYPE="ROIAlignV2")))


class OfficialParts(torch.nn.Module):
    """The official meta-architecture's modules under its own names (inseg.py's ISTR.__init__): backbone (detectron2's
    ResNet + FPN), pos_embeddings, init_proposal_boxes, mask_encoding, head."""

    def __init__(self, official, cfg):
        super().__init__()
        self.backbone = official.d2_fpn.build_resnet_fpn_backbone(cfg, _detectron2_stub.ShapeSpec(channels=3))
        self.head = official.head.DynamicHead(cfg=cfg, roi_input_shape=self.backbone.output_shape())
        self.mask_encoding = official.MaskEncoding.PCAMaskEncoding(cfg)
        istr = cfg.MODEL.ISTR
        self.pos_embeddings = torch.nn.Embedding(istr.NUM_PROPOSALS, istr.HIDDEN_DIM)
        self.init_proposal_boxes = torch.nn.Embedding(istr.NUM_PROPOSALS, 4)


def official_outputs(official, parts: OfficialParts, cfg, batch: Tensor, images: list[Tensor], wanted
                     ) -> dict[str, Tensor]:
    box_ops = official.box_ops
    whwh = torch.tensor([[i.shape[-1], i.shape[-2]] * 2 for i in images], dtype=torch.float32)
    with torch.no_grad():
        pyramid = parts.backbone(batch)
        features = [pyramid[name] for name in cfg.MODEL.ROI_HEADS.IN_FEATURES]
        # inseg.py's forward, step by step, with its own functions.
        boxes = box_ops.box_cxcywh_to_xyxy(parts.init_proposal_boxes.weight.clone())[None] * whwh[:, None, :]
        queries = _img_feat_extractor(official, cfg)(features) + parts.pos_embeddings.weight[None].repeat(
            len(images), 1, 1)
        classes, coords, masks = parts.head(features, boxes, queries)
    targets = []
    for target in wanted:
        size = target.image_size
        targets.append({"labels": target.labels, "boxes": box_ops.box_xyxy_to_cxcywh(target.boxes / size),
                        "boxes_xyxy": target.boxes, "image_size_xyxy": size,
                        "image_size_xyxy_tgt": size[None].repeat(len(target.boxes), 1), "gt_masks": target.masks})
    criterion, matches = _criterion(official, cfg), []
    matcher_forward = criterion.matcher.forward

    def recording_matcher(outputs, targets_, mask_encoding):
        result = matcher_forward(outputs, targets_, mask_encoding)
        matches.append(result)
        return result

    criterion.matcher.forward = recording_matcher
    output = {"pred_logits": classes[-1], "pred_boxes": coords[-1], "pred_masks": masks[-1],
              "aux_outputs": [{"pred_logits": a, "pred_boxes": b, "pred_masks": c}
                              for a, b, c in zip(classes[:-1], coords[:-1], masks[:-1])]}
    rand_like = torch.rand_like
    torch.rand_like = lambda x, *args, **kwargs: torch.full_like(x, 0.5)  # constant noise, see the docstring
    try:
        with torch.no_grad():
            losses = criterion(output, targets, parts.mask_encoding)
    finally:
        torch.rand_like = rand_like
    # The criterion matches the last stage first, then the auxiliary ones in order: put them in stage order.
    matches = matches[1:] + matches[:1]
    totals = {ours: sum(criterion.weight_dict[k] * v for k, v in losses.items() if k.rsplit("_", 1)[0] == name
                        or k == name) for name, ours in OFFICIAL_TERMS.items()}
    return {**{f"p{i + 2}": f for i, f in enumerate(features)},
            "init_boxes": boxes, "init_queries": queries, "class_logits": classes, "boxes": coords,
            "mask_embeddings": masks, "assignments": _assignment_table(matches, SETTINGS["num_queries"]), **totals}


def _img_feat_extractor(official, cfg):
    return official.inseg.ImgFeatExtractor(cfg)


def _criterion(official, cfg):
    """inseg.py's SetCriterion construction (weights, deep-supervision keys)."""
    istr = cfg.MODEL.ISTR
    matcher = official.loss.HungarianMatcher(cfg=cfg, cost_class=istr.CLASS_WEIGHT, cost_bbox=istr.L1_WEIGHT,
                                             cost_giou=istr.GIOU_WEIGHT, cost_mask=istr.MASK_WEIGHT)
    weights = {"loss_ce": istr.CLASS_WEIGHT, "loss_bbox": istr.L1_WEIGHT, "loss_giou": istr.GIOU_WEIGHT,
               "loss_feat": istr.MASK_WEIGHT, "loss_dice": istr.MASK_WEIGHT}
    weights.update({f"{k}_{i}": v for i in range(istr.NUM_HEADS - 1) for k, v in list(weights.items())})
    return official.loss.SetCriterion(cfg=cfg, num_classes=istr.NUM_CLASSES, matcher=matcher, weight_dict=weights,
                                      eos_coef=istr.NO_OBJECT_WEIGHT, losses=["labels", "boxes", "masks"])


# The released V1 models (configs/ISTR-R50-3x.yaml, ISTR-R101-3x.yaml; config.py defaults otherwise).
OFFICIAL_SIZES = dict(num_classes=80, num_queries=300, num_heads=8, dim_feedforward=2048, fpn_channels=256,
                      num_cls_layers=3, num_reg_layers=3, num_mask_layers=3, num_stages=6, codec_components=60,
                      dynamic_dim=64, pooler_resolution=7)
RELEASED_LAYOUTS = {"ISTR-R50-3x": dict(OFFICIAL_SIZES, backbone="resnet50"),
                    "ISTR-R101-3x": dict(OFFICIAL_SIZES, backbone="resnet101")}


def official_layouts(official) -> dict[str, dict[str, list[int]]]:
    """Key -> shape of the official model of every released configuration."""
    return {name: layout(OfficialParts(official, official_cfg(settings)))
            for name, settings in RELEASED_LAYOUTS.items()}


def converter_reads_layout(name: str, shapes: dict[str, list[int]]) -> dict:
    """Our converter's settings for one official layout (raises when its keys or shapes do not map)."""
    return converter_reads(shapes, lambda state: official_settings(state, name), ISTR,
                           lambda state, expected: map_state_dict(state, expected, name))


# ------------------------------------------------------------------------------------------------------ run


def run_parity(args: argparse.Namespace) -> dict[str, Any]:
    seed = args.seed
    model, state = parity_model(seed)
    images, targets = parity_batch()
    ours, batch, wanted = ours_outputs(model, images, targets)
    cfg = official_cfg()
    with official_modules(args.official_repo) as official:
        parts = OfficialParts(official, cfg).eval()
        official_keys = list(parts.state_dict())
        parts.load_state_dict(to_official_layout(state, official_keys), strict=True)
        official_all = official_outputs(official, parts, cfg, batch, images, wanted)
        layouts = official_layouts(official)
    layout_report = {name: {k: converter_reads_layout(name, shapes)[k] for k in ("backbone", "num_queries",
                                                                                   "num_stages", "codec_components")}
                     for name, shapes in layouts.items()}
    measured = max_differences(official_all, ours)
    allowed = tolerances(measured, official_all)
    allowed["assignments"] = 0.0
    fixture = {
        "seed": seed, "checksum": state_checksum(state), "torch": torch.__version__,
        "official_repo_commit": git_head(official.root), "official_keys": official_keys,
        "images": images, "targets": targets, "layouts": layouts, "official": official_all, "measured": measured, "tolerances": allowed,
    }
    path = save_fixture("istr", fixture, args.fixture_dir)
    return {"official_keys": len(official_keys), "released_layouts_converted": layout_report, "max_abs_diff": measured,
            "official_losses": {k: float(official_all[k]) for k in OFFICIAL_TERMS.values()},
            "ours_losses": {k: float(ours[k]) for k in OFFICIAL_TERMS.values()},
            "assignment_mismatches": int((official_all["assignments"] != ours["assignments"]).sum()),
            "matched_pairs": int((ours["assignments"] >= 0).sum()), "fixture": path}


def main(argv: list[str] | None = None) -> None:
    script_main(__doc__.split("\n\n")[0], "hujiecpp/ISTR checked out at 02279fc (V1)", PARITY_SEED, run_parity, argv)


if __name__ == "__main__":
    main()

"""A minimal stand-in for the few detectron2 / fvcore pieces that official ISTR and centermask2 modules import,
so the parity scripts can run those modules where detectron2 cannot be installed. Used ONLY by the parity scripts,
injected into sys.modules by `installed()` for the duration of the official imports and runs; nothing in maskbench
imports it.

Every piece follows detectron2's documented behaviour (v0.3-0.6) and is built on torch / torchvision:
  layers.Conv2d            nn.Conv2d + optional `norm` and `activation` modules applied after the convolution
  layers.get_norm          "" -> None, "BN", "FrozenBN", "GN" (32 groups), "SyncBN" (as BN: one process here)
  layers.FrozenBatchNorm2d torchvision's (same four buffers, eps 1e-5, same formula)
  layers.ShapeSpec, cat, interpolate, ConvTranspose2d, batched_nms (torchvision), ROIAlign (torchvision roi_align)
  structures.Boxes / pairwise_iou / Instances (the attributes the official heads touch)
  modeling.poolers.ROIPooler  detectron2's level assignment (canonical box 224 at level 4:
                           floor(4 + log2(sqrt(area) / 224 + 1e-8)), clamped to the given levels) and
                           ROIAlignV2 = torchvision roi_align(aligned=True) / ROIAlign (aligned=False)
  modeling.backbone.Backbone, registries (a dict with a `register` decorator), Matcher (never called here)
  modeling.backbone.fpn.FPN  detectron2's FPN: fpn_lateral{s} 1x1 / fpn_output{s} 3x3 per input stage s = log2
                           stride (bias unless normed), top-down nearest x2 added to the lateral, outputs p{s}, then
                           `top_block` on its `in_feature` (a bottom-up feature or an FPN output), fuse "sum"/"avg"
  fvcore.nn.sigmoid_focal_loss_jit  torchvision.ops.sigmoid_focal_loss (fvcore's formula, alpha/gamma/reduction)
  fvcore.nn.weight_init            c2_xavier_fill / c2_msra_fill (detectron2's Caffe2-style initialisers)
Anything else an official module reaches for is absent and fails loudly at import or call time.
"""
from __future__ import annotations

import contextlib
import math
import sys
import types
from collections import namedtuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d as _TorchvisionFrozenBN
from torchvision.ops import batched_nms, box_iou, roi_align, sigmoid_focal_loss


# ------------------------------------------------------------------------------------------------ layers

ShapeSpec = namedtuple("ShapeSpec", ["channels", "height", "width", "stride"], defaults=(None, None, None, None))


class Conv2d(nn.Conv2d):
    """detectron2's Conv2d: nn.Conv2d with optional `norm` and `activation` applied after it."""

    def __init__(self, *args, norm=None, activation=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x):
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class FrozenBatchNorm2d(_TorchvisionFrozenBN):
    """detectron2's FrozenBatchNorm2d (weight, bias, running_mean, running_var buffers; eps 1e-5)."""

    def __init__(self, num_features, eps=1e-5):
        super().__init__(num_features, eps=eps)
        self.num_features = num_features


def get_norm(norm, out_channels):
    if norm in ("", None):
        return None
    if callable(norm):
        return norm(out_channels)
    makers = {"BN": nn.BatchNorm2d, "SyncBN": nn.BatchNorm2d, "FrozenBN": FrozenBatchNorm2d,
              "GN": lambda channels: nn.GroupNorm(32, channels)}
    if norm not in makers:
        raise NotImplementedError(f"detectron2 stand-in: get_norm({norm!r}) is not provided")
    return makers[norm](out_channels)


def cat(tensors, dim=0):
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim)


class ROIAlign(nn.Module):
    def __init__(self, output_size, spatial_scale, sampling_ratio, aligned=True):
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale
        self.sampling_ratio, self.aligned = sampling_ratio, aligned

    def forward(self, x, rois):
        return roi_align(x, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)


# -------------------------------------------------------------------------------------------- structures


class Boxes:
    def __init__(self, tensor):
        self.tensor = tensor

    def __len__(self):
        return self.tensor.shape[0]

    def area(self):
        box = self.tensor
        return (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])

    def clip(self, box_size):
        height, width = box_size
        self.tensor[:, 0].clamp_(min=0, max=width)
        self.tensor[:, 1].clamp_(min=0, max=height)
        self.tensor[:, 2].clamp_(min=0, max=width)
        self.tensor[:, 3].clamp_(min=0, max=height)

    @staticmethod
    def cat(boxes_list):
        return Boxes(torch.cat([b.tensor for b in boxes_list]))

    def __getitem__(self, item):
        tensor = self.tensor[item]
        return Boxes(tensor.view(1, -1) if tensor.dim() == 1 else tensor)


def pairwise_iou(boxes1, boxes2):
    return box_iou(boxes1.tensor, boxes2.tensor)


class Instances:
    """The field container of detectron2 (fields set as attributes, `len`, indexing, `has`)."""

    def __init__(self, image_size, **fields):
        object.__setattr__(self, "image_size", image_size)
        object.__setattr__(self, "_fields", {})
        for name, value in fields.items():
            self.set(name, value)

    def set(self, name, value):
        self._fields[name] = value

    def __setattr__(self, name, value):
        self.set(name, value)

    def __getattr__(self, name):
        fields = object.__getattribute__(self, "_fields")
        if name not in fields:
            raise AttributeError(name)
        return fields[name]

    def has(self, name):
        return name in self._fields

    def get_fields(self):
        return self._fields

    def __len__(self):
        for value in self._fields.values():
            return len(value)
        return 0

    def __getitem__(self, item):
        result = Instances(self.image_size)
        for name, value in self._fields.items():
            result.set(name, value[item])
        return result

    @staticmethod
    def cat(instance_lists):
        result = Instances(instance_lists[0].image_size)
        for name, first in instance_lists[0]._fields.items():
            values = [i._fields[name] for i in instance_lists]
            result.set(name, torch.cat(values) if isinstance(first, torch.Tensor) else type(first).cat(values))
        return result


# ---------------------------------------------------------------------------------------------- modeling


def assign_boxes_to_levels(box_lists, min_level, max_level, canonical_box_size, canonical_level):
    sizes = torch.sqrt(cat([boxes.area() for boxes in box_lists]))
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_box_size + 1e-8))
    return (torch.clamp(levels, min=min_level, max=max_level) - min_level).to(torch.int64)


def convert_boxes_to_pooler_format(box_lists):
    rois = [torch.cat([torch.full((len(b), 1), i, dtype=b.tensor.dtype, device=b.tensor.device), b.tensor], dim=1)
            for i, b in enumerate(box_lists)]
    return cat(rois, dim=0)


class ROIPooler(nn.Module):
    """detectron2's multi-level RoI pooler (ROIAlign / ROIAlignV2 only)."""

    def __init__(self, output_size, scales, sampling_ratio, pooler_type, canonical_box_size=224, canonical_level=4):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        if pooler_type not in ("ROIAlign", "ROIAlignV2"):
            raise NotImplementedError(f"detectron2 stand-in: pooler_type {pooler_type!r} is not provided")
        aligned = pooler_type == "ROIAlignV2"
        self.output_size = output_size
        self.level_poolers = nn.ModuleList(ROIAlign(output_size, scale, sampling_ratio, aligned) for scale in scales)
        self.min_level = int(-math.log2(scales[0]))
        self.max_level = int(-math.log2(scales[-1]))
        self.canonical_box_size, self.canonical_level = canonical_box_size, canonical_level

    def forward(self, x, box_lists):
        rois = convert_boxes_to_pooler_format(box_lists)
        if len(self.level_poolers) == 1:
            return self.level_poolers[0](x[0], rois)
        levels = assign_boxes_to_levels(box_lists, self.min_level, self.max_level, self.canonical_box_size,
                                        self.canonical_level)
        output = x[0].new_zeros((rois.shape[0], x[0].shape[1], *self.output_size))
        for level, pooler in enumerate(self.level_poolers):
            index = torch.nonzero(levels == level, as_tuple=True)[0]
            output.index_put_((index,), pooler(x[level], rois[index]))
        return output


class Backbone(nn.Module):
    """detectron2's abstract Backbone: `output_shape()` from `_out_features` / channels / strides."""

    @property
    def size_divisibility(self):
        return 0

    def output_shape(self):
        return {name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
                for name in self._out_features}


class FPN(Backbone):
    """detectron2's FPN (see the module docstring)."""

    def __init__(self, bottom_up, in_features, out_channels, norm="", top_block=None, fuse_type="sum"):
        super().__init__()
        shapes = bottom_up.output_shape()
        strides = [shapes[f].stride for f in in_features]
        lateral_convs, output_convs = [], []
        for in_channels, stride in zip([shapes[f].channels for f in in_features], strides):
            lateral = Conv2d(in_channels, out_channels, kernel_size=1, bias=norm == "",
                             norm=get_norm(norm, out_channels))
            output = Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=norm == "",
                            norm=get_norm(norm, out_channels))
            stage = int(math.log2(stride))
            self.add_module(f"fpn_lateral{stage}", lateral)
            self.add_module(f"fpn_output{stage}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
        self.lateral_convs, self.output_convs = lateral_convs[::-1], output_convs[::-1]
        self.top_block = top_block
        self.in_features = tuple(in_features)
        self.bottom_up = bottom_up
        self._out_feature_strides = {f"p{int(math.log2(s))}": s for s in strides}
        if top_block is not None:
            for s in range(stage, stage + top_block.num_levels):
                self._out_feature_strides[f"p{s + 1}"] = 2 ** (s + 1)
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {k: out_channels for k in self._out_features}
        self._fuse_type = fuse_type

    def forward(self, x):
        bottom_up = self.bottom_up(x)
        previous = self.lateral_convs[0](bottom_up[self.in_features[-1]])
        results = [self.output_convs[0](previous)]
        for index in range(1, len(self.lateral_convs)):
            top_down = F.interpolate(previous, scale_factor=2.0, mode="nearest")
            previous = self.lateral_convs[index](bottom_up[self.in_features[-index - 1]]) + top_down
            if self._fuse_type == "avg":
                previous = previous / 2
            results.insert(0, self.output_convs[index](previous))
        if self.top_block is not None:
            source = self.top_block.in_feature
            top_input = bottom_up[source] if source in bottom_up else results[self._out_features.index(source)]
            results.extend(self.top_block(top_input))
        return dict(zip(self._out_features, results))


class Registry(dict):
    def __init__(self, name=""):
        super().__init__()
        self.name = name

    def register(self, obj=None):
        def add(item):
            self[item.__name__] = item
            return item

        return add if obj is None else add(obj)

    def get(self, name):
        return self[name]


def _not_provided(name):
    def missing(*args, **kwargs):
        raise NotImplementedError(f"detectron2 stand-in: {name} is not provided (only imported by the official code)")

    return missing


def log_first_n(*args, **kwargs):
    pass


class Matcher:
    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        raise NotImplementedError("detectron2 stand-in: Matcher is not provided")


# ----------------------------------------------------------------------------------------------- fvcore


def sigmoid_focal_loss_jit(inputs, targets, alpha=-1, gamma=2, reduction="none"):
    return sigmoid_focal_loss(inputs, targets, alpha=alpha, gamma=gamma, reduction=reduction)


def c2_xavier_fill(module):
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


def c2_msra_fill(module):
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


# -------------------------------------------------------------------------------------------- injection


def _module(name, **attributes):
    module = types.ModuleType(name)
    module.__file__ = f"<maskbench detectron2 stand-in: {name}>"
    module.__dict__.update(attributes)
    return module


def _modules():
    registry = Registry
    layers = dict(Conv2d=Conv2d, ConvTranspose2d=nn.ConvTranspose2d, ShapeSpec=ShapeSpec, get_norm=get_norm,
                  FrozenBatchNorm2d=FrozenBatchNorm2d, cat=cat, interpolate=F.interpolate, ROIAlign=ROIAlign,
                  batched_nms=batched_nms, DeformConv=_not_provided("DeformConv"),
                  ModulatedDeformConv=_not_provided("ModulatedDeformConv"),
                  ROIAlignRotated=_not_provided("ROIAlignRotated"))
    structures = dict(Boxes=Boxes, pairwise_iou=pairwise_iou, Instances=Instances,
                      ImageList=_not_provided("ImageList"))
    backbone_registry = registry("BACKBONE")
    return {
        "detectron2": _module("detectron2", __path__=[]),
        "detectron2.layers": _module("detectron2.layers", __path__=[], **layers),
        "detectron2.layers.batch_norm": _module("detectron2.layers.batch_norm", get_norm=get_norm,
                                                FrozenBatchNorm2d=FrozenBatchNorm2d),
        "detectron2.structures": _module("detectron2.structures", __path__=[], **structures),
        "detectron2.modeling": _module("detectron2.modeling", __path__=[], Backbone=Backbone,
                                       META_ARCH_REGISTRY=registry("META_ARCH"),
                                       build_backbone=_not_provided("build_backbone"),
                                       detector_postprocess=_not_provided("detector_postprocess")),
        "detectron2.modeling.roi_heads": _module("detectron2.modeling.roi_heads",
                                                 build_roi_heads=_not_provided("build_roi_heads")),
        "detectron2.utils.logger": _module("detectron2.utils.logger", log_first_n=log_first_n),
        "detectron2.modeling.poolers": _module("detectron2.modeling.poolers", ROIPooler=ROIPooler, cat=cat,
                                               assign_boxes_to_levels=assign_boxes_to_levels,
                                               convert_boxes_to_pooler_format=convert_boxes_to_pooler_format),
        "detectron2.modeling.matcher": _module("detectron2.modeling.matcher", Matcher=Matcher),
        "detectron2.modeling.backbone": _module("detectron2.modeling.backbone", __path__=[], Backbone=Backbone,
                                                BACKBONE_REGISTRY=backbone_registry, FPN=FPN,
                                                build_resnet_backbone=_not_provided("build_resnet_backbone")),
        "detectron2.modeling.backbone.fpn": _module("detectron2.modeling.backbone.fpn", FPN=FPN,
                                                    LastLevelMaxPool=_not_provided("LastLevelMaxPool")),
        "detectron2.modeling.backbone.build": _module("detectron2.modeling.backbone.build",
                                                      BACKBONE_REGISTRY=backbone_registry),
        "detectron2.modeling.proposal_generator": _module("detectron2.modeling.proposal_generator", __path__=[]),
        "detectron2.modeling.proposal_generator.build": _module(
            "detectron2.modeling.proposal_generator.build", PROPOSAL_GENERATOR_REGISTRY=registry("PROPOSAL")),
        "detectron2.utils": _module("detectron2.utils", __path__=[]),
        "detectron2.utils.registry": _module("detectron2.utils.registry", Registry=registry),
        "detectron2.utils.comm": _module("detectron2.utils.comm", get_world_size=lambda: 1),
        "detectron2.utils.events": _module("detectron2.utils.events",
                                           get_event_storage=_not_provided("get_event_storage")),
        "detectron2.structures.masks": _module("detectron2.structures.masks",
                                               PolygonMasks=_not_provided("PolygonMasks")),
        "fvcore": _module("fvcore", __path__=[]),
        "fvcore.nn": _module("fvcore.nn", __path__=[], sigmoid_focal_loss_jit=sigmoid_focal_loss_jit,
                             giou_loss=_not_provided("fvcore giou_loss"),
                             smooth_l1_loss=_not_provided("fvcore smooth_l1_loss")),
        "fvcore.nn.weight_init": _module("fvcore.nn.weight_init", c2_xavier_fill=c2_xavier_fill,
                                         c2_msra_fill=c2_msra_fill),
    }


@contextlib.contextmanager
def installed():
    """The stand-in modules in sys.modules for the duration (refused if a real detectron2 / fvcore is loaded)."""
    modules = _modules()
    present = [name for name in modules if name in sys.modules]
    if present:
        raise RuntimeError(f"modules {present} are already imported; the detectron2 stand-in would shadow them")
    sys.modules.update(modules)
    sys.modules["fvcore.nn"].weight_init = modules["fvcore.nn.weight_init"]
    try:
        yield
    finally:  # also what a caller loaded under these packages (e.g. real detectron2 files, see load_file)
        for name in [n for n in sys.modules if n.split(".")[0] in ("detectron2", "fvcore")]:
            sys.modules.pop(name, None)


def load_file(name: str, path) -> types.ModuleType:
    """Execute the source file `path` as module `name` (registered in sys.modules first, so its relative imports
    resolve inside the stand-in packages): for real detectron2 files shipped in an official checkout."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

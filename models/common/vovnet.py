"""VoVNetV2 as the official detectors build it (eSE in every OSA block), from timm's VoVNet building blocks.

timm's `ese_vovnet*` models put the effective squeeze-excitation (eSE) only on the LAST block of each stage; the
VoVNetV2 of CenterMask (youngwanLEE/vovnet-detectron2, centermask2) puts it on EVERY block, so its weights do not
map onto timm's V-39/57/99 one to one. timm also registers no non-depthwise V-19 (`ese_vovnet19b` exists only as a
configuration), which is CenterMask-Lite's V-19. `VoVNetBackbone` builds timm's `VovNet` class from any of timm's
VoVNet configurations and, with `ese_every_block=True`, gives every block the eSE module the official structure
has; the layers are otherwise timm's (ConvNormAct, OsaBlock, EffectiveSEModule), so no VoVNet code is copied here.

Official VoVNet weights (centermask2 detectors, or the ImageNet backbones they start from) load through
`official_key`, the one key table shared with the centermask2 converter:

    stem.stem_{j}/conv|norm                              -> stem.{j-1}.conv|bn
    stage{s}.OSA{s}_{b}.layers.{i}.OSA{s}_{b}_{i}/conv|norm -> stages.{s-2}.blocks.{b-1}.conv_mid.{i}.conv|bn
    stage{s}.OSA{s}_{b}.concat.OSA{s}_{b}_concat/conv|norm  -> stages.{s-2}.blocks.{b-1}.conv_concat.conv|bn
    stage{s}.OSA{s}_{b}.ese.fc                              -> stages.{s-2}.blocks.{b-1}.attn.fc
"""
from __future__ import annotations

import re

from timm.layers import EffectiveSEModule, convert_sync_batchnorm
from timm.models.vovnet import VovNet, model_cfgs
from torch import Tensor, nn

from models.common.backbone import NORMS, freeze_norm
from models.common.checkpoint import check_converted_state_dict, read_state_dict, rename_key

# The configurations of timm's VoVNet module (its registered models and `ese_vovnet19b`), by name.
VOVNET_CONFIGS = tuple(sorted(model_cfgs))

_OFFICIAL_PATTERNS = [
    (re.compile(r"^stem\.stem_(\d)/(conv|norm)\.(.+)$"),
     lambda m: f"stem.{int(m[1]) - 1}.{_LAYER[m[2]]}.{m[3]}"),
    (re.compile(r"^stage(\d)\.OSA\1_(\d+)\.layers\.(\d+)\.OSA\1_\2_\3/(conv|norm)\.(.+)$"),
     lambda m: f"stages.{int(m[1]) - 2}.blocks.{int(m[2]) - 1}.conv_mid.{m[3]}.{_LAYER[m[4]]}.{m[5]}"),
    (re.compile(r"^stage(\d)\.OSA\1_(\d+)\.concat\.OSA\1_\2_concat/(conv|norm)\.(.+)$"),
     lambda m: f"stages.{int(m[1]) - 2}.blocks.{int(m[2]) - 1}.conv_concat.{_LAYER[m[3]]}.{m[4]}"),
    (re.compile(r"^stage(\d)\.OSA\1_(\d+)\.ese\.fc\.(weight|bias)$"),
     lambda m: f"stages.{int(m[1]) - 2}.blocks.{int(m[2]) - 1}.attn.fc.{m[3]}"),
]
_LAYER = {"conv": "conv", "norm": "bn"}


class VoVNetBackbone(nn.Module):
    """Feature maps of a VoVNet at the requested `out_indices` (the same interface as `TimmBackbone`).

    Args:
        name: a timm VoVNet configuration (`VOVNET_CONFIGS`: "ese_vovnet19b", "ese_vovnet39b", "ese_vovnet57b",
            "ese_vovnet99b", the slim / depthwise / V1 variants).
        out_indices: indices into the feature list: 0 = stem at stride 2 (taken before the stem's last conv, as
            timm does), 1..4 = stages 2..5 at strides 4, 8, 16, 32 (CenterMask uses [2, 3, 4]).
        ese_every_block: True is the official VoVNetV2 (an eSE module closes every OSA block); False is timm's
            variant (eSE on the last block of each stage only), for timm's ImageNet weights.
        pretrained_path: official VoVNet weights (a detectron2-format ImageNet backbone such as
            vovnet39_ese_detectron2.pth: a state dict, raw or under "model" / "state_dict", keys optionally
            prefixed "backbone.bottom_up." or "module."). Keys outside the VoVNet pattern (a classifier) are
            ignored; every backbone tensor must be filled. For timm's own weights use `TimmBackbone`.
        frozen_stages: 0 = nothing frozen, 1 = the stem, k = the stem and the first k - 1 stages (detectron2's
            FREEZE_AT; CenterMask trains everything: 0).
        norm: "frozen_bn", "bn" or "sync_bn", as `TimmBackbone`.

    `forward(x: Tensor[B,3,H,W]) -> list[Tensor[B, channels[i], H/strides[i], W/strides[i]]]`.
    """

    def __init__(
        self,
        name: str,
        out_indices: list[int],
        ese_every_block: bool = True,
        pretrained_path: str | None = None,
        frozen_stages: int = 0,
        norm: str = "frozen_bn",
    ):
        super().__init__()
        if name not in model_cfgs:
            raise ValueError(f"VoVNet backbone: unknown configuration {name!r}; known: {', '.join(VOVNET_CONFIGS)}")
        if norm not in NORMS:
            raise ValueError(f"VoVNet backbone {name!r}: norm must be one of {NORMS}, got {norm!r}")
        if not out_indices or any(i not in range(5) for i in out_indices) or list(out_indices) != sorted(out_indices):
            raise ValueError(f"VoVNet backbone {name!r}: out_indices must be increasing values in 0..4, got {out_indices}")
        if not 0 <= frozen_stages <= 5:
            raise ValueError(f"VoVNet backbone {name!r}: frozen_stages must lie in 0..5, got {frozen_stages}")
        cfg = model_cfgs[name]
        body = VovNet(cfg=cfg, num_classes=0)
        body.head = nn.Identity()  # the classifier is not part of a detection backbone
        if ese_every_block:
            if cfg["attn"] != "ese":
                raise ValueError(f"VoVNet backbone {name!r}: ese_every_block needs an eSE (VoVNetV2) configuration")
            for stage in body.stages:
                for block in stage.blocks:
                    if block.attn is None:
                        block.attn = EffectiveSEModule(block.conv_concat.conv.out_channels)
        self.body = body
        self.out_indices = list(out_indices)
        info = body.feature_info
        self.channels: list[int] = [info[i]["num_chs"] for i in self.out_indices]
        self.strides: list[int] = [info[i]["reduction"] for i in self.out_indices]
        if pretrained_path is not None:
            load_official_weights(self.body, pretrained_path)
        if norm == "frozen_bn":
            self.body = freeze_norm(self.body)
        elif norm == "sync_bn":
            self.body = convert_sync_batchnorm(self.body)  # timm's: keeps ConvNormAct's activations
        self._freeze(frozen_stages)

    def _freeze(self, frozen_stages: int) -> None:
        parts = [self.body.stem, *self.body.stages][:frozen_stages]
        for part in parts:
            for parameter in part.parameters():
                parameter.requires_grad_(False)
            freeze_norm(part)

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        x = self.body.stem[:-1](x)
        if 0 in self.out_indices:
            outputs.append(x)
        x = self.body.stem[-1](x)
        last = self.out_indices[-1]
        for index, stage in enumerate(self.body.stages[:last], start=1):
            x = stage(x)
            if index in self.out_indices:
                outputs.append(x)
        return outputs


def official_key(key: str) -> str | None:
    """An official VoVNet key (relative to the backbone: "stage3.OSA3_1.ese.fc.weight") -> this module's
    `body` key ("stages.1.blocks.0.attn.fc.weight"), or None when the key is not a VoVNet tensor."""
    return rename_key(key, _OFFICIAL_PATTERNS)


def load_official_weights(body: nn.Module, path: str) -> None:
    """Copy official VoVNet weights from `path` (a state dict, raw or under 'model' / 'state_dict') into timm's
    `VovNet` module `body`, strict on the backbone; tensors outside it (a classifier, a detector head) are ignored."""
    try:
        state = read_state_dict(path, "a state dict of tensors (raw or under 'model' / 'state_dict')",
                                wrappers=("model", "state_dict"))
    except FileNotFoundError:
        raise FileNotFoundError(f"VoVNet backbone: pretrained_path {path!r} is not a file") from None
    mapped = {}
    for key, value in state.items():
        for prefix in ("backbone.bottom_up.", "module."):
            key = key.removeprefix(prefix)
        new_key = official_key(key)
        if new_key is not None:
            mapped[new_key] = value
    body.load_state_dict(check_converted_state_dict(mapped, body.state_dict(), [], path, "official VoVNet"))

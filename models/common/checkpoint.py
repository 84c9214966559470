"""What every architecture's `convert.py` shares: reading a foreign weights file, renaming its keys by a pattern
table, checking the result against the model, and writing it as a Lightning checkpoint."""
from __future__ import annotations

import re
from typing import Callable

import lightning
import torch
from lightning import LightningModule

from datamodules.files import atomic_path


def save_converted_checkpoint(model: LightningModule, out_path: str, class_path: str) -> str:
    """Save `model` (weights + hyper-parameters) as a checkpoint at `out_path`, atomically; returns `out_path`.

    `class_path` is the model's public import path (e.g. "models.mask_rcnn.MaskRCNN"), as a config names it.

    It holds the same two class entries that a checkpoint written under LightningCLI holds, so `maskbench validate
    --ckpt_path` can read the model's class and arguments from it, and `Model.load_from_checkpoint` works too.
    """
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": {
            **dict(model.hparams),
            "_class_path": class_path,
            "_instantiator": "lightning.pytorch.cli.instantiate_module",
        },
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
    }
    with atomic_path(out_path) as tmp:  # a killed conversion never leaves a truncated checkpoint
        torch.save(checkpoint, tmp)
    return out_path


def check_converted_state_dict(
    mapped: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], unused: list[str], path: str, layout: str
) -> dict[str, torch.Tensor]:
    """The last step of every converter: `mapped` (renamed foreign weights) must fill `expected` (the model's own
    state dict) exactly. BatchNorm step counters missing from the file are filled with zeros (not weights; absent
    from frozen-BN and some official files). Anything missing, left over (`unused` foreign keys plus mapped keys the
    model lacks) or of the wrong shape is one ValueError naming the file and the `layout` it was read as.
    Returns `mapped`, completed."""
    for key in expected:
        if key.endswith(".num_batches_tracked") and key not in mapped:
            mapped[key] = torch.zeros_like(expected[key])
    missing = sorted(set(expected) - set(mapped))
    unused = list(unused) + sorted(key for key in mapped if key not in expected)
    wrong_shape = [f"{key} {tuple(value.shape)} vs {tuple(expected[key].shape)}"
                   for key, value in mapped.items() if key in expected and value.shape != expected[key].shape]
    if missing or unused or wrong_shape:
        raise ValueError(f"{path}: weights do not match the {layout} layout: missing {missing}, unused {unused}, "
                         f"wrong shape {wrong_shape}")
    return mapped


def load_weights_file(path: str, hint: str = "") -> object:
    """The content of a foreign weights file, loaded weights-only (no pickled code runs). A missing file raises
    FileNotFoundError; anything else unreadable is a ValueError naming the file, with `hint` added."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises several types for a file it cannot read safely
        raise ValueError(f"{path}: cannot be read as a weights-only torch file ({error}){hint}".replace("\n", " ")) \
            from error


def read_state_dict(path: str, expected: str, wrappers: tuple[str, ...] = ("model",), hint: str = ""
                    ) -> dict[str, torch.Tensor]:
    """The tensors of a foreign weights file (`load_weights_file`): the state dict under the first of `wrappers`
    the file holds as a dict (detectron2's "model"; () for a raw state dict only), else the file itself. A missing
    file raises FileNotFoundError; anything else unreadable or not a non-empty dict of tensors is a ValueError
    naming the file and what was `expected`; `hint` is added to the unreadable-file message."""
    checkpoint = load_weights_file(path, hint)
    state = checkpoint
    if isinstance(checkpoint, dict):
        state = next((checkpoint[w] for w in wrappers if isinstance(checkpoint.get(w), dict)), checkpoint)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected {expected}")
    return state


KeyPatterns = list[tuple[re.Pattern, Callable[[re.Match], str]]]


def rename_key(key: str, patterns: KeyPatterns) -> str | None:
    """`key` rewritten by the first pattern of the table that matches it, None when none does."""
    for pattern, rewrite in patterns:
        match = pattern.match(key)
        if match:
            return rewrite(match)
    return None

"""What every parity script and fixture test shares.

The procedure, per architecture:
  1. `seeded_state(model, seed)`: every floating tensor of OUR freshly built model's state dict is overwritten from
     a torch.Generator seeded with `seed` (BatchNorm statistics and affine parameters included, so that every tensor
     changes the output). `state_checksum` fingerprints the result: a test regenerating it from the seed knows
     whether torch's RNG still gives the same weights.
  2. `official_layout(ours, official_keys, map_key)`: the same tensors under the official names. `official_keys`
     are the keys of the official module's state_dict() (built by the script from the official code), `map_key`
     is OUR converter's official -> maskbench key function, so the inverse needs no second key table; every one of
     our tensors must be claimed.
  3. The script runs the official model on that state dict, our model on the seeded one, and writes a fixture
     (`save_fixture`): seed, checksum, official key list, inputs, official outputs and the tolerances it measured.
  4. The fixture test regenerates the weights (`check_checksum`), pushes them through the converter from the
     stored official key list (so the converter is checked against the real official layout on every commit), runs
     our model and compares with the stored official outputs (`compare`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import zlib
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

FIXTURE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "tests", "fixtures", "parity")
# Tolerance stored in a fixture = SAFETY x the difference the script measured, at least the floor (absolute, on
# tensors of magnitude ~1): float round-off differs between thread counts and CPUs, a layer error does not hide
# below it.
SAFETY = 10.0


def seeded_state(model: torch.nn.Module, seed: int) -> dict[str, Tensor]:
    """`model`'s state dict with every floating tensor drawn from its own generator, seeded with `seed` and the
    tensor's name (so a tensor added or renamed elsewhere in the model leaves the others as they were).

    Matrices / kernels: normal with std 1/sqrt(fan_in) (activations keep their scale through plain layers);
    1-D weights (norm scales): uniform 0.5..1; 1-D biases and BatchNorm running means: normal, std 0.1; BatchNorm
    running variances: uniform 0.5..1.5. Integer and bool buffers are kept. The model is loaded with the result.
    """
    state = {}
    for name, tensor in model.state_dict().items():
        generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        if not tensor.is_floating_point():
            state[name] = tensor.clone()
            continue
        shape, leaf = tensor.shape, name.rsplit(".", 1)[-1]
        if leaf == "running_var":
            value = torch.rand(shape, generator=generator) + 0.5
        elif leaf == "running_mean" or (tensor.dim() <= 1 and leaf != "weight"):
            value = torch.randn(shape, generator=generator) * 0.1
        elif tensor.dim() <= 1:
            value = torch.rand(shape, generator=generator) * 0.5 + 0.5
        else:
            fan_in = tensor[0].numel()
            value = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
        state[name] = value.to(tensor.dtype)
    model.load_state_dict(state, strict=True)
    return state


def state_checksum(state: dict[str, Tensor]) -> str:
    """sha256 over the keys (sorted) and the tensors' bytes."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def official_layout(ours: dict[str, Tensor], official_keys: list[str],
                    map_key: Callable[[str], str | None], ignored: Callable[[str], bool] = lambda key: False
                    ) -> dict[str, Tensor]:
    """Our tensors under the official names: official key k holds ours[map_key(k)].

    `ignored(key)` marks official keys the converter reads but drops (e.g. BatchNorm step counters) and our keys
    no official tensor fills (filled by the converter itself): they are skipped. Raises ValueError when an official
    key maps to nothing or every one of our tensors is not claimed: the converter and the official layout disagree.
    """
    state, unmapped = {}, []
    for key in official_keys:
        if ignored(key):
            continue
        new_key = map_key(key)
        if new_key is None or new_key not in ours:
            unmapped.append(f"{key} -> {new_key}")
            continue
        state[key] = ours[new_key]
    claimed = {map_key(key) for key in state}
    unclaimed = sorted(key for key in ours if key not in claimed and not ignored(key))
    if unmapped or unclaimed:
        raise ValueError(f"the converter does not map the official layout: official keys mapping nowhere {unmapped}, "
                         f"maskbench tensors no official key fills {unclaimed}")
    return state


def layout(module: torch.nn.Module) -> dict[str, list[int]]:
    """The key -> shape layout of an official module's state dict (what a released checkpoint of it holds)."""
    return {key: list(value.shape) for key, value in module.state_dict().items()}


def converter_reads(shapes: dict[str, list[int]], read_settings: Callable, model_class: type,
                    map_state: Callable) -> dict:
    """Run a converter's two steps on an official layout without weights: `read_settings(state)` (constructor
    arguments from the shapes) and `map_state(state, expected)` (keys and shapes onto the model built from them,
    on the meta device). Returns the settings; raises the converter's ValueError when the layout does not map."""
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    settings = read_settings(state)
    with torch.device("meta"):
        model = model_class(**settings)
    map_state(state, model.state_dict())
    return settings


def max_differences(official: dict[str, Tensor], ours: dict[str, Tensor]) -> dict[str, float]:
    """Per name, the largest absolute difference (shapes must agree; exact for integer tensors)."""
    report = {}
    for name, expected in official.items():
        got = ours[name]
        if got.shape != expected.shape:
            raise ValueError(f"{name}: shape {tuple(got.shape)} vs official {tuple(expected.shape)}")
        report[name] = float((got.double() - expected.double()).abs().max()) if expected.numel() else 0.0
    return report


def tolerances(measured: dict[str, float], official: dict[str, Tensor], floor: float = 1e-5) -> dict[str, float]:
    """The tolerances a fixture stores: SAFETY x measured, at least `floor` x the quantity's largest magnitude
    (at least 1): round-off on another CPU or thread count scales with the values."""
    return {name: max(SAFETY * value, floor * max(1.0, float(official[name].double().abs().max())))
            for name, value in measured.items()}


def save_fixture(name: str, fixture: dict, directory: str = FIXTURE_DIR) -> str:
    """torch.save `fixture` to <directory>/<name>.pt (tensors detached, contiguous); returns the path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}.pt")

    def clean(value):
        if isinstance(value, Tensor):
            return value.detach().cpu().contiguous().clone()
        if isinstance(value, str):
            return str(value)  # torch.__version__ is a str subclass that weights-only loading refuses
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(clean(v) for v in value)
        return value

    torch.save(clean(fixture), path)
    return path


def load_fixture(name: str, directory: str = FIXTURE_DIR) -> dict:
    return torch.load(os.path.join(directory, f"{name}.pt"), map_location="cpu", weights_only=True)


def check_checksum(state: dict[str, Tensor], fixture: dict, script: str) -> None:
    """The regenerated weights must be the ones the fixture's official outputs were computed with."""
    got = state_checksum(state)
    if got != fixture["checksum"]:
        raise AssertionError(
            f"the weights regenerated from seed {fixture['seed']} differ from the fixture's (checksum {got[:12]} vs "
            f"{fixture['checksum'][:12]}; fixture written with torch {fixture['torch']}, this is {torch.__version__}): "
            f"torch's RNG or the model's parameter layout changed. Regenerate the fixture with "
            f"`python -m {script} --official-repo DIR` (see its docstring)")


def replay(name: str, parity_model: Callable[[int], tuple[torch.nn.Module, dict[str, Tensor]]], script: str
           ) -> tuple[dict, torch.nn.Module, dict[str, Tensor]]:
    """(fixture, our model with the regenerated weights, those weights) for a fixture test; the checksum checked."""
    fixture = load_fixture(name)
    model, state = parity_model(fixture["seed"])
    check_checksum(state, fixture, script)
    return fixture, model, state


def git_head(root) -> str:
    """The checkout's commit (recorded in fixtures), or "unknown" when it is not a git work tree."""
    import subprocess

    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def compare(official: dict[str, Tensor], ours: dict[str, Tensor], allowed: dict[str, float]) -> list[str]:
    """Names whose max difference exceeds the fixture's tolerance, with the figures (empty: all within)."""
    measured = max_differences(official, ours)
    return [f"{name}: max |diff| {measured[name]:.3g} > tolerance {allowed[name]:.3g}"
            for name in official if measured[name] > allowed[name]]


def script_main(description: str, repo_help: str, seed: int, run_parity: Callable[[argparse.Namespace], dict[str, Any]],
                argv: Sequence[str] | None = None) -> None:
    """The command line of a parity script: --official-repo (required), --seed, --fixture-dir; runs `run_parity`
    on them and prints its summary as JSON."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--official-repo", required=True, help=repo_help)
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--fixture-dir", default=FIXTURE_DIR)
    print(json.dumps(run_parity(parser.parse_args(argv)), indent=2, default=str))

"""The converters' shared reading and renaming of foreign weights files (models/common/checkpoint.py)."""
import re

import pytest
import torch

from models.common.checkpoint import read_state_dict, rename_key


def test_read_state_dict_takes_the_file_or_its_wrapped_entry(tmp_path):
    weights = {"conv.weight": torch.ones(2, 3)}
    raw, wrapped = tmp_path / "raw.pth", tmp_path / "d2.pth"
    torch.save(weights, raw)
    torch.save({"model": weights, "iteration": torch.tensor(5)}, wrapped)
    assert read_state_dict(str(raw), "x").keys() == weights.keys()
    assert read_state_dict(str(wrapped), "x").keys() == weights.keys()
    with pytest.raises(ValueError, match=r"d2.pth: expected a raw state dict"):  # the wrapper is not unwrapped
        read_state_dict(str(wrapped), "a raw state dict", wrappers=())
    lightning_like = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": weights, "epoch": 3}, lightning_like)
    assert read_state_dict(str(lightning_like), "x", wrappers=("model", "state_dict")).keys() == weights.keys()


def test_read_state_dict_names_the_file_and_what_is_wrong(tmp_path):
    empty, text = tmp_path / "empty.pth", tmp_path / "notes.pth"
    torch.save({}, empty)
    text.write_text("not a torch file")
    with pytest.raises(ValueError, match=r"empty.pth: expected weights"):
        read_state_dict(str(empty), "weights")
    with pytest.raises(ValueError, match=r"notes.pth: cannot be read as a weights-only torch file .*; try this"):
        read_state_dict(str(text), "weights", hint="; try this")
    with pytest.raises(FileNotFoundError):
        read_state_dict(str(tmp_path / "absent.pth"), "weights")


def test_rename_key_uses_the_first_matching_pattern():
    patterns = [(re.compile(r"^a\.(\d+)$"), lambda m: f"first.{m[1]}"), (re.compile(r"^a\."), lambda m: "second")]
    assert rename_key("a.7", patterns) == "first.7"
    assert rename_key("a.x", patterns) == "second"
    assert rename_key("b.1", patterns) is None

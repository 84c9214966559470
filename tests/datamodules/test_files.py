"""The one atomic writer (datamodules/files.py) and the writers that go through it: old content or new, never half,
no temporary file left, and the umask's permissions (a team's shared results folder stays readable)."""
import json
import os

import pytest
import torch

from models.common.checkpoint import save_converted_checkpoint
from datamodules.files import atomic_path, write_json_atomic, write_text_atomic
from tests.models.tiny_model import TinyInstanceModel


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield 0o644  # what a new file gets
    os.umask(previous)


def _mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_json_and_text_are_written_whole_with_the_umasks_permissions(tmp_path, umask_022):
    record = tmp_path / "records" / "run.json"  # the folder is created
    write_json_atomic(record, {"b": 1, "a": [0.5, None]})
    assert record.read_text() == '{\n  "a": [\n    0.5,\n    null\n  ],\n  "b": 1\n}\n'
    write_json_atomic(record, {"b": 1, "a": 2}, sort_keys=False)
    assert list(json.loads(record.read_text())) == ["b", "a"]
    write_text_atomic(tmp_path / "table.md", "| x |\n")
    assert (tmp_path / "table.md").read_text() == "| x |\n"
    assert _mode(record) == _mode(tmp_path / "table.md") == umask_022  # mkstemp would have made them 0600
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["run.json", "table.md"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"val/segm_AP": 0.5})
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_text('{"val/segm_AP": 0.')  # half written when the writer fails
            raise OSError("disk full")
    assert json.loads(target.read_text()) == {"val/segm_AP": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_writer_that_writes_nothing_is_an_error_not_a_vanished_file(tmp_path):
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    with pytest.raises(FileNotFoundError, match="plot.png: the writer produced no file"):
        with atomic_path(target):
            pass
    assert target.read_bytes() == b"old"


def test_converted_checkpoints_and_codecs_get_the_umasks_permissions(tmp_path, umask_022):
    from models.istr.mask_codec import PCAMaskCodec, fit_pca

    checkpoint = save_converted_checkpoint(TinyInstanceModel(num_classes=2), str(tmp_path / "out.ckpt"),
                                           "tests.models.tiny_model.TinyInstanceModel")
    masks = torch.rand(64, 8, 8) > 0.5
    codec = PCAMaskCodec.from_fit(fit_pca([masks], 8, seed=0), 4, 8).save(tmp_path / "codec.pt")
    assert _mode(tmp_path / "out.ckpt") == _mode(tmp_path / "codec.pt") == umask_022
    assert TinyInstanceModel.load_from_checkpoint(checkpoint).hparams.num_classes == 2
    assert torch.load(codec, weights_only=False)["num_components"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codec.pt", "out.ckpt"]

"""`maskbench fit-codec` through the real CLI: the codec file, the reconstruction report, and bad input."""
import re

import pytest
import torch
import yaml

from experiments.cli import main
from models.istr.codec_data import fit_codec_on_split
from models.istr.mask_codec import load_pca_codec


@pytest.fixture
def data_config(small_synthetic_root, tmp_path):
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump({"data": {"root": str(small_synthetic_root), "num_workers": 0}}))
    return path


def test_fit_codec_writes_the_codec_and_the_report(data_config, small_synthetic_root, tmp_path, capsys):
    out = tmp_path / "codecs" / "synthetic.pt"
    status = main(["fit-codec", "--config", str(data_config), "--components", "8", "--mask-size", "14",
                   "--out", str(out), "--report", "--report-components", "16", "2", "8", "--no-progress"])
    assert status == 0
    printed = capsys.readouterr().out

    codec = load_pca_codec(out)
    assert (codec.num_components, codec.mask_size) == (8, 14)
    train_dir = small_synthetic_root / "train2017"
    ann_file = small_synthetic_root / "annotations" / "instances_train2017.json"
    assert codec.source["ann_file"] == str(ann_file.resolve())
    # The CLI's fit is the library's fit: deterministic, same masks, same seed.
    expected = fit_codec_on_split(str(train_dir), str(ann_file), 8, 14, seed=0, progress=False)
    torch.testing.assert_close(codec.components, expected.components)
    assert codec.source["num_masks"] == expected.source["num_masks"]

    report = (tmp_path / "codecs" / "synthetic.report.md").read_text()
    rows = re.findall(r"^\| (\d+) \| ([\d.]+)% \| ([\d.]+) \|$", report, flags=re.M)
    assert [int(k) for k, _, _ in rows] == [2, 8, 16]
    ious = [float(iou) for _, _, iou in rows]
    variances = [float(v) for _, v, _ in rows]
    assert 0 < ious[0] < ious[2] <= 1 and variances == sorted(variances) and variances[-1] < 100
    assert "mean mask IoU (val)" in printed and "| 16 |" in printed
    png = (tmp_path / "codecs" / "synthetic.report.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000


def test_fit_codec_reports_bad_input_in_one_line(data_config, tmp_path, capsys):
    no_data = tmp_path / "model_only.yaml"
    no_data.write_text(yaml.safe_dump({"model": {"class_path": "models.istr.ISTR"}}))
    assert main(["fit-codec", "--config", str(no_data), "--out", str(tmp_path / "c.pt")]) == 2
    assert "no `data:` block" in capsys.readouterr().err

    assert main(["fit-codec", "--config", str(data_config), "--components", "0", "--out", str(tmp_path / "c.pt")]) == 2
    assert "--components must be in [1, 784]" in capsys.readouterr().err

    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text(yaml.safe_dump({"data": {"rooot": "/x"}}))
    assert main(["fit-codec", "--config", str(bad_key), "--out", str(tmp_path / "c.pt")]) == 2
    assert "rooot" in capsys.readouterr().err

    missing = tmp_path / "missing_root.yaml"
    missing.write_text(yaml.safe_dump({"data": {"root": str(tmp_path / "nowhere")}}))
    assert main(["fit-codec", "--config", str(missing), "--out", str(tmp_path / "c.pt"), "--no-progress"]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "c.pt").exists()

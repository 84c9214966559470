"""The `maskbench` command end to end, through `experiments.cli.main` and through the installed script."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
STAT_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def test_data_synth_then_check_json(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert main(["data", "synth", "--out", str(out), "--num-train", "6", "--num-val", "3", "--image-size", "64"]) == 0
    capsys.readouterr()
    assert main(["data", "check", "--root", str(out), "--split", "train", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert list(summary) == ["images", "instances", "crowd", "categories", "empty_images", "skipped"]
    assert summary["images"] == 6
    annotations = json.loads((out / "annotations" / "instances_train2017.json").read_text())
    kept = summary["instances"] + sum(summary["skipped"].values())
    assert kept == len(annotations["annotations"])
    assert summary["crowd"] == sum(a["iscrowd"] for a in annotations["annotations"])
    assert summary["categories"] == len(annotations["categories"])


def test_data_check_human_summary(small_synthetic_root, capsys):
    assert main(["data", "check", "--root", str(small_synthetic_root), "--split", "val"]) == 0
    text = capsys.readouterr().out
    assert "images         6" in text
    assert "instances_val2017.json" in text


def test_bad_root_is_one_line_error(tmp_path, capsys):
    code = main(["data", "check", "--root", str(tmp_path / "nowhere"), "--split", "val"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err
    assert "nowhere" in err


def test_broken_annotation_json_through_installed_script(small_synthetic_root, tmp_path):
    """The console script itself: exit status 2, one line on stderr naming the file and where the JSON breaks."""
    root = tmp_path / "broken"
    shutil.copytree(small_synthetic_root, root)
    ann = root / "annotations" / "instances_val2017.json"
    ann.write_text(ann.read_text()[:-40])
    script = Path(sys.executable).parent / "maskbench"
    proc = subprocess.run([str(script), "data", "check", "--root", str(root), "--split", "val"],
                          capture_output=True, text=True, env={**os.environ})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "instances_val2017.json" in lines[0]
    assert "line" in lines[0]


def _ground_truth_as_results(ann_file: Path) -> list[dict]:
    annotations = json.loads(ann_file.read_text())["annotations"]
    from pycocotools import mask as mask_utils

    images = {im["id"]: im for im in json.loads(ann_file.read_text())["images"]}
    results = []
    for a in annotations:
        if a["iscrowd"]:
            continue
        im = images[a["image_id"]]
        seg = a["segmentation"]
        if isinstance(seg, list):
            seg = mask_utils.merge(mask_utils.frPyObjects(seg, im["height"], im["width"]))
        elif isinstance(seg["counts"], list):
            seg = mask_utils.frPyObjects(seg, im["height"], im["width"])
        if isinstance(seg["counts"], bytes):
            seg = {"size": seg["size"], "counts": seg["counts"].decode()}
        results.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                        "score": 0.9, "segmentation": seg})
    return results


def test_eval_json_prints_exact_keys(small_synthetic_root, tmp_path, capsys):
    ann = small_synthetic_root / "annotations" / "instances_val2017.json"
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_ground_truth_as_results(ann)))
    assert main(["eval-json", "--ann", str(ann), "--results", str(results), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert list(metrics) == ["bbox", "segm"]
    for iou_type in ("bbox", "segm"):
        assert list(metrics[iou_type]) == STAT_KEYS
        # The ground truth scored as detections is a perfect result.
        assert metrics[iou_type]["AP"] == pytest.approx(1.0)
        assert metrics[iou_type]["AP50"] == pytest.approx(1.0)


def test_eval_json_missing_results_file(small_synthetic_root, tmp_path, capsys):
    ann = small_synthetic_root / "annotations" / "instances_val2017.json"
    code = main(["eval-json", "--ann", str(ann), "--results", str(tmp_path / "missing.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "missing.json" in err and "\n" not in err


def test_error_raised_in_a_dataloader_worker_stays_one_line():
    """PyTorch re-raises a worker's DatasetError with the worker's traceback as the message."""
    from torch.utils.data import DataLoader, Dataset

    from datamodules.coco import DatasetError
    from experiments.cli import one_line_message

    class Broken(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            raise DatasetError("/data/val2017/000000000001.jpg: image id 1 is unreadable (truncated file)")

    with pytest.raises(DatasetError) as caught:
        next(iter(DataLoader(Broken(), num_workers=1)))
    assert "\n" in str(caught.value)
    assert one_line_message(caught.value) == "/data/val2017/000000000001.jpg: image id 1 is unreadable (truncated file)"


def test_convert_verb_writes_a_loadable_checkpoint(tmp_path, capsys):
    """`maskbench convert torchvision-maskrcnn IN OUT` through the CLI's converter table."""
    import torch
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    from models.mask_rcnn import MaskRCNN

    weights = tmp_path / "tv.pth"
    torch.save(maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3).state_dict(), weights)
    out = tmp_path / "converted.ckpt"
    assert main(["convert", "torchvision-maskrcnn", str(weights), str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    model = MaskRCNN.load_from_checkpoint(str(out), map_location="cpu")
    assert model.hparams.num_classes == 2  # torchvision's background class is not a maskbench label

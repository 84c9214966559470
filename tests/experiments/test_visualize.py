"""Prediction overlays: ground truth | detections side by side, masks in class colours, low scores left out; and
`maskbench predict --visualize OUT_DIR` writing one PNG per image."""
import json

import torch
from torchvision.io import decode_png, read_file

from experiments.cli import main
from datamodules.visualize import GAP, MIN_SIDE, class_colours, overlay


def square_mask(size, top, left, side):
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top:top + side, left:left + side] = True
    return mask


def test_overlay_draws_truth_left_and_confident_detections_right():
    size = 128  # zoomed x3 to 384
    image = torch.full((3, size, size), 0.5)
    target = {"labels": torch.tensor([1]), "masks": square_mask(size, 10, 10, 30)[None],
              "boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0]])}
    prediction = {
        "labels": torch.tensor([2, 0]), "scores": torch.tensor([0.9, 0.1]),
        "masks": torch.stack([square_mask(size, 70, 70, 30), square_mask(size, 10, 70, 30)]),
        "boxes": torch.tensor([[70.0, 70.0, 100.0, 100.0], [70.0, 10.0, 100.0, 40.0]]),
    }
    picture = overlay(image, target, prediction, ["a", "b", "c"], score_thresh=0.5)
    zoom = MIN_SIDE // size
    assert picture.dtype == torch.uint8 and picture.shape == (3, zoom * size, 2 * zoom * size + GAP)
    grey = torch.tensor([128, 128, 128], dtype=torch.uint8)
    left, right = picture[:, :, :zoom * size], picture[:, :, zoom * size + GAP:]

    def pixel(panel, y, x):  # inside a mask, away from box edges and captions
        return panel[:, zoom * y, zoom * x]

    colours = class_colours(3)
    # Ground truth (class 1) on the left only; the confident detection (class 2) on the right only.
    assert not torch.equal(pixel(left, 30, 30), grey) and torch.equal(pixel(right, 30, 30), grey)
    assert torch.equal(pixel(left, 90, 90), grey) and not torch.equal(pixel(right, 90, 90), grey)
    # Colours follow the class: blended towards that class's colour.
    assert _closest(pixel(left, 30, 30), colours) == 1 and _closest(pixel(right, 90, 90), colours) == 2
    # The detection below the score threshold is not drawn.
    assert torch.equal(pixel(right, 30, 90), grey)


def _closest(rgb, colours):
    blended = [(0.45 * torch.tensor(c) + 0.55 * 128) for c in colours]
    return min(range(len(colours)), key=lambda i: float((rgb.float() - blended[i]).abs().sum()))


def test_predict_visualize_writes_one_png_per_val_image(blob_config, padded_synthetic_root, tmp_path):
    out = tmp_path / "overlays"
    assert main(["predict", "--config", str(blob_config), "--visualize", str(out),
                 f"--trainer.default_root_dir={tmp_path / 'predict'}"]) == 0
    images = json.loads((padded_synthetic_root / "annotations" / "instances_val2017.json").read_text())["images"]
    written = sorted(path.name for path in out.glob("*.png"))
    assert written == sorted(f"{image['id']:012d}.png" for image in images)
    first = next(image for image in images if f"{image['id']:012d}.png" == written[0])
    picture = decode_png(read_file(str(out / written[0])))
    zoom = -(-MIN_SIDE // max(first["height"], first["width"]))
    assert picture.shape == (3, zoom * first["height"], 2 * zoom * first["width"] + GAP)

"""A prediction's optional `mask_scores` ranks its masks for segm AP while `scores` ranks its boxes for bbox AP.

The crafted case: one ground-truth square and two detections of its class. Detection A has the right box and a
wrong mask, detection B a wrong box and the right mask. With A's box score above B's and B's mask score above A's,
each evaluation ranks its own true positive first and scores 1.0; an evaluator that ranked masks by the box score
(or boxes by the mask score) would put a false positive first and score 0.5.
"""
import json

import pytest
import torch

from datamodules.evaluation import CocoEvaluator

SIZE = 64
RIGHT = (10, 10, 40, 40)  # x0, y0, x1, y1 of the ground truth
WRONG = (44, 44, 60, 60)  # overlaps nothing


def _mask(box):
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.fixture(scope="module")
def ann_file(tmp_path_factory):
    x0, y0, x1, y1 = RIGHT
    dataset = {
        "images": [{"id": 5, "height": SIZE, "width": SIZE, "file_name": "5.png"}],
        "categories": [{"id": 3, "name": "square"}],
        "annotations": [{
            "id": 1, "image_id": 5, "category_id": 3, "iscrowd": 0, "area": float((x1 - x0) * (y1 - y0)),
            "bbox": [x0, y0, x1 - x0, y1 - y0], "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
        }],
    }
    path = tmp_path_factory.mktemp("mask_scores") / "annotations.json"
    path.write_text(json.dumps(dataset))
    return str(path)


def _evaluate(ann_file, with_mask_scores):
    prediction = {
        "boxes": torch.tensor([RIGHT, WRONG], dtype=torch.float32),  # A, B
        "scores": torch.tensor([0.9, 0.3]),
        "labels": torch.tensor([0, 0]),
        "masks": torch.stack([_mask(WRONG), _mask(RIGHT)]),
    }
    if with_mask_scores:
        prediction["mask_scores"] = torch.tensor([0.2, 0.8])
    evaluator = CocoEvaluator(ann_file, [3], backend="pycocotools")
    evaluator.update([prediction], [{"image_id": 5}])
    return evaluator.compute()


def test_boxes_rank_by_scores_and_masks_by_mask_scores(ann_file):
    result = _evaluate(ann_file, with_mask_scores=True)
    assert result["bbox"]["AP"] == pytest.approx(1.0)
    assert result["segm"]["AP"] == pytest.approx(1.0)


def test_without_mask_scores_masks_rank_by_scores(ann_file):
    result = _evaluate(ann_file, with_mask_scores=False)
    assert result["bbox"]["AP"] == pytest.approx(1.0)
    # B's right mask now ranks behind A's wrong one: precision 1/2 at full recall.
    assert result["segm"]["AP"] == pytest.approx(0.5, abs=0.01)


def test_mask_scores_of_the_wrong_length_are_named(ann_file):
    evaluator = CocoEvaluator(ann_file, [3], backend="pycocotools")
    prediction = {"boxes": torch.tensor([RIGHT], dtype=torch.float32), "scores": torch.tensor([0.9]),
                  "labels": torch.tensor([0]), "masks": _mask(RIGHT)[None], "mask_scores": torch.tensor([0.1, 0.2])}
    with pytest.raises(ValueError, match="image_id 5: 2 mask_scores for 1 scores"):
        evaluator.update([prediction], [{"image_id": 5}])

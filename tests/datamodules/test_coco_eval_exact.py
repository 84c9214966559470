"""The faster_coco_eval_exact engine (datamodules/coco_eval_exact.py) gives pycocotools' arrays element by element,
where faster-coco-eval alone rounds some precisions 1 ulp apart (the fixture: tests/datamodules/test_evaluation.py).
"""
import contextlib
import copy
import io

import numpy as np
import pytest
from faster_coco_eval import COCO as FasterCOCO
from faster_coco_eval import COCOeval_faster

from datamodules.coco_eval_exact import exact_faster_cocoeval
from tests.datamodules.test_evaluation import build_coco_fixture, classic_cocoeval, results_records


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_exact_engine_reproduces_pycocotools_arrays(tmp_path, seed):
    """faster_coco_eval_exact's precision / recall / scores arrays equal pycocotools' element by element, with tied
    scores (seed 2) and on an image subset (seed 3), where faster-coco-eval alone differs in its first-hit
    precisions (1.0 instead of pycocotools' 1 / (1 + eps))."""
    ann_file, preds, targets = build_coco_fixture(str(tmp_path), num_images=25, seed=seed)
    records = results_records(preds, targets)
    if seed == 2:
        for record in records:
            record["score"] = round(record["score"] * 4) / 4
    image_ids = sorted(t["image_id"] for t in targets)[3:19] if seed == 3 else None
    for iou_type in ("bbox", "segm"):
        typed = records if iou_type == "bbox" else [{k: v for k, v in r.items() if k != "bbox"} for r in records]
        reference = classic_cocoeval(ann_file, records, iou_type, image_ids)
        with contextlib.redirect_stdout(io.StringIO()):
            faster_gt = FasterCOCO(ann_file)
            ours = exact_faster_cocoeval(faster_gt, faster_gt.loadRes(copy.deepcopy(typed)), iou_type, image_ids)
            raw = COCOeval_faster(faster_gt, faster_gt.loadRes(copy.deepcopy(typed)), iou_type)
            if image_ids is not None:
                raw.params.imgIds = image_ids
            raw.evaluate()
            raw.accumulate()
        assert (raw.eval["precision"] != reference.eval["precision"]).any()  # the rounding this engine restores
        for key in ("precision", "recall", "scores"):
            assert np.array_equal(ours.eval[key], reference.eval[key]), (iou_type, key)
        assert ours.stats.tolist() == reference.stats.tolist()

"""CocoEvaluator and evaluate_results_file give pycocotools' own numbers, to the last digit.

The fixture is built here with numpy: crowd regions stored as uncompressed RLE (iscrowd=1), category ids with gaps,
ground truth and detections in all three COCO area ranges, an image without ground truth, an image without
detections, image ids that are not indices. The reference is COCOeval run the classic way on a fresh COCO object.
"""
import contextlib
import copy
import gc
import io
import json
import os

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from datamodules.coco import DatasetError
from datamodules.evaluation import (
    AUTO_BACKEND,
    EXACT_BACKENDS,
    STAT_NAMES,
    CocoEvaluator,
    evaluate_results_file,
    load_ground_truth,
    resolve_backend,
)

CATEGORY_IDS = [1, 3, 7, 12]  # gaps on purpose: label i must map to CATEGORY_IDS[i], not i + 1
NUM_IMAGES = 17  # odd, so the DDP test's DistributedSampler has to pad
SIDE_RANGES = {"small": (6, 28), "medium": (40, 85), "large": (110, 240)}  # object side lengths in pixels


def _star_polygon(rng, cx, cy, half_w, half_h):
    """A random star-convex polygon (COCO's flat [x1, y1, x2, y2, ...]) inside the given half extents."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=rng.integers(6, 12)))
    radius = rng.uniform(0.6, 1.0, size=angles.size)
    xs = cx + half_w * radius * np.cos(angles)
    ys = cy + half_h * radius * np.sin(angles)
    return np.stack([xs, ys], axis=1).round(2).reshape(-1).tolist()


def _uncompressed_rle(mask):
    """COCO's uncompressed RLE (column-major run lengths starting with a zero run), as crowd annotations store it."""
    flat = np.asfortranarray(mask).reshape(-1, order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


def _shifted(mask, dy, dx):
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = mask[max(-dy, 0):h - max(dy, 0),
                                                                      max(-dx, 0):w - max(dx, 0)]
    return out


def _box_xyxy(mask, rng):
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
    return box + rng.uniform(-1.5, 1.5, size=4)


def build_coco_fixture(directory, num_images=NUM_IMAGES, seed=0):
    """Writes `directory/annotations.json`; returns (ann_file, preds, targets) in the model-output contract."""
    rng = np.random.default_rng(seed)
    images, annotations, preds, targets = [], [], [], []
    for index in range(num_images):
        image_id = 1000 + 7 * index
        height, width = (int(v) for v in rng.integers(256, 641, size=2))
        images.append({"id": image_id, "height": height, "width": width, "file_name": f"{image_id}.png"})
        det_masks, det_boxes, det_scores, det_labels = [], [], [], []

        def add_detection(mask, label, score):
            det_masks.append(mask)
            det_boxes.append(_box_xyxy(mask, rng))
            det_scores.append(score)
            det_labels.append(label)

        num_objects = 0 if index == 1 else int(rng.integers(2, 6))  # image 1 has no ground truth at all
        for obj in range(num_objects):
            size_name = ("small", "medium", "large")[(index + obj) % 3]
            half_w, half_h = (rng.uniform(*SIDE_RANGES[size_name], size=2) / 2).tolist()
            cx, cy = rng.uniform(half_w, width - half_w), rng.uniform(half_h, height - half_h)
            polygon = _star_polygon(rng, cx, cy, half_w, half_h)
            rle = mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))
            label = int(rng.integers(len(CATEGORY_IDS)))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": CATEGORY_IDS[label],
                "segmentation": [polygon], "area": float(mask_utils.area(rle)),
                "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0,
            })
            if rng.random() < 0.85:
                gt_mask = mask_utils.decode(rle)
                jitter = _shifted(gt_mask, *(int(v) for v in rng.integers(-3, 4, size=2)))
                wrong_class = rng.random() < 0.1
                add_detection(jitter, (label + 1) % len(CATEGORY_IDS) if wrong_class else label, rng.uniform(0.3, 1))
                if rng.random() < 0.2:  # a lower-scored duplicate: a false positive at high IoU
                    add_detection(_shifted(gt_mask, 2, -2), label, rng.uniform(0.05, 0.3))
        if index % 3 == 0:  # a crowd region, stored the way COCO stores crowds: uncompressed RLE
            crowd = np.zeros((height, width), dtype=np.uint8)
            y0, x0 = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
            crowd[y0:y0 + height // 3, x0:x0 + width // 3] = 1
            rle = mask_utils.encode(np.asfortranarray(crowd))
            label = int(rng.integers(len(CATEGORY_IDS)))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": CATEGORY_IDS[label],
                "segmentation": _uncompressed_rle(crowd), "area": float(mask_utils.area(rle)),
                "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 1,
            })
            inside = np.zeros_like(crowd)
            inside[y0 + 5:y0 + 5 + height // 6, x0 + 5:x0 + 5 + width // 6] = 1
            add_detection(inside, label, rng.uniform(0.2, 0.9))  # on a crowd: ignored, neither TP nor FP
        for _ in range(int(rng.integers(0, 4))):  # false positives of every size
            fp = np.zeros((height, width), dtype=np.uint8)
            side = int(rng.choice([12, 50, 150]))
            y0, x0 = int(rng.integers(0, height - side)), int(rng.integers(0, width - side))
            fp[y0:y0 + side, x0:x0 + int(side * rng.uniform(0.5, 1.0))] = 1
            add_detection(fp, int(rng.integers(len(CATEGORY_IDS))), rng.uniform(0.05, 0.7))
        if index == 2:  # ground truth but no detections: still evaluated (all misses)
            det_masks, det_boxes, det_scores, det_labels = [], [], [], []
        preds.append({
            "boxes": torch.tensor(np.array(det_boxes).reshape(-1, 4), dtype=torch.float32),
            "scores": torch.tensor(det_scores, dtype=torch.float32),
            "labels": torch.tensor(det_labels, dtype=torch.int64),
            "masks": torch.from_numpy(np.array(det_masks, dtype=bool).reshape(-1, height, width)),
        })
        targets.append({"image_id": image_id, "orig_size": (height, width)})
    categories = [{"id": cat_id, "name": f"shape{cat_id}"} for cat_id in CATEGORY_IDS]
    ann_file = os.path.join(directory, "annotations.json")
    with open(ann_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return ann_file, preds, targets


def results_records(preds, targets):
    """Standard COCO results records from model outputs, written independently of the evaluator's own code."""
    records = []
    for pred, target in zip(preds, targets):
        for box, score, label, mask in zip(pred["boxes"].tolist(), pred["scores"].tolist(), pred["labels"].tolist(),
                                           pred["masks"].numpy()):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            records.append({
                "image_id": target["image_id"], "category_id": CATEGORY_IDS[label], "score": score,
                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
            })
    return records


def classic_cocoeval(ann_file, records, iou_type, image_ids=None) -> COCOeval:
    """COCOeval the classic way on a fresh ground-truth object, evaluated, accumulated and summarised. segm records go
    in without "bbox" so that pycocotools takes a detection's area from its mask (the evaluator's documented
    convention)."""
    if iou_type == "segm":
        records = [{k: v for k, v in r.items() if k != "bbox"} for r in records]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(ann_file)
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(records)), iou_type)
        if image_ids is not None:
            coco_eval.params.imgIds = image_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def classic_pycocotools(ann_file, records, iou_type, image_ids=None):
    """The summary stats of `classic_cocoeval`, by name."""
    return dict(zip(STAT_NAMES, classic_cocoeval(ann_file, records, iou_type, image_ids).stats.tolist()))


@pytest.fixture(scope="module")
def coco_fixture(tmp_path_factory):
    return build_coco_fixture(str(tmp_path_factory.mktemp("coco")))


@pytest.fixture(scope="module")
def reference(coco_fixture):
    ann_file, preds, targets = coco_fixture
    records = results_records(preds, targets)
    return {iou_type: classic_pycocotools(ann_file, records, iou_type) for iou_type in ("bbox", "segm")}


def _metric_result(ann_file, batches, backend, iou_types=("bbox", "segm")):
    evaluator = CocoEvaluator(ann_file, CATEGORY_IDS, iou_types=iou_types, backend=backend)
    for preds, targets in batches:
        evaluator.update(preds, targets)
    return evaluator.compute()


def _batches(preds, targets, size=4):
    return [(preds[i:i + size], targets[i:i + size]) for i in range(0, len(preds), size)]


def test_fixture_exercises_crowds_gaps_area_ranges_and_empty_images(coco_fixture, reference):
    ann_file, preds, targets = coco_fixture
    dataset = json.load(open(ann_file))
    crowds = [a for a in dataset["annotations"] if a["iscrowd"]]
    assert crowds and all(isinstance(a["segmentation"]["counts"], list) for a in crowds)
    areas = np.array([a["area"] for a in dataset["annotations"] if not a["iscrowd"]])
    assert (areas < 32**2).any() and ((areas >= 32**2) & (areas < 96**2)).any() and (areas >= 96**2).any()
    assert sorted({a["category_id"] for a in dataset["annotations"]}) == CATEGORY_IDS
    assert any(len(p["scores"]) == 0 for p in preds)
    assert {img["id"] for img in dataset["images"]} - {a["image_id"] for a in dataset["annotations"]}
    # every number is defined and neither 0 nor 1, so an error in any of them shows up as a difference
    for stats in reference.values():
        assert all(0.0 < value < 1.0 for value in stats.values()), stats


def assert_same_numbers(result, reference, backend):
    """The default engine must be exact; faster-coco-eval's C++ accumulate is allowed its 1-ulp precision drift."""
    assert result.keys() == reference.keys()
    for iou_type, stats in reference.items():
        assert list(result[iou_type]) == list(STAT_NAMES)
        if resolve_backend(backend) in EXACT_BACKENDS:
            assert result[iou_type] == stats, iou_type  # every one of the 12 numbers, to the last digit
        else:
            assert result[iou_type] == pytest.approx(stats, rel=0, abs=1e-12), iou_type


@pytest.mark.parametrize("backend", ["auto", "pycocotools", "faster_coco_eval", "faster_coco_eval_exact"])
def test_metric_equals_pycocotools(coco_fixture, reference, backend, capsys):
    ann_file, preds, targets = coco_fixture
    result = _metric_result(ann_file, _batches(preds, targets), backend)
    assert_same_numbers(result, reference, backend)
    assert capsys.readouterr().out == ""  # COCOeval's progress prints are swallowed


def test_uint8_masks_score_like_bool_masks(coco_fixture, reference):
    ann_file, preds, targets = coco_fixture
    as_uint8 = [dict(p, masks=p["masks"].to(torch.uint8)) for p in preds]
    assert _metric_result(ann_file, [(as_uint8, targets)], "auto", iou_types=("segm",)) == {"segm": reference["segm"]}


@pytest.mark.parametrize("backend", ["auto", "pycocotools", "faster_coco_eval"])
def test_results_file_equals_pycocotools(coco_fixture, reference, backend, tmp_path):
    ann_file, preds, targets = coco_fixture
    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps(results_records(preds, targets)))
    assert_same_numbers(evaluate_results_file(ann_file, str(results_file), backend=backend), reference, backend)


def test_bbox_only_results_evaluate_bbox_only(coco_fixture, reference):
    ann_file, preds, targets = coco_fixture
    records = [{k: v for k, v in r.items() if k != "segmentation"} for r in results_records(preds, targets)]
    assert evaluate_results_file(ann_file, records) == {"bbox": reference["bbox"]}


def test_subset_of_images_is_evaluated_on_that_subset(coco_fixture):
    ann_file, preds, targets = coco_fixture
    subset = slice(0, 7)
    image_ids = [t["image_id"] for t in targets[subset]]
    records = results_records(preds[subset], targets[subset])
    result = _metric_result(ann_file, [(preds[subset], targets[subset])], "auto")
    for iou_type in ("bbox", "segm"):
        assert result[iou_type] == classic_pycocotools(ann_file, records, iou_type, image_ids=image_ids)


def test_repeated_image_ids_count_once(coco_fixture, reference):
    ann_file, preds, targets = coco_fixture
    # what DistributedSampler padding produces: some images arrive again, later, with the same detections
    repeats = [0, 3, 4]
    batches = _batches(preds, targets) + [([preds[i] for i in repeats], [targets[i] for i in repeats])]
    assert _metric_result(ann_file, batches, "auto") == reference


def test_no_detections_scores_zero_not_undefined(coco_fixture):
    ann_file, preds, targets = coco_fixture
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64),
              "masks": torch.zeros(0, *p["masks"].shape[-2:], dtype=torch.bool)} for p in preds]
    result = _metric_result(ann_file, [(empty, targets)], "auto")
    assert all(value == 0.0 for stats in result.values() for value in stats.values())
    assert evaluate_results_file(ann_file, []) == result


def test_ground_truth_is_cached_and_reloaded_when_the_file_changes(tmp_path):
    ann_file, _, _ = build_coco_fixture(str(tmp_path), num_images=2)
    first = load_ground_truth(ann_file)
    assert load_ground_truth(ann_file) is first
    dataset = json.load(open(ann_file))
    dataset["images"].append({"id": 1, "height": 300, "width": 300, "file_name": "new.png"})
    with open(ann_file, "w") as f:
        json.dump(dataset, f)
    os.utime(ann_file, ns=(os.stat(ann_file).st_atime_ns, os.stat(ann_file).st_mtime_ns + 10**9))
    assert 1 in load_ground_truth(ann_file).imgs


def test_evaluation_pauses_the_garbage_collector_and_leaves_it_as_found(coco_fixture, reference, monkeypatch):
    import datamodules.evaluation as evaluation

    ann_file, preds, targets = coco_fixture
    records = results_records(preds, targets)
    collector_enabled = []
    run_cocoeval = evaluation._run_cocoeval

    def spy(*args, **kwargs):
        collector_enabled.append(gc.isenabled())
        return run_cocoeval(*args, **kwargs)

    monkeypatch.setattr(evaluation, "_run_cocoeval", spy)
    assert gc.isenabled()
    assert _metric_result(ann_file, [(preds, targets)], "auto") == reference
    assert evaluate_results_file(ann_file, copy.deepcopy(records)) == reference
    assert collector_enabled == [False, False] and gc.isenabled()
    with pytest.raises(DatasetError, match="record 0"):  # a failed evaluation turns it back on too
        evaluate_results_file(ann_file, [dict(records[0], score=float("nan"))])
    assert gc.isenabled()
    gc.disable()  # a caller that turned it off keeps it off
    try:
        evaluate_results_file(ann_file, copy.deepcopy(records))
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_backend_resolution():
    # the default is exact to the last digit: pycocotools' numbers at faster-coco-eval's speed
    assert resolve_backend("auto") == AUTO_BACKEND == "faster_coco_eval_exact" and AUTO_BACKEND in EXACT_BACKENDS
    assert resolve_backend("pycocotools") == "pycocotools"
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("detectron2")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "results file not found"),
        ("[{\"image_id\": 1000,", "not valid JSON"),
        ({"image_id": 1000}, "JSON list"),
        ([{"image_id": 1000, "category_id": 1, "score": 0.5, "bbox": [1, 2, 3, 4]},
          {"image_id": 5, "category_id": 1, "score": 0.5, "bbox": [1, 2, 3, 4]}], "record 1: image_id 5 is not"),
        ([{"image_id": 1000, "category_id": 2, "score": 0.5, "bbox": [1, 2, 3, 4]}], "record 0: category_id 2"),
        ([{"image_id": 1000, "category_id": 1, "score": 0.5, "bbox": [1, 2, -3, 4]}], "record 0: bbox"),
        ([{"image_id": 1000, "category_id": 1, "bbox": [1, 2, 3, 4]}], "record 0: missing 'score'"),
        ([{"image_id": 1000, "category_id": 1, "score": 0.5, "bbox": [1, 2, 3, 4]},
          {"image_id": 1000, "category_id": 1, "score": 0.5}], "record 1: missing 'bbox'"),
    ],
)
def test_bad_results_file_raises_one_line_dataset_error(coco_fixture, tmp_path, content, expected):
    ann_file, _, _ = coco_fixture
    results_file = tmp_path / "results.json"
    if content is not None:
        results_file.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(DatasetError, match=expected) as err:
        evaluate_results_file(ann_file, str(results_file))
    assert str(results_file) in str(err.value) and "\n" not in str(err.value)


def test_segmentation_of_the_wrong_size_is_rejected(coco_fixture):
    ann_file, preds, targets = coco_fixture
    record = results_records(preds[:1], targets[:1])[0]
    record["segmentation"]["size"] = [10, 10]
    with pytest.raises(DatasetError, match="record 0: segmentation must be a compressed RLE"):
        evaluate_results_file(ann_file, [record])


def test_metric_rejects_unknown_images_and_resized_predictions(coco_fixture):
    ann_file, preds, targets = coco_fixture
    evaluator = CocoEvaluator(ann_file, CATEGORY_IDS)
    evaluator.update(preds[:1], [{"image_id": 99}])
    with pytest.raises(DatasetError, match="image_id 99"):
        evaluator.compute()
    evaluator = CocoEvaluator(ann_file, CATEGORY_IDS)
    half = dict(preds[0], masks=preds[0]["masks"][:, ::2, ::2].contiguous())
    evaluator.update([half], targets[:1])
    with pytest.raises(ValueError, match="original image resolution"):
        evaluator.compute()
    with pytest.raises(ValueError, match="labels must lie in"):
        CocoEvaluator(ann_file, CATEGORY_IDS[:2]).update(preds[:1], targets[:1])


def plain_pycocotools(ann_file, records, iou_type):
    """pycocotools exactly as a user runs it on a results file: the records as given (bbox and segmentation)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(ann_file)
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(records)), iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return dict(zip(STAT_NAMES, coco_eval.stats.tolist()))


@pytest.mark.parametrize("backend", ["auto", "pycocotools"])
def test_segm_area_box_is_plain_pycocotools_on_the_file(coco_fixture, reference, backend, tmp_path):
    """--segm-area box: every number pycocotools gives for the file as given; mask (the default): the
    detectron2 convention, which differs in the size-range numbers on this fixture (masks smaller than boxes)."""
    ann_file, preds, targets = coco_fixture
    records = results_records(preds, targets)
    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps(records))
    plain = {iou_type: plain_pycocotools(ann_file, records, iou_type) for iou_type in ("bbox", "segm")}
    as_box = evaluate_results_file(ann_file, str(results_file), backend=backend, segm_area="box")
    assert as_box == plain
    as_mask = evaluate_results_file(ann_file, str(results_file), backend=backend)
    assert as_mask == reference
    assert as_mask["bbox"] == as_box["bbox"]
    differs = [stat for stat in ("APs", "APm", "APl", "ARs", "ARm", "ARl") if as_mask["segm"][stat] != plain["segm"][stat]]
    assert differs, "the fixture must tell the two conventions apart"
    with pytest.raises(ValueError, match="segm_area"):
        evaluate_results_file(ann_file, records, segm_area="polygon")


def test_bbox_score_scores_the_boxes_and_score_the_masks(coco_fixture, reference):
    """A record with a separate box score (a model that rescores its masks): boxes ranked by bbox_score."""
    ann_file, preds, targets = coco_fixture
    records = results_records(preds, targets)
    rng = np.random.default_rng(0)
    rescored = [dict(r, score=float(rng.uniform()), bbox_score=r["score"]) for r in records]
    result = evaluate_results_file(ann_file, rescored)
    assert result["bbox"] == reference["bbox"]
    assert result["segm"] == classic_pycocotools(ann_file, [dict(r, score=r["score"]) for r in rescored], "segm")
    assert result["segm"] != reference["segm"]

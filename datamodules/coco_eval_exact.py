"""faster-coco-eval with pycocotools' numbers to the last digit: the "faster_coco_eval_exact" engine of
datamodules/evaluation.py.

faster-coco-eval 1.8's C++ gives the same IoUs, matches, recalls and scores as pycocotools, but its accumulation
rounds some precision entries 1 ulp apart; `exact_faster_cocoeval` runs its C++ and puts pycocotools' rounding back
(`_pycocotools_precision` says where and why). Nothing of the matching or accumulation is re-implemented here.
"""
from __future__ import annotations

import copy

import numpy as np

# pycocotools' precision of a ranked detection list after one detection that is a true positive: 1 / (1 + eps).
_FIRST_HIT_PRECISION = 1.0 / (1.0 + np.spacing(1))


def exact_faster_cocoeval(coco_gt, coco_dt, iou_type: str, image_ids: list[int] | None = None):
    """A pycocotools COCOeval holding pycocotools' `eval` arrays and `stats`, computed by faster-coco-eval's C++.

    `coco_gt`, `coco_dt`: faster-coco-eval COCO objects; `image_ids` None evaluates every image. The C++ per-image
    matching, recalls and score thresholds equal pycocotools' (the tests compare every array); the precision array
    differs in one rounding only, put back as `_pycocotools_precision` explains; `stats` then comes from
    pycocotools' own `summarize` on those arrays (it prints the usual table to stdout).
    """
    from faster_coco_eval import COCOeval_faster
    from faster_coco_eval import faster_eval_api_cpp
    from pycocotools.cocoeval import COCOeval

    # One thread: its IoU thread pool costs more than it saves on the few-dozen-detection images of COCO.
    fast = COCOeval_faster(coco_gt, coco_dt, iou_type, separate_eval=True, rle_iou_max_workers=1)
    if image_ids is not None:
        fast.params.imgIds = list(image_ids)
    fast.evaluate()  # per-image matching (C++); accumulate runs below, once, at every recall threshold needed
    params = fast._paramsEval  # the settings evaluate() ran with (image ids de-duplicated and sorted)
    npig = _non_ignored_ground_truth(coco_gt, params)  # [K, A]
    # The recall thresholds: COCO's 101 and the probes of `_pycocotools_precision`, 1.5 / npig. The precision and
    # score at a threshold depend on that threshold only, so one accumulation serves both.
    probe_of = {int(n): 1.5 / int(n) for n in np.unique(npig[npig > 0])}
    thresholds = np.unique(np.concatenate([params.recThrs, list(probe_of.values())]))
    column = {float(value): index for index, value in enumerate(thresholds)}
    accumulate_params = copy.deepcopy(params)
    accumulate_params.recThrs = thresholds
    accumulated = faster_eval_api_cpp.COCOevalAccumulate(accumulate_params, fast._evalImgs_cpp)
    coco_columns = [column[float(value)] for value in params.recThrs]
    probe_columns = {n: column[value] for n, value in probe_of.items()}

    summary = COCOeval(iouType=iou_type)  # no data: only its summarize() runs, on the arrays below
    for name in ("imgIds", "catIds", "iouThrs", "recThrs", "maxDets", "areaRng", "areaRngLbl", "useCats"):
        setattr(summary.params, name, getattr(params, name))
    summary.eval = {
        "params": summary.params,
        "precision": _pycocotools_precision(accumulated["precision"], coco_columns, probe_columns, npig),
        "recall": accumulated["recall"],
        "scores": accumulated["scores"][:, coco_columns],
    }
    summary.summarize()
    return summary


def _pycocotools_precision(
    precision: np.ndarray, coco_columns: list[int], probe_columns: dict[int, int], npig: np.ndarray
) -> np.ndarray:
    """pycocotools' precision [T, R, K, A, M] from faster-coco-eval's, accumulated at COCO's recall thresholds
    (`coco_columns`) and at the probe thresholds 1.5 / n (`probe_columns[n]`); `npig` [K, A] as below.

    pycocotools computes the precision after the j-th ranked detection of a (IoU threshold, category, area range,
    max detections) slice as tp / (tp + fp + eps), eps = np.spacing(1); faster-coco-eval as tp / (tp + fp). For
    tp + fp >= 2 the eps is lost in rounding (n + eps == n in float64), so the two agree everywhere except after
    exactly one counted detection, a true positive: pycocotools 1 / (1 + eps) = 0.9999999999999998, C++ 1.0.
    After the right-to-left maximum that interpolates precision, an entry the C++ gives as 1.0 is therefore
    pycocotools' 1.0 if the slice's ranking reaches a second true positive before its first false positive (2/2
    is exactly 1.0, and it dominates every entry up to there) and 1 / (1 + eps) otherwise. Whether it does is read
    at recall 1.5 / npig (npig: the slice's non-ignored ground truths), between the first and the second true
    positive's recall: the interpolated precision there is 1.0 exactly when no false positive came before the
    second true positive.
    """
    result = precision[:, coco_columns].copy()
    for k, a in zip(*np.nonzero(npig)):
        second_hit_first = precision[:, probe_columns[int(npig[k, a])], k, a, :] == 1.0  # [T, M]
        entries = result[:, :, k, a, :]  # [T, R, M], a view
        entries[(entries == 1.0) & ~second_hit_first[:, None, :]] = _FIRST_HIT_PRECISION
    return result


def _non_ignored_ground_truth(coco_gt, params) -> np.ndarray:
    """[K, A] count of ground truths pycocotools does not ignore per category and area range of the evaluated
    images: not crowd, area within the range (bounds included)."""
    images = set(int(i) for i in params.imgIds)
    categories = {int(c): k for k, c in enumerate(params.catIds)}
    counts = np.zeros((len(categories), len(params.areaRng)), dtype=np.int64)
    for ann in coco_gt.anns.values():
        k = categories.get(ann["category_id"])
        if k is None or ann["image_id"] not in images or ann.get("iscrowd", 0):
            continue
        for a, (low, high) in enumerate(params.areaRng):
            if low <= ann["area"] <= high:
                counts[k, a] += 1
    return counts

"""Exact COCO evaluation (bbox and segm): a torchmetrics Metric for training loops and a function for results files.

Both paths score the detections against the dataset's OWN annotation file, so crowd regions, original areas and
original resolutions count exactly as in the COCO protocol, with one of three engines (`backend`):
  * "faster_coco_eval_exact" (the default, "auto"): faster-coco-eval's C++ matching and accumulation, with the one
    place where its accumulation rounds differently from pycocotools put back (datamodules/coco_eval_exact.py), and
    pycocotools' own summarize: pycocotools' numbers to the last digit, at faster-coco-eval's speed;
  * "pycocotools": the reference, pycocotools' COCOeval in pure Python (slow on large val sets);
  * "faster_coco_eval": faster-coco-eval as it is (1 ulp off pycocotools in some precisions).
Nothing of the matching or accumulation is re-implemented here; this file shapes detections into COCO results
records and hands them to those engines.

Conventions worth knowing:
  * segm results are evaluated WITHOUT their "bbox" field, so a detection's small/medium/large range comes from its
    mask area (detectron2 and the torchvision references do the same; pycocotools would otherwise use the box
    area for masks too). `evaluate_results_file(segm_area="box")` is plain pycocotools on a file as given instead:
    records that carry both fields are ranged by their box area (SEGM_AREAS).
  * a prediction may carry `mask_scores` besides `scores`: segm is then ranked by `mask_scores` and bbox by `scores`
    (centermask2 scores boxes with sqrt(cls x ctr) and masks with that times the predicted mask IoU, and its COCO
    evaluator swaps in the records' "mask_score" for segm); without it both use `scores`.
  * `CocoEvaluator` restricts COCOeval's `imgIds` to the image ids it saw in `update`, so evaluating a subset of
    the split (a `limit_val_batches` run, one shard) scores that subset only; images seen with zero detections
    still count (their ground truth becomes misses). `evaluate_results_file` scores every image of the
    annotation file, as plain pycocotools does.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import gc
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from datamodules.coco import DatasetError
from datamodules.coco_eval_exact import exact_faster_cocoeval
from datamodules.mask_rle import encode_masks

IOU_TYPES = ("bbox", "segm")
BACKENDS = ("auto", "pycocotools", "faster_coco_eval", "faster_coco_eval_exact")
# The engines whose numbers equal pycocotools' to the last digit.
EXACT_BACKENDS = ("pycocotools", "faster_coco_eval_exact")
# How a segm detection's small/medium/large range is measured: "mask" (maskbench's and detectron2's: its mask area)
# or "box" (plain pycocotools on a results file whose records carry both bbox and segmentation: the box area).
SEGM_AREAS = ("mask", "box")
# The 12 numbers of COCOeval.stats, in its order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# "auto" must be exact. faster-coco-eval 1.8 alone gives the same IoUs, matches, recalls and scores as pycocotools,
# but its C++ accumulate rounds some precision entries 1 ulp apart (segm APm 0.5051469432657553 vs pycocotools'
# ...552); "faster_coco_eval_exact" puts pycocotools' rounding back and is ~3x faster than pycocotools.
AUTO_BACKEND = "faster_coco_eval_exact"


@contextlib.contextmanager
def _collector_paused():
    """Pause Python's cyclic garbage collector for the block (restoring its previous state after).

    An evaluation builds about ten Python containers per detection (results records, the engine's annotation
    dicts), and they all live until it ends and form no reference cycles, so collections during it free nothing.
    Yet each full collection walks them all, and every other object of the process (a training process holds the
    dataset's annotations and the model): 0.43 s of a 2.19 s compute() over 40,000 detections in
    benchmarks/eval_speed.py, more in a process with a bigger heap. Objects are still freed by reference counting
    meanwhile, and any cycles left behind are collected once the collector runs again.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def resolve_backend(backend: str) -> str:
    """Map "auto" to the concrete engine; reject unknown names."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return AUTO_BACKEND if backend == "auto" else backend


def _engine(backend: str) -> tuple[type, type]:
    """(COCO, COCOeval) classes of a concrete backend."""
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    from faster_coco_eval import COCO, COCOeval_faster

    return COCO, COCOeval_faster


def _check_iou_types(iou_types: Iterable[str]) -> tuple[str, ...]:
    iou_types = tuple(iou_types)
    if not iou_types or len(set(iou_types)) != len(iou_types) or not set(iou_types) <= set(IOU_TYPES):
        raise ValueError(f"iou_types must be distinct values from {IOU_TYPES}, got {iou_types!r}")
    return iou_types


def _load_json(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: {what} is not valid JSON ({err})") from None


@functools.lru_cache(maxsize=4)
def _cached_ground_truth(real_path: str, mtime_ns: int, size: int, backend: str):
    """Loading the 5k-image val JSON and indexing it takes seconds; once per process (per file version) is enough.

    COCOeval only adds idempotent fields to the cached annotations ("ignore", segm converted to RLE), so reuse
    across evaluations gives the same numbers as a fresh load (the tests compare against fresh loads)."""
    dataset = _load_json(real_path, "annotation file")
    if not isinstance(dataset, dict) or not all(isinstance(dataset.get(k), list) for k in ("images", "categories")):
        raise DatasetError(f"{real_path}: annotation file needs 'images' and 'categories' lists")
    dataset.setdefault("annotations", [])
    coco_cls, _ = _engine(backend)
    coco = coco_cls()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_ground_truth(ann_file: str, backend: str = "auto"):
    """The backend's COCO object for `ann_file`, cached per process and reloaded when the file changes."""
    backend = resolve_backend(backend)
    try:
        stat = os.stat(ann_file)
    except FileNotFoundError:
        raise DatasetError(f"{ann_file}: annotation file not found") from None
    return _cached_ground_truth(os.path.realpath(ann_file), stat.st_mtime_ns, stat.st_size, backend)


def clear_ground_truth_cache() -> None:
    """Forget the cached ground truth (benchmarks time a cold load)."""
    _cached_ground_truth.cache_clear()


def _results_object(coco_gt, records: list[dict], backend: str):
    """COCO results object of bbox-only or segm-only records (what this module builds).

    pycocotools: its own `loadRes`. faster-coco-eval: the same object as its `loadRes` builds (same annotation
    fields, types and ids, in the same order), but with the mask areas and boxes of all records computed in one
    call each instead of one call per record, which made loadRes the slowest step of an evaluation.
    `loadRes` cannot take an empty list (it reads records[0]), yet "no detections at all" is a legitimate outcome
    (an untrained model) that must score 0, so that case is built directly."""
    if records and backend == "pycocotools":
        return coco_gt.loadRes(records)
    coco_cls, _ = _engine(backend)
    results = coco_cls()
    results.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": _faster_results_annotations(records),
    }
    results.createIndex()
    return results


def _faster_results_annotations(records: list[dict]) -> list[dict]:
    """The annotations faster-coco-eval's `loadRes` makes of `records` (fresh dicts; the records are not touched)."""
    if not records:
        return []
    if "bbox" in records[0]:
        annotations = []
        for index, record in enumerate(records):
            x, y, w, h = record["bbox"]
            # As loadRes: a record's own segmentation is kept (then ranged by the box area), a box-only one gets the
            # box as a polygon.
            polygon = [[x, y, x, y + h, x + w, y + h, x + w, y]]
            annotations.append({
                **record, "segmentation": record.get("segmentation", polygon), "area": w * h,
                "id": index + 1, "iscrowd": 0,
            })
        return annotations
    from faster_coco_eval.core import mask as faster_mask

    segmentations = [record["segmentation"] for record in records]
    areas = faster_mask.area(segmentations)  # uint64 [N], as loadRes's per-record area(...) values
    boxes = faster_mask.toBbox(segmentations)  # float64 [N, 4], as loadRes's per-record toBbox(...) rows
    return [
        {**record, "area": area, "bbox": box, "id": index + 1, "iscrowd": 0}
        for index, (record, area, box) in enumerate(zip(records, areas, boxes))
    ]


def _run_cocoeval(
    coco_gt, records_by_type: dict[str, list[dict]], image_ids: list[int] | None, backend: str, verbose: bool
) -> dict[str, dict[str, float]]:
    """COCOeval evaluate/accumulate/summarize per iou type; `image_ids=None` keeps COCOeval's default (all)."""
    _, cocoeval_cls = _engine(backend)
    metrics = {}
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        for iou_type, records in records_by_type.items():
            coco_dt = _results_object(coco_gt, records, backend)
            if backend == "faster_coco_eval_exact":
                stats = exact_faster_cocoeval(coco_gt, coco_dt, iou_type, image_ids).stats
                metrics[iou_type] = {name: float(value) for name, value in zip(STAT_NAMES, stats[:12])}
                continue
            evaluator = cocoeval_cls(coco_gt, coco_dt, iou_type)
            if verbose and backend == "faster_coco_eval":
                evaluator.print_function = print
            if image_ids is not None:
                evaluator.params.imgIds = list(image_ids)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            metrics[iou_type] = {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats[:12])}
    return metrics


def encode_prediction_masks(masks: Tensor, count: int, image_id: int) -> list[bytes]:
    """A prediction's [K,H,W] bool/uint8 masks -> K compressed-RLE counts strings (bytes), exactly pycocotools'
    encoding; `count` (K) and `image_id` check the shape and name the image in errors. Shared by the evaluator and
    the results-file writer (datamodules/results_writer.py), so both hold the same strings."""
    if masks.dim() != 3 or masks.shape[0] != count:
        raise ValueError(f"image_id {image_id}: masks must be [{count},H,W], got {tuple(masks.shape)}")
    if masks.is_floating_point():
        raise TypeError(f"image_id {image_id}: masks must be bool or 0/1 integers (threshold soft masks first)")
    if count == 0:
        return []
    binary = masks if masks.dtype == torch.bool else masks != 0
    # one byte per pixel crosses to the host (bool -> uint8 is a free view)
    return encode_masks(binary.view(torch.uint8).cpu().numpy())


class CocoEvaluator(Metric):
    """COCO bbox / segm AP of predictions against the dataset's own annotation file.

    `update(preds, targets)` per batch: each prediction dict holds `boxes` float [K,4] xyxy pixels, `scores`
    float [K], `labels` int64 [K] contiguous, `masks` bool/uint8 [K,H,W] at the ORIGINAL image resolution (needed
    only for "segm"), optionally `mask_scores` float [K] (segm's ranking when given; see the module docstring);
    each target dict holds `image_id` (the annotation file's id). Masks are RLE-encoded at once
    so state memory stays a few hundred bytes per detection. `compute()` gathers all processes, keeps each image
    id once (DistributedSampler repeats samples to pad), maps labels to category ids through `label_to_cat_id`
    and returns {iou_type: {"AP", "AP50", ..., "ARl"}} floats (-1 where COCO leaves a number undefined).
    COCOeval's `imgIds` is restricted to the image ids seen in `update`: a subset of the split scores that subset.

    Every process must call `update` at least once before `compute` (a DistributedSampler guarantees it).
    Extra keyword arguments go to `torchmetrics.Metric` (e.g. `compute_on_cpu`, `process_group`).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        ann_file: str,
        label_to_cat_id: list[int],
        iou_types: Sequence[str] = IOU_TYPES,
        backend: str = "auto",
        verbose: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ann_file = str(ann_file)
        self.label_to_cat_id = [int(cat_id) for cat_id in label_to_cat_id]
        self.iou_types = _check_iou_types(iou_types)
        self.backend = resolve_backend(backend)
        self.verbose = verbose
        # All states are flat tensors concatenated in update order: image i owns detections
        # [offset_i, offset_i + num_detections_i), which survives the cross-process gather because every state
        # is concatenated in the same rank order.
        self.add_state("image_ids", default=[], dist_reduce_fx="cat")  # int64 [I]
        self.add_state("image_sizes", default=[], dist_reduce_fx="cat")  # int64 [I,2] mask (H, W), -1 if none
        self.add_state("num_detections", default=[], dist_reduce_fx="cat")  # int64 [I]
        self.add_state("boxes", default=[], dist_reduce_fx="cat")  # float32 [D,4] xyxy
        self.add_state("scores", default=[], dist_reduce_fx="cat")  # float32 [D]
        self.add_state("labels", default=[], dist_reduce_fx="cat")  # int64 [D]
        if "segm" in self.iou_types:
            # torchmetrics gathers tensors only, so each RLE "counts" string travels as its bytes.
            self.add_state("rle_lengths", default=[], dist_reduce_fx="cat")  # int64 [D]
            self.add_state("rle_bytes", default=[], dist_reduce_fx="cat")  # uint8 [sum of rle_lengths]
            self.add_state("mask_scores", default=[], dist_reduce_fx="cat")  # float32 [D], `scores` if not given

    def update(self, preds: list[dict[str, Tensor]], targets: list[dict[str, Any]]) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"CocoEvaluator.update: {len(preds)} predictions for {len(targets)} targets")
        for pred, target in zip(preds, targets):
            self._add_image(pred, int(target["image_id"]))

    def _add_image(self, pred: dict[str, Tensor], image_id: int) -> None:
        scores = pred["scores"].detach().reshape(-1)
        count = scores.numel()
        boxes = pred["boxes"].detach()
        labels = pred["labels"].detach()
        if boxes.shape != (count, 4) or labels.shape != (count,):
            raise ValueError(
                f"image_id {image_id}: prediction shapes boxes {tuple(boxes.shape)}, labels {tuple(labels.shape)} "
                f"do not fit {count} scores"
            )
        if count and (int(labels.min()) < 0 or int(labels.max()) >= len(self.label_to_cat_id)):
            raise ValueError(
                f"image_id {image_id}: predicted labels must lie in [0, {len(self.label_to_cat_id)}), "
                f"got {int(labels.min())}..{int(labels.max())}"
            )
        mask_scores = pred.get("mask_scores", scores).detach().reshape(-1)
        if mask_scores.shape != (count,):
            raise ValueError(f"image_id {image_id}: {mask_scores.numel()} mask_scores for {count} scores")
        masks = pred.get("masks")
        size = (-1, -1) if masks is None else tuple(masks.shape[-2:])
        if "segm" in self.iou_types:
            if masks is None:
                raise ValueError(f"image_id {image_id}: 'segm' evaluation needs prediction 'masks'")
            rles = encode_prediction_masks(masks.detach(), count, image_id)
            self.rle_lengths.append(torch.tensor([len(r) for r in rles], dtype=torch.int64, device=self.device))
            blob = np.frombuffer(b"".join(rles), dtype=np.uint8).copy()
            self.rle_bytes.append(torch.from_numpy(blob).to(self.device))
            self.mask_scores.append(mask_scores.to(device=self.device, dtype=torch.float32))
        self.image_ids.append(torch.tensor([image_id], dtype=torch.int64, device=self.device))
        self.image_sizes.append(torch.tensor([size], dtype=torch.int64, device=self.device))
        self.num_detections.append(torch.tensor([count], dtype=torch.int64, device=self.device))
        self.boxes.append(boxes.to(device=self.device, dtype=torch.float32))
        self.scores.append(scores.to(device=self.device, dtype=torch.float32))
        self.labels.append(labels.to(device=self.device, dtype=torch.int64))

    @_collector_paused()
    def compute(self) -> dict[str, dict[str, float]]:
        if len(self.image_ids) == 0:  # a list before the cross-process sync, a tensor after
            raise RuntimeError("CocoEvaluator.compute() needs at least one update(): no images to evaluate")
        coco_gt = load_ground_truth(self.ann_file, self.backend)
        unknown = sorted(set(self.label_to_cat_id) - set(coco_gt.cats))
        if unknown:
            raise DatasetError(f"{self.ann_file}: label_to_cat_id names category ids {unknown} that the file lacks")
        records, image_ids = self._results_records(coco_gt)
        return _run_cocoeval(coco_gt, records, image_ids, self.backend, self.verbose)

    def _results_records(self, coco_gt) -> tuple[dict[str, list[dict]], list[int]]:
        """COCO results records per iou type from the (gathered) states, each image id's first occurrence only."""
        image_ids = dim_zero_cat(self.image_ids).cpu().tolist()
        image_sizes = dim_zero_cat(self.image_sizes).cpu().reshape(-1, 2).tolist()
        det_offsets = [0] + torch.cumsum(dim_zero_cat(self.num_detections).cpu(), 0).tolist()
        # float32 -> float64 is exact; xywh is then formed in float64, as from a results JSON of these numbers
        boxes = dim_zero_cat(self.boxes).cpu().double().reshape(-1, 4).tolist()
        scores = dim_zero_cat(self.scores).cpu().double().tolist()
        category_ids = [self.label_to_cat_id[label] for label in dim_zero_cat(self.labels).cpu().tolist()]
        if "segm" in self.iou_types:
            rle_offsets = [0] + torch.cumsum(dim_zero_cat(self.rle_lengths).cpu(), 0).tolist()
            # RLE strings are ASCII, so byte offsets are character offsets
            rle_text = dim_zero_cat(self.rle_bytes).cpu().numpy().tobytes().decode("ascii")
            mask_scores = dim_zero_cat(self.mask_scores).cpu().double().tolist()

        first_occurrence = {}
        for index, image_id in enumerate(image_ids):
            first_occurrence.setdefault(image_id, index)
        records: dict[str, list[dict]] = {iou_type: [] for iou_type in self.iou_types}
        for image_id, index in first_occurrence.items():
            image = coco_gt.imgs.get(image_id)
            if image is None:
                raise DatasetError(f"{self.ann_file}: image_id {image_id} of the evaluated targets is not in the file")
            height, width = image_sizes[index]
            if height >= 0 and (height, width) != (image["height"], image["width"]):
                raise ValueError(
                    f"image_id {image_id}: prediction masks are {height}x{width} but {self.ann_file} says "
                    f"{image['height']}x{image['width']}; predictions must be at the original image resolution"
                )
            detections = range(det_offsets[index], det_offsets[index + 1])
            if "bbox" in self.iou_types:
                records["bbox"] += [
                    {"image_id": image_id, "category_id": category_ids[det], "score": scores[det],
                     "bbox": [boxes[det][0], boxes[det][1], boxes[det][2] - boxes[det][0],
                              boxes[det][3] - boxes[det][1]]}
                    for det in detections
                ]
            if "segm" in self.iou_types:
                records["segm"] += [
                    {"image_id": image_id, "category_id": category_ids[det], "score": mask_scores[det],
                     "segmentation": {"size": [height, width],
                                      "counts": rle_text[rle_offsets[det]:rle_offsets[det + 1]]}}
                    for det in detections
                ]
        return records, sorted(first_occurrence)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_record(record: Any, index: int, source: str, coco_gt) -> None:
    """One results record: known image and category, a finite score, a valid xywh box / compressed RLE if present."""
    where = f"{source}: record {index}"
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected an object, got {type(record).__name__}")
    for key in ("image_id", "category_id", "score"):
        if key not in record:
            raise DatasetError(f"{where}: missing '{key}'")
    image = coco_gt.imgs.get(record["image_id"]) if _is_id(record["image_id"]) else None
    if image is None:
        raise DatasetError(f"{where}: image_id {record['image_id']!r} is not in the annotation file")
    if not _is_id(record["category_id"]) or record["category_id"] not in coco_gt.cats:
        raise DatasetError(f"{where}: category_id {record['category_id']!r} is not in the annotation file")
    for key in ("score", "bbox_score"):
        if key in record and not _is_number(record[key]):
            raise DatasetError(f"{where}: {key} must be a finite number, got {record[key]!r}")
    if "bbox" in record:
        bbox = record["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox)) and min(bbox[2:]) >= 0):
            raise DatasetError(f"{where}: bbox must be [x, y, w, h] with w, h >= 0, got {bbox!r}")
    if "segmentation" in record:
        segm = record["segmentation"]
        size = [image["height"], image["width"]]
        if not (isinstance(segm, dict) and isinstance(segm.get("counts"), (str, bytes)) and segm.get("size") == size):
            raise DatasetError(
                f"{where}: segmentation must be a compressed RLE {{'size': {size}, 'counts': str}} for image_id "
                f"{record['image_id']}"
            )


@_collector_paused()
def evaluate_results_file(
    ann_file: str,
    results_file_or_list: str | os.PathLike | list[dict],
    iou_types: Sequence[str] = IOU_TYPES,
    backend: str = "auto",
    verbose: bool = False,
    segm_area: str = "mask",
) -> dict[str, dict[str, float]]:
    """COCO metrics of a standard results file (or its parsed list) over every image of `ann_file`.

    Records are {"image_id", "category_id", "score", "bbox" [x,y,w,h], "segmentation" compressed RLE}, optionally
    "bbox_score" (a box score apart from the mask's, datamodules/results_writer.py). An iou type is evaluated when
    requested and every record carries its field (bbox-only results give bbox only); a field present on some
    records only, an unknown image/category id or a malformed record raises `DatasetError` naming the file and the
    record index.

    `segm_area` (SEGM_AREAS): "mask" scores segm without the records' boxes, so small/medium/large come from mask
    areas, and boxes by "bbox_score" where given, as the in-loop evaluator; "box" is plain pycocotools on the file
    as given (every field of every record, "score" for both types): segm areas are then box areas.
    """
    iou_types = _check_iou_types(iou_types)
    backend = resolve_backend(backend)
    if segm_area not in SEGM_AREAS:
        raise ValueError(f"segm_area must be one of {SEGM_AREAS}, got {segm_area!r}")
    if isinstance(results_file_or_list, (str, os.PathLike)):
        source = os.fspath(results_file_or_list)
        results = _load_json(source, "results file")
    else:
        source, results = "results list", results_file_or_list
    if not isinstance(results, list):
        raise DatasetError(f"{source}: a results file is a JSON list of detections, got {type(results).__name__}")
    coco_gt = load_ground_truth(ann_file, backend)
    for index, record in enumerate(results):
        _check_record(record, index, source, coco_gt)

    field_of = {"bbox": "bbox", "segm": "segmentation"}
    evaluated = []
    for iou_type in iou_types:
        missing = [index for index, record in enumerate(results) if field_of[iou_type] not in record]
        if not missing:
            evaluated.append(iou_type)
        elif len(missing) < len(results):
            raise DatasetError(f"{source}: record {missing[0]}: missing '{field_of[iou_type]}' that other records have")
    if not evaluated:
        raise DatasetError(f"{source}: no record has {' or '.join(repr(field_of[t]) for t in iou_types)} to evaluate")

    # Fresh dicts: loadRes writes "id"/"area"/"iscrowd" into the records it is given.
    if segm_area == "box":
        fields = ("image_id", "category_id", "score", "bbox", "segmentation")
        records = {iou_type: [{key: r[key] for key in fields if key in r} for r in results] for iou_type in evaluated}
    else:
        score_of = {"bbox": "bbox_score", "segm": "score"}
        records = {
            iou_type: [
                {"image_id": r["image_id"], "category_id": r["category_id"],
                 "score": r.get(score_of[iou_type], r["score"]), field_of[iou_type]: r[field_of[iou_type]]}
                for r in results
            ]
            for iou_type in evaluated
        }
    return _run_cocoeval(coco_gt, records, None, backend, verbose)

"""Cost of evaluating through CocoEvaluator versus plain pycocotools on already-encoded results.

    python -m benchmarks.eval_speed --images 500 [--dets-per-image 20] [--faster-coco-eval]

Builds a synthetic COCO annotation file (random ellipses and rectangles at 256-640 px, a crowd region now and
then) and ~20 detections per image with full-image masks, then times
  (a) CocoEvaluator: update() with mask tensors (RLE encoding included), then compute() on a cold
      ground-truth cache (annotation file loaded inside);
  (b) plain pycocotools: COCO(ann_file), loadRes + evaluate/accumulate/summarize on pre-encoded results,
and checks that both give identical numbers. Mask decoding is outside every timer, and only one image's masks
exist at a time, as in a real validation loop.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import tempfile
import time

import numpy as np
import torch
from pycocotools import mask as mask_utils

from datamodules.evaluation import STAT_NAMES, CocoEvaluator, clear_ground_truth_cache

CATEGORY_IDS = [1, 2, 4, 8, 9]


def _shape_mask(rng: np.random.Generator, height: int, width: int, side: float) -> np.ndarray:
    """uint8 [H,W]: an ellipse or a rectangle of about `side` pixels across, somewhere in the image."""
    half_h, half_w = np.clip(side * rng.uniform(0.5, 1.0, size=2) / 2, 2, [height / 2 - 1, width / 2 - 1])
    cy, cx = rng.uniform(half_h, height - half_h), rng.uniform(half_w, width - half_w)
    ys, xs = np.ogrid[:height, :width]
    if rng.random() < 0.5:
        inside = ((ys - cy) / half_h) ** 2 + ((xs - cx) / half_w) ** 2 <= 1
    else:
        inside = (np.abs(ys - cy) <= half_h) & (np.abs(xs - cx) <= half_w)
    return inside.astype(np.uint8)


def _jitter(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    dy, dx = (int(v) for v in rng.integers(-4, 5, size=2))
    return np.roll(mask, (dy, dx), axis=(0, 1))


def _image_scene(rng, image_id: int, dets_per_image: int):
    """One image: its ground-truth annotations and its detections as (compressed RLEs [K], labels [K], scores [K])."""
    height, width = (int(v) for v in rng.integers(256, 641, size=2))
    gt_masks = [_shape_mask(rng, height, width, side) for side in rng.choice([16, 60, 180], size=rng.integers(3, 9))]
    gt_labels = rng.integers(len(CATEGORY_IDS), size=len(gt_masks)).tolist()
    crowd = rng.random() < 0.1
    annotations = []
    for k, (mask, label) in enumerate(zip(gt_masks, gt_labels)):
        rle = mask_utils.encode(np.asfortranarray(mask))
        annotations.append({
            "image_id": image_id, "category_id": CATEGORY_IDS[label], "iscrowd": int(crowd and k == 0),
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
            "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(),
        })
    found = [k for k in range(len(gt_masks)) if rng.random() < 0.9]
    det_masks = [_jitter(gt_masks[k], rng) for k in found]
    det_labels = [gt_labels[k] for k in found]
    while len(det_masks) < dets_per_image:  # false positives fill up to the detection count
        det_masks.append(_shape_mask(rng, height, width, float(rng.choice([16, 60, 180]))))
        det_labels.append(int(rng.integers(len(CATEGORY_IDS))))
    masks = np.stack(det_masks[:dets_per_image], axis=2)  # [H,W,K] for pycocotools
    rles = mask_utils.encode(np.asfortranarray(masks))
    labels = np.array(det_labels[:dets_per_image], dtype=np.int64)
    scores = rng.uniform(0.05, 1.0, size=len(rles)).astype(np.float32)
    image = {"id": image_id, "height": height, "width": width, "file_name": f"{image_id}.png"}
    return image, annotations, (rles, labels, scores)


def run(num_images: int, dets_per_image: int, seed: int, also_faster: bool) -> dict:
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    for image_id in range(1, num_images + 1):  # detections kept as RLE: memory stays small at any --images
        image, image_annotations, image_detections = _image_scene(rng, image_id, dets_per_image)
        images.append(image)
        annotations += [dict(a, id=len(annotations) + n + 1) for n, a in enumerate(image_annotations)]
        detections.append(image_detections)
    ann_file = os.path.join(tempfile.mkdtemp(prefix="eval_speed_"), "annotations.json")
    with open(ann_file, "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": [{"id": c, "name": f"c{c}"} for c in CATEGORY_IDS]}, f)

    backends = ["auto", "faster_coco_eval"] if also_faster else ["auto"]
    evaluators = {b: CocoEvaluator(ann_file, CATEGORY_IDS, backend=b) for b in backends}
    update_seconds = dict.fromkeys(backends, 0.0)
    records = {"bbox": [], "segm": []}
    for image, (rles, labels, scores) in zip(images, detections):
        xywh = mask_utils.toBbox(rles)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1).astype(np.float32)
        masks = torch.from_numpy(mask_utils.decode(rles).transpose(2, 0, 1).astype(bool))  # [K,H,W]
        pred = {"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(scores),
                "labels": torch.from_numpy(labels), "masks": masks}
        for backend, evaluator in evaluators.items():
            start = time.perf_counter()
            evaluator.update([pred], [{"image_id": image["id"]}])
            update_seconds[backend] += time.perf_counter() - start
        # pre-encoded results for the plain pycocotools baseline (not timed)
        for box, score, label, rle in zip(boxes.tolist(), scores.tolist(), labels.tolist(), rles):
            common = {"image_id": image["id"], "category_id": CATEGORY_IDS[label], "score": score}
            records["bbox"].append(dict(common, bbox=[box[0], box[1], box[2] - box[0], box[3] - box[1]]))
            records["segm"].append(dict(common, segmentation={"size": rle["size"], "counts": rle["counts"]}))

    timings, results = {}, {}
    for backend, evaluator in evaluators.items():
        clear_ground_truth_cache()  # cold: the annotation file is loaded inside compute, as in the first epoch
        start = time.perf_counter()
        results[backend] = evaluator.compute()
        timings[backend] = {"update_s": update_seconds[backend], "compute_s": time.perf_counter() - start}
        timings[backend]["total_s"] = timings[backend]["update_s"] + timings[backend]["compute_s"]

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    start = time.perf_counter()
    baseline = {}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(ann_file)
        for iou_type in ("bbox", "segm"):
            coco_eval = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(records[iou_type])), iou_type)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
            baseline[iou_type] = dict(zip(STAT_NAMES, coco_eval.stats.tolist()))
    timings["plain_pycocotools"] = {"total_s": time.perf_counter() - start}

    if results["auto"] != baseline:
        raise SystemExit(f"error: CocoEvaluator differs from plain pycocotools: {results['auto']} vs {baseline}")
    report = {"images": num_images, "detections": len(records["bbox"]), "timings": timings,
              "ratio_ours_over_pycocotools": timings["auto"]["total_s"] / timings["plain_pycocotools"]["total_s"],
              "identical": True, "metrics": baseline}
    if also_faster:
        report["faster_coco_eval_max_abs_diff"] = max(
            abs(results["faster_coco_eval"][t][k] - baseline[t][k]) for t in baseline for k in STAT_NAMES
        )
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--dets-per-image", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--faster-coco-eval", action="store_true", help="also time the faster_coco_eval backend")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = run(args.images, args.dets_per_image, args.seed, args.faster_coco_eval)
    if args.json:
        print(json.dumps(report))
        return
    print(f"{report['images']} images, {report['detections']} detections (bbox + segm), numbers identical: yes")
    for name, timing in report["timings"].items():
        parts = ", ".join(f"{k} {v:.2f}" for k, v in timing.items())
        print(f"  {name:<18} {parts}")
    print(f"  CocoEvaluator / plain pycocotools: {report['ratio_ours_over_pycocotools']:.2f}x")
    if "faster_coco_eval_max_abs_diff" in report:
        print(f"  faster_coco_eval max |difference| from pycocotools: {report['faster_coco_eval_max_abs_diff']:.3g}")


if __name__ == "__main__":
    main()

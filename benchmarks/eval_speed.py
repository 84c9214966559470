"""Cost of evaluating through CocoEvaluator versus plain pycocotools on already-encoded results.

    python -m benchmarks.eval_speed --images 500 [--dets-per-image 20] [--backends auto faster_coco_eval ...]

Builds a synthetic COCO annotation file (random ellipses and rectangles at 256-640 px, a crowd region now and
then) and ~20 detections per image with full-image masks, then times
  (a) CocoEvaluator (each backend asked for; "auto" by default): update() with mask tensors laid out as a model
      outputs them (C-contiguous [K,H,W] bool; RLE encoding included), then compute() on a cold ground-truth
      cache (annotation file loaded inside);
  (b) plain pycocotools: COCO(ann_file), loadRes + evaluate/accumulate/summarize on pre-encoded results;
  (c) plain pycocotools from the same mask tensors: (b) plus its own RLE encoding, one `mask.encode` call per image
      on the masks made Fortran-ordered [H,W,K] (what a pycocotools user does with a model's masks, and the
      cheapest way pycocotools offers),
and checks that "auto" gives numbers identical to (b). (c) starts where (a) starts, from the model's masks; (b)
starts after the encoding, so "ours / (b)" is the stricter ratio and "ours / (c)" the like-for-like one. Mask
decoding and building (b)'s results records are outside every timer, only one image's masks exist at a time, as in
a real validation loop, and the harness's own objects are frozen out of the garbage collector's reach (gc.freeze),
so each side pays for collections over its own objects only. Each phase is timed in wall-clock seconds and in
CPU seconds of this process (time.process_time), the steadier figure on a shared machine. The ratios: ours in total
(RLE encoding included) and compute() alone (the evaluation proper), each over plain pycocotools.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import tempfile
import time

import numpy as np
import torch
from pycocotools import mask as mask_utils

from datamodules.evaluation import BACKENDS, STAT_NAMES, CocoEvaluator, clear_ground_truth_cache

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


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _clock()
    return wall - start[0], cpu - start[1]


def run(num_images: int, dets_per_image: int, seed: int, backends: list[str]) -> dict:
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    records = {"bbox": [], "segm": []}  # the same detections as results records, for plain pycocotools
    for image_id in range(1, num_images + 1):  # detections kept as RLE: memory stays small at any --images
        image, image_annotations, (rles, labels, scores) = _image_scene(rng, image_id, dets_per_image)
        images.append(image)
        annotations += [dict(a, id=len(annotations) + n + 1) for n, a in enumerate(image_annotations)]
        xywh = mask_utils.toBbox(rles)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1).astype(np.float32)
        detections.append((rles, boxes, labels, scores))
        for box, score, label, rle in zip(boxes.tolist(), scores.tolist(), labels.tolist(), rles):
            common = {"image_id": image_id, "category_id": CATEGORY_IDS[label], "score": score}
            records["bbox"].append(dict(common, bbox=[box[0], box[1], box[2] - box[0], box[3] - box[1]]))
            records["segm"].append(dict(common, segmentation={"size": rle["size"], "counts": rle["counts"]}))
    ann_file = os.path.join(tempfile.mkdtemp(prefix="eval_speed_"), "annotations.json")
    with open(ann_file, "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": [{"id": c, "name": f"c{c}"} for c in CATEGORY_IDS]}, f)

    import faster_coco_eval  # noqa: F401  (both engines imported before any timer: a one-off cost per process)
    import pycocotools.cocoeval  # noqa: F401

    backends = list(dict.fromkeys(["auto", *backends]))
    evaluators = {b: CocoEvaluator(ann_file, CATEGORY_IDS, backend=b) for b in backends}
    update_seconds = {backend: [0.0, 0.0] for backend in backends}  # wall, cpu
    plain_encode_seconds = [0.0, 0.0]
    # The harness's own objects (the synthetic set, its detections and results records: about 10 per detection)
    # leave the garbage collector's reach. Left in, every full collection walks them all, and whichever side
    # happens to allocate when one falls due pays for the walk: one such collection took 0.22 s inside
    # CocoEvaluator.update at --images 500. Each side now pays for collections over its own objects only.
    gc.collect()
    gc.freeze()
    for image, (rles, boxes, labels, scores) in zip(images, detections):
        # C-contiguous [K,H,W], as a model's pasted masks are (decode gives [H,W,K] in Fortran order)
        masks = torch.from_numpy(np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1)).astype(bool))
        pred = {"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(scores),
                "labels": torch.from_numpy(labels), "masks": masks}
        masks.view(torch.uint8).sum()  # read once before the timers, as a model's just-pasted masks are
        order = [*evaluators, "plain"]
        for backend in order[image["id"] % len(order):] + order[:image["id"] % len(order)]:  # each goes first alike
            start = _clock()
            if backend == "plain":
                plain_rles = mask_utils.encode(np.asfortranarray(masks.view(torch.uint8).permute(1, 2, 0).numpy()))
            else:
                evaluators[backend].update([pred], [{"image_id": image["id"]}])
            wall, cpu = _since(start)
            seconds = plain_encode_seconds if backend == "plain" else update_seconds[backend]
            seconds[0] += wall
            seconds[1] += cpu
        if [r["counts"] for r in plain_rles] != [r["counts"] for r in rles]:
            raise SystemExit(f"error: image {image['id']}: pycocotools' encoding of the mask tensor differs")

    timings, results = {}, {}
    for backend, evaluator in evaluators.items():
        clear_ground_truth_cache()  # cold: the annotation file is loaded inside compute, as in the first epoch
        gc.collect()  # the harness's own garbage is nobody's cost
        start = _clock()
        results[backend] = evaluator.compute()
        compute_wall, compute_cpu = _since(start)
        update_wall, update_cpu = update_seconds[backend]
        timings[backend] = {
            "update_s": update_wall, "compute_s": compute_wall, "total_s": update_wall + compute_wall,
            "update_cpu_s": update_cpu, "compute_cpu_s": compute_cpu, "total_cpu_s": update_cpu + compute_cpu,
        }

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gc.collect()
    start = _clock()
    baseline = {}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(ann_file)
        for iou_type in ("bbox", "segm"):
            coco_eval = COCOeval(coco_gt, coco_gt.loadRes(records[iou_type]), iou_type)  # used once: no copy
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
            baseline[iou_type] = dict(zip(STAT_NAMES, coco_eval.stats.tolist()))
    plain_wall, plain_cpu = _since(start)
    gc.unfreeze()
    timings["plain_pycocotools"] = {"total_s": plain_wall, "total_cpu_s": plain_cpu}
    timings["plain_pycocotools_encoding"] = {
        "encode_s": plain_encode_seconds[0], "total_s": plain_wall + plain_encode_seconds[0],
        "encode_cpu_s": plain_encode_seconds[1], "total_cpu_s": plain_cpu + plain_encode_seconds[1],
    }

    if results["auto"] != baseline:
        raise SystemExit(f"error: CocoEvaluator differs from plain pycocotools: {results['auto']} vs {baseline}")
    ratios = {}
    for backend in backends:
        ratios[backend] = {
            f"{part}{unit}": timings[backend][f"{part}{unit}"] / timings["plain_pycocotools"][f"total{unit}"]
            for part in ("total", "compute") for unit in ("_s", "_cpu_s")
        }
        for unit in ("_s", "_cpu_s"):
            ratios[backend][f"total_vs_encoding{unit}"] = (
                timings[backend][f"total{unit}"] / timings["plain_pycocotools_encoding"][f"total{unit}"])
    report = {"images": num_images, "detections": len(records["bbox"]), "timings": timings, "ratios": ratios,
              "ratio_ours_over_pycocotools": ratios["auto"]["total_s"],
              "ratio_ours_over_pycocotools_encoding": ratios["auto"]["total_vs_encoding_s"],
              "identical": True, "metrics": baseline,
              "max_abs_diff": {
                  backend: max(abs(results[backend][t][k] - baseline[t][k]) for t in baseline for k in STAT_NAMES)
                  for backend in backends
              }}
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--dets-per-image", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backends", nargs="*", default=[], choices=[b for b in BACKENDS if b != "auto"],
                        help="time these CocoEvaluator backends besides auto")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = run(args.images, args.dets_per_image, args.seed, args.backends)
    if args.json:
        print(json.dumps(report))
        return
    print(f"{report['images']} images, {report['detections']} detections (bbox + segm), auto identical to "
          f"pycocotools: yes; load average {os.getloadavg()[0]:.2f}")
    for name, timing in report["timings"].items():
        parts = ", ".join(f"{k} {v:.2f}" for k, v in timing.items())
        print(f"  {name:<23} {parts}")
    for backend, ratio in report["ratios"].items():
        print(f"  {backend:<23} / plain pycocotools: total {ratio['total_s']:.2f} (cpu {ratio['total_cpu_s']:.2f}), "
              f"compute only {ratio['compute_s']:.2f} (cpu {ratio['compute_cpu_s']:.2f}); "
              f"/ plain pycocotools with its encoding: total {ratio['total_vs_encoding_s']:.2f} "
              f"(cpu {ratio['total_vs_encoding_cpu_s']:.2f}); max |difference| {report['max_abs_diff'][backend]:.3g}")


if __name__ == "__main__":
    main()

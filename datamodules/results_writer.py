"""A standard COCO results file of what a model detected: what COCO test-dev, other codebases and analysis tools read.

    maskbench validate|test|predict --config MODEL.yaml [--ckpt_path C.ckpt] --results_json detections.json

One JSON list, one record per detection:
    {"image_id": <the annotation file's id>, "category_id": <the file's own category id>,
     "bbox": [x, y, w, h] (pixels of the original image), "score": <float>,
     "segmentation": {"size": [H, W], "counts": "<compressed RLE as a string>"}}
exactly the records the in-loop evaluator scores (datamodules.evaluation: same RLE strings, same float64 values), so
`maskbench eval-json --results detections.json` reproduces the numbers the evaluation printed. A model that scores
its masks apart from its boxes (a prediction carrying `mask_scores`, CenterMask's MaskIoU) gets the mask score as
the record's "score" (the segm AP is what a results file is submitted for) and the box score as "bbox_score";
`eval-json` scores boxes by "bbox_score" where a record has one.

Streamed: each process appends every image's records to its own part file beside the destination as batches end
(masks are encoded at once, never held); at the end of the epoch global rank 0 joins the parts in rank order,
keeps each image id once (DistributedSampler repeats images to pad the last batch) and writes the file atomically.
The destination's folder must therefore be visible to every process (a shared file system, as for checkpoints).
During `fit` the file is rewritten at every validation, so it holds the last one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from datamodules.evaluation import encode_prediction_masks
from datamodules.files import atomic_path


def detection_records(image_id: int, prediction: dict[str, Tensor], label_to_cat_id: list[int]) -> list[dict]:
    """COCO results records of one image's prediction (boxes float [K,4] xyxy, scores [K], labels [K] contiguous,
    masks bool [K,H,W] at the original resolution, optional mask_scores [K])."""
    boxes = prediction["boxes"].detach().float().cpu().double().reshape(-1, 4).tolist()
    # float32 -> float64 exactly, as the evaluator does: the written numbers are the ones it scores
    scores = prediction["scores"].detach().float().cpu().double().reshape(-1).tolist()
    labels = prediction["labels"].detach().cpu().reshape(-1).tolist()
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"image_id {image_id}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
    masks = prediction.get("masks")
    rles = None
    if masks is not None:
        rles = [rle.decode("ascii") for rle in encode_prediction_masks(masks.detach(), len(scores), image_id)]
        size = [int(masks.shape[-2]), int(masks.shape[-1])]
    mask_scores = prediction.get("mask_scores")
    if mask_scores is not None:
        mask_scores = mask_scores.detach().float().cpu().double().reshape(-1).tolist()
    records = []
    for det, (box, score, label) in enumerate(zip(boxes, scores, labels)):
        if not 0 <= label < len(label_to_cat_id):
            raise ValueError(f"image_id {image_id}: predicted label {label} outside [0, {len(label_to_cat_id)})")
        record: dict[str, Any] = {
            "image_id": image_id, "category_id": label_to_cat_id[label],
            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": score,
        }
        if rles is not None:
            record["segmentation"] = {"size": size, "counts": rles[det]}
        if mask_scores is not None:
            record["score"], record["bbox_score"] = mask_scores[det], score
        records.append(record)
    return records


class CocoResultsWriter(BasePredictionWriter):
    """Writes `path` from the predictions of validate / test / predict (and of each validation during fit)."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(write_interval="batch")
        self.path = Path(path)
        self._part = None
        self.written: int | None = None  # detections in the last file written (rank 0)

    # ------------------------------------------------------------------------------------- Lightning hooks

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._open(trainer)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._open(trainer)

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self._open(trainer)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._append(trainer, outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._append(trainer, outputs, batch)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx) -> None:
        self._append(trainer, prediction, batch)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._finish(trainer)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._finish(trainer)

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        self._finish(trainer)

    # -------------------------------------------------------------------------------------------- writing

    def _part_path(self, rank: int) -> Path:
        return self.path.with_name(f".{self.path.name}.rank{rank}.part")

    def _open(self, trainer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._part = open(self._part_path(trainer.global_rank), "w", encoding="utf-8")

    def _append(self, trainer, predictions, batch) -> None:
        if self._part is None:  # the sanity check, or a loop this writer was not opened for
            return
        if predictions is None:
            raise ValueError(f"{type(trainer.lightning_module).__name__} returned no predictions from its step: "
                             "--results_json needs the model's validation/test/predict step to return them")
        _, targets = batch
        label_to_cat_id = list(trainer.datamodule.label_to_cat_id)
        for prediction, target in zip(predictions, targets):
            image_id = int(target["image_id"])
            masks = prediction.get("masks")
            if masks is not None and "orig_size" in target:
                expected = tuple(int(v) for v in target["orig_size"])
                if tuple(masks.shape[-2:]) != expected:
                    raise ValueError(f"image_id {image_id}: prediction masks are {tuple(masks.shape[-2:])}, the "
                                     f"image is {expected}; a results file needs the original resolution")
            records = detection_records(image_id, prediction, label_to_cat_id)
            self._part.write(json.dumps([image_id, records]) + "\n")

    def _finish(self, trainer) -> None:
        if self._part is None:
            return
        self._part.close()
        self._part = None
        trainer.strategy.barrier("results-json-parts")  # every part complete before rank 0 reads them
        if trainer.is_global_zero:
            self.written = self._join([self._part_path(rank) for rank in range(trainer.world_size)])
        trainer.strategy.barrier("results-json-written")  # no part reopened before rank 0 removed it

    def _join(self, parts: list[Path]) -> int:
        """The parts' records, each image id's first occurrence in rank order, as one JSON list written atomically;
        the parts are removed. Returns the number of records."""
        seen: set[int] = set()
        count = 0
        with atomic_path(self.path) as tmp, open(tmp, "w", encoding="utf-8") as out:
            out.write("[")
            for part in parts:
                if not part.is_file():
                    raise FileNotFoundError(f"{part}: a process's results part is missing; --results_json needs a "
                                            "folder every process can see")
                with open(part, encoding="utf-8") as lines:
                    for line in lines:
                        image_id, records = json.loads(line)
                        if image_id in seen:
                            continue
                        seen.add(image_id)
                        for record in records:
                            out.write(("\n" if count == 0 else ",\n") + json.dumps(record))
                            count += 1
            out.write("\n]\n" if count else "]\n")
        for part in parts:
            part.unlink()
        return count

"""Two CPU processes (gloo) with an odd number of images split by DistributedSampler give the single-process numbers.

DistributedSampler pads 17 images to 18 by repeating one, so this also checks that the evaluator keeps each image
id once after the gather. A second evaluator sees no detections at all on rank 1, which makes the ranks' state
tensors differ in length down to zero rows.
"""
import json
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from datamodules.evaluation import CocoEvaluator
from tests.datamodules.test_evaluation import CATEGORY_IDS, NUM_IMAGES, build_coco_fixture

WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _no_detections(pred):
    return {"boxes": pred["boxes"][:0], "scores": pred["scores"][:0], "labels": pred["labels"][:0],
            "masks": pred["masks"][:0]}


def _worker(rank: int, port: int, ann_file: str, data_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        data = torch.load(data_file, weights_only=True)
        indices = list(DistributedSampler(range(NUM_IMAGES), num_replicas=WORLD_SIZE, rank=rank, shuffle=False))
        full = CocoEvaluator(ann_file, CATEGORY_IDS)
        silent_rank1 = CocoEvaluator(ann_file, CATEGORY_IDS)
        for start in range(0, len(indices), 2):
            batch = indices[start:start + 2]
            preds = [data["preds"][i] for i in batch]
            targets = [{"image_id": data["image_ids"][i]} for i in batch]
            full.update(preds, targets)
            silent_rank1.update([_no_detections(p) for p in preds] if rank == 1 else preds, targets)
        result = {"indices": indices, "full": full.compute(), "silent_rank1": silent_rank1.compute()}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def _single_process(ann_file, preds, image_ids, indices=None):
    evaluator = CocoEvaluator(ann_file, CATEGORY_IDS)
    for i in indices if indices is not None else range(len(preds)):
        evaluator.update([preds[i]], [{"image_id": image_ids[i]}])
    return evaluator.compute()


def test_two_process_gloo_run_equals_single_process(tmp_path):
    assert NUM_IMAGES % WORLD_SIZE == 1  # the sampler must pad
    ann_file, preds, targets = build_coco_fixture(str(tmp_path))
    image_ids = [t["image_id"] for t in targets]
    data_file = str(tmp_path / "preds.pt")
    torch.save({"preds": preds, "image_ids": image_ids}, data_file)

    mp.spawn(_worker, args=(_free_port(), ann_file, data_file, str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]

    seen = ranks[0]["indices"] + ranks[1]["indices"]
    assert len(seen) == NUM_IMAGES + 1 and set(seen) == set(range(NUM_IMAGES))  # one image really was repeated
    expected = _single_process(ann_file, preds, image_ids)
    silenced = [_no_detections(p) if i in set(ranks[1]["indices"]) - set(ranks[0]["indices"]) else p
                for i, p in enumerate(preds)]
    expected_silent = _single_process(ann_file, silenced, image_ids)
    assert expected_silent != expected
    for result in ranks:  # every rank computes the same, gathered numbers
        assert result["full"] == expected
        assert result["silent_rank1"] == expected_silent

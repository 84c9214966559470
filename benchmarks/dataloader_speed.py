"""Train-loader throughput: images/s out of CocoDataModule's train DataLoader (image decode, mask decode,
augmentation, collate), with no model attached.

    python -m benchmarks.dataloader_speed --root DIR --workers 2 --batch-size 8
    python -m benchmarks.dataloader_speed --workers 2 --batch-size 8      # synthetic set, 512 px, 200 train images

The first `--warmup` batches (worker start-up, page cache) are timed separately and left out of the figure.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Sequence

from datamodules.coco import CocoDataModule, DatasetError


def padding_ratio(batches: Sequence[Sequence[int]], sizes: Sequence[tuple[int, int]]) -> float:
    """Pixels of the padded batches (each image padded to its batch's largest height and largest width) over the
    images' own pixels: 1.0 means no padding. `sizes` is (height, width) per dataset index."""
    padded = sum(len(batch) * max(sizes[i][0] for i in batch) * max(sizes[i][1] for i in batch) for batch in batches)
    return padded / sum(sizes[i][0] * sizes[i][1] for batch in batches for i in batch)


def measure(datamodule: CocoDataModule, epochs: int, warmup: int) -> dict:
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    start = time.perf_counter()
    images, batches = 0, 0
    timed_from, warmup_seconds = (start, 0.0) if warmup == 0 else (None, None)
    for _ in range(epochs):
        for batch_images, _ in loader:
            batches += 1
            if batches == warmup:
                timed_from = time.perf_counter()
                warmup_seconds = timed_from - start
            elif batches > warmup:
                images += len(batch_images)
    if timed_from is None or images == 0:
        raise SystemExit(f"error: only {batches} batches, need more than --warmup {warmup}")
    seconds = time.perf_counter() - timed_from
    return {
        "images_per_s": images / seconds,
        "timed_images": images,
        "timed_seconds": seconds,
        "warmup_batches": warmup,
        "warmup_seconds": warmup_seconds,
        "train_images": len(datamodule.train_dataset),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", help="COCO 2017 layout root; default: the synthetic set")
    parser.add_argument("--train-split", default="train2017")
    parser.add_argument("--val-split", default="val2017")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2, help="batches left out of the figure")
    parser.add_argument("--photometric", action="store_true")
    parser.add_argument("--scale-jitter", type=float, nargs=2, metavar=("LOW", "HIGH"))
    parser.add_argument("--synthetic-num-train", type=int, default=200)
    parser.add_argument("--synthetic-num-val", type=int, default=20)
    parser.add_argument("--synthetic-image-size", type=int, default=512)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)

    datamodule = CocoDataModule(
        root=args.root,
        train_split=args.train_split,
        val_split=args.val_split,
        batch_size=args.batch_size,
        num_workers=args.workers,
        photometric=args.photometric,
        scale_jitter=args.scale_jitter,
        synthetic_num_train=args.synthetic_num_train,
        synthetic_num_val=args.synthetic_num_val,
        synthetic_image_size=args.synthetic_image_size,
    )
    try:
        result = measure(datamodule, args.epochs, args.warmup)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result.update(workers=args.workers, batch_size=args.batch_size, photometric=args.photometric,
                  scale_jitter=args.scale_jitter, dataset=args.root or f"synthetic {args.synthetic_image_size} px")
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['dataset']}: {result['images_per_s']:.1f} images/s "
              f"({result['timed_images']} images in {result['timed_seconds']:.2f} s after {args.warmup} warm-up "
              f"batches of {args.batch_size}, {args.workers} workers; warm-up took {result['warmup_seconds']:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train-loader throughput: images/s out of CocoDataModule's train DataLoader (image decode, mask decode,
augmentation, collate), with no model attached.

    python -m benchmarks.dataloader_speed --root DIR --workers 2 --batch-size 8
    python -m benchmarks.dataloader_speed --workers 2 --batch-size 8      # synthetic set, 512 px, 200 train images

The first `--warmup` batches (worker start-up, page cache) are timed separately and left out of the figure.
It also reports the padding ratio of the timed batches: the pixels of each batch padded to its largest height and
width over the images' own pixels (--no-group: plain shuffled batches instead of aspect-ratio grouped ones).
benchmarks.train_speed sets this figure next to the training throughput of a model fed by the same loader.
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


def measure(datamodule: CocoDataModule, epochs: int, warmup: int, batches: int | None = None) -> dict:
    """images/s of the train loader over `epochs` epochs (or until `batches` timed batches), the first `warmup`
    batches left out; also the padding ratio of the timed batches (their images at the loader's output sizes)."""
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    start = time.perf_counter()
    images, seen, padded, pixels = 0, 0, 0, 0
    timed_from, warmup_seconds = (start, 0.0) if warmup == 0 else (None, None)
    for _ in range(epochs):
        for batch_images, _ in loader:
            seen += 1
            if seen == warmup:
                timed_from = time.perf_counter()
                warmup_seconds = timed_from - start
            elif seen > warmup:
                images += len(batch_images)
                sizes = [tuple(image.shape[-2:]) for image in batch_images]
                padded += len(sizes) * max(h for h, _ in sizes) * max(w for _, w in sizes)
                pixels += sum(h * w for h, w in sizes)
                if batches is not None and seen - warmup >= batches:
                    break
        if batches is not None and seen - warmup >= batches:
            break
    if timed_from is None or images == 0:
        raise SystemExit(f"error: only {seen} batches, need more than --warmup {warmup}")
    seconds = time.perf_counter() - timed_from
    return {
        "images_per_s": images / seconds,
        "timed_images": images,
        "timed_seconds": seconds,
        "warmup_batches": warmup,
        "warmup_seconds": warmup_seconds,
        "train_images": len(datamodule.train_dataset),
        "padding_ratio": padded / pixels,
        "grouped_by_aspect_ratio": datamodule.hparams.group_by_aspect_ratio,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", help="COCO 2017 layout root; default: the synthetic set")
    parser.add_argument("--train-split", default="train2017")
    parser.add_argument("--val-split", default="val2017")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batches", type=int, default=None, help="stop after this many timed batches")
    parser.add_argument("--no-group", dest="group", action="store_false",
                        help="plain shuffled batches instead of aspect-ratio grouped ones (to compare padding)")
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
        group_by_aspect_ratio=args.group,
    )
    try:
        result = measure(datamodule, args.epochs, args.warmup, args.batches)
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
              f"batches of {args.batch_size}, {args.workers} workers; warm-up took {result['warmup_seconds']:.2f} s); "
              f"padding ratio {result['padding_ratio']:.3f} ({'grouped' if args.group else 'plain'} batches)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

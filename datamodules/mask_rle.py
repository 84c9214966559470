"""COCO run-length encoding of a model's row-major masks, identical to `pycocotools.mask.encode`.

pycocotools encodes column-major masks ([H,W,K] Fortran order) one byte at a time. A model's pasted masks are
row-major [K,H,W] and mostly empty: transposing them whole costs several times the encoding, and encoding them
whole scans every byte. Neither pycocotools nor faster-coco-eval encodes row-major masks, so this is written by hand:
only each mask's bounding box is transposed and scanned, and its runs are placed back into the full image.

    encode_masks(masks)  uint8 [K,H,W] 0/1 -> K compressed-RLE "counts" strings (bytes)

The steps, per image (all of an image's masks at once where numpy allows):
  1. rows: one pass over the masks read as 8-byte words finds, per mask, the first and last word holding a pixel;
     they bound the mask's rows (a row too many at most, where a word straddles two rows);
  2. columns: that band of rows is reduced to the columns that hold a pixel;
  3. the box, grown by one empty row above or below where the image has one, is copied column-major into one
     buffer holding every mask's box, each followed by a 0; runs change where neighbouring bytes differ;
  4. each run of ones maps back to its full-image column-major position. The empty row keeps a run of ones from
     running on from one box column into the next (in the full image the rest of the column lies between), so
     the start and the end of every run map on their own. The zero/one run lengths are then compressed to
     COCO's string by faster-coco-eval's C++.
benchmarks/eval_speed.py measures what it saves; tests/datamodules/test_mask_rle.py compares it with pycocotools.
"""
from __future__ import annotations

import numpy as np


def encode_masks(masks: np.ndarray) -> list[bytes]:
    """uint8 [K,H,W] 0/1 masks (any memory layout) -> K COCO compressed-RLE counts strings, identical to
    `pycocotools.mask.encode` of the same masks."""
    from faster_coco_eval import mask_api_new_cpp as rle_api

    count, height, width = masks.shape
    masks = np.ascontiguousarray(masks)
    runs = [[height * width] for _ in range(count)]  # an empty mask: one run of zeros
    index, top, bottom, left, right = _bounding_boxes(masks) if masks.size else [np.zeros(0, np.int64)] * 5
    if len(index):
        for k, mask_runs in zip(index.tolist(), _runs_from_boxes(masks, index, top, bottom, left, right)):
            runs[k] = mask_runs
    return [rle["counts"] for rle in rle_api.frUncompressedRLE([{"size": [height, width], "counts": r} for r in runs])]


def _bounding_boxes(masks: np.ndarray) -> tuple[np.ndarray, ...]:
    """C-contiguous uint8 [K,H,W] -> (index, top, bottom, left, right), int64 [N] each: the N non-empty masks and
    their boxes, columns [left, right) exact, rows [top, bottom) a row too many at most on either side."""
    count, height, width = masks.shape
    area = height * width
    flat = masks.reshape(-1)
    whole_words = flat.size // 8
    words = np.flatnonzero(flat[:whole_words * 8].view(np.uint64) != 0)  # [M] sorted indices of non-zero words
    if flat.size > whole_words * 8 and flat[whole_words * 8:].any():
        words = np.append(words, whole_words)  # the bytes after the last whole word, as one more word
    start = np.arange(count, dtype=np.int64) * area  # first byte of each mask
    first = np.searchsorted(words, start // 8)
    end = np.searchsorted(words, (start + area - 1) // 8, side="right")
    index = np.flatnonzero(end > first)  # masks touched by a non-zero word: a neighbour's word may touch an empty one
    start = start[index]
    first_byte = np.maximum(words[first[index]] * 8, start) - start
    last_byte = np.minimum(words[end[index] - 1] * 8 + 7, start + area - 1) - start
    top, bottom = first_byte // width, last_byte // width + 1

    columns = np.empty((len(index), width), dtype=masks.dtype)  # [N, W]: 1 where the column holds a pixel
    for i, k in enumerate(index.tolist()):
        np.max(masks[k, top[i]:bottom[i]], axis=0, out=columns[i])
    occupied = columns.any(axis=1)
    index, top, bottom, columns = index[occupied], top[occupied], bottom[occupied], columns[occupied]
    left = columns.argmax(axis=1)
    right = width - columns[:, ::-1].argmax(axis=1)
    return index, top, bottom, left, right


def _runs_from_boxes(masks, index, top, bottom, left, right) -> list[list[int]]:
    """COCO's uncompressed runs (zeros first, alternating, column-major over the full image) of masks[index], read
    from their boxes. masks: C-contiguous uint8 [K,H,W]; the rest int64 [N], as `_bounding_boxes` returns them."""
    count, height, width = masks.shape
    area = height * width
    # one empty row above or below each box where the image has one: see the module docstring, step 4
    top = np.maximum(top - 1, 0)
    bottom = np.minimum(bottom + 1, height)
    box_height, box_width = bottom - top, right - left
    offsets = np.concatenate([[1], 1 + np.cumsum(box_height * box_width + 1)])  # box i: [offsets[i], ... + h*w)
    boxes = np.zeros(int(offsets[-1]), dtype=np.uint8)  # a 0, then each box column-major followed by a 0
    for i, k in enumerate(index.tolist()):
        begin, h, w = int(offsets[i]), int(box_height[i]), int(box_width[i])
        boxes[begin:begin + h * w].reshape(w, h)[...] = masks[k, top[i]:bottom[i], left[i]:right[i]].T

    # every box starts and ends on a 0, so changes alternate start / end of a run of ones, box after box
    changes = np.flatnonzero(boxes[1:] != boxes[:-1]) + 1
    ones_start, ones_end = changes[0::2], changes[1::2]
    box = np.searchsorted(offsets, ones_start, side="right") - 1  # [R] which box each run of ones lies in
    first_pixel = ones_start - offsets[box]
    last_pixel = ones_end - 1 - offsets[box]
    h = box_height[box]
    start = (left[box] + first_pixel // h) * height + top[box] + first_pixel % h
    end = (left[box] + last_pixel // h) * height + top[box] + last_pixel % h + 1
    previous_end = np.concatenate([[0], end[:-1]])
    first_run = np.searchsorted(box, np.arange(len(index) + 1))  # box i's runs of ones: [first_run[i], first_run[i+1])
    previous_end[first_run[:-1]] = 0  # every box has a run of ones, so first_run[i] < R for i < N
    lengths = np.stack([start - previous_end, end - start], axis=1).reshape(-1).tolist()  # zeros, ones, zeros, ...
    last_end = end[first_run[1:] - 1].tolist()

    runs = []
    for i in range(len(index)):
        mask_runs = lengths[2 * first_run[i]:2 * first_run[i + 1]]
        if last_end[i] < area:  # the zeros after the last run of ones, unless it ends the image
            mask_runs.append(area - last_end[i])
        runs.append(mask_runs)
    return runs

"""encode_masks must give pycocotools' strings to the byte for every mask, however it lies in the image."""
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from datamodules.mask_rle import encode_masks


def pycocotools_counts(masks: np.ndarray) -> list[bytes]:
    return [rle["counts"] for rle in mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0), np.uint8))]


def test_hand_picked_shapes_equal_pycocotools():
    rng = np.random.default_rng(0)
    cases = [rng.random((6, 37, 53)) < 0.3, np.zeros((2, 20, 30), bool), np.ones((2, 20, 30), bool),
             rng.random((3, 1, 17)) < 0.5, rng.random((3, 17, 1)) < 0.5, np.ones((1, 1, 1), bool)]
    shapes = np.zeros((11, 40, 60), bool)
    shapes[0, 5:9, 0:4] = True  # left border
    shapes[1, 30:40, 55:60] = True  # bottom-right corner: the last run of ones ends the image
    shapes[2, 0, 0] = shapes[2, 39, 59] = True  # two single pixels, far apart: the first run of zeros is empty
    shapes[3, :, 10:12] = True  # full-height columns: the box has no empty row and runs cross columns
    shapes[4, 10:20, 5:8] = shapes[4, 2:4, 40:50] = True  # empty columns and rows inside the box
    shapes[5, 39, :] = True  # last row: one-pixel runs in every column, the empty row goes above
    shapes[6, :, 0] = shapes[6, :, 59] = True  # first and last column only
    shapes[7, 0, :] = True  # first row: the empty row goes below
    shapes[8, 0:39, 20:30] = True  # all but the last row: the box grows to the full height
    shapes[9, 12, 59] = shapes[9, 13, 0] = True  # a row apart in memory, a whole width apart in the image
    cases += [shapes, np.ascontiguousarray(shapes.transpose(0, 2, 1)).transpose(0, 2, 1)]  # C and Fortran layouts
    for masks in cases:
        assert encode_masks(masks.astype(np.uint8)) == pycocotools_counts(masks)


@pytest.mark.parametrize("seed", range(3))
def test_random_masks_equal_pycocotools(seed):
    """Boxes of random fill anywhere (borders included), empty, full and noise masks, next to each other in one
    [K,H,W] array (a neighbour's pixels share 8-byte words with a mask's first and last rows), in C, Fortran and
    reversed layouts."""
    rng = np.random.default_rng(seed)
    for trial in range(400):
        height, width = rng.integers(1, 12 if trial % 2 else 40, size=2)
        masks = np.zeros((int(rng.integers(0, 6)), height, width), np.uint8)
        for mask in masks:
            kind = rng.integers(6)
            if kind == 1:
                mask[...] = 1
            elif kind == 2:
                mask[...] = rng.random((height, width)) < rng.random()
            elif kind > 2:
                y0, x0 = rng.integers(0, height), rng.integers(0, width)
                y1, x1 = rng.integers(y0, height) + 1, rng.integers(x0, width) + 1
                mask[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < (0.7 if kind == 3 else 2)
        layouts = [masks, np.asfortranarray(masks), np.ascontiguousarray(masks[:, ::-1])[:, ::-1]]
        for layout in layouts:
            assert encode_masks(layout) == pycocotools_counts(masks), (seed, trial)


def test_unaligned_and_odd_sized_buffers():
    """The word scan reads the buffer as 8-byte words: a view that starts mid-word and a size that is no multiple
    of 8 (the last pixel in the bytes after the last whole word) must not matter."""
    buffer = np.zeros(1 + 3 * 7 * 9, np.uint8)
    masks = buffer[1:].reshape(3, 7, 9)
    masks[1, 2:5, 3:8] = 1
    masks[2, 6, 8] = 1
    assert not masks.flags.aligned or masks.ctypes.data % 8
    assert encode_masks(masks) == pycocotools_counts(masks)


def test_empty_inputs():
    assert encode_masks(np.zeros((0, 5, 7), np.uint8)) == []
    assert encode_masks(np.zeros((2, 0, 5), np.uint8)) == [b"0", b"0"]

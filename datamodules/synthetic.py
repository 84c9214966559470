"""The embedded default dataset: textured shapes written in the COCO 2017 layout.

`write_synthetic_dataset(out_dir, ...)` draws a seeded, byte-for-byte reproducible dataset:

    out_dir/annotations/instances_train2017.json   out_dir/train2017/000000000001.png ...
    out_dir/annotations/instances_val2017.json     out_dir/val2017/000000000002.png ...

Each image (long side `image_size`, short side 75-100 % of it, landscape or portrait) holds shapes of six
classes with NON-contiguous category ids, random colours and sizes up to 60 % of the short side, in one of two
styles:
- "simple" (the default): 1-3 bright, saturated shapes of >= 32 px on a dark two-colour gradient with light pixel
  noise — a task small detectors learn from scratch in 150 CPU steps, so the quickstarts show real learning;
- "textured": 1-4 shapes of >= 24 px on gradients, stripes or colour blotches of any colour, heavier noise, and one
  shape in ten coloured close to the background under it — no colour marks "background"; the harder set.
Later shapes are drawn over earlier ones; an annotation stores the VISIBLE part and a shape left almost fully
hidden is dropped before it is drawn, so no visible pixel is unannotated. About 7.5 % of the images are empty and
about 10 % also hold a crowd region (a cluster of small shapes of one class, iscrowd=1, uncompressed RLE).
Unoccluded polygonal shapes are stored as the exact polygon drawn (the bowtie as a two-part polygon); everything
else as compressed RLE. bbox and area are pycocotools' toBbox/area of the stored mask.

`synthetic_root(...)` is the cached default: generated on first use under $MASKBENCH_CACHE (default
~/.cache/maskbench) in a directory named by the parameters, reused afterwards.
"""
from __future__ import annotations

import colorsys
import errno
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

# Part of the cache directory name: bump it whenever the generator's output changes, so no stale cache is reused.
VERSION = "v4"

# Ids are non-contiguous on purpose, as in real COCO: code that mistakes a category id for a label fails here.
CATEGORIES = (
    {"supercategory": "round", "id": 1, "name": "circle"},
    {"supercategory": "polygon", "id": 3, "name": "square"},
    {"supercategory": "polygon", "id": 7, "name": "triangle"},
    {"supercategory": "polygon", "id": 9, "name": "bowtie"},
    {"supercategory": "polygon", "id": 12, "name": "star"},
    {"supercategory": "round", "id": 20, "name": "ring"},
)
SPLITS = ("train", "val")

# The embedded default's split sizes. 200 val images (~360 instances) rather than 50 (~85): one trained Mask R-CNN
# quickstart evaluated on six fresh draws of the val split scored segm AP 0.535 +- 0.027 at 50 images (0.498 to
# 0.575: the size of the gaps between quickstart architectures) and 0.533 +- 0.014 at 200; the larger split costs
# each quickstart ~10-30 CPU seconds more evaluation.
DEFAULT_NUM_TRAIN = 200
DEFAULT_NUM_VAL = 200

MIN_IMAGE_SIZE = 64
SHORT_SIDE_RANGE = (0.75, 1.0)  # short side as a fraction of image_size (the long side)
MAX_SHAPE_FRACTION = 0.6  # largest diameter as a fraction of the short side
EMPTY_FRACTION = 0.075
CROWD_FRACTION = 0.10
CROWD_BLOBS = (5, 10)
MIN_VISIBLE_FRACTION = 0.25  # a shape with less of itself visible counts as almost fully occluded: dropped
MIN_VISIBLE_PIXELS = 16


@dataclass(frozen=True)
class Style:
    """How images look. `textured` is what v2 drew (same random draws); `simple` is the default since v3 (v4: larger
    and fewer shapes)."""

    textured_background: bool  # gradients / stripes / blotches of any colour, else a dark gradient
    similar_colour_probability: float  # chance that a shape's colour is close to the background under it
    noise_std: float  # pixel noise, levels
    max_shading: float  # linear shading across a shape, levels
    min_shape_diameter: float  # px, diameter of the shape's circumscribed circle
    max_instances: int  # an image holds 1..max_instances shapes (unless empty)


STYLES = {
    "simple": Style(textured_background=False, similar_colour_probability=0.0, noise_std=2.0, max_shading=15.0,
                    min_shape_diameter=32.0, max_instances=3),
    "textured": Style(textured_background=True, similar_colour_probability=0.1, noise_std=4.0, max_shading=40.0,
                      min_shape_diameter=24.0, max_instances=4),
}
DEFAULT_STYLE = "simple"

_INFO = {"version": VERSION, "year": 2025, "contributor": "maskbench", "url": "", "date_created": "2025/01/01"}
_LICENSES = [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}]


def synthetic_root(
    num_train: int = DEFAULT_NUM_TRAIN, num_val: int = DEFAULT_NUM_VAL, image_size: int = 128, seed: int = 0,
    cache_dir: str | None = None, style: str = DEFAULT_STYLE,
) -> Path:
    """The cached synthetic dataset for these parameters, generated on first use.

    Two processes may race to create it: each generates into its own staging directory and the atomic rename lets
    one win; the other discards its copy (identical, since generation is deterministic) and uses the winner's.
    """
    cache = Path(cache_dir or os.environ.get("MASKBENCH_CACHE") or Path.home() / ".cache" / "maskbench")
    root = cache.expanduser() / f"synthetic-{VERSION}-{style}-n{num_train}-v{num_val}-s{image_size}-seed{seed}"
    if not root.exists():
        try:
            write_synthetic_dataset(root, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed,
                                    style=style)
        except FileExistsError:
            pass  # another process renamed its complete copy into place first
    missing = [str(path) for path in _annotation_files(root) if not path.is_file()]
    if missing:
        raise FileExistsError(f"{root}: exists but is not a complete synthetic dataset (missing {missing[0]}); "
                              "delete it to regenerate")
    return root


def write_synthetic_dataset(
    out_dir: str | os.PathLike, num_train: int = DEFAULT_NUM_TRAIN, num_val: int = DEFAULT_NUM_VAL,
    image_size: int = 128, seed: int = 0, style: str = DEFAULT_STYLE,
) -> Path:
    """Writes the dataset to `out_dir` (which must not exist, or be empty) and returns its path.

    Everything is written into a hidden staging directory next to `out_dir` and renamed into place at the end, so
    an interrupted run never leaves a half-written dataset under the final name.
    """
    for name, value, low in (("num_train", num_train, 1), ("num_val", num_val, 1),
                             ("image_size", image_size, MIN_IMAGE_SIZE), ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"write_synthetic_dataset: {name} must be an integer >= {low}, got {value!r}")
    if style not in STYLES:
        raise ValueError(f"write_synthetic_dataset: style must be one of {sorted(STYLES)}, got {style!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir}: already exists and is not empty; remove it or choose another directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        for split_index, (split, num_images) in enumerate(zip(SPLITS, (num_train, num_val))):
            _write_split(staging, split_index, num_images, image_size, seed, style)
        os.chmod(staging, 0o755)  # mkdtemp makes it owner-only; a finished dataset is read like any other folder
        try:
            os.replace(staging, out_dir)
        except OSError as error:
            if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(f"{out_dir}: was created by someone else while generating") from error
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _annotation_files(root: Path) -> list[Path]:
    return [root / "annotations" / f"instances_{split}2017.json" for split in SPLITS]


def _write_split(root: Path, split_index: int, num_images: int, image_size: int, seed: int, style: str) -> None:
    """Renders one split's images and writes its annotation JSON.

    Every image draws from its own generator keyed by (seed, split, index), so image i is the same whatever the
    split size. Ids are odd in train and even in val: unique across splits as in COCO, and never equal to a list
    index, so code that confuses the two fails.
    """
    split = SPLITS[split_index]
    image_dir = root / f"{split}2017"
    image_dir.mkdir()
    roles = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_index, 0))).permutation(num_images)
    num_empty = round(EMPTY_FRACTION * num_images)
    empty = set(roles[:num_empty].tolist())
    with_crowd = set(roles[num_empty:num_empty + round(CROWD_FRACTION * num_images)].tolist())

    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_index, 1, index)))
        image_id = 2 * index + 1 + split_index
        short = int(rng.integers(round(SHORT_SIDE_RANGE[0] * image_size), image_size + 1))
        height, width = (image_size, short) if rng.random() < 0.5 else (short, image_size)
        num_shapes = 0 if index in empty else int(rng.integers(1, STYLES[style].max_instances + 1))
        pixels, image_annotations = _render_image(rng, height, width, num_shapes, index in with_crowd, STYLES[style])
        file_name = f"{image_id:012d}.png"
        Image.fromarray(pixels, "RGB").save(image_dir / file_name, format="PNG")
        images.append({"license": 1, "file_name": file_name, "height": height, "width": width,
                       "date_captured": _INFO["date_created"], "id": image_id})
        for annotation in image_annotations:
            annotations.append({**annotation, "image_id": image_id, "id": 2 * len(annotations) + 1 + split_index})

    info = {"description": f"maskbench synthetic shapes {VERSION} ({style}): {split} split, "
                           f"image_size={image_size}, seed={seed}", **_INFO}
    document = {"info": info, "licenses": _LICENSES, "images": images, "annotations": annotations,
                "categories": list(CATEGORIES)}
    (root / "annotations").mkdir(exist_ok=True)
    with open(root / "annotations" / f"instances_{split}2017.json", "w") as handle:
        json.dump(document, handle, separators=(",", ":"))


# ------------------------------------------------------------------------------------------------ one image


@dataclass
class _Piece:
    """One painted region: mask bool [H, W], fill = colour [3] plus a linear shading `gradient` [2] around `centre`."""

    mask: np.ndarray
    colour: np.ndarray
    gradient: np.ndarray
    centre: tuple[float, float]


@dataclass
class _Shape:
    """An annotated object: its pieces (one per drawn shape; a crowd has many) and, when polygonal, the polygon."""

    category_id: int
    pieces: list[_Piece]
    polygons: list[list[float]] | None
    iscrowd: int = 0

    @property
    def mask(self) -> np.ndarray:
        return np.logical_or.reduce([piece.mask for piece in self.pieces])


def _render_image(rng: np.random.Generator, height: int, width: int, num_shapes: int, with_crowd: bool,
                  style: Style):
    """Returns the image, uint8 [H, W, 3], and its annotations (without ids), bottom layer first."""
    canvas = _background(rng, height, width) if style.textured_background else _dark_gradient(rng, height, width)
    crowd = _sample_crowd(rng, canvas, style) if with_crowd and num_shapes else None
    shapes = [_sample_instance(rng, canvas, style) for _ in range(num_shapes)]

    # Top-down: a shape's visible part is what no KEPT shape above it covers; the crowd lies under everything.
    kept, visible = [], []
    covered = np.zeros((height, width), dtype=bool)
    for shape in reversed(shapes):
        shape_mask = shape.mask
        shown = shape_mask & ~covered
        if _mostly_visible(shown, shape_mask):
            kept.insert(0, shape)
            visible.insert(0, shown)
            covered |= shape_mask
    if crowd is not None:
        crowd_mask = crowd.mask
        shown = crowd_mask & ~covered
        if _mostly_visible(shown, crowd_mask):
            kept.insert(0, crowd)
            visible.insert(0, shown)

    for shape in kept:
        for piece in shape.pieces:
            _paint(canvas, piece)
    canvas += rng.normal(0.0, style.noise_std, size=canvas.shape).astype(np.float32)
    pixels = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return pixels, [_annotation(shape, shown) for shape, shown in zip(kept, visible)]


def _mostly_visible(shown: np.ndarray, whole: np.ndarray) -> bool:
    count = int(shown.sum())
    return count >= MIN_VISIBLE_PIXELS and count >= MIN_VISIBLE_FRACTION * int(whole.sum())


def _annotation(shape: _Shape, shown: np.ndarray) -> dict:
    height, width = shown.shape
    if shape.polygons is not None and np.array_equal(shown, shape.mask):
        # The shape's mask was rasterised from this very polygon by pycocotools, so it decodes to the drawn pixels.
        segmentation = shape.polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(shape.polygons, height, width))
    else:
        rle = mask_utils.encode(np.asfortranarray(shown, dtype=np.uint8))
        if shape.iscrowd:
            segmentation = _uncompressed_rle(shown)
        else:
            segmentation = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
    return {"segmentation": segmentation, "area": float(mask_utils.area(rle)),
            "bbox": [float(value) for value in mask_utils.toBbox(rle)], "iscrowd": shape.iscrowd,
            "category_id": shape.category_id}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a bool [H, W] mask: run lengths in column-major order, starting with a 0-run.

    By hand because pycocotools only emits the compressed string form.
    """
    flat = mask.ravel(order="F")
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], starts, [flat.size]])).tolist()
    if flat[0]:
        counts.insert(0, 0)
    return {"counts": counts, "size": list(mask.shape)}


# ------------------------------------------------------------------------------------------------ drawing


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A textured background, float32 [H, W, 3] in 0..255: two random colours blended by a gradient, stripes or
    blotches, so no single colour marks "background"."""
    colours = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    along = xs * math.cos(angle) + ys * math.sin(angle)
    kind = int(rng.integers(3))
    if kind == 0:  # linear gradient
        blend = (along - along.min()) / max(float(np.ptp(along)), 1.0)
    elif kind == 1:  # stripes, from soft to nearly hard-edged
        period = rng.uniform(0.05, 0.16) * min(height, width)
        sharpness = rng.uniform(1.0, 4.0)
        blend = 0.5 + 0.5 * np.clip(sharpness * np.sin(2 * math.pi * along / period), -1.0, 1.0)
    else:  # blotches: a coarse grid of random colours, smoothly upsampled
        grid_h, grid_w = rng.integers(3, 9, size=2)
        grid = rng.uniform(0, 255, size=(int(grid_h), int(grid_w), 3)).astype(np.uint8)
        return np.asarray(Image.fromarray(grid, "RGB").resize((width, height), Image.BILINEAR), dtype=np.float32)
    return colours[0] + blend[..., None] * (colours[1] - colours[0])


def _dark_gradient(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """The simple style's background, float32 [H, W, 3]: two dark colours (every channel <= 90) blended linearly."""
    colours = rng.uniform(0, 90, size=(2, 3)).astype(np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    along = xs * math.cos(angle) + ys * math.sin(angle)
    blend = (along - along.min()) / max(float(np.ptp(along)), 1.0)
    return colours[0] + blend[..., None] * (colours[1] - colours[0])


def _sample_instance(rng: np.random.Generator, canvas: np.ndarray, style: Style) -> _Shape:
    height, width = canvas.shape[:2]
    category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
    # Log-uniform diameter: as many small as large objects in relative terms, as in natural images.
    largest = MAX_SHAPE_FRACTION * min(height, width)
    smallest = min(style.min_shape_diameter, largest)  # tiny images: every shape as large as allowed
    radius = math.exp(rng.uniform(math.log(smallest), math.log(largest))) / 2
    centre = (rng.uniform(radius, width - radius), rng.uniform(radius, height - radius))
    mask, polygons = _rasterise(category["name"], centre, radius, rng.uniform(0, 2 * math.pi), rng, height, width)
    return _Shape(category["id"], [_sample_fill(rng, canvas, mask, centre, radius, style)], polygons)


def _sample_crowd(rng: np.random.Generator, canvas: np.ndarray, style: Style) -> _Shape:
    """A cluster of small shapes of one class, each its own colour: one iscrowd=1 region."""
    height, width = canvas.shape[:2]
    category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
    short = min(height, width)
    spread = 0.1 * short
    largest_radius = max(4.0, 0.035 * short)
    margin = spread + largest_radius
    centre = rng.uniform([margin, margin], [width - margin, height - margin])
    pieces = []
    for _ in range(int(rng.integers(CROWD_BLOBS[0], CROWD_BLOBS[1] + 1))):
        radius = rng.uniform(3.0, largest_radius)
        blob_centre = np.clip(centre + rng.normal(0.0, spread / 2, size=2), radius, [width - radius, height - radius])
        blob_centre = (float(blob_centre[0]), float(blob_centre[1]))
        mask, _ = _rasterise(category["name"], blob_centre, radius, rng.uniform(0, 2 * math.pi), rng, height, width)
        pieces.append(_sample_fill(rng, canvas, mask, blob_centre, radius, style))
    return _Shape(category["id"], pieces, None, iscrowd=1)


def _rasterise(name: str, centre: tuple[float, float], radius: float, angle: float, rng: np.random.Generator,
               height: int, width: int) -> tuple[np.ndarray, list[list[float]] | None]:
    """The shape's mask, bool [H, W], and its COCO polygon parts (None for the round shapes).

    Polygons are rasterised by pycocotools, not PIL: the two disagree on boundary pixels (~15 % of a small
    triangle's area), and pycocotools is what every COCO consumer decodes the stored polygon with, so the painted
    pixels and the annotation are identical. Round shapes are drawn with PIL's ImageDraw.
    """
    if name in ("circle", "ring"):
        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        x, y = centre
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=1)
        if name == "ring":
            hole = radius * rng.uniform(0.45, 0.6)
            draw.ellipse([x - hole, y - hole, x + hole, y + hole], fill=0)
        return np.asarray(canvas, dtype=bool), None

    if name == "square":
        parts = [_regular_polygon(4, angle)]
    elif name == "triangle":
        parts = [[(math.cos(a), math.sin(a)) for a in angle + np.radians(np.arange(3) * 120 + rng.uniform(-12, 12, 3))]]
    elif name == "star":
        parts = [[(math.cos(a) * r, math.sin(a) * r)
                  for a, r in zip(angle + np.arange(10) * math.pi / 5, [1.0, rng.uniform(0.4, 0.5)] * 5)]]
    elif name == "bowtie":  # two triangles meeting tip to tip with a gap: a two-part polygon
        half = [(-1.0, -0.6), (-1.0, 0.6), (-0.1, 0.0)]
        reach = math.hypot(1.0, 0.6)
        cos, sin = math.cos(angle), math.sin(angle)
        parts = [[((side * u * cos - v * sin) / reach, (side * u * sin + v * cos) / reach) for u, v in half]
                 for side in (1.0, -1.0)]
    else:
        raise ValueError(f"unknown shape {name!r}")
    # Rounded before rasterising so that the stored polygon is exactly the one drawn.
    polygons = [[round(value, 2) for x, y in part for value in (centre[0] + radius * x, centre[1] + radius * y)]
                for part in parts]
    mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))).astype(bool)
    return mask, polygons


def _regular_polygon(sides: int, angle: float) -> list[tuple[float, float]]:
    corners = angle + 2 * math.pi * np.arange(sides) / sides
    return [(math.cos(a), math.sin(a)) for a in corners]


def _sample_fill(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray, centre: tuple[float, float],
                 radius: float, style: Style) -> _Piece:
    """A colour and a linear shading of up to +-`style.max_shading` levels across the shape. Textured: any colour,
    sometimes only ~35-60 levels per channel away from the background under it. Simple: bright and saturated (HSV
    value >= 0.7, saturation >= 0.5), so the brightest channel stands >= 90 levels above the dark background."""
    if not style.textured_background:
        hue, saturation, value = rng.uniform(0, 1), rng.uniform(0.5, 1.0), rng.uniform(0.7, 1.0)
        colour = 255.0 * np.asarray(colorsys.hsv_to_rgb(hue, saturation, value))
    elif rng.random() < style.similar_colour_probability and mask.any():
        under = canvas[mask].mean(axis=0)
        away = np.where(under < 128, 1.0, -1.0)  # step towards the side with room, so clipping keeps the contrast
        colour = under + away * rng.uniform(35, 60, size=3)
    else:
        colour = rng.uniform(0, 255, size=3)
    direction = rng.uniform(0, 2 * math.pi)
    gradient = rng.uniform(0, style.max_shading) / radius * np.array([math.cos(direction), math.sin(direction)])
    return _Piece(mask, colour.astype(np.float32), gradient.astype(np.float32), centre)


def _paint(canvas: np.ndarray, piece: _Piece) -> None:
    ys, xs = np.nonzero(piece.mask)
    shading = (xs - piece.centre[0]) * piece.gradient[0] + (ys - piece.centre[1]) * piece.gradient[1]
    canvas[ys, xs] = piece.colour + shading[:, None].astype(np.float32)


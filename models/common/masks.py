"""Box-relative mask helpers shared by the architectures: paste box masks into the image, crop image masks to boxes.

Two pixel conventions exist in the field and both are offered, selected by `aligned`:

- `aligned=False` (default) is torchvision's Mask R-CNN: targets are cropped with `roi_align(aligned=False)` and
  predictions pasted with `paste_masks_in_image` (integer-truncated box + 1-pixel padding, inherited from
  maskrcnn-benchmark). It reproduces torchvision's outputs exactly, which weight conversion and parity checks need,
  but a pasted full-box mask can be off by one pixel at each edge.
- `aligned=True` is detectron2's later fix: a box [x0, x1] covers continuous coordinates, pixel i is the point
  i + 0.5, targets are cropped with `roi_align(aligned=True)` and pasting samples the box mask at every pixel centre,
  so a full-box mask fills exactly the pixels whose centres lie inside the box.

Models that train their masks with one convention must paste with the same one.

Both conventions paste in chunks of masks with one `grid_sample` each (detectron2's GPU scheme): no host sync,
whatever the number of detections. On the CPU the legacy convention keeps torchvision's per-mask loop, which there is
faster (it touches only each box's pixels; the batched sampling visits the whole image per mask) and is the
reference the batched legacy paste reproduces.

torchvision.ops.masks_to_boxes already returns [0, 0, 0, 0] for an empty mask and [0, 4] for no masks, so no
"safe" wrapper is needed here.
"""
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks, paste_masks_in_image
from torchvision.ops import roi_align

# Pasting builds float [chunk, H, W] intermediates (plus a [chunk, H, W, 2] sampling grid when aligned); chunking
# bounds them (~64 MiB of floats per chunk) whatever the number of detections and the image size.
_PASTE_CHUNK_PIXELS = 1 << 24


def paste_masks(
    mask_probs: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    threshold: float = 0.5,
    aligned: bool = False,
    batched: bool | None = None,
) -> Tensor:
    """Paste box-relative mask probabilities into full images and binarise them.

    Args:
        mask_probs: float [K, 1, M, M] or [K, M, M], probabilities in 0..1 over each box (aligned=True also accepts
            non-square [K, Mh, Mw]).
        boxes: float [K, 4] xyxy in pixels of the target image.
        image_size: (H, W) of the target image.
        threshold: a pixel is foreground when its pasted probability is > threshold.
        aligned: pixel convention (see the module docstring); False reproduces torchvision's Mask R-CNN.
        batched: for aligned=False, paste with chunked grid_sample (True) or torchvision's per-mask loop (False);
            None: batched everywhere but on the CPU. aligned=True is always batched.

    Returns:
        bool [K, H, W].
    """
    if mask_probs.dim() == 3:
        mask_probs = mask_probs[:, None]
    if mask_probs.dim() != 4 or mask_probs.shape[1] != 1:
        raise ValueError(f"paste_masks: mask_probs must be [K, 1, M, M] or [K, M, M], got {tuple(mask_probs.shape)}")
    if boxes.shape != (mask_probs.shape[0], 4):
        raise ValueError(f"paste_masks: boxes must be [{mask_probs.shape[0]}, 4], got {tuple(boxes.shape)}")
    if not aligned and mask_probs.shape[-1] != mask_probs.shape[-2]:
        # torchvision's padding scale is computed from the last dimension only.
        raise ValueError(f"paste_masks: aligned=False needs square masks, got {tuple(mask_probs.shape[-2:])}")
    height, width = int(image_size[0]), int(image_size[1])
    num_masks = mask_probs.shape[0]
    out = torch.zeros((num_masks, height, width), dtype=torch.bool, device=mask_probs.device)
    if num_masks == 0 or height == 0 or width == 0:
        return out
    mask_probs = mask_probs.float()
    boxes = boxes.to(device=mask_probs.device, dtype=torch.float32)
    if batched is None:
        batched = mask_probs.device.type != "cpu"
    chunk = max(1, _PASTE_CHUNK_PIXELS // (height * width))
    for start in range(0, num_masks, chunk):
        stop = min(start + chunk, num_masks)
        if aligned:
            pasted = _paste_aligned(mask_probs[start:stop], boxes[start:stop], height, width)
        elif batched:
            pasted = _paste_legacy(mask_probs[start:stop], boxes[start:stop], height, width)
        else:
            # torchvision's implementation, not a copy of it: it is the one its Mask R-CNN (and converted weights)
            # were evaluated with. It returns float [k, 1, H, W]; thresholding per chunk bounds the memory.
            pasted = paste_masks_in_image(mask_probs[start:stop], boxes[start:stop], (height, width))[:, 0]
        out[start:stop] = pasted > threshold
    return out


def _paste_aligned(mask_probs: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
    """Sample each box mask at every image pixel centre: [k, 1, Mh, Mw], [k, 4] -> float [k, H, W].

    Hand-written (after detectron2's paste_masks_in_image) because torchvision has only the legacy paste and
    detectron2 is not a dependency. Outside its box a mask samples grid_sample's zero padding.
    """
    x0, y0, x1, y1 = boxes[:, 0:1], boxes[:, 1:2], boxes[:, 2:3], boxes[:, 3:4]
    pixel_x = torch.arange(width, device=boxes.device, dtype=torch.float32) + 0.5
    pixel_y = torch.arange(height, device=boxes.device, dtype=torch.float32) + 0.5
    # grid_sample's normalised coordinates: -1 and +1 are the outer edges of the box mask (align_corners=False).
    grid_x = (pixel_x[None] - x0) / (x1 - x0).clamp(min=1e-6) * 2 - 1  # [k, W]
    grid_y = (pixel_y[None] - y0) / (y1 - y0).clamp(min=1e-6) * 2 - 1  # [k, H]
    num = boxes.shape[0]
    grid = torch.stack(
        [grid_x[:, None, :].expand(num, height, width), grid_y[:, :, None].expand(num, height, width)], dim=3
    )
    return F.grid_sample(mask_probs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


def _paste_legacy(mask_probs: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
    """torchvision's legacy paste, batched: [k, 1, M, M], [k, 4] -> float [k, H, W], equal to paste_masks_in_image.

    torchvision pads each mask by one pixel, widens its box by (M + 2) / M, truncates the box to integers
    (x0, y0, x1, y1), resizes the padded mask to (y1 - y0 + 1) x (x1 - x0 + 1) pixels (bilinear, half-pixel centres,
    edges clamped) and writes it at rows y0..y1, columns x0..x1. Sampling the padded mask at
    ((x - x0 + 0.5) / w) * 2 - 1 with grid_sample (border padding = the resize's clamped edges) gives every pixel of
    that window the same bilinear weights; pixels outside the window are 0. Written here because torchvision
    batches only through its Python loop (with ~14 host syncs per mask on a GPU).
    """
    padded, scale = expand_masks(mask_probs, padding=1)  # torchvision's own helpers: the same box arithmetic
    x0, y0, x1, y1 = expand_boxes(boxes, scale).to(torch.int64).unbind(dim=1)
    box_w = (x1 - x0 + 1).clamp(min=1)[:, None]
    box_h = (y1 - y0 + 1).clamp(min=1)[:, None]
    pixel_x = torch.arange(width, device=boxes.device)[None]  # [1, W]
    pixel_y = torch.arange(height, device=boxes.device)[None]
    grid_x = (pixel_x - x0[:, None] + 0.5) / box_w * 2 - 1  # [k, W]
    grid_y = (pixel_y - y0[:, None] + 0.5) / box_h * 2 - 1  # [k, H]
    num = boxes.shape[0]
    grid = torch.stack(
        [grid_x[:, None, :].expand(num, height, width), grid_y[:, :, None].expand(num, height, width)], dim=3
    ).float()
    pasted = F.grid_sample(padded, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]
    inside_x = (pixel_x >= x0[:, None]) & (pixel_x <= x1[:, None])  # [k, W]
    inside_y = (pixel_y >= y0[:, None]) & (pixel_y <= y1[:, None])  # [k, H]
    return pasted * (inside_y[:, :, None] & inside_x[:, None, :])


def crop_and_resize_masks(
    masks: Tensor,
    boxes: Tensor,
    size: int,
    mask_indices: Tensor | None = None,
    aligned: bool = False,
) -> Tensor:
    """Crop image masks to boxes and resample them to size x size: the Mask R-CNN mask-target construction.

    Args:
        masks: uint8 / bool / float [N, H, W] image masks (0/1).
        boxes: float [K, 4] xyxy in pixels of the masks.
        size: output side M.
        mask_indices: int [K], the mask each box crops (e.g. the ground truth matched to each proposal); None means
            box k crops mask k (K == N). Indexing inside roi_align avoids copying one full-image mask per box.
        aligned: pixel convention (see the module docstring); False equals torchvision's project_masks_on_boxes.

    Returns:
        float [K, M, M] with values in 0..1 (bilinear averages of the 0/1 mask).
    """
    if masks.dim() != 3:
        raise ValueError(f"crop_and_resize_masks: masks must be [N, H, W], got {tuple(masks.shape)}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"crop_and_resize_masks: boxes must be [K, 4], got {tuple(boxes.shape)}")
    num_boxes = boxes.shape[0]
    if mask_indices is None:
        if num_boxes != masks.shape[0]:
            raise ValueError(
                f"crop_and_resize_masks: {num_boxes} boxes for {masks.shape[0]} masks; pass mask_indices to share masks"
            )
        mask_indices = torch.arange(num_boxes, device=boxes.device)
    elif mask_indices.shape != (num_boxes,):
        raise ValueError(f"crop_and_resize_masks: mask_indices must be [{num_boxes}], got {tuple(mask_indices.shape)}")
    dtype = boxes.dtype if boxes.is_floating_point() else torch.float32
    if num_boxes == 0:
        return torch.zeros((0, size, size), dtype=dtype, device=boxes.device)
    # Same construction as torchvision's project_masks_on_boxes: rois = (mask index, box), spatial_scale 1,
    # adaptive sampling_ratio (-1).
    rois = torch.cat([mask_indices.to(device=boxes.device, dtype=dtype)[:, None], boxes.to(dtype)], dim=1)
    masks = masks[:, None].to(device=boxes.device, dtype=dtype)
    return roi_align(masks, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=aligned)[:, 0]

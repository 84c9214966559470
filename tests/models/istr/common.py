"""The tiny ISTR settings and the masks and codec file the tests share (the two-image batch:
tests/models/test_contract.py)."""
import torch

from models.istr.mask_codec import PCAMaskCodec, fit_pca


TINY = dict(
    backbone="resnet18", norm="bn", frozen_stages=0, fpn_channels=32, min_size=64, max_size=96, num_queries=12,
    num_stages=2, num_heads=4, dim_feedforward=64, dynamic_dim=8, codec_components=8, codec_mask_size=14,
    detections_per_img=10,
)


def box_masks(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """uint8 [count, size, size] random rectangles."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(count, size, size, dtype=torch.uint8)
    for mask in masks:
        y0, x0 = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        y1 = y0 + int(torch.randint(2, size - y0 + 1, (1,), generator=generator))
        x1 = x0 + int(torch.randint(2, size - x0 + 1, (1,), generator=generator))
        mask[y0:y1, x0:x1] = 1
    return masks


def codec_file(tmp_path, components: int = 8, size: int = 14) -> str:
    fit = fit_pca([box_masks(300, size)], size, seed=0)
    return PCAMaskCodec.from_fit(fit, components, size).save(tmp_path / f"codec-{components}-{size}.pt")

"""Float32BoxCoder: torchvision's formulas, without the per-call host-to-device copies."""
import torch
from torchvision.models.detection._utils import BoxCoder

from models.common.box_coder import Float32BoxCoder
from tests.models.sync_census import SyncCensus

WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def random_boxes(generator: torch.Generator, count: int, dtype: torch.dtype) -> torch.Tensor:
    corners = torch.rand(count, 2, generator=generator, dtype=dtype) * 500
    return torch.cat([corners, corners + 1 + torch.rand(count, 2, generator=generator, dtype=dtype) * 300], dim=1)


def test_encode_equals_torchvision_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        reference, proposals = random_boxes(generator, 200, dtype), random_boxes(generator, 200, dtype)
        for weights in (WEIGHTS, (1.0, 1.0, 1.0, 1.0)):
            ours = Float32BoxCoder(weights).encode_single(reference, proposals)
            theirs = BoxCoder(weights).encode_single(reference, proposals)
            assert ours.dtype == theirs.dtype == dtype
            assert torch.equal(ours, theirs)
    # The per-image wrapper (what torchvision's RPN and RoI heads call) goes through the same encode.
    split = Float32BoxCoder(WEIGHTS).encode([reference[:50], reference[50:]], [proposals[:50], proposals[50:]])
    assert torch.equal(torch.cat(split), BoxCoder(WEIGHTS).encode_single(reference, proposals))


def test_encode_and_decode_make_no_host_to_device_copy():
    generator = torch.Generator().manual_seed(1)
    reference, proposals = random_boxes(generator, 20, torch.float32), random_boxes(generator, 20, torch.float32)
    coder = Float32BoxCoder(WEIGHTS)
    with SyncCensus() as census:
        coder.decode_single(coder.encode_single(reference, proposals), proposals)
    assert census.counts.get("h2d", 0) == 0, census.counts
    with SyncCensus() as census:
        BoxCoder(WEIGHTS).encode_single(reference, proposals)
    assert census.counts["h2d"] == 1  # torchvision's: the census sees the copy this coder avoids

"""Host synchronisations on the per-step paths, counted on the CPU by tests/models/sync_census.py so they cannot
creep back: each one stalls the host until the GPU has drained its queue."""
import torch

from models import MODELS
from models.yolact.targets import match_anchors
from tests.models.sync_census import SyncCensus
from tests.models.test_contract import NUM_CLASSES, TINY_CONFIGS


def _targets(num_objects: int, generator: torch.Generator) -> tuple[list[torch.Tensor], list[dict]]:
    """Two 64x80 images with `num_objects` instances each, the last one a crowd region."""
    images, targets = [], []
    for index in range(2):
        corners = torch.rand(num_objects, 2, generator=generator) * 40
        boxes = torch.cat([corners, corners + 8 + torch.rand(num_objects, 2, generator=generator) * 20], 1)
        masks = torch.zeros(num_objects, 64, 80, dtype=torch.uint8)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
            mask[y0:y1, x0:x1] = 1
        crowd = torch.zeros(num_objects, dtype=torch.int64)
        crowd[-1] = 1
        images.append(torch.rand(3, 64, 80, generator=generator))
        targets.append({"boxes": boxes, "labels": torch.randint(0, NUM_CLASSES, (num_objects,), generator=generator),
                        "masks": masks, "iscrowd": crowd, "image_id": index, "orig_size": (64, 80)})
    return images, targets


def test_yolact_anchor_matching_has_no_host_sync():
    generator = torch.Generator().manual_seed(0)
    anchors = torch.rand(500, 2, generator=generator) * 100
    anchors = torch.cat([anchors, anchors + 10], 1)
    gt = torch.tensor([[10.0, 10.0, 40.0, 40.0], [50.0, 20.0, 90.0, 70.0], [0.0, 60.0, 30.0, 100.0]])
    with SyncCensus() as census:
        match_anchors(anchors, gt, torch.tensor([0, 2, 1]), torch.tensor([[60.0, 60.0, 100.0, 100.0]]))
    assert census.syncs == 0, census.counts


def test_yolact_training_loss_syncs_do_not_grow_with_the_ground_truths():
    torch.manual_seed(0)
    model = MODELS["yolact"](num_classes=NUM_CLASSES, **TINY_CONFIGS["yolact"])
    model.compute_losses(*_targets(2, torch.Generator().manual_seed(1)))  # fills the per-input-size anchor cache
    counts = {}
    for num_objects in (2, 8):
        images, targets = _targets(num_objects, torch.Generator().manual_seed(num_objects))
        with SyncCensus() as census:
            model.compute_losses(images, targets)
        counts[num_objects] = census.counts
    assert counts[2] == counts[8], counts
    # Measured for this batch of 2: the crowd split (2 per image) and the mask loss's positives (one per image,
    # models/yolact/loss.py); the class and box losses read nothing on the host. Before: 5 `.item()`-type reads and
    # 2 boolean-mask writes per ground truth; then a `bool(positive.any())` and 3 boolean-mask reads per image and 3
    # for the hard-negative selection. The box targets encode without torchvision's per-call weights copy (h2d 2 -> 1,
    # models/common/box_coder.py).
    assert counts[8].get("item", 0) == 0 and counts[8]["nonzero"] <= 6 and counts[8]["h2d"] <= 1, counts[8]


def test_the_nonfinite_check_does_not_read_the_loss_in_training_step():
    """The finiteness flag stays on the device until optimizer_step (after backward is queued) reads it once."""
    from tests.models.test_contract import tiny_batch
    from tests.models.tiny_model import TinyInstanceModel

    model = TinyInstanceModel(NUM_CLASSES)
    images, targets = tiny_batch()
    with SyncCensus() as losses_only:
        model.compute_losses(images, targets)
    with SyncCensus() as step:
        model.training_step((images, targets), 0)
    assert step.counts == losses_only.counts  # the step adds no sync of its own
    assert model._nonfinite_step() is False  # the flag was kept, and reads as finite

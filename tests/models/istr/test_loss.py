"""ISTR loss: near zero for perfect predictions, every stage counted."""
import pytest
import torch

from models.istr.head import StageOutput
from models.istr.loss import ISTRLoss
from models.istr.mask_codec import DCTMaskCodec
from models.istr.matcher import HungarianMatcher, MatchTarget
from tests.models.istr.common import box_masks


def _perfect_stage(targets: list[MatchTarget], num_queries: int, num_classes: int) -> StageOutput:
    logits = torch.full((len(targets), num_queries, num_classes), -8.0)
    boxes = torch.tensor([10.0, 10.0, 20.0, 20.0]).repeat(len(targets), num_queries, 1)
    embeddings = torch.zeros(len(targets), num_queries, targets[0].embeddings.shape[1])
    for image, target in enumerate(targets):
        for query, (label, box, embedding) in enumerate(zip(target.labels, target.boxes, target.embeddings)):
            logits[image, query, label] = 8.0
            boxes[image, query] = box
            embeddings[image, query] = embedding
    return StageOutput(logits, boxes, embeddings)


def test_loss_is_near_zero_for_perfect_predictions_and_counts_every_stage():
    codec = DCTMaskCodec(196, 14)  # exact at full size: perfect embeddings decode to the exact masks
    masks = box_masks(3, 14).float()
    targets = [
        MatchTarget(torch.tensor([0, 2]), torch.tensor([[5.0, 5.0, 30.0, 40.0], [40.0, 10.0, 60.0, 30.0]]),
                    torch.tensor([64.0, 48.0, 64.0, 48.0]), masks[:2], codec.encode(masks[:2])),
        MatchTarget(torch.tensor([1]), torch.tensor([[0.0, 0.0, 20.0, 20.0]]), torch.tensor([64.0, 48.0, 64.0, 48.0]),
                    masks[2:], codec.encode(masks[2:])),
    ]
    criterion = ISTRLoss(3, HungarianMatcher())
    perfect = _perfect_stage(targets, num_queries=4, num_classes=3)
    losses = criterion([perfect], targets, codec)
    assert set(losses) == {"loss_cls", "loss_box", "loss_giou", "loss_mask", "loss_dice"}
    for name in ("loss_box", "loss_giou", "loss_mask", "loss_dice"):
        assert float(losses[name]) < 1e-4, (name, losses)
    assert float(losses["loss_cls"]) < 1e-3
    worse = StageOutput(perfect.class_logits, perfect.boxes + 3.0, perfect.mask_embeddings + 0.5)
    two_stages = criterion([worse, perfect], targets, codec)
    assert float(two_stages["loss_box"]) > 0.1 and float(two_stages["loss_mask"]) > 0.1
    # Deep supervision adds the stages' terms; without it only the last stage (perfect) counts.
    last_only = ISTRLoss(3, HungarianMatcher(), deep_supervision=False)([worse, perfect], targets, codec)
    assert float(last_only["loss_box"]) < 1e-4
    # L1 x 5 on image-normalised boxes: 4 coordinates off by 3 px on a 64 x 48 image, 3 ground truths.
    expected_l1 = 5 * 3 * (2 * 3 / 64 + 2 * 3 / 48) / 3
    assert float(two_stages["loss_box"]) == pytest.approx(expected_l1, rel=1e-4)

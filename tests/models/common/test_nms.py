import pytest
import torch
from torchvision.ops import box_iou, nms

from models.common.nms import batched_class_nms, cross_class_fast_nms, fast_nms, fast_nms_fixed, pairwise_iou


def _random_boxes(count: int, generator: torch.Generator) -> torch.Tensor:
    # Clustered boxes so that many pairs overlap around the threshold.
    centres = torch.rand(count, 2, generator=generator) * 60
    sizes = 8 + torch.rand(count, 2, generator=generator) * 30
    return torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)


def _brute_force_fast_nms(boxes, scores, iou_threshold, top_k, max_detections):
    """The definition, one box at a time: per class, box j of the top_k survives when no higher-scoring box i
    (suppressed or not) of the top_k overlaps it by more than the threshold; then the best overall."""
    kept = []
    for c in range(scores.shape[0]):
        order = sorted(range(scores.shape[1]), key=lambda n: -float(scores[c, n]))[:top_k]
        for rank, j in enumerate(order):
            ious = [float(box_iou(boxes[i][None], boxes[j][None])) for i in order[:rank]]
            if not ious or max(ious) <= iou_threshold:
                kept.append((float(scores[c, j]), j, c))
    kept.sort(key=lambda item: -item[0])
    return kept[:max_detections]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_nms_equals_brute_force_reference(seed):
    generator = torch.Generator().manual_seed(seed)
    boxes = _random_boxes(60, generator)
    scores = torch.rand(4, 60, generator=generator)
    box_idx, classes, kept_scores = fast_nms(boxes, scores, iou_threshold=0.5, top_k=25, max_detections=40)
    expected = _brute_force_fast_nms(boxes, scores, 0.5, 25, 40)
    assert [(j, c) for _, j, c in expected] == list(zip(box_idx.tolist(), classes.tolist()))
    torch.testing.assert_close(kept_scores, torch.tensor([s for s, _, _ in expected]))
    # Fast NMS does suppress here (the test would be vacuous otherwise) and keeps at most what classic NMS keeps.
    assert len(expected) < 4 * 25
    for c in range(4):
        top = scores[c].argsort(descending=True)[:25]
        assert int((classes == c).sum()) <= nms(boxes[top], scores[c, top], 0.5).numel()


def test_fast_nms_lets_a_suppressed_box_suppress():
    # Scores a > b > c; IoU(a, b) and IoU(b, c) > 0.5 but IoU(a, c) < 0.5: classic NMS keeps a and c (b, which
    # would suppress c, is gone), Fast NMS keeps only a (b still suppresses c).
    chain = torch.tensor([[0.0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]])
    chain_iou = box_iou(chain, chain)
    assert chain_iou[0, 1] > 0.5 and chain_iou[1, 2] > 0.5 and chain_iou[0, 2] < 0.5
    scores = torch.tensor([[0.9, 0.8, 0.7]])
    box_idx, _, _ = fast_nms(chain, scores, iou_threshold=0.5)
    assert box_idx.tolist() == [0]
    assert nms(chain, scores[0], 0.5).tolist() == [0, 2]


def test_fast_nms_keeps_classes_apart_and_cross_class_does_not():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.5, 0, 10.5, 10]])
    scores = torch.tensor([[0.9, 0.0], [0.0, 0.8]])  # box 0 is class 0, box 1 class 1
    box_idx, classes, _ = fast_nms(boxes, scores, 0.5, top_k=1)
    assert sorted(zip(box_idx.tolist(), classes.tolist())) == [(0, 0), (1, 1)]
    box_idx, classes, _ = cross_class_fast_nms(boxes, scores, 0.5)
    assert box_idx.tolist() == [0] and classes.tolist() == [0]


def test_max_detections_and_empty_input():
    generator = torch.Generator().manual_seed(3)
    boxes = torch.rand(50, 2, generator=generator).repeat(1, 2) * 100 + torch.tensor([0, 0, 1, 1.0])
    scores = torch.rand(3, 50, generator=generator)
    box_idx, _, kept = fast_nms(boxes, scores, 0.5, top_k=200, max_detections=7)
    assert box_idx.numel() == 7 and bool((kept[:-1] >= kept[1:]).all())
    for function in (fast_nms, cross_class_fast_nms):
        box_idx, classes, kept = function(torch.zeros(0, 4), torch.zeros(3, 0))
        assert box_idx.numel() == classes.numel() == kept.numel() == 0


def test_batched_class_nms_is_per_class_classic_nms():
    generator = torch.Generator().manual_seed(4)
    boxes = _random_boxes(40, generator)
    scores = torch.rand(2, 40, generator=generator)
    box_idx, classes, _ = batched_class_nms(boxes, scores, 0.5, score_threshold=0.3, max_detections=1000)
    for c in range(2):
        candidates = torch.nonzero(scores[c] > 0.3).squeeze(1)
        expected = candidates[nms(boxes[candidates], scores[c, candidates], 0.5)]
        assert sorted(box_idx[classes == c].tolist()) == sorted(expected.tolist())


def test_pairwise_iou_matches_torchvision_in_batches():
    generator = torch.Generator().manual_seed(5)
    a, b = _random_boxes(12, generator).view(3, 4, 4), _random_boxes(15, generator).view(3, 5, 4)
    result = pairwise_iou(a, b)
    for i in range(3):
        torch.testing.assert_close(result[i], box_iou(a[i], b[i]))


@pytest.mark.parametrize("seed", [0, 1])
def test_fixed_fast_nms_with_candidates_equals_fast_nms_on_the_candidates_alone(seed):
    """The fixed-shape form (YOLACT's sync-free path): non-candidates neither enter a top_k nor suppress anything."""
    generator = torch.Generator().manual_seed(seed)
    boxes = _random_boxes(80, generator)
    scores = torch.rand(3, 80, generator=generator)
    valid = torch.rand(80, generator=generator) > 0.75
    box_idx, classes, kept_scores, kept = fast_nms_fixed(boxes, scores, 0.5, top_k=20, max_detections=70, valid=valid)
    assert box_idx.shape == classes.shape == kept_scores.shape == kept.shape == (60,)  # fixed by the arguments
    candidates = torch.nonzero(valid).squeeze(1)
    expected = _brute_force_fast_nms(boxes[candidates], scores[:, candidates], 0.5, 20, 70)
    count = int(kept.sum())
    assert count == len(expected) < 60 and not kept[count:].any()  # the kept ones first, then filler
    assert [(int(candidates[j]), c) for _, j, c in expected] == list(zip(box_idx[:count].tolist(),
                                                                         classes[:count].tolist()))
    torch.testing.assert_close(kept_scores[:count], torch.tensor([s for s, _, _ in expected]))

"""YOLACT inference: mask assembly, the output contract under every NMS, the fast path."""
import pytest
import torch

from models.yolact.postprocess import assemble_masks
from tests.models.yolact.common import tiny_model


def test_mask_assembly_crops_to_the_box_and_upsamples():
    # Prototype 0 is "on" everywhere, prototype 1 everywhere "off"; coefficient picks prototype 0. The 8x8
    # prototype grid of a 32 px input, box [8, 8, 24, 24] -> prototype cells 2..6 (+1 padding: 1..7) -> at 64 px,
    # bilinear edges at half a cell: rows and columns 8..55 (the corners rounded off, bilinear weights multiply).
    prototypes = torch.stack([torch.full((8, 8), 10.0), torch.zeros(8, 8)])
    masks = assemble_masks(prototypes, torch.tensor([[1.0, 0.0]]), torch.tensor([[8.0, 8.0, 24.0, 24.0]]),
                           (32, 32), (64, 64))
    assert masks.dtype == torch.bool and masks.shape == (1, 64, 64)
    outside = torch.ones(64, 64, dtype=torch.bool)
    outside[8:56, 8:56] = False
    assert not masks[0][outside].any() and masks[0, 12:52, 12:52].all()
    assert masks[0, 32].nonzero().flatten().tolist() == list(range(8, 56))
    assert masks[0, :, 32].nonzero().flatten().tolist() == list(range(8, 56))
    # a negative coefficient switches the mask off; no detections give [0, H, W]
    assert not assemble_masks(prototypes, torch.tensor([[-1.0, 0.0]]), torch.tensor([[8.0, 8, 24, 24]]),
                              (32, 32), (64, 64)).any()
    assert assemble_masks(prototypes, torch.zeros(0, 2), torch.zeros(0, 4), (32, 32), (40, 50)).shape == (0, 40, 50)


@pytest.mark.parametrize("nms", ["fast", "cross_class", "batched"])
def test_inference_contract_for_every_nms(nms):
    model = tiny_model(nms=nms, score_thresh=0.0, detections_per_img=7).eval()
    images = [torch.rand(3, 48, 80), torch.rand(3, 64, 40)]
    with torch.no_grad():
        predictions = model(images)
    for prediction, image in zip(predictions, images):
        count = prediction["scores"].shape[0]
        assert 0 < count <= 7
        assert prediction["masks"].shape == (count, *image.shape[-2:]) and prediction["masks"].dtype == torch.bool
        assert prediction["labels"].dtype == torch.int64 and int(prediction["labels"].max()) < 3
        boxes = prediction["boxes"]
        assert float(boxes[:, 2].max()) <= image.shape[-1] and float(boxes[:, 3].max()) <= image.shape[-2]
        assert bool((boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all())


def test_fast_postprocess_equals_the_candidate_path_with_one_host_read_per_image():
    """Fixed-shape post-processing (top_k over all anchors, candidates ranked first) gives the detections of the
    definition on the candidates alone (anchors whose best class score passes the threshold), and the forward plus
    post-processing reads the device once per image (the detection count), after everything is queued."""
    from torchvision.models.detection._utils import BoxCoder

    from models.yolact.loss import SSD_BOX_WEIGHTS
    from tests.models.common.test_nms import _brute_force_fast_nms
    from tests.models.sync_census import SyncCensus

    model = tiny_model(detections_per_img=30, nms_top_k=15, score_thresh=0.35).eval()
    with torch.no_grad():
        model.head.class_layer.weight.mul_(6)  # a real subset of candidates, and scores without ties
    images = [torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    with torch.no_grad():
        detections = model(images)
        outputs = model.network(model.preprocess(images), semantic=False)
        with SyncCensus() as census:
            model(images)
    assert census.counts == {"item": 2}, census.counts
    for index, (image, found) in enumerate(zip(images, detections)):
        scores = outputs.class_logits[index].softmax(dim=1)[:, 1:]
        candidates = torch.nonzero(scores.max(dim=1).values > model.postprocess.score_thresh).squeeze(1)
        assert 0 < len(candidates) < len(scores)
        boxes = BoxCoder(SSD_BOX_WEIGHTS).decode_single(outputs.box_deltas[index, candidates], outputs.anchors[candidates])
        expected = _brute_force_fast_nms(boxes, scores[candidates].t(), 0.5, 15, 30)
        assert found["labels"].tolist() == [c for _, _, c in expected]
        torch.testing.assert_close(found["scores"], torch.tensor([s for s, _, _ in expected]))
        height, width = image.shape[-2:]
        scale = torch.tensor([width / 64, height / 64] * 2)
        expected_boxes = (boxes[[j for _, j, _ in expected]] * scale)
        expected_boxes[:, 0::2] = expected_boxes[:, 0::2].clamp(0, width)
        expected_boxes[:, 1::2] = expected_boxes[:, 1::2].clamp(0, height)
        torch.testing.assert_close(found["boxes"], expected_boxes)

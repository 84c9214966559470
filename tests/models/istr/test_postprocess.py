"""ISTR inference: the best query-class pairs, the stage average, boxes without area dropped."""
import torch

from models.istr.head import StageOutput
from models.istr.mask_codec import DCTMaskCodec
from models.istr.postprocess import ISTRPostProcess


def test_inference_takes_the_best_query_class_pairs():
    codec = DCTMaskCodec(4, 8)
    logits = torch.full((1, 3, 2), -5.0)
    logits[0, 1, 0], logits[0, 2, 1], logits[0, 0, 1] = 3.0, 2.0, 1.0
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [10.0, 10.0, 30.0, 20.0], [0.0, 0.0, 40.0, 30.0]]])
    embeddings = torch.zeros(1, 3, 4)
    embeddings[0, :, 0] = 8.0  # DC term 8 / 8 = 1: a full box mask
    stage = StageOutput(logits, boxes, embeddings)
    post = ISTRPostProcess(detections_per_img=3)
    result = post([stage], codec, [(30, 40)], [(60, 80)])[0]
    assert result["labels"].tolist() == [0, 1, 1]
    torch.testing.assert_close(result["scores"], torch.sigmoid(torch.tensor([3.0, 2.0, 1.0])))
    # Boxes scaled from the 40 x 30 resized input to the 80 x 60 image.
    torch.testing.assert_close(result["boxes"][0], torch.tensor([20.0, 20.0, 60.0, 40.0]))
    assert result["masks"].shape == (3, 60, 80)
    # A full box mask fills its box (bilinear pasting may clip the 4 corner pixels) and nothing outside it.
    inside = torch.zeros(60, 80, dtype=torch.bool)
    inside[20:40, 20:60] = True
    assert not bool(result["masks"][0][~inside].any()) and int(result["masks"][0].sum()) >= 40 * 20 - 4


def test_stage_average_is_v2s_rule_logits_of_the_third_stage_on_boxes_and_masks_of_the_last():
    codec = DCTMaskCodec(4, 8)
    torch.manual_seed(0)
    stages = [
        StageOutput(torch.randn(1, 3, 2) * 3, torch.tensor([[[0.0, 0.0, 10.0, 10.0]] * 3]) + 5 * i,
                    torch.full((1, 3, 4), 8.0 * i))
        for i in range(4)
    ]
    post = ISTRPostProcess(detections_per_img=6, stage_average=True)
    result = post(stages, codec, [(30, 40)], [(30, 40)])[0]
    # Stages 3 and 4 of 4 (0-based 2, 3): the mean of their logits, then the sigmoid.
    expected = torch.sigmoid((stages[2].class_logits + stages[3].class_logits) / 2)[0]
    torch.testing.assert_close(result["scores"], expected.flatten().sort(descending=True).values)
    torch.testing.assert_close(result["boxes"], stages[3].boxes[0, :1].expand(6, 4))  # last stage's boxes
    assert bool(result["masks"].any())  # last stage's embeddings (DC 24 / 8): the first stage's (0) paste nothing
    # Fewer than three stages: the last stage alone, as V1.
    two = post(stages[2:], codec, [(30, 40)], [(30, 40)])[0]
    last_only = ISTRPostProcess(detections_per_img=6)(stages[2:], codec, [(30, 40)], [(30, 40)])[0]
    torch.testing.assert_close(two["scores"], last_only["scores"])
    torch.testing.assert_close(post(stages[3:], codec, [(30, 40)], [(30, 40)])[0]["scores"],
                               torch.sigmoid(stages[3].class_logits[0]).flatten().sort(descending=True).values)


def test_boxes_without_area_after_clipping_are_dropped():
    codec = DCTMaskCodec(4, 8)
    logits = torch.tensor([[[4.0], [3.0], [2.0]]])  # 3 queries, 1 class
    boxes = torch.tensor([[[5.0, 5.0, 20.0, 20.0], [45.0, 5.0, 60.0, 20.0], [-9.0, 10.0, -1.0, 20.0]]])
    stage = StageOutput(logits, boxes, torch.zeros(1, 3, 4))
    result = ISTRPostProcess(detections_per_img=3)([stage], codec, [(30, 40)], [(30, 40)])[0]
    # Queries 2 and 3 lie right / left of the 40 px wide image: clipped to zero width, dropped (detectron2's nonempty).
    torch.testing.assert_close(result["boxes"], torch.tensor([[5.0, 5.0, 20.0, 20.0]]))
    torch.testing.assert_close(result["scores"], torch.sigmoid(torch.tensor([4.0])))
    assert result["labels"].tolist() == [0] and result["masks"].shape == (1, 30, 40)

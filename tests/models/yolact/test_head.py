"""YOLACT prediction head: channel layout and the network's output shapes and ranges."""
import torch

from models.yolact.head import PredictionHead
from tests.models.yolact.common import tiny_model


def test_head_channel_layout_is_anchor_major():
    # Zero weights, bias of channel a*(C+1)+c = 100a + c: anchor a of every cell must read 100a + c for class c.
    head = PredictionHead(in_channels=4, num_classes=2, num_anchors=3, num_prototypes=2, channels=4)
    with torch.no_grad():
        for layer in (head.box_layer, head.class_layer, head.coefficient_layer):
            layer.weight.zero_()
        head.class_layer.bias.copy_(torch.tensor([100.0 * a + c for a in range(3) for c in range(3)]))
        head.box_layer.bias.copy_(torch.arange(12.0))
    boxes, classes, coefficients = head([torch.rand(1, 4, 2, 3), torch.rand(1, 4, 1, 1)])
    assert classes.shape == (1, (6 + 1) * 3, 3) and boxes.shape == (1, 21, 4) and coefficients.shape == (1, 21, 2)
    expected = torch.tensor([[100.0 * a + c for c in range(3)] for a in range(3)]).repeat(7, 1)
    torch.testing.assert_close(classes[0], expected)
    torch.testing.assert_close(boxes[0, 4], torch.arange(4.0, 8.0))  # cell 1, anchor 1


def test_network_output_shapes_and_ranges():
    model = tiny_model().eval()
    with torch.no_grad():
        outputs = model.network(model.preprocess([torch.rand(3, 50, 70), torch.rand(3, 64, 64)]), semantic=True)
    # 64 px: P3..P7 = 8, 4, 2, 1, 1 cells a side; prototypes at twice P3.
    num_anchors = (64 + 16 + 4 + 1 + 1) * 3
    assert outputs.box_deltas.shape == (2, num_anchors, 4)
    assert outputs.class_logits.shape == (2, num_anchors, 4)
    assert outputs.coefficients.shape == (2, num_anchors, 4)
    assert float(outputs.coefficients.abs().max()) <= 1
    assert outputs.prototypes.shape == (2, 4, 16, 16) and float(outputs.prototypes.min()) >= 0
    assert outputs.semantic_logits.shape == (2, 3, 8, 8)
    assert outputs.anchors.shape == (num_anchors, 4)

"""FCOS head, SAG-Mask head and MaskIoU head: shapes, initialisation, switches."""
import pytest
import torch

from models.centermask.fcos_head import FCOSHead
from models.centermask.maskiou_head import MaskIoUHead
from models.centermask.sag_mask_head import SAGMaskHead


def test_fcos_head_shapes_and_scales():
    head = FCOSHead(32, 5, num_levels=2, num_convs=2)
    features = [torch.randn(2, 32, 8, 8), torch.randn(2, 32, 4, 4)]
    cls, reg, ctr = head(features)
    assert [c.shape for c in cls] == [(2, 5, 8, 8), (2, 5, 4, 4)]
    assert reg[0].shape == (2, 4, 8, 8) and ctr[1].shape == (2, 1, 4, 4) and float(reg[0].detach().min()) >= 0
    torch.testing.assert_close(torch.sigmoid(cls[0]).mean(), torch.tensor(0.01), atol=2e-3, rtol=0)
    with torch.no_grad():
        head.scales[1].scale.fill_(2.0)
    _, reg2, _ = head(features)
    torch.testing.assert_close(reg2[1], reg[1] * 2)
    torch.testing.assert_close(reg2[0], reg[0])


def test_fcos_head_names_a_one_by_one_level_it_cannot_normalise():
    head = FCOSHead(32, 5, num_levels=2, num_convs=1, norm_groups=32)  # one channel per GroupNorm group
    features = [torch.randn(1, 32, 2, 2), torch.randn(1, 32, 1, 1)]
    for mode in (True, False):  # torch's GroupNorm refuses in inference too
        with pytest.raises(ValueError, match="level 1 is 1x1"):
            head.train(mode)(features)
    head([torch.cat([f, f]) for f in features])  # a batch of two gives each group two values: fine
    FCOSHead(32, 5, num_levels=2, num_convs=1, norm_groups=8)(features)  # four values per group: fine


def test_sag_mask_head_shapes_and_attention_range():
    head = SAGMaskHead(16, num_classes=4, num_convs=2, channels=8)
    x = torch.randn(3, 16, 14, 14)
    assert head(x).shape == (3, 4, 28, 28)
    weights = head.attention.weights(head.convs(x))
    assert weights.shape == (3, 1, 14, 14) and float(weights.min()) > 0 and float(weights.max()) < 1
    assert head(torch.zeros(0, 16, 14, 14)).shape == (0, 4, 28, 28)


def test_turning_attention_off_changes_nothing_else():
    torch.manual_seed(0)
    with_attention = SAGMaskHead(16, num_classes=4, num_convs=2, channels=8, attention=True)
    without = SAGMaskHead(16, num_classes=4, num_convs=2, channels=8, attention=False)
    on_keys, off_keys = set(with_attention.state_dict()), set(without.state_dict())
    assert on_keys - off_keys == {"attention.conv.weight"} and off_keys <= on_keys
    without.load_state_dict({k: v for k, v in with_attention.state_dict().items() if k in off_keys})
    x = torch.randn(2, 16, 14, 14)
    with_attention.attention = torch.nn.Identity()  # attention removed: the rest must compute the same thing
    torch.testing.assert_close(without(x), with_attention(x))


def test_maskiou_head_shapes():
    head = MaskIoUHead(16, num_classes=3, num_convs=2, channels=8, resolution=14, fc_dim=32)
    out = head(torch.randn(5, 16, 14, 14), torch.rand(5, 1, 28, 28))
    assert out.shape == (5, 3)
    assert head(torch.zeros(0, 16, 14, 14), torch.zeros(0, 1, 28, 28)).shape == (0, 3)

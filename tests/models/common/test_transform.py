"""models.common.transform: multi-scale training sizes, the test size, uint8 input, the backbone's statistics."""
import pytest
import torch

from models.common.transform import ResizeNormalizeTransform, backbone_pixel_stats, input_scale

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _short_sides(transform, n=60, size=(48, 64)):
    sides = []
    for _ in range(n):
        batch, _ = transform([torch.rand(3, *size)])
        sides.append(min(batch.image_sizes[0]))
    return sides


def test_train_mode_draws_every_configured_size_and_nothing_else():
    torch.manual_seed(0)
    sizes = [64, 80, 96, 112]
    transform = ResizeNormalizeTransform(sizes, 1000, MEAN, STD).train()
    drawn = _short_sides(transform)
    assert set(drawn) == set(sizes)


def test_eval_mode_uses_the_test_size_the_last_listed():
    transform = ResizeNormalizeTransform([64, 80, 96, 112], 1000, MEAN, STD).eval()
    assert set(_short_sides(transform, n=10)) == {112}
    assert transform.test_size == 112 and transform.train_sizes == (64, 80, 96, 112)


def test_single_size_does_not_consume_the_global_rng():
    transform = ResizeNormalizeTransform(96, 1000, MEAN, STD).train()
    torch.manual_seed(3)
    expected = torch.rand(1)
    torch.manual_seed(3)
    transform([torch.rand(3, 40, 50)])
    torch.manual_seed(3)
    transform.torch_choice(transform.min_size)
    assert torch.equal(torch.rand(1), expected)


def test_max_size_caps_the_long_side():
    transform = ResizeNormalizeTransform([100], 150, MEAN, STD).eval()
    batch, _ = transform([torch.rand(3, 50, 200)])
    assert batch.image_sizes[0][1] == 150 and batch.image_sizes[0][0] < 100


def test_uint8_and_float_images_normalise_the_same():
    transform = ResizeNormalizeTransform(64, 64, MEAN, STD).eval()
    image = torch.randint(0, 256, (3, 40, 64), dtype=torch.uint8)
    from_uint8, _ = transform([image])
    from_float, _ = transform([image.float() / 255])
    torch.testing.assert_close(from_uint8.tensors, from_float.tensors, atol=1e-5, rtol=0)
    # and it is really normalised: a mid-grey pixel of value mean*255 maps to ~0
    grey = (torch.tensor(MEAN) * 255).round().to(torch.uint8)[:, None, None].expand(3, 64, 64).contiguous()
    out, _ = transform([grey])
    assert out.tensors.abs().max() < 0.02


def test_input_scale_rejects_mixed_and_integer_batches():
    assert input_scale([torch.zeros(3, 2, 2, dtype=torch.uint8)]) == 255.0
    assert input_scale([torch.zeros(3, 2, 2)]) == 1.0
    with pytest.raises(TypeError, match="share a dtype"):
        input_scale([torch.zeros(3, 2, 2), torch.zeros(3, 2, 2, dtype=torch.uint8)])
    with pytest.raises(TypeError, match="uint8"):
        input_scale([torch.zeros(3, 2, 2, dtype=torch.int32)])


@pytest.mark.parametrize("bad", [0, [], [64, 0], "800", [64.0]])
def test_bad_min_size_is_refused(bad):
    with pytest.raises(ValueError, match="min_size"):
        ResizeNormalizeTransform(bad, 1333, MEAN, STD)


def test_pixel_stats_follow_the_backbone_weights():
    assert backbone_pixel_stats("tf_efficientnet_lite0") == ([0.5] * 3, [0.5] * 3)
    assert backbone_pixel_stats("resnet50.tv_in1k") == (MEAN, STD)
    # a name timm does not register (the official-structure VoVNet-19) falls back to ImageNet's
    assert backbone_pixel_stats("ese_vovnet19b") == (MEAN, STD)
    # explicit values win
    assert backbone_pixel_stats("tf_efficientnet_lite0", [0.1, 0.2, 0.3], [1, 1, 1]) == ([0.1, 0.2, 0.3], [1.0] * 3)


def test_pixel_stats_refuse_half_given_or_0_255_values():
    with pytest.raises(ValueError, match="both pixel_mean and pixel_std"):
        backbone_pixel_stats("resnet50", [0.1, 0.2, 0.3], None)
    with pytest.raises(ValueError, match="0..255"):
        backbone_pixel_stats("resnet50", [123.675, 116.28, 103.53], [58.395, 57.12, 57.375])


def test_every_model_takes_its_backbone_weights_statistics():
    from models.centermask import CenterMask
    from models.istr import ISTR
    from models.mask_rcnn import MaskRCNN
    from models.yolact import YOLACT

    common = dict(num_classes=2, backbone="tf_efficientnet_lite0", norm="bn", frozen_stages=0)
    builds = [
        (MaskRCNN, dict(out_indices=[1, 2, 3, 4], fpn_channels=16, min_size=64, max_size=64,
                        mask_head_channels=8, box_head_width=16)),
        (CenterMask, dict(out_indices=[2, 3, 4], ese_every_block=False, fpn_channels=16, min_size=64, max_size=64,
                          fcos_num_convs=1, fcos_norm_groups=4, mask_head_convs=1, mask_head_channels=8,
                          maskiou_convs=1, maskiou_channels=8)),
        (ISTR, dict(out_indices=[1, 2, 3, 4], fpn_channels=16, num_heads=2, min_size=64, max_size=64,
                    num_queries=4, num_stages=1, dim_feedforward=16, dynamic_dim=4, codec="dct",
                    codec_components=8, codec_mask_size=8)),
    ]
    for cls, kwargs in builds:
        model = cls(**common, **kwargs)
        assert model.transform.image_mean == [0.5] * 3 and model.transform.image_std == [0.5] * 3, cls.__name__
    yolact = YOLACT(**common, out_indices=[2, 3, 4], input_size=64, fpn_channels=16, proto_channels=8,
                    head_channels=8, num_prototypes=4)
    assert yolact.pixel_mean.flatten().tolist() == [0.5] * 3

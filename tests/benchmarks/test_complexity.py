"""Parameter and FLOP counts against hand counts."""
import pytest
import torch
from torch import nn

from benchmarks.complexity import complexity


class OneConv(nn.Module):
    """The model contract's input (a list of [3,H,W] images) through one convolution."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, images):
        return [{"features": self.conv(image[None])} for image in images]


def conv_flops(conv: nn.Conv2d, height: int, width: int) -> int:
    """2 FLOPs per multiply-add: every output element of every output channel sums Cin/groups * kh * kw products."""
    out_h = (height + 2 * conv.padding[0] - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1) // conv.stride[0] + 1
    out_w = (width + 2 * conv.padding[1] - conv.dilation[1] * (conv.kernel_size[1] - 1) - 1) // conv.stride[1] + 1
    macs_per_output = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
    return 2 * conv.out_channels * out_h * out_w * macs_per_output


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Conv2d(3, 16, 5, stride=2, padding=1, bias=False),
        nn.Conv2d(3, 6, (3, 1), groups=3, dilation=2),
    ],
)
def test_single_conv_flops_equal_the_hand_count(conv):
    image = torch.rand(3, 31, 40)
    record = complexity(OneConv(conv), [image])
    assert record["gflops"] * 1e9 == pytest.approx(conv_flops(conv, 31, 40), rel=1e-12)
    assert record["gmacs"] == pytest.approx(record["gflops"] / 2)
    assert record["gflops_std"] == 0.0 and record["flops_images"] == 1
    expected_params = conv.out_channels * (conv.in_channels // conv.groups) * conv.kernel_size[0] * conv.kernel_size[1]
    assert record["params"] == expected_params + (conv.out_channels if conv.bias is not None else 0)


def test_flops_are_averaged_over_the_images():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    sizes = [(16, 16), (32, 16), (32, 32)]
    record = complexity(OneConv(conv), [torch.rand(3, h, w) for h, w in sizes])
    counts = torch.tensor([conv_flops(conv, h, w) for h, w in sizes], dtype=torch.float64)
    assert record["gflops"] * 1e9 == pytest.approx(float(counts.mean()))
    assert record["gflops_std"] * 1e9 == pytest.approx(float(counts.std(unbiased=False)))
    assert record["flops_images"] == 3


def test_no_images_gives_params_only_and_the_mode_is_restored():
    model = OneConv(nn.Conv2d(3, 4, 1)).train()
    record = complexity(model, [])
    assert record["params"] == 16 and record["gflops"] is None
    complexity(model, [torch.rand(3, 8, 8)])
    assert model.training

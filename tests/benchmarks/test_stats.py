"""benchmarks.stats: the interval math against values worked by hand, and the speed record / comparison fields."""
import json
import math

import pytest
import torch

from benchmarks import speed
from benchmarks.stats import (
    fps_intervals,
    half_width,
    mean_interval,
    median_interval,
    median_interval_coverage,
    paired_ratio,
)

T_975 = {1: 12.706205, 3: 3.182446, 9: 2.262157, 19: 2.093024}  # Student t quantiles (tables)


def test_median_interval_is_the_textbook_order_statistics():
    # n = 20: P(B(20, 1/2) <= 5) = 21700 / 2^20 = 0.0207 <= 0.025 < P(<= 6) -> [x_(6), x_(15)].
    assert median_interval(list(range(1, 21))) == (6.0, 15.0)
    assert median_interval_coverage(20) == pytest.approx(1 - 2 * 21700 / 2 ** 20)
    # n = 100: the table value [x_(40), x_(61)].
    assert median_interval([float(v) for v in reversed(range(1, 101))]) == (40.0, 61.0)  # order does not matter
    # n = 6: [min, max] covers 1 - 2/64 = 96.9 %; n = 5: 1 - 2/32 = 93.75 % < 95 %, so no interval.
    assert median_interval([3, 1, 2, 6, 5, 4]) == (1.0, 6.0)
    assert median_interval([1, 2, 3, 4, 5]) is None and median_interval_coverage(5) is None


def test_mean_interval_by_batch_means():
    # 1..20 in 10 blocks: block means 1.5, 3.5, ..., 19.5, std 2 * std(1..10) = 6.0553, / sqrt(10) = 1.91485,
    # times t(0.975, 9) = 2.26216 -> half-width 4.33171 around 10.5.
    mean, low, high = mean_interval(list(range(1, 21)))
    half = T_975[9] * 2 * math.sqrt(sum((v - 5.5) ** 2 for v in range(1, 11)) / 9) / math.sqrt(10)
    assert half == pytest.approx(4.33171, abs=1e-5)
    assert (mean, low, high) == pytest.approx((10.5, 10.5 - half, 10.5 + half))
    # The same values one block each: the plain t interval, narrower (drift inside a block is not hidden).
    _, low, high = mean_interval(list(range(1, 21)), blocks=20)
    assert (high - low) / 2 == pytest.approx(T_975[19] * math.sqrt(35) / math.sqrt(20))  # var(1..20) = 35
    # Fewer values than blocks: each its own block. [1, 2, 3, 4]: s = 1.29099, / 2, times t(0.975, 3) = 2.05426.
    assert mean_interval([1, 2, 3, 4]) == pytest.approx((2.5, 2.5 - 2.05426, 2.5 + 2.05426), abs=1e-5)
    # Noise that alternates inside each block cancels in the block means: zero width, where single rounds
    # would give +-0.47.
    assert mean_interval([1, 3] * 10) == pytest.approx((2.0, 2.0, 2.0))
    assert mean_interval([5.0]) is None


def test_fps_intervals_map_latency_intervals_through_items_per_second():
    seconds = [float(v) for v in range(1, 21)]  # in measurement order
    out = fps_intervals(seconds, items_per_call=2)
    assert out["fps_mean"] == pytest.approx(2 / 10.5)
    assert out["fps_mean_ci95"] == pytest.approx([2 / (10.5 + 4.33171), 2 / (10.5 - 4.33171)], abs=1e-6)
    assert out["fps_median_ci95"] == pytest.approx([2 / 15, 2 / 6])  # slow end of the latency = low end of the FPS
    too_few = fps_intervals([0.1, 0.11, 0.1, 0.11, 0.1])  # 5 rounds: no median interval
    assert too_few["fps_median_ci95"] is None and too_few["fps_mean_ci95"] is not None
    # Rounds so spread that the mean's latency interval reaches 0 s: no finite FPS interval for the mean.
    # [0.01, 1.0]: mean 0.505, half-width 12.706 * 0.495 = 6.29 > 0.505.
    wild = fps_intervals([0.01, 1.0])
    assert wild["fps_mean_ci95"] is None and wild["fps_mean"] == pytest.approx(1 / 0.505)
    with pytest.raises(ValueError, match="finite"):
        fps_intervals([0.1, float("nan")])
    with pytest.raises(ValueError, match="> 0 s"):
        fps_intervals([0.1, 0.0])


def test_paired_ratio_median_and_interval():
    reference = [2.0] * 20
    out = paired_ratio(reference, [float(v) for v in range(1, 21)])
    # ratios 2/i; sorted ascending 2/20 ... 2/1: median (2/11 + 2/10) / 2, interval the 6th and 15th: 2/15, 2/6.
    assert out["ratio"] == pytest.approx((2 / 11 + 2 / 10) / 2)
    assert out["ci95"] == pytest.approx([2 / 15, 2 / 6])
    # Load that hits both models alike in a round cancels: a model always twice as fast is 2.0 exactly.
    drift = [0.01 * (1 + (i % 7)) for i in range(30)]
    assert paired_ratio(drift, [s / 2 for s in drift]) == {"ratio": pytest.approx(2.0), "ci95": pytest.approx([2, 2])}
    with pytest.raises(ValueError, match="same number of rounds"):
        paired_ratio([1.0, 2.0], [1.0])


def test_half_width_covers_an_asymmetric_interval():
    assert half_width(10.0, [8.0, 13.0]) == 3.0
    assert half_width(10.0, None) is None


class _Tiny(torch.nn.Module):
    """A model without a SPEED_SPLIT (end-to-end timing only), taking a list of images like the real ones."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, images):
        return [{"scores": self.conv(image[None]).mean().reshape(1)} for image in images]


def test_speed_records_and_comparisons_carry_the_intervals():
    images = [torch.rand(3, 16, 16) for _ in range(2)]
    result = speed.compare([("a", _Tiny(), images), ("b", _Tiny(), images)], warmup=1, iters=8, flops_images=0)
    for record in result["runs"]:
        # The headline (mean) FPS lies in its own interval; on a busy machine a few wild rounds can leave it
        # without one (its latency interval reaching 0 s), which fps_intervals' own test covers.
        if record["fps_ci95"] is not None:
            low, high = record["fps_ci95"]
            assert low <= record["fps"] <= high
        assert record["fps"] == pytest.approx(1e3 / record["latency_ms"]["mean"])
        low, high = record["fps_median_ci95"]
        assert low <= record["fps_median"] <= high
    first, second = result["ratios"]
    assert first["fps_paired"] == 1.0 and first["fps_ci95"] == [1.0, 1.0]
    assert second["fps_ci95"][0] <= second["fps_paired"] <= second["fps_ci95"][1]
    json.dumps(result, allow_nan=False)  # strict JSON, as the record store writes it

"""How sure a speed figure is: 95 % intervals from the timed rounds of one run, and of a ratio measured in one
alternating run.

    fps_intervals(seconds, items_per_call=1)          -> {fps_mean, fps_mean_ci95, fps_median_ci95}
    paired_ratio(reference_seconds, seconds)          -> {ratio, ci95}

Two intervals, for the two FPS figures a speed record carries:
  * the median FPS is items / MEDIAN latency (the median resists a shared machine's load spikes). Its interval
    is the distribution-free one for a median: the order statistics x_(k) and x_(n+1-k) of the n per-round
    latencies, k the largest with P(Binomial(n, 1/2) <= k-1) <= 2.5 % ([x_(40), x_(61)] for n = 100,
    [x_(6), x_(15)] for n = 20). Chosen over a normal approximation because round latencies are skewed with
    spikes, and over a bootstrap because it is exact for independent rounds, needs no random draws, and a
    bootstrap of a median over 20-100 values is coarse anyway (it can only land on order statistics too).
    At least 6 rounds are needed at 95 % (with 5 even [min, max] covers only 94 %); fewer give None.
  * the headline FPS is items / MEAN latency (images per second over all timed calls, as the official figures). Its interval comes from the
    spread between rounds by batch means: the rounds are cut into MEAN_BLOCKS consecutive blocks and a Student t
    interval is taken over the block means. Consecutive rounds share the machine's load of that moment, so they
    are positively correlated and the plain s / sqrt(n) of single rounds would understate the error (and so would
    a bootstrap that resamples single rounds); means of consecutive blocks are close to independent and to
    normal. With no more rounds than blocks, each round is its own block (the plain t interval).
FPS is a decreasing function of latency, so each latency interval maps to the FPS interval exactly.

What these intervals do NOT see: the drift of machine load between runs made at different times (only the seeds'
spread of a setting, or an alternating comparison, measure that). A ratio measured in one alternating run
(benchmarks.speed.compare) cancels it: round i times every model back to back, so the per-round ratios
reference_i / seconds_i are paired, and their median gets the same order-statistic interval.

scipy gives the Student t and binomial quantiles; the rest is a few lines of numpy (no library computes these
particular intervals from raw rounds).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
# Consecutive blocks of rounds for the batch-means interval of the mean: 10 keeps the t quantile small (2.26 at
# 9 degrees of freedom) while each block of a 100-round run still spans 10 rounds of drift.
MEAN_BLOCKS = 10


def _values(values: Sequence[float], what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or not np.all(np.isfinite(array)):
        raise ValueError(f"{what}: expected a flat sequence of finite numbers, got {values!r}")
    return array


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Distribution-free `confidence` interval for the median of independent values: (x_(k), x_(n+1-k)) of the
    sorted values, k the largest with P(Binomial(n, 1/2) <= k-1) <= (1 - confidence) / 2; None when even
    (min, max) covers less (n < 6 at 95 %)."""
    x = np.sort(_values(values, "median_interval"))
    tail = (1 - confidence) / 2
    k = int(np.sum(stats.binom.cdf(np.arange(len(x)), len(x), 0.5) <= tail))
    if k == 0:
        return None
    return float(x[k - 1]), float(x[len(x) - k])


def median_interval_coverage(n: int, confidence: float = CONFIDENCE) -> float | None:
    """The exact coverage of `median_interval` for n independent values (>= confidence; None where it has none)."""
    tail = (1 - confidence) / 2
    k = int(np.sum(stats.binom.cdf(np.arange(n), n, 0.5) <= tail))
    return None if k == 0 else float(1 - 2 * stats.binom.cdf(k - 1, n, 0.5))


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE,
                  blocks: int = MEAN_BLOCKS) -> tuple[float, float, float] | None:
    """(mean, low, high): the mean of the values and its `confidence` interval by batch means. The values, in
    the order they were measured, are cut into `blocks` consecutive blocks (sizes differing by at most one;
    each value its own block when there are no more values than blocks); the half-width is
    t_{(1+confidence)/2, b-1} * std(block means, ddof=1) / sqrt(b). None with fewer than 2 values."""
    x = _values(values, "mean_interval")
    b = min(blocks, len(x))
    if b < 2:
        return None
    means = np.array([block.mean() for block in np.array_split(x, b)])
    half = stats.t.ppf((1 + confidence) / 2, b - 1) * means.std(ddof=1) / np.sqrt(b)
    mean = float(x.mean())
    return mean, float(mean - half), float(mean + half)


def fps_intervals(seconds: Sequence[float], items_per_call: int = 1,
                  confidence: float = CONFIDENCE) -> dict[str, float | list[float] | None]:
    """From per-round latencies (seconds, in measurement order): fps_mean = items / mean latency, fps_mean_ci95
    its interval (batch means), fps_median_ci95 the interval of items / median latency (order statistics); intervals as [low, high] FPS, None where too few rounds (or, for the mean, where the rounds
    spread so much that the latency interval reaches 0 s and the FPS interval has no upper end)."""
    x = _values(seconds, "fps_intervals")
    if np.any(x <= 0):
        raise ValueError(f"fps_intervals: latencies must be > 0 s, got {x.min()}")
    mean = mean_interval(x, confidence)
    median = median_interval(x, confidence)
    if mean is not None and mean[1] <= 0:
        mean = None
    return {
        "fps_mean": items_per_call / float(x.mean()),
        # The slow end of the latency interval is the low end of the FPS interval.
        "fps_mean_ci95": None if mean is None else [items_per_call / mean[2], items_per_call / mean[1]],
        "fps_median_ci95": None if median is None else [items_per_call / median[1], items_per_call / median[0]],
    }


def paired_ratio(reference_seconds: Sequence[float], seconds: Sequence[float],
                 confidence: float = CONFIDENCE) -> dict[str, float | list[float] | None]:
    """Speed of a model relative to a reference timed in the same rounds (round i of both back to back):
    ratio = median over rounds of reference_i / seconds_i (> 1: faster than the reference), ci95 its
    order-statistic interval (None with fewer than 6 rounds)."""
    reference = _values(reference_seconds, "paired_ratio reference")
    mine = _values(seconds, "paired_ratio")
    if len(reference) != len(mine) or len(mine) == 0:
        raise ValueError(f"paired_ratio: needs the same number of rounds on both sides, got {len(reference)} "
                         f"and {len(mine)}")
    ratios = reference / mine
    interval = median_interval(ratios, confidence)
    return {"ratio": float(np.median(ratios)), "ci95": None if interval is None else list(interval)}


def half_width(centre: float, interval: Sequence[float] | None) -> float | None:
    """The larger distance from `centre` to an end of `interval` (so centre ± it covers the whole interval,
    which need not be symmetric about the centre); None without an interval."""
    if interval is None:
        return None
    low, high = interval
    return max(centre - low, high - centre, 0.0)

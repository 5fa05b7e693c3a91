"""The latency histogram's quantiles are close to the exact ones, in bounded memory."""

from __future__ import annotations

import math
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.client.stats import ClientStats, LatencyHistogram


@settings(max_examples=200, deadline=None)
@given(
    samples=st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=400),
    q=st.sampled_from([0.5, 0.9, 0.99]),
)
def test_quantiles_are_within_the_bucket_resolution(samples: list[int], q: float) -> None:
    hist = LatencyHistogram()
    for value in samples:
        hist.record(value)
    ordered = sorted(samples)
    exact = ordered[max(1, round(q * len(ordered))) - 1]
    estimate = hist.quantile(q)
    # 8 buckets per power of two: a bucket spans at most 1/8 of its lower bound
    assert abs(estimate - exact) <= max(1, math.ceil(exact / 8)), (exact, estimate)
    assert hist.count == len(samples)
    assert hist.maximum == max(samples)


def test_memory_stays_fixed_and_quantiles_close_over_seven_decades() -> None:
    hist = LatencyHistogram()
    size = sys.getsizeof(hist.counts)
    samples = sorted(int(1.0023**i) for i in range(7000))  # 1 µs .. ~9.7 s
    for value in samples:
        hist.record(value)
    assert sys.getsizeof(hist.counts) == size  # no per-sample memory
    for q in (0.5, 0.9, 0.99):
        exact = samples[round(q * len(samples)) - 1]
        assert abs(hist.quantile(q) - exact) <= 0.0625 * exact + 1, (q, exact)
    mean = sum(samples) / len(samples)
    assert abs(hist.mean() - mean) <= 0.0625 * mean


def test_empty_and_negative() -> None:
    hist = LatencyHistogram()
    assert hist.summary() == {"count": 0, "p50": 0, "p90": 0, "p99": 0, "max": 0}
    hist.record(-5)
    assert hist.summary()["count"] == 1
    assert hist.quantile(0.5) == 0


def test_snapshot_ratios() -> None:
    stats = ClientStats(hits=3, misses=1, bytes_written=50, raw_bytes_written=200)
    stats.latency["get"].record(100)
    snap = stats.snapshot()
    assert snap["hit_ratio"] == 0.75
    assert snap["compression_ratio"] == 0.25
    assert list(snap["latency_us"]) == ["get"]
    assert ClientStats().snapshot()["hit_ratio"] is None

"""The one latency histogram: close quantiles in bounded memory, exact merges, safe to read back."""

from __future__ import annotations

import math
import re
import sys
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.histogram import LatencyHistogram


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


@settings(max_examples=100, deadline=None)
@given(
    parts=st.lists(
        st.lists(st.integers(min_value=0, max_value=10**10), max_size=50), min_size=1, max_size=6
    )
)
def test_merging_is_the_same_as_recording_everything_in_one(parts: list[list[int]]) -> None:
    whole, merged = LatencyHistogram(), LatencyHistogram()
    for part in parts:
        hist = LatencyHistogram()
        for value in part:
            hist.record(value)
            whole.record(value)
        # across a topic and back, as stats deltas travel between workers
        merged.merge(LatencyHistogram.from_dict(orjson.loads(orjson.dumps(hist.to_dict()))))
    assert merged.counts == whole.counts
    assert merged.summary() == whole.summary()


def test_float_samples_round_and_clamp() -> None:
    hist = LatencyHistogram()
    hist.add(2.6)
    hist.add(-3.0, n=2)
    hist.add(float("inf"))
    assert hist.count == 4
    assert hist.quantile(0.25) == 0
    assert hist.quantile(0.75) == 3
    assert hist.maximum == 2**63 - 1


def test_the_older_form_is_read_at_its_bucket_midpoints() -> None:
    # Buckets [1.05**i, 1.05**(i+1)): 140 -> ~935 µs, 0 -> [0, 1).
    hist = LatencyHistogram.from_dict({"140": 3, "0": 1})
    assert hist.count == 4
    assert abs(hist.quantile(0.99) - 1.05**140.5) <= 0.0625 * 1.05**140.5
    assert hist.quantile(0.25) in (0, 1)


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"log2": {"504": 1}}, "bucket 504 is outside [0, 503]"),
        ({"log2": {"x": 1}}, "is not an integer"),
        ({"log2": {"3": 1.5}}, "h[3]"),
        ({"log2": [1]}, "expected an object of buckets"),
        ({"log2": {}, "max": -1}, "h.max"),
        ({"501": 1}, "bucket 501 is outside [0, 500]"),
        ("[]", "expected an object"),
    ],
)
def test_a_crafted_histogram_is_refused_with_its_name(doc: Any, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        LatencyHistogram.from_dict(doc, "h")


def test_the_largest_accepted_histogram_still_answers() -> None:
    hist = LatencyHistogram.from_dict({"log2": {"503": 2**62, "0": 1}, "max": 2**63 - 1})
    counts, total = hist.cumulative([1e3, 1e6])
    assert counts == [1, 1]
    assert math.isfinite(total)
    assert total > 2**62 * 2**62  # the top bucket's midpoint, counted 2**62 times
    assert 2**62 < hist.quantile(0.99) <= 2**63 - 1
    assert hist.quantile(0.0) == 0


def test_a_crafted_maximum_cannot_cap_the_quantiles() -> None:
    real = LatencyHistogram()
    for value in (100, 5_000, 90_000):
        real.record(value)
    doc = real.to_dict()
    doc["max"] = 16  # below the highest non-empty bucket
    read = LatencyHistogram.from_dict(doc)
    assert read.quantile(0.99) == real.quantile(0.99)
    assert 81_920 <= read.maximum <= 90_111  # within the top bucket
    huge = LatencyHistogram()
    huge.record(1 << 70)  # beyond any microsecond count: clamped, not an IndexError
    assert huge.maximum == 2**63 - 1

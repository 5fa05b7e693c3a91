"""The TTL policy: what TTL a value gets on each path, and when a smart TTL is republished."""

from __future__ import annotations

from collections import OrderedDict

import pytest

from pipeline.models.ttl import SmartTTL
from pipeline.ttl import (
    PRIORITY_TTL_FACTOR,
    changed_ttls,
    load_ttl,
    published_ttl,
    value_ttl,
    warm_ttl,
)
from schemas.contracts import MAX_TTL_S


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(b"120", 120), (b"1", 60), (b"999999", 3_600), ("300", 300), (b"0", None), (b"-5", None),
     (b"1.5", None), (b"", None), (None, None), (b"\xff", None)],
)  # fmt: skip
def test_a_published_ttl_is_clamped_or_ignored(raw: object, expected: int | None) -> None:
    assert published_ttl(raw, 60, 3_600) == expected


def test_priority_scales_the_smart_or_default_ttl_within_bounds() -> None:
    assert [value_ttl(100, 3_600, p) for p in ("low", "normal", "high")] == [50, 100, 200]
    assert value_ttl(None, 3_600, "high") == 7_200
    assert value_ttl(1, 3_600, "low") == 1  # never 0: Redis would refuse EX 0
    assert value_ttl(MAX_TTL_S, 3_600, "high") == MAX_TTL_S
    with pytest.raises(KeyError, match="priority must be one of"):
        value_ttl(100, 3_600, "urgent")
    assert set(PRIORITY_TTL_FACTOR) == {"low", "normal", "high"}


def test_a_fixed_namespace_ttl_wins_over_the_smart_one_and_warms_fall_back() -> None:
    assert load_ttl(30, 100, 3_600) == 30
    assert load_ttl(None, 100, 3_600) == 100
    assert load_ttl(None, None, 3_600) == 3_600
    assert warm_ttl(250, 3_600) == 250
    assert warm_ttl(None, 3_600) == 3_600


def test_a_smart_ttl_is_republished_only_when_it_moves_by_more_than_a_tenth() -> None:
    model = SmartTTL(min_ttl=1, max_ttl=86_400, default_ttl=3_600, jitter=0.0)
    published: OrderedDict[str, int] = OrderedDict()
    for ts in range(0, 100, 10):  # a key read every 10 s
        model.learn_one("ns:k", float(ts))
    model.learn_one("ns:once", 0.0)  # one read: no rhythm, nothing to publish
    first = changed_ttls(model, {"ns:k", "ns:once"}, published)
    assert [key for key, _ in first] == ["ns:k"]
    assert published == OrderedDict(first)
    assert changed_ttls(model, {"ns:k"}, published) == []  # unchanged: not written again
    for ts in range(100, 4_000, 300):  # now read every 300 s: the TTL grows
        model.learn_one("ns:k", float(ts))
    again = changed_ttls(model, {"ns:k"}, published)
    assert again
    assert again[0][1] > 1.1 * first[0][1]

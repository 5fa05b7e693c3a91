"""Window statistics: the worker and edge warm paths are counted apart, and merge exactly."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from pipeline.stats import WindowStats
from schemas.contracts import STRATEGIES
from schemas.decode import validate_access_event, validate_metrics_snapshot


def _event(op: str, outcome: str, **extra: Any) -> dict[str, Any]:
    doc = {"ts": 1.0, "namespace": "shop", "key": "k", "op": op, "outcome": outcome}
    return validate_access_event({**doc, **extra})


def _edge_window() -> WindowStats:
    stats = WindowStats()
    stats.add_access(
        [
            _event("warm", "none", latency_us=50_000, size_bytes=100, ttl=60),
            _event("warm", "none", latency_us=50_000, size_bytes=100, ttl=60),
            _event("warm", "none", latency_us=50_000, size_bytes=100, ttl=60),
            _event("warm", "error", latency_us=50_000),
            _event("get", "hit", latency_us=100, size_bytes=100, warmed=True, warm_path="edge"),
            _event("get", "hit", latency_us=100, size_bytes=100, warmed=True, warm_path="worker"),
            _event("get", "hit", latency_us=100, size_bytes=100, warmed=True),  # older client
            _event("get", "hit", latency_us=100, size_bytes=100, joined=True),
            _event("get", "miss", latency_us=100),
        ]
    )
    return stats


def test_edge_warms_are_counted_apart_from_application_operations() -> None:
    stats = _edge_window()
    assert stats.events == 9  # every access event, warms included
    assert (stats.edge_warms_issued, stats.edge_warms_written) == (4, 3)
    assert (stats.hits, stats.misses, stats.sets, stats.errors) == (4, 1, 0, 0)
    assert (stats.bytes_read, stats.bytes_written) == (400, 0)
    assert stats.latency.count == 5  # the loads' 50 ms stay out of the read latencies
    assert stats.latency.quantile(0.99) < 1000


def test_useful_warms_are_credited_to_the_path_that_wrote_them() -> None:
    stats = _edge_window()
    assert stats.edge_warms_useful == 1
    assert stats.warms_useful == 2  # "worker", and a missing warm_path (older clients)
    assert stats.joined_reads == 1
    assert stats.edge_warm_precision() == 1 / 3
    assert stats.warm_precision() is None  # the worker wrote nothing in this window
    stats.warms_written = 4
    assert stats.warm_precision() == 0.5


def test_dicts_without_the_new_keys_still_count() -> None:
    stats = WindowStats()
    stats.add_access(
        [
            {"op": "get", "outcome": "hit", "latency_us": 1, "size_bytes": 1, "warmed": True},
            {"op": "warm", "outcome": "error", "latency_us": 1, "size_bytes": 0, "warmed": False},
        ]
    )
    assert (stats.warms_useful, stats.edge_warms_useful, stats.joined_reads) == (1, 0, 0)
    assert (stats.edge_warms_issued, stats.edge_warms_written) == (1, 0)


def test_joined_counts_reads_only() -> None:
    stats = WindowStats()
    stats.add_access(
        [
            _event("get", "miss", joined=True),
            _event("mget", "hit", joined=True),
            _event("set", "none", joined=True),
            _event("warm", "none", joined=True),
        ]
    )
    assert stats.joined_reads == 2


def test_edge_precision_is_null_without_edge_warms() -> None:
    stats = WindowStats()
    stats.add_access([_event("get", "hit", warmed=True, warm_path="edge")])
    assert stats.edge_warms_useful == 1
    assert stats.edge_warm_precision() is None
    assert stats.snapshot("shop", 0.0, 10.0).edge_warm_precision is None


def test_merge_and_round_trip_keep_the_edge_counters() -> None:
    total = _edge_window()
    total.merge(_edge_window())
    assert (total.edge_warms_issued, total.edge_warms_written) == (8, 6)
    assert (total.edge_warms_useful, total.warms_useful, total.joined_reads) == (2, 4, 2)
    again = WindowStats.from_dict(orjson.loads(orjson.dumps(total.to_dict())))
    assert again.to_dict() == total.to_dict()
    old = {k: v for k, v in total.to_dict().items() if not k.startswith(("edge_", "joined"))}
    assert WindowStats.from_dict(old).edge_warms_issued == 0  # entries written before


def test_the_snapshot_reports_both_paths_and_is_a_valid_contract() -> None:
    stats = _edge_window()
    stats.warms_issued, stats.warms_written = 5, 4
    snapshot = stats.snapshot("shop", 0.0, 10.0, worker="w1")
    assert (snapshot.warms_issued, snapshot.warms_written, snapshot.warms_useful) == (5, 4, 2)
    assert snapshot.warm_precision == 0.5
    edge = (snapshot.edge_warms_issued, snapshot.edge_warms_written, snapshot.edge_warms_useful)
    assert edge == (4, 3, 1)
    assert snapshot.edge_warm_precision == 1 / 3
    assert snapshot.joined_reads == 1
    doc = orjson.loads(snapshot.dumps())
    assert validate_metrics_snapshot(doc) == doc


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"latency": {"1000000": 1}}, "bucket 1000000 is outside"),
        ({"latency": {"log2": {"1000000": 1}}}, "bucket 1000000 is outside"),
        ({"latency": {"1e6": 1}}, "is not an integer"),
        ({"latency": {"3": -5}}, "latency[3]"),
        ({"latency": {"log2": {"3": -5}}}, "latency[3]"),
        ({"hits": 2**64}, "hits"),
        ({"hits": "7"}, "hits"),
        ({"warm_latency": [1, 2]}, "warm_latency"),
    ],
)
def test_a_crafted_stats_delta_is_refused_with_the_field_named(
    doc: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        WindowStats.from_dict(doc)


def test_the_largest_bucket_of_the_older_form_reads_as_about_an_hour() -> None:
    stats = WindowStats.from_dict({"latency": {"500": 3, "0": 1}, "hits": 4})  # older form
    snapshot = stats.snapshot("shop", 0.0, 1.0)
    hour_us = 1.05**500.5  # the bucket's midpoint, ~1.3 hours
    assert abs(snapshot.latency_p99_us - hour_us) <= 0.0625 * hour_us
    assert snapshot.latency_p50_us == snapshot.latency_p99_us  # 3 of the 4 samples
    assert WindowStats.from_dict(stats.to_dict()).to_dict() == stats.to_dict()


def test_each_strategy_is_counted_apart_and_reported_with_its_precision() -> None:
    stats = WindowStats()
    stats.add_strategies({"recency": [3, 1], "rules": [9, 1], "ensemble": [5, 5]})
    stats.add_strategies({"recency": [1, 3]})
    other = WindowStats.from_dict(orjson.loads(orjson.dumps(stats.to_dict())))
    other.merge(stats)
    assert (other.recency_true, other.recency_false) == (8, 8)
    snapshot = validate_metrics_snapshot(
        orjson.loads(other.snapshot("shop", 0.0, 10.0, "w1").dumps())
    )
    assert snapshot["recency_admitted"] == 16
    assert snapshot["recency_precision"] == pytest.approx(0.5)
    assert snapshot["rules_admitted"] == 20
    assert snapshot["rules_precision"] == pytest.approx(0.9)
    assert snapshot["temporal_admitted"] == 0
    assert snapshot["temporal_precision"] is None  # nothing labelled: no precision
    assert "ensemble_admitted" not in snapshot  # not a strategy of its own


def test_a_delta_from_before_strategies_reads_with_none_counted() -> None:
    older = {"hits": 4, "misses": 1, "predicted_true": 2}
    stats = WindowStats.from_dict(older)
    assert stats.hits == 4
    assert stats.strategy("similarity") == (0, None)


def test_every_strategy_of_the_contract_has_its_counters() -> None:
    stats = WindowStats()
    stats.add_strategies({name: [1, 2] for name in STRATEGIES})
    for name in STRATEGIES:
        labelled, precision = stats.strategy(name)
        assert labelled == 3, name
        assert precision == pytest.approx(1 / 3), name

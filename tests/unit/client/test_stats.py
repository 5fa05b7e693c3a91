"""The client's counters: ratios and per-operation latencies as a snapshot reports them."""

from __future__ import annotations

from pipeline.client.stats import ClientStats


def test_snapshot_ratios() -> None:
    stats = ClientStats(hits=3, misses=1, bytes_written=50, raw_bytes_written=200)
    stats.latency["get"].record(100)
    snap = stats.snapshot()
    assert snap["hit_ratio"] == 0.75
    assert snap["compression_ratio"] == 0.25
    assert list(snap["latency_us"]) == ["get"]
    assert ClientStats().snapshot()["hit_ratio"] is None

"""Client-side counters and per-operation latency histograms, cheap enough for the cache path.

Latencies go into :class:`pipeline.histogram.LatencyHistogram`, the same
histogram the worker's window statistics use: a sample costs a few integer
operations, and a quantile is within about 6 % of the true value.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.histogram import LatencyHistogram
from schemas.contracts import OPS

__all__ = ["ClientStats"]


def _histograms() -> dict[str, LatencyHistogram]:
    return {op: LatencyHistogram() for op in OPS}


@dataclass(slots=True)
class ClientStats:
    """What one client did since it was made. Plain ints: updated on the cache path.

    Under threads (the sync client) an increment can very rarely be lost; these
    are operational counters, not accounting.
    """

    hits: int = 0
    misses: int = 0
    sets: int = 0
    deletes: int = 0
    errors: int = 0
    decode_errors: int = 0
    warmed_hits: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    raw_bytes_written: int = 0
    loads: int = 0
    load_errors: int = 0
    load_joins: int = 0
    early_refreshes: int = 0
    breaker_rejections: int = 0
    redis_stalls: int = 0
    #: Edge warms: loads of the keys a prefetch rule names, started when its trigger missed.
    rule_reads: int = 0
    rules_applied: int = 0
    #: User rules: read as a user's session opens (one HGET), and those that named keys.
    user_rule_reads: int = 0
    user_rules_applied: int = 0
    #: Times the rule stream had been trimmed past what this client had read, so it
    #: read the rule table again.
    rule_resyncs: int = 0
    edge_issued: int = 0
    edge_written: int = 0
    edge_failed: int = 0
    edge_refused: int = 0
    edge_skipped: int = 0
    #: First reads of edge-warmed values (the reader took the warm marker), joins included.
    edge_hits: int = 0
    #: Reads served by a load already in flight (here or on another client).
    inflight_joins: int = 0
    #: Trigger (the miss) to the edge-warmed value written, in microseconds.
    edge_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    latency: dict[str, LatencyHistogram] = field(default_factory=_histograms)
    #: When the client was made (time.monotonic()): throughput is counted from here.
    started: float = field(default_factory=time.monotonic)

    def performance(self) -> dict[str, Any]:
        """The original layer's performance figures, from this client's own operations.

        ``operations`` completed (every op, reads and writes) plus ``errors``;
        ``average_response_time_ms`` over the completed ones; ``throughput_per_s``
        since the client was made; ``error_rate`` errors per operation; hit and
        miss rates of reads (None before the first).

        >>> stats = ClientStats(hits=3, misses=1, errors=1)
        >>> for us in (100, 200, 300, 400):
        ...     stats.latency["get"].record(us)
        >>> figures = stats.performance()
        >>> figures["operations"], figures["error_rate"], figures["hit_rate"]
        (5, 0.2, 0.75)
        >>> 0.23 < figures["average_response_time_ms"] < 0.27
        True
        """
        completed = 0
        total_us = 0.0
        for histogram in self.latency.values():
            count = histogram.count
            if count:
                completed += count
                total_us += count * histogram.mean()
        operations = completed + self.errors
        reads = self.hits + self.misses
        elapsed = max(1e-9, time.monotonic() - self.started)
        return {
            "operations": operations,
            "average_response_time_ms": total_us / completed / 1000 if completed else None,
            "throughput_per_s": round(operations / elapsed, 3),
            "error_rate": self.errors / operations if operations else 0.0,
            "hit_rate": self.hits / reads if reads else None,
            "miss_rate": self.misses / reads if reads else None,
            "uptime_s": round(elapsed, 3),
        }

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready view: counters, hit ratio, compression ratio, latency quantiles."""
        reads = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_ratio": self.hits / reads if reads else None,
            "sets": self.sets,
            "deletes": self.deletes,
            "errors": self.errors,
            "decode_errors": self.decode_errors,
            "warmed_hits": self.warmed_hits,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "compression_ratio": (
                self.bytes_written / self.raw_bytes_written if self.raw_bytes_written else None
            ),
            "loads": self.loads,
            "load_errors": self.load_errors,
            "load_joins": self.load_joins,
            "early_refreshes": self.early_refreshes,
            "breaker_rejections": self.breaker_rejections,
            "redis_stalls": self.redis_stalls,
            "rule_reads": self.rule_reads,
            "rules_applied": self.rules_applied,
            "user_rule_reads": self.user_rule_reads,
            "user_rules_applied": self.user_rules_applied,
            "rule_resyncs": self.rule_resyncs,
            "edge_issued": self.edge_issued,
            "edge_written": self.edge_written,
            "edge_failed": self.edge_failed,
            "edge_refused": self.edge_refused,
            "edge_skipped": self.edge_skipped,
            "edge_hits": self.edge_hits,
            "inflight_joins": self.inflight_joins,
            "edge_useful": self.edge_hits,
            "edge_precision": self.edge_hits / self.edge_written if self.edge_written else None,
            "edge_latency_p50_ms": (
                self.edge_latency.quantile(0.5) / 1000 if self.edge_latency.count else None
            ),
            "edge_latency_p99_ms": (
                self.edge_latency.quantile(0.99) / 1000 if self.edge_latency.count else None
            ),
            "latency_us": {op: hist.summary() for op, hist in self.latency.items() if hist.count},
        }

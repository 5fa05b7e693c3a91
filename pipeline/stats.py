"""Mergeable statistics of a namespace over a window: what the stats agent aggregates.

Workers compute a :class:`WindowStats` delta per batch of access events (and per
batch of warmup outcomes), send it on, and the stats agent merges deltas into a
windowed table. Everything here merges exactly: counters add, and latencies go
into a fixed log-bucket histogram (:class:`LatencyHistogram`) whose buckets add,
so quantiles of a merged window are the quantiles of all its events (to within
a bucket's width, about 6 %; see :mod:`pipeline.histogram`).

Values are warmed on two paths, counted apart: the worker (warmup commands, the
writer's outcomes: ``warms_*``) and the edge (a client loads predicted keys
itself and reports each as an access event with ``op="warm"``:
``edge_warms_*``). A first read of a warmed value says which path wrote it
(``warm_path``; missing or null counts as the worker, as older clients only
knew that one). An edge warm is counted in ``events`` but is not a read, a
write or an error of the application: it adds to no other counter, and its
latency (the load's) stays out of the operation latency histogram.

>>> stats = WindowStats()
>>> stats.add_access([
...     {"op": "get", "outcome": "hit", "latency_us": 120, "size_bytes": 10, "warmed": True},
...     {"op": "get", "outcome": "miss", "latency_us": 300, "size_bytes": 0, "warmed": False},
...     {"op": "set", "outcome": "none", "latency_us": 200, "size_bytes": 50, "warmed": False,
...      "raw_bytes": 100},
... ])
>>> stats.hits, stats.misses, stats.sets, stats.warms_useful, stats.hit_ratio()
(1, 1, 1, 1, 0.5)
>>> stats.snapshot("users", 0.0, 10.0).compression_ratio
0.5
>>> stats.add_access([
...     {"op": "warm", "outcome": "none", "latency_us": 900, "size_bytes": 40, "warmed": False},
...     {"op": "warm", "outcome": "error", "latency_us": 50, "size_bytes": 0, "warmed": False},
...     {"op": "get", "outcome": "hit", "latency_us": 90, "size_bytes": 40, "warmed": True,
...      "warm_path": "edge", "joined": True},
... ])
>>> stats.edge_warms_issued, stats.edge_warms_written, stats.edge_warms_useful, stats.joined_reads
(2, 1, 1, 1)
>>> stats.warms_useful, stats.hits, stats.sets, stats.errors, stats.edge_warm_precision()
(1, 2, 1, 0, 1.0)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from pipeline.histogram import LatencyHistogram, checked_count
from schemas.contracts import READ_OPS, STRATEGIES
from schemas.records import MetricsSnapshot

__all__ = ["WindowStats"]


@dataclass(slots=True)
class WindowStats:
    """Counters of one namespace over one window; every field merges by addition."""

    events: int = 0
    hits: int = 0
    misses: int = 0
    sets: int = 0
    deletes: int = 0
    errors: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    raw_bytes_written: int = 0
    stored_bytes_compressible: int = 0
    warms_issued: int = 0
    warms_written: int = 0
    warms_useful: int = 0
    warms_skipped: int = 0
    warms_failed: int = 0
    edge_warms_issued: int = 0
    edge_warms_written: int = 0
    edge_warms_useful: int = 0
    joined_reads: int = 0
    predicted_true: int = 0
    predicted_false: int = 0
    missed_true: int = 0
    dead_letters: int = 0
    #: Per strategy (schemas.contracts.STRATEGIES), its admitted predictions labelled: read
    #: in time (``_true``) or not (``_false``). Issued as warms or not (see the contract).
    frequency_true: int = 0
    frequency_false: int = 0
    recency_true: int = 0
    recency_false: int = 0
    similarity_true: int = 0
    similarity_false: int = 0
    user_true: int = 0
    user_false: int = 0
    temporal_true: int = 0
    temporal_false: int = 0
    rules_true: int = 0
    rules_false: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    warm_latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def add_access(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Count validated access events (dicts with the AccessEvent fields).

        ``warm_path`` and ``joined`` may be missing (dicts from before they existed).
        """
        latency = self.latency
        for event in events:
            self.events += 1
            op, outcome = event["op"], event["outcome"]
            if op == "warm":  # an edge warm: not an application operation
                self.edge_warms_issued += 1
                if outcome == "none":
                    self.edge_warms_written += 1
                continue
            if outcome == "hit":
                self.hits += 1
                self.bytes_read += event["size_bytes"]
                if event["warmed"]:
                    if event.get("warm_path") == "edge":
                        self.edge_warms_useful += 1
                    else:
                        self.warms_useful += 1
            elif outcome == "miss":
                self.misses += 1
            elif outcome == "error":
                self.errors += 1
            if event.get("joined", False) and op in READ_OPS:
                self.joined_reads += 1
            if op in ("set", "mset"):
                self.sets += 1
                self.bytes_written += event["size_bytes"]
                if event["raw_bytes"]:
                    self.stored_bytes_compressible += event["size_bytes"]
                    self.raw_bytes_written += event["raw_bytes"]
            elif op == "delete":
                self.deletes += 1
            latency.record(event["latency_us"])

    def add_outcomes(self, outcomes: Iterable[Mapping[str, Any]]) -> None:
        """Count validated warmup outcomes."""
        for outcome in outcomes:
            status = outcome["status"]
            if status == "written":
                self.warms_written += 1
                self.warm_latency.add(outcome["latency_us"])
            elif status in ("skipped-present", "skipped-stale", "rate-limited"):
                self.warms_skipped += 1
            else:
                self.warms_failed += 1

    def add_strategies(self, by_strategy: Mapping[str, Sequence[int]]) -> None:
        """Count labelled admitted warms per strategy (``[read in time, not]``, as
        ``WarmEngine.drain_strategies`` gives them); unknown strategies are ignored."""
        for strategy, (useful, wasted) in by_strategy.items():
            if strategy in STRATEGIES:
                setattr(self, f"{strategy}_true", getattr(self, f"{strategy}_true") + useful)
                setattr(self, f"{strategy}_false", getattr(self, f"{strategy}_false") + wasted)

    def strategy(self, name: str) -> tuple[int, float | None]:
        """A strategy's labelled admitted predictions and the share of them read in time
        (None: none labelled)."""
        useful, wasted = getattr(self, f"{name}_true"), getattr(self, f"{name}_false")
        labelled = useful + wasted
        return labelled, (useful / labelled if labelled else None)

    def merge(self, other: WindowStats) -> None:
        for f in fields(self):
            if f.name in ("latency", "warm_latency"):
                continue
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self.latency.merge(other.latency)
        self.warm_latency.merge(other.warm_latency)

    def hit_ratio(self) -> float | None:
        reads = self.hits + self.misses
        return self.hits / reads if reads else None

    def warm_precision(self) -> float | None:
        if not self.warms_written:
            return None
        return min(1.0, self.warms_useful / self.warms_written)

    def edge_warm_precision(self) -> float | None:
        if not self.edge_warms_written:
            return None
        return min(1.0, self.edge_warms_useful / self.edge_warms_written)

    def prediction_precision(self) -> float | None:
        total = self.predicted_true + self.predicted_false
        return self.predicted_true / total if total else None

    def prediction_recall(self) -> float | None:
        total = self.predicted_true + self.missed_true
        return self.predicted_true / total if total else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (histogram bucket keys become strings)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, LatencyHistogram):
                out[f.name] = value.to_dict()
            else:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WindowStats:
        """Read :meth:`to_dict`'s form back, validating it: it arrives from a topic.

        Counters must be non-negative integers below 2**63 and histograms valid
        (:meth:`LatencyHistogram.from_dict`); anything else raises ``ValueError``
        naming the field (a crafted bucket like ``1e6`` would break every quantile).

        >>> WindowStats.from_dict({"latency": {"log2": {"99999": 1}}})
        Traceback (most recent call last):
        ...
        ValueError: latency: bucket 99999 is outside [0, 503]
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"expected an object, got {type(data).__name__}")
        stats = cls()
        for f in fields(stats):
            if f.name not in data:
                continue
            value = data[f.name]
            if f.name in ("latency", "warm_latency"):
                setattr(stats, f.name, LatencyHistogram.from_dict(value, f.name))
            else:
                setattr(stats, f.name, checked_count(f.name, value))
        return stats

    def snapshot(
        self, namespace: str, window_start: float, window_end: float, worker: str | None = None
    ) -> MetricsSnapshot:
        """The public MetricsSnapshot of this window."""
        ratio = self.raw_bytes_written and self.stored_bytes_compressible / self.raw_bytes_written
        return MetricsSnapshot(
            namespace=namespace,
            window_start=window_start,
            window_end=window_end,
            events=self.events,
            hits=self.hits,
            misses=self.misses,
            sets=self.sets,
            deletes=self.deletes,
            errors=self.errors,
            hit_ratio=self.hit_ratio(),
            latency_p50_us=self.latency.quantile(0.5),
            latency_p90_us=self.latency.quantile(0.9),
            latency_p99_us=self.latency.quantile(0.99),
            bytes_read=self.bytes_read,
            bytes_written=self.bytes_written,
            compression_ratio=ratio or None,
            warms_issued=self.warms_issued,
            warms_written=self.warms_written,
            warms_useful=self.warms_useful,
            warm_precision=self.warm_precision(),
            edge_warms_issued=self.edge_warms_issued,
            edge_warms_written=self.edge_warms_written,
            edge_warms_useful=self.edge_warms_useful,
            edge_warm_precision=self.edge_warm_precision(),
            joined_reads=self.joined_reads,
            prediction_precision=self.prediction_precision(),
            prediction_recall=self.prediction_recall(),
            dead_letters=self.dead_letters,
            worker=worker,
            **self._strategy_fields(),
        )

    def _strategy_fields(self) -> dict[str, Any]:
        """``{strategy}_admitted`` and ``{strategy}_precision`` of every strategy."""
        out: dict[str, Any] = {}
        for name in STRATEGIES:
            out[f"{name}_admitted"], out[f"{name}_precision"] = self.strategy(name)
        return out

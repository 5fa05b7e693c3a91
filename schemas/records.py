"""The public records as Faust records, serialised with orjson.

Each record's fields are exactly its contract in :mod:`schemas.contracts`
(``tests/unit/schemas`` checks that). Build records from untrusted bytes with
the ``decode_*`` functions in :mod:`schemas.decode`, never with
``Record.loads``: only the decoders validate.
"""

from __future__ import annotations

from typing import Any

import faust
import orjson
from faust.serializers import codecs

__all__ = ["AccessEvent", "MetricsSnapshot", "OrjsonCodec", "WarmupCommand", "WarmupOutcome"]


class OrjsonCodec(codecs.Codec):
    """Faust codec ``"orjson"``: compact JSON bytes, no Faust metadata."""

    def _dumps(self, obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)

    def _loads(self, s: bytes) -> Any:
        return orjson.loads(s)


codecs.register("orjson", OrjsonCodec())


class _Contract(
    faust.Record,
    abstract=True,
    serializer="orjson",
    include_metadata=False,
):
    """Common base: orjson on the wire, plain JSON objects (no ``__faust`` key)."""


class AccessEvent(_Contract):
    """One cache operation, as the client (or any producer) reports it."""

    ts: float
    namespace: str
    key: str
    op: str
    outcome: str
    latency_us: int = 0
    size_bytes: int = 0
    raw_bytes: int = 0
    ttl: int | None = None
    user: str | None = None
    session: str | None = None
    tags: list[str] = []
    warmed: bool = False
    warm_path: str | None = None
    joined: bool = False
    client: str | None = None
    version: int = 1


class WarmupCommand(_Contract):
    """Load ``namespace:key`` into the cache before ``deadline``, with ``ttl``."""

    namespace: str
    key: str
    score: float
    reason: str
    ttl: int
    deadline: float
    issued_at: float = 0.0
    trigger_ts: float = 0.0
    model_version: str = ""
    version: int = 1


class WarmupOutcome(_Contract):
    """What the Redis writer did with one WarmupCommand."""

    namespace: str
    key: str
    status: str
    ts: float
    reason: str = "manual"
    latency_us: float = 0.0
    load_us: float = 0.0
    size_bytes: int = 0
    ttl: int | None = None
    error: str | None = None
    model_version: str = ""
    version: int = 1


class MetricsSnapshot(_Contract):
    """Aggregated statistics of one namespace over one window."""

    namespace: str
    window_start: float
    window_end: float
    events: int = 0
    hits: int = 0
    misses: int = 0
    sets: int = 0
    deletes: int = 0
    errors: int = 0
    hit_ratio: float | None = None
    latency_p50_us: float = 0.0
    latency_p90_us: float = 0.0
    latency_p99_us: float = 0.0
    bytes_read: int = 0
    bytes_written: int = 0
    compression_ratio: float | None = None
    warms_issued: int = 0
    warms_written: int = 0
    warms_useful: int = 0
    warm_precision: float | None = None
    edge_warms_issued: int = 0
    edge_warms_written: int = 0
    edge_warms_useful: int = 0
    edge_warm_precision: float | None = None
    joined_reads: int = 0
    prediction_precision: float | None = None
    prediction_recall: float | None = None
    dead_letters: int = 0
    frequency_admitted: int = 0
    frequency_precision: float | None = None
    recency_admitted: int = 0
    recency_precision: float | None = None
    similarity_admitted: int = 0
    similarity_precision: float | None = None
    user_admitted: int = 0
    user_precision: float | None = None
    temporal_admitted: int = 0
    temporal_precision: float | None = None
    rules_admitted: int = 0
    rules_precision: float | None = None
    worker: str | None = None
    version: int = 1

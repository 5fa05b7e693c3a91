"""The field contracts of cachecast's four public records, and their limits.

These tuples are the single source of truth: the decoder in
:mod:`schemas.decode` and the ``*.schema.json`` files are both made from them.
Limits (all enforced by the decoder, most also expressed in the JSON Schema):

=======================  ==========  =============================================
limit                    value       why
=======================  ==========  =============================================
``MAX_RECORD_BYTES``     1 MiB       Kafka's default ``message.max.bytes``
``MAX_BATCH_EVENTS``     10,000      bounds one record's work and memory
``MAX_KEY_LENGTH``       1,024       code points; longer keys are almost always bugs
``MAX_NAMESPACE_LENGTH`` 64          namespace is ``[A-Za-z0-9_.-]``, no ``:``
``MAX_TAGS``             32          tags per event, each at most 128 code points
``MAX_TS``               4102444800  2100-01-01 in Unix seconds: catches milliseconds
=======================  ==========  =============================================
"""

from __future__ import annotations

from typing import Any, Final

from schemas.spec import FieldSpec

__all__ = [
    "ACCESS_EVENT",
    "CONTRACT_VERSION",
    "MAX_BATCH_EVENTS",
    "MAX_KEY_LENGTH",
    "MAX_NAMESPACE_LENGTH",
    "MAX_RECORD_BYTES",
    "MAX_TAGS",
    "MAX_TS",
    "METRICS_SNAPSHOT",
    "OPS",
    "OUTCOMES",
    "READ_OPS",
    "REASONS",
    "STATUSES",
    "STRATEGIES",
    "WARMUP_COMMAND",
    "WARMUP_OUTCOME",
    "WARM_PATHS",
]

CONTRACT_VERSION: Final = 1
MAX_RECORD_BYTES: Final = 1024 * 1024
MAX_BATCH_EVENTS: Final = 10_000
MAX_KEY_LENGTH: Final = 1024
MAX_NAMESPACE_LENGTH: Final = 64
MAX_TAGS: Final = 32
MAX_TAG_LENGTH: Final = 128
MAX_LABEL_LENGTH: Final = 256
MAX_TS: Final = 4_102_444_800.0
MAX_LATENCY_US: Final = 3_600_000_000
MAX_SIZE_BYTES: Final = 512 * 1024 * 1024
MAX_TTL_S: Final = 10 * 365 * 24 * 3600
MAX_COUNT: Final = 2**53

#: ``warm`` is not a request: it reports an edge warm the client itself carried out
#: (outcome ``none``: the value was written; ``error``: the load failed or was refused).
OPS: Final = ("get", "set", "delete", "mget", "mset", "exists", "incr", "expire", "warm")
#: The operations that are requests for a value: what the prediction models learn from.
READ_OPS: Final = frozenset({"get", "mget", "exists"})
OUTCOMES: Final = ("hit", "miss", "error", "none")
REASONS: Final = ("frequency", "recency", "similarity", "user", "temporal", "ensemble", "manual")
#: The strategies whose admitted warms a MetricsSnapshot counts: the reasons the worker's
#: models raise warms for, and the prefetch rules the clients apply at the edge.
STRATEGIES: Final = ("frequency", "recency", "similarity", "user", "temporal", "rules")
STATUSES: Final = ("written", "skipped-present", "skipped-stale", "load-failed", "rate-limited")
#: Who wrote a warmed value: the worker (warmup topic, writer agent) or the client (edge).
WARM_PATHS: Final = ("worker", "edge")
NAMESPACE_PATTERN: Final = r"[A-Za-z0-9_.-]+"


def _ts_hint(value: Any) -> str | None:
    if isinstance(value, int | float) and value > MAX_TS and value / 1000.0 <= MAX_TS:
        return "this looks like milliseconds; send seconds since the Unix epoch"
    return None


def _version() -> FieldSpec:
    return FieldSpec(
        "version",
        "integer",
        "Contract version; this release reads version 1.",
        default=CONTRACT_VERSION,
        minimum=CONTRACT_VERSION,
        maximum=CONTRACT_VERSION,
    )


def _ts(name: str, description: str, *, required: bool = True) -> FieldSpec:
    return FieldSpec(
        name,
        "number",
        description,
        required=required,
        default=None if required else 0.0,
        minimum=0,
        maximum=MAX_TS,
        hint=_ts_hint,
    )


def _namespace() -> FieldSpec:
    return FieldSpec(
        "namespace",
        "string",
        "Cache namespace: letters, digits, '_', '.', '-' (no ':').",
        required=True,
        min_length=1,
        max_length=MAX_NAMESPACE_LENGTH,
        pattern=NAMESPACE_PATTERN,
    )


def _key() -> FieldSpec:
    return FieldSpec(
        "key",
        "string",
        "Cache key within the namespace (without the Redis key prefix).",
        required=True,
        min_length=1,
        max_length=MAX_KEY_LENGTH,
    )


def _label(name: str, description: str) -> FieldSpec:
    return FieldSpec(
        name, "string", description, nullable=True, min_length=1, max_length=MAX_LABEL_LENGTH
    )


def _count(name: str, description: str) -> FieldSpec:
    return FieldSpec(name, "integer", description, default=0, minimum=0, maximum=MAX_COUNT)


def _ratio(name: str, description: str) -> FieldSpec:
    return FieldSpec(name, "number", description, nullable=True, minimum=0.0, maximum=1.0)


def _micros(name: str, description: str) -> FieldSpec:
    return FieldSpec(name, "number", description, default=0.0, minimum=0, maximum=MAX_LATENCY_US)


ACCESS_EVENT: Final[tuple[FieldSpec, ...]] = (
    _ts("ts", "When the cache operation happened, in seconds since the Unix epoch."),
    _namespace(),
    _key(),
    FieldSpec(
        "op",
        "string",
        "The cache operation; 'warm' reports an edge warm the client carried out (not a read).",
        required=True,
        enum=OPS,
    ),
    FieldSpec(
        "outcome",
        "string",
        "hit/miss for reads, none for writes, error when Redis failed. For op 'warm': none "
        "when the value was written, error when the load failed or was refused.",
        required=True,
        enum=OUTCOMES,
    ),
    FieldSpec(
        "latency_us",
        "integer",
        "How long the operation took, in microseconds.",
        default=0,
        minimum=0,
        maximum=MAX_LATENCY_US,
    ),
    FieldSpec(
        "size_bytes",
        "integer",
        "Bytes read or written (0 when unknown); for op 'warm', bytes written.",
        default=0,
        minimum=0,
        maximum=MAX_SIZE_BYTES,
    ),
    FieldSpec(
        "raw_bytes",
        "integer",
        "Uncompressed payload size on writes (0 when unknown): gives the compression ratio.",
        default=0,
        minimum=0,
        maximum=MAX_SIZE_BYTES,
    ),
    FieldSpec(
        "ttl",
        "integer",
        "TTL in seconds given on a write (for op 'warm', the TTL written), or null.",
        nullable=True,
        minimum=1,
        maximum=MAX_TTL_S,
    ),
    _label("user", "Opaque user id, for user-key affinity; null when unknown."),
    _label("session", "Opaque session id, for co-access within a session; null when unknown."),
    FieldSpec(
        "tags",
        "string_array",
        "Tags of the entry (for tag invalidation).",
        default=(),
        min_length=1,
        max_length=MAX_TAG_LENGTH,
        max_items=MAX_TAGS,
    ),
    FieldSpec(
        "warmed",
        "boolean",
        "True when this read was the first read of a value written by the warmer.",
        default=False,
    ),
    FieldSpec(
        "warm_path",
        "string",
        "Which warm path wrote the value whose first read this was (with warmed=true).",
        nullable=True,
        enum=WARM_PATHS,
    ),
    FieldSpec(
        "joined",
        "boolean",
        "The read waited for a load already in flight (an edge warm, or another caller's load) "
        "instead of fetching from the origin.",
        default=False,
    ),
    _label("client", "Name of the emitting application or client library."),
    _version(),
)

WARMUP_COMMAND: Final[tuple[FieldSpec, ...]] = (
    _namespace(),
    _key(),
    FieldSpec(
        "score",
        "number",
        "Predicted probability that the key is read within the horizon.",
        required=True,
        minimum=0.0,
        maximum=1.0,
    ),
    FieldSpec("reason", "string", "Which model proposed the key.", required=True, enum=REASONS),
    FieldSpec(
        "ttl",
        "integer",
        "TTL in seconds to write the value with (the smart TTL).",
        required=True,
        minimum=1,
        maximum=MAX_TTL_S,
    ),
    _ts("deadline", "After this time (Unix seconds) the command is stale and must be skipped."),
    _ts("issued_at", "When the command was issued (Unix seconds).", required=False),
    _ts(
        "trigger_ts",
        "Time of the access event that led to this prediction (Unix seconds), 0 if none.",
        required=False,
    ),
    FieldSpec(
        "model_version",
        "string",
        "Identifies the model state that issued the command.",
        default="",
        max_length=MAX_LABEL_LENGTH,
    ),
    _version(),
)

WARMUP_OUTCOME: Final[tuple[FieldSpec, ...]] = (
    _namespace(),
    _key(),
    FieldSpec("status", "string", "What the writer did.", required=True, enum=STATUSES),
    _ts("ts", "When the writer finished (Unix seconds)."),
    FieldSpec("reason", "string", "The command's reason.", default="manual", enum=REASONS),
    _micros(
        "latency_us",
        "From the triggering access event (or the command's issue) to the write, in microseconds.",
    ),
    _micros("load_us", "Time spent in the loader, in microseconds."),
    FieldSpec(
        "size_bytes",
        "integer",
        "Bytes written to Redis.",
        default=0,
        minimum=0,
        maximum=MAX_SIZE_BYTES,
    ),
    FieldSpec(
        "ttl", "integer", "TTL written, in seconds.", nullable=True, minimum=1, maximum=MAX_TTL_S
    ),
    _label("error", "Why the load failed, when it did."),
    FieldSpec(
        "model_version", "string", "From the command.", default="", max_length=MAX_LABEL_LENGTH
    ),
    _version(),
)

METRICS_SNAPSHOT: Final[tuple[FieldSpec, ...]] = (
    _namespace(),
    _ts("window_start", "Start of the window (Unix seconds)."),
    _ts("window_end", "End of the window (Unix seconds)."),
    _count("events", "Access events in the window."),
    _count("hits", "Reads that hit."),
    _count("misses", "Reads that missed."),
    _count("sets", "Writes."),
    _count("deletes", "Deletes."),
    _count("errors", "Operations that failed in Redis."),
    _ratio("hit_ratio", "hits / (hits + misses); null with no reads."),
    _micros("latency_p50_us", "Median operation latency."),
    _micros("latency_p90_us", "90th percentile operation latency."),
    _micros("latency_p99_us", "99th percentile operation latency."),
    _count("bytes_read", "Bytes returned by reads."),
    _count("bytes_written", "Bytes written."),
    FieldSpec(
        "compression_ratio",
        "number",
        "Stored bytes / raw bytes of written values; null when unknown.",
        nullable=True,
        minimum=0.0,
        maximum=1e6,
    ),
    _count("warms_issued", "Warmup commands issued by the worker."),
    _count("warms_written", "Warmed values written to Redis by the worker."),
    _count("warms_useful", "Values warmed by the worker and read before eviction or expiry."),
    _ratio(
        "warm_precision",
        "warms_useful / warms_written, warms by the worker; null when the worker warmed nothing.",
    ),
    _count("edge_warms_issued", "Edge warms the clients carried out (access events op 'warm')."),
    _count("edge_warms_written", "Values written to Redis by edge warms."),
    _count("edge_warms_useful", "Values warmed at the edge and read before eviction or expiry."),
    _ratio(
        "edge_warm_precision",
        "edge_warms_useful / edge_warms_written; null when nothing was warmed at the edge.",
    ),
    _count("joined_reads", "Reads that waited for a load in flight instead of fetching."),
    _ratio("prediction_precision", "Online precision of the ensemble."),
    _ratio("prediction_recall", "Online recall of the ensemble."),
    _count("dead_letters", "Records sent to the dead-letter topic."),
    *(
        spec
        for strategy in STRATEGIES
        for spec in (
            _count(
                f"{strategy}_admitted",
                f"Predictions of the {strategy} strategy the models admitted (issued as warms"
                " or not: a worker leaves sequence warms to the rules, drops duplicates, and"
                " issues none with warming off; for rules, the successors a rule named when"
                " its trigger was read) whose label came in this window.",
            ),
            _ratio(
                f"{strategy}_precision",
                f"Share of the {strategy} strategy's labelled admitted predictions read in"
                " time; null when none was labelled.",
            ),
        )
    ),
    _label("worker", "The worker that produced the snapshot."),
    _version(),
)

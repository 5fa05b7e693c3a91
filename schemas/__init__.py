"""cachecast's public event contract.

Four records travel on Kafka as JSON: :class:`AccessEvent` (producers ->
cachecast), :class:`WarmupCommand` (cachecast -> writers and any warmup
consumer), :class:`WarmupOutcome` and :class:`MetricsSnapshot`. Each has a
JSON Schema file beside this module (``schemas/*.schema.json``), so producers
in any language can validate what they send. Decode untrusted bytes with the
``decode_*`` functions: they validate and raise :class:`InvalidEvent` with a
reason a human can act on.
"""

from schemas.contracts import (
    CONTRACT_VERSION,
    MAX_BATCH_EVENTS,
    MAX_KEY_LENGTH,
    MAX_NAMESPACE_LENGTH,
    MAX_RECORD_BYTES,
    MAX_TAGS,
    MAX_TS,
    OPS,
    OUTCOMES,
    REASONS,
    STATUSES,
)
from schemas.decode import (
    Decoded,
    InvalidEvent,
    Reject,
    decode_access,
    decode_access_dicts,
    decode_access_event,
    decode_metrics_snapshot,
    decode_warmup_command,
    decode_warmup_commands,
    decode_warmup_outcome,
    decode_warmup_outcomes,
)
from schemas.records import AccessEvent, MetricsSnapshot, WarmupCommand, WarmupOutcome

__all__ = [
    "CONTRACT_VERSION",
    "MAX_BATCH_EVENTS",
    "MAX_KEY_LENGTH",
    "MAX_NAMESPACE_LENGTH",
    "MAX_RECORD_BYTES",
    "MAX_TAGS",
    "MAX_TS",
    "OPS",
    "OUTCOMES",
    "REASONS",
    "STATUSES",
    "AccessEvent",
    "Decoded",
    "InvalidEvent",
    "MetricsSnapshot",
    "Reject",
    "WarmupCommand",
    "WarmupOutcome",
    "decode_access",
    "decode_access_dicts",
    "decode_access_event",
    "decode_metrics_snapshot",
    "decode_warmup_command",
    "decode_warmup_commands",
    "decode_warmup_outcome",
    "decode_warmup_outcomes",
]

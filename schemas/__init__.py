"""cachecast's public event contract.

Four records travel on Kafka as JSON: :class:`AccessEvent` (producers ->
cachecast), :class:`WarmupCommand` (cachecast -> writers and any warmup
consumer), :class:`WarmupOutcome` and :class:`MetricsSnapshot`. Each has a
JSON Schema file beside this module (``schemas/*.schema.json``), so producers
in any language can validate what they send. Decode untrusted bytes with the
``decode_*`` functions: they validate and raise :class:`InvalidEvent` with a
reason a human can act on.
"""

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
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

# The decoders build the Faust records, and Faust is the worker's dependency, not
# the client's: they load on first use, so `import pipeline.client` (which needs
# only schemas.contracts) does not import Faust.
_LAZY: dict[str, str] = {
    "Decoded": "schemas.decode",
    "InvalidEvent": "schemas.decode",
    "Reject": "schemas.decode",
    "decode_access": "schemas.decode",
    "decode_access_dicts": "schemas.decode",
    "decode_access_event": "schemas.decode",
    "decode_metrics_snapshot": "schemas.decode",
    "decode_warmup_command": "schemas.decode",
    "decode_warmup_commands": "schemas.decode",
    "decode_warmup_outcome": "schemas.decode",
    "decode_warmup_outcomes": "schemas.decode",
    "AccessEvent": "schemas.records",
    "MetricsSnapshot": "schemas.records",
    "WarmupCommand": "schemas.records",
    "WarmupOutcome": "schemas.records",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'schemas' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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

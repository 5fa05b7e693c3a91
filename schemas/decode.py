"""Bytes from Kafka into validated records, or a reason a human can act on.

A Kafka record value holds one event (a JSON object) or a batch (a JSON
array of objects). Producers batch because a stream event costs far more than
decoding one. Two levels of failure:

* the record as a whole is unusable (not JSON, too large, neither object nor
  array, too many events): :class:`InvalidEvent` is raised;
* one event inside a batch is bad: it becomes a :class:`Reject` (its index,
  the reason, its own JSON bytes) and the rest of the batch is kept, so one bad
  event never costs the good ones.

>>> batch = decode_access(b'[{"ts": 1, "namespace": "users", "key": "42", "op": "get",'
...                       b' "outcome": "hit"}, {"ts": -5}]')
>>> [e.key for e in batch.records], batch.rejects[0].reason
(['42'], 'event [1]: ts: -5 is below the minimum 0')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson

from schemas import contracts
from schemas.records import AccessEvent, MetricsSnapshot, WarmupCommand, WarmupOutcome
from schemas.spec import FieldError, Validator, compile_validator

__all__ = [
    "Decoded",
    "InvalidEvent",
    "Reject",
    "decode_access",
    "decode_access_dicts",
    "decode_access_event",
    "decode_metrics_snapshot",
    "decode_warmup_command",
    "decode_warmup_command_dicts",
    "decode_warmup_commands",
    "decode_warmup_outcome",
    "decode_warmup_outcome_dicts",
    "decode_warmup_outcomes",
    "validate_access_event",
    "validate_metrics_snapshot",
    "validate_warmup_command",
    "validate_warmup_outcome",
]

R = TypeVar("R")
Raw = bytes | bytearray | memoryview | str

validate_access_event: Validator = compile_validator(contracts.ACCESS_EVENT)
validate_warmup_command: Validator = compile_validator(contracts.WARMUP_COMMAND)
validate_warmup_outcome: Validator = compile_validator(contracts.WARMUP_OUTCOME)
validate_metrics_snapshot: Validator = compile_validator(contracts.METRICS_SNAPSHOT)


class InvalidEvent(ValueError):
    """Input that cannot become a record. ``reason`` says why; ``field`` names the field."""

    def __init__(self, reason: str, *, field: str | None = None, index: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field
        self.index = index


@dataclass(frozen=True, slots=True)
class Reject:
    """One bad event of a batch: where it was, why, and its original JSON."""

    index: int
    reason: str
    field: str | None
    raw: bytes


@dataclass(slots=True)
class Decoded(Generic[R]):
    """The good records of a Kafka record value, and the rejected events."""

    records: list[R] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


def _parse(data: Raw | None, what: str) -> Any:
    if data is None:
        raise InvalidEvent(f"null record (a tombstone): expected a JSON {what} or an array of them")
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    size = len(data)
    if size == 0:
        raise InvalidEvent(f"empty record: expected a JSON {what} or an array of them")
    if size > contracts.MAX_RECORD_BYTES:
        raise InvalidEvent(
            f"record is {size} bytes; the limit is {contracts.MAX_RECORD_BYTES} "
            "(split the batch, or check for oversized keys)"
        )
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not valid JSON: {exc}") from None


def _original(item: Any, data: Raw) -> bytes:
    """One bad event's JSON; the whole record when the event cannot be re-encoded (too deep)."""
    try:
        return orjson.dumps(item)
    except orjson.JSONEncodeError:
        return data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)


def _documents(
    data: Raw | None, validate: Validator, what: str
) -> tuple[list[dict[str, Any]], list[Reject]]:
    doc = _parse(data, what)
    assert data is not None  # _parse refused None
    if isinstance(doc, dict):
        try:
            return [validate(doc)], []
        except FieldError as exc:
            raise InvalidEvent(str(exc), field=exc.field) from None
    if not isinstance(doc, list):
        raise InvalidEvent(f"expected a JSON {what} or an array of them, got {type(doc).__name__}")
    if len(doc) > contracts.MAX_BATCH_EVENTS:
        raise InvalidEvent(
            f"batch holds {len(doc)} events; the limit is {contracts.MAX_BATCH_EVENTS}"
        )
    good: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    for index, item in enumerate(doc):
        if not isinstance(item, dict):
            rejects.append(
                Reject(
                    index,
                    f"event [{index}]: expected a JSON {what}, got {type(item).__name__}",
                    None,
                    _original(item, data),
                )
            )
            continue
        try:
            good.append(validate(item))
        except FieldError as exc:
            rejects.append(
                Reject(index, f"event [{index}]: {exc}", exc.field, _original(item, data))
            )
    return good, rejects


def _decoder(
    validate: Validator, build: Callable[..., R], what: str
) -> tuple[Callable[[Raw | None], Decoded[R]], Callable[[Raw | None], R]]:
    def decode_many(data: Raw | None) -> Decoded[R]:
        docs, rejects = _documents(data, validate, what)
        return Decoded([build(**d) for d in docs], rejects)

    def decode_one(data: Raw | None) -> R:
        doc = _parse(data, what)
        if not isinstance(doc, dict):
            raise InvalidEvent(f"expected a JSON {what}, got {type(doc).__name__}")
        try:
            return build(**validate(doc))
        except FieldError as exc:
            raise InvalidEvent(str(exc), field=exc.field) from None

    return decode_many, decode_one


def decode_access_dicts(data: Raw | None) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Like :func:`decode_access` but yields validated dicts: the agents' fast path."""
    return _documents(data, validate_access_event, "object (an access event)")


def decode_warmup_command_dicts(data: Raw | None) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Validated WarmupCommand dicts (and rejects) from one record value."""
    return _documents(data, validate_warmup_command, "object (a warmup command)")


def decode_warmup_outcome_dicts(data: Raw | None) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Validated WarmupOutcome dicts (and rejects) from one record value."""
    return _documents(data, validate_warmup_outcome, "object (a warmup outcome)")


decode_access, decode_access_event = _decoder(
    validate_access_event, AccessEvent, "object (an access event)"
)
decode_warmup_commands, decode_warmup_command = _decoder(
    validate_warmup_command, WarmupCommand, "object (a warmup command)"
)
decode_warmup_outcomes, decode_warmup_outcome = _decoder(
    validate_warmup_outcome, WarmupOutcome, "object (a warmup outcome)"
)
_decode_snapshots, decode_metrics_snapshot = _decoder(
    validate_metrics_snapshot, MetricsSnapshot, "object (a metrics snapshot)"
)

"""Dead letters: what an agent could not use, kept whole, with the reason beside it.

A dead letter's Kafka value is the original bytes (the whole record, or one
event's JSON when only that event of a batch was bad), so nothing is lost and a
fixed consumer can replay it. The reason and provenance travel as headers, the
convention Kafka Connect uses for its dead-letter queues:

==========================  ==============================================
header                      value
==========================  ==============================================
``cachecast.reason``        why it was rejected (UTF-8 text)
``cachecast.field``         the offending field, when known
``cachecast.source``        ``topic/partition/offset`` of the original record
``cachecast.index``         position in the batch, for one bad event of a batch
``cachecast.agent``         which agent rejected it
==========================  ==============================================

>>> headers = dead_letter_headers("ts: is required but missing", source="access/0/17",
...                               agent="observe", field="ts", index=3)
>>> dict(headers)["cachecast.index"]
b'3'
>>> reason_of(headers)
'ts: is required but missing'
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["dead_letter_headers", "reason_of"]

Headers = list[tuple[str, bytes]]


def dead_letter_headers(
    reason: str,
    *,
    source: str,
    agent: str,
    field: str | None = None,
    index: int | None = None,
) -> Headers:
    """The headers of one dead letter."""
    headers: Headers = [
        ("cachecast.reason", reason.encode("utf-8", "replace")),
        ("cachecast.source", source.encode()),
        ("cachecast.agent", agent.encode()),
    ]
    if field is not None:
        headers.append(("cachecast.field", field.encode("utf-8", "replace")))
    if index is not None:
        headers.append(("cachecast.index", str(index).encode()))
    return headers


def reason_of(headers: Iterable[tuple[str, bytes]]) -> str | None:
    """The rejection reason carried by a dead letter's headers."""
    for name, value in headers:
        if name == "cachecast.reason":
            return value.decode("utf-8", "replace")
    return None

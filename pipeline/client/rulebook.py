"""The prefetch rules a client keeps in memory, and how it follows their changes.

The pipeline publishes every rule twice (see :mod:`pipeline.prefetch`): into
sharded hashes, the whole current table, and as one entry per publishing round
into the namespace's rule stream ``{prefix}#rulelog:{ns}``, the changes. A
client loads the table once, then follows the stream (as a Kafka Streams
GlobalKTable follows a compacted topic), so that when a key misses, its rule is
a dictionary lookup: no round trip stands between a miss and the loads it
triggers. Rules the client already holds survive Redis evicting a hash or the
stream under memory pressure (``allkeys-lru``). A client that lost stream entries
reads the table again; deletions reach it there too, as tombstones kept for
:data:`~pipeline.prefetch.TOMBSTONE_S`.

The table is bounded per namespace; past the bound, the rules changed least
recently go first.

>>> book = RuleBook(max_rules=2)
>>> book.apply("shop", [("a", (("b", 0.9),)), ("c", (("d", 0.8),)), ("e", (("f", 0.7),))])
>>> book.get("shop", "a") is None, book.get("shop", "e")
(True, (('f', 0.7),))
>>> book.apply("shop", [("e", ())])  # an empty rule deletes it
>>> book.get("shop", "e") is None, len(book)
(True, 1)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Final

from pipeline.client.keys import RULE_SHARDS, rules_stream
from pipeline.prefetch import decode_rule, decode_updates

__all__ = [
    "STREAM_FIELD",
    "Rule",
    "RuleBook",
    "bootstrap_commands",
    "fell_behind",
    "follow_commands",
    "newest_id",
    "parse_entries",
    "table_rules",
]

Rule = tuple[tuple[str, float], ...]
"""A rule as held in memory: (successor, probability) pairs, best first."""

#: The field of a rule-stream entry that holds its changes.
STREAM_FIELD: Final = b"u"


class RuleBook:
    """Per namespace, trigger -> rule, bounded; safe to update from one thread while read."""

    def __init__(self, max_rules: int = 50_000) -> None:
        if max_rules < 1:
            raise ValueError("max_rules must be >= 1")
        self.max_rules = max_rules
        self._rules: dict[str, OrderedDict[str, Rule]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sum(map(len, self._rules.values()))

    def get(self, namespace: str, trigger: str) -> Rule | None:
        table = self._rules.get(namespace)
        return None if table is None else table.get(trigger)

    def apply(self, namespace: str, updates: Iterable[tuple[str, Rule]]) -> None:
        """Set (or, with an empty rule, delete) rules of ``namespace``."""
        with self._lock:
            table = self._rules.get(namespace)
            if table is None:
                table = self._rules[namespace] = OrderedDict()
            for trigger, rule in updates:
                if not rule:
                    table.pop(trigger, None)
                    continue
                table[trigger] = rule
                table.move_to_end(trigger)
            while len(table) > self.max_rules:
                table.popitem(last=False)


def follow_commands(
    prefix: str, namespace: str, last: bytes, count: int
) -> list[tuple[str | bytes, ...]]:
    """One round of following: the stream's oldest entry, then the entries after ``last``."""
    stream = rules_stream(prefix, namespace)
    return [
        ("XRANGE", stream, "-", "+", "COUNT", "1"),
        ("XRANGE", stream, b"(" + last, "+", "COUNT", str(count)),
    ]


def fell_behind(oldest_reply: object, last: bytes) -> bool:
    """Whether entries after ``last`` may have been trimmed from the stream (it keeps a
    bounded number of rounds): its oldest entry is newer than ``last``. The client then
    reads the table again instead of missing those changes for good.

    >>> fell_behind([[b"5-0", []]], b"3-0"), fell_behind([[b"5-0", []]], b"7-1")
    (True, False)
    >>> fell_behind([], b"3-0")
    False
    """
    oldest = newest_id(oldest_reply)  # the first id of the reply, whatever its order
    return oldest != b"0-0" and _stream_id(oldest) > _stream_id(last)


def _stream_id(raw: bytes) -> tuple[int, int]:
    ms, _, seq = raw.partition(b"-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return 0, 0


def bootstrap_commands(prefix: str, namespace: str) -> list[tuple[str, ...]]:
    """What a client reads to start following ``namespace``: the stream's newest id, then
    every shard of the rule table (read after the id, so no change falls in between)."""
    commands: list[tuple[str, ...]] = [
        ("XREVRANGE", rules_stream(prefix, namespace), "+", "-", "COUNT", "1")
    ]
    commands += [("HGETALL", f"{prefix}#rules:{namespace}:{shard}") for shard in range(RULE_SHARDS)]
    return commands


def newest_id(reply: object) -> bytes:
    """The id of the newest stream entry from an ``XREVRANGE ... COUNT 1`` reply ("0-0": none)."""
    if isinstance(reply, list) and reply and isinstance(reply[0], list | tuple) and reply[0]:
        first = reply[0][0]
        if isinstance(first, bytes):
            return first
        if isinstance(first, str):
            return first.encode()
    return b"0-0"


def table_rules(replies: Iterable[object]) -> list[tuple[str, Rule]]:
    """The rules in ``HGETALL`` replies of the shards (malformed ones skipped), as updates:
    a tombstone (a rule with no successors) deletes the rule the client holds.

    >>> table_rules([{b"a": b'[1,5.0,0,[["b",0.9]]]', b"c": b'[1,6.0,0,[]]', b"d": b"?"}])
    [('a', (('b', 0.9),)), ('c', ())]
    """
    out: list[tuple[str, Rule]] = []
    for reply in replies:
        if not isinstance(reply, dict):
            continue
        for field, raw in reply.items():
            trigger = field.decode("utf-8", "replace") if isinstance(field, bytes) else str(field)
            rule = decode_rule(raw)
            if rule is not None:
                out.append((trigger, rule.successors))
    return out


def parse_entries(reply: object) -> tuple[bytes | None, list[tuple[str, Rule]]]:
    """The last id and the changes of an ``XRANGE``/``XREAD`` list of ``(id, fields)`` entries."""
    last: bytes | None = None
    changes: list[tuple[str, Rule]] = []
    if not isinstance(reply, list):
        return None, changes
    for entry in reply:
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            continue
        entry_id, fields = entry
        if isinstance(entry_id, str):
            entry_id = entry_id.encode()
        if not isinstance(entry_id, bytes):
            continue
        last = entry_id
        if isinstance(fields, dict):
            changes.extend(decode_updates(fields.get(STREAM_FIELD)))
    return last, changes

"""Prefetch rules on the wire: how the pipeline publishes them and a client reads them.

The pipeline learns rules (:class:`~pipeline.models.PrefetchRules`); clients
apply them the moment a trigger misses. They meet in Redis, in the hashes
``{prefix}#rules:{namespace}:{shard}`` (:func:`~pipeline.client.keys.rules_hash`):
field = the trigger key, value = the rule. A client reads the rule of a key
that just missed with one ``HGET``, sent while its own load is under way, so
a rule costs the caller no wait; hits never read rules.

A rule value is compact JSON, versioned by its first element::

    [1, compiled_at, ttl, [[successor, probability], ...]]

``compiled_at`` is when the pipeline compiled it (Unix seconds), ``ttl`` the
TTL in seconds to give the loaded values (0: each key's smart TTL, from
``{prefix}#ttl:{namespace}``, as the worker's own warms use), and the
successors are keys of the same namespace, most probable first, with the
calibrated probability that they are read soon after the trigger.

A rule with no successors is a *deletion*: in the rule stream it deletes the
trigger's rule, and in a hash (a tombstone) it tells a client that reads the
table again after losing stream entries that the rule is gone. Tombstones stay
at least ``TOMBSTONE_S`` seconds (longer when the rule stream's rounds are
sparser), then the field is deleted if it still holds that tombstone.

Everything here is pure: :class:`RuleSet` decides what to write and delete,
bounded per namespace; the predict agent carries out its plans.

>>> raw = encode_rule([("7", 0.91), ("8", 0.62)], compiled_at=1700000000.0)
>>> raw
b'[1,1700000000.0,0,[["7",0.91],["8",0.62]]]'
>>> decode_rule(raw)
PrefetchRule(successors=(('7', 0.91), ('8', 0.62)), ttl=0, compiled_at=1700000000.0)
>>> decode_rule(b'[9,0,0,[]]') is None  # a format this client does not know: ignored
True
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from schemas.contracts import MAX_KEY_LENGTH, MAX_TTL_S

__all__ = [
    "MAX_RULE_BYTES",
    "MAX_SUCCESSORS",
    "MAX_UPDATE_BYTES",
    "RULE_FORMAT",
    "TOMBSTONE_S",
    "PrefetchRule",
    "RulePlan",
    "RuleSet",
    "decode_rule",
    "decode_updates",
    "encode_rule",
    "encode_updates",
]

RULE_FORMAT: Final = 1
#: Most successors a rule may name (a client ignores the rest).
MAX_SUCCESSORS: Final = 8
#: A longer value is not a rule this project wrote: it is ignored unread.
MAX_RULE_BYTES: Final = 16 * 1024
#: Nor is a longer rule-stream entry.
MAX_UPDATE_BYTES: Final = 64 * 1024 * 1024
#: How long a deleted rule stays in its hash as a tombstone (an empty rule) at least, so
#: that a client reading the table after losing stream entries drops it too.
TOMBSTONE_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class PrefetchRule:
    """What to load when the trigger misses."""

    successors: tuple[tuple[str, float], ...]
    ttl: int
    compiled_at: float


def encode_rule(
    successors: Sequence[tuple[str, float]], *, compiled_at: float, ttl: int = 0
) -> bytes:
    """The stored form of a rule (probabilities rounded to 3 digits)."""
    if len(successors) > MAX_SUCCESSORS:
        raise ValueError(f"a rule names at most {MAX_SUCCESSORS} successors")
    if not 0 <= ttl <= MAX_TTL_S:
        raise ValueError(f"ttl must be within 0..{MAX_TTL_S}")
    body = [[key, round(float(p), 3)] for key, p in successors]
    return orjson.dumps([RULE_FORMAT, round(compiled_at, 3), ttl, body])


def encode_updates(updates: Sequence[tuple[str, Sequence[tuple[str, float]]]]) -> bytes:
    """One entry of a namespace's rule stream: ``[[trigger, [[successor, p], ...]], ...]``.

    An empty successor list deletes the trigger's rule.
    """
    return orjson.dumps(
        [[trigger, [[key, round(float(p), 3)] for key, p in rule]] for trigger, rule in updates]
    )


def decode_updates(raw: bytes | str | None) -> list[tuple[str, tuple[tuple[str, float], ...]]]:
    """The changes in one stream entry; malformed items are skipped, never raised."""
    if raw is None or len(raw) > MAX_UPDATE_BYTES:
        return []
    try:
        doc: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(doc, list):
        return []
    out: list[tuple[str, tuple[tuple[str, float], ...]]] = []
    for item in doc:
        if not isinstance(item, list) or len(item) != 2:
            continue
        trigger, body = item
        if type(trigger) is not str or not 0 < len(trigger) <= MAX_KEY_LENGTH:
            continue
        successors = _successors(body)
        if successors is not None:
            out.append((trigger, successors))
    return out


def _successors(body: Any) -> tuple[tuple[str, float], ...] | None:
    if not isinstance(body, list):
        return None
    successors: list[tuple[str, float]] = []
    for item in body[:MAX_SUCCESSORS]:
        if not isinstance(item, list) or len(item) != 2:
            return None
        key, p = item
        if type(key) is not str or not 0 < len(key) <= MAX_KEY_LENGTH:
            return None
        if type(p) not in (int, float) or not 0.0 <= p <= 1.0:
            return None
        successors.append((key, float(p)))
    return tuple(successors)


def decode_rule(raw: bytes | str | None) -> PrefetchRule | None:
    """The rule stored in ``raw``, or None when absent, of an unknown format, or malformed.

    A rule comes from Redis, where anyone with access could have written
    anything: every field is checked, and a bad value is simply no rule.
    """
    if raw is None or len(raw) > MAX_RULE_BYTES:
        return None
    try:
        doc: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, list) or len(doc) != 4 or doc[0] != RULE_FORMAT:
        return None
    _, compiled_at, ttl, body = doc
    if type(compiled_at) not in (int, float) or type(ttl) is not int or not 0 <= ttl <= MAX_TTL_S:
        return None
    successors = _successors(body)
    if successors is None:
        return None
    return PrefetchRule(successors, ttl, float(compiled_at))


@dataclass(slots=True)
class RulePlan:
    """Redis writes of one publishing round: per hash, fields to set and fields to delete.

    ``writes`` holds rules and ``tombstones`` (empty rules); ``deleted`` counts the
    rules this round deletes, as tombstones or as fields deleted outright.
    ``purges`` are tombstones to delete only if the field still holds the very
    bytes written (another worker may have published the trigger since).
    """

    writes: dict[str, dict[str, bytes]] = field(default_factory=dict)
    deletes: dict[str, list[str]] = field(default_factory=dict)
    #: Per namespace, the same changes as one rule-stream entry (:func:`encode_updates`).
    updates: dict[str, list[tuple[str, Sequence[tuple[str, float]]]]] = field(default_factory=dict)
    purges: dict[str, dict[str, bytes]] = field(default_factory=dict)
    deleted: int = 0
    tombstones: int = 0

    @property
    def rules_written(self) -> int:
        """Rules (not tombstones) this plan writes."""
        return sum(map(len, self.writes.values())) - self.tombstones

    def __len__(self) -> int:
        return (
            sum(map(len, self.writes.values()))
            + sum(map(len, self.deletes.values()))
            + sum(map(len, self.purges.values()))
        )

    @property
    def hashes(self) -> set[str]:
        """Every hash this plan touches (each gets its expiry renewed)."""
        return set(self.writes) | set(self.deletes) | set(self.purges)


class RuleSet:
    """What one worker has published, bounded per namespace, and what to change next.

    ``max_rules`` triggers per namespace at most: past it, the rules changed
    least recently are deleted (hot triggers keep changing, so they stay).
    A trigger whose rule became empty is deleted. A rule that did not change is
    not written again. Prefetch rules (the kind clients follow through the rule
    stream) are deleted as tombstones, at most ``max_rules // 4`` per namespace,
    each purged after ``tombstone_s`` (or sooner, past that bound; purges happen
    in rounds that have changes).

    >>> rules = RuleSet("c:", max_rules=2)
    >>> plan = rules.plan([("shop:a", [("shop:b", 0.9)]), ("shop:x", [])], now=5.0)
    >>> plan.writes
    {'c:#rules:shop:3': {'a': b'[1,5.0,0,[["b",0.9]]]'}}
    >>> plan = rules.plan([("shop:c", [("shop:d", 0.8)]), ("shop:e", [("shop:f", 0.7)])], now=6.0)
    >>> plan.writes['c:#rules:shop:3']['a'], plan.deleted  # 'a' changed least recently: out
    (b'[1,6.0,0,[]]', 1)
    >>> rules.plan([("shop:c", [("shop:d", 0.1)])], now=6.0 + TOMBSTONE_S).purges
    {'c:#rules:shop:3': {'a': b'[1,6.0,0,[]]'}}
    """

    def __init__(
        self,
        prefix: str,
        max_rules: int = 50_000,
        kind: str = "rules",
        tombstone_s: float = TOMBSTONE_S,
    ) -> None:
        if max_rules < 1:
            raise ValueError("max_rules must be >= 1")
        if tombstone_s < 0:
            raise ValueError("tombstone_s must be >= 0")
        self.prefix = prefix
        self.max_rules = max_rules
        #: ``"rules"`` (prefetch rules: hashes and the rule stream) or ``"userrules"``
        #: (user rules: hashes only; a client reads one as a session opens).
        self.kind = kind
        #: Whether clients follow these rules through the namespace's rule stream.
        self.streamed = kind == "rules"
        #: Per namespace: trigger -> the successors published for it, least recently changed first.
        self._published: dict[str, OrderedDict[str, tuple[tuple[str, float], ...]]] = {}
        #: Per namespace: trigger -> when its tombstone was written (its bytes follow from
        #: that: ``encode_rule((), compiled_at=when)``), oldest first.
        self._tombstones: dict[str, OrderedDict[str, float]] = {}
        self.max_tombstones = max(1, max_rules // 4)
        self.tombstone_s = tombstone_s

    def __len__(self) -> int:
        return sum(map(len, self._published.values()))

    def plan(
        self, changes: Iterable[tuple[Any, Sequence[tuple[Any, float]]]], *, now: float
    ) -> RulePlan:
        """Turn ``(trigger, rule)`` changes (engine keys ``"ns:key"``) into Redis writes.

        Successors from another namespace than their trigger are dropped (a rule
        loads keys of its own namespace only).
        """
        # pipeline.client's package imports the client, which imports this module.
        from pipeline.client.keys import rules_hash

        plan = RulePlan()
        for trigger, rule in changes:
            namespace, sep, key = str(trigger).partition(":")
            if not sep or not key:
                continue
            published = self._published.get(namespace)
            if published is None:
                published = self._published[namespace] = OrderedDict()
            successors = tuple(
                [
                    (successor[len(namespace) + 1 :], p)
                    for successor, p in ((str(s), p) for s, p in rule)
                    if successor.startswith(namespace + ":") and len(successor) > len(namespace) + 1
                ][:MAX_SUCCESSORS]
            )
            where = rules_hash(self.prefix, namespace, key, self.kind)
            if not successors:
                if published.pop(key, None) is not None:
                    self._delete(plan, namespace, key, where, now)
                continue
            old = published.get(key)
            if old is not None and _same_successors(old, successors):
                published.move_to_end(key)
                continue
            published[key] = successors
            published.move_to_end(key)
            tombstones = self._tombstones.get(namespace)
            if tombstones is not None:
                tombstones.pop(key, None)  # the rule's new value replaces its tombstone
            plan.writes.setdefault(where, {})[key] = encode_rule(successors, compiled_at=now)
            plan.updates.setdefault(namespace, []).append((key, successors))
            while len(published) > self.max_rules:
                evicted, _ = published.popitem(last=False)
                evicted_at = rules_hash(self.prefix, namespace, evicted, self.kind)
                self._delete(plan, namespace, evicted, evicted_at, now)
        self._purge(plan, now)
        plan.writes = {where: fields for where, fields in plan.writes.items() if fields}
        # Every tombstone of this round carries ``now``: count what is left of them.
        tombstone = encode_rule((), compiled_at=now)
        plan.tombstones = sum(
            raw == tombstone for fields in plan.writes.values() for raw in fields.values()
        )
        if not self.streamed:
            plan.updates = {}
        return plan

    def _delete(self, plan: RulePlan, namespace: str, key: str, where: str, now: float) -> None:
        """Delete the published rule of ``key`` (in hash ``where``) in ``plan``."""
        plan.deleted += 1
        plan.updates.setdefault(namespace, []).append((key, ()))
        if not self.streamed:  # nobody reads these hashes as a table: delete the field
            pending = plan.writes.get(where)
            if pending is not None:
                pending.pop(key, None)
            plan.deletes.setdefault(where, []).append(key)
            return
        tombstones = self._tombstones.get(namespace)
        if tombstones is None:
            tombstones = self._tombstones[namespace] = OrderedDict()
        tombstones[key] = now
        tombstones.move_to_end(key)
        # Over a rule of this round too.
        plan.writes.setdefault(where, {})[key] = encode_rule((), compiled_at=now)

    def _purge(self, plan: RulePlan, now: float) -> None:
        """Delete tombstones older than ``tombstone_s``, or past the bound, oldest first."""
        from pipeline.client.keys import rules_hash

        for namespace, tombstones in self._tombstones.items():
            while tombstones:
                key, when = next(iter(tombstones.items()))
                if now - when < self.tombstone_s and len(tombstones) <= self.max_tombstones:
                    break
                del tombstones[key]
                where = rules_hash(self.prefix, namespace, key, self.kind)
                pending = plan.writes.get(where)
                if pending is not None and pending.pop(key, None) is not None:
                    # Written this round, past the bound: the field holds this worker's
                    # deleted rule or an older tombstone (unless another worker wrote it
                    # since: workers share the table, the last write wins), so it goes.
                    plan.deletes.setdefault(where, []).append(key)
                else:
                    plan.purges.setdefault(where, {})[key] = encode_rule((), compiled_at=when)

    def plan_users(
        self, changes: Iterable[tuple[Any, Sequence[tuple[Any, float]]]], *, now: float
    ) -> RulePlan:
        """Turn ``(user, rule)`` changes (:meth:`WarmEngine.user_rules`) into Redis writes.

        A user's rule is split by the namespaces of its keys: the trigger is the
        user in each namespace, and a namespace where the user's rule names no key
        any more has it deleted.

        >>> users = RuleSet("c:", kind="userrules")
        >>> users.plan_users([("ada", [("shop:a", 0.9), ("news:b", 0.7)])], now=5.0).writes
        {'c:#userrules:shop:8': {'ada': b'[1,5.0,0,[["a",0.9]]]'}, \
'c:#userrules:news:8': {'ada': b'[1,5.0,0,[["b",0.7]]]'}}
        >>> users.plan_users([("ada", [("shop:a", 0.9)])], now=6.0).deletes
        {'c:#userrules:news:8': ['ada']}
        """
        split: list[tuple[str, list[tuple[Any, float]]]] = []
        for user, rule in changes:
            # Every namespace published so far: an empty rule deletes the user's there.
            by_namespace: dict[str, list[tuple[Any, float]]] = {ns: [] for ns in self._published}
            for successor, p in rule:
                namespace, sep, key = str(successor).partition(":")
                if sep and key:
                    by_namespace.setdefault(namespace, []).append((successor, p))
            split.extend((f"{ns}:{user}", keys) for ns, keys in by_namespace.items())
        return self.plan(split, now=now)

    def hashes(self) -> list[str]:
        """Every hash that holds rules this worker published (to check they still exist)."""
        from pipeline.client.keys import RULE_SHARDS

        namespaces = [ns for ns, published in self._published.items() if published]
        namespaces += [
            ns for ns, tombstones in self._tombstones.items() if tombstones and ns not in namespaces
        ]
        return [
            f"{self.prefix}#{self.kind}:{namespace}:{shard}"
            for namespace in namespaces
            for shard in range(RULE_SHARDS)
        ]

    def restore(self, lost: Iterable[str], *, now: float) -> RulePlan:
        """Writes that put back every published rule of the ``lost`` hashes.

        Redis may evict a rule hash like any other key (``allkeys-lru``), or lose it
        in a restart; what this worker published is rewritten from memory. The rules
        go to the rule stream again too: a client that follows the stream (and read
        the table before they were published) would otherwise never hold them.
        """
        from pipeline.client.keys import rules_hash

        gone = set(lost)
        plan = RulePlan()
        for namespace, published in self._published.items():
            for key, successors in published.items():
                where = rules_hash(self.prefix, namespace, key, self.kind)
                if where in gone:
                    plan.writes.setdefault(where, {})[key] = encode_rule(
                        successors, compiled_at=now
                    )
                    if self.streamed:
                        plan.updates.setdefault(namespace, []).append((key, successors))
        for namespace, tombstones in self._tombstones.items():
            for key, when in tombstones.items():
                where = rules_hash(self.prefix, namespace, key, self.kind)
                if where in gone and now - when < self.tombstone_s:
                    # The deletions it held, for clients yet to read it.
                    plan.writes.setdefault(where, {})[key] = encode_rule((), compiled_at=when)
                    plan.tombstones += 1
        return plan

    def forget(self) -> None:
        """Forget what was published (after the hashes were lost, e.g. Redis restarted).

        Tombstones are forgotten too: unpurged, they stay until their hash expires
        (a day after the last write to it).
        """
        self._published.clear()
        self._tombstones.clear()


def _same_successors(old: Sequence[tuple[str, float]], new: Sequence[tuple[str, float]]) -> bool:
    """Equal successors with probabilities within 0.05: not worth a write."""
    if len(old) != len(new):
        return False
    return all(
        ka == kb and abs(pa - pb) < 0.05 for (ka, pa), (kb, pb) in zip(old, new, strict=True)
    )

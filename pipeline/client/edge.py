"""Edge warms: what the cache client needs to act on prefetch rules itself.

When a key misses (or its warmed value is read for the first time), the client
reads that key's prefetch rule (:mod:`pipeline.prefetch`) and loads the keys it
names in the background, through the namespace's loader, so that they are in
Redis, or on their way, when the application asks for them a few requests
later. This module holds what the asyncio and the blocking clients share:

* the namespace loaders a client runs edge warms through: the very
  ``CACHECAST_LOADERS`` configuration the worker reads, plus any registered
  in code (:func:`guarded`); each behind its own guards (concurrency, rate,
  timeout, circuit breaker), so edge warms have their own budget per namespace;
* the Redis scripts: a load in flight is announced by a *loading mark*
  (``SET NX PX``; see :func:`pipeline.codec.loading mark`) that other clients
  wait on instead of fetching again; the loaded value replaces the loading mark
  only if it is still the writer's own (compare-and-set), with the warm marker
  beside it, exactly as the worker's warms are marked.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from pipeline.client.core import PRIORITY_RANK, TAG_ADD_SCRIPT, CacheCore
from pipeline.client.keys import InvalidKeyError, validate_key
from pipeline.client.rulebook import Rule, RuleBook
from pipeline.codec import HEADER_SIZE
from pipeline.loaders import (
    CallableLoader,
    GuardedLoader,
    Loader,
    LoaderConfig,
    loaders_from_config,
)

__all__ = [
    "ABSENT",
    "EDGE_CAS_SCRIPT",
    "EDGE_WRITE_SCRIPT",
    "RELEASE_SCRIPT",
    "SCALAR_SCRIPTS",
    "EdgeTokens",
    "claim_expiry_ms",
    "guarded",
    "namespace_loaders",
    "rule_to_apply",
    "worth_loading",
]

#: Replace our loading mark (or nothing) by the value and set the warm marker.
#: KEYS: value, marker; ARGV: value bytes, ttl, our loading mark. Returns 1 if written.
EDGE_WRITE_SCRIPT: Final = """
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
  return 1
end
return 0
"""
#: The same for a Redis Cluster, where the marker lives in another slot: value only.
EDGE_CAS_SCRIPT: Final = """
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""
#: Delete our loading mark after a failed load, so that readers stop waiting at once.
RELEASE_SCRIPT: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


#: The Lua scripts a client sends that answer with one value (the read line carries them).
SCALAR_SCRIPTS: Final = frozenset(
    {EDGE_WRITE_SCRIPT, EDGE_CAS_SCRIPT, RELEASE_SCRIPT, TAG_ADD_SCRIPT}
)


class _Absent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


#: What an edge flight yields when it loaded nothing (claimed elsewhere, refused, failed):
#: whoever joined it loads the key itself.
ABSENT: Any = _Absent()


class EdgeTokens:
    """Loading mark tokens unique to this client instance (random prefix + counter)."""

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex().encode()
        self._counter = itertools.count()

    def next(self) -> bytes:
        return self._prefix + b":" + str(next(self._counter)).encode()

    def owns(self, mark: bytes) -> bool:
        """Whether a loading mark (:func:`pipeline.codec.loading_mark`) is one of ours."""
        return mark[HEADER_SIZE:].startswith(self._prefix + b":")


LoaderSpec = GuardedLoader | Loader | Callable[[str, str], Any]
"""What :func:`guarded` accepts: a guarded loader, a loader, or ``func(namespace, key)``."""


def guarded(loader: LoaderSpec, config: LoaderConfig | None = None) -> GuardedLoader:
    """A :class:`~pipeline.loaders.GuardedLoader` for ``loader`` (as is if already guarded).

    A plain function ``func(namespace, key)`` may be async or not; a blocking
    one runs in a worker thread, as a database call must.
    """
    if isinstance(loader, GuardedLoader):
        return loader
    if hasattr(loader, "load") and hasattr(loader, "close"):
        return GuardedLoader(loader, config)
    if callable(loader):
        return GuardedLoader(CallableLoader(loader), config)
    raise TypeError(f"not a loader: {loader!r}")


def namespace_loaders(
    config: Mapping[str, Mapping[str, Any]], extra: Mapping[str, LoaderSpec] | None = None
) -> dict[str, GuardedLoader]:
    """Loaders per namespace: from ``CACHECAST_LOADERS``-style config, then ``extra``."""
    loaders = loaders_from_config(config)
    for namespace, loader in (extra or {}).items():
        loaders[namespace] = guarded(loader)
    return loaders


def rule_to_apply(core: CacheCore, rulebook: RuleBook, namespace: str, trigger: str) -> Rule | None:
    """The rule ``trigger`` fires now (None: it has none); counts the lookup and the hit."""
    stats = core.stats
    stats.rule_reads += 1
    rule = rulebook.get(namespace, trigger)
    if not rule:
        return None
    stats.rules_applied += 1
    return rule


def worth_loading(
    core: CacheCore,
    namespace: str,
    rule: Sequence[tuple[str, float]],
    busy: Callable[[str], bool],
    available: Callable[[], bool],
) -> list[tuple[str, str]]:
    """``(key, data key)`` of the successors a rule names that are worth loading now.

    Skipped (and counted): keys that are not valid keys, keys ``busy`` says are
    already loading in this client, and, once the loader's guards say no, the rest.
    Keys this client last set with ``priority="high"`` go first and ``"low"`` last
    (the rule's order otherwise), so a tight budget is spent on them first.
    """
    stats = core.stats
    base = core.base(namespace)
    todo: list[tuple[str, str]] = []
    if core.priorities:
        rank = core.priorities.get
        rule = sorted(rule, key=lambda item: rank(base + item[0], PRIORITY_RANK["normal"]))
    for successor, _ in rule:
        try:
            validate_key(successor)
        except InvalidKeyError:
            continue
        dkey = base + successor
        if busy(dkey):
            stats.edge_skipped += 1
            continue
        if not available():
            stats.edge_refused += 1
            continue
        todo.append((successor, dkey))
    return todo


def claim_expiry_ms(timeout_s: float) -> int:
    """How long a loading mark lives: the load's timeout and a margin for the write."""
    return int(timeout_s * 1000) + 500

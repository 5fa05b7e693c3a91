"""The observe agent's per-event work, compiled with the models (pyproject's compiled list).

For a batch of validated access events of one access partition: feed the
partition's smart-TTL model, note the keys whose TTL may have changed, group
the events by namespace (for the stats) and re-batch the reads by sequence
partition as slim rows (for the predict agent). An ``op="warm"`` event (an edge
warm a client carried out) goes to the stats only: it is neither a request for the
sequence models nor a read that restarts a key's life for the smart TTL.

>>> from pipeline.models import SmartTTL
>>> from pipeline.partitioning import PartitionCache
>>> touched: set[str] = set()
>>> events = [
...     {"ts": 1.0, "namespace": "shop", "key": "a", "op": "get", "outcome": "miss",
...      "user": "u1", "session": None, "client": "web", "warmed": False, "joined": False},
...     {"ts": 1.1, "namespace": "shop", "key": "a", "op": "set", "outcome": "none",
...      "user": "u1", "session": None, "client": "web", "warmed": False, "joined": False},
... ]
>>> by_namespace, by_partition = route(events, SmartTTL(), touched, PartitionCache(4))
>>> sorted(touched), len(by_namespace["shop"])
(['shop:a'], 2)
>>> [row["op"] for rows in by_partition.values() for row in rows]  # reads only
['get']
"""

from __future__ import annotations

from typing import Any, Final

from pipeline.models.ttl import SmartTTL
from pipeline.partitioning import PartitionCache
from schemas.contracts import READ_OPS

__all__ = ["SEQUENCE_FIELDS", "TTL_OPS", "route", "sequence_key"]

#: Accesses that (re)start a key's life in the cache: what the smart TTL learns from.
#: Not ``warm``: an edge warm is the client's guess, not an access.
TTL_OPS: Final = frozenset({"get", "mget", "set", "mset"})
#: What a row on the sequence topic keeps of an access event (what the models use).
#: ``joined`` with ``outcome``: a miss that joined a load in flight is, to the models,
#: a read the cache served (see :func:`pipeline.decide.Decider`); without it they
#: would take every concurrent reader of a loading key for a miss.
SEQUENCE_FIELDS: Final = ("ts", "namespace", "key", "op", "outcome", "user", "warmed", "joined")


def sequence_key(event: dict[str, Any]) -> str:
    """What orders an event for the sequence models: its user, else session, else client.

    User first, so that every session of a user meets the one model instance that
    holds the user's profile (similar users are found among those it holds).
    """
    found: str = event["user"] or event["session"] or event["client"] or "-"
    return found


def route(
    events: list[dict[str, Any]],
    ttl_model: SmartTTL,
    touched: set[str],
    partition_of: PartitionCache,
) -> tuple[dict[str, list[dict[str, Any]]], dict[int, list[dict[str, Any]]]]:
    """Learn TTLs; return the events by namespace and the read rows by sequence partition."""
    by_namespace: dict[str, list[dict[str, Any]]] = {}
    by_partition: dict[int, list[dict[str, Any]]] = {}
    for e in events:
        namespace: str = e["namespace"]
        key: str = e["key"]
        op: str = e["op"]
        full = namespace + ":" + key
        if op in TTL_OPS:
            ttl_model.learn_one(full, e["ts"])
            touched.add(full)
        group = by_namespace.get(namespace)
        if group is None:
            by_namespace[namespace] = [e]
        else:
            group.append(e)
        if op in READ_OPS:  # only requests teach the sequence models
            row = {
                "ts": e["ts"],
                "namespace": namespace,
                "key": key,
                "op": op,
                "outcome": e["outcome"],
                "user": e["user"],
                "warmed": e["warmed"],
                "joined": e["joined"],
            }
            partition = partition_of(sequence_key(e))
            rows = by_partition.get(partition)
            if rows is None:
                by_partition[partition] = [row]
            else:
                rows.append(row)
    return by_namespace, by_partition

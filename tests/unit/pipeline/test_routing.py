"""The observe agent's per-event routing: what the smart TTL, the stats and the models see."""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.config import Settings
from pipeline.decide import Decider, engine_config
from pipeline.models import SmartTTL, WarmEngine
from pipeline.partitioning import PartitionCache
from pipeline.routing import SEQUENCE_FIELDS, TTL_OPS, route, sequence_key
from schemas.contracts import READ_OPS
from schemas.decode import decode_access_dicts, validate_access_event


def _event(key: str, op: str, outcome: str, ts: float, **extra: Any) -> dict[str, Any]:
    doc = {"ts": ts, "namespace": "shop", "key": key, "op": op, "outcome": outcome}
    return validate_access_event({**doc, "user": "u1", "client": "web", **extra})


def test_an_edge_warm_goes_to_the_stats_only() -> None:
    assert "warm" not in TTL_OPS
    assert "warm" not in READ_OPS
    touched: set[str] = set()
    events = [
        _event("a", "warm", "none", 1.0, size_bytes=64, ttl=30),
        _event("b", "warm", "error", 1.1),
        _event("a", "get", "hit", 1.2, warmed=True, warm_path="edge"),
    ]
    by_namespace, by_partition = route(events, SmartTTL(), touched, PartitionCache(4))
    assert touched == {"shop:a"}  # learnt from the read, not from either warm
    assert [e["op"] for e in by_namespace["shop"]] == ["warm", "warm", "get"]
    rows = [row for rows in by_partition.values() for row in rows]
    assert [(row["key"], row["op"]) for row in rows] == [("a", "get")]
    assert tuple(rows[0]) == SEQUENCE_FIELDS  # warm_path is not forwarded
    assert rows[0]["warmed"] is True


def test_a_read_that_joined_a_load_reaches_the_models_as_served() -> None:
    # Each key misses once and two more readers join its load, as at a few thousand
    # requests a second; the reads go through the sequence topic as the agents send
    # and decode them. Joined reads are no misses to the models: the cache horizon
    # (how long a key survives unread) stays where the real misses put it, instead
    # of collapsing to the few requests between a miss and its joiners.
    events = []
    ts = 0.0
    for i in range(300):
        for joined in (False, True, True):
            ts += 0.001
            events.append(_event(f"k{i % 100}", "get", "miss", ts, joined=joined))
    _, by_partition = route(events, SmartTTL(), set(), PartitionCache(1))
    (rows,) = by_partition.values()
    assert [row["joined"] for row in rows[:3]] == [False, True, True]
    decoded, rejects = decode_access_dicts(orjson.dumps(rows))
    assert not rejects
    settings = Settings()
    engine = WarmEngine(engine_config(settings))
    Decider(settings, model_version="test").decide(engine, decoded)
    # 300 misses, each 300 reads after the key's last read: a horizon near that,
    # where the joined reads as misses (2 reads after the miss) drive it far below.
    assert engine.stats()["horizon"] > 250


def test_a_smart_ttl_is_not_learnt_from_warms_alone() -> None:
    model = SmartTTL()
    touched: set[str] = set()
    warms = [_event("k", "warm", "none", float(t), ttl=60) for t in range(10)]
    route(warms, model, touched, PartitionCache(2))
    assert touched == set()
    assert model.n_tracked == 0


def test_a_users_sessions_meet_one_model_instance() -> None:
    partition_of = PartitionCache(16)
    touched: set[str] = set()
    # One user, many sessions and clients: every read lands on one sequence partition,
    # where the user's profile is.
    events = [
        _event(f"k{i}", "get", "miss", float(i), session=f"s-{i % 5}", client=f"c-{i % 3}")
        for i in range(40)
    ]
    _, by_partition = route(events, SmartTTL(), touched, partition_of)
    assert len(by_partition) == 1
    assert sequence_key(events[0]) == "u1"
    # Without a user, the session orders the reads; without either, the client.
    anonymous = _event("k", "get", "miss", 1.0, user=None, session="s-9")
    assert sequence_key(anonymous) == "s-9"
    assert sequence_key({**anonymous, "session": None}) == "web"

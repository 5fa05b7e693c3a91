"""Access events from the client reach Kafka: batched, decodable, with the right fields."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from aiokafka import AIOKafkaConsumer

from pipeline.client import IntelligentCache
from schemas import AccessEvent, decode_access
from tests.integration.client.conftest import Backend, MakeCache


async def read_events(
    bootstrap: str,
    topic: str,
    until: int,
    timeout: float = 30.0,
    wanted: Callable[[AccessEvent], bool] | None = None,
) -> tuple[list[AccessEvent], list[int]]:
    """All events of ``topic`` (from the start) until ``until`` are seen; and the batch sizes.

    With ``wanted``, reading goes on past ``until`` until an event it accepts is
    seen: after an outage the topic can hold more than the emitter counted as
    sent (a batch the broker wrote while its acknowledgement timed out is
    counted as dropped), and partitions are read in no fixed order.
    """
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    events: list[AccessEvent] = []
    batches: list[int] = []
    try:
        async with asyncio.timeout(timeout):
            found = wanted is None
            while len(events) < until or not found:
                message = await consumer.getone()
                assert message.value is not None
                decoded = decode_access(message.value)
                assert decoded.rejects == [], decoded.rejects
                events.extend(decoded.records)
                batches.append(len(decoded.records))
                found = found or (wanted is not None and any(map(wanted, decoded.records)))
    finally:
        await consumer.stop()
    return events, batches


async def test_events_arrive_batched_with_correct_fields(
    single: Backend, kafka_bootstrap: str, make_cache: MakeCache
) -> None:
    topic = f"cachecast.access.test-{uuid.uuid4().hex[:8]}"
    cache: IntelligentCache = make_cache(
        single,
        IntelligentCache,
        emitter_enabled=True,
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_access=topic,
        emitter_linger_ms=5,
        client_name="events-test",
    )
    await cache.start()
    started = time.time()
    value = {"name": "Ada", "bio": "x" * 3000}
    await cache.set("users", "ada", value, ttl=300, tags=["team:1"])
    assert await cache.get("users", "ada", user_context="u1", session_id="s1") == value
    assert await cache.get("users", "nobody") is None
    loaded = await cache.get(
        "users", "bob", user_context={"user_id": "u2"}, fallback_data=lambda: 5
    )
    assert loaded == 5
    await cache.mset("users", {f"m{i}": i for i in range(20)})
    await cache.mget("users", ["m1", "m2", "zz"])
    await cache.exists("users", "ada")
    await cache.increment("counters", "c")
    await cache.expire("users", "ada", 100)
    await cache.delete("users", "m1")
    expected = 1 + 1 + 1 + 2 + 20 + 3 + 1 + 1 + 1 + 1
    assert await cache.emitter.flush(20.0) if cache.emitter else False

    events, batches = await read_events(kafka_bootstrap, topic, expected)
    assert len(events) == expected
    assert max(batches) >= 20, batches  # one Kafka record carries many events
    assert {e.client for e in events} == {"events-test"}
    assert all(started - 1 <= e.ts <= time.time() + 1 for e in events)

    raw = redis.Redis(host=single.server.host, port=single.server.port) if single.server else None
    assert raw is not None
    try:
        stored = raw.get(cache.core.data_key("users", "ada"))
    finally:
        raw.close()
    assert stored is not None

    def only(op: str, key: str) -> list[AccessEvent]:
        return [e for e in events if e.op == op and e.key == key]

    (write,) = only("set", "ada")
    assert (write.outcome, write.ttl, write.tags, write.size_bytes) == (
        "none",
        300,
        ["team:1"],
        len(stored),
    )
    assert write.raw_bytes > write.size_bytes  # compressed above the threshold
    (hit,) = only("get", "ada")
    assert (hit.outcome, hit.user, hit.session, hit.size_bytes) == ("hit", "u1", "s1", len(stored))
    assert 0 < hit.latency_us < 1_000_000
    (miss,) = only("get", "nobody")
    assert (miss.outcome, miss.size_bytes, miss.user) == ("miss", 0, None)
    assert [e.outcome for e in only("get", "bob")] == ["miss"]
    assert only("set", "bob")[0].user == "u2"
    outcomes: dict[str, Any] = {e.key: e.outcome for e in events if e.op == "mget"}
    assert outcomes == {"m1": "hit", "m2": "hit", "zz": "miss"}
    assert only("exists", "ada")[0].outcome == "hit"
    assert only("incr", "c")[0].namespace == "counters"
    assert only("expire", "ada")[0].ttl == 100
    assert only("delete", "m1")[0].outcome == "none"
    emitter_stats = (await cache.get_stats())["emitter"]
    assert emitter_stats["sent"] == expected
    assert emitter_stats["dropped"] == 0

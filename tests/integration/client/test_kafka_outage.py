"""With Kafka stopped the cache path does not notice; events are dropped, counted, then flow again.

This test stops and restarts a broker, so it runs its own (not the session's).
It checks that no read waits on Kafka at the scale of Kafka's own waits (the
emitter's one-second stall check, the producer's five-second request timeout);
how much an outage costs a hit in microseconds is measured, against the broker
up in the same run, by benchmarks/kafka_outage.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from pipeline.client import IntelligentCache
from pipeline.devstack import KafkaServer
from tests.integration.client.conftest import Backend, MakeCache
from tests.integration.client.test_events_kafka import read_events


async def _longest_get_s(cache: IntelligentCache, n: int) -> float:
    """The slowest of ``n`` hits, in seconds."""
    longest = 0
    for _ in range(n):
        started = time.perf_counter_ns()
        assert await cache.get("o", "hot") == {"v": 1}
        longest = max(longest, time.perf_counter_ns() - started)
    return longest / 1e9


async def test_kafka_down_drops_events_without_touching_the_cache_path(
    single: Backend, own_kafka: KafkaServer, make_cache: MakeCache
) -> None:
    topic = f"cachecast.access.outage-{uuid.uuid4().hex[:8]}"
    cache: IntelligentCache = make_cache(
        single,
        IntelligentCache,
        emitter_enabled=True,
        kafka_bootstrap_servers=own_kafka.bootstrap_servers,
        topic_access=topic,
        emitter_buffer_size=2_000,
        emitter_linger_ms=5,
    )
    emitter = cache.emitter
    assert emitter is not None
    await cache.start()
    await cache.set("o", "hot", {"v": 1})
    await _longest_get_s(cache, 1_000)
    assert await emitter.flush(20.0)
    sent_before = emitter.stats().sent
    assert sent_before == 1_001

    await asyncio.to_thread(own_kafka.stop)
    began = time.monotonic()
    longest = await _longest_get_s(cache, 10_000)
    assert cache.core.stats.errors == 0
    # A read that waited on the dead broker would wait for its metadata or its
    # request timeout (5 s); these bounds are far above any scheduling noise.
    assert longest < 1.0, longest
    assert time.monotonic() - began < 20
    # Events already handed to the producer fail when their batch expires; once
    # that settles, every event is accounted for: sent, dropped or still buffered.
    deadline = time.monotonic() + 20
    while True:
        during = emitter.stats()
        if during.sent + during.dropped + during.pending == during.emitted:
            break
        assert time.monotonic() < deadline, during
        await asyncio.sleep(0.1)
    assert during.sent == sent_before
    assert during.outages == 1  # the emitter noticed, while the reads went on
    assert during.pending <= 2_000
    assert during.dropped >= 10_000 - 2_000  # all that did not fit the buffer: lost, counted
    assert (await cache.get_stats())["emitter"]["dropped"] == during.dropped

    await asyncio.to_thread(own_kafka.start)
    deadline = time.monotonic() + 60
    while True:  # events flow again once the emitter has reconnected
        await cache.get("o", "reconnecting")
        if await emitter.flush(1.0) and emitter.stats().sent > sent_before:
            break
        assert time.monotonic() < deadline, emitter.stats()
    # Reconnected: an event read now is sent, not lost.
    before = emitter.stats()
    await cache.get("o", "after-outage", user_context="back")
    assert await emitter.flush(10.0)
    after = emitter.stats()
    assert (after.sent, after.dropped) == (before.sent + 1, before.dropped), (before, after)
    # Events buffered during the outage (up to the buffer's bound) are sent first.
    sent = emitter.stats().sent
    events, _ = await read_events(
        own_kafka.bootstrap_servers,
        topic,
        until=sent,
        timeout=90.0,
        wanted=lambda e: e.key == "after-outage" and e.user == "back",
    )
    assert len(events) >= sent
    assert any(e.key == "after-outage" and e.user == "back" for e in events)

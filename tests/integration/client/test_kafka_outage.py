"""With Kafka stopped the cache path does not notice; events are dropped, counted, then flow again.

This test stops and restarts a broker, so it runs its own (not the session's).
"""

from __future__ import annotations

import asyncio
import time
import uuid

from pipeline.client import IntelligentCache
from pipeline.devstack import KafkaServer
from tests.integration.client.conftest import Backend, MakeCache
from tests.integration.client.test_events_kafka import read_events


async def _p50_us(cache: IntelligentCache, n: int) -> tuple[float, int]:
    latencies = []
    for _ in range(n):
        started = time.perf_counter_ns()
        assert await cache.get("o", "hot") == {"v": 1}
        latencies.append(time.perf_counter_ns() - started)
    latencies.sort()
    return latencies[n // 2] / 1000, sum(latencies) // 1000


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
    baseline_p50, _ = await _p50_us(cache, 1_000)
    assert await emitter.flush(20.0)
    sent_before = emitter.stats().sent
    assert sent_before == 1_001

    await asyncio.to_thread(own_kafka.stop)
    outage_p50, total_us = await _p50_us(cache, 10_000)
    assert cache.core.stats.errors == 0
    assert total_us < 20_000_000
    # Generous bound: the machine is shared; a cache path that waited on Kafka
    # would be slower by orders of magnitude, not by a factor of three.
    assert outage_p50 < 3 * baseline_p50 + 100, (baseline_p50, outage_p50)
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

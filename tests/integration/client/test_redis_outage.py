"""A Redis restart under a live client, and a Redis outage behind IntelligentCache.

Each test runs its own Redis server (``redis_factory``), never the shared one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from pipeline.client import (
    CacheError,
    CacheUnavailableError,
    IntelligentCache,
    RedisCacheManager,
)
from pipeline.client.sync import SyncIntelligentCache
from tests.integration.client.conftest import Backend, MakeCache, RecordingSink
from tests.integration.conftest import RedisFactory


async def test_client_survives_a_restart_without_help(
    redis_factory: RedisFactory, make_cache: MakeCache
) -> None:
    server = redis_factory()
    cache: RedisCacheManager = make_cache(Backend("single", server=server))
    for i in range(20):  # several pooled connections in use
        await asyncio.gather(*(cache.set("r", f"{i}-{j}", j) for j in range(5)))
    assert await cache.get("r", "3-3") == 3

    await asyncio.to_thread(server.restart)  # same port, empty

    assert await cache.get("r", "3-3") is None  # a miss, not an error
    assert await cache.set("r", "after", {"ok": True}) is True
    assert await cache.get("r", "after") == {"ok": True}
    results = await asyncio.gather(*(cache.get("r", "after") for _ in range(20)))
    assert results == [{"ok": True}] * 20
    assert cache.core.stats.errors == 0
    assert (await cache.health_check())["healthy"] is True


async def test_reads_keep_flowing_through_a_restart(
    redis_factory: RedisFactory, make_cache: MakeCache
) -> None:
    server = redis_factory()
    cache: IntelligentCache = make_cache(
        Backend("single", server=server), IntelligentCache, breaker_cooldown=0.2
    )
    loads = 0

    async def origin() -> str:
        nonlocal loads
        loads += 1
        return "value"

    stop = asyncio.Event()
    served: list[str] = []

    async def reader() -> None:
        while not stop.is_set():
            served.append(await cache.get("r", "k", fallback_data=origin))
            await asyncio.sleep(0.002)

    readers = [asyncio.create_task(reader()) for _ in range(4)]
    await asyncio.sleep(0.1)
    await asyncio.to_thread(server.restart)
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*readers)
    assert served
    assert set(served) == {"value"}
    assert loads >= 2  # the restart emptied Redis: the value was loaded again
    assert await cache.get("r", "k") == "value"  # and stored again


async def test_redis_down_serves_from_the_loader_and_reports(
    redis_factory: RedisFactory, make_cache: MakeCache, sink: RecordingSink
) -> None:
    server = redis_factory()
    errors: list[CacheError] = []
    cache: IntelligentCache = make_cache(
        Backend("single", server=server),
        IntelligentCache,
        breaker_cooldown=0.3,
        on_error=errors.append,
        redis_socket_timeout=0.5,
    )
    await cache.set("d", "k", "cached")
    server.stop()

    loads = 0

    async def origin() -> str:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.01)
        return "from origin"

    started = time.monotonic()
    values = await asyncio.gather(*(cache.get("d", "k", fallback_data=origin) for _ in range(50)))
    assert values == ["from origin"] * 50
    assert loads == 1  # single-flight holds during an outage too: the origin is not stampeded
    for _ in range(50):  # the breaker is open: these do not wait on Redis at all
        assert await cache.get("d", "k", fallback_data=origin) == "from origin"
    assert time.monotonic() - started < 3.0
    assert errors
    assert isinstance(errors[0], CacheUnavailableError)
    assert cache.last_error is not None
    assert cache.core.stats.errors >= 1
    assert any(e["outcome"] == "error" for e in sink.of("get", "k"))
    health = await cache.health_check()
    assert health["healthy"] is False
    assert health["error"]
    with pytest.raises(CacheUnavailableError):
        await cache.get("d", "k")  # without a loader there is nothing to serve
    stats = await cache.get_stats()
    assert "error" in stats["redis"]

    server.start()
    deadline = time.monotonic() + 5
    while True:
        try:
            assert await cache.set("d", "k", "cached again") is True
            break
        except CacheUnavailableError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    assert await cache.get("d", "k", fallback_data=origin) == "cached again"


def test_sync_client_serves_from_the_loader_when_redis_is_down(
    redis_factory: RedisFactory, make_sync_cache: MakeCache
) -> None:
    server = redis_factory()
    cache: SyncIntelligentCache = make_sync_cache(
        Backend("single", server=server), SyncIntelligentCache, breaker_cooldown=0.3
    )
    assert cache.get("d", "k", fallback_data=lambda: "v1") == "v1"
    server.restart()
    assert cache.get("d", "k") is None
    server.stop()
    assert cache.get("d", "k", fallback_data=lambda: "v2") == "v2"
    assert isinstance(cache.last_error, CacheUnavailableError)
    with pytest.raises(CacheUnavailableError):
        cache.get("d", "k")
    server.start()
    time.sleep(0.35)
    assert cache.get("d", "k", fallback_data=lambda: "v3") == "v3"
    assert cache.get("d", "k") == "v3"


@pytest.mark.fault
@pytest.mark.timeout(120)
async def test_a_redis_outage_under_load_is_served_by_the_loader_with_a_low_p99(
    redis_factory: RedisFactory, make_cache: MakeCache
) -> None:
    """Redis hung (SIGSTOP: connections open, nothing answers) for 10 s, then stopped
    for 5 s, under 500 gets/s, then started again: every get is served, p99 stays
    under 50 ms, and the client reconnects by itself. (The stall threshold is 50 ms
    here, for a Redis with CPU of its own; the stop needs no setting.)"""
    server = redis_factory()
    cache: IntelligentCache = make_cache(
        Backend("single", server=server), IntelligentCache, redis_stall_ms=50
    )

    async def origin() -> str:
        await asyncio.sleep(0.001)
        return "value"

    async def load(seconds: float, rate: float = 500) -> tuple[list[float], int]:
        latencies: list[float] = []
        failures = 0
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []

        async def one(i: int) -> None:
            nonlocal failures
            began = time.perf_counter()
            try:
                assert await cache.get("o", f"k{i % 50}", fallback_data=origin) == "value"
            except Exception:
                failures += 1
            latencies.append(time.perf_counter() - began)

        for i in range(int(seconds * rate)):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        return sorted(latencies), failures

    await load(1.0)
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        hung, failed_hung = await load(10.0)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    server.stop()
    stopped, failed_stopped = await load(5.0)
    during = sorted(hung + stopped)
    failed = failed_hung + failed_stopped
    server.start()
    deadline = time.monotonic() + 10
    while cache.core.down_until:
        await cache.get("o", "k1", fallback_data=origin)
        await asyncio.sleep(0.05)
        assert time.monotonic() < deadline, "the client did not reconnect by itself"
    hits_before = cache.core.stats.hits
    _, failed_after = await load(1.0)

    p99 = during[int(len(during) * 0.99)]
    print(
        f"outage: {len(during)} gets, p50 {during[len(during) // 2] * 1000:.2f} ms, "
        f"p99 {p99 * 1000:.2f} ms, max {during[-1] * 1000:.0f} ms"
    )
    assert failed == failed_after == 0
    assert p99 < 0.050, p99
    assert cache.core.stats.hits > hits_before, "after the restart, reads hit Redis again"


@pytest.mark.fault
@pytest.mark.timeout(60)
async def test_a_read_waiting_on_a_hung_redis_joins_the_load_in_flight_at_once(
    redis_factory: RedisFactory, make_cache: MakeCache
) -> None:
    """Redis hangs while a key is being loaded. A read of that key, already waiting
    on Redis, is let go as soon as the stall is seen (not after the socket timeout
    and its retries), and joins the load, whose value it gets without waiting for
    the load's write to the hung Redis. The origin is asked once."""
    server = redis_factory()
    cache: IntelligentCache = make_cache(
        Backend("single", server=server),
        IntelligentCache,
        redis_stall_ms=50,
        redis_socket_timeout=5.0,
    )
    assert await cache.get("h", "warm", fallback_data=lambda: 0) == 0  # connected
    assert server.pid is not None
    pid = server.pid
    loads = 0
    second_read: asyncio.Task[object] | None = None

    async def origin() -> str:
        nonlocal loads, second_read
        loads += 1
        os.kill(pid, signal.SIGSTOP)  # Redis hangs mid-load
        second_read = asyncio.create_task(cache.get("h", "k", fallback_data=origin))
        await asyncio.sleep(0.01)  # the second read is waiting on the hung Redis
        return "value"

    try:
        began = time.perf_counter()
        first = await cache.get("h", "k", fallback_data=origin)
        assert second_read is not None
        second = await asyncio.wait_for(second_read, 4.0)
        waited = time.perf_counter() - began
    finally:
        os.kill(pid, signal.SIGCONT)
    assert first == second == "value"
    assert loads == 1
    assert cache.core.stats.load_joins == 1
    assert cache.core.stats.redis_stalls == 1
    assert waited < 2.0, f"the read waited {waited:.2f} s on a hung Redis"

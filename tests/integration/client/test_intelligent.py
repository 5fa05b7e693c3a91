"""IntelligentCache: single-flight loads, smart TTL, early refresh, context in events."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pipeline.client import (
    IntelligentCache,
    InvalidKeyError,
    LoadTimeoutError,
    smart_ttl_hash,
    write_warmed,
)
from tests.integration.client.conftest import Backend, MakeCache, RecordingSink


class CountingLoader:
    """An origin that counts its calls; optionally slow or failing."""

    def __init__(self, value: Any, delay: float = 0.0, fail: int = 0) -> None:
        self.value = value
        self.delay = delay
        self.fail = fail
        self.calls = 0

    async def __call__(self) -> Any:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.calls <= self.fail:
            raise LookupError("origin unavailable")
        return self.value


@pytest.mark.parametrize("delay", [0.0, 0.05], ids=["instant-loader", "slow-loader"])
async def test_hundred_concurrent_misses_call_the_loader_once(
    backend: Backend, make_cache: MakeCache, sink: RecordingSink, delay: float
) -> None:
    cache: IntelligentCache = make_cache(backend, IntelligentCache)
    loader = CountingLoader({"profile": 1}, delay=delay)
    results = await asyncio.gather(
        *(cache.get("profiles", "hot", fallback_data=loader) for _ in range(100))
    )
    assert loader.calls == 1
    assert results == [{"profile": 1}] * 100
    stats = cache.core.stats
    assert stats.loads == 1
    assert stats.hits + stats.misses == 100
    assert stats.load_joins == stats.misses - 1
    # The worker learns one origin read: every other miss says it joined that load (the
    # loading read's event goes out once its claim has answered, stamped with its start).
    misses = [e for e in sink.of("get", "hot") if e["outcome"] == "miss"]
    assert sorted(e["joined"] for e in misses) == [False] + [True] * (stats.misses - 1)
    assert await cache.get("profiles", "hot") == {"profile": 1}  # it was stored


async def test_loader_failure_reaches_every_waiter_and_is_not_cached(
    backend: Backend, make_cache: MakeCache, sink: RecordingSink
) -> None:
    cache: IntelligentCache = make_cache(backend, IntelligentCache)
    loader = CountingLoader("v", delay=0.02, fail=1)
    results = await asyncio.gather(
        *(cache.get("p", "k", fallback_data=loader) for _ in range(10)), return_exceptions=True
    )
    assert loader.calls == 1
    assert all(isinstance(r, LookupError) for r in results)
    # A failed load still sends each read's event, once: one origin read, nine joins.
    misses = [e for e in sink.of("get", "k") if e["outcome"] == "miss"]
    assert len(misses) == cache.core.stats.misses == 10
    assert sorted(e["joined"] for e in misses) == [False] + [True] * 9
    assert await cache.get("p", "k", fallback_data=loader) == "v"
    assert loader.calls == 2
    assert cache.core.stats.load_errors == 1


async def test_a_hung_loader_times_out_and_does_not_block_its_key(
    single: Backend, make_cache: MakeCache
) -> None:
    cache: IntelligentCache = make_cache(single, IntelligentCache, load_timeout_s=0.3)
    hung = asyncio.Event()

    async def never() -> str:
        await hung.wait()
        return "never"

    results = await asyncio.gather(
        *(cache.get("p", "stuck", fallback_data=never) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, LoadTimeoutError) for r in results), results
    assert await cache.get("p", "stuck", fallback_data=CountingLoader("fresh")) == "fresh"
    assert await cache.get("p", "stuck") == "fresh"


async def test_plain_function_loaders_work_too(backend: Backend, make_cache: MakeCache) -> None:
    cache: IntelligentCache = make_cache(backend, IntelligentCache)
    assert await cache.get("p", "sync", fallback_data=lambda: [1, 2]) == [1, 2]
    assert await cache.get("p", "sync") == [1, 2]
    assert await cache.get("p", "none-without-loader") is None


async def test_loaded_values_get_the_published_smart_ttl(
    backend: Backend, make_cache: MakeCache
) -> None:
    cache: IntelligentCache = make_cache(
        backend, IntelligentCache, redis_default_ttl=900, smart_ttl_min=5
    )
    prefix = cache.settings.redis_key_prefix
    raw = backend.raw()
    try:
        raw.hset(smart_ttl_hash(prefix, "p"), mapping={"smart": "123", "garbage": "soon"})
        await cache.get("p", "smart", fallback_data=lambda: 1)
        await cache.get("p", "plain", fallback_data=lambda: 2)
        await cache.get("p", "garbage", fallback_data=lambda: 3)
        assert 115 <= raw.ttl(cache.core.data_key("p", "smart")) <= 123
        assert 890 <= raw.ttl(cache.core.data_key("p", "plain")) <= 900
        assert 890 <= raw.ttl(cache.core.data_key("p", "garbage")) <= 900
        # set() without a TTL uses it too, scaled by priority
        assert await cache.set("p", "smart", "x", priority="high") is True
        assert 240 <= raw.ttl(cache.core.data_key("p", "smart")) <= 246
        await cache.set("p", "plain", "y", priority="low")
        assert 440 <= raw.ttl(cache.core.data_key("p", "plain")) <= 450
        await cache.set("p", "plain", "z", ttl=40, priority="high")  # explicit TTL wins
        assert 35 <= raw.ttl(cache.core.data_key("p", "plain")) <= 40
    finally:
        raw.close()
    with pytest.raises(InvalidKeyError, match="priority"):
        await cache.set("p", "k", 1, priority="urgent")


async def test_events_carry_user_session_and_can_be_left_out(
    backend: Backend, make_cache: MakeCache, sink: RecordingSink
) -> None:
    cache: IntelligentCache = make_cache(backend, IntelligentCache)
    await cache.get(
        "p", "a", user_context={"user_id": 7, "session_id": "s-1"}, fallback_data=lambda: 1
    )
    await cache.get("p", "a", user_context="u-9", session_id="s-2")
    await cache.get("p", "a", enable_prediction=False)
    await cache.set("p", "b", 2, user_context="u-9", session_id="s-2", tags=["x"])
    reads = sink.of("get", "a")
    assert [(e["outcome"], e["user"], e["session"]) for e in reads] == [
        ("miss", "7", "s-1"),
        ("hit", "u-9", "s-2"),
    ]
    loaded = sink.of("set", "a")[0]
    assert (loaded["user"], loaded["session"]) == ("7", "s-1")
    written = sink.of("set", "b")[0]
    assert (written["user"], written["session"], written["tags"]) == ("u-9", "s-2", ["x"])


async def test_warmed_first_read_through_intelligent_cache(
    backend: Backend, make_cache: MakeCache, sink: RecordingSink
) -> None:
    cache: IntelligentCache = make_cache(backend, IntelligentCache)
    prefix = cache.settings.redis_key_prefix
    envelope = cache.core.codec.encode("prefetched", origin="warm").data
    assert await write_warmed(cache.redis, prefix, "p", "w", envelope, 30)
    loader = CountingLoader("from origin")
    assert await cache.get("p", "w", user_context="u", fallback_data=loader) == "prefetched"
    assert await cache.get("p", "w", fallback_data=loader) == "prefetched"
    assert loader.calls == 0
    assert [e["warmed"] for e in sink.of("get", "w")] == [True, False]
    assert sink.of("get", "w")[0]["user"] == "u"


async def test_early_refresh_reloads_before_expiry(backend: Backend, make_cache: MakeCache) -> None:
    # beta this large makes every hit "close to expiry": the refresh must happen.
    eager: IntelligentCache = make_cache(backend, IntelligentCache, refresh_beta=1e9)
    loader = CountingLoader("v1", delay=0.01)
    assert await eager.get("p", "hot", fallback_data=loader) == "v1"
    loader.value = "v2"
    assert await eager.get("p", "hot", fallback_data=loader) == "v1"  # served at once
    for _ in range(100):
        if loader.calls == 2 and await eager.get("p", "hot") == "v2":
            break
        await asyncio.sleep(0.01)
    assert loader.calls == 2
    assert await eager.get("p", "hot") == "v2"
    assert eager.core.stats.early_refreshes == 1

    # a fresh value far from expiry is never refreshed
    calm: IntelligentCache = make_cache(backend, IntelligentCache, refresh_beta=1.0)
    steady = CountingLoader("s")
    await calm.get("p", "calm", fallback_data=steady)
    for _ in range(200):
        await calm.get("p", "calm", fallback_data=steady)
    assert steady.calls == 1
    assert calm.core.stats.early_refreshes == 0

    off: IntelligentCache = make_cache(
        backend, IntelligentCache, refresh_beta=1e9, early_refresh=False
    )
    never = CountingLoader("n")
    for _ in range(20):
        await off.get("p", "off", fallback_data=never)
    assert never.calls == 1


async def test_hits_never_wait_for_a_slow_loader(backend: Backend, make_cache: MakeCache) -> None:
    cache: IntelligentCache = make_cache(backend, IntelligentCache, refresh_beta=1e9)
    slow = CountingLoader("v", delay=0.5)
    await cache.get("p", "k", fallback_data=CountingLoader("v"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(20):
        assert await cache.get("p", "k", fallback_data=slow) == "v"
    assert loop.time() - started < 0.4

"""The API of the caching layer cachecast grew out of, on real Redis and Kafka.

Every operation works as a client's very first call (no ``start()``), with the
access-event emitter on; the original configuration shape is accepted and
unknown names refused; the performance figures; and ``@cache.cached``.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pipeline.client import IntelligentCache, RedisCacheManager
from pipeline.client.sync import SyncIntelligentCache, SyncRedisCacheManager
from pipeline.config import ConfigError, cache_settings
from tests.integration.client.conftest import Backend, MakeCache
from tests.integration.client.test_events_kafka import read_events

#: Each operation as a first call, and what it must return on an empty namespace.
ASYNC_FIRST_CALLS: dict[str, tuple[Callable[[Any], Awaitable[Any]], Callable[[Any], bool]]] = {
    "get": (lambda c: c.get("n", "k"), lambda r: r is None),
    "set": (lambda c: c.set("n", "k", {"v": 1}, ttl=60, tags=["t"]), lambda r: r is True),
    "delete": (lambda c: c.delete("n", "k"), lambda r: r is False),
    "exists": (lambda c: c.exists("n", "k"), lambda r: r is False),
    "mget": (lambda c: c.mget("n", ["a", "b"]), lambda r: r == [None, None]),
    "mset": (lambda c: c.mset("n", {"a": 1, "b": 2}, ttl=60), lambda r: r is True),
    "increment": (lambda c: c.increment("n", "hits", 2), lambda r: r == 2),
    "expire": (lambda c: c.expire("n", "k", 60), lambda r: r is False),
    "delete_by_pattern": (lambda c: c.delete_by_pattern("n", "*"), lambda r: r == 0),
    "delete_by_tags": (lambda c: c.delete_by_tags("n", ["t"]), lambda r: r == 0),
    "health_check": (lambda c: c.health_check(), lambda r: r["healthy"] is True),
    "get_stats": (lambda c: c.get_stats(), lambda r: r["client"]["errors"] == 0),
    "get_performance_metrics": (
        lambda c: c.get_performance_metrics(),
        lambda r: r["memory_usage_bytes"] > 0,
    ),
}


def _emitting(bootstrap: str, topic: str) -> dict[str, Any]:
    return {
        "emitter_enabled": True,
        "kafka_bootstrap_servers": bootstrap,
        "topic_access": topic,
        "emitter_linger_ms": 5,
    }


@pytest.mark.parametrize("op", sorted(ASYNC_FIRST_CALLS))
async def test_every_operation_works_as_the_first_call(
    op: str, single: Backend, kafka_bootstrap: str, make_cache: MakeCache
) -> None:
    call, expected = ASYNC_FIRST_CALLS[op]
    topic = f"cachecast.access.first-{uuid.uuid4().hex[:8]}"
    for cls in (RedisCacheManager, IntelligentCache):
        cache = make_cache(single, cls, **_emitting(kafka_bootstrap, topic))
        result = await call(cache)  # nothing before it: no start()
        assert expected(result), (cls.__name__, op, result)
        assert cache.core.stats.errors == 0


@pytest.mark.parametrize("op", sorted(ASYNC_FIRST_CALLS))
def test_every_operation_works_as_the_first_call_of_the_sync_client(
    op: str, single: Backend, kafka_bootstrap: str, make_sync_cache: MakeCache
) -> None:
    call, expected = ASYNC_FIRST_CALLS[op]
    topic = f"cachecast.access.first-{uuid.uuid4().hex[:8]}"
    for cls in (SyncRedisCacheManager, SyncIntelligentCache):
        cache = make_sync_cache(single, cls, **_emitting(kafka_bootstrap, topic))
        result = call(cache)
        assert expected(result), (cls.__name__, op, result)
        assert cache.core.stats.errors == 0


async def test_the_first_call_emits_its_event(
    single: Backend, kafka_bootstrap: str, make_cache: MakeCache
) -> None:
    """The guide's first call, ``await cache.set(...)`` on a new manager, reaches Kafka."""
    topic = f"cachecast.access.first-{uuid.uuid4().hex[:8]}"
    cache: RedisCacheManager = make_cache(single, **_emitting(kafka_bootstrap, topic))
    assert await cache.set("users", "ada", {"name": "Ada"}) is True
    assert cache.emitter is not None
    assert await cache.emitter.flush(20.0)
    events, _ = await read_events(kafka_bootstrap, topic, 1)
    assert [(e.op, e.namespace, e.key) for e in events] == [("set", "users", "ada")]


async def test_the_original_configuration_shape(single: Backend) -> None:
    assert single.server is not None
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    config = {
        "host": single.server.host,
        "port": single.server.port,
        "db": 0,
        "keyPrefix": prefix,
        "defaultTTL": 120,
        "compressionThreshold": 64,
        "enableCompression": True,
        "retryDelayOnFailover": 100,
        "maxRetriesPerRequest": 3,
    }
    async with RedisCacheManager(config) as cache:
        assert (cache.settings.redis_key_prefix, cache.settings.redis_retry_delay_s) == (
            prefix,
            0.1,
        )
        assert await cache.set("n", "big", "x" * 1000) is True
        assert await cache.get("n", "big") == "x" * 1000
        assert 0 < await cache.redis.ttl(prefix + "n:big") <= 120
        stats = await cache.get_stats()
        assert stats["client"]["compression_ratio"] < 0.5  # compressed above 64 bytes
    cluster = {"enable_clustering": True, "nodes": [{"host": "10.0.0.1", "port": 7000}, "b:7001"]}
    assert cache_settings(cluster).cluster_nodes() == [("10.0.0.1", 7000), ("b", 7001)]
    with pytest.raises(ConfigError, match="unknown cache configuration name 'hots'"):
        RedisCacheManager({"hots": "localhost"})
    with pytest.raises(ConfigError, match="not a host/port pair"):
        IntelligentCache({"enable_clustering": True, "nodes": [{"host": "a"}]})


async def test_performance_figures_count_what_the_client_did(
    single: Backend, make_cache: MakeCache
) -> None:
    cache: IntelligentCache = make_cache(single, IntelligentCache)
    for i in range(10):
        await cache.set("p", f"k{i}", i)
    for i in range(20):
        await cache.get("p", f"k{i}")  # 10 hits, 10 misses
    figures = await cache.get_performance_metrics()
    assert figures["operations"] == 30
    assert (figures["hit_rate"], figures["miss_rate"], figures["error_rate"]) == (0.5, 0.5, 0.0)
    assert 0 < figures["average_response_time_ms"] < 1000
    assert figures["throughput_per_s"] > 0
    assert figures["memory_usage_bytes"] > 0
    assert (await cache.get_stats())["performance"]["operations"] == 30


async def test_a_cached_coroutine_function(backend: Backend, make_cache: MakeCache) -> None:
    cache: IntelligentCache = make_cache(backend, IntelligentCache)
    calls: list[int] = []

    @cache.cached("users", key="user-{user_id}", ttl=77)
    async def load_user(user_id: int, verbose: bool = False) -> dict[str, Any]:
        calls.append(user_id)
        await asyncio.sleep(0.05)
        return {"id": user_id}

    results = await asyncio.gather(*(load_user(7) for _ in range(20)))
    assert results == [{"id": 7}] * 20
    assert calls == [7]  # single-flight: twenty concurrent misses, one call
    assert await load_user(user_id=7) == {"id": 7}  # a hit
    assert calls == [7]
    raw = backend.raw()
    try:
        assert 70 <= raw.ttl(cache.core.data_key("users", "user-7")) <= 77
    finally:
        raw.close()
    assert load_user.key_for(8) == "user-8"
    # The function is the namespace's loader: an edge warm of a key calls it with
    # the arguments the key was made from (typed as annotated).
    guard = cache._edge_loaders["users"]
    assert await guard.load("users", "user-9") == {"id": 9}
    assert calls == [7, 9]
    assert await load_user.invalidate(7) is True
    assert await load_user(7) == {"id": 7}
    assert calls == [7, 9, 7]


async def test_a_cached_blocking_function_runs_in_a_thread(
    single: Backend, make_cache: MakeCache
) -> None:
    cache: IntelligentCache = make_cache(single, IntelligentCache)
    threads: list[str] = []

    @cache.cached("pages", key=lambda site, page: f"{site}/{page}")
    def render(site: str, page: int) -> str:
        threads.append(threading.current_thread().name)
        return f"<h1>{site} {page}</h1>"

    assert await render("docs", 3) == "<h1>docs 3</h1>"
    assert await render("docs", 3) == "<h1>docs 3</h1>"
    assert len(threads) == 1
    assert threads[0] != threading.main_thread().name
    assert "pages" not in cache._edge_loaders  # a key function cannot be parsed back
    with pytest.raises(ValueError, match="names \\['uid'\\]"):
        cache.cached("x", key="{uid}")(render)


def test_a_cached_function_on_the_sync_client(single: Backend, make_sync_cache: MakeCache) -> None:
    cache: SyncIntelligentCache = make_sync_cache(single, SyncIntelligentCache)
    calls: list[str] = []

    class Repository:
        @cache.cached("orders", key="{order_id}")
        def order(self, order_id: str) -> dict[str, str]:
            calls.append(order_id)
            return {"order": order_id}

    repository = Repository()
    assert repository.order("a1") == {"order": "a1"}
    assert repository.order("a1") == {"order": "a1"}
    assert calls == ["a1"]
    assert "orders" not in cache._edge_loaders  # `self` is not in the key: no loader

    @cache.cached("invoices", key="inv-{number}")
    def invoice(number: int) -> int:
        return number * 10

    assert invoice(4) == 40
    assert cache._edge_loaders["invoices"].load("invoices", "inv-5") == 50

    async def not_blocking(number: int) -> int:
        return number

    with pytest.raises(TypeError, match="coroutine function"):
        cache.cached("x", key="{number}")(not_blocking)


async def test_keys_under_the_prefix_are_counted(
    backend: Backend, make_cache: MakeCache, make_sync_cache: MakeCache
) -> None:
    cache: RedisCacheManager = make_cache(backend)
    for i in range(5):
        await cache.set("c", f"k{i}", i)
    other: RedisCacheManager = make_cache(backend)  # another prefix: not counted
    await other.set("c", "elsewhere", 1)
    counted = await cache.count_keys()
    assert (counted["keys"], counted["complete"]) == (5, True)
    assert counted["prefix"] == cache.settings.redis_key_prefix
    partial = await cache.count_keys(limit=3)
    assert (partial["keys"], partial["complete"]) == (3, False)
    twin: SyncRedisCacheManager = make_sync_cache(
        backend, redis_key_prefix=cache.settings.redis_key_prefix
    )
    assert twin.count_keys()["keys"] == 5

"""The asyncio client's read line on a real Redis: GETs pipelined on one connection."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from pipeline.client import CacheCommandError, IntelligentCache, RedisCacheManager
from pipeline.client.connection import ConnectionWatch
from tests.integration.client.conftest import Backend, MakeCache


async def _connected(cache: RedisCacheManager) -> dict[str, Any]:
    """Read once (which connects the line in the background), then wait for the line."""
    await cache.get("line", "warm-up")
    for _ in range(500):
        line = (await cache.get_stats())["read_line"]
        if line["connected"]:
            return dict(line)
        await asyncio.sleep(0.01)
    raise AssertionError("the read line did not connect")


async def test_concurrent_reads_share_the_line_and_each_gets_its_own_value(
    single: Backend, make_cache: MakeCache
) -> None:
    cache: IntelligentCache = make_cache(single, IntelligentCache, client_name="cc-line")
    for i in range(50):
        await cache.set("line", f"k{i}", {"i": i, "pad": "x" * (i * 40)})
    before = await _connected(cache)
    keys = [f"k{i % 60}" for i in range(600)]  # k50..k59 are misses
    values = await asyncio.gather(*(cache.get("line", key) for key in keys))
    assert values == [
        {"i": i % 60, "pad": "x" * (i % 60 * 40)} if i % 60 < 50 else None for i in range(600)
    ]
    after = (await cache.get_stats())["read_line"]
    assert after["reads"] - before["reads"] == 600
    assert after["losses"] == 0
    assert cache.core.stats.errors == 0
    # One connection of its own, named like the pool's.
    raw = single.raw()
    try:
        named = [c for c in raw.client_list() if c["name"] == "cc-line"]
        assert len(named) >= 2  # the line and at least one pooled connection
    finally:
        raw.close()


async def test_a_value_larger_than_a_socket_read_arrives_whole(
    single: Backend, make_cache: MakeCache
) -> None:
    cache: IntelligentCache = make_cache(single, IntelligentCache)
    big = os.urandom(1_500_000).hex()  # 3 MB of text lz4 cannot shrink much
    await cache.set("line", "big", big)
    await _connected(cache)
    results = await asyncio.gather(*(cache.get("line", k) for k in ("big", "none", "big")))
    assert results == [big, None, big]
    assert (await cache.get_stats())["read_line"]["losses"] == 0


@pytest.mark.parametrize("cls", [RedisCacheManager, IntelligentCache])
async def test_reads_waiting_on_a_lost_line_are_served_through_the_pool(
    single: Backend, make_cache: MakeCache, cls: type[RedisCacheManager]
) -> None:
    cache: RedisCacheManager = make_cache(single, cls)
    await cache.set("line", "k", "value")
    await _connected(cache)
    reads = [asyncio.create_task(cache.get("line", "k")) for _ in range(20)]
    await asyncio.sleep(0)  # each read is sent and waits for its reply
    watch = cache._redis.connection_pool.connection_kwargs["watch"]
    assert isinstance(watch, ConnectionWatch)
    assert watch.abort_waiting() >= 1  # what the connection watch does to a silent Redis
    assert await asyncio.gather(*reads) == ["value"] * 20
    stats = await cache.get_stats()
    assert stats["read_line"]["losses"] == 1
    assert stats["client"]["errors"] == 0
    # The next read connects a new line.
    for _ in range(500):
        await cache.get("line", "k")
        if (await cache.get_stats())["read_line"]["connects"] == 2:
            break
        await asyncio.sleep(0.01)
    assert (await cache.get_stats())["read_line"]["connects"] == 2


async def test_an_error_reply_fails_the_read_as_the_pool_does(
    single: Backend, make_cache: MakeCache
) -> None:
    on: IntelligentCache = make_cache(single, IntelligentCache)
    off: IntelligentCache = make_cache(single, IntelligentCache, redis_read_line=False)
    plain: RedisCacheManager = make_cache(single)
    raw = single.raw()

    def wrong_type(cache: RedisCacheManager) -> None:  # a hash where it keeps a string
        raw.delete(cache.core.data_key("line", "hash"))
        raw.hset(cache.core.data_key("line", "hash"), "field", "value")

    try:
        await _connected(on)
        await _connected(plain)
        for cache in (on, off):  # counted as an error, served by the loader
            wrong_type(cache)
            assert await cache.get("line", "hash", fallback_data=lambda: "loaded") == "loaded"
            assert cache.core.stats.errors == 1
        wrong_type(plain)
        with pytest.raises(CacheCommandError, match="WRONGTYPE"):
            await plain.get("line", "hash")
    finally:
        raw.close()
    assert (await on.get_stats())["read_line"]["reads"] >= 1
    assert (await plain.get_stats())["read_line"]["reads"] >= 1
    assert (await off.get_stats())["read_line"] is None


async def test_a_miss_claims_and_writes_its_load_on_the_line_as_on_the_pool(
    single: Backend, make_cache: MakeCache
) -> None:
    on: IntelligentCache = make_cache(single, IntelligentCache)
    off: IntelligentCache = make_cache(single, IntelligentCache, redis_read_line=False)
    raw = single.raw()
    try:
        await _connected(on)
        for cache in (on, off):
            loaded = await cache.get("line", "fresh", fallback_data=lambda: {"v": 1})
            assert loaded == {"v": 1}
            assert await cache.get("line", "fresh") == {"v": 1}  # written, in place of the mark
            ttl = raw.ttl(cache.core.data_key("line", "fresh"))
            assert 0 < ttl <= cache.settings.redis_default_ttl
            assert cache.core.stats.loads == 1
            raw.delete(cache.core.data_key("line", "fresh"))
    finally:
        raw.close()
    line = (await on.get_stats())["read_line"]
    assert line["commands"] >= 3  # the claim (SET NX PX, HGET) and the write
    assert on._reads is not None
    assert on._reads.send([("MGET", "a", "b")]) is None  # arrays stay on the pool


async def test_a_warmed_hit_takes_its_warm_on_the_line_while_the_pool_is_full(
    single: Backend, make_cache: MakeCache
) -> None:
    # The marker's DEL used the pool, which raises when full: a busy client counted
    # an error and lost the warm's outcome.
    cache: IntelligentCache = make_cache(single, IntelligentCache, max_connections=1)
    await _connected(cache)
    dkey = cache.core.data_key("line", "warmed")
    raw = single.raw()
    try:
        raw.set(dkey, cache.core.codec.encode({"v": 1}, origin="warm").data, ex=60)
        raw.set(cache.core.marker_key("line", "warmed"), b"1", ex=60)
        pool = cache._redis.connection_pool
        held = await pool.get_connection()
        try:
            assert await cache.get("line", "warmed") == {"v": 1}
        finally:
            await pool.release(held)
        assert raw.exists(cache.core.marker_key("line", "warmed")) == 0
    finally:
        raw.close()
    stats = cache.core.stats
    assert (stats.warmed_hits, stats.errors) == (1, 0)


async def test_a_batch_on_a_lost_line_is_sent_again_through_the_pool(
    single: Backend, make_cache: MakeCache
) -> None:
    cache: IntelligentCache = make_cache(single, IntelligentCache)
    await _connected(cache)
    prefix = cache.settings.redis_key_prefix
    batch = [("SET", f"{prefix}lost", b"1", "NX", "PX", 60_000), ("HGET", f"{prefix}h", "f")]
    sent = asyncio.create_task(cache._execute(list(batch)))
    await asyncio.sleep(0)  # the batch is on the line, waiting for its replies
    watch = cache._redis.connection_pool.connection_kwargs["watch"]
    assert watch.abort_waiting() >= 1
    claimed, smart = await sent
    # The pool's SET NX answers None if the line's was applied before the line was lost.
    assert claimed in (True, None)
    assert smart is None
    assert (await cache.get_stats())["read_line"]["losses"] == 1


async def test_a_cluster_client_has_no_read_line(backend: Backend, make_cache: MakeCache) -> None:
    cache: RedisCacheManager = make_cache(backend)
    await cache.set("line", "k", 1)
    assert await cache.get("line", "k") == 1
    line = (await cache.get_stats())["read_line"]
    if backend.name == "cluster":
        assert line is None
    else:
        assert line is not None


async def test_the_line_reads_the_database_the_settings_name(
    single: Backend, make_cache: MakeCache
) -> None:
    cache: IntelligentCache = make_cache(single, IntelligentCache, redis_db=3)
    await cache.set("line", "k", "in db 3")
    await _connected(cache)
    raw = single.raw()
    try:  # the same key in database 0 holds something else
        raw.set(cache.core.data_key("line", "k"), b"not an envelope")
        assert await cache.get("line", "k") == "in db 3"
        assert (await cache.get_stats())["read_line"]["reads"] >= 1
    finally:
        raw.delete(cache.core.data_key("line", "k"))
        raw.close()
        await cache.delete("line", "k")  # the backend's cleanup sees database 0 only

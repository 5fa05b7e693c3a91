"""A replay touches only cachecast's own keys, or its own database when told to flush."""

from __future__ import annotations

import redis
import redis.asyncio

from pipeline.client import IntelligentCache
from pipeline.devstack import RedisServer
from pipeline.replay import _open_connections, clear
from tests.integration.client.conftest import Backend


async def test_a_replay_clears_its_prefix_and_flushes_only_its_database(
    redis_server: RedisServer,
) -> None:
    backend = Backend("single", server=redis_server)
    settings = backend.settings(redis_key_prefix="replay[1]:", redis_db=5)
    raw5 = redis.Redis(host=redis_server.host, port=redis_server.port, db=5)
    raw6 = redis.Redis(host=redis_server.host, port=redis_server.port, db=6)
    cache = IntelligentCache(settings)
    try:
        raw5.set("replay[1]:a", b"1")
        raw5.set("replay[1]:b", b"2")
        raw5.set("replay1:glob-lookalike", b"3")  # "[1]" is a glob class; escaped, it is literal
        raw5.set("someone-else:key", b"4")
        raw6.set("other-db:key", b"5")

        assert await clear(cache) == 2
        assert sorted(raw5.keys()) == [b"replay1:glob-lookalike", b"someone-else:key"]

        assert await clear(cache, flush=True) == 2
        assert raw5.dbsize() == 0
        assert raw6.get("other-db:key") == b"5", "another database is never touched"
    finally:
        await cache.close()
        raw5.flushdb()
        raw6.flushdb()
        raw5.close()
        raw6.close()


async def test_opening_a_clients_connections_takes_only_the_free_ones(
    redis_server: RedisServer,
) -> None:
    # A started client's own background work may hold one of its pool's connections;
    # the replay's probe of the pool must not fail on it (it raised "Too many connections").
    client = redis.asyncio.Redis(host=redis_server.host, port=redis_server.port, max_connections=3)
    pool = client.connection_pool
    held = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await _open_connections(client, 3, b"v" * 64, "replay-probe")
        assert len(pool._in_use_connections) == 1  # its own, released; ours still held
        assert await client.exists("replay-probe") == 0
    finally:
        await pool.release(held)
        await client.aclose()

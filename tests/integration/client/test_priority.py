"""``priority="high"``: on a full Redis evicting by LFU, high-priority keys outlive others.

Each test runs its own Redis server (``redis_factory``) with a small ``maxmemory``.
"""

from __future__ import annotations

import redis

from pipeline.client import IntelligentCache
from pipeline.client.sync import SyncIntelligentCache
from tests.integration.client.conftest import Backend, MakeCache
from tests.integration.conftest import RedisFactory

VALUE = "x" * 2_000
KEYS = 300


async def test_among_keys_read_as_often_lfu_evicts_high_priority_ones_last(
    redis_factory: RedisFactory, make_cache: MakeCache
) -> None:
    server = redis_factory(maxmemory="2mb", policy="allkeys-lfu")
    cache: IntelligentCache = make_cache(Backend("single", server=server), IntelligentCache)
    # LFU counters decay by one per minute boundary crossed since a key's last access:
    # one falling between the writes below and the fill made every key written here
    # as cold as the fill's, and the test failed at random. Without decay, what is
    # left is what the test is about: the touch's one step, among equals.
    await cache.redis.config_set("lfu-decay-time", 0)
    for i in range(KEYS):  # written alike, once each; every other one high
        priority = "high" if i % 2 else "normal"
        assert await cache.set("p", f"k{i}", VALUE, ttl=3600, compress=False, priority=priority)
    for j in range(2_000):  # 4 MB more through a 2 MB cache
        await cache.set("fill", f"f{j}", VALUE, ttl=3600, compress=False)

    survived = {"high": 0, "normal": 0}
    for i in range(KEYS):
        if await cache.exists("p", f"k{i}"):
            survived["high" if i % 2 else "normal"] += 1
    print(f"of {KEYS // 2} each, survived: {survived}")
    assert cache.core.stats.errors == 0
    assert survived["high"] >= 0.9 * (KEYS // 2), survived
    assert survived["normal"] <= 0.5 * survived["high"], survived


def test_the_sync_client_touches_a_high_priority_write_too(
    redis_factory: RedisFactory, make_sync_cache: MakeCache
) -> None:
    server = redis_factory(maxmemory="64mb", policy="allkeys-lfu")
    cache: SyncIntelligentCache = make_sync_cache(
        Backend("single", server=server), SyncIntelligentCache
    )
    cache.set("p", "high", VALUE, ttl=60, priority="high")
    cache.set("p", "normal", VALUE, ttl=60)
    raw = redis.Redis(host=server.host, port=server.port)
    try:
        freq = {k: raw.object("freq", cache.core.data_key("p", k)) for k in ("high", "normal")}
    finally:
        raw.close()
    assert freq["high"] > freq["normal"], freq

"""RedisCacheManager against a real Redis server and a real 3-node Redis Cluster."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from pipeline.client import (
    CacheCommandError,
    InvalidKeyError,
    RedisCacheManager,
    RedisConfigError,
    keytags_key,
    tag_key,
    write_warmed,
)
from pipeline.codec import ValueCodec
from tests.integration.client.conftest import Backend, MakeCache, RecordingSink
from tests.integration.conftest import RedisFactory


async def test_set_get_round_trip_and_events(
    backend: Backend, make_cache: MakeCache, sink: RecordingSink
) -> None:
    cache: RedisCacheManager = make_cache(backend)
    values = {
        "dict": {"name": "Ada", "langs": ["en", "fr"], "age": 36, "ok": True},
        "list": [1, 2.5, None, "x"],
        "text": "héllo ✓",
        "number": 42,
        "null": None,
        "key with spaces/and:colons": {"nested": {"deep": [1]}},
    }
    for key, value in values.items():
        assert await cache.set("users", key, value, ttl=120) is True
    for key, value in values.items():
        assert await cache.get("users", key) == value
    assert await cache.get("users", "absent") is None

    hit = sink.of("get", "dict")[0]
    assert hit["outcome"] == "hit"
    assert hit["namespace"] == "users"
    assert hit["latency_us"] > 0
    raw = backend.raw()
    try:
        stored = raw.get(cache.core.data_key("users", "dict"))
    finally:
        raw.close()
    assert stored is not None
    assert hit["size_bytes"] == len(stored)
    written = sink.of("set", "dict")[0]
    assert (written["outcome"], written["ttl"], written["size_bytes"]) == ("none", 120, len(stored))
    assert written["raw_bytes"] == len(stored) - 16
    assert sink.of("get", "absent")[0]["outcome"] == "miss"
    stats = cache.core.stats
    assert (stats.hits, stats.misses, stats.sets) == (6, 1, 6)


async def test_keys_follow_the_seed_layout_and_ttls(
    backend: Backend, make_cache: MakeCache
) -> None:
    cache: RedisCacheManager = make_cache(backend, redis_default_ttl=500)
    await cache.set("users", "42", {"a": 1}, ttl=77)
    await cache.set("users", "43", {"a": 2})
    raw = backend.raw()
    try:
        prefix = cache.settings.redis_key_prefix
        assert raw.exists(f"{prefix}users:42") == 1
        assert 70 <= raw.ttl(f"{prefix}users:42") <= 77
        assert 490 <= raw.ttl(f"{prefix}users:43") <= 500
    finally:
        raw.close()


async def test_compression_round_trips(backend: Backend, make_cache: MakeCache) -> None:
    cache: RedisCacheManager = make_cache(backend, redis_compression_threshold=256)
    big = {"rows": [{"id": i, "text": "lorem ipsum dolor " * 4} for i in range(200)]}
    small = {"id": 1}
    await cache.set("docs", "big", big)
    await cache.set("docs", "small", small)
    await cache.set("docs", "forced-off", big, compress=False)
    raw = backend.raw()
    codec = ValueCodec()
    try:
        stored_big = raw.get(cache.core.data_key("docs", "big"))
        stored_off = raw.get(cache.core.data_key("docs", "forced-off"))
        stored_small = raw.get(cache.core.data_key("docs", "small"))
    finally:
        raw.close()
    assert isinstance(stored_big, bytes)
    assert isinstance(stored_off, bytes)
    assert isinstance(stored_small, bytes)
    assert codec.read_header(stored_big).compressed
    assert not codec.read_header(stored_off).compressed
    assert not codec.read_header(stored_small).compressed
    assert len(stored_big) < len(stored_off) / 4
    assert await cache.get("docs", "big") == big
    assert await cache.get("docs", "forced-off") == big
    assert await cache.mget("docs", ["big", "small"]) == [big, small]
    ratio = (await cache.get_stats())["client"]["compression_ratio"]
    assert ratio is not None
    assert ratio < 0.6


async def test_delete_and_exists(
    backend: Backend, make_cache: MakeCache, sink: RecordingSink
) -> None:
    cache: RedisCacheManager = make_cache(backend)
    await cache.set("users", "1", "one", tags=["t"])
    assert await cache.exists("users", "1") is True
    assert await cache.exists("users", "2") is False
    assert [e["outcome"] for e in sink.of("exists")] == ["hit", "miss"]
    assert await cache.delete("users", "1") is True
    assert await cache.delete("users", "1") is False
    assert await cache.exists("users", "1") is False
    assert await cache.get("users", "1") is None
    raw = backend.raw()
    try:
        prefix = cache.settings.redis_key_prefix
        assert raw.exists(keytags_key(prefix, "users", "1")) == 0
        assert raw.sismember(tag_key(prefix, "users", "t"), f"{prefix}users:1") == 0
    finally:
        raw.close()
    assert [e["outcome"] for e in sink.of("delete")] == ["none", "none"]


async def test_mget_mset_span_slots_and_keep_order(
    backend: Backend, make_cache: MakeCache, sink: RecordingSink
) -> None:
    cache: RedisCacheManager = make_cache(backend)
    items = {f"k{i}": {"i": i} for i in range(60)}
    slots = {key_slot(cache.core.data_key("m", k).encode()) for k in items}
    assert len(slots) > 30  # the keys really are spread over the cluster's slots
    assert await cache.mset("m", items, ttl=90, tags=["batch"]) is True
    keys = ["k5", "missing", "k59", "k0", "k5"]
    assert await cache.mget("m", keys) == [{"i": 5}, None, {"i": 59}, {"i": 0}, {"i": 5}]
    assert await cache.mget("m", []) == []
    assert [e["outcome"] for e in sink.of("mget")] == ["hit", "miss", "hit", "hit", "hit"]
    assert len(sink.of("mset")) == 60
    assert all(e["ttl"] == 90 and e["tags"] == ["batch"] for e in sink.of("mset"))
    assert await cache.delete_by_tags("m", ["batch"]) == 60
    assert await cache.mget("m", ["k1", "k2"]) == [None, None]


async def test_increment_counters(backend: Backend, make_cache: MakeCache) -> None:
    cache: RedisCacheManager = make_cache(backend, redis_default_ttl=300)
    assert await cache.increment("counters", "views") == 1
    assert await cache.increment("counters", "views", 41) == 42
    assert await cache.increment("counters", "views", -2) == 40
    assert await cache.get("counters", "views") == 40
    assert await cache.increment("counters", "short", ttl=20) == 1
    raw = backend.raw()
    try:
        assert 290 <= raw.ttl(cache.core.data_key("counters", "views")) <= 300
        assert 15 <= raw.ttl(cache.core.data_key("counters", "short")) <= 20
    finally:
        raw.close()
    await cache.set("counters", "json", {"not": "a number"})
    with pytest.raises(CacheCommandError, match="not an integer"):
        await cache.increment("counters", "json")
    assert cache.core.stats.errors == 1


async def test_expire_extends_value_index_and_tag_sets(
    backend: Backend, make_cache: MakeCache
) -> None:
    cache: RedisCacheManager = make_cache(backend)
    await cache.set("s", "a", 1, ttl=50, tags=["x", "y"])
    assert await cache.expire("s", "a", 5000) is True
    assert await cache.expire("s", "missing", 10) is False
    prefix = cache.settings.redis_key_prefix
    raw = backend.raw()
    try:
        assert 4990 <= raw.ttl(cache.core.data_key("s", "a")) <= 5000
        assert 4990 <= raw.ttl(keytags_key(prefix, "s", "a")) <= 5000
        for tag in ("x", "y"):
            assert 4990 <= raw.ttl(tag_key(prefix, "s", tag)) <= 5000
        # a shorter TTL never shortens a tag set that other members may need
        assert await cache.expire("s", "a", 30) is True
        assert raw.ttl(cache.core.data_key("s", "a")) <= 30
        assert raw.ttl(tag_key(prefix, "s", "x")) > 4000
    finally:
        raw.close()


async def test_tag_sets_outlive_their_longest_member(
    backend: Backend, make_cache: MakeCache
) -> None:
    cache: RedisCacheManager = make_cache(backend)
    await cache.set("t", "long", 1, ttl=1000, tags=["shared"])
    await cache.set("t", "short", 2, ttl=10, tags=["shared"])
    raw = backend.raw()
    try:
        ttl = raw.ttl(tag_key(cache.settings.redis_key_prefix, "t", "shared"))
    finally:
        raw.close()
    assert 990 <= ttl <= 1000


async def test_delete_by_tags(backend: Backend, make_cache: MakeCache) -> None:
    cache: RedisCacheManager = make_cache(backend)
    await cache.set("users", "1", "a", tags=["team:1", "admins"])
    await cache.set("users", "2", "b", tags=["team:1"])
    await cache.set("users", "3", "c", tags=["team:2"])
    await cache.set("users", "4", "d")
    await cache.set("groups", "1", "other namespace, same tag", tags=["team:1"])
    # "5" was tagged, then re-set without the tag: it must survive the tag's deletion
    await cache.set("users", "5", "e", tags=["team:1"])
    await cache.set("users", "5", "e2", tags=["team:3"])

    assert await cache.delete_by_tags("users", ["team:1"]) == 2
    assert await cache.mget("users", ["1", "2", "3", "4", "5"]) == [None, None, "c", "d", "e2"]
    assert await cache.get("groups", "1") == "other namespace, same tag"
    assert await cache.delete_by_tags("users", ["team:2", "team:3", "nobody"]) == 2
    assert await cache.delete_by_tags("users", ["team:1"]) == 0
    assert await cache.delete_by_tags("users", []) == 0
    prefix = cache.settings.redis_key_prefix
    raw = backend.raw()
    try:
        for tag in ("team:1", "team:2", "team:3", "admins"):
            assert raw.scard(tag_key(prefix, "users", tag)) == 0
        assert raw.scard(tag_key(prefix, "groups", "team:1")) == 1
    finally:
        raw.close()


async def test_health_check(backend: Backend, make_cache: MakeCache) -> None:
    cache: RedisCacheManager = make_cache(backend)
    health = await cache.health_check()
    assert health["healthy"] is True
    assert health["error"] is None
    assert 0 < health["latency_ms"] < 1000


async def test_get_stats_reports_client_and_redis(backend: Backend, make_cache: MakeCache) -> None:
    cache: RedisCacheManager = make_cache(backend)
    for i in range(20):
        await cache.set("s", str(i), {"i": i})
    for i in range(30):
        await cache.get("s", str(i))
    stats = await cache.get_stats()
    client = stats["client"]
    assert (client["hits"], client["misses"], client["sets"]) == (20, 10, 20)
    assert client["hit_ratio"] == pytest.approx(20 / 30)
    assert client["bytes_read"] > 0
    assert client["bytes_written"] > 0
    get_latency = client["latency_us"]["get"]
    assert get_latency["count"] == 30
    assert 0 < get_latency["p50"] <= get_latency["p99"] <= get_latency["max"]
    assert stats["emitter"] is None
    redis_part = stats["redis"]
    assert redis_part["nodes"] == (3 if backend.name == "cluster" else 1)
    assert redis_part["memory"]["used_memory"] > 0
    assert redis_part["keyspace"]["db0"]["keys"] >= 20
    assert redis_part["evictions"] >= 0


async def test_undecodable_values_are_misses(backend: Backend, make_cache: MakeCache) -> None:
    cache: RedisCacheManager = make_cache(backend)
    raw = backend.raw()
    try:
        raw.set(cache.core.data_key("x", "foreign"), b"written by someone else")
        good = cache.core.codec.encode({"v": 1}).data
        raw.set(cache.core.data_key("x", "damaged"), good[:-1] + b"X")
    finally:
        raw.close()
    assert await cache.get("x", "foreign") is None
    assert await cache.get("x", "damaged") is None
    assert cache.core.stats.decode_errors == 2
    assert cache.core.stats.misses == 2


async def test_first_read_of_a_warmed_value_is_reported_once(
    backend: Backend, make_cache: MakeCache, sink: RecordingSink
) -> None:
    cache: RedisCacheManager = make_cache(backend)
    other: RedisCacheManager = make_cache(backend, redis_key_prefix=cache.settings.redis_key_prefix)
    other.core.emit = sink
    prefix = cache.settings.redis_key_prefix
    warm = cache.core.codec.encode({"warm": True}, origin="warm").data
    raw = backend.raw()
    try:
        assert await write_warmed(cache.redis, prefix, "w", "k", warm, 60) is True
        assert await write_warmed(cache.redis, prefix, "w", "k", warm, 60) is False  # NX
        assert await cache.get("w", "k") == {"warm": True}
        assert await cache.get("w", "k") == {"warm": True}
        assert await other.get("w", "k") == {"warm": True}
        assert await write_warmed(cache.redis, prefix, "w", "m", warm, 60) is True
        assert await cache.mget("w", ["m", "k"]) == [{"warm": True}, {"warm": True}]
        assert raw.exists(f"{prefix}#warm:w:k") == 0
    finally:
        raw.close()
    assert [e["warmed"] for e in sink.of("get", "k")] == [True, False, False]
    assert [e["warmed"] for e in sink.of("mget")] == [True, False]
    assert cache.core.stats.warmed_hits == 2
    # application writes never carry the flag
    await cache.set("w", "k", {"warm": False})
    assert await cache.get("w", "k") == {"warm": False}
    assert sink.of("get", "k")[-1]["warmed"] is False


async def test_arguments_are_validated_before_any_io(
    make_cache: MakeCache, single: Backend
) -> None:
    cache: RedisCacheManager = make_cache(single)
    bad_calls = [
        cache.get("bad:namespace", "k"),
        cache.get("", "k"),
        cache.get("ns", ""),
        cache.get("ns", "k" * 1025),
        cache.set("ns", "k", 1, ttl=0),
        cache.set("ns", "k", 1, tags=["x" * 129]),
        cache.set("ns", "k", 1, tags=[str(i) for i in range(33)]),
        cache.mget("ns", "k1"),
        cache.delete_by_pattern("ns", ""),
        cache.increment("ns", "k", 1.5),
    ]
    for call in bad_calls:
        with pytest.raises(InvalidKeyError):
            await call
    assert cache.core.stats.errors == 0


async def test_configure_redis_on_own_server(
    redis_factory: RedisFactory, make_cache: MakeCache
) -> None:
    server = redis_factory()
    cache: RedisCacheManager = make_cache(Backend("single", server=server), redis_max_memory="64mb")
    assert await cache.configure_redis() == {"maxmemory": str(64 * 1024 * 1024)}
    applied = await cache.configure_redis(
        {"maxmemory": "2mb", "maxmemory-policy": "allkeys-lru", "maxmemory_samples": 7}
    )
    assert applied == {
        "maxmemory": str(2 * 1024 * 1024),
        "maxmemory-policy": "allkeys-lru",
        "maxmemory-samples": "7",
    }
    with pytest.raises(RedisConfigError, match="maxmemory-policy must be one of"):
        await cache.configure_redis({"maxmemory-policy": "lru"})
    with pytest.raises(RedisConfigError, match="manages maxmemory"):
        await cache.configure_redis({"appendonly": "yes"})
    with pytest.raises(RedisConfigError, match="maxmemory"):
        await cache.configure_redis({"maxmemory": "lots"})
    # The limit is real: filling past it evicts, and get_stats reports the evictions.
    blob = "x" * 20_000
    for i in range(300):
        await cache.set("fill", str(i), blob, compress=False)
    stats = await cache.get_stats()
    assert stats["redis"]["evictions"] > 0
    assert stats["redis"]["memory"]["maxmemory_policy"] == "allkeys-lru"
    assert stats["redis"]["memory"]["maxmemory"] == 2 * 1024 * 1024


@pytest.mark.cluster
async def test_configure_redis_applies_to_every_cluster_primary(
    redis_cluster: object, make_cache: MakeCache
) -> None:
    from pipeline.devstack import RedisClusterServers

    assert isinstance(redis_cluster, RedisClusterServers)
    cache: RedisCacheManager = make_cache(Backend("cluster", cluster=redis_cluster))
    before = (await cache.get_stats())["redis"]["memory"]
    try:
        await cache.configure_redis({"maxmemory": "300mb", "maxmemory-policy": "volatile-lru"})
        memory = (await cache.get_stats())["redis"]["memory"]
        assert memory["maxmemory"] == 3 * 300 * 1024 * 1024
        assert memory["maxmemory_policy"] == "volatile-lru"
    finally:
        await cache.configure_redis(
            {
                "maxmemory": before["maxmemory"] // 3,
                "maxmemory-policy": before["maxmemory_policy"],
            }
        )

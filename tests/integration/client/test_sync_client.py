"""The blocking client mirrors the async one: same API, same keys, same events."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

from pipeline.client import InvalidKeyError, LoadTimeoutError, keytags_key, write_warmed_sync
from pipeline.client.sync import SyncIntelligentCache, SyncRedisCacheManager
from tests.integration.client.conftest import Backend, MakeCache, RecordingSink
from tests.integration.client.test_events_kafka import read_events


def test_sync_api_round_trip(
    backend: Backend, make_sync_cache: MakeCache, sink: RecordingSink
) -> None:
    cache: SyncRedisCacheManager = make_sync_cache(backend, redis_compression_threshold=128)
    big = {"text": "abc" * 500}
    assert cache.set("s", "a", {"x": 1}, ttl=60, tags=["t1"]) is True
    assert cache.set("s", "big", big, tags=["t1", "t2"]) is True
    assert cache.get("s", "a") == {"x": 1}
    assert cache.get("s", "big") == big
    assert cache.get("s", "none") is None
    assert cache.exists("s", "a") is True
    assert cache.mset("s", {f"m{i}": i for i in range(30)}, tags=["m"]) is True
    assert cache.mget("s", ["m3", "zz", "m29"]) == [3, None, 29]
    assert cache.increment("s", "n", 5) == 5
    assert cache.get("s", "n") == 5
    assert cache.expire("s", "a", 600) is True
    assert cache.delete_by_pattern("s", "m1*") == 11
    assert cache.delete_by_tags("s", ["m"]) == 19
    assert cache.delete_by_tags("s", ["t2"]) == 1
    assert cache.delete("s", "a") is True
    assert cache.get("s", "a") is None
    raw = backend.raw()
    try:
        assert raw.exists(keytags_key(cache.settings.redis_key_prefix, "s", "a")) == 0
    finally:
        raw.close()
    assert cache.health_check()["healthy"] is True
    stats = cache.get_stats()
    assert stats["client"]["hits"] >= 4
    assert stats["redis"]["nodes"] == (3 if backend.name == "cluster" else 1)
    assert {e["op"] for e in sink.events} == {
        "set",
        "get",
        "exists",
        "mset",
        "mget",
        "incr",
        "expire",
        "delete",
    }
    with pytest.raises(InvalidKeyError):
        cache.get("no spaces", "k")


def test_threads_missing_together_call_the_loader_once(
    backend: Backend, make_sync_cache: MakeCache
) -> None:
    cache: SyncIntelligentCache = make_sync_cache(backend, SyncIntelligentCache)
    calls = 0
    lock = threading.Lock()

    def origin() -> dict[str, int]:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(0.05)
        return {"v": 1}

    barrier = threading.Barrier(40)
    results: list[object] = []

    def worker() -> None:
        barrier.wait()
        results.append(cache.get("p", "hot", fallback_data=origin))

    threads = [threading.Thread(target=worker) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert calls == 1
    assert results == [{"v": 1}] * 40
    assert cache.get("p", "hot") == {"v": 1}


def test_a_sync_miss_that_joins_a_load_in_flight_says_so(
    backend: Backend, make_sync_cache: MakeCache, sink: RecordingSink
) -> None:
    cache: SyncIntelligentCache = make_sync_cache(backend, SyncIntelligentCache)
    release = threading.Event()

    def origin() -> dict[str, int]:
        release.wait(10)
        return {"v": 1}

    first = threading.Thread(target=lambda: cache.get("p", "k", fallback_data=origin))
    first.start()
    dkey = cache.settings.redis_key_prefix + "p:k"
    deadline = time.monotonic() + 10
    while dkey not in cache._flights and time.monotonic() < deadline:
        time.sleep(0.005)
    second: list[object] = []
    joiner = threading.Thread(
        target=lambda: second.append(cache.get("p", "k", fallback_data=origin))
    )
    joiner.start()
    while len(sink.of("get", "k")) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    release.set()
    first.join(10)
    joiner.join(10)
    assert second == [{"v": 1}]
    # The worker's models learn one origin read, not two (the loading read's event goes
    # out once its claim has answered, so the joiner's may come first).
    assert sorted((e["outcome"], e["joined"]) for e in sink.of("get", "k")) == [
        ("miss", False),
        ("miss", True),
    ]


def test_a_hung_sync_loader_does_not_block_its_key_for_other_threads(
    single: Backend, make_sync_cache: MakeCache
) -> None:
    cache: SyncIntelligentCache = make_sync_cache(single, SyncIntelligentCache, load_timeout_s=0.3)
    release = threading.Event()
    loading = threading.Event()

    def hung() -> str:
        loading.set()
        release.wait(10)
        return "late"

    leader = threading.Thread(target=lambda: cache.get("p", "stuck", fallback_data=hung))
    leader.start()
    assert loading.wait(5)  # the leader's load is in flight
    with pytest.raises(LoadTimeoutError):
        cache.get("p", "stuck", fallback_data=lambda: "mine")
    assert leader.is_alive()  # the joiner gave up while the load still hung
    dkey = cache.settings.redis_key_prefix + "p:stuck"
    real = cache.redis.execute_command
    reads: list[object] = []

    def execute_command(*args: object, **options: object) -> object:
        if args[:2] == ("GET", dkey):
            reads.append(args)
        return real(*args, **options)  # type: ignore[no-untyped-call]

    cache.redis.execute_command = execute_command  # type: ignore[method-assign]
    assert cache.get("p", "stuck", fallback_data=lambda: "fresh") == "fresh"  # loads again
    # It did not wait on the hung load's own loading mark: it read the key, looked at
    # the mark once on the way to loading, and once more when its claim found it.
    assert len(reads) <= 3
    release.set()
    leader.join(5)


def test_sync_intelligent_cache_smart_ttl_refresh_and_warm(
    backend: Backend, make_sync_cache: MakeCache, sink: RecordingSink
) -> None:
    cache: SyncIntelligentCache = make_sync_cache(
        backend, SyncIntelligentCache, refresh_beta=1e9, smart_ttl_min=5
    )
    prefix = cache.settings.redis_key_prefix
    raw = backend.raw()
    try:
        raw.hset(f"{prefix}#ttl:p", "k", "77")
        versions = iter(["v1", "v2"])

        def origin() -> str:
            time.sleep(0.01)  # XFetch weighs the refresh by the load time
            return next(versions)

        assert cache.get("p", "k", user_context="u", fallback_data=origin) == "v1"
        assert 70 <= raw.ttl(cache.core.data_key("p", "k")) <= 77
        assert cache.get("p", "k", fallback_data=origin) == "v1"
        deadline = time.monotonic() + 5
        while cache.get("p", "k") != "v2":  # refreshed in the background
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert cache.core.stats.early_refreshes == 1

        envelope = cache.core.codec.encode("warm", origin="warm").data
        assert write_warmed_sync(cache.redis, prefix, "p", "w", envelope, 30) is True
        assert write_warmed_sync(cache.redis, prefix, "p", "w", envelope, 30) is False
        assert cache.get("p", "w", session_id="s") == "warm"
        assert cache.get("p", "w") == "warm"
        assert [e["warmed"] for e in sink.of("get", "w")] == [True, False]
        assert cache.set("p", "hi", 1, priority="high") is True
        assert raw.ttl(cache.core.data_key("p", "hi")) > cache.settings.redis_default_ttl
    finally:
        raw.close()


def test_sync_events_reach_kafka(single: Backend, kafka_bootstrap: str) -> None:
    topic = f"cachecast.access.sync-{uuid.uuid4().hex[:8]}"
    settings = single.settings(
        emitter_enabled=True,
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_access=topic,
        emitter_linger_ms=5,
    )
    with SyncIntelligentCache(settings) as cache:
        cache.set("s", "k", "v")
        assert cache.get("s", "k", user_context="u") == "v"
        assert cache.get("s", "missing") is None
        assert cache.emitter is not None
        assert cache.emitter.flush(20.0)
    events, _ = asyncio.run(read_events(kafka_bootstrap, topic, until=3))
    assert [(e.op, e.outcome, e.user) for e in events] == [
        ("set", "none", None),
        ("get", "hit", "u"),
        ("get", "miss", None),
    ]

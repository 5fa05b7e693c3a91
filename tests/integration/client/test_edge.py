"""Edge warms on real Redis: a client applies prefetch rules the moment a trigger misses."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from pipeline.client import IntelligentCache, SyncIntelligentCache
from pipeline.client.keys import USER_RULES, rules_hash, rules_stream
from pipeline.client.rulebook import STREAM_FIELD
from pipeline.codec import CodecError, ValueCodec, is_loading_mark
from pipeline.loaders import LoaderConfig
from pipeline.prefetch import RulePlan, RuleSet, encode_rule, encode_updates
from tests.integration.client.conftest import Backend, MakeCache, RecordingSink


class Origin:
    """A namespace loader ``(namespace, key) -> value`` that counts calls per key."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.delay = delay
        self.fail = fail
        self.calls: dict[str, int] = {}

    async def __call__(self, namespace: str, key: str) -> Any:
        self.calls[key] = self.calls.get(key, 0) + 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise ConnectionError("origin down")
        return {"key": key, "from": "origin"}

    def app_loader(self, key: str) -> Any:
        """The application's own ``fallback_data`` for ``key``, through the same origin."""
        return lambda: self("orders", key)


def publish(
    backend: Backend,
    cache: IntelligentCache | SyncIntelligentCache,
    trigger: str,
    successors: list[str],
    ttl: int = 0,
) -> None:
    """Write a rule the way the pipeline does (one HSET into the trigger's shard)."""
    prefix = cache.settings.redis_key_prefix
    rule = encode_rule([(key, 0.9) for key in successors], compiled_at=time.time(), ttl=ttl)
    client = backend.raw()
    try:
        client.hset(rules_hash(prefix, "orders", trigger), trigger, rule)
    finally:
        client.close()


async def settle(cache: IntelligentCache) -> None:
    """Wait for this client's background edge work to finish."""
    for _ in range(200):
        if not cache._edge_tasks:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("edge warms did not finish")


async def test_a_miss_loads_what_the_rule_names_and_reads_count_as_edge_warms(
    backend: Backend, make_cache: MakeCache, sink: RecordingSink
) -> None:
    origin = Origin()
    cache: IntelligentCache = make_cache(backend, IntelligentCache, loaders={"orders": origin})
    publish(backend, cache, "a", ["b", "c"])
    await cache.refresh_rules()
    assert await cache.get("orders", "a", fallback_data=origin.app_loader("a")) == {
        "key": "a",
        "from": "origin",
    }
    await settle(cache)
    assert origin.calls == {"a": 1, "b": 1, "c": 1}
    raw = backend.raw()
    try:
        stored = raw.get(cache.settings.redis_key_prefix + "orders:b")
        ttl = raw.ttl(cache.settings.redis_key_prefix + "orders:b")
    finally:
        raw.close()
    assert isinstance(stored, bytes)
    assert ValueCodec().decode(stored).origin == "edge"
    assert 0 < ttl <= cache.settings.redis_default_ttl
    # The application asks for b: a hit, the first read of an edge warm, and b's own
    # rule is looked up (b was a trigger the cache could not serve alone).
    assert await cache.get("orders", "b", fallback_data=origin.app_loader("b")) == {
        "key": "b",
        "from": "origin",
    }
    assert origin.calls["b"] == 1
    (read,) = sink.of("get", "b")
    assert (read["outcome"], read["warmed"], read["warm_path"]) == ("hit", True, "edge")
    warms = sink.of("warm")
    assert sorted(e["key"] for e in warms) == ["b", "c"]
    assert all(
        e["outcome"] == "none" and e["ttl"] == cache.settings.redis_default_ttl for e in warms
    )
    stats = (await cache.get_stats())["client"]
    assert (stats["edge_issued"], stats["edge_written"], stats["edge_hits"]) == (2, 2, 1)
    assert stats["loads"] == 1  # the application fetched a itself, nothing else


async def test_a_get_during_the_edge_load_joins_it_and_the_origin_is_asked_once(
    backend: Backend, make_cache: MakeCache, sink: RecordingSink
) -> None:
    origin = Origin(delay=0.15)
    cache: IntelligentCache = make_cache(backend, IntelligentCache, loaders={"orders": origin})
    publish(backend, cache, "a", ["b"])
    await cache.refresh_rules()
    app = Origin()
    await cache.get("orders", "a", fallback_data=app.app_loader("a"))
    await asyncio.sleep(0.02)  # the edge load of b is under way
    value = await cache.get("orders", "b", fallback_data=app.app_loader("b"))
    assert value == {"key": "b", "from": "origin"}
    assert origin.calls == {"b": 1}
    assert app.calls == {"a": 1}
    (read,) = sink.of("get", "b")
    assert (read["outcome"], read["joined"], read["warmed"]) == ("hit", True, True)
    stats = cache.core.stats
    assert (stats.inflight_joins, stats.loads, stats.misses) == (1, 1, 1)


def hold_reads_of(cache: IntelligentCache, key: str, seconds: float) -> None:
    """Delay this client's GET of ``key`` (as a busy event loop or a slow Redis would)."""
    dkey = cache.settings.redis_key_prefix + "orders:" + key
    real = cache._redis.execute_command

    async def execute_command(*args: Any, **options: Any) -> Any:
        if args[:2] == ("GET", dkey):
            await asyncio.sleep(seconds)
        return await real(*args, **options)

    cache._redis.execute_command = execute_command  # type: ignore[method-assign]


async def test_a_successor_read_while_its_triggers_read_is_out_joins_the_rules_load(
    backend: Backend, make_cache: MakeCache, sink: RecordingSink
) -> None:
    origin = Origin(delay=0.02)
    cache: IntelligentCache = make_cache(backend, IntelligentCache, loaders={"orders": origin})
    publish(backend, cache, "a", ["b"])
    await cache.refresh_rules()
    hold_reads_of(cache, "a", 0.05)
    app = Origin()

    async def b_soon_after() -> Any:
        await asyncio.sleep(0.01)  # b is asked for while a's read is still out
        return await cache.get("orders", "b", fallback_data=app.app_loader("b"))

    _, b = await asyncio.gather(
        cache.get("orders", "a", fallback_data=app.app_loader("a")), b_soon_after()
    )
    assert b == {"key": "b", "from": "origin"}
    assert app.calls == {"a": 1}  # b was no demand miss: it waited for the rule's load
    assert origin.calls == {"b": 1}
    (read,) = sink.of("get", "b")
    assert (read["outcome"], read["joined"]) == ("hit", True)
    assert cache.core.stats.inflight_joins == 1


async def test_two_reads_out_at_once_whose_rules_name_each_other_both_join(
    backend: Backend, make_cache: MakeCache
) -> None:
    origin = Origin(delay=0.02)
    cache: IntelligentCache = make_cache(backend, IntelligentCache, loaders={"orders": origin})
    publish(backend, cache, "a", ["b"])
    publish(backend, cache, "b", ["a"])
    await cache.refresh_rules()
    hold_reads_of(cache, "a", 0.05)
    hold_reads_of(cache, "b", 0.05)
    app = Origin()
    a, b = await asyncio.gather(
        cache.get("orders", "a", fallback_data=app.app_loader("a")),
        cache.get("orders", "b", fallback_data=app.app_loader("b")),
    )
    await settle(cache)
    assert a == b | {"key": "a"} == {"key": "a", "from": "origin"}
    # Each rule fired before its read waited for the other: both reads joined an edge
    # load, none waited out the other (it would then have loaded for itself).
    assert app.calls == {}
    assert origin.calls == {"a": 1, "b": 1}
    assert cache.core.stats.inflight_joins == 2


async def test_a_trigger_that_hits_releases_the_reserved_loads_at_once(
    backend: Backend, make_cache: MakeCache, sink: RecordingSink
) -> None:
    origin = Origin()
    cache: IntelligentCache = make_cache(backend, IntelligentCache, loaders={"orders": origin})
    publish(backend, cache, "a", ["b"])
    await cache.refresh_rules()
    await cache.set("orders", "a", {"cached": True})  # a will hit: its rule must not fire
    hold_reads_of(cache, "a", 0.05)
    app = Origin()

    async def b_soon_after() -> Any:
        await asyncio.sleep(0.01)
        return await cache.get("orders", "b", fallback_data=app.app_loader("b"))

    a, b = await asyncio.gather(cache.get("orders", "a"), b_soon_after())
    await settle(cache)
    assert a == {"cached": True}
    assert b == {"key": "b", "from": "origin"}
    assert origin.calls == {}  # no edge load: a hit triggers nothing
    assert app.calls == {"b": 1}  # b, released, loaded itself
    (read,) = sink.of("get", "b")
    assert (read["outcome"], read["joined"]) == ("miss", False)
    assert cache.core.stats.rules_applied == 0
    assert not cache._reserved  # nothing left reserved


@pytest.mark.parametrize("lost_claim", [False, True], ids=["read-the-mark", "lost-the-claim"])
async def test_another_client_waits_for_the_load_in_flight_instead_of_fetching(
    single: Backend, make_cache: MakeCache, monkeypatch: pytest.MonkeyPatch, lost_claim: bool
) -> None:
    # lost_claim: the second client reads nothing, and the first client's edge load
    # claims the key before the second's claim lands; else the second reads its mark.
    origin = Origin(delay=0.15)
    first: IntelligentCache = make_cache(single, IntelligentCache, loaders={"orders": origin})
    prefix = first.settings.redis_key_prefix
    second: IntelligentCache = make_cache(
        single, IntelligentCache, redis_key_prefix=prefix, edge_warming=False
    )
    publish(single, first, "a", ["b"])
    await first.refresh_rules()

    async def start_the_edge_load() -> None:
        await first.get("orders", "a", fallback_data=Origin().app_loader("a"))
        assert is_loading_mark(await _marked(first, prefix + "orders:b"))

    await _race(monkeypatch, second, start_the_edge_load, lost_claim)
    app_loads = Origin()
    value = await second.get("orders", "b", fallback_data=app_loads.app_loader("b"))
    assert value == {"key": "b", "from": "origin"}
    assert app_loads.calls == {}  # the second client's own fallback never ran
    assert origin.calls == {"b": 1}
    stats = second.core.stats
    if lost_claim:
        # A miss that joined a load (its event, sent when the claim answered, says so).
        assert (stats.misses, stats.load_joins, stats.loads, stats.edge_hits) == (1, 1, 0, 0)
    else:
        assert stats.inflight_joins == 1
        assert stats.edge_hits == 1  # it took the warm marker: the first read


async def _race(
    monkeypatch: pytest.MonkeyPatch,
    cache: IntelligentCache,
    start: Callable[[], Awaitable[None]],
    lost_claim: bool,
) -> None:
    """Start another client's load (``start``) now, or, with ``lost_claim``, just
    before ``cache``'s next claim is sent: after its read found nothing."""
    if not lost_claim:
        await start()
        return
    real_claim = cache._claim_load

    async def claim_after_the_other(*args: Any) -> tuple[bool | None, int | None]:
        await start()
        return await real_claim(*args)

    monkeypatch.setattr(cache, "_claim_load", claim_after_the_other)


C = TypeVar("C", IntelligentCache, SyncIntelligentCache)


def _two_clients(backend: Backend, make: MakeCache, cls: type[C]) -> tuple[C, C]:
    """Two independent clients of one Redis and key prefix."""
    first = make(backend, cls)
    return first, make(backend, cls, redis_key_prefix=first.settings.redis_key_prefix)


async def _marked(cache: IntelligentCache, dkey: str) -> bytes:
    """What ``dkey`` holds once something is there (a load's mark is claimed beside it)."""
    for _ in range(400):
        raw: bytes | None = await cache.redis.get(dkey)
        if raw is not None:
            return raw
        await asyncio.sleep(0.005)
    raise AssertionError(f"nothing was written to {dkey}")


def _release_on_second_read(cache: Any, dkey: str, gate: Any) -> None:
    """Open ``gate`` when ``cache`` reads ``dkey`` a second time: it is polling a load."""
    _count_reads(cache, dkey, gate, open_at=2)


@pytest.mark.parametrize("lost_claim", [False, True], ids=["read-the-mark", "lost-the-claim"])
async def test_another_client_waits_for_an_application_load_in_flight(
    backend: Backend,
    make_cache: MakeCache,
    sink: RecordingSink,
    monkeypatch: pytest.MonkeyPatch,
    lost_claim: bool,
) -> None:
    # lost_claim: the second client reads nothing, and the first starts loading the
    # key before the second's claim lands; else the second reads the first's mark.
    first, second = _two_clients(backend, make_cache, IntelligentCache)
    dkey = first.settings.redis_key_prefix + "orders:k"
    gate = asyncio.Event()
    calls: list[str] = []
    leader: list[asyncio.Task[Any]] = []

    async def slow() -> Any:
        calls.append("first")
        await gate.wait()
        return {"v": 1}

    async def own() -> Any:
        calls.append("second")
        return {"v": 2}

    async def start_the_first() -> None:
        leader.append(asyncio.create_task(first.get("orders", "k", fallback_data=slow)))
        assert is_loading_mark(await _marked(first, dkey))  # claimed before the load
        _release_on_second_read(second, dkey, gate)

    await _race(monkeypatch, second, start_the_first, lost_claim)
    assert await second.get("orders", "k", fallback_data=own, session_id="second") == {"v": 1}
    assert await leader[0] == {"v": 1}
    assert calls == ["first"]  # the origin was asked once
    assert (second.core.stats.loads, second.core.stats.load_joins) == (0, 1)
    assert second.core.stats.misses == 1
    # Either way the read says it joined: one whose claim lost the race holds its
    # event until the claim answers, and keeps its place among the reads.
    (event,) = [e for e in sink.of("get", "k") if e["session"] == "second"]
    assert (event["outcome"], event["joined"]) == ("miss", True)


def _count_reads(cache: Any, dkey: str, gate: Any, open_at: int) -> list[int]:
    """Count ``cache``'s GETs of ``dkey``, on its pool or on its read line; open ``gate``
    at the ``open_at``-th."""
    reads = [0]

    def seen(n: int) -> None:
        for _ in range(n):
            reads[0] += 1
            if reads[0] == open_at:
                gate.set()

    real = cache.redis.execute_command

    def execute_command(*args: Any, **options: Any) -> Any:
        if args[:2] == ("GET", dkey):
            seen(1)
        return real(*args, **options)

    cache.redis.execute_command = execute_command
    line = getattr(cache, "_reads", None)
    if line is not None:  # a batch or a read the line refuses goes to the pool (above)
        real_get, real_send = line.get, line.send

        def get(key: str) -> Any:
            sent = real_get(key)
            if sent is not None and key == dkey:
                seen(1)
            return sent

        def send(commands: list[tuple[Any, ...]]) -> Any:
            sent = real_send(commands)
            if sent is not None:
                seen(sum(1 for command in commands if command[:2] == ("GET", dkey)))
            return sent

        line.get, line.send = get, send
    return reads


async def test_readers_waiting_for_a_load_elsewhere_share_one_poll(
    backend: Backend, make_cache: MakeCache
) -> None:
    first, second = _two_clients(backend, make_cache, IntelligentCache)
    prefix = first.settings.redis_key_prefix
    dkey = prefix + "orders:k"
    gate = asyncio.Event()

    async def slow() -> Any:
        await gate.wait()
        return {"v": 1}

    async def own() -> Any:
        raise AssertionError("the second client fetched the key itself")

    loading = asyncio.create_task(first.get("orders", "k", fallback_data=slow))
    await _marked(first, dkey)
    readers = 20
    reads = _count_reads(second, dkey, gate, open_at=readers + 3)  # each reader's GET, 3 polls
    values = await asyncio.gather(
        *(second.get("orders", "k", fallback_data=own) for _ in range(readers))
    )
    assert values == [{"v": 1}] * readers
    assert await loading == {"v": 1}
    assert reads[0] <= readers + 8  # one poll for all of them, not one each
    assert second.core.stats.load_joins == readers


def test_threads_waiting_for_a_load_elsewhere_share_one_poll(
    single: Backend, make_sync_cache: MakeCache
) -> None:
    first, second = _two_clients(single, make_sync_cache, SyncIntelligentCache)
    prefix = first.settings.redis_key_prefix
    gate, loading = threading.Event(), threading.Event()

    def slow() -> Any:
        loading.set()
        gate.wait(10)
        return {"v": 1}

    def own() -> Any:
        raise AssertionError("the second client fetched the key itself")

    leader = threading.Thread(target=lambda: first.get("o", "k", fallback_data=slow))
    leader.start()
    assert loading.wait(5)
    readers = 16
    # Every thread's own GET, then 12 polls: time enough for all of them to be waiting.
    reads = _count_reads(second, prefix + "o:k", gate, open_at=readers + 12)
    values: list[Any] = []
    threads = [
        threading.Thread(target=lambda: values.append(second.get("o", "k", fallback_data=own)))
        for _ in range(readers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    leader.join(5)
    assert values == [{"v": 1}] * readers
    assert reads[0] <= readers + 16  # one poll for all of them, not one each


async def test_a_failed_application_load_releases_its_loading_mark(
    backend: Backend, make_cache: MakeCache
) -> None:
    cache: IntelligentCache = make_cache(backend, IntelligentCache)
    dkey = cache.settings.redis_key_prefix + "orders:k"

    async def failing() -> Any:
        await asyncio.sleep(0.01)
        raise ConnectionError("origin down")

    with pytest.raises(ConnectionError):
        await cache.get("orders", "k", fallback_data=failing)
    await settle(cache)
    assert await cache.redis.get(dkey) is None  # readers elsewhere load it themselves at once

    async def unstorable() -> Any:
        return {1, 2}  # loaded, but not JSON: the write fails

    with pytest.raises(CodecError):
        await cache.get("orders", "k", fallback_data=unstorable)
    await settle(cache)
    assert await cache.redis.get(dkey) is None


@pytest.mark.parametrize("lost_claim", [False, True], ids=["read-the-mark", "lost-the-claim"])
def test_another_sync_client_waits_for_an_application_load_in_flight(
    single: Backend,
    make_sync_cache: MakeCache,
    sink: RecordingSink,
    monkeypatch: pytest.MonkeyPatch,
    lost_claim: bool,
) -> None:
    # lost_claim: the second client reads nothing, and the first starts loading the
    # key before the second's claim lands; else the second reads the first's mark.
    first, second = _two_clients(single, make_sync_cache, SyncIntelligentCache)
    dkey = first.settings.redis_key_prefix + "o:k"
    gate, loading = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow() -> Any:
        calls.append("first")
        loading.set()  # the loading mark is claimed before the loader runs
        gate.wait(10)
        return {"v": 1}

    def own() -> Any:
        calls.append("second")
        return {"v": 2}

    results: list[Any] = []
    leader = threading.Thread(
        target=lambda: results.append(first.get("o", "k", fallback_data=slow))
    )

    def start_the_first() -> None:
        leader.start()
        assert loading.wait(5)
        _release_on_second_read(second, dkey, gate)

    if lost_claim:
        real_plan = second._mark_plan

        def claim_after_the_first(*args: Any) -> Any:
            start_the_first()
            return real_plan(*args)

        monkeypatch.setattr(second, "_mark_plan", claim_after_the_first)
    else:
        start_the_first()
    assert second.get("o", "k", fallback_data=own, session_id="second") == {"v": 1}
    leader.join(5)
    assert results == [{"v": 1}]
    assert calls == ["first"]  # the origin was asked once
    assert (second.core.stats.loads, second.core.stats.load_joins) == (0, 1)
    # Its event says it joined: a lost claim's event waited for the claim's answer.
    (event,) = [e for e in sink.of("get", "k") if e["session"] == "second"]
    assert (event["outcome"], event["joined"]) == ("miss", True)


async def test_with_the_loader_down_gets_are_unaffected_and_edge_loads_stop_at_the_breaker(
    single: Backend, make_cache: MakeCache
) -> None:
    down = Origin(fail=True)
    cache: IntelligentCache = make_cache(single, IntelligentCache)
    cache.register_loader(
        "orders", down, LoaderConfig(breaker_failures=3, breaker_reset_s=60.0, rate=1000)
    )
    app = Origin()
    for i in range(20):
        publish(single, cache, f"t{i}", [f"s{i}"])
    await cache.refresh_rules()
    started = time.perf_counter()
    for i in range(20):
        assert (await cache.get("orders", f"t{i}", fallback_data=app.app_loader(f"t{i}")))[
            "key"
        ] == f"t{i}"
        await settle(cache)
    assert time.perf_counter() - started < 5.0
    assert sum(down.calls.values()) == 3  # then the breaker opened
    stats = cache.core.stats
    assert stats.edge_failed == 3
    assert stats.edge_refused == 17
    assert stats.errors == 0
    assert stats.loads == 20
    # Failed loads took their loading marks away: a reader is not kept waiting.
    raw = single.raw()
    try:
        assert raw.get(cache.settings.redis_key_prefix + "orders:s0") is None
    finally:
        raw.close()


async def test_no_edge_warms_without_prediction_or_without_a_loader(
    single: Backend, make_cache: MakeCache
) -> None:
    origin = Origin()
    cache: IntelligentCache = make_cache(single, IntelligentCache, loaders={"orders": origin})
    publish(single, cache, "a", ["b"])
    await cache.refresh_rules()
    await cache.get("orders", "a", fallback_data=origin.app_loader("a"), enable_prediction=False)
    await settle(cache)
    assert origin.calls == {"a": 1}
    bare: IntelligentCache = make_cache(
        single, IntelligentCache, redis_key_prefix=cache.settings.redis_key_prefix
    )
    await bare.get("orders", "a")
    await settle(bare)
    assert bare.core.stats.rule_reads == 0
    assert origin.calls == {"a": 1}


@pytest.mark.parametrize(
    "raw_rule",
    [b"not json", b'[2,0,0,[["b",0.9]]]', b'[1,0,0,[["",0.9]]]', b'[1,0,0,[["b",7]]]'],
    ids=["garbage", "unknown-format", "empty-key", "bad-probability"],
)
async def test_a_malformed_rule_loads_nothing(
    single: Backend, make_cache: MakeCache, raw_rule: bytes
) -> None:
    origin = Origin()
    cache: IntelligentCache = make_cache(single, IntelligentCache, loaders={"orders": origin})
    raw = single.raw()
    try:
        raw.hset(rules_hash(cache.settings.redis_key_prefix, "orders", "a"), "a", raw_rule)
    finally:
        raw.close()
    await cache.refresh_rules()
    await cache.get("orders", "a")
    await settle(cache)
    assert origin.calls == {}
    assert cache.core.stats.rule_reads == 1
    assert cache.core.stats.rules_applied == 0


class BlockingOrigin:
    """The blocking twin of :class:`Origin`."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()
        #: Set when the first load begins.
        self.loading = threading.Event()

    def __call__(self, namespace: str, key: str) -> Any:
        with self._lock:
            self.calls[key] = self.calls.get(key, 0) + 1
        self.loading.set()
        if self.delay:
            time.sleep(self.delay)
        return {"key": key, "from": "origin"}


def sync_settle(cache: SyncIntelligentCache) -> None:
    for _ in range(400):
        if not cache._edge_queued:
            return
        time.sleep(0.005)
    raise AssertionError("edge warms did not finish")


def test_the_sync_client_warms_at_the_edge_too(
    backend: Backend, make_sync_cache: MakeCache, sink: RecordingSink
) -> None:
    origin = BlockingOrigin()
    cache: SyncIntelligentCache = make_sync_cache(
        backend, SyncIntelligentCache, loaders={"orders": origin}
    )
    publish(backend, cache, "a", ["b", "c"])
    cache.refresh_rules()
    assert cache.get("orders", "a", fallback_data=lambda: {"key": "a"}) == {"key": "a"}
    sync_settle(cache)
    assert origin.calls == {"b": 1, "c": 1}
    assert cache.get("orders", "b") == {"key": "b", "from": "origin"}
    (read,) = sink.of("get", "b")
    assert (read["warmed"], read["warm_path"]) == (True, "edge")
    assert cache.core.stats.edge_written == 2


def test_a_sync_get_during_the_edge_load_joins_it(
    single: Backend, make_sync_cache: MakeCache, sink: RecordingSink
) -> None:
    origin = BlockingOrigin(delay=0.2)
    cache: SyncIntelligentCache = make_sync_cache(
        single, SyncIntelligentCache, loaders={"orders": origin}
    )
    publish(single, cache, "a", ["b"])
    cache.refresh_rules()
    cache.get("orders", "a", fallback_data=lambda: {"key": "a"})
    assert origin.loading.wait(5)  # b's edge load is in flight
    own = BlockingOrigin()
    assert cache.get("orders", "b", fallback_data=lambda: own("orders", "b")) == {
        "key": "b",
        "from": "origin",
    }
    assert origin.calls == {"b": 1}
    assert own.calls == {}
    (read,) = sink.of("get", "b")
    assert (read["joined"], read["warmed"]) == (True, True)
    assert cache.core.stats.inflight_joins == 1


def test_a_sync_successor_read_while_its_triggers_read_is_out_joins_the_rules_load(
    single: Backend, make_sync_cache: MakeCache, sink: RecordingSink
) -> None:
    origin = BlockingOrigin(delay=0.02)
    cache: SyncIntelligentCache = make_sync_cache(
        single, SyncIntelligentCache, loaders={"orders": origin}
    )
    publish(single, cache, "a", ["b"])
    cache.refresh_rules()
    dkey = cache.settings.redis_key_prefix + "orders:a"
    real = cache._redis.execute_command
    reading = threading.Event()

    def execute_command(*args: Any, **options: Any) -> Any:
        if args[:2] == ("GET", dkey):
            reading.set()
            time.sleep(0.05)  # a's read is slow to come back
        return real(*args, **options)  # type: ignore[no-untyped-call]

    cache._redis.execute_command = execute_command  # type: ignore[method-assign]
    app = BlockingOrigin()
    first = threading.Thread(
        target=lambda: cache.get("orders", "a", fallback_data=lambda: app("orders", "a"))
    )
    first.start()
    assert reading.wait(5)  # b is asked for (by another thread) while a's read is out
    assert cache.get("orders", "b", fallback_data=lambda: app("orders", "b")) == {
        "key": "b",
        "from": "origin",
    }
    first.join()
    assert app.calls == {"a": 1}
    assert origin.calls == {"b": 1}
    (read,) = sink.of("get", "b")
    assert read["joined"] is True


class FlakyOrigin:
    """An origin that is down, slow or up; counts calls, their times and the peak in flight."""

    def __init__(self) -> None:
        self.mode = "up"
        self.delay = 0.3
        self.calls: list[float] = []
        self.in_flight = 0
        self.peak = 0

    async def __call__(self, namespace: str, key: str) -> Any:
        self.calls.append(time.monotonic())
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.mode == "down":
                raise ConnectionError("origin down")
            if self.mode == "slow":
                await asyncio.sleep(self.delay)
            return {"key": key, "from": "origin"}
        finally:
            self.in_flight -= 1


@pytest.mark.fault
@pytest.mark.timeout(120)
async def test_the_origin_down_then_slow_then_back(single: Backend, make_cache: MakeCache) -> None:
    """Down: the breaker stops edge loads after 3 failures. Slow: edge loads stay within
    their caps (4 in flight, 20/s after a burst of 5) while the application's own reads
    are not slowed. Back: edge warms are written again."""
    origin = FlakyOrigin()
    cache: IntelligentCache = make_cache(single, IntelligentCache)
    config = LoaderConfig(
        timeout=2.0, concurrency=4, rate=20.0, burst=5, breaker_failures=3, breaker_reset_s=0.5
    )
    cache.register_loader("orders", origin, config)
    app = Origin()
    for i in range(150):
        publish(single, cache, f"t{i}", [f"s{i}a", f"s{i}b"])
    await cache.refresh_rules()
    stats = cache.core.stats

    async def trigger(i: int) -> float:
        began = time.perf_counter()
        value = await cache.get("orders", f"t{i}", fallback_data=app.app_loader(f"t{i}"))
        assert value["key"] == f"t{i}"
        return time.perf_counter() - began

    origin.mode = "down"
    for i in range(30):
        await trigger(i)
        await settle(cache)
    # The breaker opens at the third failure; a trigger's two loads start together.
    assert 3 <= len(origin.calls) <= 4
    assert stats.edge_refused >= 2 * 30 - 4

    await asyncio.sleep(0.6)  # the breaker's reset: one trial goes through
    origin.mode = "slow"
    written_before = stats.edge_written
    await trigger(30)
    await settle(cache)  # the trial (0.3 s) succeeded: the breaker is closed again
    assert stats.edge_written > written_before
    origin.peak = 0
    slow_start = time.monotonic()
    calls_before = len(origin.calls)
    reads = []
    for i in range(31, 91):  # 60 triggers over ~1.2 s: 120 successors offered
        reads.append(await trigger(i))
        await asyncio.sleep(0.02)
    await settle(cache)
    slow_end = time.monotonic()
    slow_calls = origin.calls[calls_before:]
    assert origin.peak == 4  # the cap was reached, never passed
    assert len(slow_calls) <= 5 + 20 * (slow_end - slow_start) + 1
    assert len(slow_calls) < 120  # the rest was skipped, not queued behind the origin
    assert sorted(reads)[len(reads) // 2] < 0.05, "the application's reads waited on edge loads"

    origin.mode = "up"
    written_before = stats.edge_written
    await asyncio.sleep(0.3)  # tokens for a burst
    for i in range(90, 100):
        await trigger(i)
        await settle(cache)
    assert stats.edge_written - written_before >= 5
    assert stats.errors == 0
    print(
        f"origin: slow phase {len(slow_calls)} loads in {slow_end - slow_start:.1f} s,"
        f" peak {origin.peak} in flight; app read p50 {sorted(reads)[30] * 1000:.1f} ms"
    )


async def test_a_client_that_fell_behind_the_trimmed_rule_stream_reads_the_table_again(
    backend: Backend, make_cache: MakeCache
) -> None:
    origin = Origin()
    cache: IntelligentCache = make_cache(backend, IntelligentCache, loaders={"orders": origin})
    await cache.refresh_rules()  # following, with nothing published yet
    # Meanwhile the pipeline publishes a rule and then more rounds than the stream keeps:
    # the round that carried the rule is trimmed before this client reads it.
    publish(backend, cache, "a", ["b"])
    stream = rules_stream(cache.settings.redis_key_prefix, "orders")
    client = backend.raw()
    try:
        for i in range(80):
            client.xadd(
                stream, {STREAM_FIELD: encode_updates([(f"x{i}", [("y", 0.9)])])}, maxlen=64
            )
    finally:
        client.close()
    await cache.refresh_rules()  # sees the gap: reads the table again
    assert cache.core.stats.rule_resyncs == 1
    assert (await cache.get_stats())["client"]["rule_resyncs"] == 1  # and says so
    assert cache._rulebook.get("orders", "a") == (("b", 0.9),)  # without the resync: None


async def test_a_client_that_fell_behind_drops_a_rule_deleted_meanwhile(
    backend: Backend, make_cache: MakeCache
) -> None:
    """The deletion's stream entry is trimmed unread; its tombstone in the table is not."""
    origin = Origin()
    cache: IntelligentCache = make_cache(backend, IntelligentCache, loaders={"orders": origin})
    prefix = cache.settings.redis_key_prefix
    stream = rules_stream(prefix, "orders")
    rules = RuleSet(prefix)
    client = backend.raw()

    def carry_out(plan: RulePlan) -> None:  # as the predict agent does
        for table, fields in plan.writes.items():
            client.hset(table, mapping=fields)
        for table, keys in plan.deletes.items():
            client.hdel(table, *keys)
        for updates in plan.updates.values():
            client.xadd(
                stream, {STREAM_FIELD: encode_updates(updates)}, maxlen=64, approximate=False
            )

    try:
        carry_out(
            rules.plan(
                [("orders:a", [("orders:b", 0.9)]), ("orders:c", [("orders:d", 0.8)])], now=1.0
            )
        )
        await cache.refresh_rules()
        assert cache._rulebook.get("orders", "a") == (("b", 0.9),)
        carry_out(rules.plan([("orders:a", [])], now=2.0))  # the worker deletes a's rule
        for i in range(80):  # and publishes more rounds than the stream keeps
            carry_out(rules.plan([(f"orders:x{i}", [("orders:y", 0.9)])], now=3.0))
    finally:
        client.close()
    await cache.refresh_rules()
    assert cache.core.stats.rule_resyncs == 1
    assert cache._rulebook.get("orders", "a") is None  # merged without tombstones: still held
    assert cache._rulebook.get("orders", "c") == (("d", 0.8),)
    assert cache._rulebook.get("orders", "x79") == (("y", 0.9),)
    assert await cache.get("orders", "a", fallback_data=origin.app_loader("a")) is not None
    await settle(cache)
    assert origin.calls == {"a": 1}  # no edge load of b


async def test_rules_held_survive_redis_evicting_the_rule_stream_and_table(
    backend: Backend, make_cache: MakeCache
) -> None:
    origin = Origin()
    cache: IntelligentCache = make_cache(backend, IntelligentCache, loaders={"orders": origin})
    publish(backend, cache, "a", ["b"])
    await cache.refresh_rules()
    assert cache._rulebook.get("orders", "a") == (("b", 0.9),)
    # allkeys-lru evicts the stream and the table's hashes; the next round makes a new stream.
    prefix = cache.settings.redis_key_prefix
    stream = rules_stream(prefix, "orders")
    client = backend.raw()
    try:
        client.delete(rules_hash(prefix, "orders", "a"))
        client.delete(stream)
        client.xadd(stream, {STREAM_FIELD: encode_updates([("c", [("d", 0.8)])])}, maxlen=64)
    finally:
        client.close()
    await cache.refresh_rules()  # the new stream starts after what it read: back to the table
    assert cache.core.stats.rule_resyncs == 1
    assert cache._rulebook.get("orders", "a") == (("b", 0.9),)  # still held
    assert await cache.get("orders", "a", fallback_data=origin.app_loader("a")) is not None
    await settle(cache)
    assert origin.calls.get("b") == 1  # and still applied


def publish_user(
    backend: Backend, cache: IntelligentCache | SyncIntelligentCache, user: str, keys: list[str]
) -> None:
    """Write a user rule the way the pipeline does (one HSET into the user's shard)."""
    prefix = cache.settings.redis_key_prefix
    rule = encode_rule([(key, 0.8) for key in keys], compiled_at=time.time())
    client = backend.raw()
    try:
        client.hset(rules_hash(prefix, "orders", user, USER_RULES), user, rule)
    finally:
        client.close()


async def test_a_users_session_opening_loads_what_their_user_rule_names(
    backend: Backend, make_cache: MakeCache, sink: RecordingSink
) -> None:
    origin = Origin()
    cache: IntelligentCache = make_cache(
        backend, IntelligentCache, loaders={"orders": origin}, model_session_gap_s=0.3
    )
    publish_user(backend, cache, "ada", ["inbox", "board"])
    app = Origin()
    # Ada's first read here opens her session, hit or miss: her keys load meanwhile.
    await cache.get("orders", "x", user_context="ada", fallback_data=app.app_loader("x"))
    await settle(cache)
    assert origin.calls == {"inbox": 1, "board": 1}
    assert cache.core.stats.user_rules_applied == 1
    assert await cache.get("orders", "inbox", user_context="ada") == {
        "key": "inbox",
        "from": "origin",
    }
    (read,) = sink.of("get", "inbox")
    assert (read["outcome"], read["warmed"], read["warm_path"]) == ("hit", True, "edge")
    # Later reads of the same session read no rule; another user's first read does.
    reads = cache.core.stats.user_rule_reads
    await cache.get("orders", "x", user_context="ada")
    assert cache.core.stats.user_rule_reads == reads
    await cache.get("orders", "x", user_context="bob")
    await settle(cache)
    assert cache.core.stats.user_rule_reads == reads + 1
    # After the session gap of silence, Ada's next read opens a new session.
    await asyncio.sleep(0.35)
    await cache.delete("orders", "board")
    await cache.get("orders", "x", user_context="ada")
    await settle(cache)
    assert origin.calls == {"inbox": 1, "board": 2}  # inbox was still cached: not fetched
    assert app.calls == {"x": 1}


async def test_no_user_rule_is_read_without_prediction_without_a_loader_or_without_edge_warming(
    single: Backend, make_cache: MakeCache
) -> None:
    origin = Origin()
    caches: list[IntelligentCache] = [
        make_cache(single, IntelligentCache, loaders={"orders": origin}),
        make_cache(single, IntelligentCache),
        make_cache(single, IntelligentCache, loaders={"orders": origin}, edge_warming=False),
    ]
    publish_user(single, caches[0], "ada", ["inbox"])
    await caches[0].get("orders", "x", user_context="ada", enable_prediction=False)
    for cache in caches[1:]:
        await cache.get("orders", "x", user_context="ada")
    for cache in caches:
        await settle(cache)
        assert cache.core.stats.user_rule_reads == 0
    assert origin.calls == {}


def test_the_sync_client_loads_a_users_rule_as_their_session_opens(
    backend: Backend, make_sync_cache: MakeCache, sink: RecordingSink
) -> None:
    origin = BlockingOrigin()
    cache: SyncIntelligentCache = make_sync_cache(
        backend, SyncIntelligentCache, loaders={"orders": origin}
    )
    publish_user(backend, cache, "ada", ["inbox", "board"])
    assert cache.get("orders", "x", user_context="ada", fallback_data=lambda: 1) == 1
    sync_settle(cache)
    assert origin.calls == {"inbox": 1, "board": 1}
    assert cache.get("orders", "board", user_context="ada") == {"key": "board", "from": "origin"}
    (read,) = sink.of("get", "board")
    assert (read["warmed"], read["warm_path"]) == (True, "edge")
    assert cache.core.stats.user_rule_reads == 1  # the second read did not open a session
    assert cache.core.stats.user_rules_applied == 1

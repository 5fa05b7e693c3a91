"""Prefetch rules end to end: a worker learns them from access events, a client applies them."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from typing import Any

import orjson
import pytest
import redis

from agents.predict import PURGE_TOMBSTONE
from pipeline.build_native import compiled_path
from pipeline.client import IntelligentCache
from pipeline.client.keys import RULE_SHARDS, rules_stream
from pipeline.config import Settings
from pipeline.prefetch import decode_rule, encode_rule
from pipeline.replay import synthetic_value
from tests.integration.pipeline.conftest import NAMESPACE, StartWorker

PAIRS = 30
NOISE = 300
#: Above the triggers of the first rounds (3 x (2 x PAIRS + NOISE)), below all of them.
RULES_MAX = 1_200


def _rule_hashes(settings: Settings) -> list[str]:
    prefix = settings.redis_key_prefix
    return [f"{prefix}#rules:{NAMESPACE}:{shard}" for shard in range(RULE_SHARDS)]


def _rule_follower_state(cache: IntelligentCache, settings: Settings) -> dict[str, Any]:
    """What the client holds against what Redis has: to explain a client without rules."""
    stream = rules_stream(settings.redis_key_prefix, NAMESPACE)
    client = redis.Redis(host=settings.redis_host, port=settings.redis_port)
    try:
        first = client.xrange(stream, count=1)
        last = client.xrevrange(stream, count=1)
        return {
            "client_rules": len(cache._rulebook),
            "client_stream_id": cache._rule_ids.get(stream),
            "resyncs": cache.core.stats.rule_resyncs,
            "stream_length": client.xlen(stream),
            "stream_first": first[0][0] if first else None,
            "stream_last": last[0][0] if last else None,
            "published_triggers": sum(t.startswith("t") for t in _published(settings)),
        }
    finally:
        client.close()


def _fields(settings: Settings) -> dict[str, bytes]:
    """Every field of the rule table: trigger -> stored value."""
    client = redis.Redis(host=settings.redis_host, port=settings.redis_port)
    try:
        fields: dict[str, bytes] = {}
        for table in _rule_hashes(settings):
            stored: dict[bytes, bytes] = client.hgetall(table)  # type: ignore[assignment]
            fields.update((field.decode(), value) for field, value in stored.items())
        return fields
    finally:
        client.close()


def _published(settings: Settings, *, tombstones: bool = False) -> dict[str, bytes]:
    """The rules in the table (or, with ``tombstones``, the deletions kept there)."""
    return {
        trigger: raw
        for trigger, raw in _fields(settings).items()
        if (rule := decode_rule(raw)) is not None and (not rule.successors) == tombstones
    }


async def _round(cache: IntelligentCache, loads: dict[str, int], pairs: int = PAIRS) -> None:
    def app_load(key: str) -> Any:
        def load() -> dict[str, Any]:
            loads[key] = loads.get(key, 0) + 1
            return synthetic_value(NAMESPACE, key)  # what the worker's loader serves too

        return load

    for i in range(pairs):
        for key in (f"t{i}", f"s{i}"):
            value = await cache.get(NAMESPACE, key, fallback_data=app_load(key))
            assert value == synthetic_value(NAMESPACE, key)
    # Keys read once: the models learn how long an unread key stays cached here.
    noise = f"n{time.monotonic_ns()}-"
    for j in range(NOISE):
        await cache.get(NAMESPACE, noise + str(j), fallback_data=app_load(noise + str(j)))
    for key in [k for k in loads if k.startswith("n")]:
        del loads[key]


async def _scenario(
    settings: Settings,
) -> tuple[dict[str, Any], dict[str, int], dict[str, int], dict[str, bytes]]:
    cache = IntelligentCache(settings, early_refresh=False)
    await cache.start()
    try:
        first: dict[str, int] = {}
        for _ in range(3):
            # Every key misses: the worker learns t_i -> s_i, then sees such rules come true.
            await cache.delete_by_pattern(NAMESPACE, "*")
            await _round(cache, first)
        assert cache.emitter is not None
        assert await cache.emitter.flush(10.0)
        deadline = time.monotonic() + 60
        while sum(t.startswith("t") for t in _published(settings)) < PAIRS // 3:
            assert time.monotonic() < deadline, "the worker did not publish its rules"
            await asyncio.sleep(0.2)
        published = _published(settings)
        # The client follows the rules every CACHECAST_RULES_INTERVAL_S; read them now so
        # that the round below does not race the follower's next read.
        deadline = time.monotonic() + 30
        while await cache.refresh_rules() < PAIRS // 3:
            assert time.monotonic() < deadline, _rule_follower_state(cache, settings)
            await asyncio.sleep(0.5)
        await cache.delete_by_pattern(NAMESPACE, "*")  # the cache forgets every value
        second: dict[str, int] = {}
        await _round(cache, second)
        for _ in range(200):
            if not cache._edge_tasks:
                break
            await asyncio.sleep(0.01)
        stats = (await cache.get_stats())["client"]
        # Many more triggers than the bound: the worker keeps the newest RULES_MAX.
        await cache.delete_by_pattern(NAMESPACE, "*")
        await _round(cache, {}, pairs=RULES_MAX // 2)
        assert await cache.emitter.flush(10.0)
        await asyncio.sleep(2.0)
    finally:
        await cache.close()
    return stats, first, second, published


@pytest.mark.timeout(300)
def test_a_rule_learnt_by_a_worker_is_applied_by_a_client(
    start_worker: StartWorker, settings: Settings
) -> None:
    worker = start_worker(CACHECAST_RULES_MAX=str(RULES_MAX), CACHECAST_RULES_INTERVAL_S="0.05")
    stats, first, second, published = asyncio.run(_scenario(settings))
    monitor = worker.monitor()

    # The worker says whether its models run compiled: they do wherever make native ran.
    assert monitor["hot_modules"] == (
        "compiled" if compiled_path("pipeline.models.engine") is not None else "pure"
    )
    assert len(first) > PAIRS  # the first rounds taught the pipeline: most keys were fetched
    for trigger, raw in _fields(settings).items():  # rules and tombstones: all readable
        assert decode_rule(raw) is not None, (trigger, raw)
    assert sum(t.startswith("t") for t in published) >= PAIRS // 3
    # The second round missed every trigger again (the cache was emptied), and each
    # miss loaded what its rule names: the application fetched far fewer keys itself,
    # and what the client loaded at the edge was read.
    assert stats["edge_written"] >= PAIRS // 4, stats
    assert len(second) <= len(first) - PAIRS // 4, (first, second)
    useful = stats["edge_useful"]
    assert useful >= 0.8 * stats["edge_written"], stats
    assert monitor["counters"]["rules_written"] >= len(published)
    # The worker keeps at most RULES_MAX rules of the namespace in Redis.
    assert 0 < len(_published(settings)) <= RULES_MAX
    assert monitor["counters"]["rules_deleted"] > 0
    # Deletions stay in the table as tombstones for clients that lost stream entries,
    # a quarter of the bound at most.
    assert 0 < len(_published(settings, tombstones=True)) <= RULES_MAX // 4
    # The models' own quality per namespace, from the labels they learnt: most of
    # what they predicted was read in time (t_i -> s_i), and they were not silent.
    deadline = time.monotonic() + 30
    while True:
        intelligent = _view(worker.web_port, "intelligent")["namespaces"].get(NAMESPACE, {})
        if intelligent.get("prediction_precision") is not None:
            break
        assert time.monotonic() < deadline, intelligent
        time.sleep(0.2)
    assert intelligent["prediction_precision"] >= 0.5, intelligent
    assert 0.0 < intelligent["prediction_recall"] <= 1.0, intelligent
    # What the models see: the hottest keys are the pairs read every round, and
    # each has a rhythm (a typical gap between its reads).
    insights = _view(worker.web_port, "intelligent")["insights"][NAMESPACE]
    hottest = insights["hottest"]
    assert 0 < len(hottest) <= 10
    assert all(item["key"][0] in "ts" for item in hottest), hottest
    assert any(item["typical_gap_requests"] for item in hottest), hottest
    print(
        f"prediction precision {intelligent['prediction_precision']:.3f},"
        f" recall {intelligent['prediction_recall']:.3f}; hottest {hottest[:3]}"
    )


def _view(port: int, view: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/api/cache/monitor?type={view}"
    with urllib.request.urlopen(url, timeout=5) as response:
        doc: dict[str, Any] = orjson.loads(response.read())
    return doc


def test_a_tombstone_is_purged_only_while_its_field_still_holds_it(settings: Settings) -> None:
    """The predict agent's purge on real Redis: another worker's rule written over the
    tombstone since stays, and a field already gone is no error."""
    tombstone = encode_rule((), compiled_at=5.0)
    rule = encode_rule([("b", 0.9)], compiled_at=6.0)
    table = f"{settings.redis_key_prefix}#rules:purge-test:0"
    client = redis.Redis(host=settings.redis_host, port=settings.redis_port)
    try:
        client.hset(table, mapping={"gone": tombstone, "replaced": rule, "kept": b"x"})
        purged: list[Any] = [
            client.eval(PURGE_TOMBSTONE, 1, table, field, tombstone)
            for field in ("gone", "replaced", "missing")
        ]
        assert purged == [1, 0, 0]
        assert client.hgetall(table) == {b"replaced": rule, b"kept": b"x"}
    finally:
        client.delete(table)
        client.close()

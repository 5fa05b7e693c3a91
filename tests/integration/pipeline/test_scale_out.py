"""Scale-out: two workers share the partitions and the cache is a 3-node Redis Cluster.

The workers learn prefetch rules from the application's misses and publish them
on the cluster; the client applies them at the edge; then one worker leaves and
the other takes its partitions and counts every read once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from pipeline.client import IntelligentCache
from pipeline.config import Settings, load_settings
from pipeline.devstack import RedisClusterServers
from pipeline.replay import synthetic_value
from tests.integration.pipeline.conftest import NAMESPACE, StartWorker

PAIRS = 30
NOISE = 300


async def _round(cache: IntelligentCache, fetched: dict[str, int], tag: str) -> int:
    """Read t_i then s_i for every pair, then keys read once; returns the reads made."""

    def load(key: str) -> Any:
        def fetch() -> dict[str, Any]:
            fetched[key] = fetched.get(key, 0) + 1
            return synthetic_value(NAMESPACE, key)  # what the worker's loader serves too

        return fetch

    reads = 0
    for i in range(PAIRS):
        for key in (f"t{i}", f"s{i}"):
            assert await cache.get(NAMESPACE, key, fallback_data=load(key)) == synthetic_value(
                NAMESPACE, key
            )
            reads += 1
    for j in range(NOISE):  # read once: the models learn how long keys stay cached
        await cache.get(NAMESPACE, f"n{tag}-{j}", fallback_data=load(f"n{tag}-{j}"))
        reads += 1
    return reads


async def _scenario(settings: Settings, leave: Any) -> dict[str, Any]:
    cache = IntelligentCache(settings, early_refresh=False)
    await cache.start()
    reads = 0
    try:
        learning: dict[str, int] = {}
        for r in range(3):  # every key misses: the workers learn t_i -> s_i
            await cache.delete_by_pattern(NAMESPACE, "*")
            reads += await _round(cache, learning, f"a{r}")
        assert cache.emitter is not None
        assert await cache.emitter.flush(10.0)
        deadline = time.monotonic() + 20
        ruled, grew_at = 0, time.monotonic()
        # Until every pair has its rule, or none came for 2 s (the workers publish every
        # 50 ms here, so what they learnt is out by then).
        while ruled < PAIRS and time.monotonic() < min(deadline, grew_at + 2.0):
            await cache.refresh_rules()  # the rules the workers published on the cluster
            now = sum(bool(cache._rulebook.get(NAMESPACE, f"t{i}")) for i in range(PAIRS))
            if now > ruled:
                ruled, grew_at = now, time.monotonic()
            await asyncio.sleep(0.2)
        await cache.delete_by_pattern(NAMESPACE, "*")
        applied: dict[str, int] = {}
        reads += await _round(cache, applied, "b")
        for _ in range(200):
            if not cache._edge_tasks:
                break
            await asyncio.sleep(0.01)
        stats = (await cache.get_stats())["client"]
        await asyncio.to_thread(leave)  # one worker goes; the other takes its partitions
        reads += await _round(cache, {}, "c")
        assert await cache.emitter.flush(10.0)
    finally:
        await cache.close()
    return {
        "stats": stats,
        "learning": learning,
        "applied": applied,
        "reads": reads,
        "ruled": ruled,
    }


@pytest.mark.fault
@pytest.mark.timeout(400)
def test_two_workers_and_a_redis_cluster_warm_at_the_edge_and_survive_a_leave(
    start_worker: StartWorker,
    redis_cluster: RedisClusterServers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nodes = ",".join(f"{host}:{port}" for host, port in redis_cluster.startup_nodes)
    env = {
        "REDIS_ENABLE_CLUSTERING": "true",
        "REDIS_CLUSTER_NODES": nodes,
        "CACHECAST_RULES_INTERVAL_S": "0.05",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    workers = [start_worker(**env), start_worker(**env)]
    for worker in workers:
        worker.wait_ready()
    assert all(w.monitor()["assigned_partitions"] > 0 for w in workers)

    result = asyncio.run(_scenario(settings, leave=workers[0].stop))
    stats = result["stats"]
    print(
        f"cluster: {result['ruled']} of {PAIRS} pair rules reached the client;"
        f" fetched {sum(result['learning'].values())} keys while learning,"
        f" {sum(result['applied'].values())} with rules; edge written {stats['edge_written']},"
        f" useful {stats['edge_useful']}"
    )
    # Every operation on the cluster succeeded, and two workers learn what one does (a
    # single worker on one Redis learns at least 10 of the pairs at full precision):
    # their partitions are restored as soon as they are assigned, and the reorder
    # hold grows to the skew between the two workers' batches.
    assert stats["errors"] == 0, stats
    assert result["ruled"] >= 20, result["ruled"]
    assert stats["edge_useful"] >= 0.8 * stats["edge_written"] > 0, stats

    # The remaining worker took every partition and counted every read exactly once:
    # the deltas the leaver sent are not sent again (progress records), the ones it
    # applied are not applied again (the stats snapshot's offset).
    survivor = workers[1]
    deadline = time.monotonic() + 90
    while True:
        doc = survivor.monitor()
        total = doc["namespaces"].get(NAMESPACE, {}).get("total", {})
        counted = total.get("hits", 0) + total.get("misses", 0)
        if counted >= result["reads"] and doc["assigned_partitions"] >= 4:
            break
        assert time.monotonic() < deadline, (counted, result["reads"], doc["assigned_partitions"])
        time.sleep(0.5)
    time.sleep(3)  # a duplicate would arrive within the next flush or two
    total = survivor.monitor()["namespaces"][NAMESPACE]["total"]
    assert total["hits"] + total["misses"] == result["reads"], (total, result["reads"])

"""What the instrumented client costs on a cache hit, against bare redis-py, in one run.

For each case (no broker reachable, broker running) it times, on the same Redis
server and the same stored bytes:

* baseline: ``await redis.asyncio.Redis.get(key)`` (bytes, nothing else);
* cachecast: ``await IntelligentCache.get(ns, key, user_context=..., fallback_data=...)``
  on a hit: one GET, header check, decode, statistics, access event, with
  ``--rules`` prefetch rules (10,000) loaded and a namespace loader registered,
  so edge warming is live;

and the same pair for the blocking clients (``redis.Redis.get`` vs
``SyncIntelligentCache.get``). The asyncio client sends its GETs on its read
line (``pipeline/client/reads.py``: pipelined on one connection, no pool); one
more async case turns the line off (``CACHECAST_REDIS_READ_LINE=false``), so
the table shows both what the application sees and what the client's own work
costs on redis-py's pool. The two are timed call by call, interleaved
(which goes first alternates between rounds), so both see the same machine
load; it prints p50/p99 and the p50/p99 ratios.
Target: p50 ratio <= 1.05 for the async client.

Usage::

    python benchmarks/client_overhead.py [--rounds 10] [--block 2000] [--rules 10000]

Servers come from ``pipeline.devstack`` (real Redis and Kafka started for the
run), or from ``REDIS_HOST``/``REDIS_PORT`` and ``KAFKA_BOOTSTRAP_SERVERS``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio

from pipeline.client import IntelligentCache
from pipeline.client.sync import SyncIntelligentCache
from pipeline.config import Settings, load_settings
from pipeline.devstack import DevStack, free_port
from pipeline.prefetch import RuleSet

VALUE = {"id": 42, "name": "Ada Lovelace", "plan": "pro", "tags": ["a", "b"], "score": 0.93}
TARGET_P50_RATIO = 1.05
POOLED = "async, broker, read line off"


@dataclass
class Result:
    label: str
    baseline: list[int]
    client: list[int]

    @staticmethod
    def quantile(samples: list[int], q: float) -> float:
        ordered = sorted(samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0

    def row(self) -> str:
        b50, b99 = self.quantile(self.baseline, 0.5), self.quantile(self.baseline, 0.99)
        c50, c99 = self.quantile(self.client, 0.5), self.quantile(self.client, 0.99)
        return (
            f"{self.label:<34} {b50:>8.1f} {b99:>8.1f} {c50:>8.1f} {c99:>8.1f}"
            f" {c50 / b50:>7.3f} {c99 / b99:>7.3f}"
        )

    @property
    def p50_ratio(self) -> float:
        return self.quantile(self.client, 0.5) / self.quantile(self.baseline, 0.5)


async def _pairs_async(
    first: Callable[[], Awaitable[Any]],
    second: Callable[[], Awaitable[Any]],
    n: int,
    first_ns: list[int],
    second_ns: list[int],
) -> None:
    """Time ``n`` calls of each, interleaved call by call, so both see the same load."""
    clock = time.perf_counter_ns
    for _ in range(n):
        started = clock()
        await first()
        middle = clock()
        await second()
        first_ns.append(middle - started)
        second_ns.append(clock() - middle)


def _pairs_sync(
    first: Callable[[], Any],
    second: Callable[[], Any],
    n: int,
    first_ns: list[int],
    second_ns: list[int],
) -> None:
    clock = time.perf_counter_ns
    for _ in range(n):
        started = clock()
        first()
        middle = clock()
        second()
        first_ns.append(middle - started)
        second_ns.append(clock() - middle)


async def _loader() -> dict[str, Any]:
    return VALUE


async def _publish_rules(settings: Settings, n: int) -> None:
    """``n`` prefetch rules for namespace "bench", written as a worker writes them."""
    rules = RuleSet(settings.redis_key_prefix, max_rules=max(1, n))
    plan = rules.plan(
        [(f"bench:k{i}", [(f"bench:k{i + 1}", 0.9), (f"bench:k{i + 2}", 0.7)]) for i in range(n)]
        + [("bench:hot", [("bench:k0", 0.9)])],
        now=time.time(),
    )
    writer = redis.asyncio.Redis(host=settings.redis_host, port=settings.redis_port)
    for where, fields in plan.writes.items():
        await writer.hset(where, mapping=fields)  # type: ignore[misc]
    await writer.aclose()


async def _edge_origin(namespace: str, key: str) -> dict[str, Any]:
    return VALUE


async def bench_async(
    settings: Settings, label: str, rounds: int, block: int, rules: int = 0
) -> Result:
    if rules:
        await _publish_rules(settings, rules)
    cache = IntelligentCache(settings)
    if rules:
        cache.register_loader("bench", _edge_origin)
    bare = redis.asyncio.Redis(host=settings.redis_host, port=settings.redis_port)
    await cache.start()
    await cache.get("bench", "first", enable_prediction=False)  # connects the read line
    for _ in range(500 if settings.redis_read_line else 0):
        if (await cache.get_stats())["read_line"]["connected"]:
            break
        await asyncio.sleep(0.01)
    if rules:
        loaded = await cache.refresh_rules()
        assert loaded >= rules, f"only {loaded} of {rules} rules loaded"
        print(f"  [{label}] {loaded} prefetch rules loaded", file=sys.stderr)
    await cache.set("bench", "hot", VALUE, ttl=3600)
    key = cache.core.data_key("bench", "hot")
    assert await cache.get("bench", "hot") == VALUE

    async def ours() -> Any:
        return await cache.get(
            "bench", "hot", user_context="user-1", session_id="s-1", fallback_data=_loader
        )

    async def baseline() -> Any:
        return await bare.get(key)

    baseline_ns: list[int] = []
    client_ns: list[int] = []
    await _pairs_async(baseline, ours, block, [], [])  # warm both pools and code paths
    for index in range(rounds):  # alternate which of the two goes first
        if index % 2 == 0:
            await _pairs_async(baseline, ours, block, baseline_ns, client_ns)
        else:
            await _pairs_async(ours, baseline, block, client_ns, baseline_ns)
    await bare.aclose()
    line = (await cache.get_stats())["read_line"]
    print(f"  [{label}] read line: {line}", file=sys.stderr)
    stats = cache.emitter.stats() if cache.emitter else None
    await cache.close(timeout=2.0)
    if stats is not None:
        print(
            f"  [{label}] events emitted {stats.emitted}, sent {stats.sent}, "
            f"dropped {stats.dropped}",
            file=sys.stderr,
        )
    return Result(label, baseline_ns, client_ns)


def bench_sync(settings: Settings, label: str, rounds: int, block: int) -> Result:
    cache = SyncIntelligentCache(settings)
    bare = redis.Redis(host=settings.redis_host, port=settings.redis_port)
    cache.start()
    cache.set("bench", "hot-sync", VALUE, ttl=3600)
    key = cache.core.data_key("bench", "hot-sync")

    def ours() -> Any:
        return cache.get(
            "bench", "hot-sync", user_context="user-1", session_id="s-1", fallback_data=lambda: 0
        )

    def baseline() -> Any:
        return bare.get(key)

    baseline_ns: list[int] = []
    client_ns: list[int] = []
    _pairs_sync(baseline, ours, block, [], [])
    for index in range(rounds):
        if index % 2 == 0:
            _pairs_sync(baseline, ours, block, baseline_ns, client_ns)
        else:
            _pairs_sync(ours, baseline, block, client_ns, baseline_ns)
    bare.close()
    cache.close(timeout=2.0)
    return Result(label, baseline_ns, client_ns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=10, help="alternating blocks per side")
    parser.add_argument("--block", type=int, default=2000, help="calls per block")
    parser.add_argument(
        "--rules", type=int, default=10_000, help="prefetch rules loaded in the async client"
    )
    args = parser.parse_args(argv)

    results: list[Result] = []
    with DevStack(kafka=True, redis=True) as stack:
        if stack.redis is None or stack.kafka is None:
            raise SystemExit("the devstack did not provide Redis and Kafka")
        redis_host, redis_port = stack.redis.host, stack.redis.port
        cases = {
            "no broker (events dropped)": load_settings(
                redis_host=redis_host,
                redis_port=redis_port,
                emitter_enabled=True,
                kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
            ),
            "broker running": load_settings(
                redis_host=redis_host,
                redis_port=redis_port,
                emitter_enabled=True,
                kafka_bootstrap_servers=stack.kafka.bootstrap_servers,
                topic_access="cachecast.access.bench",
            ),
        }
        gc.collect()
        for name, settings in cases.items():
            results.append(
                asyncio.run(
                    bench_async(settings, f"async, {name}", args.rounds, args.block, args.rules)
                )
            )
            results.append(bench_sync(settings, f"sync, {name}", args.rounds, args.block))
        pooled = cases["broker running"].model_copy(update={"redis_read_line": False})
        results.append(
            asyncio.run(bench_async(pooled, POOLED, args.rounds, args.block, args.rules))
        )

    samples = args.rounds * args.block
    print(f"\ncache hit latency, microseconds ({samples} calls per column, same Redis server)\n")
    print(
        f"{'case':<34} {'redis50':>8} {'redis99':>8} {'ours50':>8} {'ours99':>8}"
        f" {'p50x':>7} {'p99x':>7}"
    )
    for result in results:
        print(result.row())
    async_ratios = [
        r.p50_ratio for r in results if r.label.startswith("async") and r.label != POOLED
    ]
    worst = max(async_ratios)
    print(
        f"\nasync p50 ratio: worst {worst:.3f}, mean {statistics.mean(async_ratios):.3f} "
        f"(target <= {TARGET_P50_RATIO}): {'PASS' if worst <= TARGET_P50_RATIO else 'FAIL'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

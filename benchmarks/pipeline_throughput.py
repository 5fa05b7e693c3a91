"""Pipeline throughput and warm latency, on the devstack (real Kafka + Redis).

    .venv/bin/python benchmarks/pipeline_throughput.py [--events 600000] [--rate 2000]

1. Baseline: a bare aiokafka consumer reads the pre-produced access records and
   decodes every event (schemas.decode_access_dicts): the cost of just getting
   the events into Python.
2. Pipeline: one ``cachecast worker`` (all agents, models on, warming on)
   consumes the same records from the start; events/s is measured from the
   worker's own counters (observe saw them all and the engine learnt from them).
   The events replay the bundled trace's keys with the outcomes an LRU cache of
   ``--cache-fraction`` would have had, as an application's cache reports them.
3. Their ratio; then the worst case, every event a miss (the sequence models
   learn only from misses, so every event then feeds every model).
4. Warm latency at a steady rate: the real client replays the bundled trace at
   ``--rate`` requests/s and the writer's outcomes give the time from the access
   event that triggered a prediction to the key being written in Redis. The
   worker warms sequences itself for this (``CACHECAST_WORKER_SEQUENCES``): by
   default it leaves them to the edge, and a short replay gives too few warms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from collections import OrderedDict
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pipeline.config import Settings, load_settings
from pipeline.devstack import DevStack, free_port
from pipeline.partitioning import PartitionCache
from pipeline.replay import replay
from pipeline.sim.traces import BUNDLED_TRACE, load_trace
from pipeline.topics import ensure_topics
from pipeline.worker import WorkerProcess
from schemas.decode import decode_access_dicts

BATCH = 500


def _env(stack: DevStack, tag: str, partitions: int) -> dict[str, str]:
    return {
        **stack.env(),
        "CACHECAST_APP_ID": f"bench-{tag}",
        "CACHECAST_TOPIC_NAMESPACE": f"bench-{tag}",
        "CACHECAST_TOPIC_PARTITIONS": str(partitions),
        "CACHECAST_SESSION_TIMEOUT_S": "2",
        "CACHECAST_HEARTBEAT_S": "0.5",
        "CACHECAST_CHECKPOINT_S": "30",
        "CACHECAST_LOADERS": orjson.dumps(
            {"bench": {"callable": "pipeline.replay:demo_origin", "rate": 20000}}
        ).decode(),
    }


def _settings(env: dict[str, str]) -> Settings:
    os.environ.update(env)
    return load_settings()


def lru_outcomes(keys: list[str], n_events: int, fraction: float) -> list[bool]:
    """Hit or miss of each request in an LRU cache holding ``fraction`` of the keys."""
    capacity = max(1, int(len(set(keys)) * fraction))
    cache: OrderedDict[str, None] = OrderedDict()
    hits: list[bool] = []
    for i in range(n_events):
        key = keys[i % len(keys)]
        if key in cache:
            cache.move_to_end(key)
            hits.append(True)
        else:
            cache[key] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
            hits.append(False)
    return hits


async def produce(settings: Settings, n_events: int, cache_fraction: float | None) -> None:
    """Access records as the client's emitter writes them: batches per key partition.

    With ``cache_fraction``, each event carries the outcome an LRU cache of that
    size would have had (the models see hits and misses as in production); without,
    every event is a miss (the worst case: every event feeds every model).
    """
    keys = [str(k) for k in load_trace(BUNDLED_TRACE).keys.tolist()]
    if cache_fraction is None:
        hits = [False] * n_events
    else:
        hits = lru_outcomes(keys, n_events, cache_fraction)
    partition_of = PartitionCache(settings.topic_partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_brokers(),
        compression_type="lz4",
        max_batch_size=1024 * 1024,
        max_request_size=2 * 1024 * 1024,
        linger_ms=5,
    )
    await producer.start()
    try:
        groups: dict[int, list[dict[str, object]]] = {}
        now = time.time()
        for i in range(n_events):
            key = keys[i % len(keys)]
            event = {
                "ts": now + i * 1e-4,
                "namespace": "bench",
                "key": key,
                "op": "get",
                "outcome": "hit" if hits[i] else "miss",
                "latency_us": 90,
                "client": "bench",
            }
            group = groups.setdefault(partition_of(f"bench:{key}"), [])
            group.append(event)
            if len(group) == BATCH:
                await producer.send(
                    settings.topic_access,
                    orjson.dumps(group),
                    partition=partition_of(f"bench:{key}"),
                )
                group.clear()
        for partition, group in groups.items():
            if group:
                await producer.send(settings.topic_access, orjson.dumps(group), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


async def baseline(settings: Settings, n_events: int) -> float:
    """events/s of a bare consumer that decodes every event."""
    consumer = AIOKafkaConsumer(
        settings.topic_access,
        bootstrap_servers=settings.kafka_brokers(),
        group_id=None,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    seen = 0
    started = time.perf_counter()
    try:
        while seen < n_events:
            batch = await consumer.getmany(timeout_ms=1000, max_records=1000)
            for records in batch.values():
                for record in records:
                    events, _ = decode_access_dicts(record.value or b"")
                    seen += len(events)
    finally:
        await consumer.stop()
    return seen / (time.perf_counter() - started)


def pipeline_rate(worker: WorkerProcess, n_events: int, timeout: float = 900) -> float:
    """events/s of one worker, from its first counted event to all events learnt."""
    started = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = worker.monitor()
        seen = int(doc["counters"].get("events", 0))
        learnt = sum(int(m["events"]) for m in doc["models"].values())
        if started is None and seen > 0:
            started, first = time.perf_counter(), seen
        if seen >= n_events and learnt >= n_events:
            assert started is not None
            return (n_events - first) / (time.perf_counter() - started)
        time.sleep(0.2)
    raise TimeoutError("the worker did not get through the events in time")


def throughput(
    stack: DevStack, args: argparse.Namespace, workdir: Path, cache_fraction: float | None
) -> tuple[float, float]:
    """(bare consumer events/s, one worker's events/s) on freshly produced records."""
    env = _env(stack, uuid.uuid4().hex[:6], args.partitions)
    settings = _settings(env)
    asyncio.run(ensure_topics(settings))
    asyncio.run(produce(settings, args.events, cache_fraction))
    base = asyncio.run(baseline(settings, args.events))
    tag = "lru" if cache_fraction is not None else "miss"
    worker = WorkerProcess(
        {**os.environ, **env}, workdir / f"throughput-{tag}.log", web_port=free_port()
    )
    worker.start()
    try:
        rate = pipeline_rate(worker, args.events)
    finally:
        worker.stop()
    return base, rate


#: Settings of the warm-latency replay's worker (see main).
WORKER_WARMS = {"CACHECAST_WORKER_SEQUENCES": "true"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=600_000)
    parser.add_argument("--rate", type=float, default=2_000.0)
    parser.add_argument("--latency-requests", type=int, default=40_000)
    parser.add_argument(
        "--partitions",
        type=int,
        default=1,
        help="partitions per topic; one worker needs one, and more mean smaller records",
    )
    parser.add_argument(
        "--cache-fraction",
        type=float,
        default=0.05,
        help="events carry the outcomes of an LRU cache this size (as in the demo)",
    )
    parser.add_argument(
        "--latency-only",
        action="store_true",
        help="only the warm-latency replay (step 4), not the throughput runs",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="cachecast-bench-"))
    with DevStack(kafka=True, redis=True, kafka_partitions=args.partitions) as stack:
        if not args.latency_only:
            base, rate = throughput(stack, args, workdir, args.cache_fraction)
            _, worst = throughput(stack, args, workdir, None)

        # The worker warm path's latency: by default the worker leaves sequences to the
        # edge and warms only what it sees far ahead, too few warms in a short replay
        # to measure, so here it warms sequences too.
        env = {**_env(stack, uuid.uuid4().hex[:6], args.partitions), **WORKER_WARMS}
        settings = _settings(env)
        worker = WorkerProcess({**os.environ, **env}, workdir / "latency.log", web_port=free_port())
        worker.start()
        try:
            trace = load_trace(BUNDLED_TRACE, max_requests=args.latency_requests)
            result = asyncio.run(
                replay(
                    trace,
                    settings,
                    namespace="bench",
                    rate=args.rate,
                    cache_values=int(trace.n_unique * 0.05),
                )
            )
            reorder = worker.monitor()["reorder"]
        finally:
            worker.stop()

    achieved = result.requests / result.seconds
    latency = (
        f"worker warm latency at {achieved:,.0f} events/s:   "
        f"p50 {result.warm_latency_p50_ms or float('nan'):.1f} ms, "
        f"p99 {result.warm_latency_p99_ms or float('nan'):.1f} ms  (target p99 <= 50 ms); "
        f"{result.warms_written:,} warms written (CACHECAST_WORKER_SEQUENCES on); reorder:"
        f" {reorder['late_events']:,} late events, hold now {reorder['hold_ms']} ms"
    )
    if args.latency_only:
        print(latency)
        return
    print(f"events produced:                 {args.events:,} in batches of {BATCH}")
    print(f"bare consumer + decode:          {base:,.0f} events/s")
    print(
        f"pipeline, one worker:            {rate:,.0f} events/s  (target >= 50,000);"
        f" outcomes of a {args.cache_fraction:.0%} LRU cache"
    )
    print(f"ratio pipeline / bare consumer:  {rate / base:.3f}")
    print(f"worst case, every event a miss:  {worst:,.0f} events/s (every event feeds every model)")
    print(latency)


if __name__ == "__main__":
    main()

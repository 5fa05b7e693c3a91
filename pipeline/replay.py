"""``cachecast replay``: drive a real cache with a real trace, through the real client.

Each request of the trace becomes ``IntelligentCache.get(namespace, key,
fallback_data=origin)`` against a Redis whose ``maxmemory`` holds a chosen
number of values (``allkeys-lru``), so hits and misses are Redis's own. The
client emits access events to Kafka as any application would; if a worker is
running, its warms land in the same Redis, and the replay reads their outcomes
from the outcomes topic to report warm precision and latency.

The origin is synthetic: :func:`demo_origin` returns a deterministic value of
``CACHECAST_DEMO_VALUE_BYTES`` bytes for any key. Point the worker's loader for
the replayed namespace at it (``{"ns": {"callable": "pipeline.replay:demo_origin"}}``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaConsumer

from pipeline.client import IntelligentCache
from pipeline.codec import ValueCodec
from pipeline.config import Settings, load_settings
from pipeline.sim.traces import CsvMapping, Trace, read_csv, read_jsonl, read_oracle_general
from pipeline.stats import LatencyHistogram
from schemas.decode import InvalidEvent, decode_warmup_outcome_dicts

__all__ = [
    "BUNDLED_TRACE",
    "ReplayResult",
    "demo_origin",
    "load_trace",
    "register",
    "replay",
    "size_cache",
    "synthetic_value",
]

BUNDLED_TRACE: Final = Path(__file__).parent / "data" / "cache2k_orm_busy_200k.csv.zst"
_BUNDLED_MAPPING: Final = "key=1,ts=0,op=none,header=1"
#: Size of a synthetic value. Values are incompressible (random base64): with
#: compressible filler a 5% cache would be a few hundred kilobytes, where Redis's
#: per-connection buffers alone would crowd out a noticeable share of the values.
DEMO_VALUE_BYTES: Final = 16_384


async def demo_origin(namespace: str, key: str) -> dict[str, Any]:
    """The synthetic origin: a deterministic record of about CACHECAST_DEMO_VALUE_BYTES bytes.

    Asynchronous, so the worker's loader calls it on its event loop (a sync callable
    would run in a thread, as a blocking database call must).
    """
    return synthetic_value(namespace, key)


def synthetic_value(namespace: str, key: str) -> dict[str, Any]:
    """The value :func:`demo_origin` serves for ``namespace:key``."""
    size = int(os.environ.get("CACHECAST_DEMO_VALUE_BYTES", DEMO_VALUE_BYTES))
    seed = hashlib.blake2b(f"{namespace}:{key}".encode(), digest_size=8).digest()
    raw = random.Random(seed).randbytes(max(0, size - 80) * 3 // 4)
    return {"namespace": namespace, "key": key, "body": base64.b64encode(raw).decode()}


def load_trace(
    path: str | Path,
    fmt: str | None = None,
    mapping: str | None = None,
    max_requests: int | None = None,
) -> Trace:
    """Read a trace; the format is guessed from the name when not given."""
    path = Path(path)
    name = path.name
    if fmt is None:
        fmt = "oracleGeneral" if "oracleGeneral" in name else "jsonl" if ".jsonl" in name else "csv"
    if fmt == "oracleGeneral":
        return read_oracle_general(path, max_requests=max_requests)
    if fmt == "jsonl":
        return read_jsonl(path, max_requests=max_requests)
    if fmt == "csv":
        spec = mapping or (_BUNDLED_MAPPING if path == BUNDLED_TRACE else None)
        return read_csv(path, CsvMapping.parse(spec) if spec else None, max_requests=max_requests)
    raise ValueError(f"unknown trace format {fmt!r} (oracleGeneral, csv or jsonl)")


async def size_cache(cache: IntelligentCache, n_values: int) -> int:
    """Set maxmemory so that about ``n_values`` values fit (allkeys-lru); returns bytes.

    Redis counts its own overhead in ``used_memory``, so the size is measured:
    the baseline now, plus ``n_values`` times the measured cost of one value.
    """
    redis = cache.redis
    await cache.configure_redis({"maxmemory": 0, "maxmemory-policy": "allkeys-lru"})
    await redis.flushall()
    base = int((await redis.info("memory"))["used_memory"])
    probe = 2_000
    codec = ValueCodec(
        threshold=cache.settings.redis_compression_threshold,
        enable_compression=cache.settings.redis_enable_compression,
    )
    encoded = codec.encode(synthetic_value("probe", "x" * 8)).data
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(probe):
            pipe.set(f"{cache.settings.redis_key_prefix}probe:{i:08d}", encoded)
        await pipe.execute()
    per_value = (int((await redis.info("memory"))["used_memory"]) - base) / probe
    await redis.flushall()
    maxmemory = int(base + n_values * per_value * 1.02) + 256 * 1024
    # More samples: Redis's approximated LRU comes closer to true LRU, runs vary less.
    await cache.configure_redis(
        {"maxmemory": maxmemory, "maxmemory-policy": "allkeys-lru", "maxmemory-samples": 10}
    )
    return maxmemory


@dataclass
class ReplayResult:
    """What one replay measured."""

    namespace: str
    requests: int
    hits: int
    misses: int
    errors: int
    warmed_hits: int
    seconds: float
    cache_values: int
    warm_outcomes: dict[str, int] = field(default_factory=dict)
    warm_latency_p50_ms: float | None = None
    warm_latency_p99_ms: float | None = None
    events_dropped: int = 0

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def warms_written(self) -> int:
        return self.warm_outcomes.get("written", 0)

    @property
    def fetches_per_request(self) -> float:
        """Origin work per request: the application's misses plus the warms' loads."""
        return (self.misses + self.warms_written) / self.requests if self.requests else 0.0

    @property
    def warm_precision(self) -> float | None:
        return self.warmed_hits / self.warms_written if self.warms_written else None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            hit_ratio=self.hit_ratio,
            fetches_per_request=self.fetches_per_request,
            warm_precision=self.warm_precision,
            warms_written=self.warms_written,
        )
        return out


class _OutcomeWatcher:
    """Counts the worker's warm outcomes for one namespace, from the outcomes topic."""

    def __init__(self, settings: Settings, namespace: str) -> None:
        self.namespace = namespace
        self.statuses: Counter[str] = Counter()
        self.latency = LatencyHistogram()
        self._consumer = AIOKafkaConsumer(
            settings.topic_outcomes,
            bootstrap_servers=settings.kafka_brokers(),
            group_id=None,
            auto_offset_reset="latest",
            enable_auto_commit=False,
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        # Pin the start position now, so outcomes of this replay are never missed.
        for tp in self._consumer.assignment():
            await self._consumer.position(tp)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        async for record in self._consumer:
            if record.value is None:
                continue
            try:
                outcomes, _ = decode_warmup_outcome_dicts(record.value)
            except InvalidEvent:
                continue
            for outcome in outcomes:
                if outcome["namespace"] != self.namespace:
                    continue
                self.statuses[outcome["status"]] += 1
                if outcome["status"] == "written":
                    self.latency.add(outcome["latency_us"])

    async def stop(self, linger: float) -> None:
        await asyncio.sleep(linger)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()


async def replay(
    trace: Trace,
    settings: Settings,
    *,
    namespace: str,
    rate: float | None = None,
    cache_values: int | None = None,
    watch_warms: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Replay ``trace`` through an :class:`IntelligentCache`; see the module doc."""
    cache = IntelligentCache(settings, early_refresh=False)
    await cache.start()
    watcher = _OutcomeWatcher(settings, namespace) if watch_warms else None
    try:
        n_values = cache_values or max(1, int(trace.n_unique * 0.05))
        await size_cache(cache, n_values)
        if watcher is not None:
            await watcher.start()
        keys = [str(k) for k in trace.keys.tolist()]

        def origin_for(key: str) -> Callable[[], Any]:
            return lambda: synthetic_value(namespace, key)

        started = time.perf_counter()
        get = cache.get
        for i, key in enumerate(keys):
            await get(namespace, key, fallback_data=origin_for(key))
            if rate and i % 8 == 7:
                # Pace in small steps: a burst would hold the events of its first requests.
                ahead = (i + 1) / rate - (time.perf_counter() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            if progress is not None and i % 256 == 255:
                progress(i + 1, len(keys))
        seconds = time.perf_counter() - started
        if progress is not None:
            progress(len(keys), len(keys))
        if cache.emitter is not None:
            await cache.emitter.flush(10.0)
        stats = (await cache.get_stats())["client"]
        result = ReplayResult(
            namespace=namespace,
            requests=len(keys),
            hits=stats["hits"],
            misses=stats["misses"],
            errors=stats["errors"],
            warmed_hits=stats["warmed_hits"],
            seconds=seconds,
            cache_values=n_values,
        )
        emitter = cache.emitter
        if emitter is not None:
            result.events_dropped = emitter.stats().dropped
    finally:
        if watcher is not None:
            await watcher.stop(linger=2.0)
        await cache.close()
    if watcher is not None:
        result.warm_outcomes = dict(watcher.statuses)
        if watcher.latency.count:
            result.warm_latency_p50_ms = watcher.latency.quantile(0.5) / 1000
            result.warm_latency_p99_ms = watcher.latency.quantile(0.99) / 1000
    return result


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="replay a trace through the real client against a real Redis",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("trace", nargs="?", default=str(BUNDLED_TRACE), help="trace file")
    parser.add_argument("--format", choices=["oracleGeneral", "csv", "jsonl"], default=None)
    parser.add_argument("--csv-mapping", default=None, help='e.g. "key=1,ts=0,op=none,header=1"')
    parser.add_argument("--namespace", default="replay")
    parser.add_argument("--rate", type=float, default=None, help="requests per second (max)")
    parser.add_argument("--max-requests", type=int, default=None)
    parser.add_argument(
        "--cache-fraction",
        type=float,
        default=0.05,
        help="cache holds this fraction of the trace's distinct keys (default 0.05)",
    )
    parser.add_argument("--json", default=None, help="write the result as JSON here")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = load_settings()
    trace = load_trace(args.trace, args.format, args.csv_mapping, args.max_requests)
    n_values = max(1, int(trace.n_unique * args.cache_fraction))

    def progress(done: int, total: int) -> None:
        if done == total or done % 20_480 < 256:
            print(f"\r{done:>9,} / {total:,} requests", end="", file=sys.stderr, flush=True)

    result = asyncio.run(
        replay(
            trace,
            settings,
            namespace=args.namespace,
            rate=args.rate,
            cache_values=n_values,
            progress=progress,
        )
    )
    print(file=sys.stderr)
    doc = result.as_dict()
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    return 0

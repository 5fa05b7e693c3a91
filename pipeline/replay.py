"""``cachecast replay``: drive a real cache with a real trace, through the real client.

Each request of the trace becomes ``IntelligentCache.get(namespace, key,
fallback_data=origin)`` against a Redis whose ``maxmemory`` holds a chosen
number of values (``allkeys-lru``), so hits and misses are Redis's own. The
client emits access events to Kafka as any application would; if a worker is
running, its warms land in the same Redis, and the replay reads their outcomes
from the outcomes topic to report warm precision and latency.

With a rate, the replay is open-loop, as real traffic is: request ``i`` starts
at ``i / rate`` seconds as its own task, whether or not earlier ones finished
(at most ``--max-outstanding`` at once). Without a rate, requests run one after
another, as fast as they complete. ``--clients N`` deals the requests round-robin
to N independent clients (each with its own connections and event emitter, as N
application processes would have) on the same Redis. Each client's pool holds
``--connections`` Redis connections (a request waits for a free one, as in an
application); they are opened before the cache is sized, so their buffers, which
Redis counts in ``used_memory``, do not take the values' room.

The origin is synthetic: :func:`demo_origin` answers after ``CACHECAST_DEMO_ORIGIN_MS``
milliseconds (default 3) with a deterministic value of ``CACHECAST_DEMO_VALUE_BYTES``
bytes for any key. The replay's own misses load through it too. Point the worker's
loader for the replayed namespace at it
(``{"ns": {"callable": "pipeline.replay:demo_origin"}}``), and give the worker the
same ``CACHECAST_DEMO_ORIGIN_MS``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import hashlib
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Protocol

import orjson
import redis.asyncio
from aiokafka import AIOKafkaConsumer

from pipeline.client import IntelligentCache
from pipeline.client.connection import AsyncRedisClient
from pipeline.client.keys import escape_glob
from pipeline.codec import ValueCodec
from pipeline.config import Settings, load_settings
from pipeline.histogram import LatencyHistogram
from pipeline.sim.traces import (
    BUNDLED_TRACE,
    Trace,
    add_trace_options,
    load_trace,
)
from pipeline.transport import kafka_options
from schemas.decode import InvalidEvent, decode_warmup_outcome_dicts

__all__ = [
    "DEFAULT_ORIGIN_MS",
    "MAX_OUTSTANDING",
    "ORIGIN_MS_ENV",
    "POOL_SIZE",
    "Pace",
    "PaceReport",
    "ReplayResult",
    "add_load_options",
    "clear",
    "dealer",
    "demo_origin",
    "origin_latency",
    "origin_ms",
    "register",
    "replay",
    "run_requests",
    "size_cache",
    "sum_client_stats",
    "synthetic_value",
    "user_labels",
]

#: Size of a synthetic value. Values are incompressible (random base64): with
#: compressible filler a 5% cache would be a few hundred kilobytes, where Redis's
#: per-connection buffers alone would crowd out a noticeable share of the values.
DEMO_VALUE_BYTES: Final = 16_384
#: The synthetic origin's latency when CACHECAST_DEMO_ORIGIN_MS is not set.
DEFAULT_ORIGIN_MS: Final = 3.0
ORIGIN_MS_ENV: Final = "CACHECAST_DEMO_ORIGIN_MS"
#: Most requests in flight at once in an open-loop replay.
MAX_OUTSTANDING: Final = 512
#: Redis connections per client; a request waits for a free one, as in an application.
POOL_SIZE: Final = 16
#: Redis shrinks a connection's buffers once it has been idle for 2 s.
_BUFFERS_SETTLE_S: Final = 2.5
#: Exception texts kept per replay (the count is exact, the samples are not all).
_ERROR_SAMPLES: Final = 5


def origin_ms() -> float:
    """The synthetic origin's latency in milliseconds (CACHECAST_DEMO_ORIGIN_MS, default 3)."""
    raw = os.environ.get(ORIGIN_MS_ENV, "").strip()
    if not raw:
        return DEFAULT_ORIGIN_MS
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{ORIGIN_MS_ENV} must be a number of milliseconds, got {raw!r}") from None
    return max(0.0, value)


@contextlib.contextmanager
def origin_latency(ms: float | None) -> Iterator[float]:
    """Set CACHECAST_DEMO_ORIGIN_MS in this process while the block runs (None: leave it).

    The environment is the one source of the latency: the replay's own loads and
    any loader configured in the settings (the client's edge warms) read it.
    """
    if ms is None:
        yield origin_ms()
        return
    if ms < 0:
        raise ValueError("the origin latency must be >= 0 ms")
    before = os.environ.get(ORIGIN_MS_ENV)
    os.environ[ORIGIN_MS_ENV] = repr(float(ms))
    try:
        yield float(ms)
    finally:
        if before is None:
            os.environ.pop(ORIGIN_MS_ENV, None)
        else:
            os.environ[ORIGIN_MS_ENV] = before


async def demo_origin(namespace: str, key: str) -> dict[str, Any]:
    """The synthetic origin: after CACHECAST_DEMO_ORIGIN_MS ms, a deterministic record.

    Asynchronous, so the worker's loader calls it on its event loop (a sync callable
    would run in a thread, as a blocking database call must). The latency is a
    sleep: it costs the caller time, not CPU, as a database round trip would.
    """
    delay = origin_ms()
    if delay > 0:
        await asyncio.sleep(delay / 1000)
    return synthetic_value(namespace, key)


def synthetic_value(namespace: str, key: str) -> dict[str, Any]:
    """The value :func:`demo_origin` serves for ``namespace:key`` (a new dict each time)."""
    size = int(os.environ.get("CACHECAST_DEMO_VALUE_BYTES", DEMO_VALUE_BYTES))
    return {"namespace": namespace, "key": key, "body": _synthetic_body(namespace, key, size)}


@functools.lru_cache(maxsize=4096)
def _synthetic_body(namespace: str, key: str, size: int) -> str:
    """Random, incompressible text, the same for a key every time, made once per key.

    Remembered (at most 4,096 keys, 64 MiB at the default 16 KiB), because a
    database hands its rows over at no CPU cost to the application: generating
    them again cost the demo's process 7% of its CPU at 2,000 requests/s.
    """
    seed = hashlib.blake2b(f"{namespace}:{key}".encode(), digest_size=8).digest()
    raw = random.Random(seed).randbytes(max(0, size - 80) * 3 // 4)
    return base64.b64encode(raw).decode()


async def clear(cache: IntelligentCache, *, flush: bool = False) -> int:
    """Delete cachecast's keys (its prefix only), or the whole database with ``flush``.

    Never other databases: ``flush`` is FLUSHDB, not FLUSHALL. Returns the keys deleted.
    """
    redis = cache.redis
    if flush:
        size = int(await redis.dbsize())
        await redis.flushdb()
        return size
    deleted = 0
    batch: list[Any] = []
    pattern = escape_glob(cache.settings.redis_key_prefix) + "*"
    async for key in redis.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += int(await redis.unlink(*batch))
            batch.clear()
    if batch:
        deleted += int(await redis.unlink(*batch))
    return deleted


async def size_cache(cache: IntelligentCache, n_values: int, *, flush: bool = False) -> int:
    """Set maxmemory so that about ``n_values`` values fit (allkeys-lru); returns bytes.

    Redis counts its own overhead in ``used_memory``, so the size is measured:
    the baseline now, plus ``n_values`` times the measured cost of one value.
    Only cachecast's prefix is cleared first (see :func:`clear`); point a replay
    at a Redis of its own all the same, since it sets ``maxmemory``.
    """
    redis = cache.redis
    await cache.configure_redis({"maxmemory": 0, "maxmemory-policy": "allkeys-lru"})
    await clear(cache, flush=flush)
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
    await clear(cache)
    maxmemory = int(base + n_values * per_value * 1.02) + 256 * 1024
    # More samples: Redis's approximated LRU comes closer to true LRU, runs vary less.
    await cache.configure_redis(
        {"maxmemory": maxmemory, "maxmemory-policy": "allkeys-lru", "maxmemory-samples": 10}
    )
    return maxmemory


# -- running the requests ---------------------------------------------------------------


@dataclass(kw_only=True)
class Pace:
    """Whether a run of requests kept its schedule, and what the application waited."""

    #: Times a request was due while ``max_outstanding`` were in flight, and waited.
    backlog_waits: int = 0
    peak_outstanding: int = 0
    #: How late requests started against their schedule (open loop only).
    start_lag_p50_ms: float | None = None
    start_lag_p99_ms: float | None = None
    start_lag_max_ms: float | None = None
    #: From when a request was due (open loop; else started) to its answer: what the
    #: application waited, queueing included.
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_max_ms: float | None = None


@dataclass(kw_only=True)
class PaceReport(Pace):
    """How the requests were run: failures, and whether the schedule was kept."""

    requests: int = 0
    seconds: float = 0.0
    #: Requests whose call raised (each counted once; the replay goes on).
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def record_error(self, exc: BaseException) -> None:
        self.errors += 1
        if len(self.error_samples) < _ERROR_SAMPLES:
            self.error_samples.append(f"{type(exc).__name__}: {exc}")

    def result_fields(self) -> dict[str, Any]:
        """This report as :class:`ReplayResult` fields: the :class:`Pace`, the errors
        (named ``request_errors``) and their samples."""
        out = {f.name: getattr(self, f.name) for f in fields(Pace)}
        out.update(request_errors=self.errors, error_samples=self.error_samples)
        return out


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _quantiles_ms(values: list[float]) -> tuple[float, float, float] | None:
    """p50, p99 and max of durations in seconds, in milliseconds (None when empty)."""
    if not values:
        return None
    values.sort()
    return (
        max(0.0, _quantile(values, 0.5)) * 1000,
        max(0.0, _quantile(values, 0.99)) * 1000,
        max(0.0, values[-1]) * 1000,
    )


async def run_requests(
    n: int,
    request: Callable[[int], Awaitable[object]],
    *,
    rate: float | None = None,
    max_outstanding: int = MAX_OUTSTANDING,
    progress: Callable[[int, int], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> PaceReport:
    """Call ``request(i)`` for ``i`` in ``range(n)``; return how it went.

    With ``rate``, open loop: request ``i`` is started at ``start + i / rate`` as
    its own task, whether or not earlier requests have finished, so slow requests
    overlap as they do in a real application; if ``max_outstanding`` are in flight
    when one is due, it waits for one to finish (counted in ``backlog_waits``).
    Without ``rate``, each request is awaited before the next starts.

    An exception raised by a request is counted and sampled, never lost nor fatal.
    Every request has finished when this returns.
    """
    if rate is not None and rate <= 0:
        raise ValueError("rate must be > 0")
    if max_outstanding < 1:
        raise ValueError("max_outstanding must be >= 1")
    report = PaceReport(requests=n)
    latencies: list[float] = []
    started = clock()
    if rate is None:
        for i in range(n):
            begun = clock()
            try:
                await request(i)
            except Exception as exc:
                report.record_error(exc)
            latencies.append(clock() - begun)
            if progress is not None and i % 256 == 255:
                progress(i + 1, n)
        report.peak_outstanding = 1 if n else 0
    else:
        await _open_loop(
            n, request, rate, max_outstanding, progress, clock, started, report, latencies
        )
    report.seconds = clock() - started
    quantiles = _quantiles_ms(latencies)
    if quantiles is not None:
        report.latency_p50_ms, report.latency_p99_ms, report.latency_max_ms = quantiles
    if progress is not None:
        progress(n, n)
    return report


async def _open_loop(
    n: int,
    request: Callable[[int], Awaitable[object]],
    rate: float,
    max_outstanding: int,
    progress: Callable[[int, int], None] | None,
    clock: Callable[[], float],
    started: float,
    report: PaceReport,
    latencies: list[float],
) -> None:
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()
    lags: list[float] = []

    async def one(i: int, due: float) -> None:
        try:
            await request(i)
        except Exception as exc:
            report.record_error(exc)
        latencies.append(clock() - due)

    def finished(task: asyncio.Task[None]) -> None:
        pending.discard(task)
        slot_free.set()
        if task.cancelled() and not stopping:  # cancelled from elsewhere: not silently lost
            report.record_error(asyncio.CancelledError("request cancelled"))

    stopping = False
    # Set when a request finishes: waiting on it costs O(1), asyncio.wait(pending) O(pending).
    slot_free = asyncio.Event()
    try:
        for i in range(n):
            due = started + i / rate
            now = clock()
            if due > now:
                await asyncio.sleep(due - now)
            if len(pending) >= max_outstanding:
                report.backlog_waits += 1
                while len(pending) >= max_outstanding:
                    slot_free.clear()
                    await slot_free.wait()
            lags.append(clock() - due)
            task = loop.create_task(one(i, due))
            pending.add(task)
            task.add_done_callback(finished)
            if len(pending) > report.peak_outstanding:
                report.peak_outstanding = len(pending)
            if progress is not None and i % 256 == 255:
                progress(i + 1, n)
        while pending:
            await asyncio.wait(set(pending))
    except BaseException:
        stopping = True
        for task in list(pending):
            task.cancel()
        raise
    quantiles = _quantiles_ms(lags)
    if quantiles is not None:
        report.start_lag_p50_ms, report.start_lag_p99_ms, report.start_lag_max_ms = quantiles


# -- the result ----------------------------------------------------------------------------

#: Client counters summed over the replay's clients (absent ones count 0: older clients).
_SUMMED: Final = (
    "hits",
    "misses",
    "errors",
    "loads",
    "load_joins",
    "warmed_hits",
    "inflight_joins",
    "edge_issued",
    "edge_written",
    "edge_failed",
    "edge_refused",
    "edge_skipped",
    "edge_useful",
    "edge_hits",
    "rule_reads",
    "rules_applied",
    "user_rule_reads",
    "user_rules_applied",
    "rule_resyncs",
)
#: Client latency figures: the worst of the clients' (quantiles cannot be summed).
_WORST: Final = ("edge_latency_p50_ms", "edge_latency_p99_ms")


def sum_client_stats(snapshots: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The clients' ``get_stats()["client"]`` parts combined: counters summed, latencies max.

    >>> sum_client_stats([{"hits": 2, "edge_latency_p50_ms": 4.0}, {"hits": 3, "misses": 1}])
    {'hits': 5, 'misses': 1, 'errors': 0, 'loads': 0, 'load_joins': 0, 'warmed_hits': 0,
     'inflight_joins': 0, 'edge_issued': 0, 'edge_written': 0, 'edge_failed': 0,
     'edge_refused': 0, 'edge_skipped': 0, 'edge_useful': 0, 'edge_hits': 0,
     'rule_reads': 0, 'rules_applied': 0, 'user_rule_reads': 0, 'user_rules_applied': 0,
     'rule_resyncs': 0,
     'edge_latency_p50_ms': 4.0, 'edge_latency_p99_ms': None}
    """
    out: dict[str, Any] = {
        name: sum(int(s.get(name, 0) or 0) for s in snapshots) for name in _SUMMED
    }
    for name in _WORST:
        values = [float(s[name]) for s in snapshots if s.get(name) is not None]
        out[name] = max(values) if values else None
    return out


@dataclass
class ReplayResult(Pace):
    """What one replay measured.

    ``misses`` is the clients' miss counter; ``demand_misses`` the origin loads the
    application's own requests started (a miss that joined a load already in
    flight is a miss, but not a demand miss). Warms come by two paths: the
    worker's (from the outcomes topic) and the clients' own edge warms (from the
    clients' counters).
    """

    namespace: str
    requests: int
    hits: int
    misses: int
    errors: int
    warmed_hits: int
    seconds: float
    cache_values: int
    trace: str = ""
    clients: int = 1
    rate: float | None = None
    origin_ms: float = 0.0
    demand_misses: int = 0
    load_joins: int = 0
    inflight_joins: int = 0
    edge_issued: int = 0
    edge_written: int = 0
    edge_failed: int = 0
    edge_refused: int = 0
    edge_skipped: int = 0
    edge_useful: int = 0
    #: First reads of edge-warmed values (also in ``warmed_hits``; joins included).
    edge_hits: int = 0
    #: Prefetch rules read on misses, and those that named something to load.
    rule_reads: int = 0
    rules_applied: int = 0
    #: User rules read as users' sessions opened, and those that named something to load.
    user_rule_reads: int = 0
    user_rules_applied: int = 0
    #: Times a client read the rule table again: the rule stream had lost entries it
    #: had not read (trimmed, or evicted by Redis), so deletions among them were lost.
    rule_resyncs: int = 0
    edge_latency_p50_ms: float | None = None
    edge_latency_p99_ms: float | None = None
    warm_outcomes: dict[str, int] = field(default_factory=dict)
    warm_latency_p50_ms: float | None = None
    warm_latency_p99_ms: float | None = None
    events_dropped: int = 0
    #: The worker's monitor document at the end of the replay, when the demo ran one.
    worker: dict[str, Any] | None = None
    #: Requests whose ``get`` raised (counted, the replay went on), with a few messages.
    request_errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    @classmethod
    def from_stats(
        cls,
        client: Mapping[str, Any],
        *,
        namespace: str,
        requests: int,
        seconds: float,
        cache_values: int,
        **extra: Any,
    ) -> ReplayResult:
        """Build from combined client stats (see :func:`sum_client_stats`)."""
        return cls(
            namespace=namespace,
            requests=requests,
            hits=int(client.get("hits", 0)),
            misses=int(client.get("misses", 0)),
            errors=int(client.get("errors", 0)),
            warmed_hits=int(client.get("warmed_hits", 0)),
            seconds=seconds,
            cache_values=cache_values,
            demand_misses=int(client.get("loads", 0)),
            load_joins=int(client.get("load_joins", 0)),
            inflight_joins=int(client.get("inflight_joins", 0)),
            rule_reads=int(client.get("rule_reads", 0)),
            rules_applied=int(client.get("rules_applied", 0)),
            user_rule_reads=int(client.get("user_rule_reads", 0)),
            user_rules_applied=int(client.get("user_rules_applied", 0)),
            rule_resyncs=int(client.get("rule_resyncs", 0)),
            edge_issued=int(client.get("edge_issued", 0)),
            edge_written=int(client.get("edge_written", 0)),
            edge_failed=int(client.get("edge_failed", 0)),
            edge_refused=int(client.get("edge_refused", 0)),
            edge_skipped=int(client.get("edge_skipped", 0)),
            edge_useful=int(client.get("edge_useful", 0)),
            edge_hits=int(client.get("edge_hits", 0)),
            edge_latency_p50_ms=client.get("edge_latency_p50_ms"),
            edge_latency_p99_ms=client.get("edge_latency_p99_ms"),
            **extra,
        )

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def achieved_rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def warms_written(self) -> int:
        """Values the worker wrote (its outcomes)."""
        return self.warm_outcomes.get("written", 0)

    @property
    def worker_useful(self) -> int:
        """First reads of values the worker warmed: warmed hits less those of edge warms.

        Clients without edge warms report no ``edge_hits``: all warmed hits are the worker's.
        """
        return max(0, self.warmed_hits - self.edge_hits)

    @property
    def warm_precision(self) -> float | None:
        """The worker's warms read before eviction, per warm written."""
        return self.worker_useful / self.warms_written if self.warms_written else None

    @property
    def edge_precision(self) -> float | None:
        return self.edge_useful / self.edge_written if self.edge_written else None

    @property
    def origin_fetches(self) -> int:
        """Loads from the origin: demand misses, edge warms, and the worker's warms."""
        return self.demand_misses + self.edge_issued + self.warms_written

    @property
    def fetches_per_request(self) -> float:
        return self.origin_fetches / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            hit_ratio=self.hit_ratio,
            achieved_rate=self.achieved_rate,
            origin_fetches=self.origin_fetches,
            fetches_per_request=self.fetches_per_request,
            warms_written=self.warms_written,
            worker_useful=self.worker_useful,
            warm_precision=self.warm_precision,
            edge_precision=self.edge_precision,
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
            **kafka_options(settings),
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

    async def stop(self) -> None:
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
    clients: int = 1,
    origin_ms: float | None = None,
    max_outstanding: int = MAX_OUTSTANDING,
    pool_size: int = POOL_SIZE,
    linger: float = 2.0,
    flush: bool = False,
    users: bool = True,
) -> ReplayResult:
    """Replay ``trace`` through ``clients`` :class:`IntelligentCache` instances; see the module doc.

    With ``users`` (the default) a trace's users come with its requests
    (``user_context``), as an application that knows who is asking sends them.

    Before it starts, the replay deletes the keys under cachecast's prefix; with
    ``flush`` it empties its Redis database instead (FLUSHDB, never FLUSHALL).

    ``origin_ms`` sets CACHECAST_DEMO_ORIGIN_MS for the replay (None: as set, default
    3 ms). Each client has its read line and a pool of ``pool_size`` Redis
    connections, as an application builds it. After the last request, the replay
    waits ``linger`` seconds for warms and outcomes still in flight before it reads
    the counters.
    """
    if clients < 1:
        raise ValueError("clients must be >= 1")
    with origin_latency(origin_ms) as latency_ms:
        return await _replay(
            trace,
            settings,
            namespace=namespace,
            rate=rate,
            cache_values=cache_values,
            watch_warms=watch_warms,
            progress=progress,
            clients=clients,
            latency_ms=latency_ms,
            max_outstanding=max_outstanding,
            pool_size=pool_size,
            linger=linger,
            flush=flush,
            users=users,
        )


class _Reader(Protocol):
    def get(
        self,
        namespace: str,
        key: str,
        *,
        user_context: str | None = None,
        fallback_data: Callable[[], Any] | None = None,
    ) -> Awaitable[Any]: ...


def dealer(
    caches: Sequence[_Reader],
    namespace: str,
    keys: Sequence[str],
    users: Sequence[str | None] | None = None,
) -> Callable[[int], Awaitable[Any]]:
    """``request(i)``: ``keys[i]`` read through client ``i % len(caches)``, by ``users[i]``.

    A miss loads from :func:`demo_origin` (asynchronously, so it waits for the
    origin's latency as a real load would, without blocking the other requests).
    """
    gets = [cache.get for cache in caches]
    n = len(gets)

    def request(i: int) -> Awaitable[Any]:
        key = keys[i]
        return gets[i % n](
            namespace,
            key,
            user_context=None if users is None else users[i],
            fallback_data=lambda: demo_origin(namespace, key),
        )

    return request


def user_labels(trace: Trace) -> list[str | None] | None:
    """The trace's users as the application would name them (None: the trace has none).

    >>> import numpy as np
    >>> user_labels(Trace(keys=np.array([1, 2]), ts=np.zeros(2), users=np.array([7, -1])))
    ['user-7', None]
    """
    if trace.users is None:
        return None
    return [None if user < 0 else f"user-{user}" for user in trace.users.tolist()]


async def _open_connections(client: AsyncRedisClient, n: int, value: bytes, key: str) -> None:
    """Open ``n`` connections of ``client``'s pool and pass a value through each, once.

    So that :func:`size_cache` counts their buffers in its baseline: the cache then
    holds its values beside the connections instead of losing room to them.
    """
    if not isinstance(client, redis.asyncio.Redis):
        return
    pool = client.connection_pool
    connections: list[redis.asyncio.connection.AbstractConnection] = []
    try:
        for _ in range(n):  # as many as are free: the client's own tasks may hold one
            connections.append(await pool.get_connection())  # type: ignore[no-untyped-call]
    except redis.exceptions.MaxConnectionsError:
        pass
    try:
        for connection in connections:
            await connection.send_command("SET", key, value)
            await connection.read_response()
            await connection.send_command("GET", key)
            await connection.read_response()
        if connections:
            await connections[0].send_command("DEL", key)
            await connections[0].read_response()
    finally:
        for connection in connections:
            await pool.release(connection)


async def _replay(
    trace: Trace,
    settings: Settings,
    *,
    namespace: str,
    rate: float | None,
    cache_values: int | None,
    watch_warms: bool,
    progress: Callable[[int, int], None] | None,
    clients: int,
    latency_ms: float,
    max_outstanding: int,
    pool_size: int,
    linger: float,
    flush: bool,
    users: bool,
) -> ReplayResult:
    # Each client is an application process of its own: own connections, own emitter,
    # built as an application builds it (so with its read line on a single server).
    caches = [
        IntelligentCache(settings, max_connections=pool_size, early_refresh=False)
        for _ in range(clients)
    ]
    watcher = _OutcomeWatcher(settings, namespace) if watch_warms else None
    opened: list[IntelligentCache] = []
    try:
        for cache in caches:
            await cache.start()
            opened.append(cache)
        n_values = cache_values or max(1, int(trace.n_unique * 0.05))
        codec = ValueCodec(
            threshold=settings.redis_compression_threshold,
            enable_compression=settings.redis_enable_compression,
        )
        payload = codec.encode(synthetic_value(namespace, "x" * 8)).data
        for i, cache in enumerate(caches):
            await _open_connections(cache.redis, pool_size, payload, f"#cachecast-replay-probe:{i}")
        await asyncio.sleep(_BUFFERS_SETTLE_S)
        await size_cache(caches[0], n_values, flush=flush)
        if watcher is not None:
            await watcher.start()
        keys = [str(k) for k in trace.keys.tolist()]
        pace = await run_requests(
            len(keys),
            dealer(caches, namespace, keys, user_labels(trace) if users else None),
            rate=rate,
            max_outstanding=max_outstanding,
            progress=progress,
        )
        for cache in caches:
            if cache.emitter is not None:
                await cache.emitter.flush(10.0)
        # Warms triggered by the last requests land, their outcomes arrive.
        await asyncio.sleep(linger)
        snapshots = [(await cache.get_stats())["client"] for cache in caches]
        result = ReplayResult.from_stats(
            sum_client_stats(snapshots),
            namespace=namespace,
            requests=len(keys),
            seconds=pace.seconds,
            cache_values=n_values,
            trace=trace.name,
            clients=clients,
            rate=rate,
            origin_ms=latency_ms,
            **pace.result_fields(),
        )
        result.events_dropped = sum(
            cache.emitter.stats().dropped for cache in caches if cache.emitter is not None
        )
    finally:
        if watcher is not None:
            await watcher.stop()
        for cache in opened:
            await cache.close()
    if watcher is not None:
        result.warm_outcomes = dict(watcher.statuses)
        if watcher.latency.count:
            result.warm_latency_p50_ms = watcher.latency.quantile(0.5) / 1000
            result.warm_latency_p99_ms = watcher.latency.quantile(0.99) / 1000
    return result


# -- the command -------------------------------------------------------------------------


def _number(
    text: str, convert: Callable[[str], float], what: str, ok: Callable[[float], bool], rule: str
) -> float:
    """``text`` as a number that passes ``ok`` (an argparse type's work; NaN never does)."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
    return value


def _positive_int(text: str) -> int:
    return int(_number(text, int, "a whole number", lambda v: v >= 1, ">= 1"))


def _positive_float(text: str) -> float:
    return _number(text, float, "a number", lambda v: v > 0, "> 0")


def _non_negative_float(text: str) -> float:
    return _number(text, float, "a number", lambda v: v >= 0, ">= 0")


def add_load_options(parser: argparse.ArgumentParser) -> None:
    """``--origin-ms``, ``--clients``, ``--connections``: the application side of a replay."""
    parser.add_argument(
        "--origin-ms",
        type=_non_negative_float,
        default=None,
        help=f"latency of the synthetic origin, ms (sets {ORIGIN_MS_ENV}; "
        f"default: from it, else {DEFAULT_ORIGIN_MS:g})",
    )
    parser.add_argument(
        "--clients",
        type=_positive_int,
        default=1,
        help="independent client instances the requests are dealt to round-robin (default 1)",
    )
    parser.add_argument(
        "--connections",
        type=_positive_int,
        default=POOL_SIZE,
        help=f"Redis connections per client; a request waits for a free one (default {POOL_SIZE})",
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="replay a trace through the real client against a real Redis",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("trace", nargs="?", default=str(BUNDLED_TRACE), help="trace file")
    add_trace_options(parser)
    parser.add_argument("--namespace", default="replay")
    parser.add_argument(
        "--rate",
        type=_positive_float,
        default=None,
        help="requests per second, open loop (default: one after another, as fast as they go)",
    )
    parser.add_argument(
        "--max-outstanding",
        type=_positive_int,
        default=MAX_OUTSTANDING,
        help=f"most requests in flight at once with --rate (default {MAX_OUTSTANDING})",
    )
    add_load_options(parser)
    parser.add_argument("--max-requests", type=int, default=None)
    parser.add_argument(
        "--cache-fraction",
        type=float,
        default=0.05,
        help="cache holds this fraction of the trace's distinct keys (default 0.05)",
    )
    parser.add_argument(
        "--flush",
        action="store_true",
        help="empty the Redis database first (FLUSHDB; default: delete only cachecast's prefix)",
    )
    parser.add_argument("--json", default=None, help="write the result as JSON here")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        trace = load_trace(args.trace, args.format, args.csv_columns or None, args.max_requests)
    except (OSError, ValueError) as exc:
        print(f"cannot read {args.trace}: {exc}", file=sys.stderr)
        return 2
    if len(trace) == 0:
        print(f"{args.trace}: the trace has no requests", file=sys.stderr)
        return 2
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
            clients=args.clients,
            origin_ms=args.origin_ms,
            max_outstanding=args.max_outstanding,
            pool_size=args.connections,
            flush=args.flush,
        )
    )
    print(file=sys.stderr)
    doc = result.as_dict()
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    return 0

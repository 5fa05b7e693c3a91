"""What a worker process holds besides Faust: Redis, loaders, codec, counters.

Built once per worker by :func:`agents.create_app`, connected lazily (redis-py
connects on first use), so building the app never touches the network.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from redis.asyncio.cluster import RedisCluster

from agents.app import Context
from pipeline.build_native import compiled_state
from pipeline.client.connection import AsyncRedisClient, connect_async
from pipeline.codec import ValueCodec
from pipeline.deadletter import dead_letter_headers
from pipeline.decide import WarmLatency
from pipeline.histogram import LatencyHistogram
from pipeline.loaders import loaders_from_config
from pipeline.stats import WindowStats
from pipeline.warming import WarmWriter
from schemas.decode import InvalidEvent, Reject

log = logging.getLogger(__name__)

__all__ = ["Runtime", "encode_batch", "record_source"]


class Runtime:
    """One worker's resources and counters, shared by its agents."""

    def __init__(self, context: Context, redis: AsyncRedisClient | None = None) -> None:
        settings = self.settings = context.settings
        self.topics = context.topics
        self.started_at = time.time()
        self.last_event_at = 0.0
        self.redis = connect_async(settings) if redis is None else redis
        self.codec = ValueCodec(
            threshold=settings.redis_compression_threshold,
            enable_compression=settings.redis_enable_compression,
        )
        self.loaders = loaders_from_config(settings.loader_config())
        self.warm_writer = WarmWriter(
            self.redis,
            settings.redis_key_prefix,
            self.loaders,
            self.codec,
            ttl_bounds=(settings.smart_ttl_min, settings.smart_ttl_max),
        )
        self.counters: Counter[str] = Counter()
        #: Per-namespace statistics not yet sent to the stats topic ("-": no namespace).
        self.deltas: defaultdict[str, WindowStats] = defaultdict(WindowStats)
        #: Trigger-to-written latencies of this worker's warms (they tune the lookahead).
        self.warm_latency = WarmLatency()
        #: Per agent: time from a record's production to its processing, in µs.
        self.consume_lag: defaultdict[str, LatencyHistogram] = defaultdict(LatencyHistogram)
        #: Event-loop stalls (how late a 50 ms timer fires) and garbage-collection pauses, in µs.
        self.loop_stall = LatencyHistogram()
        self.gc_pause = LatencyHistogram()
        self._gc_started = 0.0
        gc.callbacks.append(self._on_gc)
        context.app.task(self.start)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            self.gc_pause.add((time.perf_counter() - self._gc_started) * 1e6)

    def record_lag(self, agent: str, message_timestamp: float) -> None:
        """Note how long a record waited in Kafka and in Faust before ``agent`` got it."""
        self.last_event_at = time.time()
        self.consume_lag[agent].add(max(0.0, (time.time() - message_timestamp) * 1e6))

    def last_event_age(self) -> float | None:
        """Seconds since an agent last received a record (None: none yet)."""
        return round(time.time() - self.last_event_at, 3) if self.last_event_at else None

    def lag_summary(self) -> dict[str, dict[str, float]]:
        histograms = {**self.consume_lag, "loop_stall": self.loop_stall, "gc_pause": self.gc_pause}
        return {
            name: {
                "count": h.count,
                "p50_ms": round(h.quantile(0.5) / 1000, 2),
                "p99_ms": round(h.quantile(0.99) / 1000, 2),
                "max_ms": round(h.maximum / 1000, 2),
            }
            for name, h in histograms.items()
        }

    async def dead_letter(
        self,
        original: bytes,
        reason: str,
        *,
        source: str,
        agent: str,
        field: str | None = None,
        index: int | None = None,
    ) -> None:
        """Send one dead letter (original bytes, reason in headers) and count it."""
        self.counters["dead_letters"] += 1
        await self.topics.dead_letter.send(
            value=original,
            headers=dead_letter_headers(
                reason, source=source, agent=agent, field=field, index=index
            ),
            force=True,
        )

    async def dead_letter_rejects(
        self, rejects: Iterable[Reject], *, source: str, agent: str
    ) -> None:
        """Dead-letter each bad event of a batch, with where it was and why."""
        for reject in rejects:
            await self.dead_letter(
                reject.raw,
                reject.reason,
                source=source,
                agent=agent,
                field=reject.field,
                index=reject.index,
            )

    async def decoded(
        self,
        event: Any,
        decode: Callable[[bytes | None], tuple[list[dict[str, Any]], list[Reject]]],
        agent: str,
    ) -> list[dict[str, Any]]:
        """A batch record's valid items; the record (if undecodable) or its bad items are
        dead-lettered, each with its reason."""
        source = record_source(event.message)
        try:
            items, rejects = decode(event.value)
        except InvalidEvent as exc:
            await self.dead_letter(event.value or b"", exc.reason, source=source, agent=agent)
            return []
        await self.dead_letter_rejects(rejects, source=source, agent=agent)
        return items

    async def reject(self, event: Any, agent: str, exc: BaseException) -> None:
        """A record whose processing raised: dead-letter it with the reason and go on.

        The agent's loop stays alive and its offsets keep moving: a poison record
        is acked like any other, once it is safe in the dead-letter topic.
        """
        source = record_source(event.message)
        self.counters["poison_records"] += 1
        log.warning("%s: record %s could not be processed (%r); dead-lettered", agent, source, exc)
        await self.dead_letter(
            event.value if isinstance(event.value, bytes) else b"",
            f"{agent} could not process this record: {exc!r}"[:1000],
            source=source,
            agent=agent,
        )

    async def start(self) -> None:
        """Set up a cluster client before the agents use it concurrently.

        redis-py's asyncio cluster client discovers its slots lazily; many commands
        racing on a fresh client can hit MOVED errors and closed connections.
        """
        # Compiled modules run about twice as fast; an operator should see which runs.
        log.info("hot modules: %s", compiled_state())
        if isinstance(self.redis, RedisCluster):
            await self.redis.initialize()

    async def close(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        for loader in self.loaders.values():
            await loader.close()
        await self.redis.aclose()


def record_source(message: Any) -> str:
    """Where a record came from, as dead letters and logs name it: ``topic/partition/offset``."""
    return f"{message.topic}/{message.partition}/{message.offset}"


def encode_batch(items: list[dict[str, Any]]) -> bytes:
    return orjson.dumps(items)

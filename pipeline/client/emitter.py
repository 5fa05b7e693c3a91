"""The access-event emitter: the cache path hands off an event and never waits.

``emit`` appends a tuple to a bounded in-memory deque and returns: no I/O, no
lock, no await, no exception. A background task drains the deque every
``linger`` interval, groups events by the Kafka partition their key hashes to
(Kafka's own murmur2, so single-event producers in other languages land on the
same partition for the same key), and sends each group as one record holding a
JSON array. When Kafka is slow or down the deque fills and the *oldest* events
are dropped and counted; when it returns, events flow again.

:class:`ThreadedAccessEmitter` runs the same loop in a daemon thread for
synchronous applications.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaProducer

from pipeline.config import Settings
from pipeline.partitioning import PartitionCache
from schemas.contracts import MAX_RECORD_BYTES

__all__ = ["AccessEmitter", "EmitterStats", "ThreadedAccessEmitter"]

log = logging.getLogger(__name__)

#: The tuple an ``emit`` call stores; turned into a JSON object off the cache path.
_FIELDS: Final = (
    "ts",
    "namespace",
    "key",
    "op",
    "outcome",
    "latency_us",
    "size_bytes",
    "raw_bytes",
    "ttl",
    "user",
    "session",
    "tags",
    "warmed",
    "client",
    "warm_path",
    "joined",
)
_METADATA_REFRESH_S: Final = 30.0
_MAX_IN_FLIGHT: Final = 16

ProducerFactory = Callable[[], AIOKafkaProducer]


@dataclass(frozen=True, slots=True)
class EmitterStats:
    """Counters since the emitter was made. ``dropped`` = overflow + failed sends."""

    emitted: int
    sampled_out: int
    sent: int
    batches: int
    dropped_overflow: int
    dropped_send_failed: int
    pending: int
    connected: bool

    @property
    def dropped(self) -> int:
        return self.dropped_overflow + self.dropped_send_failed


class AccessEmitter:
    """Non-blocking, bounded, batching producer of access events.

    Parameters
    ----------
    settings
        Uses ``kafka_bootstrap_servers``, ``topic_access``, ``emitter_*`` and
        ``client_name``.
    producer_factory
        Builds the aiokafka producer (tests pass their own); the default uses
        lz4 batch compression and ``acks=1``.
    """

    def __init__(
        self, settings: Settings, *, producer_factory: ProducerFactory | None = None
    ) -> None:
        self._settings = settings
        self._topic = settings.topic_access
        self._client = settings.client_name
        self._sample_rate = settings.emitter_sample_rate
        self._batch_size = settings.emitter_batch_size
        self._linger = settings.emitter_linger_ms / 1000.0
        self._buffer: deque[tuple[Any, ...]] = deque(maxlen=settings.emitter_buffer_size)
        self._factory = producer_factory or self._default_producer
        self._producer: AIOKafkaProducer | None = None
        self._partitions: list[int] = []
        self._metadata_at = 0.0
        self._partition_of = PartitionCache(1)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._in_flight: set[asyncio.Future[Any]] = set()
        self._random = random.Random()
        # Counters (plain ints: emit runs on the cache path).
        self._emitted = 0
        self._sampled_out = 0
        self._sent = 0
        self._batches = 0
        self._dropped_overflow = 0
        self._dropped_send_failed = 0

    # -- the cache path -------------------------------------------------------------

    def emit(
        self,
        namespace: str,
        key: str,
        op: str,
        outcome: str,
        latency_us: int = 0,
        size_bytes: int = 0,
        ttl: int | None = None,
        user: str | None = None,
        session: str | None = None,
        tags: Sequence[str] | None = None,
        warmed: bool = False,
        ts: float | None = None,
        raw_bytes: int = 0,
        warm_path: str | None = None,
        joined: bool = False,
    ) -> None:
        """Queue one access event. O(1); never blocks, never raises.

        ``op="warm"`` reports an edge warm this client carried out (outcome ``none``:
        written, ``error``: failed or refused). ``warm_path`` says which path wrote the
        value a ``warmed`` read found (``"worker"`` or ``"edge"``); ``joined`` that the
        read waited for a load already in flight instead of fetching.
        """
        if self._sample_rate < 1.0 and self._random.random() >= self._sample_rate:
            self._sampled_out += 1
            return
        buffer = self._buffer
        if len(buffer) == buffer.maxlen:
            self._dropped_overflow += 1
        buffer.append(
            (
                time.time() if ts is None else ts,
                namespace,
                key,
                op,
                outcome,
                latency_us,
                size_bytes,
                raw_bytes,
                ttl,
                user,
                session,
                tuple(tags) if tags else (),
                warmed,
                self._client,
                warm_path,
                joined,
            )
        )
        self._emitted += 1

    def stats(self) -> EmitterStats:
        return EmitterStats(
            emitted=self._emitted,
            sampled_out=self._sampled_out,
            sent=self._sent,
            batches=self._batches,
            dropped_overflow=self._dropped_overflow,
            dropped_send_failed=self._dropped_send_failed,
            pending=len(self._buffer),
            connected=self._producer is not None,
        )

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background sender. Returns at once, even when Kafka is down."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="cachecast-access-emitter"
            )

    async def close(self, timeout: float = 5.0) -> None:
        """Flush what is buffered (for at most ``timeout`` seconds) and stop."""
        if self._task is None:
            return
        self._stopping = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        finally:
            self._task = None
            await self._drop_producer()
            # Whatever could not be flushed is lost: count it.
            self._dropped_send_failed += len(self._buffer)
            self._buffer.clear()

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the buffer is empty and in-flight sends are done."""
        deadline = time.monotonic() + timeout
        while self._buffer or self._in_flight:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(self._linger or 0.005)
        return True

    # -- background -----------------------------------------------------------------

    def _default_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self._settings.kafka_brokers(),
            client_id=f"cachecast-emitter-{self._client}",
            acks=1,
            compression_type="lz4",
            linger_ms=0,
            max_batch_size=MAX_RECORD_BYTES,
            max_request_size=MAX_RECORD_BYTES + 4096,
            request_timeout_ms=5000,
            retry_backoff_ms=200,
            metadata_max_age_ms=30_000,
        )

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            if self._producer is None:
                if self._stopping and not self._buffer:
                    return
                if not await self._connect():
                    if self._stopping:
                        return
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.2
            if self._buffer:
                await self._send_available()
            elif self._stopping:
                await self._wait_in_flight()
                return
            else:
                await asyncio.sleep(self._linger)

    async def _connect(self) -> bool:
        producer = self._factory()
        try:
            await producer.start()
            self._producer = producer
            await self._refresh_partitions(force=True)
            log.info("access emitter connected to %s", self._settings.kafka_bootstrap_servers)
            return True
        except Exception as exc:  # any failure here means "Kafka unavailable"
            log.debug("access emitter cannot reach Kafka: %s", exc)
            with contextlib.suppress(Exception):
                await producer.stop()
            self._producer = None
            return False

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 5.0)

    async def _refresh_partitions(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._producer is None or (not force and now - self._metadata_at < _METADATA_REFRESH_S):
            return
        partitions = await self._producer.partitions_for(self._topic)
        ordered = sorted(partitions) if partitions else [0]
        if ordered != self._partitions:
            self._partitions = ordered
            self._partition_of = PartitionCache(len(ordered))
        self._metadata_at = now

    def _partition(self, namespace: str, key: str) -> int:
        return self._partitions[self._partition_of(f"{namespace}:{key}")]

    async def _send_available(self) -> None:
        try:
            await self._refresh_partitions()
        except Exception as exc:
            log.debug("access emitter lost Kafka metadata: %s", exc)
            await self._drop_producer()
            return
        groups: dict[int, list[dict[str, Any]]] = {}
        buffer, fields = self._buffer, _FIELDS
        for _ in range(min(len(buffer), self._batch_size * 8)):
            event = buffer.popleft()
            groups.setdefault(self._partition(event[1], event[2]), []).append(
                dict(zip(fields, event, strict=True))
            )
        for partition, events in groups.items():
            for start in range(0, len(events), self._batch_size):
                await self._send(partition, events[start : start + self._batch_size])

    async def _send(self, partition: int, events: list[dict[str, Any]]) -> None:
        while len(self._in_flight) >= _MAX_IN_FLIGHT:
            await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
        producer = self._producer
        if producer is None:
            self._dropped_send_failed += len(events)
            return
        value = orjson.dumps(events)
        try:
            delivery = await producer.send(self._topic, value, partition=partition)
        except Exception as exc:
            self._dropped_send_failed += len(events)
            log.debug("access emitter send failed: %s", exc)
            await self._drop_producer()
            return
        count = len(events)
        self._in_flight.add(delivery)
        delivery.add_done_callback(lambda fut: self._delivered(fut, count))

    def _delivered(self, delivery: asyncio.Future[Any], count: int) -> None:
        self._in_flight.discard(delivery)
        if delivery.cancelled() or delivery.exception() is not None:
            self._dropped_send_failed += count
        else:
            self._sent += count
            self._batches += 1

    async def _wait_in_flight(self) -> None:
        if self._in_flight:
            await asyncio.wait(set(self._in_flight))


class ThreadedAccessEmitter:
    """The emitter for synchronous code: the same loop, in a daemon thread.

    ``emit`` is the same O(1) append (a deque append is thread-safe).
    """

    def __init__(
        self, settings: Settings, *, producer_factory: ProducerFactory | None = None
    ) -> None:
        self._emitter = AccessEmitter(settings, producer_factory=producer_factory)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.emit = self._emitter.emit
        self.stats = self._emitter.stats

    def start(self) -> None:
        if self._thread is not None:
            return
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._emitter.start())
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="cachecast-access-emitter", daemon=True)
        self._thread.start()
        ready.wait(5.0)

    def flush(self, timeout: float = 5.0) -> bool:
        if self._loop is None:
            return not self._emitter.stats().pending
        future = asyncio.run_coroutine_threadsafe(self._emitter.flush(timeout), self._loop)
        return future.result(timeout + 1.0)

    def close(self, timeout: float = 5.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._emitter.close(timeout), loop)
        with contextlib.suppress(Exception):
            future.result(timeout + 6.0)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout + 6.0)
        self._loop = self._thread = None

"""The access-event emitter: the cache path hands off an event and never waits.

``emit`` appends a tuple to a bounded in-memory deque and returns: no I/O, no
lock, no await, no exception. A background task drains the deque once
``min_batch`` events wait, or the first of them has waited ``linger`` (20 ms by
default), groups events by the Kafka partition their key hashes to
(Kafka's own murmur2, so single-event producers in other languages land on the
same partition for the same key), and sends each group as one record holding a
JSON array. When Kafka is slow or down the deque fills (bounded in events and in
estimated bytes) and the *oldest* events are dropped and counted; when it
returns, events flow again.

A broker outage costs the application almost nothing. The first failed delivery
closes the producer (its retries are what burns CPU and floods the log); the
emitter then probes the brokers with a plain TCP connect, backing off
exponentially with full jitter (0.5 s to 5 s), and only builds a producer again
once a broker accepts connections. It logs once when the outage starts and once
when it ends, with the events dropped meanwhile. An event that cannot be encoded
(a lone surrogate in a key) is dropped and counted; the others in its batch go.

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
from pipeline.transport import kafka_options
from schemas.contracts import MAX_RECORD_BYTES

__all__ = [
    "AccessEmitter",
    "EmitterStats",
    "KafkaLogDeduplicator",
    "ThreadedAccessEmitter",
    "kafka_log_filter",
    "quiet_kafka_logs",
]

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
_RECONNECT_BASE_S: Final = 0.5
_RECONNECT_CAP_S: Final = 5.0  # a probe is one TCP connect: cheap, silent
_PROBE_TIMEOUT_S: Final = 1.0
_STALL_S: Final = 1.0
#: How often the sender looks at the buffer while it is idle or a batch is filling
#: (the linger, if shorter, but never less than _MIN_TICK_S: never a busy loop).
_TICK_S: Final = 0.005
_MIN_TICK_S: Final = 0.001
_EVENT_OVERHEAD: Final = 160  # bytes of a queued event beside its strings (tuple, ints, floats)

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
    dropped_unencodable: int = 0
    pending_bytes: int = 0
    outages: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_overflow + self.dropped_send_failed + self.dropped_unencodable


class KafkaLogDeduplicator(logging.Filter):
    """Lets each distinct aiokafka message through once per ``window`` seconds.

    A broker outage makes aiokafka log the same connection errors tens of times
    a second; an application should see that Kafka is down, once, not be
    flooded. Installed on aiokafka's loggers by :func:`quiet_kafka_logs` (the
    emitter does it when it starts); suppressed records are counted.
    """

    def __init__(self, window: float = 60.0) -> None:
        super().__init__()
        self.window = window
        self.suppressed = 0
        self._last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = record.created
        key = (record.name, record.msg)
        last = self._last.get(key)
        if last is not None and now - last < self.window:
            self.suppressed += 1
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        return True


_KAFKA_LOGGERS: Final = (
    "aiokafka",
    "aiokafka.client",
    "aiokafka.cluster",
    "aiokafka.conn",
    "aiokafka.producer.producer",
    "aiokafka.producer.sender",
)
kafka_log_filter: Final = KafkaLogDeduplicator()


def quiet_kafka_logs() -> None:
    """Install :data:`kafka_log_filter` on aiokafka's loggers (idempotent)."""
    for name in _KAFKA_LOGGERS:
        logger = logging.getLogger(name)
        if kafka_log_filter not in logger.filters:
            logger.addFilter(kafka_log_filter)


async def _always() -> bool:
    return True


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
        self._min_batch = settings.emitter_min_batch
        #: How often an idle or filling sender looks at the buffer.
        self._tick = max(_MIN_TICK_S, min(self._linger, _TICK_S))
        #: When the sender first saw the events now waiting (None: nothing waits).
        self._filling_since: float | None = None
        self._buffer: deque[tuple[Any, ...]] = deque()
        self._max_events = settings.emitter_buffer_size
        self._max_bytes = settings.emitter_buffer_bytes
        self._bytes = 0
        self._factory = producer_factory or self._default_producer
        # A probe before each connection attempt (the default producer only: a
        # factory of the caller's own knows its own transport).
        self._probe = self._reachable if producer_factory is None else _always
        self._producer: AIOKafkaProducer | None = None
        self._partitions: list[int] = []
        self._metadata_at = 0.0
        self._partition_of = PartitionCache(1)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # delivery -> (sent at, events), oldest first
        self._in_flight: dict[asyncio.Future[Any], tuple[float, int]] = {}
        self._random = random.Random()
        # Counters (plain ints: emit runs on the cache path).
        self._emitted = 0
        self._sampled_out = 0
        self._sent = 0
        self._batches = 0
        self._dropped_overflow = 0
        self._dropped_send_failed = 0
        self._dropped_unencodable = 0
        self._broken: str | None = None  # why the producer must go (the brokers are gone)
        self._suspect: str | None = None  # a failure that may mean an outage: probe
        self._probed_at = 0.0
        self._handing_off = 0  # events taken from the buffer, not yet handed to the producer
        self._outage_since: float | None = None
        self._outage_dropped = 0
        self._outages = 0
        self._retiring: set[asyncio.Task[None]] = set()

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
        size = _EVENT_OVERHEAD + len(namespace) + len(key)
        if user:
            size += len(user)
        if session:
            size += len(session)
        if tags:
            size += sum(len(t) + 8 for t in tags)
        self._bytes += size
        buffer.append(
            (
                size,
                # When the operation started: events are emitted as operations end (a
                # miss after its GET or its load's claim, a join after its load), but the models
                # learn what follows what, so the stream is ordered by start.
                time.time() - latency_us * 1e-6 if ts is None else ts,
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
        while len(buffer) > self._max_events or self._bytes > self._max_bytes:
            self._bytes -= buffer.popleft()[0]
            self._dropped_overflow += 1

    def stats(self) -> EmitterStats:
        return EmitterStats(
            emitted=self._emitted,
            sampled_out=self._sampled_out,
            sent=self._sent,
            batches=self._batches,
            dropped_overflow=self._dropped_overflow,
            dropped_send_failed=self._dropped_send_failed,
            pending=len(self._buffer) + self._handing_off,
            connected=self._producer is not None and self._broken is None,
            dropped_unencodable=self._dropped_unencodable,
            pending_bytes=self._bytes,
            outages=self._outages,
        )

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background sender. Returns at once, even when Kafka is down."""
        if self._task is None:
            quiet_kafka_logs()
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
            self._bytes = 0

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the buffer is empty and in-flight sends are done."""
        deadline = time.monotonic() + timeout
        while self._buffer or self._in_flight or self._handing_off:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(self._tick)
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
            **kafka_options(self._settings),
        )

    async def _run(self) -> None:
        attempt = 0
        while True:
            if self._broken is not None:
                self._begin_outage(self._broken)
                self._broken = None
                self._retire_producer()
            if self._producer is None:
                if self._stopping and not self._buffer:
                    return
                if not await self._connect():
                    if self._stopping:
                        return
                    attempt += 1
                    cap = min(_RECONNECT_CAP_S, _RECONNECT_BASE_S * 2**attempt)
                    await asyncio.sleep(self._random.uniform(_RECONNECT_BASE_S / 2, cap))
                    continue
                attempt = 0
                self._end_outage()
            if await self._stalled():
                continue
            if self._buffer:
                if await self._filling():
                    continue
                try:
                    await self._send_available()
                except Exception:  # a bug must not end the sender: the cache path keeps emitting
                    log.exception("access emitter: unexpected error while sending; carrying on")
                    await asyncio.sleep(self._tick)
            elif self._stopping:
                await self._wait_in_flight()
                return
            else:
                await asyncio.sleep(self._tick)

    async def _filling(self) -> bool:
        """Whether the waiting events should wait for more (and this waited a tick).

        A drain sends at once when ``emitter_min_batch`` events wait, or when the
        first of them has waited ``emitter_linger_ms``, or when the emitter stops.
        Each record costs the client, the broker and the worker about as much as
        its events (a busy client's batches are full anyway; a client at 500
        events/s would otherwise send 200 records of 2-3 events a second).
        """
        now = time.monotonic()
        if self._filling_since is None:
            self._filling_since = now
        if (
            len(self._buffer) >= self._min_batch
            or self._stopping
            or now - self._filling_since >= self._linger
        ):
            self._filling_since = None
            return False
        await asyncio.sleep(self._tick)
        return True

    async def _stalled(self) -> bool:
        """Whether the producer must go: its brokers stopped accepting connections.

        A failed delivery, or one that has waited over ``_STALL_S`` (with acks=1
        a delivery takes milliseconds), is a suspicion; the brokers are then
        probed (at most once a stall period). Unreachable: the producer is
        retired at once, rather than left to spin (and log) in its retries until
        its request timeout. Reachable (a slow broker, a topic being created):
        the producer carries on.
        """
        if self._broken is not None:
            return True
        if self._stopping:
            return False
        now = time.monotonic()
        suspect = self._suspect
        if suspect is None and self._in_flight:
            oldest = next(iter(self._in_flight.values()))[0]
            if now - oldest >= _STALL_S:
                suspect = f"no delivery for {_STALL_S:g} s"
        if suspect is None or now - self._probed_at < _STALL_S:
            return False
        self._suspect = None
        self._probed_at = now
        if await self._probe():
            return False
        self._broken = suspect
        return True

    def _begin_outage(self, reason: str) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self._outage_dropped = self.stats().dropped
            self._outages += 1
            log.warning(
                "access emitter: Kafka unreachable (%s); dropping events until it is back",
                reason,
            )

    def _end_outage(self) -> None:
        if self._outage_since is None:
            log.info("access emitter connected to %s", self._settings.kafka_bootstrap_servers)
            return
        lasted = time.monotonic() - self._outage_since
        dropped = self.stats().dropped - self._outage_dropped
        self._outage_since = None
        log.warning(
            "access emitter: Kafka is back after %.1f s; %d events were dropped", lasted, dropped
        )

    async def _reachable(self) -> bool:
        """Whether any bootstrap broker accepts a TCP connection (no Kafka client, no log)."""
        for server in self._settings.kafka_brokers():
            host, _, port = server.rpartition(":")
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(host.strip("[]") or "localhost", int(port)),
                    _PROBE_TIMEOUT_S,
                )
            except (OSError, TimeoutError, ValueError):
                continue
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            return True
        return False

    async def _connect(self) -> bool:
        if not await self._probe():
            self._begin_outage("no broker accepts connections")
            return False
        producer = self._factory()
        try:
            await producer.start()
            self._producer = producer
            await self._refresh_partitions(force=True)
            return True
        except Exception as exc:  # any failure here means "Kafka unavailable"
            self._begin_outage(f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 5.0)
            self._producer = None
            return False

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 5.0)

    def _retire_producer(self) -> None:
        """Stop a producer whose broker went away, in the background.

        Its stop waits for its batches to expire; the emitter does not wait with
        it, and cancelling it would leave aiokafka's sender running.
        """
        producer, self._producer = self._producer, None
        # Its deliveries are lost: count them now, whether or not aiokafka ever settles them.
        self._dropped_send_failed += sum(count for _, count in self._in_flight.values())
        self._in_flight.clear()
        if producer is None:
            return
        task = asyncio.get_running_loop().create_task(producer.stop())
        self._retiring.add(task)
        task.add_done_callback(self._retired)

    def _retired(self, task: asyncio.Task[None]) -> None:
        self._retiring.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("access emitter: stopping a broken producer: %r", task.exception())

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
            self._suspect = f"metadata: {type(exc).__name__}"
            return
        groups: dict[int, list[dict[str, Any]]] = {}
        buffer, fields = self._buffer, _FIELDS
        taken = min(len(buffer), self._batch_size * 8)
        self._handing_off += taken
        try:
            for _ in range(taken):
                event = buffer.popleft()
                self._bytes -= event[0]
                groups.setdefault(self._partition(event[2], event[3]), []).append(
                    dict(zip(fields, event[1:], strict=True))
                )
            for partition, events in groups.items():
                for start in range(0, len(events), self._batch_size):
                    batch = events[start : start + self._batch_size]
                    await self._send(partition, batch)
                    self._handing_off -= len(batch)
        finally:
            if self._handing_off:  # an error part way: what was not handed over is lost
                self._dropped_send_failed += self._handing_off
                self._handing_off = 0

    async def _send(self, partition: int, events: list[dict[str, Any]]) -> None:
        while len(self._in_flight) >= _MAX_IN_FLIGHT and not await self._stalled():
            await asyncio.wait(
                list(self._in_flight), timeout=_STALL_S / 4, return_when=asyncio.FIRST_COMPLETED
            )
        producer = self._producer
        if producer is None or self._broken is not None:
            self._dropped_send_failed += len(events)
            return
        try:
            value = orjson.dumps(events)
        except orjson.JSONEncodeError:
            events = self._encodable(events)
            if not events:
                return
            value = orjson.dumps(events)
        try:
            try:
                delivery = await asyncio.wait_for(
                    producer.send(self._topic, value, partition=partition), _STALL_S
                )
            except TimeoutError:
                if not await self._probe():
                    self._broken = f"no broker accepts connections (send waited {_STALL_S:g} s)"
                    raise
                # Reachable: a topic being created, a slow broker. Wait as aiokafka does.
                delivery = await producer.send(self._topic, value, partition=partition)
        except Exception as exc:
            self._dropped_send_failed += len(events)
            if self._broken is None:
                self._suspect = f"send: {type(exc).__name__}"
            return
        count = len(events)
        self._in_flight[delivery] = (time.monotonic(), count)
        delivery.add_done_callback(lambda fut: self._delivered(fut, count))

    def _encodable(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The events of a batch that encode; the others are dropped and counted."""
        kept = []
        for event in events:
            try:
                orjson.dumps(event)
            except orjson.JSONEncodeError:
                self._dropped_unencodable += 1
                continue
            kept.append(event)
        if len(kept) < len(events):
            log.debug("access emitter dropped %d events it cannot encode", len(events) - len(kept))
        return kept

    def _delivered(self, delivery: asyncio.Future[Any], count: int) -> None:
        if not delivery.cancelled():
            delivery.exception()  # retrieved, so asyncio never logs it as unretrieved
        if self._in_flight.pop(delivery, None) is None:
            return  # its producer was retired, and its events counted as dropped then
        if delivery.cancelled() or delivery.exception() is not None:
            self._dropped_send_failed += count
            if not self._stopping and self._broken is None and not delivery.cancelled():
                self._suspect = f"delivery: {type(delivery.exception()).__name__}"
        else:
            self._sent += count
            self._batches += 1

    async def _wait_in_flight(self) -> None:
        if self._in_flight:
            await asyncio.wait(list(self._in_flight))


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

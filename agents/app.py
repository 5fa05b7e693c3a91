"""The Faust application of one worker: settings in, topics declared, nothing decided here.

Topics (names and partition counts from :mod:`pipeline.config`):

=================  =========================  =========================================
topic              key / partitioning         value
=================  =========================  =========================================
access             murmur2(ns:key)            AccessEvent object or array (producers)
access-by-session  user/session/client        AccessEvent arrays, re-batched
warmup             murmur2(ns:key)            WarmupCommand arrays
outcomes           namespace                  WarmupOutcome arrays
stats-deltas       namespace                  WindowStats deltas
metrics            namespace                  MetricsSnapshot objects, one per window
dead-letter        source key                 original bytes, reason in headers
model-state        access partition (compact) model snapshots
=================  =========================  =========================================
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_kafka

from pipeline.config import Settings, cache_root
from pipeline.topics import STATE_MAX_MESSAGE_BYTES, STATE_TOPIC_CONFIG, VIEW_TOPIC_CONFIG
from pipeline.transport import faust_credentials

if TYPE_CHECKING:
    from agents.checkpointing import Checkpointer

__all__ = ["Context", "Topics", "Worker"]


class Worker(faust.Worker):
    """Faust's worker without its start-up spinner.

    The spinner turns for every log record, so Faust lowers the root logger to
    DEBUG for it and never raises it again: every library's debug call then builds
    a record (aiokafka logs several per fetch), which cost a busy worker about 5%
    of its CPU. Here the root logger keeps the level asked for.
    """

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None


class _ConsumerThread(faust_kafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, with fetches that wait for a batch.

    Faust asks aiokafka for ``fetch_max_wait_ms=1500`` and leaves
    ``fetch_min_bytes`` at 1, with no setting for either: the broker then answers
    a fetch as soon as one record is there, and under steady traffic every
    arrival ends a fetch. At 2,000 events/s from four clients, fetches that wait
    for 64 KiB or 25 ms took the worker from 24-26 s of CPU per demo to 20 s, and
    the broker from 19 s to 16-17 s (docs/DESIGN.md).
    """

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        settings = cast("_App", self.app).cachecast_settings
        # Read by the consumer's start(), which hands them to its fetcher.
        consumer._fetch_min_bytes = settings.worker_fetch_min_bytes
        consumer._fetch_max_wait_ms = settings.worker_fetch_wait_ms
        return consumer


class _Consumer(faust_kafka.Consumer):
    def _new_consumer_thread(self) -> faust_kafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_kafka.Transport):
    Consumer = _Consumer


class _App(faust.App):
    """The Faust app, whose Kafka consumer fetches in batches (see _ConsumerThread)."""

    cachecast_settings: Settings

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


def _faust_app(settings: Settings) -> faust.App:
    app = _App(
        settings.app_id,
        Worker=Worker,
        broker=[f"kafka://{b}" for b in settings.kafka_brokers()],
        broker_credentials=faust_credentials(settings),  # KAFKA_SECURITY_PROTOCOL, SASL, TLS
        store="memory://",
        topic_partitions=settings.topic_partitions,
        topic_allow_declare=True,
        broker_session_timeout=settings.worker_session_timeout_s,
        broker_heartbeat_interval=settings.worker_heartbeat_s,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        producer_compression_type="lz4",
        producer_linger_ms=1,
        producer_max_request_size=STATE_MAX_MESSAGE_BYTES,  # snapshots; batches stay small
        producer_acks=-1,  # acks=all: warmups, outcomes and snapshots are not lost on failover
        stream_wait_empty=False,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        autodiscover=False,
        origin="agents",
        datadir=str(_datadir(settings)),
    )
    app.cachecast_settings = settings
    return app


def _datadir(settings: Settings) -> Path:
    # No Faust tables (state is snapshot-then-ack, see agents.checkpointing); Faust still
    # wants a directory.
    path = cache_root() / "worker" / f"{settings.app_id}-{settings.web_port}"
    path.mkdir(parents=True, exist_ok=True)
    return path


class Topics:
    """Every topic the worker reads or writes; values are raw bytes (we decode)."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        parts = settings.topic_partitions

        def raw(name: str, partitions: int = parts, **kwargs: Any) -> faust.TopicT:
            return app.topic(
                name,
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
                partitions=partitions,
                replicas=settings.topic_replication,
                internal=True,
                **kwargs,
            )

        self.access = raw(settings.topic_access)
        self.sequence = raw(settings.topic_sequence)
        self.warmup = raw(settings.topic_warmup)
        self.outcomes = raw(settings.topic_outcomes)
        self.stats = raw(settings.topic_stats)
        self.metrics = raw(settings.topic_metrics)
        self.dead_letter = raw(settings.topic_dead_letter)
        self.state = raw(settings.topic_state, compacting=True, config=dict(STATE_TOPIC_CONFIG))
        self.stats_view = raw(
            settings.topic_stats_view, compacting=True, config=dict(VIEW_TOPIC_CONFIG)
        )


class Context:
    """What every agent of one worker shares: its settings, Faust app, topics and name.

    Built by :func:`agents.create_app` from the settings it is given; nothing is
    read from the environment here. ``flush`` waits until Kafka has every record
    produced so far (the producer's flush); tests running agents in Faust's test
    context, with no broker, replace it and the topics they send to.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = _faust_app(settings)
        self.topics = Topics(self.app, settings)
        self.name = f"{socket.gethostname()}:{settings.web_port}"
        #: Every checkpointer of this worker, for the monitor view.
        self.checkpointers: list[Checkpointer[Any]] = []
        self.flush: Callable[[], Awaitable[None]] = self._flush_producer

    async def _flush_producer(self) -> None:
        await self.app.producer.flush()

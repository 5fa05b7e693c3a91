"""The stats agent: deltas in, windowed statistics per namespace, MetricsSnapshots out.

The stats-deltas topic is keyed by namespace, so each namespace's entry lives on
one partition and one worker. An entry holds the open window, the totals of all
closed windows, and which window was last published. A window is published to
the metrics topic once it is over: by the next update of the namespace, or by
the timer when the namespace went quiet. Warmup outcomes are turned into deltas
on the same topic, so one agent owns every entry.

Entries are kept per partition by a :class:`~agents.checkpointing.Checkpointer`
(snapshot, then ack; the snapshot records the offset it covers), not in a Faust
table: a table's changelog recovery pauses every stream of the worker, and
after a worker left we saw it wait for a changelog record that never came
(minutes without a processed event). A new owner loads the partition's snapshot
and skips the deltas it covers, so each delta is counted once across a leave.

With the window, the owner also writes the namespace's whole statistics (all
time, and the window just closed) to the compacted stats-view topic, which
every worker follows from its start into :data:`cluster_view`: the monitor of
any worker answers for every namespace of the cluster, its own ones live and
the others as of their last closed window.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaConsumer

from agents.app import app, settings, topics, worker_name
from agents.checkpointing import Checkpointer
from agents.runtime import runtime
from pipeline.stats import WindowStats
from pipeline.transport import kafka_options
from schemas.decode import InvalidEvent, decode_warmup_outcome_dicts

__all__ = [
    "aggregate_deltas",
    "aggregate_outcomes",
    "cluster_view",
    "follow_stats_view",
    "namespace_stats",
    "stats_state",
]

log = logging.getLogger(__name__)

WINDOW = settings.stats_window_s


class StatsPartition:
    """The namespaces of one stats-deltas partition: ns -> entry.

    An entry is ``{"window_start", "current", "total", "published"}``: the open
    window's start and statistics, all closed windows merged, and the start of
    the last window published (so a new owner does not publish it again).
    """

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"entries": self.entries}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        entries = state["entries"]
        if not isinstance(entries, dict):
            raise ValueError("entries must be a mapping")
        loaded: dict[str, dict[str, Any]] = {}
        for namespace, entry in entries.items():
            WindowStats.from_dict(entry["current"])  # validated like a delta
            WindowStats.from_dict(entry["total"])
            loaded[str(namespace)] = {
                "window_start": float(entry["window_start"]),
                "current": dict(entry["current"]),
                "total": dict(entry["total"]),
                "published": float(entry.get("published", -1.0)),
            }
        self.entries = loaded


stats_state: Checkpointer[StatsPartition] = Checkpointer(
    "stats", settings.topic_stats, StatsPartition
)

#: Every namespace of the cluster, from the stats-view topic: ns -> (worker, window
#: start, all-time totals, last closed window).
cluster_view: dict[str, tuple[str, float, WindowStats, WindowStats]] = {}


def window_start(now: float) -> float:
    return math.floor(now / WINDOW) * WINDOW


async def _publish(
    entry: dict[str, Any], namespace: str, current: WindowStats, overall: WindowStats
) -> None:
    """A closed window: its MetricsSnapshot, and the namespace's view for the other workers
    (``overall``: the totals with this window merged in)."""
    start = entry["window_start"]
    if entry.get("published", -1.0) >= start:
        return
    entry["published"] = start
    snapshot = current.snapshot(namespace, start, start + WINDOW, worker=worker_name)
    await topics.metrics.send(key=namespace.encode(), value=snapshot.dumps(), force=True)
    view = {
        "namespace": namespace,
        "worker": worker_name,
        "window_start": start,
        "total": overall.to_dict(),
        "window": current.to_dict(),
    }
    await topics.stats_view.send(key=namespace.encode(), value=orjson.dumps(view), force=True)


async def _close_window(entry: dict[str, Any], namespace: str, now_start: float) -> None:
    """Publish the entry's window if it is over, fold it into the totals, open ``now_start``."""
    if entry["window_start"] >= now_start:
        return
    current = WindowStats.from_dict(entry["current"])
    total = WindowStats.from_dict(entry["total"])
    total.merge(current)
    await _publish(entry, namespace, current, total)
    entry["total"] = total.to_dict()
    entry["current"] = {}
    entry["window_start"] = now_start


async def _update(part: StatsPartition, namespace: str, delta: WindowStats) -> None:
    now_start = window_start(time.time())
    entry = part.entries.get(namespace)
    if entry is None:
        entry = part.entries[namespace] = {
            "window_start": now_start,
            "current": {},
            "total": {},
            "published": -1.0,
        }
    await _close_window(entry, namespace, now_start)
    current = WindowStats.from_dict(entry["current"])
    current.merge(delta)
    entry["current"] = current.to_dict()


@app.agent(topics.stats, name="cachecast.stats-deltas")
async def aggregate_deltas(stream: faust.StreamT[bytes]) -> None:
    """Merge the deltas the observe agent (and the outcome counter) send, keyed by namespace."""
    stats_state.stream = stream
    # Manual acks: records are acked at checkpoints (faust's StreamT omits noack).
    async for event in stream.noack().events():  # type: ignore[attr-defined]
        async with stats_state.lock:
            part = await stats_state.model(event.message.partition)
            if not stats_state.covers(event):
                await _apply(event, part)
            stats_state.processed(event)
            if stats_state.due():
                await stats_state.checkpoint()


async def _apply(event: Any, part: StatsPartition) -> None:
    try:
        doc = orjson.loads(event.value)
        namespace = str(doc["namespace"])
        delta = WindowStats.from_dict(doc["stats"])
    except Exception as exc:  # anything a record can make the decoder raise
        message = event.message
        await runtime.dead_letter(
            event.value or b"",
            f"not a stats delta: {exc!r}"[:1000],
            source=f"{message.topic}/{message.partition}/{message.offset}",
            agent="stats",
        )
        return
    try:
        await _update(part, namespace, delta)
    except Exception as exc:  # a poison record must not stop the agent or its commits
        await runtime.reject(event, "stats", exc)


@app.agent(topics.outcomes, name="cachecast.stats-outcomes")
async def aggregate_outcomes(stream: faust.StreamT[bytes]) -> None:
    """Count warmup outcomes per namespace, as deltas on the stats-deltas topic."""
    async for event in stream.events():
        message = event.message
        source = f"{message.topic}/{message.partition}/{message.offset}"
        try:
            outcomes, rejects = decode_warmup_outcome_dicts(event.value)
        except InvalidEvent as exc:
            await runtime.dead_letter(event.value or b"", exc.reason, source=source, agent="stats")
            continue
        await runtime.dead_letter_rejects(rejects, source=source, agent="stats")
        by_namespace: dict[str, WindowStats] = {}
        for outcome in outcomes:
            by_namespace.setdefault(outcome["namespace"], WindowStats()).add_outcomes([outcome])
        try:  # delivered before the record is acked: outcomes are counted at least once
            for namespace, delta in by_namespace.items():
                delivery = await topics.stats.send(
                    key=namespace.encode(),
                    value=orjson.dumps({"namespace": namespace, "stats": delta.to_dict()}),
                    force=True,
                )
                await delivery
        except Exception as exc:  # Kafka trouble must not stop the agent
            await runtime.reject(event, "stats", exc)


@app.timer(interval=max(0.5, WINDOW / 4), name="cachecast.stats-publish")
async def publish_quiet_windows() -> None:
    """Publish windows that ended while their namespace received nothing; checkpoint on time."""
    now_start = window_start(time.time())
    async with stats_state.lock:
        for part in list(stats_state.models.values()):
            for namespace, entry in list(part.entries.items()):
                await _close_window(entry, namespace, now_start)
        if stats_state.due():
            await stats_state.checkpoint()


@app.task
async def follow_stats_view() -> None:
    """Read the stats-view topic from its start, then follow it, into :data:`cluster_view`."""
    # Without a group, a subscription is every partition, from the start (compacted:
    # about one record per namespace), then what comes.
    consumer = AIOKafkaConsumer(
        settings.topic_stats_view,
        bootstrap_servers=settings.kafka_brokers(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id=f"cachecast-stats-view-{worker_name}",
        **kafka_options(settings),
    )
    await consumer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    _take_view(record.value, f"{record.topic}/{record.partition}/{record.offset}")
    finally:
        await consumer.stop()


def _take_view(value: bytes | None, source: str) -> None:
    try:
        doc = orjson.loads(value or b"null")
        namespace = str(doc["namespace"])
        entry = (
            str(doc["worker"]),
            float(doc["window_start"]),
            WindowStats.from_dict(doc["total"]),
            WindowStats.from_dict(doc["window"]),
        )
    except Exception as exc:  # written by workers, but read like any other input
        runtime.counters["stats_view_rejected"] += 1
        log.warning("stats view %s unusable: %r", source, exc)
        return
    known = cluster_view.get(namespace)
    if known is None or known[1] <= entry[1]:
        cluster_view[namespace] = entry


def namespace_stats(local_only: bool = False) -> dict[str, dict[str, Any]]:
    """Every namespace of the cluster: the open window, closed-window totals, all-time view.

    Namespaces this worker owns come from its entries (live); the others from the
    stats view (as of their last closed window), with the ``worker`` that owns
    them. ``local_only``: this worker's own namespaces (what /metrics exports, so
    that scraping every worker counts each namespace once).
    """
    out: dict[str, dict[str, Any]] = {}
    for part in list(stats_state.models.values()):
        for namespace, entry in list(part.entries.items()):
            current = WindowStats.from_dict(entry["current"])
            total = WindowStats.from_dict(entry["total"])
            total.merge(current)
            start = entry["window_start"]
            out[namespace] = {
                "window": current.snapshot(namespace, start, start + WINDOW, worker_name).asdict(),
                "total": total.snapshot(namespace, 0.0, start + WINDOW, worker_name).asdict(),
                "counters": total,
                "worker": worker_name,
            }
    for namespace, (owner, start, total, window) in list(cluster_view.items()):
        if local_only or namespace in out:
            continue
        out[namespace] = {
            "window": window.snapshot(namespace, start, start + WINDOW, owner).asdict(),
            "total": total.snapshot(namespace, 0.0, start + WINDOW, owner).asdict(),
            "counters": total,
            "worker": owner,
        }
    return out

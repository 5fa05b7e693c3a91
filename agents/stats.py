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
every worker follows from its start into :attr:`Stats.cluster_view`: the monitor of
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

from agents.app import Context
from agents.checkpointing import Checkpointer
from agents.runtime import Runtime, record_source
from pipeline.stats import WindowStats
from pipeline.transport import kafka_options
from schemas.decode import decode_warmup_outcome_dicts

__all__ = ["Stats", "StatsPartition"]

log = logging.getLogger(__name__)


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


class Stats:
    """The stats agents of one worker (deltas, outcomes), its entries and the cluster view."""

    def __init__(self, context: Context, runtime: Runtime) -> None:
        self.runtime = runtime
        settings = self.settings = context.settings
        self.topics = context.topics
        self.name = context.name
        self.window = settings.stats_window_s
        # Windows close on a timer too, with no record: every checkpoint is written.
        self.state: Checkpointer[StatsPartition] = Checkpointer(
            context, "stats", settings.topic_stats, StatsPartition, skip_idle=False
        )
        #: Every namespace of the cluster, from the stats-view topic: ns -> (worker,
        #: window start, all-time totals, last closed window).
        self.cluster_view: dict[str, tuple[str, float, WindowStats, WindowStats]] = {}
        app = context.app
        self.deltas_agent = app.agent(self.topics.stats, name="cachecast.stats-deltas")(
            self.aggregate_deltas
        )
        self.outcomes_agent = app.agent(self.topics.outcomes, name="cachecast.stats-outcomes")(
            self.aggregate_outcomes
        )
        app.timer(interval=max(0.5, self.window / 4), name="cachecast.stats-publish")(
            self.publish_quiet_windows
        )
        app.task(self.follow_stats_view)

    def window_start(self, now: float) -> float:
        return math.floor(now / self.window) * self.window

    async def _publish(
        self, entry: dict[str, Any], namespace: str, current: WindowStats, overall: WindowStats
    ) -> None:
        """A closed window: its MetricsSnapshot, and the namespace's view for the other
        workers (``overall``: the totals with this window merged in)."""
        start = entry["window_start"]
        if entry.get("published", -1.0) >= start:
            return
        entry["published"] = start
        snapshot = current.snapshot(namespace, start, start + self.window, worker=self.name)
        await self.topics.metrics.send(key=namespace.encode(), value=snapshot.dumps(), force=True)
        view = {
            "namespace": namespace,
            "worker": self.name,
            "window_start": start,
            "total": overall.to_dict(),
            "window": current.to_dict(),
        }
        await self.topics.stats_view.send(
            key=namespace.encode(), value=orjson.dumps(view), force=True
        )

    async def _close_window(self, entry: dict[str, Any], namespace: str, now_start: float) -> None:
        """Publish the entry's window if it is over, fold it into the totals, open
        ``now_start``."""
        if entry["window_start"] >= now_start:
            return
        current = WindowStats.from_dict(entry["current"])
        total = WindowStats.from_dict(entry["total"])
        total.merge(current)
        await self._publish(entry, namespace, current, total)
        entry["total"] = total.to_dict()
        entry["current"] = {}
        entry["window_start"] = now_start

    async def _update(self, part: StatsPartition, namespace: str, delta: WindowStats) -> None:
        now_start = self.window_start(time.time())
        entry = part.entries.get(namespace)
        if entry is None:
            entry = part.entries[namespace] = {
                "window_start": now_start,
                "current": {},
                "total": {},
                "published": -1.0,
            }
        await self._close_window(entry, namespace, now_start)
        current = WindowStats.from_dict(entry["current"])
        current.merge(delta)
        entry["current"] = current.to_dict()

    async def aggregate_deltas(self, stream: faust.StreamT[bytes]) -> None:
        """Merge the deltas the observe agent (and the outcome counter) send, keyed by
        namespace."""
        state = self.state
        state.stream = stream
        # Manual acks: records are acked at checkpoints (faust's StreamT omits noack).
        async for event in stream.noack().events():  # type: ignore[attr-defined]
            async with state.lock:
                part = await state.model(event.message.partition)
                if not state.covers(event):
                    await self._apply(event, part)
                state.processed(event)
                if state.due():
                    await state.checkpoint()

    async def _apply(self, event: Any, part: StatsPartition) -> None:
        try:
            doc = orjson.loads(event.value)
            namespace = str(doc["namespace"])
            delta = WindowStats.from_dict(doc["stats"])
        except Exception as exc:  # anything a record can make the decoder raise
            await self.runtime.dead_letter(
                event.value or b"",
                f"not a stats delta: {exc!r}"[:1000],
                source=record_source(event.message),
                agent="stats",
            )
            return
        try:
            await self._update(part, namespace, delta)
        except Exception as exc:  # a poison record must not stop the agent or its commits
            await self.runtime.reject(event, "stats", exc)

    async def aggregate_outcomes(self, stream: faust.StreamT[bytes]) -> None:
        """Count warmup outcomes per namespace, as deltas on the stats-deltas topic."""
        runtime = self.runtime
        async for event in stream.events():
            outcomes = await runtime.decoded(event, decode_warmup_outcome_dicts, "stats")
            by_namespace: dict[str, WindowStats] = {}
            for outcome in outcomes:
                by_namespace.setdefault(outcome["namespace"], WindowStats()).add_outcomes([outcome])
            try:  # delivered before the record is acked: outcomes are counted at least once
                for namespace, delta in by_namespace.items():
                    delivery = await self.topics.stats.send(
                        key=namespace.encode(),
                        value=orjson.dumps({"namespace": namespace, "stats": delta.to_dict()}),
                        force=True,
                    )
                    await delivery
            except Exception as exc:  # Kafka trouble must not stop the agent
                await runtime.reject(event, "stats", exc)

    async def publish_quiet_windows(self) -> None:
        """Publish windows that ended while their namespace received nothing; checkpoint on
        time."""
        now_start = self.window_start(time.time())
        async with self.state.lock:
            for part in list(self.state.models.values()):
                for namespace, entry in list(part.entries.items()):
                    await self._close_window(entry, namespace, now_start)
            if self.state.due():
                await self.state.checkpoint()

    async def follow_stats_view(self) -> None:
        """Read the stats-view topic from its start, then follow it, into
        :attr:`cluster_view`."""
        settings = self.settings
        # Without a group, a subscription is every partition, from the start (compacted:
        # about one record per namespace), then what comes.
        consumer = AIOKafkaConsumer(
            settings.topic_stats_view,
            bootstrap_servers=settings.kafka_brokers(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id=f"cachecast-stats-view-{self.name}",
            **kafka_options(settings),
        )
        await consumer.start()
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                for records in batches.values():
                    for record in records:
                        self.take_view(
                            record.value, f"{record.topic}/{record.partition}/{record.offset}"
                        )
        finally:
            await consumer.stop()

    def take_view(self, value: bytes | None, source: str) -> None:
        """One stats-view record into :attr:`cluster_view` (the newest window wins)."""
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
            self.runtime.counters["stats_view_rejected"] += 1
            log.warning("stats view %s unusable: %r", source, exc)
            return
        known = self.cluster_view.get(namespace)
        if known is None or known[1] <= entry[1]:
            self.cluster_view[namespace] = entry

    def namespace_stats(self, local_only: bool = False) -> dict[str, dict[str, Any]]:
        """Every namespace of the cluster: the open window, closed-window totals, all-time view.

        Namespaces this worker owns come from its entries (live); the others from the
        stats view (as of their last closed window), with the ``worker`` that owns
        them. ``local_only``: this worker's own namespaces (what /metrics exports, so
        that scraping every worker counts each namespace once).
        """
        window, name = self.window, self.name
        out: dict[str, dict[str, Any]] = {}
        for part in list(self.state.models.values()):
            for namespace, entry in list(part.entries.items()):
                current = WindowStats.from_dict(entry["current"])
                total = WindowStats.from_dict(entry["total"])
                total.merge(current)
                start = entry["window_start"]
                out[namespace] = {
                    "window": current.snapshot(namespace, start, start + window, name).asdict(),
                    "total": total.snapshot(namespace, 0.0, start + window, name).asdict(),
                    "counters": total,
                    "worker": name,
                }
        for namespace, (owner, start, total, closed) in list(self.cluster_view.items()):
            if local_only or namespace in out:
                continue
            out[namespace] = {
                "window": closed.snapshot(namespace, start, start + window, owner).asdict(),
                "total": total.snapshot(namespace, 0.0, start + window, owner).asdict(),
                "counters": total,
                "worker": owner,
            }
        return out

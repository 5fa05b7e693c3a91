"""Per-partition model state with snapshot-then-ack checkpoints (see pipeline.checkpoint).

A stateful agent iterates its stream with manual acks. Every record it has
processed is remembered; at a checkpoint the models of every partition are
snapshotted to the state topic, the producer is flushed, and only then are the
remembered records acknowledged (so Faust commits their offsets). Each snapshot
carries the last offset it covers; the new owner of a partition loads it and
skips the redelivered records it covers (:meth:`Checkpointer.covers`): Faust
commits acked offsets up to a second later, and not at all while it stops, so
without the offset a leave would make the next owner learn those records twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Generic, Literal, Protocol, TypeVar

import faust
from faust.types import TP, EventT

from agents.app import Context
from pipeline.checkpoint import (
    SnapshotError,
    decode_snapshot,
    encode_snapshot,
    load_snapshot_blobs,
    snapshot_key,
)
from pipeline.forking import fork_available, fork_child
from pipeline.topics import STATE_MAX_MESSAGE_BYTES
from pipeline.transport import kafka_options

__all__ = ["Checkpointer", "Stateful"]

log = logging.getLogger(__name__)

_SEND_ATTEMPTS = 4
_READ_ATTEMPTS = 4
_SEND_BACKOFF_S = 0.5
#: A snapshot child that takes longer is killed and the checkpoint counts as failed.
_CHILD_TIMEOUT_S = 300.0


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


M = TypeVar("M", bound=Stateful)


class Checkpointer(Generic[M]):
    """Holds one model per partition of ``topic`` for ``stage``; checkpoints them."""

    def __init__(
        self,
        context: Context,
        stage: str,
        topic_name: str,
        factory: Callable[[], M],
        extra_stages: tuple[str, ...] = (),
        *,
        skip_idle: bool = True,
    ) -> None:
        self.context = context
        self.stage = stage
        #: Skip a checkpoint when no record was processed since the last one written
        #: (off for a stage whose models also change on timers).
        self.skip_idle = skip_idle
        self.skipped_idle = 0
        #: Other records of the same partition read in the same pass as the snapshot
        #: (undecoded, in :attr:`extras`; an agent's own side state, such as progress).
        self.extra_stages = extra_stages
        self.extras: dict[tuple[str, int], bytes | None] = {}
        self._loading: dict[int, asyncio.Future[None]] = {}
        self.topic_name = topic_name
        self.factory = factory
        self.models: dict[int, M] = {}
        #: Per partition, the highest offset processed here and the one the restored
        #: snapshot covers: a snapshot records the larger.
        self.offsets: dict[int, int] = {}
        self.covered: dict[int, int] = {}
        self.lock = asyncio.Lock()
        self.stream: faust.StreamT[Any] | None = None
        self._pending: list[EventT[Any]] = []
        self._last = time.monotonic()
        self.snapshots_written = 0
        self.snapshot_bytes = 0
        self.snapshot_seconds = 0.0
        #: How long the last checkpoint held the agent (the fork, or the whole encode).
        self.pause_seconds = 0.0
        self.mode: Literal["fork", "inline"] = (
            "fork" if context.settings.checkpoint_fork and fork_available() else "inline"
        )
        self.snapshot_failures = 0
        self._writing: asyncio.Future[None] | None = None
        #: Records whose snapshot is being written (acked when it is in Kafka).
        self._in_flight = 0
        #: Set at shutdown: no checkpoint starts after the last one is written.
        self._closing = False
        self.restored = 0
        self.rejected = 0
        #: Runs first at every checkpoint, revocations included (predict feeds its
        #: reorder buffers to the models here, so no acked record is left unlearnt).
        self.before_checkpoint: Callable[[], Awaitable[None]] | None = None
        #: Runs after revoked partitions are checkpointed and dropped (their numbers).
        self.after_revoked: Callable[[set[int]], None] | None = None
        self.refused = 0
        self.send_failures = 0
        #: Reads a partition's latest records of the given stages from the state topic
        #: (replaced in tests that run without a broker).
        self.load_blobs: Callable[[tuple[str, ...], int], Awaitable[dict[str, bytes | None]]]
        self.load_blobs = self._load_blobs
        app = context.app
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]
        app.on_before_shutdown.connect(self._finish_write)
        context.checkpointers.append(self)

    def describe(self) -> dict[str, Any]:
        """Snapshot sizes and timings, for the monitor view."""
        return {
            "partitions": sorted(self.models),
            "snapshots_written": self.snapshots_written,
            "last_snapshot_bytes": self.snapshot_bytes,
            "last_checkpoint_s": round(self.snapshot_seconds, 4),
            "last_checkpoint_pause_s": round(self.pause_seconds, 4),
            "snapshot_mode": self.mode,
            "snapshot_failures": self.snapshot_failures,
            "checkpoints_skipped_idle": self.skipped_idle,
            "pending_records": len(self._pending) + self._in_flight,
            "partitions_restored": self.restored,
            "snapshots_rejected": self.rejected,
            "snapshots_too_large": self.refused,
            "snapshot_send_failures": self.send_failures,
        }

    async def model(self, partition: int) -> M:
        """The model of ``partition``, restored from its latest snapshot on first use.

        The restore starts as soon as the partition is assigned (see
        :meth:`_on_assigned`), so the first record rarely waits for it.
        """
        model = self.models.get(partition)
        if model is not None:
            return model
        await asyncio.shield(self._start_restore(partition))
        return self.models[partition]

    def _start_restore(self, partition: int) -> asyncio.Future[None]:
        """The restore of ``partition`` in progress, started now if none is."""
        loading = self._loading.get(partition)
        if loading is None:
            loading = self._loading[partition] = asyncio.ensure_future(self._restore(partition))
        return loading

    async def _restore(self, partition: int) -> None:
        try:
            model, covered = await self._load(partition)
            if partition not in self.models:
                self.models[partition] = model
                self.covered[partition] = covered
        finally:
            # Only this restore's own entry: a cancelled one can finish after a newer one began.
            if self._loading.get(partition) is asyncio.current_task():
                del self._loading[partition]

    async def _load(self, partition: int) -> tuple[M, int]:
        """A fresh model with the partition's snapshot loaded, and the offset it covers."""
        model = self.factory()
        stages = (self.stage, *self.extra_stages)
        for attempt in range(_READ_ATTEMPTS):
            try:
                blobs = await self.load_blobs(stages, partition)
                break
            except Exception as exc:  # Kafka trouble: a fresh model would overwrite the snapshot
                if attempt == _READ_ATTEMPTS - 1:
                    self.rejected += 1
                    log.error(
                        "%s: snapshots of partition %d unreadable after %d attempts (%r);"
                        " starting fresh",
                        self.stage,
                        partition,
                        _READ_ATTEMPTS,
                        exc,
                    )
                    return model, -1
                await asyncio.sleep(_SEND_BACKOFF_S * 2**attempt)
        for stage in self.extra_stages:
            self.extras[(stage, partition)] = blobs[stage]
        blob = blobs[self.stage]
        if blob is None:
            return model, -1
        try:
            state = decode_snapshot(blob)
            covered = int(state["offset"])
            model.load_state_dict(state["state"])
        except SnapshotError as exc:
            self.rejected += 1
            log.error(
                "%s: snapshot of partition %d unusable (%s); starting fresh",
                self.stage,
                partition,
                exc,
            )
            return self.factory(), -1
        except Exception as exc:  # a document that does not fit: start fresh
            self.rejected += 1
            log.error(
                "%s: snapshot of partition %d does not fit this configuration (%s); starting fresh",
                self.stage,
                partition,
                exc,
            )
            return self.factory(), -1
        self.restored += 1
        log.info("%s: restored partition %d from its snapshot", self.stage, partition)
        return model, covered

    async def _load_blobs(self, stages: tuple[str, ...], partition: int) -> dict[str, bytes | None]:
        settings = self.context.settings
        return await load_snapshot_blobs(
            settings.kafka_brokers(),
            settings.topic_state,
            stages,
            partition,
            connection=kafka_options(settings),
        )

    async def _on_assigned(self, sender: Any, assigned: set[TP], **_: Any) -> None:
        """Start restoring newly assigned partitions now, before their first record."""
        for tp in assigned:
            if tp.topic == self.topic_name and tp.partition not in self.models:
                self._start_restore(tp.partition)

    def covers(self, event: EventT[Any]) -> bool:
        """Whether the snapshot this partition was restored from already holds ``event``.

        Call after :meth:`model` for the event's partition. A covered record is
        only :meth:`processed` (acked), never applied again.
        """
        return event.message.offset <= self.covered.get(event.message.partition, -1)

    def processed(self, event: EventT[Any]) -> None:
        """Remember a record whose effects are in the models; it is acked at the checkpoint."""
        self._pending.append(event)
        partition, offset = event.message.partition, event.message.offset
        if offset > self.offsets.get(partition, -1):
            self.offsets[partition] = offset

    def due(self) -> bool:
        """Whether a checkpoint is due: its interval is up and the last one is written."""
        writing = self._writing is not None and not self._writing.done()
        if writing or self._closing:
            return False
        return time.monotonic() - self._last >= self.context.settings.checkpoint_s

    async def checkpoint(self) -> None:
        """Snapshot every model now; write the snapshots and ack the records they cover
        in the background.

        Call with :attr:`lock` held; the lock is needed only until this returns,
        which is when the snapshot is taken: with :attr:`Settings.checkpoint_fork`
        a forked child encodes it (the agent pauses for the fork), otherwise it is
        encoded here. The write that follows waits for Kafka, then acks the
        records the snapshot covers (:meth:`settled` waits for it). A partition
        whose snapshot is larger than the state topic takes, or could not be
        written after retries, keeps its records unacked (they are acked by the
        next checkpoint that writes its snapshot) and says so in the log: its
        state is never silently lost. Once the worker shuts down, no checkpoint
        starts: the records since the last one go to the partition's next owner.
        With :attr:`skip_idle`, a checkpoint with no record processed since the
        last snapshot written is skipped.
        """
        await self.settled()  # one write at a time, in order
        if self._closing:
            return
        if self.skip_idle and not self._pending:
            # Nothing learnt since the last snapshot written (records kept after a failed
            # write are pending too): at the default bounds a fork costs seconds of a core.
            self.skipped_idle += 1
            self._last = time.monotonic()
            return
        if self.before_checkpoint is not None:
            try:
                await self.before_checkpoint()
            except Exception as exc:  # its output did not reach Kafka: ack nothing yet
                log.warning("%s: checkpoint put off (%r); records stay unacked", self.stage, exc)
                self._last = time.monotonic()
                return
        started = time.perf_counter()
        # A copy: a partition restored in the background may join while the write waits.
        partitions = sorted(self.models)
        offsets = {p: max(self.offsets.get(p, -1), self.covered.get(p, -1)) for p in partitions}
        snapshot = self._snapshot(partitions, offsets)
        # No await since the snapshot: the records taken are exactly the ones it holds.
        pending, self._pending = self._pending, []
        self._in_flight = len(pending)
        self.pause_seconds = time.perf_counter() - started
        self._writing = asyncio.ensure_future(self._write(snapshot, partitions, pending, started))

    async def settled(self) -> None:
        """Wait until the last checkpoint's snapshots are written and its records acked."""
        writing = self._writing
        if writing is None:
            return
        try:
            await asyncio.shield(writing)
        except asyncio.CancelledError:
            if not writing.cancelled():
                raise  # this waiter was cancelled, not the write

    async def _finish_write(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        """At shutdown, let a snapshot being written reach Kafka (and its child exit), and
        start no other: the timers that checkpoint run until after this."""
        self._closing = True
        await self.settled()

    def _snapshot(
        self, partitions: list[int], offsets: dict[int, int]
    ) -> Awaitable[list[tuple[int, bytes]]]:
        """Each partition's snapshot blob as the models are now: from a forked child, or
        encoded in-line (no fork on this platform, the setting off, or the fork failed)."""
        models = self.models

        def encode() -> Iterator[tuple[int, bytes]]:
            for partition in partitions:
                state = {"offset": offsets[partition], "state": models[partition].state_dict()}
                yield partition, encode_snapshot(state, stage=self.stage, partition=partition)

        if self.context.settings.checkpoint_fork and fork_available():
            try:
                child = fork_child(encode)
            except Exception as exc:  # out of memory or processes: encode here this time
                log.warning("%s: no fork for the snapshot (%r); encoding in-line", self.stage, exc)
            else:
                self.mode = "fork"
                # A task of its own: the child is collected and reaped whatever the write does.
                return asyncio.ensure_future(child.result(_CHILD_TIMEOUT_S))
        self.mode = "inline"
        done: asyncio.Future[list[tuple[int, bytes]]] = asyncio.get_running_loop().create_future()
        try:
            done.set_result(list(encode()))
        except Exception as exc:  # as from a child: the write below reports it
            done.set_exception(exc)
        return done

    async def _write(
        self,
        snapshot: Awaitable[list[tuple[int, bytes]]],
        partitions: list[int],
        pending: list[EventT[Any]],
        started: float,
    ) -> None:
        """Write the snapshots, wait for Kafka, ack the records of the partitions written.

        Never raises: a record that was not acked goes back to the pending ones (before
        those that arrived meanwhile), for the next checkpoint.
        """
        failed = set(partitions)
        acked: set[int] = set()  # ids of the records acked
        try:
            try:
                failed = await self._send_all(await snapshot, failed)
                await self.context.flush()
            except Exception as exc:  # the child or the encode failed, or Kafka
                self.snapshot_failures += 1
                failed = set(partitions)
                log.error("%s: snapshot not written (%s); records stay unacked", self.stage, exc)
            for event in pending:
                if event.message.partition not in failed:
                    if self.stream is not None:
                        await self.stream.ack(event)
                    acked.add(id(event))
        except Exception:
            log.exception("%s: records could not be acked; kept for later", self.stage)
        finally:  # cancelled too: what was not acked is kept
            self._pending[:0] = [e for e in pending if id(e) not in acked]
            self._in_flight = 0
            self.snapshot_seconds = time.perf_counter() - started
            self._last = time.monotonic()

    async def _send_all(self, blobs: list[tuple[int, bytes]], failed: set[int]) -> set[int]:
        """Send each blob; the partitions of ``failed`` whose snapshot was not written."""
        failed = set(failed)
        for partition, blob in blobs:
            self.snapshot_bytes = len(blob)
            if len(blob) > STATE_MAX_MESSAGE_BYTES - 4096:
                self.refused += 1
                log.error(
                    "%s: snapshot of partition %d is %d bytes, over the state topic's %d;"
                    " not written, its records stay unacked (lower the model bounds)",
                    self.stage,
                    partition,
                    len(blob),
                    STATE_MAX_MESSAGE_BYTES,
                )
                continue
            if await self._send(partition, blob):
                self.snapshots_written += 1
                failed.discard(partition)
        return failed

    async def _send(self, partition: int, blob: bytes) -> bool:
        """Write one snapshot and wait for Kafka, retrying with backoff; False if it failed."""
        for attempt in range(_SEND_ATTEMPTS):
            try:
                delivery = await self.context.topics.state.send(
                    key=snapshot_key(self.stage, partition),
                    value=blob,
                    partition=partition,
                    force=True,
                )
                await delivery
                return True
            except Exception as exc:  # Kafka trouble: try again, then keep the records unacked
                if attempt == _SEND_ATTEMPTS - 1:
                    self.send_failures += 1
                    log.error(
                        "%s: snapshot of partition %d not written after %d attempts (%r);"
                        " its records stay unacked until a checkpoint succeeds",
                        self.stage,
                        partition,
                        _SEND_ATTEMPTS,
                        exc,
                    )
                    return False
                await asyncio.sleep(_SEND_BACKOFF_S * 2**attempt)
        return False

    async def _on_revoked(self, sender: Any, revoked: set[TP], **_: Any) -> None:
        mine = {tp.partition for tp in revoked if tp.topic == self.topic_name}
        if not mine:
            return
        async with self.lock:
            await self.checkpoint()
            await self.settled()
            for partition in mine:
                loading = self._loading.pop(partition, None)
                if loading is not None:
                    loading.cancel()
                for stage in self.extra_stages:
                    self.extras.pop((stage, partition), None)
                self.models.pop(partition, None)
                self.offsets.pop(partition, None)
                self.covered.pop(partition, None)
            # Records a failed checkpoint kept unacked go to the partition's new owner.
            self._pending = [e for e in self._pending if e.message.partition not in mine]
            if self.after_revoked is not None:
                self.after_revoked(mine)

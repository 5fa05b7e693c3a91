"""The observe agent: access records in (key-partitioned), three things out.

Smart TTLs go to one hash per namespace (``{prefix}#ttl:{ns}``), only for keys
with at least one inter-arrival and a TTL that differs from the default by more
than 10%, and at most 200,000 per worker: every record costs Redis memory that
would otherwise hold cached values.

For each record on the access topic:

1. decode and validate; bad records and bad events go to the dead-letter topic;
2. feed the per-key smart-TTL model of this partition (every access of a key
   arrives here, so its inter-arrival statistics are complete) and, every flush,
   publish changed TTLs to Redis where the client reads them;
3. count the events into per-namespace stats deltas (sent every flush, then a
   progress record per partition says up to which offset they count, so the
   next owner of a partition counts each record once: see :meth:`Observe.flush`);
4. re-batch the reads by sequence key (user, else session, else client) onto
   the sequence topic, where the predict agent sees each sequence in order. A
   sequence row keeps only what the models use (ts, namespace, key, op, outcome,
   user, warmed, joined): half the bytes to compress, send and parse again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, defaultdict
from typing import Any

import faust
import orjson
from redis.typing import EncodableT

from agents.app import Context
from agents.checkpointing import Checkpointer
from agents.runtime import Runtime, record_source
from pipeline.checkpoint import decode_snapshot, encode_snapshot, snapshot_key
from pipeline.client.keys import smart_ttl_hash
from pipeline.models import SmartTTL
from pipeline.partitioning import PartitionCache
from pipeline.routing import route
from pipeline.ttl import changed_ttls
from schemas.decode import InvalidEvent, decode_access_dicts

__all__ = ["Observe"]

log = logging.getLogger(__name__)

FLUSH_S = 1.0
_TTL_MEMO = 200_000  # most smart TTLs one worker keeps published
_TTL_TABLE_EXPIRY_S = 86_400
_PROGRESS_STAGE = "stats-progress"


class Observe:
    """The observe agent of one worker, its per-partition state and its flush timer."""

    def __init__(self, context: Context, runtime: Runtime) -> None:
        self.context = context
        self.runtime = runtime
        settings = self.settings = context.settings
        self.topics = context.topics
        self.ttl_models: Checkpointer[SmartTTL] = Checkpointer(
            context,
            "ttl",
            settings.topic_access,
            self._new_ttl_model,
            extra_stages=(_PROGRESS_STAGE,),
        )
        self.ttl_models.before_checkpoint = self._flush_for_checkpoint
        self.ttl_models.after_revoked = self._forget
        self._sequence_partition = PartitionCache(settings.topic_partitions)
        self._deltas = runtime.deltas
        self._touched: dict[int, set[str]] = defaultdict(set)
        self._published_ttl: OrderedDict[str, int] = OrderedDict()
        self._last_flush = time.monotonic()
        #: Per access partition: the last offset the sent stats deltas count (from its
        #: progress record on the state topic), and the last one counted into deltas
        #: not sent yet.
        self._counted: dict[int, int] = {}
        self._unsent_upto: dict[int, int] = {}
        app = context.app
        self.agent = app.agent(self.topics.access, name="cachecast.observe")(self.observe)
        app.timer(interval=FLUSH_S, name="cachecast.observe-flush")(self.flush_when_quiet)

    def _new_ttl_model(self) -> SmartTTL:
        settings = self.settings
        return SmartTTL(
            min_ttl=settings.smart_ttl_min,
            max_ttl=settings.smart_ttl_max,
            default_ttl=min(
                max(settings.redis_default_ttl, settings.smart_ttl_min), settings.smart_ttl_max
            ),
            seed=settings.seed,
            max_keys=settings.model_max_tracked_keys,
        )

    async def observe(self, stream: faust.StreamT[bytes]) -> None:
        """Validate, learn TTLs, count, and re-partition access records."""
        ttl_models = self.ttl_models
        ttl_models.stream = stream
        # Manual acks: records are acked at checkpoints (faust's StreamT omits noack).
        async for event in stream.noack().events():  # type: ignore[attr-defined]
            self.runtime.record_lag("observe", event.message.timestamp)
            async with ttl_models.lock:
                partition = event.message.partition
                model = await ttl_models.model(partition)  # restored first: it may cover this
                if not ttl_models.covers(event):
                    try:
                        await self._process(event, model, self._counted_upto(partition))
                    except Exception as exc:  # a poison record must not stop the agent
                        await self.runtime.reject(event, "observe", exc)
                ttl_models.processed(event)
                if time.monotonic() - self._last_flush >= FLUSH_S:
                    await self.flush()
                if ttl_models.due():
                    await ttl_models.checkpoint()  # flushes first (before_checkpoint)

    def _counted_upto(self, partition: int) -> int:
        """The last offset of ``partition`` whose events the sent stats deltas hold.

        From the partition's progress record, read with its TTL snapshot when this
        worker starts on it (call after ``ttl_models.model(partition)``), so that
        records a previous owner counted but had not acked are not counted again.
        """
        known = self._counted.get(partition)
        if known is None:
            known = -1
            blob = self.ttl_models.extras.get((_PROGRESS_STAGE, partition))
            if blob is not None:
                try:
                    known = int(decode_snapshot(blob)["offset"])
                except Exception as exc:  # unreadable: count from the snapshot on
                    log.error(
                        "stats progress of partition %d unusable (%r); counting again",
                        partition,
                        exc,
                    )
            self._counted[partition] = known
        return known

    async def _process(self, event: Any, model: SmartTTL, counted_upto: int) -> None:
        """One access record. At or below ``counted_upto``, a previous owner of the partition
        already counted, dead-lettered and re-partitioned it: it only teaches the TTL model."""
        runtime, deltas = self.runtime, self._deltas
        message = event.message
        source = record_source(message)
        replayed = message.offset <= counted_upto
        try:
            events, rejects = decode_access_dicts(event.value)
        except InvalidEvent as exc:
            if not replayed:
                await runtime.dead_letter(
                    event.value or b"", exc.reason, source=source, agent="observe"
                )
                deltas["-"].dead_letters += 1
                self._note_counted(message.partition, message.offset)
            return
        if not replayed:
            await runtime.dead_letter_rejects(rejects, source=source, agent="observe")
            if rejects:
                deltas["-"].dead_letters += len(rejects)
            self._note_counted(message.partition, message.offset)
        if not events:
            return
        touched = self._touched[message.partition]
        by_namespace, by_partition = route(events, model, touched, self._sequence_partition)
        if replayed:
            return
        runtime.counters["events"] += len(events)
        for namespace, items in by_namespace.items():
            deltas[namespace].add_access(items)
        origin = str(message.partition).encode()  # lets predict keep a watermark per source
        for partition, items in by_partition.items():
            await self.topics.sequence.send(
                key=origin, value=orjson.dumps(items), partition=partition, force=True
            )

    def _note_counted(self, partition: int, offset: int) -> None:
        if offset > self._unsent_upto.get(partition, -1):
            self._unsent_upto[partition] = offset

    async def flush(self) -> bool:
        """Send the stats deltas, record how far they count, publish the smart TTLs that changed.

        The progress records go once Kafka has the deltas and the re-partitioned
        batches, so the next owner of a partition neither counts nor re-sends a
        record at or below its progress (a crash between the two sends can still
        count one flush twice; batches sent after the last progress record are sent
        again). Deltas Kafka did not take are kept for the next flush, and False
        says so: a checkpoint then waits (see :meth:`_flush_for_checkpoint`).
        """
        self._last_flush = time.monotonic()
        topics = self.topics
        deltas = dict(self._deltas)
        self._deltas.clear()
        upto = dict(self._unsent_upto)
        self._unsent_upto.clear()
        if "-" in deltas:
            self.runtime.counters["dead_letter_events"] += deltas.pop("-").dead_letters
        try:
            deliveries = [
                await topics.stats.send(
                    key=namespace.encode(),
                    value=orjson.dumps({"namespace": namespace, "stats": delta.to_dict()}),
                    force=True,
                )
                for namespace, delta in deltas.items()
            ]
            await asyncio.gather(*deliveries)
        except Exception as exc:  # Kafka trouble: keep them; nothing is acked meanwhile
            log.warning("stats deltas not delivered (%r); kept for the next flush", exc)
            for namespace, delta in deltas.items():
                self._deltas[namespace].merge(delta)
            for partition, offset in upto.items():
                self._note_counted(partition, offset)
            return False
        if upto:
            try:
                await self.context.flush()  # the re-partitioned batches too
                progress = [
                    await topics.state.send(
                        key=snapshot_key(_PROGRESS_STAGE, partition),
                        value=encode_snapshot(
                            {"offset": offset}, stage=_PROGRESS_STAGE, partition=partition
                        ),
                        partition=partition,
                        force=True,
                    )
                    for partition, offset in upto.items()
                ]
                await asyncio.gather(*progress)  # one wait for every partition's record
                self._counted.update(upto)
            except Exception as exc:  # the deltas are in: a next owner may count these again
                log.warning("stats progress not recorded (%r)", exc)
        await self._publish_ttls()
        return True

    async def _flush_for_checkpoint(self) -> None:
        """A checkpoint acks what the deltas count: only once Kafka has them."""
        if not await self.flush():
            raise RuntimeError("stats deltas not delivered")

    def _forget(self, partitions: set[int]) -> None:
        """Revoked partitions: their next owner (maybe this worker again) reloads their
        progress."""
        for partition in partitions:
            self._counted.pop(partition, None)
            self._touched.pop(partition, None)

    async def _publish_ttls(self) -> None:
        touched, published = self._touched, self._published_ttl
        if not self.settings.smart_ttl_publish:
            touched.clear()
            return
        writes: list[tuple[str, int]] = []
        for partition, keys in touched.items():
            model = self.ttl_models.models.get(partition)
            if model is None:
                continue
            writes += changed_ttls(model, keys, published)
            keys.clear()
        dropped: list[str] = []
        while len(published) > _TTL_MEMO:
            dropped.append(published.popitem(last=False)[0])
        if not writes and not dropped:
            return
        prefix = self.settings.redis_key_prefix
        try:
            async with self.runtime.redis.pipeline(transaction=False) as pipe:
                by_namespace: dict[str, dict[EncodableT, EncodableT]] = defaultdict(dict)
                for full, ttl in writes:
                    namespace, _, key = full.partition(":")
                    by_namespace[namespace][key] = ttl
                for namespace, mapping in by_namespace.items():
                    table = smart_ttl_hash(prefix, namespace)
                    pipe.hset(table, mapping=mapping)
                    pipe.expire(table, _TTL_TABLE_EXPIRY_S)  # gone a day after the pipeline stops
                for full in dropped:  # keep each namespace's table bounded, like the models
                    namespace, _, key = full.partition(":")
                    pipe.hdel(smart_ttl_hash(prefix, namespace), key)
                await pipe.execute()
            self.runtime.counters["smart_ttl_published"] += len(writes)
        except Exception as exc:  # Redis down: TTLs are advice, try again next flush
            log.warning("could not publish %d smart TTLs: %s", len(writes), exc)
            for full, _ in writes:
                published.pop(full, None)

    async def flush_when_quiet(self) -> None:
        """Flush and checkpoint on time even when no record arrives."""
        async with self.ttl_models.lock:
            if time.monotonic() - self._last_flush >= FLUSH_S:
                await self.flush()
            if self.ttl_models.due():
                await self.ttl_models.checkpoint()

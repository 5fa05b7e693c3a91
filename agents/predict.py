"""The predict agent: sequenced access events in, warmup commands out.

The sequence topic carries access events re-partitioned by user (or session,
or client); a :class:`~pipeline.reorder.Reorderer` per partition puts the
batches that arrive interleaved from the access partitions back in time order
(holding events at most ``CACHECAST_REORDER_S``). Per partition, a
:class:`~pipeline.models.WarmEngine` learns from every event and raises the keys
it expects soon; :class:`~pipeline.decide.Decider` turns the admitted ones into
WarmupCommands (dedup, smart TTL, deadline), which go to the warmup topic in
batches partitioned like the access topic.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any, Final

import faust
import orjson

from agents.app import Context
from agents.checkpointing import Checkpointer
from agents.runtime import Runtime, record_source
from agents.writer import Writer
from pipeline.client.keys import USER_RULES, rules_stream
from pipeline.client.rulebook import STREAM_FIELD
from pipeline.decide import Decider, engine_config
from pipeline.models import WarmEngine
from pipeline.partitioning import PartitionCache
from pipeline.prefetch import TOMBSTONE_S, RulePlan, RuleSet, encode_updates
from pipeline.reorder import Reorderer
from schemas.decode import InvalidEvent, decode_access_dicts

__all__ = ["PURGE_TOMBSTONE", "Predict"]

log = logging.getLogger(__name__)

#: Rule hashes expire this long after the last publish (gone a day after the pipeline stops).
_RULES_EXPIRY_S: Final = 86_400
#: Rounds of changes kept in a namespace's rule stream: clients read it every round, so a
#: few seconds' worth is enough, and it competes with cached values for Redis memory.
_RULE_STREAM_ENTRIES: Final = 64
#: Delete a tombstone (a deleted rule's empty value) only if its field still holds it:
#: another worker may have published the same trigger since.
PURGE_TOMBSTONE: Final = (
    "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then"
    " return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0"
)
#: Seconds between two checks that the rule hashes (the table new clients load) still exist.
_RESTORE_EVERY_S: Final = 10.0
#: Most rule changes published per partition and round (the rest wait for the next round).
_RULES_PER_ROUND: Final = 20_000
#: Most user rules recomputed per partition and round (~80 µs each, on the event loop; a
#: user's next session is a session gap away, so the rest can wait a round or two).
_USERS_PER_ROUND: Final = 250


class Predict:
    """The predict agent of one worker: engines, reorder buffers, deciders, rules; timers."""

    def __init__(self, context: Context, runtime: Runtime, writer: Writer) -> None:
        self.runtime = runtime
        self.writer = writer
        settings = self.settings = context.settings
        self.topics = context.topics
        self.engines: Checkpointer[WarmEngine] = Checkpointer(
            context, "engine", settings.topic_sequence, lambda: WarmEngine(engine_config(settings))
        )
        self.engines.before_checkpoint = self._drain_reorderers
        self.engines.after_revoked = self._forget
        self.deciders: dict[int, Decider] = {}
        self.reorderers: dict[int, Reorderer] = {}
        self._warmup_partition = PartitionCache(settings.topic_partitions)
        #: The prefetch rules and the user rules this worker has published (bounded per
        #: namespace).
        # Tombstones outlive the rule stream's rounds twice over: a client that lost
        # entries finds the deletions they carried in the table.
        tombstone_s = max(TOMBSTONE_S, 2 * _RULE_STREAM_ENTRIES * settings.rules_interval_s)
        self.rule_set = RuleSet(
            settings.redis_key_prefix, settings.rules_max, tombstone_s=tombstone_s
        )
        self.user_rule_set = RuleSet(settings.redis_key_prefix, settings.rules_max, USER_RULES)
        self._restored_at = 0.0
        app = context.app
        self.agent = app.agent(self.topics.sequence, name="cachecast.predict")(self.predict)
        app.timer(interval=max(0.01, settings.reorder_s), name="cachecast.predict-release")(
            self.release_held_events
        )
        app.timer(interval=settings.rules_interval_s, name="cachecast.predict-rules")(
            self.publish_rules
        )
        app.timer(interval=1.0, name="cachecast.predict-checkpoint")(self.checkpoint_when_quiet)

    def decider(self, partition: int) -> Decider:
        found = self.deciders.get(partition)
        if found is None:
            found = self.deciders[partition] = Decider(
                self.settings,
                model_version=f"engine/p{partition}",
                latency=self.runtime.warm_latency,
            )
        return found

    async def predict(self, stream: faust.StreamT[bytes]) -> None:
        """Learn from each batch in time order; emit the warmup commands it admits."""
        engines, runtime = self.engines, self.runtime
        engines.stream = stream
        # Manual acks: records are acked at checkpoints (faust's StreamT omits noack).
        async for event in stream.noack().events():  # type: ignore[attr-defined]
            message = event.message
            runtime.record_lag("predict", message.timestamp)
            async with engines.lock:
                await engines.model(message.partition)  # restored first: it may cover this
                if engines.covers(event):
                    engines.processed(event)
                    continue
                try:
                    events, rejects = decode_access_dicts(event.value)
                    if rejects:
                        raise InvalidEvent(rejects[0].reason, field=rejects[0].field)
                    due = self.reorderer(message.partition).push(events, source=message.key)
                    await self._decide(message.partition, due)
                except InvalidEvent as exc:
                    await runtime.dead_letter(
                        event.value or b"",
                        f"not a batch of access events: {exc.reason}",
                        source=record_source(message),
                        agent="predict",
                        field=exc.field,
                    )
                except Exception as exc:  # a poison record must not stop the agent
                    await runtime.reject(event, "predict", exc)
                engines.processed(event)
                if engines.due():
                    await engines.checkpoint()

    def reorderer(self, partition: int) -> Reorderer:
        found = self.reorderers.get(partition)
        if found is None:
            found = self.reorderers[partition] = Reorderer(self.settings.reorder_s)
        return found

    async def _decide(self, partition: int, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        engine = await self.engines.model(partition)
        commands = self.decider(partition).decide(engine, events)
        # The labels learnt in this batch: prediction precision and recall per namespace.
        deltas = self.runtime.deltas
        for namespace, (hit, wasted, missed) in engine.drain_outcomes().items():
            delta = deltas[namespace]
            delta.predicted_true += hit
            delta.predicted_false += wasted
            delta.missed_true += missed
        for namespace, by_strategy in engine.drain_strategies().items():
            deltas[namespace].add_strategies(by_strategy)
        if commands:
            await self._send(commands)

    async def _drain_reorderers(self) -> None:
        """Feed what the reorder buffers hold to the models: acked records are all learnt.

        Runs before every checkpoint, the one a revocation triggers included.
        """
        for partition, buffer in list(self.reorderers.items()):
            await self._decide(partition, buffer.drain())

    def _forget(self, partitions: set[int]) -> None:
        """Revoked partitions: their buffers (drained by the checkpoint) and deciders go."""
        for partition in partitions:
            self.reorderers.pop(partition, None)
            self.deciders.pop(partition, None)

    async def _send(self, commands: list[dict[str, Any]]) -> None:
        """Publish commands by key partition; each batch the local writer takes is marked
        claimed."""
        runtime, writer = self.runtime, self.writer
        by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for command in commands:
            full = command["namespace"] + ":" + command["key"]
            by_partition[self._warmup_partition(full)].append(command)
            runtime.deltas[command["namespace"]].warms_issued += 1
        runtime.counters["warms_issued"] += len(commands)
        for partition, items in by_partition.items():
            headers = writer.claimed_headers() if writer.local.claim(items) else None
            await self.topics.warmup.send(
                value=orjson.dumps(items), partition=partition, headers=headers, force=True
            )

    async def release_held_events(self) -> None:
        """Release events that waited out the reorder delay while their stream was quiet."""
        if not any(len(buffer) for buffer in self.reorderers.values()):
            return
        async with self.engines.lock:
            for partition, buffer in list(self.reorderers.items()):
                await self._decide(partition, buffer.release())

    async def publish_rules(self) -> None:
        """Publish the prefetch rules that changed since the last round to Redis."""
        if not (self.settings.rules_publish and self.settings.warming_enabled):
            return
        async with self.engines.lock:
            changes = []
            users = []
            for engine in self.engines.models.values():
                changes.extend(engine.rules.changed(_RULES_PER_ROUND))
                users.extend(engine.user_rules(_USERS_PER_ROUND))
        now = time.time()
        if changes:
            await self._write_rules(self.rule_set.plan(changes, now=now), self.rule_set)
        if users:
            plan = self.user_rule_set.plan_users(users, now=now)
            await self._write_rules(plan, self.user_rule_set)
        await self._restore_lost_rules()

    async def _restore_lost_rules(self) -> None:
        """Put back rule hashes that Redis evicted (``allkeys-lru``) or lost in a restart.

        Only clients that start afterwards read the hashes (running ones hold their
        rules in memory), so this runs every ``_RESTORE_EVERY_S``, not every round.
        """
        now = time.monotonic()
        rule_sets = (self.rule_set, self.user_rule_set)
        tables = [table for rule_set in rule_sets for table in rule_set.hashes()]
        if not tables or now - self._restored_at < _RESTORE_EVERY_S:
            return
        self._restored_at = now
        try:
            async with self.runtime.redis.pipeline(transaction=False) as pipe:
                for table in tables:
                    pipe.exists(table)
                present = await pipe.execute()
        except Exception:  # Redis down: the next round looks again
            return
        lost = [table for table, there in zip(tables, present, strict=True) if not there]
        if lost:
            for rule_set in rule_sets:
                plan = rule_set.restore(lost, now=time.time())
                self.runtime.counters["rules_restored"] += plan.rules_written
                await self._write_rules(plan, rule_set)

    async def _write_rules(self, plan: RulePlan, rule_set: RuleSet) -> None:
        """Carry out ``rule_set``'s plan (nothing when it is empty)."""
        if not len(plan):
            return
        counters = self.runtime.counters
        try:
            async with self.runtime.redis.pipeline(transaction=False) as pipe:
                for table, fields in plan.writes.items():
                    pipe.hset(table, mapping=fields)
                for table, keys in plan.deletes.items():
                    pipe.hdel(table, *keys)
                for table, tombstones in plan.purges.items():
                    for key, tombstone in tombstones.items():
                        pipe.eval(PURGE_TOMBSTONE, 1, table, key, tombstone)
                for table in plan.hashes:
                    pipe.expire(table, _RULES_EXPIRY_S)
                for namespace, updates in plan.updates.items():
                    stream = rules_stream(self.settings.redis_key_prefix, namespace)
                    pipe.xadd(
                        stream,
                        {STREAM_FIELD: encode_updates(updates)},
                        maxlen=_RULE_STREAM_ENTRIES,
                        approximate=True,
                    )
                    pipe.expire(stream, _RULES_EXPIRY_S)
                await pipe.execute()
        except Exception as exc:  # Redis down: rules are advice; republish what changes next
            counters["rules_publish_errors"] += 1
            log.warning("could not publish %d rule changes: %s", len(plan), exc)
            rule_set.forget()
            return
        counters["rules_written"] += plan.rules_written
        counters["rules_deleted"] += plan.deleted

    async def checkpoint_when_quiet(self) -> None:
        async with self.engines.lock:
            if self.engines.due() and self.engines.models:
                await self.engines.checkpoint()

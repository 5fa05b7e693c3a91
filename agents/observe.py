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
3. count the events into per-namespace stats deltas (sent every flush);
4. re-batch the reads by sequence key (session, else user, else client) onto
   the sequence topic, where the predict agent sees each sequence in order. A
   sequence row keeps only what the models use (ts, namespace, key, op, outcome,
   user, warmed): half the bytes to compress, send and parse again.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, defaultdict
from typing import Any

import faust
import orjson
from redis.typing import EncodableT

from agents.app import app, settings, topics
from agents.checkpointing import Checkpointer
from agents.runtime import runtime
from pipeline.client.keys import smart_ttl_hash
from pipeline.models import SmartTTL
from pipeline.partitioning import PartitionCache
from pipeline.routing import changed_ttls, route
from schemas.decode import InvalidEvent, decode_access_dicts

__all__ = ["observe"]

log = logging.getLogger(__name__)

FLUSH_S = 1.0
_TTL_CHANGE = 0.1  # republish a smart TTL when it moved by more than 10%
_TTL_MEMO = 200_000  # most smart TTLs one worker keeps published
_TTL_TABLE_EXPIRY_S = 86_400


def _new_ttl_model() -> SmartTTL:
    return SmartTTL(
        min_ttl=settings.smart_ttl_min,
        max_ttl=settings.smart_ttl_max,
        default_ttl=min(
            max(settings.redis_default_ttl, settings.smart_ttl_min), settings.smart_ttl_max
        ),
        seed=settings.seed,
        max_keys=settings.model_max_tracked_keys,
    )


ttl_models: Checkpointer[SmartTTL] = Checkpointer("ttl", settings.topic_access, _new_ttl_model)
_sequence_partition = PartitionCache(settings.topic_partitions)
_deltas = runtime.deltas
_touched: dict[int, set[str]] = defaultdict(set)
_published_ttl: OrderedDict[str, int] = OrderedDict()
_last_flush = time.monotonic()


@app.agent(topics.access, name="cachecast.observe")
async def observe(stream: faust.StreamT[bytes]) -> None:
    """Validate, learn TTLs, count, and re-partition access records."""
    ttl_models.stream = stream
    # Manual acks: records are acked at checkpoints (faust's StreamT omits noack).
    async for event in stream.noack().events():  # type: ignore[attr-defined]
        runtime.record_lag("observe", event.message.timestamp)
        async with ttl_models.lock:
            try:
                await _process(event)
            except Exception as exc:  # a poison record must not stop the agent or its commits
                await runtime.reject(event, "observe", exc)
            ttl_models.processed(event)
            if time.monotonic() - _last_flush >= FLUSH_S:
                await _flush()
            if ttl_models.due():
                await _flush()
                await ttl_models.checkpoint()


async def _process(event: Any) -> None:
    message = event.message
    source = f"{message.topic}/{message.partition}/{message.offset}"
    try:
        events, rejects = decode_access_dicts(event.value)
    except InvalidEvent as exc:
        await runtime.dead_letter(event.value or b"", exc.reason, source=source, agent="observe")
        _deltas["-"].dead_letters += 1
        return
    for reject in rejects:
        await runtime.dead_letter(
            reject.raw,
            reject.reason,
            source=source,
            agent="observe",
            field=reject.field,
            index=reject.index,
        )
    if rejects:
        _deltas["-"].dead_letters += len(rejects)
    if not events:
        return
    runtime.counters["events"] += len(events)
    model = await ttl_models.model(message.partition)
    touched = _touched[message.partition]
    by_namespace, by_partition = route(events, model, touched, _sequence_partition)
    for namespace, items in by_namespace.items():
        _deltas[namespace].add_access(items)
    origin = str(message.partition).encode()  # lets predict keep a watermark per source
    for partition, items in by_partition.items():
        await topics.sequence.send(
            key=origin, value=orjson.dumps(items), partition=partition, force=True
        )


async def _flush() -> None:
    """Send the stats deltas and publish the smart TTLs that changed."""
    global _last_flush
    _last_flush = time.monotonic()
    deltas = dict(_deltas)
    _deltas.clear()
    for namespace, delta in deltas.items():
        if namespace == "-":
            continue
        await topics.stats.send(
            key=namespace.encode(),
            value=orjson.dumps({"namespace": namespace, "stats": delta.to_dict()}),
            force=True,
        )
    if "-" in deltas:
        runtime.counters["dead_letter_events"] += deltas["-"].dead_letters
    await _publish_ttls()


async def _publish_ttls() -> None:
    if not settings.smart_ttl_publish:
        _touched.clear()
        return
    writes: list[tuple[str, int]] = []
    for partition, keys in _touched.items():
        model = ttl_models.models.get(partition)
        if model is None:
            continue
        writes += changed_ttls(model, keys, _published_ttl, _TTL_CHANGE)
        keys.clear()
    dropped: list[str] = []
    while len(_published_ttl) > _TTL_MEMO:
        dropped.append(_published_ttl.popitem(last=False)[0])
    if not writes and not dropped:
        return
    prefix = settings.redis_key_prefix
    try:
        async with runtime.redis.pipeline(transaction=False) as pipe:
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
        runtime.counters["smart_ttl_published"] += len(writes)
    except Exception as exc:  # Redis down: TTLs are advice, try again next flush
        log.warning("could not publish %d smart TTLs: %s", len(writes), exc)
        for full, _ in writes:
            _published_ttl.pop(full, None)


@app.timer(interval=FLUSH_S, name="cachecast.observe-flush")
async def flush_when_quiet() -> None:
    """Flush and checkpoint on time even when no record arrives."""
    async with ttl_models.lock:
        if time.monotonic() - _last_flush >= FLUSH_S:
            await _flush()
        if ttl_models.due():
            await ttl_models.checkpoint()

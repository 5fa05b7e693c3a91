"""The predict agent: sequenced access events in, warmup commands out.

The sequence topic carries access events re-partitioned by session (or user,
or client), so one partition sees each sequence in order. Per partition, a
:class:`~pipeline.models.WarmEngine` learns from every event and raises the keys
it expects soon; :class:`~pipeline.decide.Decider` turns the admitted ones into
WarmupCommands (dedup, smart TTL, deadline), which go to the warmup topic in
batches partitioned like the access topic.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import faust
import orjson

from agents.app import app, settings, topics
from agents.checkpointing import Checkpointer
from agents.runtime import runtime
from pipeline.decide import Decider, engine_config
from pipeline.models import WarmEngine
from pipeline.partitioning import PartitionCache

__all__ = ["engines", "predict"]

engines: Checkpointer[WarmEngine] = Checkpointer(
    "engine", settings.topic_sequence, lambda: WarmEngine(engine_config(settings))
)
_deciders: dict[int, Decider] = {}
_warmup_partition = PartitionCache(settings.topic_partitions)


def decider(partition: int) -> Decider:
    found = _deciders.get(partition)
    if found is None:
        found = _deciders[partition] = Decider(settings, model_version=f"engine/p{partition}")
    return found


@app.agent(topics.sequence, name="cachecast.predict")
async def predict(stream: faust.StreamT[bytes]) -> None:
    """Learn from each batch in order; emit the warmup commands it admits."""
    engines.stream = stream
    async for event in stream.noack().events():
        runtime.record_lag("predict", event.message.timestamp)
        async with engines.lock:
            partition = event.message.partition
            engine = await engines.model(partition)
            try:
                events: list[dict[str, Any]] = orjson.loads(event.value)
                commands = decider(partition).decide(engine, events)
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                message = event.message
                await runtime.dead_letter(
                    event.value or b"",
                    f"not a batch of validated access events: {exc!r}",
                    source=f"{message.topic}/{message.partition}/{message.offset}",
                    agent="predict",
                )
                engines.processed(event)
                continue
            engines.processed(event)
            if commands:
                await _send(commands)
            if engines.due():
                await engines.checkpoint()


async def _send(commands: list[dict[str, Any]]) -> None:
    by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for command in commands:
        by_partition[_warmup_partition(command["namespace"] + ":" + command["key"])].append(command)
        runtime.deltas[command["namespace"]].warms_issued += 1
    runtime.counters["warms_issued"] += len(commands)
    for partition, items in by_partition.items():
        await topics.warmup.send(value=orjson.dumps(items), partition=partition, force=True)


@app.timer(interval=1.0, name="cachecast.predict-checkpoint")
async def checkpoint_when_quiet() -> None:
    async with engines.lock:
        if engines.due() and engines.models:
            await engines.checkpoint()

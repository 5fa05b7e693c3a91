"""The Redis writer agent: warmup commands in, Redis writes and WarmupOutcomes out."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import faust

from agents.app import app, topics
from agents.runtime import encode_batch, runtime
from schemas.decode import InvalidEvent, decode_warmup_command_dicts

__all__ = ["write_warmups"]

#: Batches carried out at once: a slow origin for one batch must not hold up the next
#: (every write is idempotent, so order across batches does not matter).
WRITER_CONCURRENCY = 4


@app.agent(topics.warmup, name="cachecast.writer", concurrency=WRITER_CONCURRENCY)
async def write_warmups(stream: faust.StreamT[bytes]) -> None:
    """Carry out each batch of commands; publish one outcome per command, by namespace."""
    async for event in stream.events():
        message = event.message
        runtime.record_lag("writer", message.timestamp)
        source = f"{message.topic}/{message.partition}/{message.offset}"
        try:
            commands, rejects = decode_warmup_command_dicts(event.value)
        except InvalidEvent as exc:
            await runtime.dead_letter(event.value, exc.reason, source=source, agent="writer")
            continue
        for reject in rejects:
            await runtime.dead_letter(
                reject.raw,
                reject.reason,
                source=source,
                agent="writer",
                field=reject.field,
                index=reject.index,
            )
        if not commands:
            continue
        outcomes = await runtime.writer.apply(commands)
        by_namespace: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for outcome in outcomes:
            runtime.counters[f"warm_{outcome['status']}"] += 1
            by_namespace[outcome["namespace"]].append(outcome)
        for namespace, items in by_namespace.items():
            await topics.outcomes.send(
                key=namespace.encode(), value=encode_batch(items), force=True
            )

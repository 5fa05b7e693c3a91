"""The Redis writer: warmup commands in, Redis writes and WarmupOutcomes out.

Two ways in, one way out (:meth:`Writer.carry_out`):

* In-process: the predict agent hands each batch it issues to :attr:`Writer.local`
  straight away, with no Kafka round trip, and publishes it on the warmup topic
  with a ``cachecast-claimed`` header naming this worker (the topic stays the
  complete record of what was issued, for any other consumer).
* The writer agent: consumes the warmup topic and carries out every batch that
  is not claimed (commands published by other producers, or by a worker whose
  local writer was busy or is switched off with ``CACHECAST_WARM_LOCAL=0``).

Either way each command gets one WarmupOutcome on the outcomes topic. At most
``WRITER_CONCURRENCY`` batches run at once per way: a slow origin for one batch
must not hold up the next, and every write is idempotent, so order across
batches does not matter. A claimed batch still in flight when its worker dies is
not retried: its commands would be stale by the time anyone could.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import faust

from agents.app import Context
from agents.runtime import Runtime, encode_batch
from pipeline.decide import LIVE_AGE_S
from schemas.decode import decode_warmup_command_dicts

__all__ = ["CLAIMED_HEADER", "LocalWarms", "Writer", "is_claimed"]

log = logging.getLogger(__name__)

WRITER_CONCURRENCY = 4
CLAIMED_HEADER = "cachecast-claimed"


class LocalWarms:
    """Carries out the predict agent's own commands in-process, a bounded number at once."""

    def __init__(
        self,
        carry_out: Callable[[Sequence[Mapping[str, Any]]], Awaitable[Any]],
        counters: Counter[str],
        limit: int,
        enabled: bool,
    ) -> None:
        self._carry_out = carry_out
        self._counters = counters
        self.limit = limit
        self.enabled = enabled
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def claim(self, commands: list[dict[str, Any]]) -> bool:
        """Start carrying out ``commands`` now; False (leave them to the writer agent) if busy."""
        if not self.enabled or len(self._tasks) >= self.limit:
            return False
        task = asyncio.get_running_loop().create_task(self._run(commands))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(self, commands: list[dict[str, Any]]) -> None:
        try:
            await self._carry_out(commands)
        except Exception:  # a bug here must not go unseen, nor kill the predict agent
            self._counters["warm_local_errors"] += 1
            log.exception("local warm of %d commands failed", len(commands))

    async def wait(self) -> None:
        """Let the batches in flight finish (the worker is stopping)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5.0)


def is_claimed(headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]] | None) -> bool:
    """Whether a warmup record was already carried out by the worker that issued it."""
    if not headers:
        return False
    items = headers.items() if isinstance(headers, Mapping) else headers
    return any(name == CLAIMED_HEADER for name, _ in items)


class Writer:
    """The writer agent of one worker, and the in-process way in (:attr:`local`)."""

    def __init__(self, context: Context, runtime: Runtime) -> None:
        self.runtime = runtime
        self.topics = context.topics
        self.name = context.name
        self.local = LocalWarms(
            self.carry_out, runtime.counters, WRITER_CONCURRENCY, context.settings.warm_local
        )
        app = context.app
        self.agent = app.agent(
            self.topics.warmup, name="cachecast.writer", concurrency=WRITER_CONCURRENCY
        )(self.write_warmups)
        app.on_before_shutdown.connect(self._finish_local_warms)

    async def carry_out(self, commands: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Write a batch of validated commands; publish one outcome per command, by namespace.

        The monitor API's ``warmup`` action goes this way too, so operators' warms
        are counted (and measured) like the models'.
        """
        runtime = self.runtime
        outcomes = await runtime.warm_writer.apply(commands)
        by_namespace: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for outcome in outcomes:
            runtime.counters[f"warm_{outcome['status']}"] += 1
            by_namespace[outcome["namespace"]].append(outcome)
            if outcome["status"] == "written" and outcome["latency_us"] < LIVE_AGE_S * 1e6:
                runtime.warm_latency.add(outcome["latency_us"] / 1e6)
        for namespace, items in by_namespace.items():
            await self.topics.outcomes.send(
                key=namespace.encode(), value=encode_batch(items), force=True
            )
        return outcomes

    def claimed_headers(self) -> list[tuple[str, bytes]]:
        """The headers of a warmup batch this worker's local writer carries out itself."""
        return [(CLAIMED_HEADER, self.name.encode())]

    async def write_warmups(self, stream: faust.StreamT[bytes]) -> None:
        """Carry out each unclaimed batch of commands on the warmup topic."""
        runtime = self.runtime
        async for event in stream.events():
            message = event.message
            if is_claimed(message.headers):
                continue
            runtime.record_lag("writer", message.timestamp)
            commands = await runtime.decoded(event, decode_warmup_command_dicts, "writer")
            if commands:
                try:
                    await self.carry_out(commands)
                except Exception as exc:  # a poison record must not stop the agent
                    await runtime.reject(event, "writer", exc)

    async def _finish_local_warms(
        self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any
    ) -> None:
        await self.local.wait()

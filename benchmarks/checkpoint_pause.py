"""How long a checkpoint holds the worker: snapshots encoded in a forked child
against snapshots encoded on the event loop, in one run.

A predict engine is filled from the sessions workload (SYNTHETIC: users in
teams, see ``pipeline.sim.synthetic.session_workload``) until it holds as much
as a busy worker's engine does, then checkpointed with
``CACHECAST_CHECKPOINT_FORK`` on and off, ``--rounds`` times each, through the
worker's own ``Checkpointer`` (the state topic records the blobs instead of
sending them: no broker). Meanwhile the loop keeps learning: a task feeds the
engine batches of 100 events and yields between batches, as the predict agent
does, and another task watches how late its 1 ms sleeps wake up.

Per mode it prints: how long ``checkpoint()`` held the agent (its lock), the
loop's worst stall during the checkpoint, how long until the snapshot was
written and its records acked, the snapshot's size, and the events learnt while
it ran. Target: the worst stall with a fork is at most a tenth of the in-line
one (``TARGET_STALL_RATIO``).

Usage: python benchmarks/checkpoint_pause.py [--events 400000] [--users 12000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from agents.app import Context
from agents.checkpointing import Checkpointer
from pipeline.config import load_settings
from pipeline.decide import engine_config
from pipeline.models.engine import WarmEngine
from pipeline.sim.synthetic import session_workload

TARGET_STALL_RATIO = 0.1
BATCH = 100


class StateTopic:
    """Takes snapshots as the state topic would, and keeps only their sizes."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    async def send(self, **kwargs: Any) -> Any:
        self.sizes.append(len(kwargs["value"]))

        async def delivered() -> None:
            return None

        return delivered()


class Stream:
    async def ack(self, event: Any) -> None:
        return None


async def _nothing() -> None:
    return None


@dataclass
class Round:
    held_s: float
    worst_stall_s: float
    written_s: float
    learnt: int


@dataclass
class Feed:
    keys: list[str]
    users: list[str]
    position: int = 0
    rounds: list[Round] = field(default_factory=list)

    def batch(self) -> tuple[list[str], list[float], list[str]]:
        start = self.position % len(self.keys)
        end = min(start + BATCH, len(self.keys))
        self.position += end - start
        ts = [float(self.position + i) for i in range(end - start)]
        return self.keys[start:end], ts, self.users[start:end]


def _feed(events: int, users: int) -> Feed:
    per_day = 100_000
    trace, _ = session_workload(
        days=max(1, -(-events // per_day)), requests_per_day=per_day, users=users, seed=0
    )
    keys = [f"shop:{k}" for k in trace.keys[:events]]
    assert trace.users is not None
    return Feed(keys, [f"u{u}" for u in trace.users[:events]])


async def _round(checkpointer: Checkpointer[WarmEngine], feed: Feed, engine: WarmEngine) -> Round:
    running = True
    worst = 0.0
    learnt = 0

    async def watch() -> None:
        nonlocal worst
        while running:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - before - 0.001)

    async def learn() -> None:
        nonlocal learnt
        while running:
            keys, ts, users = feed.batch()
            engine.observe_batch(keys, ts, users=users)
            learnt += len(keys)
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(watch()), asyncio.create_task(learn())]
    await asyncio.sleep(0.05)
    worst, learnt = 0.0, 0
    started = time.perf_counter()
    async with checkpointer.lock:
        await checkpointer.checkpoint()
    held = time.perf_counter() - started
    await checkpointer.settled()
    written = time.perf_counter() - started
    running = False
    await asyncio.gather(*tasks)
    return Round(held, worst, written, learnt)


async def _measure(fork: bool, engine: WarmEngine, feed: Feed, rounds: int) -> list[Round]:
    context = Context(load_settings(checkpoint_fork=fork, checkpoint_s=3600.0))
    state = StateTopic()
    context.topics.state = state  # type: ignore[assignment]
    context.flush = _nothing
    checkpointer: Checkpointer[WarmEngine] = Checkpointer(context, "engine", "sequence", WarmEngine)
    checkpointer.models[0] = engine
    checkpointer.stream = Stream()  # type: ignore[assignment]
    results = []
    for _ in range(rounds):
        checkpointer.processed(SimpleNamespace(message=SimpleNamespace(partition=0, offset=1)))  # type: ignore[arg-type]
        results.append(await _round(checkpointer, feed, engine))
    print(
        f"  {'fork' if fork else 'in-line'}: snapshot {state.sizes[-1] / 1e6:.1f} MB,"
        f" mode {checkpointer.mode}"
    )
    return results


def _line(name: str, rounds: list[Round]) -> str:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    return (
        f"{name:8s} held {med([r.held_s for r in rounds]) * 1000:9.1f} ms"
        f"   worst stall {med([r.worst_stall_s for r in rounds]) * 1000:9.1f} ms"
        f"   written in {med([r.written_s for r in rounds]):6.2f} s"
        f"   learnt meanwhile {med([float(r.learnt) for r in rounds]):9,.0f} events"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--users", type=int, default=12_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp())  # Faust's data directory

    feed = _feed(args.events, args.users)
    engine = WarmEngine(engine_config(load_settings()))
    started = time.perf_counter()
    while feed.position < len(feed.keys):
        keys, ts, users = feed.batch()
        engine.observe_batch(keys, ts, users=users)
    print(
        f"engine filled with {len(feed.keys):,} events of {args.users:,} users (SYNTHETIC)"
        f" in {time.perf_counter() - started:.1f} s; medians of {args.rounds} checkpoints:"
    )

    async def both() -> tuple[list[Round], list[Round]]:
        inline = await _measure(False, engine, feed, args.rounds)
        forked = await _measure(True, engine, feed, args.rounds)
        return inline, forked

    inline, forked = asyncio.run(both())
    print(_line("in-line", inline))
    print(_line("fork", forked))
    ratio = statistics.median(r.worst_stall_s for r in forked) / max(
        1e-9, statistics.median(r.worst_stall_s for r in inline)
    )
    verdict = "PASS" if ratio <= TARGET_STALL_RATIO else "FAIL"
    print(f"worst stall fork / in-line: {ratio:.4f} (target <= {TARGET_STALL_RATIO}) {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())

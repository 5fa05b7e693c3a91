"""Two workers share the partitions; a SIGKILLed worker's state comes back from its
checkpoint, so no model or stats state is lost beyond at-least-once redelivery."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

import pytest

from pipeline.client.emitter import AccessEmitter
from pipeline.config import Settings
from pipeline.sim.traces import BUNDLED_TRACE, load_trace
from pipeline.worker import WorkerProcess
from tests.integration.pipeline.conftest import NAMESPACE, StartWorker

EVENTS = 24_000


async def _publish(settings: Settings, keys: list[str], rate: float) -> None:
    emitter = AccessEmitter(settings)
    await emitter.start()
    started = time.perf_counter()
    try:
        for i, key in enumerate(keys):
            emitter.emit(NAMESPACE, key, "get", "miss", latency_us=80)
            if i % 50 == 49:
                ahead = (i + 1) / rate - (time.perf_counter() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        assert await emitter.flush(30)
    finally:
        await emitter.close()
    assert emitter.stats().dropped == 0


def _engine_events(workers: list[WorkerProcess]) -> int:
    total = 0
    for worker in workers:
        if worker.running:
            models: dict[str, Any] = worker.monitor()["models"]
            total += sum(int(m["events"]) for m in models.values())
    return total


def _stats_events(workers: list[WorkerProcess]) -> int:
    best = 0
    for worker in workers:
        if worker.running:
            namespaces = worker.monitor()["namespaces"]
            if NAMESPACE in namespaces:
                best = max(best, int(namespaces[NAMESPACE]["total"]["events"]))
    return best


async def _wait_for(check: Any, at_least: int, timeout: float = 180.0) -> int:
    deadline = time.monotonic() + timeout
    value = 0
    while time.monotonic() < deadline:
        value = check()
        if value >= at_least:
            return int(value)
        await asyncio.sleep(0.5)
    return int(value)


KILLS = 3


@pytest.mark.fault
@pytest.mark.timeout(900)
async def test_a_worker_killed_three_times_loses_no_state_beyond_at_least_once(
    start_worker: StartWorker, settings: Settings
) -> None:
    """The worker holding the engine is SIGKILLed three times during the traffic; each
    time a new worker takes its place. Model and stats state come back from their
    checkpoints: every event is counted, and duplicates stay within what the killed
    worker sent in its last second."""
    workers = [start_worker(), start_worker()]
    for worker in workers:
        worker.wait_ready()
    assert all(w.monitor()["assigned_partitions"] > 0 for w in workers)

    keys = [str(k) for k in load_trace(BUNDLED_TRACE, max_requests=EVENTS).keys.tolist()]
    segment = EVENTS // (KILLS + 1)
    restored = 0
    for kill in range(KILLS):
        sent = (kill + 1) * segment
        await _publish(settings, keys[kill * segment : sent], rate=4_000)
        assert await _wait_for(functools.partial(_engine_events, workers), sent) >= sent
        # Kill the worker that holds the engine (all events share one sequence key).
        holder = next(w for w in workers if w.monitor()["models"])
        await asyncio.sleep(2.5)  # let a checkpoint cover what it has learnt
        holder.kill()
        workers = [w for w in workers if w is not holder] + [start_worker()]
        workers[-1].wait_ready()
    await _publish(settings, keys[KILLS * segment :], rate=4_000)
    engine_events = await _wait_for(lambda: _engine_events(workers), EVENTS)
    stats_events = await _wait_for(lambda: _stats_events(workers), EVENTS)
    restored = sum(w.monitor()["checkpoints"]["engine"]["partitions_restored"] for w in workers)
    print(
        f"after {KILLS} kills: engine learnt {engine_events}, stats counted {stats_events}"
        f" of {EVENTS} events; engine partitions restored {restored}"
    )

    # Everything counted. Snapshots skip what they cover and observe's progress records
    # say what it already sent, so a duplicate can only come from what a killed worker
    # sent in its last second after its last progress record (4,000 events per kill).
    assert EVENTS <= engine_events <= EVENTS + KILLS * 4_000
    assert EVENTS <= stats_events <= EVENTS + KILLS * 4_000
    assert restored >= 1, "the engine's new owner started from the snapshot"

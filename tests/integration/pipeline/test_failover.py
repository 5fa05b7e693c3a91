"""Two workers share the partitions; a SIGKILLed worker's state comes back from its
checkpoint, so no model or stats state is lost beyond at-least-once redelivery."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from pipeline.client.emitter import AccessEmitter
from pipeline.config import Settings
from pipeline.replay import BUNDLED_TRACE, load_trace
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


@pytest.mark.timeout(600)
async def test_a_killed_worker_loses_no_state_beyond_at_least_once(
    start_worker: StartWorker, settings: Settings
) -> None:
    first = start_worker()
    second = start_worker()
    first.wait_ready()
    second.wait_ready()
    assert first.monitor()["assigned_partitions"] > 0
    assert second.monitor()["assigned_partitions"] > 0

    keys = [str(k) for k in load_trace(BUNDLED_TRACE, max_requests=EVENTS).keys.tolist()]
    half = EVENTS // 2
    await _publish(settings, keys[:half], rate=4_000)
    assert await _wait_for(lambda: _engine_events([first, second]), half) >= half

    # Kill the worker that holds the engine (all events share one sequence key).
    holder = first if first.monitor()["models"] else second
    survivor = second if holder is first else first
    await asyncio.sleep(2.5)  # let a checkpoint cover the first half
    holder.kill()
    restarted = start_worker()
    workers = [survivor, restarted]

    await _publish(settings, keys[half:], rate=4_000)
    engine_events = await _wait_for(lambda: _engine_events(workers), EVENTS)
    stats_events = await _wait_for(lambda: _stats_events(workers), EVENTS)

    # At least once: everything counted, and duplicates only from the records that
    # arrived after the killed worker's last checkpoint (at most ~2 s of traffic).
    assert EVENTS <= engine_events <= EVENTS + 8_000
    assert EVENTS <= stats_events <= EVENTS + 8_000
    restored = sum(w.monitor()["checkpoints"]["engine"]["partitions_restored"] for w in workers)
    assert restored >= 1, "the engine's new owner started from the snapshot"

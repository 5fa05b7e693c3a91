"""Workers of the real pipeline, each test on its own topics and consumer group."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from pipeline.config import Settings, load_settings
from pipeline.deadletter import reason_of
from pipeline.devstack import DevStack, free_port
from pipeline.replay import ReplayResult, replay
from pipeline.sim.traces import Trace
from pipeline.worker import WorkerProcess

NAMESPACE = "orders"

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def pipeline_env(devstack: DevStack, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment of one test's pipeline: own app id, topics and keys, fast timings.

    Also applied to this process (monkeypatch), so ``load_settings()`` here sees it.
    """
    tag = uuid.uuid4().hex[:8]
    env = {
        **devstack.env(),
        "CACHECAST_APP_ID": f"it-{tag}",
        "CACHECAST_TOPIC_NAMESPACE": f"it-{tag}",
        "REDIS_KEY_PREFIX": f"it-{tag}:",  # the session's Redis is shared: keys stay apart too
        "CACHECAST_TOPIC_PARTITIONS": "4",
        "CACHECAST_SESSION_TIMEOUT_S": "2",
        "CACHECAST_HEARTBEAT_S": "0.5",
        "CACHECAST_CHECKPOINT_S": "2",
        "CACHECAST_STATS_WINDOW_S": "2",
        "CACHECAST_LOADERS": orjson.dumps(
            {NAMESPACE: {"callable": "pipeline.replay:demo_origin", "rate": 5000}}
        ).decode(),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def settings(pipeline_env: dict[str, str]) -> Settings:
    return load_settings()


@pytest.fixture
def start_worker(pipeline_env: dict[str, str], tmp_path: Path) -> Iterator[StartWorker]:
    """Start ``cachecast worker`` processes; all are stopped when the test ends."""
    started: list[WorkerProcess] = []

    def start(**overrides: str) -> WorkerProcess:
        env = {**os.environ, **pipeline_env, **overrides}
        log = tmp_path / f"worker-{len(started)}.log"
        worker = WorkerProcess(env, log, web_port=free_port())
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()
    # Shown by pytest only when the test failed: what the workers said, to explain it.
    for index, worker in enumerate(started):
        log = worker.log_path
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        notable = [line for line in lines if "[WARNING]" in line or "[ERROR]" in line]
        print(f"--- worker {index}: {len(lines)} log lines, warnings and errors:")
        print("\n".join(notable[-40:]))
        print(f"--- worker {index}: last lines:")
        print("\n".join(lines[-40:]))


async def read_dead_letters(
    settings: Settings, expected: int, *, timeout: float = 120.0, settle: float = 0.0
) -> list[tuple[bytes, str | None]]:
    """The dead-letter topic from its start: (original bytes, reason) of each record.

    Reads until ``expected`` records arrived (or ``timeout``), then ``settle``
    seconds more, so a test can also see that no more than expected arrive.
    """
    consumer = AIOKafkaConsumer(
        settings.topic_dead_letter,
        bootstrap_servers=settings.kafka_brokers(),
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    found: list[tuple[bytes, str | None]] = []

    async def take(timeout_ms: int) -> None:
        batch = await consumer.getmany(timeout_ms=timeout_ms)
        for records in batch.values():
            found.extend((r.value or b"", reason_of(r.headers)) for r in records)

    try:
        async with asyncio.timeout(timeout):
            while len(found) < expected:
                await take(1000)
        if settle:
            await asyncio.sleep(settle)
            await take(1000)
    finally:
        await consumer.stop()
    return found


async def topic_records(settings: Settings, topic: str) -> list[bytes]:
    """Every value on ``topic`` so far, read from the start by a consumer of no group."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_brokers(),
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=2000)
            if not batch:
                return values
            for records in batch.values():
                values.extend(r.value for r in records if r.value is not None)
    finally:
        await consumer.stop()


class Replayed(NamedTuple):
    """A replay through a worker of its own: what the client saw, and the worker's view."""

    result: ReplayResult
    settings: Settings
    monitor: dict[str, Any]
    stopped_at: float


def replay_through_worker(
    start_worker: StartWorker,
    trace: Trace,
    *,
    prefix: str,
    rate: float,
    cache_fraction: float,
    **overrides: str,
) -> Replayed:
    """Replay ``trace`` at ``rate`` through a new worker on topics of its own (one
    partition each), Redis holding ``cache_fraction`` of the keys; stop the worker."""
    tag = f"{prefix}-{uuid.uuid4().hex[:8]}"
    worker = start_worker(
        CACHECAST_APP_ID=tag,
        CACHECAST_TOPIC_NAMESPACE=tag,
        # One partition per topic: one worker, and the lowest latency.
        CACHECAST_TOPIC_PARTITIONS="1",
        # Checkpoints fork and write snapshots; keep them out of the measurement.
        CACHECAST_CHECKPOINT_S="60",
        **overrides,
    )
    settings = load_settings(topic_namespace=tag, topic_partitions=1)
    try:
        result = asyncio.run(
            replay(
                trace,
                settings,
                namespace=NAMESPACE,
                rate=rate,
                cache_values=int(trace.n_unique * cache_fraction),
            )
        )
        monitor = worker.monitor()
    finally:
        stopped_at = time.time()
        worker.stop()
    return Replayed(result, settings, monitor, stopped_at)

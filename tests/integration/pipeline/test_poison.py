"""Poison on the input and state topics: nothing runs, no agent stops, offsets keep moving."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.config import Settings
from tests.forged import eval_pickle, legacy_snapshot
from tests.integration.pipeline.conftest import NAMESPACE, StartWorker, read_dead_letters

PARTITIONS = 4
GOOD_PER_PARTITION = 50


def _good(partition: int, i: int) -> bytes:
    return orjson.dumps(
        {
            "ts": time.time(),
            "namespace": NAMESPACE,
            "key": f"item:{partition}:{i % 7}",
            "op": "get",
            "outcome": "miss",
            "client": "poison-test",
        }
    )


async def _produce(settings: Settings, marker: Path) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_brokers())
    await producer.start()
    try:
        exploit = legacy_snapshot(eval_pickle(f"open({str(marker)!r}, 'w').write('owned')"))
        unknown = b"CCST" + (9).to_bytes(2, "big") + (3).to_bytes(4, "big") + b"\x00" * 8
        for p in range(PARTITIONS):
            await producer.send(settings.topic_state, exploit, key=f"ttl:{p}".encode(), partition=p)
            await producer.send(
                settings.topic_state, unknown, key=f"engine:{p}".encode(), partition=p
            )
        await producer.flush()
        deep = b"[" * 300 + b"1" + b"]" * 300
        for p in range(PARTITIONS):
            await producer.send(settings.topic_access, None, key=b"tombstone", partition=p)
            await producer.send(
                settings.topic_access, b"[" + _good(p, 0) + b"," + deep + b"]", partition=p
            )
            for i in range(1, GOOD_PER_PARTITION):
                await producer.send(settings.topic_access, _good(p, i), partition=p)
        await producer.flush()
    finally:
        await producer.stop()


async def _committed_reaches_end(settings: Settings) -> dict[int, tuple[int, int]]:
    """Per access partition: (committed offset, end offset), once all are committed or 60 s."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_brokers())
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_brokers(), group_id=None)
    await admin.start()
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topic_access, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + 60
        while True:
            offsets = await admin.list_consumer_group_offsets(settings.app_id)
            seen = {
                tp.partition: (offsets[tp].offset if tp in offsets else -1, ends[tp]) for tp in tps
            }
            if all(c >= e for c, e in seen.values()) or time.monotonic() > deadline:
                return seen
            await asyncio.sleep(1)
    finally:
        await consumer.stop()
        await admin.close()


async def test_poison_records_and_forged_snapshots_stop_nothing_and_run_nothing(
    start_worker: StartWorker, settings: Settings, tmp_path: Path
) -> None:
    worker = start_worker()
    marker = tmp_path / "owned"
    await _produce(settings, marker)

    reasons = [
        reason or "" for _, reason in await read_dead_letters(settings, 2 * PARTITIONS, timeout=60)
    ]
    assert sum("null record (a tombstone)" in r for r in reasons) == PARTITIONS
    assert sum("event [1]: expected a JSON object" in r for r in reasons) == PARTITIONS

    good = GOOD_PER_PARTITION * PARTITIONS
    async with asyncio.timeout(60):
        while True:
            doc = worker.monitor()
            if doc["counters"].get("events", 0) >= good:
                break
            await asyncio.sleep(0.5)
    assert doc["counters"]["events"] == good
    committed = await _committed_reaches_end(settings)
    assert all(c >= e for c, e in committed.values()), committed

    assert not marker.exists(), "a forged snapshot ran code"
    checkpoints = worker.monitor()["checkpoints"]
    assert checkpoints["ttl"]["snapshots_rejected"] == PARTITIONS
    assert checkpoints["ttl"]["partitions_restored"] == 0
    assert checkpoints["engine"]["snapshots_rejected"] >= 1
    log = worker.log_path.read_text(errors="replace")
    assert "snapshot is in format 1 (pickle), which is no longer read" in log
    assert "schema version 9 is unknown" in log
    assert "Crashed" not in log
    assert "Restarting dead" not in log

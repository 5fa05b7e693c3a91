"""10k malformed records mixed into valid traffic: every one is dead-lettered with its reason,
every valid event is processed, and no agent restarts."""

from __future__ import annotations

import asyncio
import random
import time

import orjson
from aiokafka import AIOKafkaProducer

from pipeline.config import Settings
from tests.integration.pipeline.conftest import NAMESPACE, StartWorker, read_dead_letters

BAD_RECORDS = 10_000
GOOD_RECORDS = 1_000
EVENTS_PER_GOOD_RECORD = 5


def _malformed(i: int) -> bytes:
    kind = i % 8
    if kind == 0:
        return b"not json at all %d" % i
    if kind == 1:
        return b'{"ts": NaN}'
    if kind == 2:
        return orjson.dumps(
            {"ts": -1, "namespace": NAMESPACE, "key": "k", "op": "get", "outcome": "hit"}
        )
    if kind == 3:
        return orjson.dumps(
            {"ts": 1.7e9, "namespace": NAMESPACE, "key": "k" * 2000, "op": "get", "outcome": "hit"}
        )
    if kind == 4:
        return orjson.dumps([1, 2, 3])  # a batch of three non-objects: three dead letters
    if kind == 5:
        return orjson.dumps("a string")
    if kind == 6:
        return b"[" * 3000
    return orjson.dumps(
        {"ts": 1.7e12, "namespace": NAMESPACE, "key": "k", "op": "get", "outcome": "hit"}
    )


def _expected_dead_letters() -> int:
    return sum(3 if i % 8 == 4 else 1 for i in range(BAD_RECORDS))


async def _produce(settings: Settings) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_brokers(), linger_ms=5)
    await producer.start()
    rng = random.Random(7)
    good_events = 0
    records: list[bytes] = [_malformed(i) for i in range(BAD_RECORDS)]
    for r in range(GOOD_RECORDS):
        batch = [
            {
                "ts": time.time(),
                "namespace": NAMESPACE,
                "key": f"item:{rng.randrange(500)}",
                "op": "get",
                "outcome": "miss",
                "client": "dlq-test",
            }
            for _ in range(EVENTS_PER_GOOD_RECORD)
        ]
        good_events += len(batch)
        records.insert(rng.randrange(len(records) + 1), orjson.dumps(batch))
        del r
    try:
        for value in records:
            await producer.send(settings.topic_access, value)
        await producer.flush()
    finally:
        await producer.stop()
    return good_events


async def test_malformed_records_are_dead_lettered_and_valid_ones_processed(
    start_worker: StartWorker, settings: Settings
) -> None:
    worker = start_worker()
    good_events = await _produce(settings)
    expected = _expected_dead_letters()
    letters = await read_dead_letters(settings, expected)

    assert len(letters) == expected
    reasons = [reason for _, reason in letters]
    assert all(reasons), "every dead letter carries its reason"
    assert sum("not valid JSON" in r for r in reasons if r) == 3 * BAD_RECORDS // 8
    assert sum("ts: -1 is below the minimum 0" in r for r in reasons if r) == BAD_RECORDS // 8
    assert sum("key: is 2000 characters long" in r for r in reasons if r) == BAD_RECORDS // 8
    assert sum("looks like milliseconds" in r for r in reasons if r) == BAD_RECORDS // 8
    originals = {value for value, _ in letters}
    assert b"not json at all 8" in originals  # the original bytes, untouched

    async with asyncio.timeout(60):
        while True:
            doc = worker.monitor()
            if doc["counters"].get("events", 0) >= good_events:
                break
            await asyncio.sleep(0.5)
    assert doc["counters"]["events"] == good_events
    assert doc["counters"]["dead_letters"] == expected
    log = worker.log_path.read_text(errors="replace")
    assert "Crashed" not in log
    assert "Restarting dead" not in log

"""The writer agent on real Kafka and Redis: any producer's warmup commands are carried
out once; commands a worker already carried out itself (claimed) are not repeated."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

import schemas
from pipeline.client.keys import data_key
from pipeline.codec import ValueCodec
from pipeline.config import Settings
from pipeline.replay import synthetic_value
from tests.integration.pipeline.conftest import NAMESPACE, StartWorker


def _command(key: str, **extra: object) -> dict[str, object]:
    now = time.time()
    return {
        "namespace": NAMESPACE,
        "key": key,
        "score": 0.9,
        "reason": "frequency",
        "ttl": 120,
        "deadline": now + 30,
        "issued_at": now,
        "model_version": "external",
        "version": 1,
        **extra,
    }


async def _publish(settings: Settings, batches: list[tuple[list[dict[str, object]], bool]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_brokers())
    await producer.start()
    try:
        for commands, claimed in batches:
            headers = [("cachecast-claimed", b"elsewhere:1")] if claimed else None
            await producer.send_and_wait(
                settings.topic_warmup, orjson.dumps(commands), partition=0, headers=headers
            )
    finally:
        await producer.stop()


async def _outcomes(
    settings: Settings, expected: int, timeout: float = 30.0
) -> list[schemas.WarmupOutcome]:
    consumer = AIOKafkaConsumer(
        settings.topic_outcomes,
        bootstrap_servers=settings.kafka_brokers(),
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    found: list[schemas.WarmupOutcome] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    found.extend(schemas.decode_warmup_outcomes(r.value or b"").records)
            if len(found) >= expected:
                await asyncio.sleep(2.0)  # anything beyond the expected would show up now
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for r in records:
                        found.extend(schemas.decode_warmup_outcomes(r.value or b"").records)
                break
    finally:
        await consumer.stop()
    return found


@pytest.mark.timeout(180)
def test_external_commands_are_written_once_and_claimed_ones_skipped(
    start_worker: StartWorker, settings: Settings
) -> None:
    start_worker()
    r = redis.Redis(host=settings.redis_host, port=settings.redis_port)
    prefix = settings.redis_key_prefix
    mine = [_command(f"ext-{i}") for i in range(20)]
    claimed = [_command(f"claimed-{i}") for i in range(5)]
    asyncio.run(_publish(settings, [(mine[:10], False), (claimed, True), (mine[10:], False)]))

    outcomes = asyncio.run(_outcomes(settings, expected=len(mine)))

    assert sorted(o.key for o in outcomes) == sorted(str(c["key"]) for c in mine)
    assert {o.status for o in outcomes} == {"written"}
    assert all(o.model_version == "external" for o in outcomes)
    codec = ValueCodec()
    for command in mine:
        key = str(command["key"])
        raw = r.get(data_key(prefix, NAMESPACE, key))
        assert isinstance(raw, bytes), key
        decoded = codec.decode(raw)
        assert decoded.value == synthetic_value(NAMESPACE, key)
        assert decoded.origin == "warm"
        assert 0 < r.ttl(data_key(prefix, NAMESPACE, key)) <= 120
    for command in claimed:
        assert r.exists(data_key(prefix, NAMESPACE, str(command["key"]))) == 0

"""The event contract over real Kafka and the value envelope over real Redis."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

import schemas
from pipeline.codec import ValueCodec
from pipeline.devstack import RedisServer


def _event(i: int) -> dict[str, object]:
    return {
        "ts": 1_732_560_000.0 + i / 1000,
        "namespace": "orders",
        "key": f"order:{i % 97}",
        "op": "get",
        "outcome": "hit" if i % 3 else "miss",
        "latency_us": 100 + i % 50,
        "size_bytes": 512,
        "user": f"u{i % 7}",
        "tags": ["eu"],
    }


async def _consume(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        async with asyncio.timeout(30):
            while len(values) < count:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    values.extend(r.value for r in records if r.value is not None)
    finally:
        await consumer.stop()
    return values


async def test_batched_access_events_round_trip_through_kafka(kafka_bootstrap: str) -> None:
    topic = f"roundtrip-{uuid.uuid4().hex[:8]}"
    events = [_event(i) for i in range(2_000)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, compression_type="lz4")
    await producer.start()
    try:
        for start in range(0, len(events), 500):
            await producer.send_and_wait(topic, orjson.dumps(events[start : start + 500]))
        await producer.send_and_wait(topic, b'{"ts": "yesterday"}')
    finally:
        await producer.stop()

    values = await _consume(kafka_bootstrap, topic, 5)
    decoded = [schemas.decode_access(v) for v in values[:4]]
    received = [e for batch in decoded for e in batch.records]
    assert len(values[0]) < 500 * 200  # a batch is one record
    assert [e.key for e in received] == [e["key"] for e in events]
    assert received[6].outcome == "miss"
    assert received[7].latency_us == 107
    assert received[7].user == "u0"
    with pytest.raises(schemas.InvalidEvent, match="ts: expected a number, got a string"):
        schemas.decode_access(values[4])


async def test_compressed_values_round_trip_through_redis(redis_server: RedisServer) -> None:
    codec = ValueCodec(threshold=1024)
    profile = {"id": 42, "history": [{"order": i, "sku": "A-1", "qty": 1} for i in range(300)]}
    encoded = codec.encode(profile, origin="warm")
    assert encoded.compressed
    client = aioredis.Redis(host=redis_server.host, port=redis_server.port)
    try:
        await client.set("cache:users:42", encoded.data, ex=60)
        stored = await client.get("cache:users:42")
        assert stored is not None
        assert await client.strlen("cache:users:42") < encoded.raw_size / 3
        assert isinstance(stored, bytes)
        envelope = codec.decode(stored)
        assert envelope.value == profile
        assert envelope.origin == "warm"
    finally:
        await client.aclose()


@pytest.mark.kcat
@pytest.mark.skipif(shutil.which("kcat") is None, reason="Debian's kcat is not installed")
async def test_an_event_produced_by_kcat_is_decoded(kafka_bootstrap: str) -> None:
    topic = f"kcat-{uuid.uuid4().hex[:8]}"
    line = b'{"ts": 1732560000.5, "namespace": "users", "key": "42", "op": "get", "outcome": "hit"}'
    proc = await asyncio.create_subprocess_exec(
        "kcat",
        "-P",
        "-b",
        kafka_bootstrap,
        "-t",
        topic,
        "-k",
        "users:42",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(line + b"\n"), 30)
    assert proc.returncode == 0, err.decode()
    (value,) = await _consume(kafka_bootstrap, topic, 1)
    event = schemas.decode_access_event(value)
    assert (event.namespace, event.key, event.outcome, event.ts) == (
        "users",
        "42",
        "hit",
        1732560000.5,
    )

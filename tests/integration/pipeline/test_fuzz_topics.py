"""10,000 random byte strings into each input topic of a live worker: no agent crashes, and
every record is processed or dead-lettered, exactly as the decoders say it should be."""

from __future__ import annotations

import random
from collections.abc import Callable

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from pipeline.config import Settings
from pipeline.stats import WindowStats
from schemas.decode import (
    InvalidEvent,
    decode_access_dicts,
    decode_warmup_command_dicts,
    decode_warmup_outcome_dicts,
)
from tests.integration.pipeline.conftest import StartWorker, read_dead_letters

PER_TOPIC = 10_000

pytestmark = [pytest.mark.fault, pytest.mark.timeout(600)]


def _records(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(PER_TOPIC):
        if i % 10 == 0:  # some near-misses: JSON of the wrong shape
            out.append(orjson.dumps(rng.choice([[], {}, [1], {"namespace": 1}, "x", None, 7])))
        else:
            out.append(rng.randbytes(rng.randrange(0, 64)))
    return out


def _batch_letters(decode: object, value: bytes, whole: bool) -> int:
    """Dead letters a batch decoder's agent sends for ``value``."""
    assert callable(decode)
    try:
        _, rejects = decode(value)
    except InvalidEvent:
        return 1
    if whole:  # predict refuses a sequence record with any bad event as a whole
        return 1 if rejects else 0
    return len(rejects)


def _stats_letters(value: bytes) -> int:
    try:
        doc = orjson.loads(value)
        str(doc["namespace"])
        WindowStats.from_dict(doc["stats"])
    except Exception:
        return 1
    return 0


async def test_random_bytes_into_every_input_topic_crash_nothing(
    start_worker: StartWorker, settings: Settings
) -> None:
    worker = start_worker()
    worker.wait_ready()
    plan: dict[str, tuple[list[bytes], Callable[[bytes], int]]] = {
        settings.topic_access: (
            _records(1),
            lambda v: _batch_letters(decode_access_dicts, v, False),
        ),
        settings.topic_sequence: (
            _records(2),
            lambda v: _batch_letters(decode_access_dicts, v, True),
        ),
        settings.topic_warmup: (
            _records(3),
            lambda v: _batch_letters(decode_warmup_command_dicts, v, False),
        ),
        settings.topic_outcomes: (
            _records(4),
            lambda v: _batch_letters(decode_warmup_outcome_dicts, v, False),
        ),
        settings.topic_stats: (_records(5), _stats_letters),
    }
    expected = sum(letters(v) for values, letters in plan.values() for v in values)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_brokers(), linger_ms=5)
    await producer.start()
    try:
        for topic, (values, _) in plan.items():
            for value in values:
                await producer.send(topic, value)
        await producer.flush()
    finally:
        await producer.stop()

    found = len(await read_dead_letters(settings, expected, timeout=300, settle=3.0))
    assert found == expected
    log = worker.log_path.read_text(errors="replace")
    assert "Crashed" not in log
    assert "Restarting dead" not in log
    assert worker.monitor()["counters"].get("poison_records", 0) == 0  # all caught as bad input

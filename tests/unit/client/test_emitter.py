"""The emitter's JSON: every event it sends is a valid AccessEvent, new fields included."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from pipeline.client.emitter import AccessEmitter
from pipeline.config import Settings
from schemas import decode_access


class FakeProducer:
    """Just enough of AIOKafkaProducer: records what is sent."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    async def send(self, topic: str, value: bytes, partition: int) -> asyncio.Future[Any]:
        self.sent.append(value)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_edge_fields_reach_the_wire_and_decode() -> None:
    producer = FakeProducer()
    emitter = AccessEmitter(Settings(), producer_factory=lambda: producer)
    emitter.emit("shop", "a", "get", "hit", 10, 5, ts=1.0)  # an older caller: no new arguments
    emitter.emit("shop", "b", "warm", "none", 900, 512, 60, ts=2.0)
    emitter.emit("shop", "b", "get", "hit", 12, 512, warmed=True, ts=3.0, warm_path="edge")
    emitter.emit("shop", "c", "get", "miss", 40, 0, ts=4.0, joined=True)
    await emitter.start()
    assert await emitter.flush(2.0)
    await emitter.close()
    events = [e for raw in producer.sent for e in orjson.loads(raw)]
    decoded = [e for raw in producer.sent for e in decode_access(raw).records]
    assert len(decoded) == len(events) == 4
    by_key_op = {(e.key, e.op): e for e in decoded}
    assert (by_key_op["a", "get"].warm_path, by_key_op["a", "get"].joined) == (None, False)
    warm = by_key_op["b", "warm"]
    assert (warm.outcome, warm.size_bytes, warm.ttl) == ("none", 512, 60)
    assert (by_key_op["b", "get"].warmed, by_key_op["b", "get"].warm_path) == (True, "edge")
    assert by_key_op["c", "get"].joined is True


async def test_an_event_that_cannot_be_encoded_is_dropped_and_the_rest_still_go() -> None:
    producer = FakeProducer()
    emitter = AccessEmitter(Settings(), producer_factory=lambda: producer)
    emitter.emit("shop", "good-1", "get", "hit", ts=1.0)
    emitter.emit("shop", "bad-\ud800", "get", "hit", ts=2.0)  # a lone surrogate
    emitter.emit("shop", "good-2", "get", "hit", ts=3.0)
    await emitter.start()
    assert await emitter.flush(2.0)
    emitter.emit("shop", "later", "get", "hit", ts=4.0)  # the sender task lives on
    assert await emitter.flush(2.0)
    stats = emitter.stats()
    await emitter.close()
    keys = [e.key for raw in producer.sent for e in decode_access(raw).records]
    assert keys == ["good-1", "good-2", "later"]
    assert (stats.dropped_unencodable, stats.sent, stats.connected) == (1, 3, True)


def test_the_buffer_is_bounded_in_bytes_as_well_as_events() -> None:
    emitter = AccessEmitter(
        Settings(emitter_buffer_size=1_000_000, emitter_buffer_bytes=64 * 1024),
        producer_factory=FakeProducer,
    )
    for i in range(1_000):
        emitter.emit("shop", f"{i}-" + "k" * 500, "get", "miss", user="u" * 200)
    stats = emitter.stats()
    assert stats.pending_bytes <= 64 * 1024
    assert stats.pending < 100  # each event holds ~860 bytes
    assert stats.dropped_overflow == 1_000 - stats.pending


async def test_events_are_stamped_with_when_their_operation_started() -> None:
    """A miss reported after its 20 ms read comes before a hit asked for 10 ms later."""
    producer = FakeProducer()
    emitter = AccessEmitter(Settings(), producer_factory=lambda: producer)
    before = time.time()
    emitter.emit("shop", "hit-asked-later", "get", "hit", 500)
    emitter.emit("shop", "slow-miss", "get", "miss", 20_000)
    await emitter.start()
    assert await emitter.flush(2.0)
    await emitter.close()
    ts = {e["key"]: e["ts"] for raw in producer.sent for e in orjson.loads(raw)}
    assert ts["slow-miss"] < ts["hit-asked-later"]
    assert before - 0.021 < ts["slow-miss"] <= before - 0.019 + 0.05


async def test_a_few_events_wait_for_their_batch_to_fill_and_a_full_batch_goes_at_once() -> None:
    producer = FakeProducer()
    emitter = AccessEmitter(
        Settings(emitter_min_batch=8, emitter_linger_ms=10_000), producer_factory=lambda: producer
    )
    await emitter.start()
    for i in range(3):
        emitter.emit("shop", f"k{i}", "get", "hit", ts=float(i))
    await asyncio.sleep(0.05)  # ten of the sender's looks at the buffer
    assert producer.sent == []  # three events are not worth a record yet
    for i in range(3, 8):
        emitter.emit("shop", f"k{i}", "get", "hit", ts=float(i))
    for _ in range(200):
        if producer.sent:
            break
        await asyncio.sleep(0.005)
    assert [len(orjson.loads(raw)) for raw in producer.sent] == [8]  # one record of all eight
    await emitter.close()


async def test_a_lone_event_goes_once_its_linger_is_up() -> None:
    producer = FakeProducer()
    emitter = AccessEmitter(
        Settings(emitter_min_batch=100, emitter_linger_ms=20), producer_factory=lambda: producer
    )
    await emitter.start()
    emitter.emit("shop", "alone", "get", "miss", ts=1.0)
    assert await emitter.flush(2.0)
    assert [e.key for raw in producer.sent for e in decode_access(raw).records] == ["alone"]
    await emitter.close()


async def test_with_no_linger_an_idle_sender_still_sleeps_between_looks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``emitter_linger_ms=0`` sends at once, but an empty buffer is no reason to spin."""
    pauses: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay: float) -> None:
        pauses.append(delay)
        await real_sleep(delay)

    producer = FakeProducer()
    emitter = AccessEmitter(Settings(emitter_linger_ms=0), producer_factory=lambda: producer)
    await emitter.start()
    monkeypatch.setattr("pipeline.client.emitter.asyncio.sleep", recording_sleep)
    await real_sleep(0.05)
    emitter.emit("shop", "now", "get", "miss", ts=1.0)
    assert await emitter.flush(2.0)
    monkeypatch.undo()
    await emitter.close()
    assert pauses
    assert min(pauses) > 0  # a sleep(0) here would be a busy loop
    assert [e.key for raw in producer.sent for e in decode_access(raw).records] == ["now"]

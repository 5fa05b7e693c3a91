"""The emitter's JSON: every event it sends is a valid AccessEvent, new fields included."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

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

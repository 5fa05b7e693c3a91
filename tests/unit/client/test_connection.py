"""The retry policy of the asyncio client: copies share one gate, which stops retries."""

from __future__ import annotations

import copy

import pytest
from redis.exceptions import ConnectionError

from pipeline.client.connection import GatedRetry, async_retry
from pipeline.config import Settings


async def test_retries_stop_while_the_gate_is_shut_in_every_copy() -> None:
    retry = async_retry(Settings(redis_retry_delay_ms=1, redis_max_retries=3))
    copied = copy.deepcopy(retry)  # what redis-py does for each connection
    assert isinstance(copied, GatedRetry)
    assert copied.gate is retry.gate
    attempts = 0

    async def failing() -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionError("no answer")

    async def on_failure(error: Exception) -> None:
        pass

    with pytest.raises(ConnectionError):
        await copied.call_with_retry(failing, on_failure)
    assert attempts == 4  # the first try and three retries
    attempts = 0
    retry.gate.stopped = lambda: True  # the client's breaker opened
    with pytest.raises(ConnectionError):
        await copied.call_with_retry(failing, on_failure)
    assert attempts == 1
    attempts = 0
    with pytest.raises(ConnectionError):  # a caller's own predicate is kept, and gated
        await copied.call_with_retry(failing, on_failure, lambda error: True)
    assert attempts == 1

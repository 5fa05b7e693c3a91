"""An increment whose reply was lost and which redis-py retries is applied once."""

from __future__ import annotations

import pytest

from pipeline.client import RedisCacheManager
from tests.integration.client.conftest import Backend, MakeCache


@pytest.mark.parametrize("key", ["visits", "{user7}:visits"])
async def test_a_retried_increment_is_applied_once(
    backend: Backend, make_cache: MakeCache, key: str
) -> None:
    cache: RedisCacheManager = make_cache(backend)
    assert await cache.increment("c", key, 5) == 5
    plan = cache.core.increment_plan("c", key, 3)
    commands = next(plan)
    first = await cache._execute(commands)  # the command reached Redis; its reply was lost
    again = await cache._execute(commands)  # redis-py's retry sends the very same EVAL
    assert first == again == [8]
    with pytest.raises(StopIteration) as done:
        plan.send(again)
    assert done.value.value == 8
    assert await cache.increment("c", key, 1) == 9  # a new increment adds as usual

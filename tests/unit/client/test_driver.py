"""The one driver both client twins run their procedures with."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import RedisError

from pipeline.client.driver import Procedure, run, run_blocking


class _Twin:
    """A twin's I/O: commands answered from a dict, one step method."""

    def __init__(self, values: dict[str, bytes], fail: bool = False) -> None:
        self.values = values
        self.fail = fail
        self.sent: list[list[tuple[Any, ...]]] = []

    def execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        self.sent.append(commands)
        if self.fail:
            raise RedisError("down")
        return [self.values.get(command[1]) for command in commands]

    def double(self, n: int) -> int:
        return 2 * n

    def io(self, request: Any) -> Any:
        if type(request) is list:
            return self.execute(request)
        method, args = request
        return method(*args)

    async def aio(self, request: Any) -> Any:
        await asyncio.sleep(0)  # a real suspension, as a socket read would be
        return self.io(request)


def _procedure(twin: _Twin) -> Procedure[tuple[Any, ...]]:
    """Reads two keys, calls a step, and falls back when Redis fails."""
    try:
        first, second = yield [("GET", "a"), ("GET", "b")]
    except RedisError:
        first = second = None
    doubled = yield twin.double, (21,)
    cleaned: bool | None = False
    try:
        yield [("DEL", "a")]
    except RedisError:
        cleaned = None
    else:
        cleaned = True
    return first, second, doubled, cleaned


def test_both_drivers_give_a_procedure_the_same_replies() -> None:
    blocking = _Twin({"a": b"1"})
    asynchronous = _Twin({"a": b"1"})
    expected = (b"1", None, 42, True)
    assert run_blocking(_procedure(blocking), blocking.io) == expected
    assert asyncio.run(run(_procedure(asynchronous), asynchronous.aio)) == expected
    assert blocking.sent == asynchronous.sent == [[("GET", "a"), ("GET", "b")], [("DEL", "a")]]


def test_a_failed_request_is_thrown_into_the_procedure_where_it_waits() -> None:
    twin = _Twin({}, fail=True)
    assert run_blocking(_procedure(twin), twin.io) == (None, None, 42, None)
    assert asyncio.run(run(_procedure(twin), twin.aio)) == (None, None, 42, None)


def test_an_error_the_procedure_does_not_handle_reaches_the_caller_and_closes_it() -> None:
    closed = []

    def plan() -> Procedure[None]:
        try:
            yield [("GET", "a")]
        finally:
            closed.append(True)

    twin = _Twin({}, fail=True)
    with pytest.raises(RedisError, match="down"):
        run_blocking(plan(), twin.io)
    assert closed == [True]
    with pytest.raises(RedisError, match="down"):
        asyncio.run(run(plan(), twin.aio))
    assert closed == [True, True]

"""The read line's reply matching, fed bytes as a socket would deliver them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import AuthenticationError, BusyLoadingError, ResponseError

from pipeline.client.reads import ReadLine, ReadLineLost, _Line
from pipeline.config import Settings


class _Transport(asyncio.Transport):
    """Records what the line writes; abort() reports the loss as the loop would."""

    def __init__(self, line: _Line) -> None:
        super().__init__()
        self.line = line
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def abort(self) -> None:
        self.aborted = True
        self.line.connection_lost(None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


async def _line() -> tuple[_Line, _Transport, ReadLine]:
    owner = ReadLine(Settings())
    line = _Line(owner, asyncio.get_running_loop())
    transport = _Transport(line)
    line.connection_made(transport)
    line.ready = True
    owner._line = line  # as a finished handshake leaves it
    return line, transport, owner


REPLIES = (
    b"$5\r\nhello\r\n"  # a value
    b"$-1\r\n"  # nil
    b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
    b"$0\r\n\r\n"  # an empty value
    b"+OK\r\n"
    b":42\r\n"
    b"$12\r\nline\r\nbreaks\r\n"  # a value holding CRLF
)


async def _outcomes(futures: list[asyncio.Future[Any]]) -> list[Any]:
    return await asyncio.gather(*futures, return_exceptions=True)


def _check(outcomes: list[Any]) -> None:
    assert outcomes[0] == b"hello"
    assert outcomes[1] is None
    assert isinstance(outcomes[2], ResponseError)
    assert str(outcomes[2]).startswith("WRONGTYPE")
    assert outcomes[3] == b""
    assert outcomes[4] == b"OK"
    assert outcomes[5] == 42
    assert outcomes[6] == b"line\r\nbreaks"


async def test_replies_match_their_reads_in_order_however_the_bytes_are_split() -> None:
    for step in (len(REPLIES), 1, 2, 3, 7):
        line, transport, _owner = await _line()
        futures = [line.send(b"x") for _ in range(7)]
        for start in range(0, len(REPLIES), step):
            line.data_received(REPLIES[start : start + step])
        _check(await _outcomes(futures))
        assert not line.buffer
        assert line.waiting_since == 0.0
        assert not transport.aborted


async def test_a_large_value_arriving_in_chunks_is_assembled_once_whole() -> None:
    line, _, _ = await _line()
    value = bytes(range(256)) * 4096  # 1 MiB
    reply = b"$%d\r\n%b\r\n$-1\r\n" % (len(value), value)
    first, second = line.send(b"x"), line.send(b"y")
    for start in range(0, len(reply), 65536):
        line.data_received(reply[start : start + 65536])
        if start + 65536 < len(value):
            assert not first.done()
    assert await first == value
    assert await second is None


async def test_a_read_whose_caller_gave_up_is_skipped_and_the_next_gets_its_reply() -> None:
    line, _, _ = await _line()
    gave_up, waiting = line.send(b"x"), line.send(b"y")
    gave_up.cancel()
    line.data_received(b"$1\r\na\r\n$1\r\nb\r\n")
    assert await waiting == b"b"


async def test_a_lost_connection_fails_every_waiting_read_and_the_line_forgets_it() -> None:
    line, transport, owner = await _line()
    futures = [line.send(b"x") for _ in range(3)]
    line.data_received(b"$1\r\na\r\n")
    transport.abort()
    outcomes = await _outcomes(futures)
    assert outcomes[0] == b"a"
    assert all(isinstance(o, ReadLineLost) for o in outcomes[1:])
    assert owner.losses == 1
    assert not owner.connected


async def test_a_reply_the_line_cannot_match_drops_the_connection() -> None:
    line, transport, _ = await _line()
    line.data_received(b"$1\r\na\r\n")  # nobody asked
    assert transport.aborted
    line, transport, _ = await _line()
    waiting = line.send(b"x")
    line.data_received(b"*1\r\n$1\r\na\r\n")  # GET never answers with an array
    assert transport.aborted
    with pytest.raises(ReadLineLost):
        await waiting


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"-LOADING Redis is loading the dataset in memory\r\n", BusyLoadingError),
        (b"-NOAUTH Authentication required.\r\n", AuthenticationError),
        (b"-ERR unknown command\r\n", ResponseError),
    ],
)
async def test_error_replies_raise_what_the_pool_raises(reply: bytes, error: type) -> None:
    line, _, _ = await _line()
    waiting = line.send(b"x")
    line.data_received(reply)
    with pytest.raises(error):
        await waiting


async def test_a_line_that_cannot_take_a_read_sends_it_to_the_pool() -> None:
    line, _, owner = await _line()
    line.paused = True  # its writes back up
    assert owner.get("k") is None
    line.paused = False
    sent = owner.get("k")
    assert sent is not None
    assert line.pending
    line.data_received(b"$1\r\nv\r\n")
    assert await sent == b"v"
    assert owner.reads == 1

"""The read line's reply matching, fed bytes as a socket would deliver them."""

from __future__ import annotations

import asyncio
import gc
import itertools
from typing import Any

import pytest
from redis.exceptions import NoPermissionError, OutOfMemoryError, ResponseError

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


async def test_each_reply_is_delivered_as_soon_as_its_last_byte_arrives() -> None:
    big = b"v" * 100_000
    stream = b"$5\r\nhello\r\n$-1\r\n$%d\r\n%b\r\n$1\r\nz\r\n+OK\r\n" % (len(big), big)
    ends = [11, 16, 16 + len(b"$100000\r\n") + len(big) + 2, len(stream) - 5, len(stream)]
    # Cut the stream everywhere around each reply's boundaries, in two or three pieces.
    cuts = sorted({c for e in ends for c in range(max(1, e - 9), min(len(stream), e + 9))})
    for first in cuts:
        for second in (None, *[c for c in cuts if c > first][:12]):
            line, _, _ = await _line()
            futures = [line.send(b"x") for _ in ends]
            pieces = [0, first, *([second] if second else []), len(stream)]
            for start, stop in itertools.pairwise(pieces):
                line.data_received(stream[start:stop])
                for future, end in zip(futures, ends, strict=True):
                    assert future.done() == (end <= stop), (first, second, stop, end)
            assert [f.result() for f in futures] == [b"hello", None, big, b"z", b"OK"]


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
        (b"-LOADING Redis is loading the dataset in memory\r\n", ReadLineLost),  # the pool retries
        (b"-OOM command not allowed when used memory > 'maxmemory'\r\n", OutOfMemoryError),
        (b"-NOAUTH Authentication required.\r\n", ReadLineLost),  # so does the pool
        (b"-NOPERM this user has no permissions\r\n", NoPermissionError),
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


class _Server:
    """A TCP server that answers every command with ``reply`` (None: never answers)."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.received = bytearray()
        self.heard = asyncio.Event()  # a command arrived
        self.hung_up = asyncio.Event()  # the client closed its connection

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            self.received += data
            self.heard.set()
            if self.reply is not None:
                writer.write(self.reply * data.count(b"*"))
        self.hung_up.set()
        writer.close()


async def _server(reply: bytes | None) -> tuple[asyncio.Server, int, _Server]:
    fake = _Server(reply)
    server = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], fake


async def test_closing_while_the_line_connects_leaves_no_socket_open() -> None:
    server, port, fake = await _server(None)
    async with server:
        owner = ReadLine(Settings(redis_port=port, redis_socket_timeout=30))
        assert owner.get("k") is None  # starts connecting
        await asyncio.wait_for(fake.heard.wait(), 5)  # the handshake is out, unanswered
        connecting = owner._connecting
        assert connecting is not None
        await owner.close()
        assert connecting.done()
        assert not owner.connected
        await asyncio.wait_for(fake.hung_up.wait(), 5)  # the socket was closed


async def test_a_refused_handshake_backs_off_and_leaves_no_error_unretrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, port, fake = await _server(b"-WRONGPASS invalid username-password pair\r\n")
    async with server:
        owner = ReadLine(Settings(redis_port=port, redis_password="not-the-password"))
        assert owner.get("k") is None
        connecting = owner._connecting
        assert connecting is not None
        await connecting
        assert not owner.connected
        assert owner.get("k") is None  # backing off: no second attempt yet
        assert owner._connecting is None
        gc.collect()
        await asyncio.sleep(0)
        assert "never retrieved" not in caplog.text
        assert "not-the-password" not in caplog.text
        assert "did not connect" in caplog.text
        assert b"CLIENT" in fake.received  # every handshake command was sent

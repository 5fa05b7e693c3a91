"""The asyncio client's read line: one connection that carries its GETs pipelined,
and the claims and writes of its loads (:data:`SCALAR_COMMANDS`, :meth:`ReadLine.send`).

A GET through redis-py's pool takes a connection from the pool, runs the
command under the retry policy, writes it and reads its reply through a stream
reader, then gives the connection back: measured here at about 50 µs of Python
on a 110 µs round trip to a local Redis. The read line writes each GET straight
to one socket and matches the replies, which Redis sends in order, to the
waiting futures from an :class:`asyncio.Protocol`: one future and one write per
read. Many reads share the line at once (they are pipelined, as in Lettuce or
StackExchange.Redis), so it needs no pool.

What it does not change:

* **Failures.** A reply that is an error becomes the same redis-py exception
  the pool would raise. When the connection is lost (Redis restarted, the
  connection watch or the stall watchdog aborted it), every read waiting on it
  fails with :class:`ReadLineLost`, which the client retries once through the
  pool, with the pool's retries, unless its breaker is open: callers see what
  they saw before. The next read connects a new line in the background (with
  backoff) and goes through the pool meanwhile.
* **Deadlines.** The line registers with the pool's
  :class:`~pipeline.client.connection.ConnectionWatch`: it is waiting while any
  read is unanswered, and the watch aborts it when Redis sends nothing for the
  socket timeout, like a pooled connection.
* **Order.** A read sent after a write's reply arrived sees that write, on
  whichever connection the write went.

It serves single servers the client built itself from settings, over TCP or
TLS, with the same credentials, database and client name as the pool. A
cluster, a redis-py client passed in by the application, a line whose writes
back up (Redis reading slower than the client writes), and
``CACHECAST_REDIS_READ_LINE=false`` use the pool.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

from redis._parsers.base import BaseParser
from redis.asyncio.connection import RedisSSLContext
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError

from pipeline.client.connection import ConnectionWatch, socket_unread, tls_options
from pipeline.config import Settings

__all__ = ["ReadLine", "ReadLineLost"]

log = logging.getLogger(__name__)

#: Longest pause between two attempts to connect a lost line.
RECONNECT_MAX_S: Final = 5.0
_FIRST_RETRY_S: Final = 0.05
#: A line that lived this long was fine: losing it is not a reason to back off.
_STABLE_S: Final = 10.0
_CRLF: Final = b"\r\n"


class ReadLineLost(ConnectionError):
    """The read line could not serve this read (its connection was lost while the
    read waited, or Redis answered that it is still loading): retry it on the pool."""


def _reply_error(message: str) -> Exception:
    """The redis-py exception for an error reply: the pool's own parser decides.

    One the pool would retry (Redis loading its data after a restart) becomes
    :class:`ReadLineLost`, so the read is retried on the pool, with its backoff.

    >>> type(_reply_error("WRONGTYPE Operation against a key")).__name__
    'ResponseError'
    >>> type(_reply_error("LOADING Redis is loading the dataset in memory")).__name__
    'ReadLineLost'
    """
    error: Exception = BaseParser.parse_error(message)  # type: ignore[no-untyped-call]
    if isinstance(error, (ConnectionError, TimeoutError, BusyLoadingError)):
        return ReadLineLost(f"Redis answered the read line: {message}")
    return error


#: Commands the line carries in a batch (:meth:`ReadLine.send`): each answers with one
#: value (the line parses no arrays). They are what a load's claim, write and release
#: send, a warm marker's DEL, a smart TTL's HGET, and the GETs that poll a load
#: elsewhere (a read's own GET goes through :meth:`ReadLine.get`).
SCALAR_COMMANDS: Final = frozenset(
    {"GET", "SET", "HGET", "DEL", "EXISTS", "EXPIRE", "TOUCH", "SADD"}
)


def _part(value: object) -> bytes:
    """One argument of a command as Redis receives it (as redis-py encodes it).

    >>> _part("k"), _part(b"v"), _part(3), _part(0.5)
    (b'k', b'v', b'3', b'0.5')
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int):
        return b"%d" % value
    if isinstance(value, float):
        return repr(value).encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"cannot send a {type(value).__name__} to Redis")


def _command(*parts: bytes) -> bytes:
    """RESP encoding of one command.

    >>> _command(b"GET", b"k")
    b'*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n'
    """
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%b\r\n" % (len(part), part))
    return b"".join(out)


class _Line(asyncio.Protocol):
    """One connection of the read line: pending futures and the reply parser."""

    def __init__(self, owner: ReadLine, loop: asyncio.AbstractEventLoop) -> None:
        self.owner = owner
        self.loop = loop
        self.host = owner.host
        self.port = owner.port
        self.transport: asyncio.Transport | None = None
        self.pending: deque[asyncio.Future[Any]] = deque()
        self.buffer = bytearray()
        self.need = 0  # bytes the buffer must hold before a reply can be parsed
        self.waiting_since = 0.0  # monotonic: unanswered since (0: nothing pending)
        self.ready = False
        self.paused = False
        self.gone: asyncio.Future[None] = loop.create_future()  # the socket is closed
        self.since = 0.0  # monotonic: when the line became ready

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.gone.done():
            self.gone.set_result(None)
        self.ready = False
        self.waiting_since = 0.0
        pending, self.pending = self.pending, deque()
        if pending:
            error = ReadLineLost(
                f"the read connection to Redis {self.host}:{self.port} was lost"
                + (f": {exc}" if exc else "")
            )
            for future in pending:
                if not future.done():
                    future.set_exception(error)
        self.owner.lost(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        pending = self.pending
        # Any bytes are a sign of life (a large reply may take a while to arrive).
        self.waiting_since = time.monotonic() if pending else 0.0
        self.owner.answered()
        if buffer:
            buffer += data
            if len(buffer) < self.need:  # a large reply still arriving: wait for it all
                return
            data = bytes(buffer)
            buffer.clear()
        self.need = 0
        end = len(data)
        pos = 0
        while pos < end:
            line_end = data.find(_CRLF, pos)
            if line_end < 0:
                break
            kind = data[pos]
            error: Exception | None = None
            reply: Any
            if kind == 36:  # "$": a bulk string, or nil
                size = int(data[pos + 1 : line_end])
                if size < 0:
                    reply, following = None, line_end + 2
                else:
                    following = line_end + 4 + size
                    if following > end:
                        self.need = following - pos
                        break
                    reply = data[line_end + 2 : following - 2]
            elif kind == 43:  # "+": a status
                reply, following = data[pos + 1 : line_end], line_end + 2
            elif kind == 45:  # "-": an error
                reply = None
                error = _reply_error(data[pos + 1 : line_end].decode("utf-8", "replace"))
                following = line_end + 2
            elif kind == 58:  # ":": an integer
                reply, following = int(data[pos + 1 : line_end]), line_end + 2
            else:
                self._broken(f"unexpected reply type {chr(kind)!r}")
                return
            if not pending:
                self._broken("a reply nobody asked for")
                return
            future = pending.popleft()
            if not future.done():  # a reader that gave up (cancelled) is skipped
                if error is None:
                    future.set_result(reply)
                else:
                    future.set_exception(error)
            pos = following
        if pos < end:
            buffer += data[pos:]
        if not pending:
            self.waiting_since = 0.0

    # -- the line -------------------------------------------------------------------

    def send(self, command: bytes) -> asyncio.Future[Any]:
        return self.send_many(command, 1)[0]

    def send_many(self, commands: bytes, count: int) -> list[asyncio.Future[Any]]:
        """Write ``count`` commands at once: their replies' futures, in order."""
        create = self.loop.create_future
        futures: list[asyncio.Future[Any]] = [create() for _ in range(count)]
        if not self.pending:
            self.waiting_since = time.monotonic()
        self.pending.extend(futures)
        assert self.transport is not None
        self.transport.write(commands)
        return futures

    def unread(self) -> bool:
        """Bytes from Redis wait in the socket (the loop has not read them yet)."""
        transport = self.transport
        return transport is not None and socket_unread(transport.get_extra_info("socket"))

    def abort(self) -> None:
        """Close the socket at once: every read waiting fails now."""
        self.ready = False  # no read is sent on a line going away
        transport = self.transport
        if transport is None:
            return
        if self.loop is asyncio._get_running_loop():
            transport.abort()
        elif not self.loop.is_closed():  # a line left on a loop the client moved from
            self.loop.call_soon_threadsafe(transport.abort)
        else:  # its loop is gone, and connection_lost with it: forget the line now
            self.owner.lost(self)

    def _broken(self, why: str) -> None:
        log.warning("Redis %s:%s read line: %s; reconnecting", self.host, self.port, why)
        self.abort()


class ReadLine:
    """GETs pipelined on one connection to a single Redis server (see the module).

    :meth:`get` returns a future for the reply, or None when the line cannot take
    the read now (not connected yet, reconnecting, backed up, closed): the caller
    uses the pool then. The first call connects the line in the background.
    """

    def __init__(
        self,
        settings: Settings,
        watch: ConnectionWatch | None = None,
        breaker_tripped: Callable[[], bool] | None = None,
        scalar_scripts: frozenset[str] = frozenset(),
    ) -> None:
        self.host = settings.redis_host
        self.port = settings.redis_port
        self._settings = settings
        self._tls = _tls_context(settings)
        self._watch = watch
        self._breaker_tripped = breaker_tripped  # no connecting while it is open
        self._line: _Line | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._failures = 0  # connects failed, or lines lost young, in a row
        self._closed = False
        #: Lua scripts (their source) that answer with one value: EVALs the line may carry.
        self._scripts = scalar_scripts
        #: Reads sent on the line; other commands; connections made; connections lost.
        self.reads = 0
        self.commands = 0
        self.connects = 0
        self.losses = 0

    def get(self, dkey: str) -> asyncio.Future[Any] | None:
        """Send ``GET dkey`` on the line: its reply's future, or None (use the pool)."""
        line = self._usable()
        if line is None:
            return None
        key = dkey.encode()
        self.reads += 1
        return line.send(b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(key), key))

    def send(self, commands: Sequence[Sequence[object]]) -> list[asyncio.Future[Any]] | None:
        """Send ``commands`` pipelined on the line: their replies' futures (raw replies,
        as Redis sent them), in order; None when the line cannot take them now, or one
        of them is not a :data:`SCALAR_COMMANDS` command nor an EVAL of a scalar script.

        What a miss claims and writes costs a busy client a quarter less CPU here than
        on the pool (``benchmarks/client_loads.py``).
        """
        encoded: list[bytes] = []
        for command in commands:
            name = command[0]
            if name not in SCALAR_COMMANDS and not (name == "EVAL" and command[1] in self._scripts):
                return None
            encoded.append(_command(*map(_part, command)))
        line = self._usable()
        if line is None:
            return None
        self.commands += len(encoded)
        return line.send_many(b"".join(encoded), len(encoded))

    def _usable(self) -> _Line | None:
        """The line, if it can take a command now (else None, and it reconnects if lost)."""
        line = self._line
        if (
            line is None
            or not line.ready
            or line.paused
            or line.loop is not asyncio.get_running_loop()
        ):
            self._unavailable(line)
            return None
        watch = self._watch
        if watch is not None and not watch.running:
            watch.start()
        return line

    def _unavailable(self, line: _Line | None) -> None:
        if line is None:
            self._connect_soon()
        elif line.loop is not asyncio.get_running_loop():  # the client moved to another loop
            line.abort()
            if self._line is line:
                self.lost(line)
            self._connect_soon()

    @property
    def connected(self) -> bool:
        return self._line is not None and self._line.ready

    def snapshot(self) -> dict[str, Any]:
        """The line's figures for the client's statistics document."""
        return {
            "connected": self.connected,
            "reads": self.reads,
            "commands": self.commands,
            "connects": self.connects,
            "losses": self.losses,
        }

    def answered(self) -> None:
        if self._watch is not None:
            self._watch.answered_ns = time.perf_counter_ns()

    def lost(self, line: _Line) -> None:
        if self._watch is not None:
            self._watch.connections.discard(line)
        if self._line is not line:
            return
        self._line = None
        self.losses += 1
        now = time.monotonic()
        # A line that lived a while reconnects at once; one lost young backs off.
        self._failures = 0 if now - line.since > _STABLE_S else self._failures + 1
        self._retry_at = now + self._pause()

    def _pause(self) -> float:
        if not self._failures:
            return 0.0
        return float(min(RECONNECT_MAX_S, _FIRST_RETRY_S * 2 ** (self._failures - 1)))

    async def close(self) -> None:
        """Close the line; reads still waiting on it fail (the client retries them)."""
        self._closed = True
        loop = asyncio.get_running_loop()
        connecting, self._connecting = self._connecting, None
        if connecting is not None and connecting.get_loop() is loop:
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
        line, self._line = self._line, None
        if line is None or line.transport is None:
            return
        if line.loop is not loop:
            line.abort()
            return
        line.transport.close()
        # The socket closes in a callback: let it run before the loop may end.
        await asyncio.wait([line.gone], timeout=1.0)

    # -- connecting ---------------------------------------------------------------------

    def _connect_soon(self) -> None:
        if self._closed or time.monotonic() < self._retry_at:
            return
        loop = asyncio.get_running_loop()
        connecting = self._connecting
        if connecting is not None and connecting.get_loop() is loop:
            return  # already on its way (a task left on another loop is forgotten)
        if self._breaker_tripped is not None and self._breaker_tripped():
            return
        self._connecting = loop.create_task(self._connect(loop))

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        settings = self._settings
        line: _Line | None = None
        try:
            async with asyncio.timeout(settings.redis_socket_timeout):
                _, line = await loop.create_connection(
                    lambda: _Line(self, loop),
                    self.host,
                    self.port,
                    ssl=self._tls.get() if self._tls is not None else None,
                    server_hostname=self.host if settings.redis_tls else None,
                )
                sock = line.transport.get_extra_info("socket") if line.transport else None
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                replies = [line.send(command) for command in _handshake(settings)]
                # Every reply is awaited (none left unretrieved), then the first error raised.
                for outcome in await asyncio.gather(*replies, return_exceptions=True):
                    if isinstance(outcome, BaseException):
                        raise outcome
        except Exception as exc:  # any failure to connect: use the pool, try again later
            if line is not None:
                line.abort()
            self._failures += 1
            self._retry_at = time.monotonic() + self._pause()
            log.log(
                logging.WARNING if self._failures == 1 else logging.DEBUG,
                "Redis %s:%s: the read line did not connect (reads use the pool): %s",
                self.host,
                self.port,
                exc,
            )
            return
        except BaseException:  # cancelled (the client is closing)
            if line is not None:
                line.abort()
            raise
        finally:
            if self._connecting is asyncio.current_task():
                self._connecting = None
        if self._closed:
            line.abort()
            return
        self.connects += 1
        line.since = time.monotonic()
        line.ready = True
        self._line = line
        if self._watch is not None:
            self._watch.connections.add(line)


def _handshake(settings: Settings) -> list[bytes]:
    """The commands that make the line's connection the pool's equal: AUTH, SELECT, name."""
    commands: list[bytes] = []
    password = settings.redis_secret()
    if password:
        if settings.redis_username:
            commands.append(_command(b"AUTH", settings.redis_username.encode(), password.encode()))
        else:
            commands.append(_command(b"AUTH", password.encode()))
    if settings.redis_db:
        commands.append(_command(b"SELECT", str(settings.redis_db).encode()))
    if settings.client_name:
        commands.append(_command(b"CLIENT", b"SETNAME", settings.client_name.encode()))
    return commands


def _tls_context(settings: Settings) -> RedisSSLContext | None:
    """redis-py's TLS context for the pool's own options (None when ``REDIS_TLS`` is off).

    The line verifies exactly as the pool's connections do, and the certificate
    files are read once, at the first connect.
    """
    options = tls_options(settings)
    if not options:
        return None
    return RedisSSLContext(**{name.removeprefix("ssl_"): value for name, value in options.items()})

"""redis-py clients built from :class:`~pipeline.config.Settings`.

One place decides how cachecast talks to Redis, for the async and the sync
client alike:

* a connection pool (``max_connections`` per server; when every connection is
  busy the client waits briefly for one instead of failing, see
  :data:`POOL_WAIT_S`), with TCP keepalive;
* retries with exponential backoff and full jitter on connection errors,
  timeouts and ``LOADING`` (``REDIS_MAX_RETRIES`` attempts after the first,
  base delay ``REDIS_RETRY_DELAY`` in milliseconds). A retry opens a fresh connection, which is
  how a pooled client survives a Redis restart with nothing for the caller to do;
* ``REDIS_ENABLE_CLUSTERING`` with ``REDIS_CLUSTER_NODES`` gives redis-py's
  ``RedisCluster`` instead, which the cache client drives through the same API.

The asyncio client's GETs go beside the pool, on its read line
(:mod:`pipeline.client.reads`), which this module's :class:`ConnectionWatch`
keeps deadlines for like a pooled connection.

>>> from pipeline.config import Settings
>>> backoff_cap(Settings(redis_retry_delay_ms=100, redis_max_retries=3))
0.8
"""

from __future__ import annotations

import asyncio
import copy
import logging
import sys
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Final, Protocol, TypeAlias, TypeVar

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError

from pipeline.config import Settings

try:  # POSIX: how many bytes a socket holds unread
    import fcntl
    import termios

    _FIONREAD: int | None = termios.FIONREAD
except ImportError:  # pragma: no cover - Windows: the watchdog trusts its timing alone
    _FIONREAD = None

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "POOL_WAIT_S",
    "AsyncRedisClient",
    "ConnectionWatch",
    "GatedRetry",
    "RetryGate",
    "SyncRedisClient",
    "Watched",
    "WatchedConnection",
    "WatchedSSLConnection",
    "async_retry",
    "backoff_cap",
    "connect_async",
    "connect_sync",
    "socket_unread",
    "sync_retry",
    "tls_options",
]

AsyncRedisClient: TypeAlias = "redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster"
SyncRedisClient: TypeAlias = "redis.Redis | redis.cluster.RedisCluster"

DEFAULT_MAX_CONNECTIONS: Final = 256
#: How long an operation waits for a pooled connection when all are busy.
POOL_WAIT_S: Final = 1.0
_RETRY_ON: Final = (ConnectionError, TimeoutError, BusyLoadingError)
T = TypeVar("T")


def backoff_cap(settings: Settings) -> float:
    """Longest single backoff: the base delay doubled once per allowed retry (<= 30 s)."""
    delay = settings.redis_retry_delay_s
    return round(min(30.0, max(delay, delay * float(2**settings.redis_max_retries))), 6)


def _backoff(settings: Settings) -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(
        cap=backoff_cap(settings), base=settings.redis_retry_delay_s
    )


class RetryGate:
    """Stops a pool's retries while its client's circuit breaker is open.

    redis-py copies the retry policy into every connection (``deepcopy``); the
    gate survives the copies as the one shared object, so the client can tell
    all of them at once that Redis is down: a command that fails then raises at
    once instead of reconnecting to a Redis that does not answer.
    """

    __slots__ = ("stopped",)

    def __init__(self) -> None:
        self.stopped: Callable[[], bool] = _never

    def __copy__(self) -> RetryGate:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> RetryGate:
        return self


def _never() -> bool:
    return False


class GatedRetry(redis.asyncio.retry.Retry):
    """redis-py's async retry policy that gives up while its :class:`RetryGate` is shut."""

    def __init__(self, *args: Any, gate: RetryGate | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = gate if gate is not None else RetryGate()
        self._open = self._gate_open  # bound once: no allocation per command

    def _gate_open(self, error: Exception) -> bool:
        return not self.gate.stopped()

    def __deepcopy__(self, memo: dict[int, Any]) -> GatedRetry:
        return GatedRetry(
            copy.deepcopy(self._backoff, memo),
            self._retries,
            supported_errors=self._supported_errors,
            gate=self.gate,
        )

    def call_with_retry(  # a plain def returning the coroutine: no extra frame per command
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> Coroutine[Any, Any, T]:
        if is_retryable is None:
            return super().call_with_retry(do, fail, self._open, with_failure_count)
        also = is_retryable

        def retryable(error: Exception) -> bool:
            return not self.gate.stopped() and also(error)

        return super().call_with_retry(do, fail, retryable, with_failure_count)


def async_retry(settings: Settings) -> GatedRetry:
    """The async retry policy: exponential backoff with jitter, on connection trouble."""
    return GatedRetry(_backoff(settings), settings.redis_max_retries, supported_errors=_RETRY_ON)


def sync_retry(settings: Settings) -> redis.retry.Retry:
    """The sync retry policy, identical to :func:`async_retry`."""
    return redis.retry.Retry(
        _backoff(settings), settings.redis_max_retries, supported_errors=_RETRY_ON
    )


def _pool_options(settings: Settings, max_connections: int) -> dict[str, Any]:
    """Connection-pool options shared by the asyncio and blocking clients."""
    return {
        "host": settings.redis_host,
        "port": settings.redis_port,
        "db": settings.redis_db,
        "username": settings.redis_username,
        "password": settings.redis_secret(),
        "max_connections": max_connections,
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.redis_socket_timeout,
        "socket_keepalive": True,
        "client_name": settings.client_name,
        **tls_options(settings),
    }


def tls_options(settings: Settings) -> dict[str, Any]:
    """redis-py's TLS options for ``REDIS_TLS`` (nothing when it is off).

    >>> tls_options(Settings(redis_tls=True, redis_tls_ca_file="/etc/ca.pem"))["ssl_ca_certs"]
    '/etc/ca.pem'
    >>> tls_options(Settings())
    {}
    """
    if not settings.redis_tls:
        return {}
    return {
        "ssl_ca_certs": settings.redis_tls_ca_file,
        "ssl_certfile": settings.redis_tls_cert_file,
        "ssl_keyfile": settings.redis_tls_key_file,
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": settings.redis_tls_check_hostname,
    }


def socket_unread(sock: Any) -> bool:
    """Bytes wait unread in ``sock`` (an asyncio transport's socket, or None)."""
    if sock is None or _FIONREAD is None:
        return False
    try:
        count = fcntl.ioctl(sock.fileno(), _FIONREAD, b"\0\0\0\0")
    except (OSError, ValueError):
        return False
    return int.from_bytes(count, sys.byteorder) > 0


class Watched(Protocol):
    """What a :class:`ConnectionWatch` keeps deadlines for: one connection to Redis."""

    host: str
    port: int
    #: time.monotonic() since when it waits for Redis (0: it does not).
    waiting_since: float

    def unread(self) -> bool: ...

    def abort(self) -> None: ...


class ConnectionWatch:
    """Read and write deadlines for a pool's connections, kept by one timer.

    redis-py bounds each command with its socket timeout through
    ``asyncio.wait_for`` (a new Task per write) and ``asyncio.timeout`` (per
    read): measured at 15-55 µs on a 130 µs GET here. Instead, each
    :class:`WatchedConnection` notes when it started waiting (a timestamp per
    read and write), and this watch checks every connection every ``every_s``:
    one that has waited over ``deadline_s`` is aborted, so its command fails
    with a :class:`~redis.exceptions.ConnectionError` and redis-py's retry
    policy takes over, as after a socket timeout.
    """

    def __init__(self, deadline_s: float, every_s: float = 0.05) -> None:
        self.deadline_s = deadline_s
        self.every_s = min(every_s, deadline_s / 4)
        self.connections: weakref.WeakSet[Watched] = weakref.WeakSet()
        self.expired = 0
        #: When a reply last arrived on any of the connections (perf_counter_ns):
        #: the client's stall watchdog counts handshakes of new connections as
        #: signs of life too.
        self.answered_ns = 0
        self.running = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Begin checking on the running loop (the first command of a connection does)."""
        loop = asyncio.get_running_loop()
        if self.running and self._loop is loop:
            return
        self._loop, self.running = loop, True
        loop.call_later(self.every_s, self._tick)

    def _tick(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed() or not self.connections:
            self.running = False
            return
        now = time.monotonic()
        for connection in list(self.connections):
            since = connection.waiting_since
            if since and now - since > self.deadline_s:
                connection.waiting_since = 0.0
                self.expired += 1
                log.warning(
                    "Redis %s:%s sent nothing for %.1f s; dropping the connection",
                    connection.host,
                    connection.port,
                    now - since,
                )
                connection.abort()
        loop.call_later(self.every_s, self._tick)

    def replies_pending(self) -> bool:
        """A reply has arrived that the event loop has not read yet.

        True when a connection waiting for Redis has bytes in its socket or its
        stream buffer: the loop is behind (busy, or starved of CPU), not Redis.
        The stall watchdog asks before it declares Redis hung.
        """
        return any(c.waiting_since and c.unread() for c in list(self.connections))

    def abort_waiting(self) -> int:
        """Abort every connection waiting for Redis now (the client's breaker opened)."""
        aborted = 0
        for connection in list(self.connections):
            if connection.waiting_since:
                connection.waiting_since = 0.0
                connection.abort()
                aborted += 1
        return aborted


class WatchedConnection(redis.asyncio.Connection):
    """redis-py's asyncio connection whose deadlines a :class:`ConnectionWatch` keeps."""

    def __init__(self, *, watch: ConnectionWatch, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.watch = watch
        self.waiting_since = 0.0
        watch.connections.add(self)

    def unread(self) -> bool:
        """Bytes from Redis wait on this connection: in its stream buffer or its socket."""
        reader = getattr(self, "_reader", None)
        if reader is not None and getattr(reader, "_buffer", None):
            return True
        writer = getattr(self, "_writer", None)
        return writer is not None and socket_unread(writer.transport.get_extra_info("socket"))

    def abort(self) -> None:
        """Close the socket at once: a pending read or write fails now."""
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.transport.abort()

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        if not self.watch.running:
            self.watch.start()
        self.waiting_since = time.monotonic()
        try:
            await super().send_packed_command(command, check_health)
        finally:
            self.waiting_since = 0.0

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        self.waiting_since = time.monotonic()
        try:
            reply = await super().read_response(*args, **kwargs)
        finally:
            self.waiting_since = 0.0
        self.watch.answered_ns = time.perf_counter_ns()
        return reply


def _cluster_options(settings: Settings, max_connections: int) -> dict[str, Any]:
    """What both clients' ``RedisCluster`` take besides their nodes and retry."""
    tls = tls_options(settings)
    return {
        "username": settings.redis_username,
        "password": settings.redis_secret(),
        "max_connections": max_connections,
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.redis_socket_timeout,
        **({"ssl": True, **tls} if tls else {}),
    }


class WatchedSSLConnection(WatchedConnection, redis.asyncio.SSLConnection):
    """:class:`WatchedConnection` over TLS (``REDIS_TLS``)."""


def connect_async(
    settings: Settings, *, max_connections: int = DEFAULT_MAX_CONNECTIONS
) -> AsyncRedisClient:
    """An asyncio client (single server or cluster) for ``settings``; connects lazily."""
    if settings.redis_enable_clustering:
        return redis.asyncio.cluster.RedisCluster(
            startup_nodes=[
                redis.asyncio.cluster.ClusterNode(host, port)
                for host, port in settings.cluster_nodes()
            ],
            retry=async_retry(settings),
            **_cluster_options(settings, max_connections),
        )
    options = _pool_options(settings, max_connections)
    options["socket_timeout"] = None  # kept by the watch instead, at no cost per command
    pool = redis.asyncio.ConnectionPool(
        **options,
        retry=async_retry(settings),
        connection_class=WatchedSSLConnection if settings.redis_tls else WatchedConnection,
        watch=ConnectionWatch(settings.redis_socket_timeout),
    )
    return redis.asyncio.Redis.from_pool(pool)


def connect_sync(
    settings: Settings, *, max_connections: int = DEFAULT_MAX_CONNECTIONS
) -> SyncRedisClient:
    """A blocking client (single server or cluster) for ``settings``; connects lazily."""
    if settings.redis_enable_clustering:
        return redis.cluster.RedisCluster(
            startup_nodes=[
                redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]
                for host, port in settings.cluster_nodes()
            ],
            retry=sync_retry(settings),
            client_name=settings.client_name,
            **_cluster_options(settings, max_connections),
        )
    pool = redis.ConnectionPool(
        **_pool_options(settings, max_connections),
        retry=sync_retry(settings),
        connection_class=redis.SSLConnection if settings.redis_tls else redis.Connection,
    )
    return redis.Redis.from_pool(pool)

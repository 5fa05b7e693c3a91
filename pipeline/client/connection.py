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

>>> from pipeline.config import Settings
>>> backoff_cap(Settings(redis_retry_delay_ms=100, redis_max_retries=3))
0.8
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError

from pipeline.config import Settings

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "POOL_WAIT_S",
    "AsyncRedisClient",
    "SyncRedisClient",
    "async_retry",
    "backoff_cap",
    "connect_async",
    "connect_sync",
    "sync_retry",
]

AsyncRedisClient: TypeAlias = "redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster"
SyncRedisClient: TypeAlias = "redis.Redis | redis.cluster.RedisCluster"

DEFAULT_MAX_CONNECTIONS: Final = 256
#: How long an operation waits for a pooled connection when all are busy.
POOL_WAIT_S: Final = 1.0
_RETRY_ON: Final = (ConnectionError, TimeoutError, BusyLoadingError)


def backoff_cap(settings: Settings) -> float:
    """Longest single backoff: the base delay doubled once per allowed retry (<= 30 s)."""
    delay = settings.redis_retry_delay_s
    return round(min(30.0, max(delay, delay * float(2**settings.redis_max_retries))), 6)


def _backoff(settings: Settings) -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(
        cap=backoff_cap(settings), base=settings.redis_retry_delay_s
    )


def async_retry(settings: Settings) -> redis.asyncio.retry.Retry:
    """The async retry policy: exponential backoff with jitter, on connection trouble."""
    return redis.asyncio.retry.Retry(
        _backoff(settings), settings.redis_max_retries, supported_errors=_RETRY_ON
    )


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
        "password": settings.redis_password,
        "max_connections": max_connections,
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.redis_socket_timeout,
        "socket_keepalive": True,
        "client_name": settings.client_name,
    }


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
            password=settings.redis_password,
            retry=async_retry(settings),
            max_connections=max_connections,
            socket_timeout=settings.redis_socket_timeout,
            socket_connect_timeout=settings.redis_socket_timeout,
        )
    pool = redis.asyncio.ConnectionPool(
        **_pool_options(settings, max_connections), retry=async_retry(settings)
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
            password=settings.redis_password,
            retry=sync_retry(settings),
            max_connections=max_connections,
            socket_timeout=settings.redis_socket_timeout,
            socket_connect_timeout=settings.redis_socket_timeout,
            client_name=settings.client_name,
        )
    pool = redis.ConnectionPool(
        **_pool_options(settings, max_connections), retry=sync_retry(settings)
    )
    return redis.Redis.from_pool(pool)

"""Errors the cache client raises.

Every Redis failure reaches the caller as a :class:`CacheError` with the
redis-py exception as its ``__cause__``; bad arguments raise
:class:`~pipeline.client.keys.InvalidKeyError` (a ``ValueError``) before any I/O.
"""

from __future__ import annotations

from pipeline.client.keys import InvalidKeyError

__all__ = [
    "CacheCommandError",
    "CacheError",
    "CacheUnavailableError",
    "InvalidKeyError",
    "LoadTimeoutError",
    "RedisConfigError",
]


class CacheError(RuntimeError):
    """A cache operation failed in Redis (after the configured retries)."""


class CacheUnavailableError(CacheError):
    """Redis could not be reached (connection refused, timeout, cluster down, or the
    client's circuit breaker is open after such a failure)."""


class CacheCommandError(CacheError):
    """Redis answered with an error (e.g. INCR on a non-integer value)."""


class LoadTimeoutError(TimeoutError):
    """``fallback_data`` (this caller's, or the one whose load it joined) did not return
    within ``CACHECAST_LOAD_TIMEOUT_S``. The key is not blocked: the next get loads again."""


class RedisConfigError(ValueError):
    """``configure_redis`` was given a setting it does not manage, or a bad value."""

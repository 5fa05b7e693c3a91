"""SyncRedisCacheManager: the blocking twin of :class:`pipeline.client.RedisCacheManager`.

Same API, same keys, same plans (from :mod:`pipeline.client.core`), driven
with redis-py's blocking client; access events go through a
:class:`~pipeline.client.emitter.ThreadedAccessEmitter` (a daemon thread), so
the cache path still never waits for Kafka. Safe to share between threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, cast

from redis.cluster import RedisCluster
from redis.exceptions import MaxConnectionsError, RedisError

from pipeline.client.connection import (
    DEFAULT_MAX_CONNECTIONS,
    POOL_WAIT_S,
    SyncRedisClient,
    connect_sync,
)
from pipeline.client.core import SLOW, Command
from pipeline.client.driver import Procedure, run_blocking
from pipeline.client.emitter import ThreadedAccessEmitter
from pipeline.client.keys import pattern_for
from pipeline.client.shared import ManagerBase, applied_settings
from pipeline.config import Settings

__all__ = ["SyncRedisCacheManager"]

T = TypeVar("T")
_SCAN_COUNT = 500


class SyncRedisCacheManager(ManagerBase[SyncRedisClient, ThreadedAccessEmitter]):
    """Namespaced Redis cache with access events (blocking).

    Parameters are those of :class:`pipeline.client.RedisCacheManager`, with a
    blocking redis-py client and a :class:`ThreadedAccessEmitter`.

    Examples
    --------
    ::

        with SyncRedisCacheManager(load_settings()) as cache:
            cache.set("users", "42", {"name": "Ada"}, ttl=300)
            user = cache.get("users", "42")
    """

    def __init__(
        self,
        config: Settings | Mapping[str, Any] | None = None,
        *,
        redis: SyncRedisClient | None = None,
        emitter: ThreadedAccessEmitter | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        breaker_cooldown: float | None = None,
    ) -> None:
        self._start_lock = threading.Lock()
        super().__init__(
            config,
            redis,
            emitter,
            breaker_cooldown,
            connect=lambda settings: connect_sync(settings, max_connections=max_connections),
            cluster_type=RedisCluster,
            new_emitter=ThreadedAccessEmitter,
        )

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the emitter thread (it also starts by itself on first use)."""
        emitter = self.emitter
        if emitter is None:
            return
        with self._start_lock:
            if not self._emitter_started:
                self._emitter_started = True
                if self._owns_emitter:
                    emitter.start()
            self._core.emit = emitter.emit

    def _first_emit(self, *args: Any, **kwargs: Any) -> None:
        self.start()
        self._core.emit(*args, **kwargs)

    def close(self, timeout: float = 5.0) -> None:
        """Flush buffered events (at most ``timeout`` s) and close what this client owns."""
        if self._closed:
            return
        self._closed = True
        if self.emitter is not None and self._owns_emitter and self._emitter_started:
            self.emitter.close(timeout)
        if self._owns_redis:
            self._redis.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------

    def _call(self, method: Callable[..., T], *args: Any) -> T:
        """Run one command, waiting (up to POOL_WAIT_S) for a connection if the pool is full."""
        deadline = time.monotonic() + POOL_WAIT_S
        pause = 0.001
        while True:
            try:
                return method(*args)
            except MaxConnectionsError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.05)

    def _execute(self, commands: list[Command]) -> list[Any]:
        if len(commands) == 1:
            return [self._call(self._redis.execute_command, *commands[0])]
        pipe = self._redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        replies: list[Any] = self._call(pipe.execute)
        return replies

    def _run(self, procedure: Procedure[T]) -> T:
        """Run a plan or procedure (see :mod:`pipeline.client.driver`); a Redis error propagates."""
        return run_blocking(procedure, self._io)

    # -- values ----------------------------------------------------------------------

    def get(self, namespace: str, key: str) -> Any:
        """The value of ``key``, or None when it is not cached (or cannot be decoded)."""
        core = self._core
        dkey = core.data_key(namespace, key)
        if core.down_until and core.breaker_open():
            raise core.rejected("get", namespace, (key,))
        started = time.perf_counter_ns()
        try:
            data: bytes | None = self._redis.execute_command("GET", dkey)  # type: ignore[no-untyped-call]
        except RedisError as exc:
            data = self._get_after_error(exc, namespace, key, dkey, started)
        else:
            if core.down_until:
                core.redis_answered()
        elapsed = (time.perf_counter_ns() - started) // 1000
        value = (
            SLOW if data is None else core.read_hit(namespace, key, data, elapsed, None, None, True)
        )
        if value is SLOW:
            return self._run(self._slow_read(namespace, key, dkey, data, elapsed))
        return value

    def _get_after_error(
        self,
        exc: RedisError,
        namespace: str,
        key: str,
        dkey: str,
        started: int,
        user: str | None = None,
        session: str | None = None,
        emit: bool = True,
    ) -> bytes | None:
        """A GET failed: wait for a pooled connection if that was all, else report."""
        if isinstance(exc, MaxConnectionsError):
            try:
                data = cast("bytes | None", self._call(self._redis.get, dkey))
                return data
            except RedisError as again:
                exc = again
        raise self._core.failure(
            "get", namespace, (key,), started, exc, user, session, emit
        ) from exc

    def _consume_warm(self, namespace: str, key: str) -> bool:
        """Delete the warm marker: only the first reader of a warmed value gets True."""
        try:
            (removed,) = self._execute([("DEL", self._core.marker_key(namespace, key))])
        except RedisError:
            self._core.stats.errors += 1
            return False
        return bool(removed)

    def set(
        self,
        namespace: str,
        key: str,
        value: Any,
        ttl: int | None = None,
        tags: Iterable[str] | None = None,
        compress: bool | None = None,
    ) -> bool:
        """Store ``value`` for ``ttl`` seconds (default ``REDIS_DEFAULT_TTL``) under ``tags``."""
        plan = self._core.set_plan(namespace, key, value, ttl, tags, compress)
        (stored,) = self._run(self._drive(plan, "set", namespace, (key,)))
        return stored

    def delete(self, namespace: str, key: str) -> bool:
        """Delete ``key`` (and its tag index); True if it existed."""
        plan = self._core.delete_plan(namespace, (key,))
        return bool(self._run(self._drive(plan, "delete", namespace, (key,))))

    def exists(self, namespace: str, key: str) -> bool:
        """True if ``key`` is cached."""
        return self._run(
            self._drive(self._core.exists_plan(namespace, key), "exists", namespace, (key,))
        )

    def mget(self, namespace: str, keys: Sequence[str]) -> list[Any]:
        """Values of ``keys`` in order, None where missing (one MGET per hash slot)."""
        return self._run(
            self._drive(self._core.mget_plan(namespace, keys), "mget", namespace, keys)
        )

    def mset(
        self,
        namespace: str,
        items: Mapping[str, Any],
        ttl: int | None = None,
        tags: Iterable[str] | None = None,
        compress: bool | None = None,
    ) -> bool:
        """Store many values in one pipelined round trip (not atomic); True if all stored."""
        plan = self._core.mset_plan(namespace, items, ttl, tags, compress)
        return all(self._run(self._drive(plan, "mset", namespace, list(items))))

    def increment(self, namespace: str, key: str, amount: int = 1, ttl: int | None = None) -> int:
        """Add ``amount`` to an integer counter and return the new value."""
        plan = self._core.increment_plan(namespace, key, amount, ttl)
        return self._run(self._drive(plan, "incr", namespace, (key,)))

    def expire(self, namespace: str, key: str, ttl: int) -> bool:
        """Set ``key`` to expire in ``ttl`` seconds; False if it does not exist."""
        plan = self._core.expire_plan(namespace, key, ttl)
        return self._run(self._drive(plan, "expire", namespace, (key,)))

    # -- invalidation ----------------------------------------------------------------

    def delete_by_pattern(self, namespace: str, pattern: str) -> int:
        """Delete the keys of ``namespace`` whose key part matches ``pattern`` (SCAN)."""
        match = pattern_for(self._core.prefix, namespace, pattern)
        core = self._core
        if core.down_until and core.breaker_open():
            raise core.rejected("delete", namespace, ())
        started = time.perf_counter_ns()
        deleted = 0
        batch: list[bytes] = []
        try:
            for found in self._redis.scan_iter(match=match, count=_SCAN_COUNT):
                batch.append(found)
                if len(batch) >= _SCAN_COUNT:
                    plan = core.delete_found_plan(namespace, batch)
                    deleted += self._run(self._drive(plan, "delete", namespace))
                    batch = []
        except RedisError as exc:
            raise core.failure("delete", namespace, (), started, exc) from exc
        if batch:
            deleted += self._run(
                self._drive(core.delete_found_plan(namespace, batch), "delete", namespace)
            )
        return deleted

    def count_keys(self, limit: int = 1_000_000) -> dict[str, Any]:
        """How many keys cachecast holds under the prefix (as the async client's)."""
        match = self._core.prefix_match()
        started = time.perf_counter()
        count = 0
        complete = True
        for _ in self._redis.scan_iter(match=match, count=_SCAN_COUNT):
            count += 1
            if count >= limit:
                complete = False
                break
        return self._core.key_count(count, complete, started)

    def delete_by_tags(self, namespace: str, tags: Iterable[str]) -> int:
        """Delete every value of ``namespace`` tagged with any of ``tags``; returns the count."""
        return self._run(
            self._drive(self._core.delete_by_tags_plan(namespace, tags), "delete", namespace)
        )

    # -- health, statistics, configuration -------------------------------------------

    def health_check(self) -> dict[str, Any]:
        """``{"healthy": bool, "latency_ms": float, "error": str | None}`` from a PING."""
        started = time.perf_counter()
        try:
            self._redis.ping()
        except (RedisError, OSError) as exc:
            return self._health(started, exc)
        return self._health(started)

    def get_stats(self) -> dict[str, Any]:
        """Client counters and latency quantiles, emitter counters, and Redis INFO figures."""
        return self._stats_document(self._infos())

    def get_performance_metrics(self) -> dict[str, Any]:
        """Average response time, throughput, error rate, hit and miss rates (this
        client's own operations) and Redis memory usage (None when unreachable)."""
        return self._performance_document(self._infos())

    def _infos(self) -> list[Mapping[str, Any]] | RedisError:
        """INFO of every primary, or the error that kept Redis from answering."""
        client = self._redis
        try:
            if isinstance(client, RedisCluster):
                nodes = client.get_primaries()  # type: ignore[no-untyped-call]
                return [cast("Mapping[str, Any]", client.info(target_nodes=n)) for n in nodes]
            return [cast("Mapping[str, Any]", client.info())]
        except RedisError as exc:
            return exc

    def configure_redis(self, options: Mapping[str, Any] | None = None) -> dict[str, str]:
        """Apply memory settings (``maxmemory``, ``maxmemory-policy``, ``maxmemory-samples``)."""
        pairs = self._core.memory_settings(options)
        client = self._redis
        try:
            if isinstance(client, RedisCluster):
                primaries = client.get_primaries()  # type: ignore[no-untyped-call]
                for node in primaries:
                    for name, value in pairs:
                        client.config_set(name, value, target_nodes=node)
                current = [client.config_get(name, target_nodes=primaries[0]) for name, _ in pairs]
            else:
                for name, value in pairs:
                    client.config_set(name, value)
                current = [client.config_get(name) for name, _ in pairs]
        except RedisError as exc:
            raise self._core.failure("configure", None, (), time.perf_counter_ns(), exc) from exc
        return applied_settings(cast("list[Any]", current))

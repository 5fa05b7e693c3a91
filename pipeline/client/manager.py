"""RedisCacheManager: the asyncio cache client, instrumented with access events.

It does what the original cache manager did (namespaced keys, TTLs, tags,
compression, pattern and tag invalidation, counters, health and stats, memory
configuration) on redis-py's asyncio client or ``RedisCluster``, and every
operation hands an :class:`~schemas.AccessEvent` to a non-blocking emitter:
the cache path never waits for Kafka.

Failures: a Redis error (after the connection's retries) raises
:class:`~pipeline.client.errors.CacheUnavailableError` (cannot reach Redis) or
:class:`~pipeline.client.errors.CacheCommandError` (Redis said no), counted in
``get_stats()`` and emitted as ``outcome="error"`` events. After an outage-type
failure a short circuit breaker makes further calls fail at once instead of
each waiting out its retries; the first call after the cool-down tries Redis
again. Bad arguments raise :class:`~pipeline.client.keys.InvalidKeyError` before
any I/O.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, cast

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import MaxConnectionsError, RedisError

from pipeline.client.connection import (
    DEFAULT_MAX_CONNECTIONS,
    POOL_WAIT_S,
    AsyncRedisClient,
    ConnectionWatch,
    GatedRetry,
    connect_async,
)
from pipeline.client.core import SLOW, Command
from pipeline.client.driver import Procedure, run
from pipeline.client.edge import SCALAR_SCRIPTS
from pipeline.client.emitter import AccessEmitter
from pipeline.client.keys import pattern_for
from pipeline.client.reads import ReadLine, ReadLineLost
from pipeline.client.shared import ManagerBase, applied_settings
from pipeline.config import Settings

__all__ = ["RedisCacheManager"]

T = TypeVar("T")
_SCAN_COUNT = 500
#: How soon a tick confirms a suspected Redis stall (the loop polls its sockets first).
CONFIRM_S = 0.002


def _retry_of(client: AsyncRedisClient) -> GatedRetry | None:
    retry = (
        client.retry
        if isinstance(client, RedisCluster)
        else client.connection_pool.connection_kwargs.get("retry")
    )
    return retry if isinstance(retry, GatedRetry) else None


def _retrieve(futures: list[asyncio.Future[Any]]) -> None:
    """Settle a batch given up on: errors taken (not logged as never retrieved), the
    futures still waiting cancelled (the line skips their replies)."""
    for future in futures:
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()


def _watch_of(client: AsyncRedisClient) -> ConnectionWatch | None:
    if isinstance(client, RedisCluster):
        return None
    watch = client.connection_pool.connection_kwargs.get("watch")
    return watch if isinstance(watch, ConnectionWatch) else None


class RedisCacheManager(ManagerBase[AsyncRedisClient, AccessEmitter]):
    """Namespaced Redis cache with access events (asyncio).

    Keys are ``REDIS_KEY_PREFIX + namespace + ":" + key``; values are stored in
    the :mod:`pipeline.codec` envelope (lz4 above ``REDIS_COMPRESSION_THRESHOLD``).

    Parameters
    ----------
    config
        Settings; or a dict in the original cache configuration's shape
        (``host``, ``port``, ``password``, ``db``, ``key_prefix``, ``default_ttl``,
        ``max_memory``, ``compression_threshold``, ``enable_compression``,
        ``enable_clustering``, ``nodes``, ``retry_delay``, ``max_retries``, or
        their camelCase forms; unknown names are an error, see
        :func:`~pipeline.config.cache_settings`); by default read from the
        environment with :func:`~pipeline.config.load_settings`.
    redis
        An existing redis-py asyncio client to use (not closed by :meth:`close`);
        by default one is built from ``config`` (pool, retries, cluster).
    emitter
        The access-event emitter to use (not closed by :meth:`close`); by default
        one is made from ``config`` unless ``CACHECAST_EMITTER_ENABLED`` is off.
    max_connections
        Pool size per Redis server.
    breaker_cooldown
        Seconds to fail fast after Redis was found unreachable; by default the
        longest retry backoff, between 0.5 and 5 s.

    Examples
    --------
    ::

        async with RedisCacheManager(load_settings()) as cache:
            await cache.set("users", "42", {"name": "Ada"}, ttl=300, tags=["team:7"])
            user = await cache.get("users", "42")
            await cache.delete_by_tags("users", ["team:7"])
    """

    def __init__(
        self,
        config: Settings | Mapping[str, Any] | None = None,
        *,
        redis: AsyncRedisClient | None = None,
        emitter: AccessEmitter | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        breaker_cooldown: float | None = None,
    ) -> None:
        super().__init__(
            config,
            redis,
            emitter,
            breaker_cooldown,
            connect=lambda settings: connect_async(settings, max_connections=max_connections),
            cluster_type=RedisCluster,
            new_emitter=AccessEmitter,
        )
        # The first operation warms the client up once: it starts the stall
        # watchdog, and initialises a cluster client (redis-py's async RedisCluster
        # initialises lazily, and concurrent first commands race its slot table:
        # MOVED, then connections closed under other commands).
        self._cold = True
        self._init_lock = asyncio.Lock()
        self._watchdog: asyncio.TimerHandle | None = None
        retry = _retry_of(self._redis)
        if retry is not None:  # retries stop while the breaker is open
            retry.gate.stopped = self._core.breaker_tripped
        self._emitter_starting: asyncio.Task[None] | None = None
        # GETs go pipelined on a connection of their own (see client/reads.py)
        # when this client built its single-server pool itself.
        self._reads: ReadLine | None = (
            ReadLine(
                self.settings, _watch_of(self._redis), self._core.breaker_tripped, SCALAR_SCRIPTS
            )
            if self._owns_redis and not self.cluster and self.settings.redis_read_line
            else None
        )

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Connect a cluster client and start the access-event emitter.

        Both also happen by themselves on first use.
        """
        if self._cold:
            try:
                await self._warm_up()
            except RedisError as exc:  # Redis may come later; operations will report it
                self._core.failure("connect", None, (), time.perf_counter_ns(), exc)
        if self.emitter is not None and not self._emitter_started:
            self._emitter_started = True
            self._core.emit = self.emitter.emit
            if self._owns_emitter:
                await self.emitter.start()

    def _first_emit(self, *args: Any, **kwargs: Any) -> None:
        emitter = self.emitter
        assert emitter is not None
        self._core.emit = emitter.emit
        if not self._emitter_started:
            self._emitter_started = True
            if self._owns_emitter:
                self._emitter_starting = asyncio.get_running_loop().create_task(emitter.start())
        emitter.emit(*args, **kwargs)

    async def close(self, timeout: float = 5.0) -> None:
        """Flush buffered events (at most ``timeout`` s) and close what this client owns."""
        if self._closed:
            return
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.emitter is not None and self._owns_emitter:
            if self._emitter_starting is not None:
                await self._emitter_starting
            if self._emitter_started:
                await self.emitter.close(timeout)
        if self._reads is not None:
            await self._reads.close()
        if self._owns_redis:
            await self._redis.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- plumbing --------------------------------------------------------------------

    async def _warm_up(self) -> None:
        async with self._init_lock:
            if self._cold:
                self._start_watchdog()
            if self._cold and isinstance(self._redis, RedisCluster):
                await self._redis.initialize()
            self._cold = False

    def _start_watchdog(self) -> None:
        """Tick ``CacheCore.watch`` every quarter of ``redis_stall_ms`` (see there).

        A suspected stall is confirmed by a tick :data:`CONFIRM_S` later, after
        the loop has polled its sockets. When the breaker opens, the reads still
        waiting are aborted (their retries stop while it is open) and go to
        their loaders, instead of waiting out the socket timeout and retries.
        """
        core = self._core
        if self._watchdog is not None or not core.stall_ns:
            return
        loop = asyncio.get_running_loop()
        interval = core.stall_ns / 4e9
        confirm = min(interval, CONFIRM_S)
        watch = _watch_of(self._redis)

        def tick() -> None:
            if self._closed:
                return
            if watch is None:
                core.watch(time.perf_counter_ns())
            elif core.watch(time.perf_counter_ns(), watch.answered_ns, watch.replies_pending):
                watch.abort_waiting()
            self._watchdog = loop.call_later(confirm if core.stall_suspected else interval, tick)

        self._watchdog = loop.call_later(interval, tick)

    async def _call(self, method: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run one command, waiting (up to POOL_WAIT_S) for a connection if the pool is full.

        The wait ends early when the breaker opens: the connections are held by
        reads of a Redis that stopped answering.
        """
        deadline = time.monotonic() + POOL_WAIT_S
        pause = 0.001
        while True:
            try:
                return await method(*args)
            except MaxConnectionsError:
                if time.monotonic() > deadline or self._core.breaker_tripped():
                    raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.05)

    async def _execute(self, commands: list[Command]) -> list[Any]:
        """One batch of a plan: on the read line when it can carry it, else the pool.

        The line's replies go through redis-py's response callbacks, so a plan gets
        what the pool would have given it. A batch whose line was lost is sent again
        through the pool (with its retries), as the pool's own retry would send it.
        """
        if self._cold:  # here, so that a failure to start reaches the plan like any other
            await self._warm_up()
        reads = self._reads
        if reads is not None:
            sent = reads.send(commands)
            if sent is not None:
                try:
                    replies: list[Any] = [await reply for reply in sent]
                except ReadLineLost:
                    _retrieve(sent)
                    if self._core.breaker_tripped():
                        raise
                except BaseException:
                    _retrieve(sent)
                    raise
                else:
                    callbacks = self._redis.response_callbacks
                    for i, command in enumerate(commands):
                        callback = callbacks.get(command[0])
                        if callback is not None:
                            replies[i] = callback(replies[i])
                    return replies
        if len(commands) == 1:
            return [await self._call(self._redis.execute_command, *commands[0])]
        pipe = self._redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        piped: list[Any] = await self._call(pipe.execute)
        return piped

    async def _run(self, procedure: Procedure[T]) -> T:
        """Run a plan or procedure (see :mod:`pipeline.client.driver`); a Redis error propagates."""
        return await run(procedure, self._io)

    # -- values ----------------------------------------------------------------------

    async def get(self, namespace: str, key: str) -> Any:
        """The value of ``key``, or None when it is not cached (or cannot be decoded)."""
        core = self._core
        dkey = core.data_key(namespace, key)
        if core.down_until and core.breaker_open():
            raise core.rejected("get", namespace, (key,))
        started = time.perf_counter_ns()
        try:
            data = await self._read(dkey, started)
        except RedisError as exc:
            data = await self._get_after_error(exc, namespace, key, dkey, started)
        elapsed = (time.perf_counter_ns() - started) // 1000
        value = (
            SLOW if data is None else core.read_hit(namespace, key, data, elapsed, None, None, True)
        )
        if value is SLOW:
            return await self._run(self._slow_read(namespace, key, dkey, data, elapsed))
        return value

    async def _read(self, dkey: str, started: int) -> bytes | None:
        """``GET dkey`` for a read that started at ``started`` (perf_counter_ns).

        On the read line if it can take the read; else the pool, through
        execute_command (it skips redis-py's get() wrapper: a frame and a dict).
        While it waits it counts as a waiting read, which the stall watchdog watches.
        """
        core = self._core
        if not core.reads_waiting:
            core.waiting_since_ns = started
        core.reads_waiting += 1
        try:
            if self._cold:
                await self._warm_up()
            sent = self._reads.get(dkey) if self._reads is not None else None
            data: bytes | None = await (
                sent if sent is not None else self._redis.execute_command("GET", dkey)
            )
        finally:
            core.reads_waiting -= 1
        core.waiting_since_ns = time.perf_counter_ns()
        if core.down_until:
            core.redis_answered()
        return data

    async def _get_after_error(
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
        """A GET failed: wait for a pooled connection if that was all, else report.

        A read whose line was lost is retried through the pool (with its retries),
        as a pooled connection's retry would, unless the breaker is open.
        """
        if isinstance(exc, MaxConnectionsError) or (
            isinstance(exc, ReadLineLost) and not self._core.breaker_tripped()
        ):
            try:
                data = cast("bytes | None", await self._call(self._redis.get, dkey))
                return data
            except RedisError as again:
                exc = again
        raise self._core.failure(
            "get", namespace, (key,), started, exc, user, session, emit
        ) from exc

    async def _consume_warm(self, namespace: str, key: str) -> bool:
        """Delete the warm marker: only the first reader of a warmed value gets True."""
        try:  # on the read line when there is one: the pool may be full
            (removed,) = await self._execute([("DEL", self._core.marker_key(namespace, key))])
        except RedisError:
            self._core.stats.errors += 1
            return False
        return bool(removed)

    async def set(
        self,
        namespace: str,
        key: str,
        value: Any,
        ttl: int | None = None,
        tags: Iterable[str] | None = None,
        compress: bool | None = None,
    ) -> bool:
        """Store ``value`` for ``ttl`` seconds (default ``REDIS_DEFAULT_TTL``) under ``tags``.

        ``compress`` forces lz4 on (True) or off (False); by default values of at
        least ``REDIS_COMPRESSION_THRESHOLD`` bytes are compressed.
        """
        plan = self._core.set_plan(namespace, key, value, ttl, tags, compress)
        (stored,) = await self._run(self._drive(plan, "set", namespace, (key,)))
        return stored

    async def delete(self, namespace: str, key: str) -> bool:
        """Delete ``key`` (and its tag index); True if it existed."""
        plan = self._core.delete_plan(namespace, (key,))
        return bool(await self._run(self._drive(plan, "delete", namespace, (key,))))

    async def exists(self, namespace: str, key: str) -> bool:
        """True if ``key`` is cached."""
        return await self._run(
            self._drive(self._core.exists_plan(namespace, key), "exists", namespace, (key,))
        )

    async def mget(self, namespace: str, keys: Sequence[str]) -> list[Any]:
        """Values of ``keys`` in order, None where missing (one MGET per hash slot)."""
        return await self._run(
            self._drive(self._core.mget_plan(namespace, keys), "mget", namespace, keys)
        )

    async def mset(
        self,
        namespace: str,
        items: Mapping[str, Any],
        ttl: int | None = None,
        tags: Iterable[str] | None = None,
        compress: bool | None = None,
    ) -> bool:
        """Store many values in one pipelined round trip (not atomic); True if all stored."""
        plan = self._core.mset_plan(namespace, items, ttl, tags, compress)
        return all(await self._run(self._drive(plan, "mset", namespace, list(items))))

    async def increment(
        self, namespace: str, key: str, amount: int = 1, ttl: int | None = None
    ) -> int:
        """Add ``amount`` to an integer counter and return the new value.

        Counters are plain Redis integers (``get`` returns them as ``int``). A new
        counter expires after ``ttl`` or the default TTL; ``ttl`` given on an
        existing counter resets its expiry.
        """
        plan = self._core.increment_plan(namespace, key, amount, ttl)
        return await self._run(self._drive(plan, "incr", namespace, (key,)))

    async def expire(self, namespace: str, key: str, ttl: int) -> bool:
        """Set ``key`` to expire in ``ttl`` seconds; False if it does not exist."""
        return await self._run(
            self._drive(self._core.expire_plan(namespace, key, ttl), "expire", namespace, (key,))
        )

    # -- invalidation ----------------------------------------------------------------

    async def delete_by_pattern(self, namespace: str, pattern: str) -> int:
        """Delete the keys of ``namespace`` whose key part matches the glob ``pattern``.

        Uses SCAN (never KEYS), on every primary of a cluster. The prefix and
        namespace are matched literally, so no pattern can reach another
        namespace, another prefix or cachecast's internal keys. Returns the
        number of values deleted.
        """
        match = pattern_for(self._core.prefix, namespace, pattern)
        core = self._core
        if core.down_until and core.breaker_open():
            raise core.rejected("delete", namespace, ())
        started = time.perf_counter_ns()
        deleted = 0
        batch: list[bytes] = []
        try:
            if self._cold:
                await self._warm_up()
            async for found in self._redis.scan_iter(match=match, count=_SCAN_COUNT):
                batch.append(found)
                if len(batch) >= _SCAN_COUNT:
                    deleted += await self._run(
                        self._drive(core.delete_found_plan(namespace, batch), "delete", namespace)
                    )
                    batch = []
        except RedisError as exc:
            raise core.failure("delete", namespace, (), started, exc) from exc
        if batch:
            deleted += await self._run(
                self._drive(core.delete_found_plan(namespace, batch), "delete", namespace)
            )
        return deleted

    async def count_keys(self, limit: int = 1_000_000) -> dict[str, Any]:
        """How many keys cachecast holds under ``REDIS_KEY_PREFIX`` (values and its own).

        SCAN with the prefix as pattern (never KEYS; every primary of a cluster),
        stopping after ``limit`` keys: ``complete`` says whether the count is
        exact. Costs one pass over the keyspace; the worker runs it every 30 s.
        """
        match = self._core.prefix_match()
        if self._cold:
            await self._warm_up()
        started = time.perf_counter()
        count = 0
        complete = True
        async for _ in self._redis.scan_iter(match=match, count=_SCAN_COUNT):
            count += 1
            if count >= limit:
                complete = False
                break
        return self._core.key_count(count, complete, started)

    async def delete_by_tags(self, namespace: str, tags: Iterable[str]) -> int:
        """Delete every value of ``namespace`` tagged with any of ``tags``; returns the count."""
        return await self._run(
            self._drive(self._core.delete_by_tags_plan(namespace, tags), "delete", namespace)
        )

    # -- health, statistics, configuration -------------------------------------------

    async def health_check(self) -> dict[str, Any]:
        """``{"healthy": bool, "latency_ms": float, "error": str | None}`` from a PING."""
        started = time.perf_counter()
        try:
            await asyncio.wait_for(
                self._redis.execute_command("PING"), self.settings.redis_socket_timeout * 5
            )
        except (RedisError, OSError, TimeoutError) as exc:
            return self._health(started, exc)
        return self._health(started)

    async def get_stats(self) -> dict[str, Any]:
        """Client counters and latency quantiles, emitter counters, and Redis INFO figures.

        The ``redis`` part has memory, keyspace and evictions (summed over the
        primaries of a cluster), or ``{"error": ...}`` when Redis cannot be reached.
        """
        return self._stats_document(await self._infos())

    async def get_performance_metrics(self) -> dict[str, Any]:
        """Average response time, throughput, error rate, hit and miss rates (this
        client's own operations) and Redis memory usage (None when unreachable)."""
        return self._performance_document(await self._infos())

    async def _infos(self) -> list[Mapping[str, Any]] | RedisError:
        """INFO of every primary, or the error that kept Redis from answering."""
        client = self._redis
        try:
            if isinstance(client, RedisCluster):
                await client.initialize()
                infos: list[Mapping[str, Any]] = []
                for node in client.get_primaries():
                    infos.append(await client.info(target_nodes=node))
                return infos
            return [await client.info()]
        except RedisError as exc:
            return exc

    async def configure_redis(self, options: Mapping[str, Any] | None = None) -> dict[str, str]:
        """Apply memory settings (``maxmemory``, ``maxmemory-policy``, ``maxmemory-samples``).

        ``maxmemory`` takes bytes or a size such as ``"256mb"``. With no options,
        ``REDIS_MAX_MEMORY`` is applied. Values are validated before anything is
        sent; on a cluster they are applied to every primary. Returns the values
        Redis reports afterwards.
        """
        pairs = self._core.memory_settings(options)
        client = self._redis
        try:
            if isinstance(client, RedisCluster):
                await client.initialize()
                for node in client.get_primaries():
                    for name, value in pairs:
                        await client.config_set(name, value, target_nodes=node)
                node = client.get_primaries()[0]
                current = [await client.config_get(name, target_nodes=node) for name, _ in pairs]
            else:
                for name, value in pairs:
                    await client.config_set(name, value)
                current = [await client.config_get(name) for name, _ in pairs]
        except RedisError as exc:
            raise self._core.failure("configure", None, (), time.perf_counter_ns(), exc) from exc
        return applied_settings(current)

"""IntelligentCache: read-through caching with single-flight loads and smart TTLs (asyncio).

``get(namespace, key, fallback_data=loader)`` returns the cached value, or on a
miss calls ``loader`` and stores what it returns:

* **single-flight**: however many callers miss the same key at once, the
  loader runs once and they all get its value (also a caller whose GET was
  answered just before the value landed joins the finished load instead of
  starting another);
* **smart TTL**: the stored value expires after the TTL the pipeline published
  for the key at ``{prefix}#ttl:{ns}:{key}`` (read concurrently with the loader,
  so it costs no extra wait), else ``REDIS_DEFAULT_TTL``, scaled by ``priority``;
* **early refresh** (XFetch): for values this client loaded, a hit close to
  expiry may start a background reload, with a probability that grows as expiry
  nears and with the loader's duration, so a hot key is replaced before it
  expires instead of stampeding when it does;
* **Redis down**: the value is served from the loader (still single-flight, so
  the origin is not stampeded either) and the error is counted, emitted,
  logged and passed to ``on_error``; without a loader the error is raised;
* **events**: each access carries the caller's user and session and, on the
  first read of a value the warmer wrote, ``warmed=true``.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

from orjson import JSONDecodeError
from orjson import loads as _loads
from redis.exceptions import RedisError

from pipeline.client.connection import DEFAULT_MAX_CONNECTIONS, AsyncRedisClient
from pipeline.client.core import (
    HIT_HEADER,
    MISS,
    PLAIN_HEAD,
    Priority,
    UserContext,
    context_labels,
    evict_oldest,
    xfetch_due,
)
from pipeline.client.emitter import AccessEmitter
from pipeline.client.errors import CacheError
from pipeline.client.keys import validate_key
from pipeline.client.manager import RedisCacheManager
from pipeline.codec import HEADER_SIZE
from pipeline.config import Settings
from schemas.contracts import MAX_KEY_LENGTH, MAX_LABEL_LENGTH

__all__ = ["IntelligentCache", "Loader"]

#: A loader: an async function (or a plain function) that returns the value.
Loader: TypeAlias = Callable[[], Awaitable[Any] | Any]
ErrorHook: TypeAlias = Callable[[CacheError], None]

_clock = time.perf_counter_ns
_crc32 = zlib.crc32

#: A finished load is reused by callers whose GET was sent before it completed.
_FLIGHTS_KEPT = 1024


@dataclass(slots=True)
class _Flight:
    task: asyncio.Task[Any]
    done_ns: int = 0


class IntelligentCache(RedisCacheManager):
    """A :class:`RedisCacheManager` whose ``get`` can load, and whose ``set`` picks the TTL.

    Parameters
    ----------
    config, redis, emitter, max_connections, breaker_cooldown
        As for :class:`RedisCacheManager`.
    early_refresh
        Reload values this client loaded shortly before they expire (XFetch).
    refresh_beta
        XFetch's beta: > 1 refreshes earlier, < 1 later.
    tracked_keys
        How many loaded keys' expiry and load time are remembered for early refresh.
    on_error
        Called with the error when Redis fails and a loader served the value.

    Examples
    --------
    ::

        async with IntelligentCache(load_settings()) as cache:
            profile = await cache.get(
                "profiles", user_id, user_context=user_id, session_id=sid,
                fallback_data=lambda: db.load_profile(user_id),
            )
    """

    def __init__(
        self,
        config: Settings | None = None,
        *,
        redis: AsyncRedisClient | None = None,
        emitter: AccessEmitter | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        breaker_cooldown: float | None = None,
        early_refresh: bool = True,
        refresh_beta: float = 1.0,
        tracked_keys: int = 10_000,
        on_error: ErrorHook | None = None,
    ) -> None:
        super().__init__(
            config,
            redis=redis,
            emitter=emitter,
            max_connections=max_connections,
            breaker_cooldown=breaker_cooldown,
        )
        if refresh_beta <= 0:
            raise ValueError("refresh_beta must be > 0")
        self.early_refresh = early_refresh
        self.refresh_beta = refresh_beta
        self.tracked_keys = tracked_keys
        self.on_error = on_error
        self.last_error: CacheError | None = None
        self._flights: dict[str, _Flight] = {}
        #: data key -> (written_at ms, expires_at epoch s, load seconds) of values we loaded.
        self._loaded: dict[str, tuple[int, float, float]] = {}
        self._refreshes: set[asyncio.Task[Any]] = set()
        self._random = random.Random()

    async def close(self, timeout: float = 5.0) -> None:
        """Wait for running background refreshes, then close as the manager does."""
        if self._refreshes:
            _, late = await asyncio.wait(set(self._refreshes), timeout=timeout)
            for task in late:
                task.cancel()
        await super().close(timeout)

    # -- reads -----------------------------------------------------------------------

    async def get(
        self,
        namespace: str,
        key: str,
        *,
        user_context: UserContext = None,
        session_id: str | None = None,
        enable_prediction: bool = True,
        fallback_data: Loader | None = None,
    ) -> Any:
        """The cached value; on a miss, ``fallback_data()``'s value (stored with the smart TTL).

        Without ``fallback_data`` a miss returns None. ``enable_prediction=False``
        keeps this access out of the event stream (and so out of the models).
        """
        # The hit path is written out in full, without helper calls: it is what
        # benchmarks/client_overhead.py measures against a bare redis-py GET.
        core = self._core
        base = core.bases.get(namespace) or core.base(namespace)
        if type(key) is not str or not 0 < len(key) <= MAX_KEY_LENGTH:
            validate_key(key)
        dkey = base + key
        if user_context is None and session_id is None:
            user = session = None
        elif (
            type(user_context) is str
            and type(session_id) is str
            and 0 < len(user_context) <= MAX_LABEL_LENGTH
            and 0 < len(session_id) <= MAX_LABEL_LENGTH
        ):
            user, session = user_context, session_id
        else:
            user, session = context_labels(user_context, session_id)
        started = _clock()
        if core.down_until and core.breaker_open():
            error = core.rejected("get", namespace, (key,), user, session, enable_prediction)
            return await self._serve_without_redis(
                error, namespace, key, dkey, fallback_data, started, user, session
            )
        try:
            if self._cold:
                await self._warm_up()
            # execute_command skips redis-py's get() wrapper (a frame and a kwargs dict)
            data: bytes | None = await self._redis.execute_command("GET", dkey)
        except RedisError as exc:
            try:
                data = await self._get_after_error(
                    exc, namespace, key, dkey, started, user, session, enable_prediction
                )
            except CacheError as error:
                return await self._serve_without_redis(
                    error, namespace, key, dkey, fallback_data, started, user, session
                )
        elapsed = (_clock() - started) // 1000
        if data is not None and len(data) >= HEADER_SIZE:
            head, checksum = HIT_HEADER.unpack_from(data)
            if head == PLAIN_HEAD:  # application-written, uncompressed: the common hit
                payload = memoryview(data)[HEADER_SIZE:]
                if _crc32(payload) == checksum:
                    try:
                        value = _loads(payload)
                    except JSONDecodeError:
                        pass
                    else:
                        stats = core.stats
                        stats.hits += 1
                        size = len(data)
                        stats.bytes_read += size
                        core.get_latency.record(elapsed)
                        if enable_prediction:
                            core.emit(
                                namespace, key, "get", "hit", elapsed, size, None, user, session
                            )
                        if fallback_data is not None and dkey in self._loaded:
                            self._maybe_refresh(
                                namespace, key, dkey, data, fallback_data, user, session
                            )
                        return value
        return await self._get_slow(
            namespace,
            key,
            dkey,
            data,
            started,
            elapsed,
            user,
            session,
            enable_prediction,
            fallback_data,
        )

    async def _get_slow(
        self,
        namespace: str,
        key: str,
        dkey: str,
        data: bytes | None,
        started: int,
        elapsed: int,
        user: str | None,
        session: str | None,
        enable_prediction: bool,
        fallback_data: Loader | None,
    ) -> Any:
        """Everything but the common hit: misses, warmed values, counters, damaged values."""
        core = self._core
        if data is not None:
            warmed = core.warm_pending(dkey, data) and await self._consume_warm(namespace, key)
            value = core.record_hit(
                namespace, key, data, elapsed, user, session, warmed, enable_prediction
            )
            if value is not MISS:
                if fallback_data is not None and dkey in self._loaded:
                    self._maybe_refresh(namespace, key, dkey, data, fallback_data, user, session)
                return value
        else:
            core.record_miss(namespace, key, elapsed, user, session, enable_prediction)
        if fallback_data is None:
            return None
        return await self._load(namespace, key, dkey, fallback_data, started, user, session)

    async def _serve_without_redis(
        self,
        error: CacheError,
        namespace: str,
        key: str,
        dkey: str,
        loader: Loader | None,
        started: int,
        user: str | None,
        session: str | None,
    ) -> Any:
        if loader is None:
            raise error
        self.last_error = error
        if self.on_error is not None:
            self.on_error(error)
        return await self._load(namespace, key, dkey, loader, started, user, session)

    # -- single-flight loading -------------------------------------------------------

    async def _load(
        self,
        namespace: str,
        key: str,
        dkey: str,
        loader: Loader,
        missed_ns: int,
        user: str | None,
        session: str | None,
    ) -> Any:
        flight = self._flights.get(dkey)
        if flight is not None and (not flight.done_ns or flight.done_ns >= missed_ns):
            self._core.stats.load_joins += 1
            return await asyncio.shield(flight.task)
        task = self._start_flight(namespace, key, dkey, loader, user, session)
        return await asyncio.shield(task)

    def _start_flight(
        self,
        namespace: str,
        key: str,
        dkey: str,
        loader: Loader,
        user: str | None,
        session: str | None,
    ) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(
            self._fill(namespace, key, dkey, loader, user, session)
        )
        flight = _Flight(task)
        self._flights[dkey] = flight
        task.add_done_callback(lambda done: self._landed(dkey, flight, done))
        return task

    def _landed(self, dkey: str, flight: _Flight, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            if self._flights.get(dkey) is flight:
                del self._flights[dkey]
            return
        # A failed load is shared like a successful one with the callers whose
        # miss predates it (and its exception is marked as retrieved).
        task.exception()
        flight.done_ns = time.perf_counter_ns()
        if len(self._flights) > _FLIGHTS_KEPT:
            for old_key, old in list(self._flights.items())[: len(self._flights) // 2]:
                if old.done_ns:
                    del self._flights[old_key]

    async def _fill(
        self,
        namespace: str,
        key: str,
        dkey: str,
        loader: Loader,
        user: str | None,
        session: str | None,
    ) -> Any:
        core = self._core
        redis_up = not (core.down_until and core.breaker_open())
        smart_ttl = (
            asyncio.get_running_loop().create_task(self._smart_ttl(namespace, key))
            if redis_up
            else None
        )
        core.stats.loads += 1
        started = time.perf_counter()
        try:
            value = loader()
            if inspect.isawaitable(value):
                value = await value
        except BaseException:
            core.stats.load_errors += 1
            if smart_ttl is not None:
                smart_ttl.cancel()
            raise
        load_s = time.perf_counter() - started
        ttl = core.ttl_for(await smart_ttl if smart_ttl is not None else None)
        if redis_up:
            now = time.time()
            try:
                plan = core.set_plan(
                    namespace, key, value, ttl, user=user, session=session, now=now
                )
                await self._drive(plan, "set", namespace, (key,), user, session)
            except CacheError as error:
                self.last_error = error
            else:
                self._remember(dkey, int(now * 1000), now + ttl, load_s)
        return value

    async def _smart_ttl(self, namespace: str, key: str) -> int | None:
        try:
            raw = await self._redis.hget(self._core.smart_ttl_hash(namespace), key)
        except RedisError:
            return None
        return self._core.parse_smart_ttl(raw)

    # -- early refresh ---------------------------------------------------------------

    def _remember(self, dkey: str, written_ms: int, expires_at: float, load_s: float) -> None:
        if not self.early_refresh or self.tracked_keys <= 0:
            return
        loaded = self._loaded
        loaded.pop(dkey, None)
        if len(loaded) >= self.tracked_keys:
            evict_oldest(loaded)
        loaded[dkey] = (written_ms, expires_at, load_s)

    def _maybe_refresh(
        self,
        namespace: str,
        key: str,
        dkey: str,
        data: bytes,
        loader: Loader,
        user: str | None,
        session: str | None,
    ) -> None:
        written_ms, expires_at, load_s = self._loaded[dkey]
        if int.from_bytes(data[4:12], "big") != written_ms:
            del self._loaded[dkey]  # someone else rewrote the value: its expiry is unknown
            return
        draw = 1.0 - self._random.random()
        if not xfetch_due(expires_at, load_s, self.refresh_beta, time.time(), draw):
            return
        flight = self._flights.get(dkey)
        if flight is not None and not flight.done_ns:
            return
        del self._loaded[dkey]
        self._core.stats.early_refreshes += 1
        task = self._start_flight(namespace, key, dkey, loader, user, session)
        self._refreshes.add(task)
        task.add_done_callback(self._refreshes.discard)

    # -- writes ----------------------------------------------------------------------

    async def set(
        self,
        namespace: str,
        key: str,
        value: Any,
        ttl: int | None = None,
        tags: Iterable[str] | None = None,
        compress: bool | None = None,
        *,
        priority: Priority = "normal",
        user_context: UserContext = None,
        session_id: str | None = None,
    ) -> bool:
        """Store ``value``; without ``ttl``, for the smart TTL scaled by ``priority``.

        ``priority`` is ``"low"`` (half the TTL), ``"normal"`` or ``"high"`` (twice).
        """
        core = self._core
        core.data_key(namespace, key)  # validate before any I/O
        user, session = context_labels(user_context, session_id)
        if ttl is None:
            core.ttl_for(None, priority)  # validate before any I/O
            ttl = core.ttl_for(await self._smart_ttl(namespace, key), priority)
        plan = core.set_plan(namespace, key, value, ttl, tags, compress, user=user, session=session)
        (stored,) = await self._drive(plan, "set", namespace, (key,), user, session)
        return stored

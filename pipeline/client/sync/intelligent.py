"""SyncIntelligentCache: the blocking twin of :class:`pipeline.client.IntelligentCache`.

Same behaviour: single-flight loads across threads, smart TTL, early refresh
(run on a small background thread pool), serving from the loader when Redis is
down, user/session context and ``warmed`` in the access events.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from redis.exceptions import RedisError

from pipeline.client.connection import DEFAULT_MAX_CONNECTIONS, SyncRedisClient
from pipeline.client.core import (
    MISS,
    SLOW,
    Priority,
    UserContext,
    context_labels,
    evict_oldest,
    xfetch_due,
)
from pipeline.client.emitter import ThreadedAccessEmitter
from pipeline.client.errors import CacheError
from pipeline.client.sync.manager import SyncRedisCacheManager
from pipeline.config import Settings

__all__ = ["SyncIntelligentCache", "SyncLoader"]

SyncLoader: TypeAlias = Callable[[], Any]
ErrorHook: TypeAlias = Callable[[CacheError], None]

_FLIGHTS_KEPT = 1024


@dataclass(slots=True)
class _Flight:
    done: threading.Event = field(default_factory=threading.Event)
    done_ns: int = 0
    value: Any = None
    error: BaseException | None = None


class SyncIntelligentCache(SyncRedisCacheManager):
    """A :class:`SyncRedisCacheManager` whose ``get`` can load, and whose ``set`` picks the TTL.

    Parameters are those of :class:`pipeline.client.IntelligentCache`; loaders
    are plain functions.
    """

    def __init__(
        self,
        config: Settings | None = None,
        *,
        redis: SyncRedisClient | None = None,
        emitter: ThreadedAccessEmitter | None = None,
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
        self._flights_lock = threading.Lock()
        self._loaded: dict[str, tuple[int, float, float]] = {}
        self._refresher: ThreadPoolExecutor | None = None
        self._random = random.Random()

    def close(self, timeout: float = 5.0) -> None:
        """Wait for running background refreshes, then close as the manager does."""
        if self._refresher is not None:
            self._refresher.shutdown(wait=True)
        super().close(timeout)

    # -- reads -----------------------------------------------------------------------

    def get(
        self,
        namespace: str,
        key: str,
        *,
        user_context: UserContext = None,
        session_id: str | None = None,
        enable_prediction: bool = True,
        fallback_data: SyncLoader | None = None,
    ) -> Any:
        """The cached value; on a miss, ``fallback_data()``'s value (stored with the smart TTL)."""
        core = self._core
        dkey = core.data_key(namespace, key)
        if user_context is None and session_id is None:
            user = session = None
        else:
            user, session = context_labels(user_context, session_id)
        started = time.perf_counter_ns()
        if core.down_until and core.breaker_open():
            error = core.rejected("get", namespace, (key,), user, session, enable_prediction)
            return self._serve_without_redis(
                error, namespace, key, dkey, fallback_data, started, user, session
            )
        try:
            data: bytes | None = self._redis.execute_command("GET", dkey)  # type: ignore[no-untyped-call]
        except RedisError as exc:
            try:
                data = self._get_after_error(
                    exc, namespace, key, dkey, started, user, session, enable_prediction
                )
            except CacheError as error:
                return self._serve_without_redis(
                    error, namespace, key, dkey, fallback_data, started, user, session
                )
        elapsed = (time.perf_counter_ns() - started) // 1000
        if data is not None:
            value = core.read_hit(namespace, key, data, elapsed, user, session, enable_prediction)
            if value is SLOW:
                warmed = core.warm_pending(dkey, data) and self._consume_warm(namespace, key)
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
        return self._load(namespace, key, dkey, fallback_data, started, user, session)

    def _serve_without_redis(
        self,
        error: CacheError,
        namespace: str,
        key: str,
        dkey: str,
        loader: SyncLoader | None,
        started: int,
        user: str | None,
        session: str | None,
    ) -> Any:
        if loader is None:
            raise error
        self.last_error = error
        if self.on_error is not None:
            self.on_error(error)
        return self._load(namespace, key, dkey, loader, started, user, session)

    # -- single-flight loading -------------------------------------------------------

    def _load(
        self,
        namespace: str,
        key: str,
        dkey: str,
        loader: SyncLoader,
        missed_ns: int,
        user: str | None,
        session: str | None,
    ) -> Any:
        with self._flights_lock:
            flight = self._flights.get(dkey)
            leader = flight is None or bool(flight.done_ns and flight.done_ns < missed_ns)
            if leader:
                flight = self._flights[dkey] = _Flight()
        assert flight is not None
        if not leader:
            self._core.stats.load_joins += 1
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
        return self._run_flight(namespace, key, dkey, loader, user, session, flight)

    def _run_flight(
        self,
        namespace: str,
        key: str,
        dkey: str,
        loader: SyncLoader,
        user: str | None,
        session: str | None,
        flight: _Flight,
    ) -> Any:
        try:
            flight.value = self._fill(namespace, key, dkey, loader, user, session)
        except BaseException as exc:
            flight.error = exc  # shared with the callers whose miss predates it
            raise
        finally:
            flight.done_ns = time.perf_counter_ns()
            flight.done.set()
        with self._flights_lock:
            if len(self._flights) > _FLIGHTS_KEPT:
                for old_key, old in list(self._flights.items())[: len(self._flights) // 2]:
                    if old.done_ns:
                        del self._flights[old_key]
        return flight.value

    def _fill(
        self,
        namespace: str,
        key: str,
        dkey: str,
        loader: SyncLoader,
        user: str | None,
        session: str | None,
    ) -> Any:
        core = self._core
        redis_up = not (core.down_until and core.breaker_open())
        core.stats.loads += 1
        started = time.perf_counter()
        try:
            value = loader()
        except BaseException:
            core.stats.load_errors += 1
            raise
        load_s = time.perf_counter() - started
        if redis_up:
            ttl = core.ttl_for(self._smart_ttl(namespace, key))
            now = time.time()
            try:
                plan = core.set_plan(
                    namespace, key, value, ttl, user=user, session=session, now=now
                )
                self._drive(plan, "set", namespace, (key,), user, session)
            except CacheError as error:
                self.last_error = error
            else:
                self._remember(dkey, int(now * 1000), now + ttl, load_s)
        return value

    def _smart_ttl(self, namespace: str, key: str) -> int | None:
        try:
            raw = self._redis.hget(self._core.smart_ttl_hash(namespace), key)
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
        loader: SyncLoader,
        user: str | None,
        session: str | None,
    ) -> None:
        meta = self._loaded.get(dkey)
        if meta is None:
            return
        written_ms, expires_at, load_s = meta
        if int.from_bytes(data[4:12], "big") != written_ms:
            self._loaded.pop(dkey, None)
            return
        draw = 1.0 - self._random.random()
        if not xfetch_due(expires_at, load_s, self.refresh_beta, time.time(), draw):
            return
        with self._flights_lock:
            flight = self._flights.get(dkey)
            if flight is not None and not flight.done_ns:
                return
            flight = self._flights[dkey] = _Flight()
            self._loaded.pop(dkey, None)
            if self._refresher is None:
                self._refresher = ThreadPoolExecutor(2, thread_name_prefix="cachecast-refresh")
        self._core.stats.early_refreshes += 1
        self._refresher.submit(self._refresh, namespace, key, dkey, loader, user, session, flight)

    def _refresh(
        self,
        namespace: str,
        key: str,
        dkey: str,
        loader: SyncLoader,
        user: str | None,
        session: str | None,
        flight: _Flight,
    ) -> None:
        try:
            self._run_flight(namespace, key, dkey, loader, user, session, flight)
        except Exception:  # a failed refresh leaves the current value in place
            return

    # -- writes ----------------------------------------------------------------------

    def set(
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
        """Store ``value``; without ``ttl``, for the smart TTL scaled by ``priority``."""
        core = self._core
        core.data_key(namespace, key)
        user, session = context_labels(user_context, session_id)
        if ttl is None:
            core.ttl_for(None, priority)
            ttl = core.ttl_for(self._smart_ttl(namespace, key), priority)
        plan = core.set_plan(namespace, key, value, ttl, tags, compress, user=user, session=session)
        (stored,) = self._drive(plan, "set", namespace, (key,), user, session)
        return stored

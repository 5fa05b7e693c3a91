"""SyncIntelligentCache: the blocking twin of :class:`pipeline.client.IntelligentCache`.

Same behaviour: single-flight loads across threads, smart TTL, early refresh
(run on a small background thread pool), edge warms from prefetch rules (on
another small pool, through blocking namespace loaders: see
:mod:`pipeline.client.sync.edge`), joining loads in flight here or on other
clients, serving from the loader when Redis is down, user/session context and
``warmed`` in the access events.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from redis.exceptions import RedisError

from pipeline.client.cached import CachedFunction, KeyBuilder, cached_decorator
from pipeline.client.connection import DEFAULT_MAX_CONNECTIONS, SyncRedisClient
from pipeline.client.core import (
    SLOW,
    DeferredMiss,
    Priority,
    UserContext,
    context_labels,
)
from pipeline.client.edge import ABSENT
from pipeline.client.emitter import ThreadedAccessEmitter
from pipeline.client.errors import CacheError, LoadTimeoutError
from pipeline.client.shared import Armed, IntelligentBase, joinable
from pipeline.client.sync.edge import SyncGuardedLoader, SyncLoaderFunc, sync_loaders
from pipeline.client.sync.manager import SyncRedisCacheManager
from pipeline.codec import loading_mark
from pipeline.config import Settings
from pipeline.loaders import LoaderConfig

__all__ = ["SyncIntelligentCache", "SyncLoader"]

SyncLoader: TypeAlias = Callable[[], Any]
ErrorHook: TypeAlias = Callable[[CacheError], None]

_now = time.perf_counter_ns
#: Edge work (rule reads and loads) queued at most on the pool; past it, triggers are dropped.
_EDGE_QUEUE_MAX = 1024


@dataclass(slots=True)
class _Flight:
    """One load of a key by this client.

    ``loaded`` is set as soon as the loader returns (``value``) or fails
    (``error``): readers that join the load wait for that, never for the write
    to Redis that follows (a hung Redis must not hold back a value already
    loaded). ``done_ns`` is set when the flight has finished, write included.
    """

    loaded: threading.Event = field(default_factory=threading.Event)
    #: The warm marker of an edge load, as in the async client's flight.
    taken: bool = False
    write_settled: bool = False
    done_ns: int = 0
    value: Any = None
    error: BaseException | None = None
    edge: bool = False


class SyncIntelligentCache(SyncRedisCacheManager, IntelligentBase[SyncGuardedLoader, SyncLoader]):
    """A :class:`SyncRedisCacheManager` whose ``get`` can load, and whose ``set`` picks the TTL.

    Parameters are those of :class:`pipeline.client.IntelligentCache`; loaders
    are plain functions (``fallback_data()``; namespace loaders ``func(namespace, key)``).
    """

    def __init__(
        self,
        config: Settings | Mapping[str, Any] | None = None,
        *,
        redis: SyncRedisClient | None = None,
        emitter: ThreadedAccessEmitter | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        breaker_cooldown: float | None = None,
        early_refresh: bool = True,
        refresh_beta: float = 1.0,
        tracked_keys: int = 10_000,
        on_error: ErrorHook | None = None,
        loaders: Mapping[str, SyncLoaderFunc] | None = None,
        edge_warming: bool | None = None,
    ) -> None:
        super().__init__(
            config,
            redis=redis,
            emitter=emitter,
            max_connections=max_connections,
            breaker_cooldown=breaker_cooldown,
        )
        self._init_state(early_refresh, refresh_beta, tracked_keys, on_error, edge_warming)
        self._sleep = time.sleep
        self._flights_lock = threading.Lock()
        self._refresher: ThreadPoolExecutor | None = None
        self._edge_loaders = sync_loaders(self.settings.loader_config(), loaders)
        self._edge_pool: ThreadPoolExecutor | None = None
        self._edge_queued = 0
        #: data key -> the poll that the threads reading a key loading elsewhere share.
        self._remote_polls: dict[str, Future[bytes | None]] = {}
        self._follower: threading.Thread | None = None
        self._stop_following = threading.Event()

    def cached(
        self,
        namespace: str,
        *,
        key: str | KeyBuilder,
        ttl: int | None = None,
        loader_config: LoaderConfig | None = None,
    ) -> Callable[[Callable[..., Any]], CachedFunction]:
        """Cache a function's results in ``namespace``: ``@cache.cached("users", key="{user_id}")``.

        ``key`` is a template over the parameters (or a function of the same
        arguments returning the key); ``ttl`` fixes the TTL of the values it loads
        (else the smart TTL). Misses go through :meth:`get`, so concurrent misses of
        a key call the function once. When the template names every parameter the
        function requires, the function becomes the namespace's loader for edge
        warms, guarded by ``loader_config`` (see :mod:`pipeline.client.cached`).
        Blocking functions only (coroutine functions need
        :class:`~pipeline.client.IntelligentCache`).
        """
        return cached_decorator(self, namespace, key, ttl, loader_config, asynchronous=False)

    def register_loader(
        self, namespace: str, loader: SyncLoaderFunc, config: LoaderConfig | None = None
    ) -> None:
        """Load ``namespace``'s keys with ``loader(namespace, key)`` for edge warms."""
        self._core.base(namespace)
        self._edge_loaders[namespace] = SyncGuardedLoader(loader, config)

    def close(self, timeout: float = 5.0) -> None:
        """Wait for running background refreshes and edge warms, then close as the manager does."""
        if self._refresher is not None:
            self._refresher.shutdown(wait=True)
        self._stop_following.set()
        if self._follower is not None:
            self._follower.join(timeout)
        if self._edge_pool is not None:
            self._edge_pool.shutdown(wait=True, cancel_futures=True)
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
        if user is not None and enable_prediction and self._session_opens(namespace, user):
            self._user_session(namespace, user)
        started = time.perf_counter_ns()
        if core.down_until and core.breaker_open():
            error = core.rejected("get", namespace, (key,), user, session, enable_prediction)
            loader = self._outage_loader(error, fallback_data)
            return self._load(namespace, key, dkey, loader, started, user, session)
        # The loads this key's rule names are reserved before its read is sent: a
        # successor asked for (by another thread) meanwhile joins them.
        armed = self._arm(namespace, key) if enable_prediction and self._rules_held else None
        try:
            return self._read(
                namespace,
                key,
                dkey,
                started,
                user,
                session,
                enable_prediction,
                fallback_data,
                armed,
            )
        finally:
            if armed is not None:
                self._settle(armed)  # no trigger after all, or an error

    def _read(
        self,
        namespace: str,
        key: str,
        dkey: str,
        started: int,
        user: str | None,
        session: str | None,
        enable_prediction: bool,
        fallback_data: SyncLoader | None,
        armed: Armed | None = None,
    ) -> Any:
        """``get`` from its read on: the common hit here, the rest in the shared
        ``_slow_get`` (a read the cache could not serve alone triggers its key's
        rule before it waits for anything)."""
        core = self._core
        try:
            data: bytes | None = self._redis.execute_command("GET", dkey)  # type: ignore[no-untyped-call]
        except RedisError as exc:
            try:
                data = self._get_after_error(
                    exc, namespace, key, dkey, started, user, session, enable_prediction
                )
            except CacheError as error:
                loader = self._outage_loader(error, fallback_data)
                return self._load(namespace, key, dkey, loader, started, user, session)
        else:
            if core.down_until:
                core.redis_answered()
        elapsed = (time.perf_counter_ns() - started) // 1000
        if data is not None:
            value = core.read_hit(namespace, key, data, elapsed, user, session, enable_prediction)
            if value is not SLOW:  # application-written, uncompressed: the common hit
                if fallback_data is not None and dkey in self._loaded:
                    self._maybe_refresh(namespace, key, dkey, data, fallback_data, user, session)
                return value
        slow = self._slow_get(
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
            armed,
        )
        return self._run(slow)

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
        miss: DeferredMiss | None = None,
    ) -> Any:
        """Join the key's load in flight, or run one; ``miss`` is this read's event,
        sent once whether it joined a load is known."""
        core = self._core
        try:
            with self._flights_lock:
                flight = self._flights.get(dkey)
                leader = not joinable(flight, missed_ns)
                if leader:
                    flight = self._flights[dkey] = _Flight()
            assert flight is not None
            if not leader:
                timeout = self.settings.load_timeout_s
                if not flight.loaded.wait(timeout):
                    with self._flights_lock:  # a hung load does not block its key
                        if self._flights.get(dkey) is flight:
                            del self._flights[dkey]
                    raise LoadTimeoutError(f"the load of {namespace}:{key} took over {timeout:g} s")
                if flight.error is not None:
                    raise flight.error
                if flight.value is not ABSENT:
                    core.stats.load_joins += 1
                    core.send_miss(miss, True)
                    return flight.value
                with self._flights_lock:  # an edge load that loaded nothing: load it ourselves
                    flight = self._flights[dkey] = _Flight()
            return self._run_flight(namespace, key, dkey, loader, user, session, flight, miss=miss)
        finally:
            core.send_miss(miss, False)  # (unless sent: a failed read)

    def _run_flight(
        self,
        namespace: str,
        key: str,
        dkey: str,
        loader: SyncLoader,
        user: str | None,
        session: str | None,
        flight: _Flight,
        demand: bool = True,
        miss: DeferredMiss | None = None,
    ) -> Any:
        try:
            flight.value = self._fill(
                namespace, key, dkey, loader, user, session, flight, demand, miss
            )
        except BaseException as exc:
            flight.error = exc  # shared with the callers whose miss predates it
            raise
        finally:
            flight.done_ns = time.perf_counter_ns()
            flight.loaded.set()
        self._forget_landed()
        return flight.value

    def _fill(
        self,
        namespace: str,
        key: str,
        dkey: str,
        loader: SyncLoader,
        user: str | None,
        session: str | None,
        flight: _Flight,
        demand: bool,
        miss: DeferredMiss | None = None,
    ) -> Any:
        """Load the value (the flight's joiners get it at once), then write it with its TTL.

        The key is marked as loading first, in the round trip that reads its smart
        TTL, so that other clients' reads wait for this load instead of fetching it;
        a demand load that finds the key taken waits for that load (see the async
        client). The reader's ``miss`` event goes out once the claim has told which.
        """
        core = self._core
        redis_up = not (core.down_until and core.breaker_open())
        mark = loading_mark(self._tokens.next())
        claimed: bool | None = None  # unknown: Redis down or failing
        smart = None
        try:
            if redis_up:
                timeout = self.settings.load_timeout_s
                with contextlib.suppress(RedisError):
                    plan = self._mark_plan(namespace, key, dkey, mark, timeout)
                    claimed, smart = self._run(plan)
            if claimed is False and demand:
                core.send_miss(miss, True)  # now, not after the wait (see the async client)
                deadline = self._join_deadline(time.perf_counter_ns())
                poll = self._poll_remote(dkey, deadline, True, own=False)
                joined = self._claimed_elsewhere(self._run(poll))
                if joined is not ABSENT:
                    return joined
        finally:
            core.send_miss(miss, False)
        core.stats.loads += 1
        started = time.perf_counter()
        try:
            value = loader()
        except BaseException:
            core.stats.load_errors += 1
            if claimed:  # readers elsewhere stop waiting for this load
                with contextlib.suppress(RedisError):
                    self._execute([self._release_command(dkey, mark)])
            raise
        load_s = time.perf_counter() - started
        flight.value = value
        flight.loaded.set()
        written = False
        try:
            if redis_up:
                ttl = core.load_ttl(namespace, smart)
                store = self._store_loaded(namespace, key, dkey, value, ttl, user, session, load_s)
                written = self._run(store)
        finally:
            if claimed and not written:  # the value did not replace the mark
                with contextlib.suppress(RedisError):
                    self._execute([self._release_command(dkey, mark)])
        return value

    # -- edge warms ------------------------------------------------------------------

    def _trigger_settled(self, armed: Armed) -> None:
        """Wait (bounded) for the outcome of a trigger read whose rule names this key."""
        with self._flights_lock:
            if armed.settled:
                return
            if armed.ready is None:
                armed.ready = threading.Event()
            ready = armed.ready
        ready.wait(self.settings.edge_join_wait_s)

    def _prefetch(self, namespace: str, trigger: str, armed: Armed | None = None) -> None:
        """``trigger`` missed: start loading what its rule names on the edge pool, then
        wake the reads that waited for this trigger (``armed``)."""
        try:
            targets = self._rule_targets(namespace, trigger, self._edge_queued < _EDGE_QUEUE_MAX)
            if targets is not None:
                self._launch(namespace, *targets)
        finally:
            if armed is not None:
                self._settle(armed)

    def _launch(
        self, namespace: str, guard: SyncGuardedLoader, loads: list[tuple[str, str]]
    ) -> None:
        """Start the edge loads of ``(key, data key)``s, each registered as a flight first."""
        for successor, dkey in loads:
            with self._flights_lock:
                if self._loading(dkey):
                    continue
                flight = self._flights[dkey] = _Flight(edge=True)
            self._submit(self._edge_task, namespace, successor, dkey, guard, flight, _now())

    def _user_session(self, namespace: str, user: str) -> None:
        """``user``'s session opened here: load what their user rule names, on the edge pool."""
        if self._edge_queued < _EDGE_QUEUE_MAX:
            self._submit(self._user_prefetch, namespace, user)

    def _user_prefetch(self, namespace: str, user: str) -> None:
        """Read ``user``'s rule (one HGET, on the edge pool) and start its loads."""
        try:
            (reply,) = self._execute([self._user_rule_command(namespace, user)])
        except RedisError:
            return  # rules are advice: the session goes on without them
        targets = self._user_targets(namespace, reply, self._edge_queued < _EDGE_QUEUE_MAX)
        if targets is not None:
            self._launch(namespace, *targets)

    def _follow(self) -> None:
        """Start the thread that loads the rule tables and follows the rule streams."""
        if self._follower is not None or self._closed:
            return
        with self._flights_lock:
            if self._follower is None:
                self._follower = threading.Thread(
                    target=self._follow_rules, name="cachecast-rules", daemon=True
                )
                self._follower.start()

    def refresh_rules(self) -> int:
        """Read the prefetch rules now (the table once, then new changes); the rules held."""
        return self._run(self._rules_plan())

    def _follow_rules(self) -> None:
        while not self._stop_following.is_set():
            pause = self.settings.rules_interval_s
            try:
                self.refresh_rules()
            except RedisError:
                pause = max(pause, 1.0)
            self._stop_following.wait(pause)

    def _submit(self, work: Callable[..., None], *args: Any) -> None:
        with self._flights_lock:
            if self._edge_pool is None:
                workers = max(
                    2, min(16, *(g.config.concurrency for g in self._edge_loaders.values()))
                )
                self._edge_pool = ThreadPoolExecutor(workers, thread_name_prefix="cachecast-edge")
            self._edge_queued += 1
        try:
            self._edge_pool.submit(self._counted, work, *args)
        except RuntimeError:  # closing
            self._edge_queued -= 1

    def _counted(self, work: Callable[..., None], *args: Any) -> None:
        try:
            work(*args)
        finally:
            self._edge_queued -= 1

    def _edge_task(
        self,
        namespace: str,
        key: str,
        dkey: str,
        guard: SyncGuardedLoader,
        flight: _Flight,
        started: int,
    ) -> None:
        try:
            flight.value = self._run(self._edge_fill(namespace, key, dkey, guard, flight, started))
        finally:
            flight.done_ns = _now()
            flight.loaded.set()

    def _flight_value(self, flight: _Flight) -> Any:
        if not flight.loaded.wait(self.settings.edge_join_wait_s):
            return ABSENT
        return flight.value

    def _publish(self, flight: _Flight, value: Any) -> None:
        flight.value = value
        flight.loaded.set()

    def _shared_poll(self, dkey: str, deadline: int, poll: bool) -> bytes | None:
        """The poll of ``dkey`` (see ``_poll_remote``) that this client's threads share:
        the first polls, the others wait for it."""
        with self._flights_lock:
            poller = self._remote_polls.get(dkey)
            polling = poller is None
            if poller is None:
                poller = self._remote_polls[dkey] = Future()
        if not polling:
            try:
                return poller.result(timeout=self.settings.edge_join_wait_s)
            except FutureTimeout:
                return None
        data = None
        try:
            data = self._run(self._poll_remote(dkey, deadline, poll))
        finally:
            with self._flights_lock:
                if self._remote_polls.get(dkey) is poller:
                    del self._remote_polls[dkey]
            poller.set_result(data)
        return data

    # -- early refresh ---------------------------------------------------------------

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
        if not self._refresh_due(dkey, data):
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
            self._run_flight(namespace, key, dkey, loader, user, session, flight, demand=False)
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
        set_ = self._set(
            namespace, key, value, ttl, tags, compress, priority, user_context, session_id
        )
        return self._run(set_)

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
from typing import Any, TypeAlias, cast

from redis.exceptions import RedisError

from pipeline.client.cached import CachedFunction, KeyBuilder, cached_decorator
from pipeline.client.connection import DEFAULT_MAX_CONNECTIONS, SyncRedisClient
from pipeline.client.core import (
    MISS,
    SLOW,
    Priority,
    UserContext,
    context_labels,
)
from pipeline.client.edge import ABSENT
from pipeline.client.emitter import ThreadedAccessEmitter
from pipeline.client.errors import CacheError, LoadTimeoutError
from pipeline.client.shared import STILL_LOADING, Armed, IntelligentBase, poll_pauses
from pipeline.client.sync.edge import SyncGuardedLoader, SyncLoaderFunc, sync_loaders
from pipeline.client.sync.manager import SyncRedisCacheManager
from pipeline.codec import CodecError, is_loading_mark, loading_mark
from pipeline.config import Settings
from pipeline.loaders import LoaderConfig, LoadError, LoadRefused

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
        """``get`` from its read on; a read the cache could not serve alone triggers its
        key's rule before it waits for anything (see the async client's ``_get_slow``)."""
        core = self._core
        trigger = enable_prediction  # the rule is still to fire
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
        if data is not None and is_loading_mark(data):
            if trigger:
                self._prefetch(namespace, key, armed)
                trigger = False
            joined = self._join_remote(
                namespace, key, dkey, started, user, session, enable_prediction
            )
            if joined is not ABSENT:
                return joined
            data = None
            elapsed = (time.perf_counter_ns() - started) // 1000
        if data is not None:
            value = core.read_hit(namespace, key, data, elapsed, user, session, enable_prediction)
            if value is SLOW:
                warmed = core.warm_pending(dkey, data) and self._consume_warm(namespace, key)
                value = core.record_hit(
                    namespace, key, data, elapsed, user, session, warmed, enable_prediction
                )
                if warmed and trigger:
                    self._prefetch(namespace, key, armed)
                    trigger = False
            if value is not MISS:
                if fallback_data is not None and dkey in self._loaded:
                    self._maybe_refresh(namespace, key, dkey, data, fallback_data, user, session)
                return value
        else:
            if trigger:  # first, so that two reads whose rules name each other never wait
                self._prefetch(namespace, key, armed)
                trigger = False
            reserved = self._reserved.get(dkey)
            if reserved is not None and not reserved.settled:
                self._trigger_settled(reserved)
            flight = self._flights.get(dkey)
            if (
                flight is not None
                and flight.edge
                and (not flight.done_ns or flight.done_ns >= started)
            ):
                joined = self._join_edge(
                    flight, namespace, key, started, user, session, enable_prediction
                )
                if joined is not ABSENT:
                    return joined
                # Our edge load did not happen (the key was claimed elsewhere): look again.
                joined = self._join_remote(
                    namespace, key, dkey, started, user, session, enable_prediction, poll=False
                )
                if joined is not ABSENT:
                    return joined
                elapsed = (time.perf_counter_ns() - started) // 1000
            core.record_miss(namespace, key, elapsed, user, session, enable_prediction)
        if trigger:
            self._prefetch(namespace, key, armed)
        if fallback_data is None:
            return None
        return self._load(namespace, key, dkey, fallback_data, started, user, session)

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
            timeout = self.settings.load_timeout_s
            if not flight.loaded.wait(timeout):
                with self._flights_lock:  # a hung load does not block its key: the next get loads
                    if self._flights.get(dkey) is flight:
                        del self._flights[dkey]
                raise LoadTimeoutError(f"the load of {namespace}:{key} took over {timeout:g} s")
            if flight.error is not None:
                raise flight.error
            if flight.value is not ABSENT:
                self._core.stats.load_joins += 1
                return flight.value
            with self._flights_lock:  # an edge load that loaded nothing: load it ourselves
                flight = self._flights[dkey] = _Flight()
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
        demand: bool = True,
    ) -> Any:
        try:
            flight.value = self._fill(namespace, key, dkey, loader, user, session, flight, demand)
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
    ) -> Any:
        """Load the value (the flight's joiners get it at once), then write it with its TTL.

        The key is marked as loading first, in the round trip that reads its smart
        TTL, so that other clients' reads wait for this load instead of fetching it;
        a demand load that finds the key taken waits for that load (see the async
        client).
        """
        core = self._core
        redis_up = not (core.down_until and core.breaker_open())
        mark = loading_mark(self._tokens.next())
        claimed: bool | None = None  # unknown: Redis down or failing
        smart = None
        if redis_up:
            timeout = self.settings.load_timeout_s
            with contextlib.suppress(RedisError):
                claimed, smart = self._run(self._mark_plan(namespace, key, dkey, mark, timeout))
        if claimed is False and demand:
            deadline = self._join_deadline(time.perf_counter_ns())
            joined = self._claimed_elsewhere(self._poll_remote(dkey, deadline, True, own=False))
            if joined is not ABSENT:
                return joined
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
                now = time.time()
                try:
                    plan = core.set_plan(
                        namespace, key, value, ttl, user=user, session=session, now=now
                    )
                    self._run(self._drive(plan, "set", namespace, (key,), user, session))
                except CacheError as error:
                    self.last_error = error
                else:
                    written = True
                    self._remember(dkey, int(now * 1000), now + ttl, load_s)
        finally:
            if claimed and not written:  # the value did not replace the mark
                with contextlib.suppress(RedisError):
                    self._execute([self._release_command(dkey, mark)])
        return value

    def _smart_ttl(self, namespace: str, key: str) -> int | None:
        try:
            (raw,) = self._execute([("HGET", self._core.smart_ttl_hash(namespace), key)])
        except RedisError:
            return None
        return self._core.parse_smart_ttl(raw)

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
            self._submit(self._edge_fill, namespace, successor, dkey, guard, flight, _now())

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

    def _edge_fill(
        self,
        namespace: str,
        key: str,
        dkey: str,
        guard: SyncGuardedLoader,
        flight: _Flight,
        started: int,
    ) -> None:
        try:
            flight.value = self._edge_load(namespace, key, dkey, guard, started, flight)
        finally:
            flight.done_ns = _now()
            flight.loaded.set()

    def _edge_load(
        self,
        namespace: str,
        key: str,
        dkey: str,
        guard: SyncGuardedLoader,
        started: int,
        flight: _Flight,
    ) -> Any:
        core = self._core
        mark = loading_mark(self._tokens.next())
        try:
            ttl = self._run(self._claim_plan(namespace, key, dkey, guard, mark))
        except RedisError:
            return ABSENT
        if ttl is None:
            return ABSENT
        try:
            value = guard.load(namespace, key)
            data = core.codec.encode(value, origin="edge").data
        except (LoadRefused, LoadError, CodecError) as exc:
            release = self._edge_failed(namespace, key, dkey, mark, exc, started)
            with contextlib.suppress(RedisError):
                self._execute([release])
            return ABSENT
        flight.value = value
        flight.loaded.set()
        try:
            written = self._run(self._write_plan(namespace, key, dkey, data, ttl, mark))
        except RedisError:
            written = False
        if self._write_settled(flight, written):  # a reader that joined took the warm
            with contextlib.suppress(RedisError):
                self._execute([("DEL", core.marker_key(namespace, key))])
        self._edge_written(namespace, key, data, ttl, written, started)
        return value

    def _join_edge(
        self,
        flight: _Flight,
        namespace: str,
        key: str,
        started: int,
        user: str | None,
        session: str | None,
        emit: bool,
    ) -> Any:
        if not flight.loaded.wait(self.settings.edge_join_wait_s) or flight.value is ABSENT:
            return ABSENT
        consumed = self._take_marker(flight)
        if consumed is None:  # the write landed: the marker is in Redis
            consumed = self._consume_warm(namespace, key)
        self._record_join(namespace, key, started, user, session, emit, 0, consumed)
        return flight.value

    def _join_remote(
        self,
        namespace: str,
        key: str,
        dkey: str,
        started: int,
        user: str | None,
        session: str | None,
        emit: bool,
        poll: bool = True,
    ) -> Any:
        """Another client's loading mark: wait for its load, as the async client does (the
        threads reading one key share one poll: the first polls, the others wait for it)."""
        flight = self._flights.get(dkey)
        if flight is not None and not flight.done_ns:
            if flight.edge:
                return self._join_edge(flight, namespace, key, started, user, session, emit)
            return ABSENT
        wait_s = self.settings.edge_join_wait_s
        with self._flights_lock:
            poller = self._remote_polls.get(dkey)
            polling = poller is None
            if poller is None:
                poller = self._remote_polls[dkey] = Future()
        if polling:
            data = None
            try:
                data = self._poll_remote(dkey, self._join_deadline(started), poll)
            finally:
                with self._flights_lock:
                    if self._remote_polls.get(dkey) is poller:
                        del self._remote_polls[dkey]
                poller.set_result(data)
        else:
            try:
                data = poller.result(timeout=wait_s)
            except FutureTimeout:
                data = None
        if data is None:
            return ABSENT
        value, edge = self._remote_value(namespace, key, data, started, user, session, emit)
        if edge:
            consumed = self._consume_warm(namespace, key)
            self._record_join(namespace, key, started, user, session, emit, len(data), consumed)
        return value

    def _poll_remote(self, dkey: str, deadline: int, poll: bool, own: bool = True) -> bytes | None:
        """Read ``dkey`` until its loading mark gives way to a value (see the async client)."""
        for pause in poll_pauses(poll):
            if time.perf_counter_ns() >= deadline:
                break
            if pause:
                time.sleep(pause)
            try:
                data = cast("bytes | None", self._execute([("GET", dkey)])[0])
            except RedisError:
                return None
            verdict = self._poll_verdict(dkey, data, own)
            if verdict is not STILL_LOADING:
                return cast("bytes | None", verdict)
        return None

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
        core = self._core
        core.data_key(namespace, key)
        user, session = context_labels(user_context, session_id)
        if ttl is None:
            core.ttl_for(None, priority)
            ttl = core.ttl_for(self._smart_ttl(namespace, key), priority)
        plan = core.set_plan(
            namespace,
            key,
            value,
            ttl,
            tags,
            compress,
            user=user,
            session=session,
            priority=priority,
        )
        (stored,) = self._run(self._drive(plan, "set", namespace, (key,), user, session))
        return stored

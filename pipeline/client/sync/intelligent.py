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
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import redis.cluster
from redis.exceptions import RedisError

from pipeline.client.cached import CachedFunction, KeyBuilder, cached_decorator
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
from pipeline.client.edge import (
    ABSENT,
    EDGE_CAS_SCRIPT,
    EDGE_WRITE_SCRIPT,
    RELEASE_SCRIPT,
    EdgeTokens,
    claim_expiry_ms,
    rule_to_apply,
    worth_loading,
)
from pipeline.client.emitter import ThreadedAccessEmitter
from pipeline.client.errors import CacheError, LoadTimeoutError
from pipeline.client.keys import rules_stream
from pipeline.client.rulebook import (
    RuleBook,
    bootstrap_commands,
    fell_behind,
    follow_commands,
    newest_id,
    parse_entries,
    table_rules,
)
from pipeline.client.sync.edge import SyncGuardedLoader, SyncLoaderFunc, sync_loaders
from pipeline.client.sync.manager import SyncRedisCacheManager
from pipeline.codec import FLAG_EDGE, CodecError, is_loading_mark, loading_mark
from pipeline.config import Settings
from pipeline.loaders import LoaderConfig, LoadError, LoadRefused

__all__ = ["SyncIntelligentCache", "SyncLoader"]

SyncLoader: TypeAlias = Callable[[], Any]
ErrorHook: TypeAlias = Callable[[CacheError], None]

_FLIGHTS_KEPT = 1024
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


class _Armed:
    """A read is out for a key whose rule names ``keys`` (see the async client's ``_Armed``)."""

    __slots__ = ("keys", "ready", "settled")

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.ready: threading.Event | None = None
        self.settled = False


class SyncIntelligentCache(SyncRedisCacheManager):
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
        self.edge_warming = self.settings.edge_warming if edge_warming is None else edge_warming
        self._edge_loaders: dict[str, SyncGuardedLoader] = sync_loaders(
            self.settings.loader_config(), loaders
        )
        self._edge_pool: ThreadPoolExecutor | None = None
        self._edge_queued = 0
        self._tokens = EdgeTokens()
        self._rulebook = RuleBook(self.settings.rules_max)
        #: Whether any rule is held (reads look their key's rule up only then).
        self._rules_held = False
        #: data key -> the trigger read out now whose rule names it (see _Armed).
        self._reserved: dict[str, _Armed] = {}
        self._rule_ids: dict[str, bytes] = {}
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

    def has_loader(self, namespace: str) -> bool:
        """Whether ``namespace`` has a loader for edge warms."""
        return namespace in self._edge_loaders

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
        started = time.perf_counter_ns()
        if core.down_until and core.breaker_open():
            error = core.rejected("get", namespace, (key,), user, session, enable_prediction)
            return self._serve_without_redis(
                error, namespace, key, dkey, fallback_data, started, user, session
            )
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
        armed: _Armed | None = None,
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
                return self._serve_without_redis(
                    error, namespace, key, dkey, fallback_data, started, user, session
                )
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
                elapsed = (time.perf_counter_ns() - started) // 1000
            core.record_miss(namespace, key, elapsed, user, session, enable_prediction)
        if trigger:
            self._prefetch(namespace, key, armed)
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
    ) -> Any:
        try:
            flight.value = self._fill(namespace, key, dkey, loader, user, session, flight)
        except BaseException as exc:
            flight.error = exc  # shared with the callers whose miss predates it
            raise
        finally:
            flight.done_ns = time.perf_counter_ns()
            flight.loaded.set()
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
        flight: _Flight,
    ) -> Any:
        """Load the value (the flight's joiners get it at once), then write it with its TTL."""
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
        flight.value = value
        flight.loaded.set()
        if redis_up:
            ttl = core.load_ttl(namespace, self._smart_ttl(namespace, key))
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

    # -- edge warms ------------------------------------------------------------------

    def _arm(self, namespace: str, trigger: str) -> _Armed | None:
        """Reserve the keys ``trigger``'s rule names while its read is out (None: no rule)."""
        rule = self._rulebook.get(namespace, trigger)
        if rule is None:
            return None
        base = self._core.base(namespace)
        armed = _Armed([base + successor for successor, _ in rule])
        with self._flights_lock:
            reserved = self._reserved
            for dkey in armed.keys:
                reserved[dkey] = armed
        return armed

    def _settle(self, armed: _Armed) -> None:
        """The trigger's outcome is known (its rule fired, or will not): wake who waits."""
        if armed.settled:
            return
        with self._flights_lock:
            armed.settled = True
            reserved = self._reserved
            for dkey in armed.keys:
                if reserved.get(dkey) is armed:
                    del reserved[dkey]
            ready = armed.ready
        if ready is not None:
            ready.set()

    def _trigger_settled(self, armed: _Armed) -> None:
        """Wait (bounded) for the outcome of a trigger read whose rule names this key."""
        with self._flights_lock:
            if armed.settled:
                return
            if armed.ready is None:
                armed.ready = threading.Event()
            ready = armed.ready
        ready.wait(self.settings.edge_join_wait_s)

    def _prefetch(self, namespace: str, trigger: str, armed: _Armed | None = None) -> None:
        """``trigger`` missed: start loading what its rule names on the edge pool, then
        wake the reads that waited for this trigger (``armed``)."""
        try:
            if (
                not self.edge_warming
                or namespace not in self._edge_loaders
                or self._edge_queued >= _EDGE_QUEUE_MAX
                or (self._core.down_until and self._core.breaker_open())
            ):
                return
            core = self._core
            self._follow()
            rule = rule_to_apply(core, self._rulebook, namespace, trigger)
            if rule is None:
                return
            guard = self._edge_loaders[namespace]
            for successor, dkey in worth_loading(
                core, namespace, rule, self._loading, guard.available
            ):
                with self._flights_lock:
                    if self._loading(dkey):
                        continue
                    flight = self._flights[dkey] = _Flight(edge=True)
                self._submit(self._edge_fill, namespace, successor, dkey, guard, flight, _now())
        finally:
            if armed is not None:
                self._settle(armed)

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
        prefix = self._core.prefix
        for namespace in list(self._edge_loaders):
            stream = rules_stream(prefix, namespace)
            if stream not in self._rule_ids:
                self._load_rule_table(namespace, stream)
            oldest, reply = self._execute(
                follow_commands(prefix, namespace, self._rule_ids[stream], 1_000)
            )
            if fell_behind(oldest, self._rule_ids[stream]):
                self._core.stats.rule_resyncs += 1  # changes were trimmed unread
                self._load_rule_table(namespace, stream)
                continue
            last, changes = parse_entries(reply)
            if last is not None:
                self._rule_ids[stream] = last
                self._rulebook.apply(namespace, changes)
                self._rules_held = self.edge_warming and len(self._rulebook) > 0
        return len(self._rulebook)

    def _load_rule_table(self, namespace: str, stream: str) -> None:
        """Hold exactly the namespace's rule table; follow its stream from the newest entry."""
        replies = self._execute(bootstrap_commands(self._core.prefix, namespace))
        self._rule_ids[stream] = newest_id(replies[0])
        self._rulebook.replace(namespace, table_rules(replies[1:]))
        self._rules_held = self.edge_warming and len(self._rulebook) > 0

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

    def _loading(self, dkey: str) -> bool:
        flight = self._flights.get(dkey)
        return flight is not None and not flight.done_ns

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
            pipe = self._redis.pipeline(transaction=False)
            pipe.set(dkey, mark, nx=True, px=claim_expiry_ms(guard.config.timeout))
            pipe.hget(core.smart_ttl_hash(namespace), key)
            claimed, smart = pipe.execute()
        except RedisError:
            return ABSENT
        if not claimed:
            core.stats.edge_skipped += 1
            return ABSENT
        core.stats.edge_issued += 1
        ttl = core.load_ttl(namespace, core.parse_smart_ttl(smart))
        try:
            value = guard.load(namespace, key)
            data = core.codec.encode(value, origin="edge").data
        except (LoadRefused, LoadError, CodecError) as exc:
            if isinstance(exc, LoadRefused):
                core.stats.edge_refused += 1
                core.stats.edge_issued -= 1  # the origin was not asked after all
            else:
                elapsed = (time.perf_counter_ns() - started) // 1000
                core.record_edge_warm(namespace, key, False, 0, None, elapsed)
            with contextlib.suppress(RedisError):
                self._redis.eval(RELEASE_SCRIPT, 1, dkey, mark)
            return ABSENT
        flight.value = value
        flight.loaded.set()
        try:
            if isinstance(self._redis, redis.cluster.RedisCluster):
                written = bool(self._redis.eval(EDGE_CAS_SCRIPT, 1, dkey, data, ttl, mark))
                if written:
                    self._redis.set(core.marker_key(namespace, key), b"1", ex=ttl)
            else:
                marker = core.marker_key(namespace, key)
                written = bool(
                    self._redis.eval(EDGE_WRITE_SCRIPT, 2, dkey, marker, data, ttl, mark)
                )
        except RedisError:
            written = False
        with self._flights_lock:
            flight.write_settled = True
            drop_marker = written and flight.taken
        if drop_marker:  # a reader joined before the write and took the warm
            with contextlib.suppress(RedisError):
                self._redis.delete(core.marker_key(namespace, key))
        elapsed = (time.perf_counter_ns() - started) // 1000
        core.record_edge_warm(namespace, key, written, len(data) if written else 0, ttl, elapsed)
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
        with self._flights_lock:
            if flight.write_settled:
                consumed: bool | None = None  # the marker is in Redis: the first DEL takes it
            else:
                consumed, flight.taken = not flight.taken, True
        self._count_join(namespace, key, started, user, session, emit, 0, consumed)
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
    ) -> Any:
        """Another client's loading mark: wait (polling) for its load, as the async client does."""
        flight = self._flights.get(dkey)
        if flight is not None and not flight.done_ns:
            if flight.edge:
                return self._join_edge(flight, namespace, key, started, user, session, emit)
            return ABSENT
        deadline = started + int(self.settings.edge_join_wait_s * 1e9)
        pause = 0.0005
        while time.perf_counter_ns() < deadline:
            time.sleep(pause)
            pause = min(pause * 2, 0.005)
            try:
                data: bytes | None = self._redis.execute_command("GET", dkey)  # type: ignore[no-untyped-call]
            except RedisError:
                return ABSENT
            if data is None:
                return ABSENT
            if is_loading_mark(data):
                continue
            try:
                value = self._core.decode(data)
            except CodecError:
                return ABSENT
            if len(data) > 3 and data[3] & FLAG_EDGE:
                self._count_join(namespace, key, started, user, session, emit, len(data))
            else:
                elapsed = (time.perf_counter_ns() - started) // 1000
                self._core.record_hit(namespace, key, data, elapsed, user, session, False, emit)
            return value
        return ABSENT

    def _count_join(
        self,
        namespace: str,
        key: str,
        started: int,
        user: str | None,
        session: str | None,
        emit: bool,
        size: int,
        consumed: bool | None = None,
    ) -> None:
        """Count a read served by a load in flight (see the async client's ``_count_join``)."""
        core = self._core
        if consumed is None:
            consumed = self._consume_warm(namespace, key)
        if consumed:
            core.stats.warmed_hits += 1
            core.stats.edge_hits += 1
        elapsed = (time.perf_counter_ns() - started) // 1000
        core.record_join(namespace, key, size, elapsed, user, session, emit, consumed)

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
        (stored,) = self._drive(plan, "set", namespace, (key,), user, session)
        return stored

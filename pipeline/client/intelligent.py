"""IntelligentCache: read-through caching with single-flight loads and smart TTLs (asyncio).

``get(namespace, key, fallback_data=loader)`` returns the cached value, or on a
miss calls ``loader`` and stores what it returns:

* **single-flight**: however many callers miss the same key at once, the
  loader runs once and they all get its value (also a caller whose GET was
  answered just before the value landed joins the finished load instead of
  starting another);
* **smart TTL**: the stored value expires after the TTL the pipeline published
  for the key at ``{prefix}#ttl:{ns}:{key}`` (read in the round trip that claims
  the key before the loader runs), else ``REDIS_DEFAULT_TTL``, scaled by ``priority``;
* **early refresh** (XFetch): for values this client loaded, a hit close to
  expiry may start a background reload, with a probability that grows as expiry
  nears and with the loader's duration, so a hot key is replaced before it
  expires instead of stampeding when it does;
* **Redis down**: the value is served from the loader (still single-flight, so
  the origin is not stampeded either) and the error is counted, emitted,
  logged and passed to ``on_error``; without a loader the error is raised;
* **edge warms**: when a key misses (or a warmed value is read for the first
  time), the client reads that key's prefetch rule, published by the pipeline,
  and loads the keys it names in the background through the namespace's loader
  (``CACHECAST_LOADERS``, as the worker, or :meth:`IntelligentCache.register_loader`),
  writing them ``SET NX``-style with the warm marker. The caller's own request
  never waits for it. A read of a key whose edge load is in flight joins that
  load, here or (through a loading mark in Redis) on any other client;
* **events**: each access carries the caller's user and session and, on the
  first read of a value the warmer wrote, ``warmed=true`` with the warm's path
  (``worker`` or ``edge``); a read that joined an edge load in flight is a hit
  that says ``joined``; one that joined an application load (here or on another
  client) is a miss that says ``joined``, counted in ``load_joins``. The event of a
  miss that loads its key itself waits for the load's claim (one round trip): a
  claim that finds another client's load under way joins it, and says so at once
  (should that load fail, the read then loads the key itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import time
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from redis.exceptions import RedisError

from pipeline.client.cached import CachedFunction, KeyBuilder, cached_decorator
from pipeline.client.connection import DEFAULT_MAX_CONNECTIONS, AsyncRedisClient
from pipeline.client.core import (
    SLOW,
    DeferredMiss,
    Priority,
    UserContext,
    context_labels,
)
from pipeline.client.edge import ABSENT, LoaderSpec, guarded, namespace_loaders
from pipeline.client.emitter import AccessEmitter
from pipeline.client.errors import CacheError, LoadTimeoutError
from pipeline.client.keys import validate_key
from pipeline.client.manager import RedisCacheManager
from pipeline.client.shared import Armed, IntelligentBase, joinable
from pipeline.codec import loading_mark
from pipeline.config import Settings
from pipeline.loaders import GuardedLoader, LoaderConfig
from schemas.contracts import MAX_KEY_LENGTH, MAX_LABEL_LENGTH

__all__ = ["IntelligentCache", "Loader"]

#: A loader: an async function (or a plain function) that returns the value.
Loader: TypeAlias = Callable[[], Awaitable[Any] | Any]
ErrorHook: TypeAlias = Callable[[CacheError], None]

_clock = time.perf_counter_ns
_crc32 = zlib.crc32

#: Most edge-warm tasks (rule reads and loads) one client runs at once.
_EDGE_TASKS_MAX = 4096


@dataclass(slots=True)
class _Flight:
    """One load of a key by this client.

    ``value`` resolves as soon as the loader returns (or fails): readers that
    join the load wait for that, never for the write to Redis that ``task``
    goes on with (a hung Redis must not hold back a value already loaded); the
    reader that started the load waits for the task, so its value is cached
    when its get returns. ``done_ns`` is set when the task has finished.

    An edge load's warm marker goes to its first reader: one that joins before
    the write lands takes it here (``taken``), and the write then drops the
    marker; once ``write_settled``, the marker is in Redis for readers to take.
    """

    value: asyncio.Future[Any]
    task: asyncio.Task[Any] | None = None
    done_ns: int = 0
    edge: bool = False
    taken: bool = False
    write_settled: bool = False


def _claim_outcome(
    claim: asyncio.Task[tuple[bool | None, int | None]],
) -> tuple[bool | None, int | None]:
    """A claim's (claimed, smart TTL); (None, None) while it is unsettled or if it failed."""
    if claim.done() and not claim.cancelled() and claim.exception() is None:
        return claim.result()
    return None, None


class IntelligentCache(RedisCacheManager, IntelligentBase[GuardedLoader, Loader]):
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
    loaders
        Namespace loaders for edge warms, ``{namespace: func(namespace, key)}`` (or a
        :class:`~pipeline.loaders.Loader`), added to those of ``CACHECAST_LOADERS``.
    edge_warming
        Apply prefetch rules (default: ``CACHECAST_EDGE_WARMING``, on). Off, or in a
        namespace without a loader, this client never loads anything by itself.

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
        config: Settings | Mapping[str, Any] | None = None,
        *,
        redis: AsyncRedisClient | None = None,
        emitter: AccessEmitter | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        breaker_cooldown: float | None = None,
        early_refresh: bool = True,
        refresh_beta: float = 1.0,
        tracked_keys: int = 10_000,
        on_error: ErrorHook | None = None,
        loaders: Mapping[str, LoaderSpec] | None = None,
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
        #: The longest a finished load waits for its claim (and smart TTL): the time
        #: after which Redis counts as hung.
        settings = self.settings
        self._claim_wait_s = (settings.redis_stall_ms or settings.redis_socket_timeout * 1000) / 1e3
        # Code between two awaits runs alone on the loop: the flights need no lock.
        self._flights_lock = contextlib.nullcontext()
        self._sleep = asyncio.sleep
        self._refreshes: set[asyncio.Task[Any]] = set()
        self._edge_loaders = namespace_loaders(self.settings.loader_config(), loaders)
        self._edge_tasks: set[asyncio.Task[Any]] = set()
        #: data key -> the poll that readers of a key loading elsewhere share.
        self._remote_polls: dict[str, asyncio.Task[bytes | None]] = {}
        self._follower: asyncio.Task[None] | None = None
        self._stop_following = asyncio.Event()

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
        With this client the decorated function is awaited; a blocking
        function runs in a worker thread on a miss.
        """
        return cached_decorator(self, namespace, key, ttl, loader_config, asynchronous=True)

    def register_loader(
        self, namespace: str, loader: LoaderSpec, config: LoaderConfig | None = None
    ) -> None:
        """Load ``namespace``'s keys with ``loader`` for edge warms, behind ``config``'s guards.

        ``loader`` is ``func(namespace, key)`` (async, or blocking: it then runs in
        a thread), a :class:`~pipeline.loaders.Loader` or a guarded one. The guards
        (concurrent loads, loads per second, timeout, circuit breaker) are the edge
        warms' budget for this namespace.
        """
        self._core.base(namespace)  # validates the namespace
        self._edge_loaders[namespace] = guarded(loader, config)

    async def start(self) -> None:
        """Start as the manager does, and begin following the prefetch rules."""
        await super().start()
        if self._edge_loaders:
            self._follow()

    async def close(self, timeout: float = 5.0) -> None:
        """Wait for running background refreshes and edge warms, then close as the manager does."""
        if self._follower is not None:
            self._stop_following.set()
            _, late = await asyncio.wait({self._follower}, timeout=timeout)
            for task in late:
                task.cancel()
        deadline = time.monotonic() + timeout
        # Until none is left: a load cancelled here starts the release of its mark.
        while background := self._refreshes | self._edge_tasks:
            wait = max(0.0, deadline - time.monotonic())
            _, late = await asyncio.wait(background, timeout=wait)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        for loader in self._edge_loaders.values():
            await loader.loader.close()
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
        # The hit path (its read, CacheCore.read_hit) is what
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
        if user is not None and enable_prediction and self._session_opens(namespace, user):
            self._user_session(namespace, user)
        started = _clock()
        if core.down_until and core.breaker_open():
            error = core.rejected("get", namespace, (key,), user, session, enable_prediction)
            loader = self._outage_loader(error, fallback_data)
            return await self._load(namespace, key, dkey, loader, started, user, session)
        # The loads this key's prefetch rule names are reserved before its read is
        # sent: a successor asked for while that read is on its way joins them.
        armed = self._arm(namespace, key) if enable_prediction and self._rules_held else None
        try:
            data = await self._read(dkey, started)
        except BaseException as exc:
            if armed is not None:
                self._settle(armed)
            if not isinstance(exc, RedisError):
                raise
            try:
                data = await self._get_after_error(
                    exc, namespace, key, dkey, started, user, session, enable_prediction
                )
            except CacheError as error:
                loader = self._outage_loader(error, fallback_data)
                return await self._load(namespace, key, dkey, loader, started, user, session)
            armed = None
        elapsed = (_clock() - started) // 1000
        if data is not None:
            value = core.read_hit(namespace, key, data, elapsed, user, session, enable_prediction)
            if value is not SLOW:  # application-written, uncompressed: the common hit
                if armed is not None:
                    self._settle(armed)  # a hit no warm served: no trigger
                if fallback_data is not None and dkey in self._loaded:
                    self._maybe_refresh(namespace, key, dkey, data, fallback_data, user, session)
                return value
        try:
            return await self._run(
                self._slow_get(
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
            )
        finally:
            if armed is not None:
                self._settle(armed)  # no trigger after all, or an error

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
        miss: DeferredMiss | None = None,
    ) -> Any:
        """Join the key's load in flight, or start one; ``miss`` is this read's event,
        sent once whether it joined a load is known."""
        core = self._core
        try:
            flight = self._flights.get(dkey)
            if joinable(flight, missed_ns):
                value = await asyncio.shield(flight.value)
                if value is not ABSENT:
                    core.stats.load_joins += 1
                    core.send_miss(miss, True)
                    return value
            flight = self._start_flight(namespace, key, dkey, loader, user, session, miss=miss)
            # The reader that started the load returns once the value is cached (read
            # your writes); readers that joined it return as soon as it is loaded.
            assert flight.task is not None
            return await asyncio.shield(flight.task)
        finally:
            core.send_miss(miss, False)  # (unless sent: a failed or cancelled read)

    def _start_flight(
        self,
        namespace: str,
        key: str,
        dkey: str,
        loader: Loader,
        user: str | None,
        session: str | None,
        demand: bool = True,
        miss: DeferredMiss | None = None,
    ) -> _Flight:
        loop = asyncio.get_running_loop()
        flight = _Flight(loop.create_future())
        task = loop.create_task(
            self._fill(namespace, key, dkey, loader, user, session, flight.value, demand, miss)
        )
        flight.task = task
        self._flights[dkey] = flight
        task.add_done_callback(functools.partial(self._landed, dkey, flight))
        return flight

    def _landed(self, dkey: str, flight: _Flight, task: asyncio.Task[Any]) -> None:
        settled = flight.value
        if task.cancelled():
            settled.cancel()
            if self._flights.get(dkey) is flight:
                del self._flights[dkey]
            return
        # A failed load is shared like a successful one with the callers whose
        # miss predates it (and its exception is marked as retrieved).
        error = task.exception()
        if not settled.done():
            if error is not None:
                settled.set_exception(error)
            else:
                settled.set_result(task.result())
        if not settled.cancelled():
            settled.exception()
        flight.done_ns = time.perf_counter_ns()
        self._forget_landed()

    async def _fill(
        self,
        namespace: str,
        key: str,
        dkey: str,
        loader: Loader,
        user: str | None,
        session: str | None,
        settled: asyncio.Future[Any],
        demand: bool,
        miss: DeferredMiss | None = None,
    ) -> Any:
        """Load the value (``settled`` gets it at once), then write it with its TTL.

        The key is claimed first with a loading mark, in the round trip that reads
        its smart TTL: while the loader runs, other clients' reads of the key wait
        for this load instead of fetching it again, and the value's write replaces
        the mark. A claim that finds the key taken (another client's load began
        after our read) waits for that load's value instead of asking the origin;
        a claim Redis is slow to answer is not waited out. An early refresh
        (``demand`` false) replaces the value it finds, so it never waits. The
        reader's ``miss`` event goes out once the claim has told which it is.
        """
        core = self._core
        redis_up = not (core.down_until and core.breaker_open())
        mark = loading_mark(self._tokens.next())
        claim = None
        claimed: bool | None = None  # unknown: Redis down, failing or slow
        smart = None
        try:
            if redis_up:
                claim = asyncio.get_running_loop().create_task(
                    self._claim_load(namespace, key, dkey, mark)
                )
                await asyncio.wait({claim}, timeout=self._claim_wait_s)
                claimed, smart = _claim_outcome(claim)
            if claimed is False and demand:
                # Sent now, not after the wait: a read's event held for a whole load
                # elsewhere would come late to the worker (whose reorder hold grows with
                # lateness). If that load fails, this read loads the key after all.
                core.send_miss(miss, True)
                deadline = self._join_deadline(_clock())
                joined = self._claimed_elsewhere(
                    await self._run(self._poll_remote(dkey, deadline, True, own=False))
                )
                if joined is not ABSENT:
                    return joined
        finally:
            core.send_miss(miss, False)
        core.stats.loads += 1
        started = time.perf_counter()
        timeout = self.settings.load_timeout_s
        try:
            value = loader()
            if inspect.isawaitable(value):
                try:
                    value = await asyncio.wait_for(value, timeout)
                except TimeoutError:
                    raise LoadTimeoutError(
                        f"loading {namespace}:{key} took over {timeout:g} s"
                    ) from None
        except BaseException:
            core.stats.load_errors += 1
            if claim is not None:  # readers elsewhere stop waiting for this load
                self._background(self._release_claim(claim, dkey, mark))
            raise
        load_s = time.perf_counter() - started
        if not settled.done():
            settled.set_result(value)
        written = False
        try:
            if claimed is None and claim is not None:  # a slow claim may have landed since
                smart = _claim_outcome(claim)[1]
            ttl = core.load_ttl(namespace, smart)
            if redis_up:
                written = await self._run(
                    self._store_loaded(namespace, key, dkey, value, ttl, user, session, load_s)
                )
        finally:
            if claim is not None and not written:  # the value did not replace the mark
                self._background(self._release_claim(claim, dkey, mark))
        return value

    async def _claim_load(
        self, namespace: str, key: str, dkey: str, mark: bytes
    ) -> tuple[bool | None, int | None]:
        """Mark the key as loading here, and read its smart TTL (see ``_mark_plan``);
        (None, None) when Redis failed."""
        timeout = self.settings.load_timeout_s
        try:
            return await self._run(self._mark_plan(namespace, key, dkey, mark, timeout))
        except RedisError:
            return None, None

    async def _release_claim(
        self, claim: asyncio.Task[tuple[bool | None, int | None]], dkey: str, mark: bytes
    ) -> None:
        """Delete our loading mark once its claim is settled (if it is still ours)."""
        if not claim.done():
            await asyncio.wait({claim})
        # A cancelled claim may have landed: the release deletes only our own mark.
        if claim.cancelled() or claim.exception() is not None or claim.result()[0]:
            with contextlib.suppress(RedisError):
                await self._execute([self._release_command(dkey, mark)])

    # -- edge warms ------------------------------------------------------------------

    async def _trigger_settled(self, armed: Armed) -> None:
        """Wait (bounded) for the outcome of a trigger read whose rule names this key."""
        if armed.ready is None:
            armed.ready = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(armed.ready.wait(), self.settings.edge_join_wait_s)

    def _prefetch(self, namespace: str, trigger: str, armed: Armed | None = None) -> None:
        """``trigger`` missed: start loading what its prefetch rule names (never waited for).

        The rule is looked up in memory (:class:`~pipeline.client.rulebook.RuleBook`),
        and each load is registered as a flight before this returns, so a read of
        one of those keys from now on joins its load; then the reads that waited
        for this trigger (``armed``) are woken.
        """
        try:
            room = len(self._edge_tasks) < _EDGE_TASKS_MAX
            targets = self._rule_targets(namespace, trigger, room)
            if targets is not None:
                self._launch(namespace, *targets)
        finally:
            if armed is not None:
                self._settle(armed)

    def _launch(self, namespace: str, guard: GuardedLoader, loads: list[tuple[str, str]]) -> None:
        """Start the edge loads of ``(key, data key)``s, each registered as a flight first."""
        loop = asyncio.get_running_loop()
        for successor, dkey in loads:
            flight = _Flight(loop.create_future(), edge=True)
            self._flights[dkey] = flight
            self._start_edge(namespace, successor, dkey, guard, flight)

    def _user_session(self, namespace: str, user: str) -> None:
        """``user``'s session opened here: load what their user rule names, in the background."""
        if len(self._edge_tasks) < _EDGE_TASKS_MAX:
            self._background(self._user_prefetch(namespace, user))

    async def _user_prefetch(self, namespace: str, user: str) -> None:
        """Read ``user``'s rule (one HGET, never waited for by a caller) and start its loads."""
        try:
            (reply,) = await self._execute([self._user_rule_command(namespace, user)])
        except RedisError:
            return  # rules are advice: the session goes on without them
        targets = self._user_targets(namespace, reply, len(self._edge_tasks) < _EDGE_TASKS_MAX)
        if targets is not None:
            self._launch(namespace, *targets)

    def _start_edge(
        self, namespace: str, key: str, dkey: str, guard: GuardedLoader, flight: _Flight
    ) -> None:
        fill = self._edge_fill(namespace, key, dkey, guard, flight, _clock())
        task = self._background(self._run(fill))
        flight.task = task
        task.add_done_callback(functools.partial(self._landed, dkey, flight))

    def _background(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(work)
        self._edge_tasks.add(task)
        task.add_done_callback(self._edge_tasks.discard)
        return task

    async def refresh_rules(self) -> int:
        """Read the prefetch rules now (the table once, then new changes); the rules held.

        The client does this by itself every ``CACHECAST_RULES_INTERVAL_S`` once it
        has started (or seen its first miss); call it to have rules before the first
        request.
        """
        return await self._run(self._rules_plan())

    def _follow(self) -> None:
        if self._follower is None and not self._closed and self.edge_warming:
            self._stop_following = asyncio.Event()
            self._follower = asyncio.get_running_loop().create_task(self._follow_rules())

    async def _follow_rules(self) -> None:
        """Load each namespace's rule table once, then follow its rule stream.

        Stopped by :meth:`close` between two reads, never in the middle of one (a
        command cancelled half-way can leave its connection waiting).
        """
        stop = self._stop_following
        while not stop.is_set():
            pause = self.settings.rules_interval_s
            try:
                await self.refresh_rules()
            except RedisError:
                pause = max(pause, 1.0)  # Redis down: rules wait; the cache path does not
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)

    def _flight_value(self, flight: _Flight) -> Awaitable[Any]:
        return asyncio.shield(flight.value)

    def _publish(self, flight: _Flight, value: Any) -> None:
        if not flight.value.done():
            flight.value.set_result(value)

    async def _shared_poll(self, dkey: str, deadline: int, poll: bool) -> bytes | None:
        """The poll of ``dkey`` (see ``_poll_remote``) that this client's readers share."""
        poller = self._remote_polls.get(dkey)
        if poller is None:
            poller = self._background(self._run(self._poll_remote(dkey, deadline, poll)))
            self._remote_polls[dkey] = poller
            poller.add_done_callback(functools.partial(self._poll_done, dkey))
        return await asyncio.shield(poller)

    def _poll_done(self, dkey: str, poller: asyncio.Task[bytes | None]) -> None:
        if self._remote_polls.get(dkey) is poller:
            del self._remote_polls[dkey]

    # -- early refresh ---------------------------------------------------------------

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
        if not self._refresh_due(dkey, data):
            return
        flight = self._flights.get(dkey)
        if flight is not None and not flight.done_ns:
            return
        del self._loaded[dkey]
        self._core.stats.early_refreshes += 1
        task = self._start_flight(namespace, key, dkey, loader, user, session, demand=False).task
        assert task is not None
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
        Beyond the TTL, a high-priority key is evicted last among keys read as often
        under an LFU policy, and edge warms start high-priority keys first and low
        ones last (see :meth:`CacheCore.set_plan`).
        """
        set_ = self._set(
            namespace, key, value, ttl, tags, compress, priority, user_context, session_id
        )
        return await self._run(set_)

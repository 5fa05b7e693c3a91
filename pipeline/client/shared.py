"""What the asyncio and the blocking cache clients share: state, decisions, documents.

:class:`~pipeline.client.RedisCacheManager` and
:class:`~pipeline.client.IntelligentCache` (asyncio) and their blocking twins in
:mod:`pipeline.client.sync` differ in how they do I/O and how they wait, and
that is more than ``await``. The asyncio client relies on its event loop's one
thread: a flight is a future, background work is a task, the Redis stall
watchdog is a loop timer, and nothing on its read path takes a lock. The
blocking client guards its flights with a lock, runs edge loads and early
refreshes on thread pools, and bounds every wait, because a blocking loader
cannot be cancelled. So each twin keeps its own waits (a flight's value, the
poll its readers share, a trigger read's outcome, a pause, the single-flight
load) and its public methods, and everything else is written once: here (the
clients' state; the edge-warm, join and early-refresh decisions; the
procedures both twins run through :mod:`pipeline.client.driver`, which are a
get's slow path, the joins, the remote poll, the edge warm, the write of a
loaded value and ``set``; the health and statistics documents), and in the
sans-I/O plans (:mod:`pipeline.client.core` for the cache operations, the edge
claim and write plans below, the rule-following plan). ``tests/unit/client/test_twins.py``
checks that the two public APIs stay in step.
"""

from __future__ import annotations

import contextlib
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Generic, Protocol, TypeGuard, TypeVar, cast

from redis.crc import key_slot
from redis.exceptions import RedisError

from pipeline.client.core import (
    MISS,
    CacheCore,
    Command,
    DeferredMiss,
    Plan,
    Priority,
    UserContext,
    context_labels,
    evict_oldest,
    summarize_info,
    xfetch_due,
)
from pipeline.client.driver import Procedure
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
from pipeline.client.errors import CacheError
from pipeline.client.keys import USER_RULES, rules_hash, rules_stream
from pipeline.client.rulebook import (
    RuleBook,
    bootstrap_commands,
    fell_behind,
    follow_commands,
    newest_id,
    parse_entries,
    table_rules,
)
from pipeline.codec import (
    FLAG_EDGE,
    CodecError,
    envelope_flags,
    is_loading_mark,
    loading_mark,
    written_ms,
)
from pipeline.config import Settings, cache_settings
from pipeline.loaders import LoaderConfig, LoadError, LoadRefused
from pipeline.prefetch import decode_rule

__all__ = ["STILL_LOADING", "Armed", "IntelligentBase", "ManagerBase", "poll_pauses"]


class _StillLoading:
    __slots__ = ()

    def __repr__(self) -> str:
        return "STILL_LOADING"


#: A poll's read found the loading mark of a load still under way: read again.
STILL_LOADING: Any = _StillLoading()


def poll_pauses(poll: bool) -> Iterator[float]:
    """The pause before each read of a poll for another load's value: none before
    the first unless ``poll`` (the caller has just read the key), then from 0.5 ms,
    doubling, to at most 5 ms.

    >>> from itertools import islice
    >>> list(islice(poll_pauses(True), 6)), list(islice(poll_pauses(False), 3))
    ([0.0005, 0.001, 0.002, 0.004, 0.005, 0.005], [0.0, 0.0005, 0.001])
    """
    pause = 0.0005 if poll else 0.0
    while True:
        yield pause
        pause = min(pause * 2, 0.005) if pause else 0.0005


T = TypeVar("T")
RedisT = TypeVar("RedisT")
EmitterT = TypeVar("EmitterT")
GuardT = TypeVar("GuardT", bound="_Guard")
LoaderT = TypeVar("LoaderT")

#: Rule-stream entries read per namespace and poll.
RULE_ENTRIES_READ = 1_000
#: A finished load is reused by callers whose GET was sent before it completed.
FLIGHTS_KEPT = 1024


def _slot(key: str) -> int:
    return key_slot(key.encode("utf-8", "surrogateescape"))


class _Guard(Protocol):
    """A namespace loader behind its guards (asyncio or blocking)."""

    @property
    def config(self) -> LoaderConfig: ...

    def available(self) -> bool: ...

    def load(self, namespace: str, key: str) -> Any: ...


class _Wakeable(Protocol):
    def set(self) -> None: ...


class _Flight(Protocol):
    """What the shared code reads and writes of either client's flight."""

    done_ns: int
    edge: bool
    taken: bool
    write_settled: bool


_FlightT = TypeVar("_FlightT", bound=_Flight)


def joinable(flight: _FlightT | None, since_ns: int) -> TypeGuard[_FlightT]:
    """Whether a read that missed at ``since_ns`` takes its value from ``flight``: it is
    in flight, or ended after the read began (its value is newer than the miss)."""
    return flight is not None and (not flight.done_ns or flight.done_ns >= since_ns)


class ManagerBase(ABC, Generic[RedisT, EmitterT]):
    """The state and documents of a cache manager; the twins add the I/O."""

    #: The asyncio client's read line (client/reads.py), when it has one.
    _reads: Any = None

    def __init__(
        self,
        config: Settings | Mapping[str, Any] | None,
        redis: RedisT | None,
        emitter: EmitterT | None,
        breaker_cooldown: float | None,
        *,
        connect: Callable[[Settings], RedisT],
        cluster_type: type,
        new_emitter: Callable[[Settings], EmitterT],
    ) -> None:
        self.settings = cache_settings(config)
        self._owns_redis = redis is None
        self._redis: RedisT = redis if redis is not None else connect(self.settings)
        self.cluster = isinstance(self._redis, cluster_type)
        self._owns_emitter = emitter is None and self.settings.emitter_enabled
        self.emitter: EmitterT | None = (
            emitter
            if emitter is not None
            else new_emitter(self.settings)
            if self._owns_emitter
            else None
        )
        self._core = CacheCore(
            self.settings,
            None,
            slot_of=_slot if self.cluster else None,
            breaker_cooldown=breaker_cooldown,
        )
        self._emitter_started = False
        if self.emitter is not None:
            self._core.emit = self._first_emit
        self._closed = False

    @property
    def redis(self) -> RedisT:
        """The underlying redis-py client."""
        return self._redis

    @property
    def core(self) -> CacheCore:
        """Keys, codec and counters, shared with the intelligent cache built on this client."""
        return self._core

    @abstractmethod
    def _first_emit(self, *args: Any, **kwargs: Any) -> None:
        """Start the emitter on the first event, then hand the event to it."""

    @abstractmethod
    def _execute(self, commands: list[Command]) -> Any:
        """Send one batch of a plan (the asyncio twin returns an awaitable)."""

    @abstractmethod
    def _consume_warm(self, namespace: str, key: str) -> Any:
        """Delete the warm marker (see the twins): True for the first reader only."""

    def _io(self, request: Any) -> Any:
        """A procedure's request (see :mod:`pipeline.client.driver`): a command batch
        for :meth:`_execute`, or a step: one of this twin's I/O methods, called."""
        if type(request) is list:
            return self._execute(request)
        method, args = request
        return method(*args)

    def _drive(
        self,
        plan: Plan[T],
        op: str,
        namespace: str | None,
        keys: Sequence[str] = (),
        user: str | None = None,
        session: str | None = None,
        emit: bool = True,
    ) -> Procedure[T]:
        """A cache operation's plan, refused while the breaker is open, failures reported."""
        core = self._core
        started = core.admit(plan, op, namespace, keys, user, session, emit)
        try:
            result = yield from plan
        except RedisError as exc:
            raise core.failure(op, namespace, keys, started, exc, user, session, emit) from exc
        if core.down_until:
            core.redis_answered()
        return result

    def _slow_read(
        self, namespace: str, key: str, dkey: str, data: bytes | None, elapsed: int
    ) -> Procedure[Any]:
        """A manager's get that is not the common hit: a miss, a warmed or damaged value."""
        core = self._core
        if data is None:
            core.record_miss(namespace, key, elapsed, None, None, True)
            return None
        warmed = core.warm_pending(dkey, data) and (yield self._consume_warm, (namespace, key))
        value = core.record_hit(namespace, key, data, elapsed, None, None, warmed, True)
        return None if value is MISS else value

    def _health(self, started: float, error: BaseException | None = None) -> dict[str, Any]:
        """The :meth:`health_check` document of a PING sent at ``started`` (perf_counter)."""
        latency_ms = (time.perf_counter() - started) * 1000.0
        if error is not None:
            return {
                "healthy": False,
                "latency_ms": latency_ms,
                "error": f"{type(error).__name__}: {error}",
            }
        self._core.redis_answered()  # no need to wait out the breaker
        return {"healthy": True, "latency_ms": latency_ms, "error": None}

    def _stats_document(self, infos: list[Mapping[str, Any]] | RedisError) -> dict[str, Any]:
        """The :meth:`get_stats` document, from Redis's INFO replies (or why there are none)."""
        redis = _redis_figures(infos)
        return {
            "client": self._core.stats.snapshot(),
            "emitter": _emitter_stats(self.emitter),
            "read_line": self._reads.snapshot() if self._reads is not None else None,
            "redis": redis,
            "performance": _performance(self._core, redis),
        }

    def _performance_document(self, infos: list[Mapping[str, Any]] | RedisError) -> dict[str, Any]:
        """The :meth:`get_performance_metrics` document."""
        return _performance(self._core, _redis_figures(infos))


def applied_settings(replies: list[Any]) -> dict[str, str]:
    """The settings Redis reports in CONFIG GET replies, as text."""
    applied: dict[str, str] = {}
    for reply in replies:
        for setting, reported in reply.items():
            applied[_str(setting)] = _str(reported)
    return applied


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _redis_figures(infos: list[Mapping[str, Any]] | RedisError) -> dict[str, Any]:
    if isinstance(infos, RedisError):
        return {"error": f"{type(infos).__name__}: {infos}"}
    return summarize_info(infos)


def _emitter_stats(emitter: Any) -> dict[str, Any] | None:
    if emitter is None:
        return None
    stats = emitter.stats()
    return {
        "emitted": stats.emitted,
        "sampled_out": stats.sampled_out,
        "sent": stats.sent,
        "batches": stats.batches,
        "dropped": stats.dropped,
        "dropped_overflow": stats.dropped_overflow,
        "dropped_send_failed": stats.dropped_send_failed,
        "dropped_unencodable": stats.dropped_unencodable,
        "pending": stats.pending,
        "pending_bytes": stats.pending_bytes,
        "outages": stats.outages,
        "connected": stats.connected,
    }


def _performance(core: CacheCore, redis: Mapping[str, Any]) -> dict[str, Any]:
    """The performance figures of ``get_performance_metrics``."""
    figures = core.stats.performance()
    memory = redis.get("memory") or {}
    figures["memory_usage_bytes"] = memory.get("used_memory")
    figures["max_memory_bytes"] = memory.get("maxmemory")
    return figures


class Armed:
    """A read is out for a key whose prefetch rule names ``keys`` (data keys).

    A read of one of those keys that misses meanwhile waits for the trigger's
    outcome (``ready``, made only when someone waits) instead of fetching at
    once: if the trigger turns out to be a read the cache could not serve alone,
    its rule has started the load by then and the waiting read joins it. So the
    loads of a rule are as early as the trigger's request, however long its
    read takes to come back (a busy event loop, a slow Redis). Reserving costs a
    dictionary entry per successor; nothing else happens on a read that hits.
    """

    __slots__ = ("keys", "ready", "settled")

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.ready: Any = None
        self.settled = False


class IntelligentBase(ABC, Generic[GuardT, LoaderT]):
    """The state and decisions of an intelligent cache; the twins add I/O and waiting.

    The host class is a :class:`ManagerBase` twin; ``_flights_lock`` guards the
    flights, reservations and the rule follower's start (a real lock in the
    blocking client; in the asyncio client, whose code between two awaits runs
    alone, a no-op).
    """

    settings: Settings
    cluster: bool
    _core: CacheCore
    _closed: bool
    _flights: dict[str, Any]
    _flights_lock: AbstractContextManager[Any]
    _edge_loaders: dict[str, GuardT]

    def _init_state(
        self,
        early_refresh: bool,
        refresh_beta: float,
        tracked_keys: int,
        on_error: Callable[[CacheError], None] | None,
        edge_warming: bool | None,
    ) -> None:
        if refresh_beta <= 0:
            raise ValueError("refresh_beta must be > 0")
        self.early_refresh = early_refresh
        self.refresh_beta = refresh_beta
        self.tracked_keys = tracked_keys
        self.on_error = on_error
        self.last_error: CacheError | None = None
        self._flights = {}
        #: data key -> (written_at ms, expires_at epoch s, load seconds) of values we loaded.
        self._loaded: dict[str, tuple[int, float, float]] = {}
        self._random = random.Random()
        self.edge_warming = self.settings.edge_warming if edge_warming is None else edge_warming
        self._rulebook = RuleBook(self.settings.rules_max)
        #: Whether any rule is held (reads look their key's rule up only then).
        self._rules_held = False
        #: data key -> the trigger read out now whose rule names it (see Armed).
        self._reserved: dict[str, Armed] = {}
        self._rule_ids: dict[str, bytes] = {}
        self._tokens = EdgeTokens()
        #: (namespace, user) -> when this client last saw the user read (monotonic s),
        #: least recently seen first; bounded by ``tracked_keys``.
        self._users_seen: dict[tuple[str, str], float] = {}

    def has_loader(self, namespace: str) -> bool:
        """Whether ``namespace`` has a loader for edge warms."""
        return namespace in self._edge_loaders

    @abstractmethod
    def _follow(self) -> None:
        """Start following the prefetch rules (once)."""

    def _loading(self, dkey: str) -> bool:
        flight = self._flights.get(dkey)
        return flight is not None and not flight.done_ns

    def _forget_landed(self) -> None:
        """Past :data:`FLIGHTS_KEPT` flights, forget the finished ones of the older half."""
        flights = self._flights
        if len(flights) > FLIGHTS_KEPT:
            with self._flights_lock:
                for old_key, old in list(flights.items())[: len(flights) // 2]:
                    if old.done_ns:
                        del flights[old_key]

    # -- failures --------------------------------------------------------------------

    def _outage_loader(self, error: CacheError, loader: LoaderT | None) -> LoaderT:
        """Redis failed a read: the loader serves it (reported to ``on_error``), or it raises."""
        if loader is None:
            raise error
        self.last_error = error
        if self.on_error is not None:
            self.on_error(error)
        return loader

    # -- triggers and their reservations -----------------------------------------------

    def _arm(self, namespace: str, trigger: str) -> Armed | None:
        """Reserve the keys ``trigger``'s rule names while its read is out (None: no rule)."""
        rule = self._rulebook.get(namespace, trigger)
        if rule is None:
            return None
        base = self._core.bases.get(namespace) or self._core.base(namespace)
        armed = Armed([base + successor for successor, _ in rule])
        with self._flights_lock:
            reserved = self._reserved
            for dkey in armed.keys:
                reserved[dkey] = armed
        return armed

    def _settle(self, armed: Armed) -> None:
        """The trigger's outcome is known (its rule fired, or will not): wake who waits."""
        if armed.settled:
            return
        with self._flights_lock:
            armed.settled = True
            reserved = self._reserved
            for dkey in armed.keys:
                if reserved.get(dkey) is armed:
                    del reserved[dkey]
            ready: _Wakeable | None = armed.ready
        if ready is not None:
            ready.set()

    def _edge_guard(self, namespace: str, room: bool) -> GuardT | None:
        """The namespace's edge loader, if this client may start edge loads there now.

        None when edge warming is off, the namespace has no loader, the client
        has no ``room`` for more background work, or Redis is down.
        """
        core = self._core
        if (
            not self.edge_warming
            or namespace not in self._edge_loaders
            or not room
            or (core.down_until and core.breaker_open())
        ):
            return None
        return self._edge_loaders[namespace]

    def _rule_targets(
        self, namespace: str, trigger: str, room: bool
    ) -> tuple[GuardT, list[tuple[str, str]]] | None:
        """What ``trigger``'s rule has this client load now: its guard and (key, data key)s.

        None when :meth:`_edge_guard` says no or there is no rule.
        """
        guard = self._edge_guard(namespace, room)
        if guard is None:
            return None
        self._follow()
        core = self._core
        rule = rule_to_apply(core, self._rulebook, namespace, trigger)
        if rule is None:
            return None
        return guard, worth_loading(core, namespace, rule, self._loading, guard.available)

    # -- user rules --------------------------------------------------------------------

    def _session_opens(self, namespace: str, user: str) -> bool:
        """Whether this read opens ``user``'s session as this client sees it (their first
        read here, or the first after ``CACHECAST_SESSION_GAP_S`` of silence), where
        edge warms may run: the moment to load what the user's rule names."""
        if not self.edge_warming or namespace not in self._edge_loaders:
            return False
        now = time.monotonic()
        seen = self._users_seen
        with self._flights_lock:
            last = seen.pop((namespace, user), None)  # re-inserted: the order is recency
            seen[(namespace, user)] = now
            if len(seen) > self.tracked_keys:
                del seen[next(iter(seen))]
        return last is None or now - last > self.settings.model_session_gap_s

    def _user_rule_command(self, namespace: str, user: str) -> tuple[str, str, str]:
        """The read of ``user``'s rule in ``namespace`` (one field of a sharded hash)."""
        prefix = self.settings.redis_key_prefix
        return ("HGET", rules_hash(prefix, namespace, user, USER_RULES), user)

    def _user_targets(
        self, namespace: str, reply: object, room: bool
    ) -> tuple[GuardT, list[tuple[str, str]]] | None:
        """What a user's rule (the reply to :meth:`_user_rule_command`) has this client
        load as the user's session opens."""
        guard = self._edge_guard(namespace, room)
        if guard is None:
            return None
        core = self._core
        core.stats.user_rule_reads += 1
        rule = decode_rule(reply if isinstance(reply, bytes | str) else None)
        if rule is None or not rule.successors:
            return None
        core.stats.user_rules_applied += 1
        return guard, worth_loading(
            core, namespace, rule.successors, self._loading, guard.available
        )

    # -- following the rules -----------------------------------------------------------

    def _rules_plan(self) -> Plan[int]:
        """Read the rule tables (once per namespace) and the rule streams' new entries."""
        prefix = self._core.prefix
        for namespace in list(self._edge_loaders):
            stream = rules_stream(prefix, namespace)
            if stream not in self._rule_ids:
                yield from self._rule_table_plan(namespace, stream)
            oldest, reply = yield follow_commands(
                prefix, namespace, self._rule_ids[stream], RULE_ENTRIES_READ
            )
            if fell_behind(oldest, self._rule_ids[stream]):
                self._core.stats.rule_resyncs += 1  # changes were trimmed unread
                yield from self._rule_table_plan(namespace, stream)
                continue
            last, changes = parse_entries(reply)
            if last is not None:
                self._rule_ids[stream] = last
                self._rulebook.apply(namespace, changes)
                self._rules_held = self.edge_warming and len(self._rulebook) > 0
        return len(self._rulebook)

    def _rule_table_plan(self, namespace: str, stream: str) -> Plan[None]:
        """Read the namespace's rule table into what is held; follow its stream from the
        newest entry.

        The table is merged, not swapped in: a rule held here but missing from the
        table was most likely evicted with its hash (``allkeys-lru`` takes rule keys
        like any other, and an evicted stream is what sends a client back to the
        table), and the worker restores lost hashes from memory. Deletions are in the
        table as tombstones for a minute (:data:`~pipeline.prefetch.TOMBSTONE_S`):
        one missed in the gap is lost only with its hash, or by a client a minute
        behind, and its rule stays here until the trigger's rule is published again
        or the bound drops it.
        """
        replies = yield bootstrap_commands(self._core.prefix, namespace)
        self._rule_ids[stream] = newest_id(replies[0])
        self._rulebook.apply(namespace, table_rules(replies[1:]))
        self._rules_held = self.edge_warming and len(self._rulebook) > 0

    # -- edge loads --------------------------------------------------------------------

    def _mark_plan(
        self, namespace: str, key: str, dkey: str, mark: bytes, timeout_s: float
    ) -> Plan[tuple[bool, int | None]]:
        """Claim ``dkey`` with our loading mark (if nothing is there) and read its smart
        TTL, in one round trip: whether it is ours, and the TTL the pipeline published.

        Every other client's read of the key then waits for this load instead of
        fetching it again (``_join_remote``), and no edge load claims it.
        """
        core = self._core
        claimed, smart = yield [
            ("SET", dkey, mark, "NX", "PX", claim_expiry_ms(timeout_s)),
            ("HGET", core.smart_ttl_hash(namespace), key),
        ]
        return bool(claimed), core.parse_smart_ttl(smart)

    def _claim_plan(
        self, namespace: str, key: str, dkey: str, guard: GuardT, mark: bytes
    ) -> Plan[int | None]:
        """Claim ``dkey`` for an edge load; the TTL to write it with, None if not ours."""
        core = self._core
        timeout = guard.config.timeout
        claimed, smart = yield from self._mark_plan(namespace, key, dkey, mark, timeout)
        if not claimed:
            core.stats.edge_skipped += 1  # cached, or loading on another client
            return None
        core.stats.edge_issued += 1
        return core.load_ttl(namespace, smart)

    @staticmethod
    def _release_command(dkey: str, mark: bytes) -> Command:
        """Delete our loading mark (if still ours), so that readers stop waiting at once."""
        return ("EVAL", RELEASE_SCRIPT, 1, dkey, mark)

    def _edge_failed(
        self, namespace: str, key: str, dkey: str, mark: bytes, error: Exception, started: int
    ) -> Command:
        """A claimed load failed (refused, failed, or undecodable): count it, and the
        command that deletes our loading mark, so that readers stop waiting at once."""
        core = self._core
        if isinstance(error, LoadRefused):
            core.stats.edge_refused += 1
            core.stats.edge_issued -= 1  # the origin was not asked after all
        else:
            elapsed = (time.perf_counter_ns() - started) // 1000
            core.record_edge_warm(namespace, key, False, 0, None, elapsed)
        return self._release_command(dkey, mark)

    def _write_plan(
        self, namespace: str, key: str, dkey: str, data: bytes, ttl: int, mark: bytes
    ) -> Plan[bool]:
        """Write a loaded value in our loading mark's place, with its warm marker."""
        marker = self._core.marker_key(namespace, key)
        if self.cluster:  # the marker lives in another slot: value first, then the marker
            (written,) = yield [("EVAL", EDGE_CAS_SCRIPT, 1, dkey, data, ttl, mark)]
            if written:
                yield [("SET", marker, b"1", "EX", ttl)]
        else:
            (written,) = yield [("EVAL", EDGE_WRITE_SCRIPT, 2, dkey, marker, data, ttl, mark)]
        return bool(written)

    def _write_settled(self, flight: _Flight, written: bool) -> bool:
        """The write is done: whether to drop the warm marker a joined reader already took."""
        with self._flights_lock:
            flight.write_settled = True
            return written and flight.taken

    def _edge_written(
        self, namespace: str, key: str, data: bytes, ttl: int, written: bool, started: int
    ) -> None:
        elapsed = (time.perf_counter_ns() - started) // 1000
        size = len(data) if written else 0
        self._core.record_edge_warm(namespace, key, written, size, ttl, elapsed)

    # -- joins -------------------------------------------------------------------------

    def _take_marker(self, flight: _Flight) -> bool | None:
        """A reader joins an edge load: whether it takes the warm (None: ask Redis).

        Before the write lands, the first joiner takes it here (and the write
        drops the marker); after, the marker is in Redis and the first DEL takes it.
        """
        with self._flights_lock:
            if flight.write_settled:
                return None
            consumed, flight.taken = not flight.taken, True
        return consumed

    def _remote_value(
        self,
        namespace: str,
        key: str,
        data: bytes,
        started: int,
        user: str | None,
        session: str | None,
        emit: bool,
    ) -> tuple[Any, bool]:
        """The value another client's load left (ABSENT if undecodable), and whether it
        was an edge warm (the caller counts the join). A read that waited for an
        application load is what it is on the loading client, a miss, whose event
        says it joined that load (it cost the origin nothing more)."""
        try:
            value = self._core.decode(data)
        except CodecError:
            return ABSENT, False
        if envelope_flags(data) & FLAG_EDGE:
            return value, True
        core = self._core
        core.stats.load_joins += 1
        elapsed = (time.perf_counter_ns() - started) // 1000
        core.record_miss(namespace, key, elapsed, user, session, emit, joined=True)
        return value, False

    def _joins_flight(self, dkey: str, since_ns: int) -> bool:
        """Whether a miss at ``since_ns`` will take its value from an application load of
        ``dkey`` already in flight on this client (``_load`` joins it), so that its event
        can say so as it is sent: the origin is asked once for both reads."""
        flight = self._flights.get(dkey)
        return joinable(flight, since_ns) and not flight.edge

    def _join_deadline(self, since_ns: int) -> int:
        """When a read that waits for another client's load, from ``since_ns`` on
        (``perf_counter_ns``), gives up and loads the key itself."""
        return since_ns + int(self.settings.edge_join_wait_s * 1e9)

    def _poll_verdict(self, dkey: str, data: bytes | None, own: bool) -> Any:
        """What one read of a key another load holds says to a poll: the value's bytes
        (the load ended), None (stop waiting: the key is gone, or the mark is our own
        with no load behind it, or at all, ``own`` false), or :data:`STILL_LOADING`."""
        if data is None:
            return None
        if not is_loading_mark(data):
            return data
        if self._tokens.owns(data) and not (own and self._loading(dkey)):
            return None  # our own mark, left by a load that gave up: load again
        return STILL_LOADING

    def _claimed_elsewhere(self, data: bytes | None) -> Any:
        """What a load whose claim found its key taken gets from the other client's
        load (``data``, polled): its value, a join of that load that cost the origin
        nothing more; or ABSENT (that load failed, took too long, or left something
        undecodable), and the caller loads the key itself."""
        if data is None:
            return ABSENT
        try:
            value = self._core.decode(data)
        except CodecError:
            return ABSENT
        self._core.stats.load_joins += 1
        return value

    def _record_join(
        self,
        namespace: str,
        key: str,
        started: int,
        user: str | None,
        session: str | None,
        emit: bool,
        size: int,
        consumed: bool,
    ) -> None:
        """Count a read served by a load in flight; ``consumed``: it took the warm marker."""
        core = self._core
        if consumed:
            core.stats.warmed_hits += 1
            core.stats.edge_hits += 1
        elapsed = (time.perf_counter_ns() - started) // 1000
        core.record_join(namespace, key, size, elapsed, user, session, emit, consumed)

    # -- early refresh -----------------------------------------------------------------

    def _remember(self, dkey: str, written_ms: int, expires_at: float, load_s: float) -> None:
        if not self.early_refresh or self.tracked_keys <= 0:
            return
        loaded = self._loaded
        loaded.pop(dkey, None)
        if len(loaded) >= self.tracked_keys:
            evict_oldest(loaded)
        loaded[dkey] = (written_ms, expires_at, load_s)

    def _refresh_due(self, dkey: str, data: bytes) -> bool:
        """Whether a hit on a value this client loaded should reload it now (XFetch)."""
        meta = self._loaded.get(dkey)
        if meta is None:
            return False
        written_at_ms, expires_at, load_s = meta
        if written_ms(data) != written_at_ms:
            self._loaded.pop(dkey, None)  # someone else rewrote it: its expiry is unknown
            return False
        draw = 1.0 - self._random.random()
        return xfetch_due(expires_at, load_s, self.refresh_beta, time.time(), draw)

    # -- procedures both twins run (see pipeline.client.driver) --------------------------
    # Each yields a command batch, or a step: one of the twin's I/O methods below
    # and its arguments. The asyncio twin's return awaitables, the blocking twin's
    # results; neither appears here but through a yield.

    #: Wait for a trigger read whose rule names the key (bounded).
    _trigger_settled: Callable[..., Any]
    #: The value an edge flight loaded, once it has one; ABSENT if it failed or
    #: (blocking twin) did not come within the join wait.
    _flight_value: Callable[..., Any]
    #: The bytes another client's load left in ``dkey`` (a poll that the readers of
    #: one key share), or None.
    _shared_poll: Callable[..., Any]
    #: Single-flight load of a key (joins a load in flight).
    _load: Callable[..., Any]
    #: Sleep between two polls.
    _sleep: Callable[[float], Any]
    #: Delete the warm marker (the manager's); True for the first reader only.
    _consume_warm: Callable[..., Any]
    _drive: Callable[..., Procedure[Any]]
    _prefetch: Callable[..., None]
    _maybe_refresh: Callable[..., None]
    _publish: Callable[[Any, Any], None]

    def _slow_get(
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
        fallback_data: LoaderT | None,
        armed: Armed | None = None,
    ) -> Procedure[Any]:
        """A get that is not the common hit: misses, warmed values, counters, damaged
        values, loads in flight (joined), and the edge warms a miss triggers.

        A read the cache could not serve alone (a miss, a load joined, the first read
        of a warmed value) triggers its key's prefetch rule at once, before it waits
        for anything, as the rules were learnt.
        """
        core = self._core
        trigger = enable_prediction  # the rule is still to fire
        deferred: DeferredMiss | None = None
        if data is not None and is_loading_mark(data):
            if trigger:
                self._prefetch(namespace, key, armed)
                trigger = False
            joined = yield from self._join_remote(
                namespace, key, dkey, started, user, session, enable_prediction
            )
            if joined is not ABSENT:
                return joined
            data = None
            elapsed = (time.perf_counter_ns() - started) // 1000
        if data is not None:
            warmed = core.warm_pending(dkey, data) and (yield self._consume_warm, (namespace, key))
            value = core.record_hit(
                namespace, key, data, elapsed, user, session, warmed, enable_prediction
            )
            if value is not MISS:
                if warmed and trigger:
                    self._prefetch(namespace, key, armed)
                if fallback_data is not None and dkey in self._loaded:
                    self._maybe_refresh(namespace, key, dkey, data, fallback_data, user, session)
                return value
        else:
            if trigger:  # first, so that two reads whose rules name each other never wait
                self._prefetch(namespace, key, armed)
                trigger = False
            reserved = self._reserved.get(dkey)
            if reserved is not None and not reserved.settled:
                yield self._trigger_settled, (reserved,)
            flight = self._flights.get(dkey)
            if joinable(flight, started) and flight.edge:
                joined = yield from self._join_edge(
                    flight, namespace, key, started, user, session, enable_prediction
                )
                if joined is not ABSENT:
                    return joined
                # Our edge load did not happen (the key was claimed elsewhere): look again.
                joined = yield from self._join_remote(
                    namespace, key, dkey, started, user, session, enable_prediction, poll=False
                )
                if joined is not ABSENT:
                    return joined
                elapsed = (time.perf_counter_ns() - started) // 1000
            joins = fallback_data is not None and self._joins_flight(dkey, started)
            if joins or fallback_data is None or not enable_prediction:
                core.record_miss(
                    namespace, key, elapsed, user, session, enable_prediction, joined=joins
                )
            else:  # it loads the key: whether it joins a load elsewhere, its claim tells
                deferred = core.defer_miss(namespace, key, elapsed, user, session)
        if trigger:
            self._prefetch(namespace, key, armed)
        if fallback_data is None:
            return None
        load = (namespace, key, dkey, fallback_data, started, user, session, deferred)
        return (yield self._load, load)

    def _join_edge(
        self,
        flight: _Flight,
        namespace: str,
        key: str,
        started: int,
        user: str | None,
        session: str | None,
        emit: bool,
    ) -> Procedure[Any]:
        """A read that missed while this client's edge load of the key is in flight."""
        value = yield self._flight_value, (flight,)
        if value is ABSENT:
            return ABSENT
        consumed = self._take_marker(flight)
        if consumed is None:  # the write landed: the marker is in Redis
            consumed = yield self._consume_warm, (namespace, key)
        self._record_join(namespace, key, started, user, session, emit, 0, consumed)
        return value

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
    ) -> Procedure[Any]:
        """A read found another client's loading mark: wait for that load's value.

        Returns :data:`ABSENT` when the load failed, or took longer than
        ``CACHECAST_EDGE_JOIN_WAIT_S``: the caller then loads the key itself. The
        readers of one key on this client share one poll (the twins' ``_shared_poll``).
        """
        flight = self._flights.get(dkey)
        if flight is not None and not flight.done_ns:
            if flight.edge:
                return (
                    yield from self._join_edge(flight, namespace, key, started, user, session, emit)
                )
            return ABSENT  # our own application load: _load joins it
        data = yield self._shared_poll, (dkey, self._join_deadline(started), poll)
        if data is None:
            return ABSENT
        value, edge = self._remote_value(namespace, key, data, started, user, session, emit)
        if edge:
            consumed = yield self._consume_warm, (namespace, key)
            self._record_join(namespace, key, started, user, session, emit, len(data), consumed)
        return value

    def _poll_remote(
        self, dkey: str, deadline: int, poll: bool, own: bool = True
    ) -> Procedure[bytes | None]:
        """Read ``dkey`` until its loading mark gives way to a value (its bytes), with a
        growing pause (0.5 ms to 5 ms); None when the key is gone, Redis fails, the
        mark is our own with no load behind it (or at all, ``own`` false: a load's
        claim never waits for this client's own marks), or ``deadline`` passes."""
        for pause in poll_pauses(poll):
            if time.perf_counter_ns() >= deadline:
                break
            if pause:
                yield self._sleep, (pause,)
            try:
                (data,) = yield [("GET", dkey)]
            except RedisError:
                return None
            verdict = self._poll_verdict(dkey, data, own)
            if verdict is not STILL_LOADING:
                return cast("bytes | None", verdict)
        return None

    def _edge_fill(
        self, namespace: str, key: str, dkey: str, guard: GuardT, flight: _Flight, started: int
    ) -> Procedure[Any]:
        """Claim the key with a loading mark, load it, and write it in the loading mark's place.

        The flight's readers get the value as soon as it is loaded, before the write.
        """
        core = self._core
        mark = loading_mark(self._tokens.next())
        try:
            ttl = yield from self._claim_plan(namespace, key, dkey, guard, mark)
        except RedisError:
            return ABSENT
        if ttl is None:
            return ABSENT
        try:
            value = yield guard.load, (namespace, key)
            data = core.codec.encode(value, origin="edge").data
        except (LoadRefused, LoadError, CodecError) as exc:
            release = self._edge_failed(namespace, key, dkey, mark, exc, started)
            with contextlib.suppress(RedisError):
                yield [release]
            return ABSENT
        self._publish(flight, value)
        try:
            written = yield from self._write_plan(namespace, key, dkey, data, ttl, mark)
        except RedisError:
            written = False
        if self._write_settled(flight, written):  # a reader that joined took the warm
            with contextlib.suppress(RedisError):
                yield [("DEL", core.marker_key(namespace, key))]
        self._edge_written(namespace, key, data, ttl, written, started)
        return value

    def _store_loaded(
        self,
        namespace: str,
        key: str,
        dkey: str,
        value: Any,
        ttl: int,
        user: str | None,
        session: str | None,
        load_s: float,
    ) -> Procedure[bool]:
        """Write a value this client loaded, with its TTL; whether it was written."""
        core = self._core
        now = time.time()
        try:
            plan = core.set_plan(namespace, key, value, ttl, user=user, session=session, now=now)
            yield from self._drive(plan, "set", namespace, (key,), user, session)
        except CacheError as error:
            self.last_error = error
            return False
        self._remember(dkey, int(now * 1000), now + ttl, load_s)
        return True

    def _set(
        self,
        namespace: str,
        key: str,
        value: Any,
        ttl: int | None,
        tags: Iterable[str] | None,
        compress: bool | None,
        priority: Priority,
        user_context: UserContext,
        session_id: str | None,
    ) -> Procedure[bool]:
        """``set``: without ``ttl``, the smart TTL (one HGET) scaled by ``priority``."""
        core = self._core
        core.data_key(namespace, key)  # validate before any I/O
        user, session = context_labels(user_context, session_id)
        if ttl is None:
            core.ttl_for(None, priority)  # validate before any I/O
            ttl = core.ttl_for((yield from self._smart_ttl(namespace, key)), priority)
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
        (stored,) = yield from self._drive(plan, "set", namespace, (key,), user, session)
        return bool(stored)

    def _smart_ttl(self, namespace: str, key: str) -> Procedure[int | None]:
        """The smart TTL the worker published for ``key`` (None: none, or Redis failed)."""
        core = self._core
        try:
            (raw,) = yield [("HGET", core.smart_ttl_hash(namespace), key)]
        except RedisError:
            return None
        return core.parse_smart_ttl(raw)

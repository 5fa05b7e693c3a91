"""The I/O-free heart of the cache client, shared by the async and sync clients.

Every multi-command operation is written once, here, as a *plan*: a generator
that yields a list of Redis commands, receives their replies, and finally
returns the operation's result. One driver (:mod:`pipeline.client.driver`) runs
a plan for both clients: the async one answers each batch with
``await pipeline.execute()``, the sync one with ``pipeline.execute()``; that
is the only difference between them, so the two can never drift apart (the
sans-I/O style of h11 and friends). The single-command hot paths (``get``)
are written out in each client for speed and use the helpers here for the
decoding, the statistics and the access events.

>>> from pipeline.config import Settings
>>> core = CacheCore(Settings(), emit=None)
>>> plan = core.set_plan("users", "42", {"name": "Ada"}, ttl=60, tags=["team:7"])
>>> [command[0] for command in next(plan)]
['SET', 'DEL', 'SADD', 'EXPIRE', 'EVAL']
>>> try:
...     plan.send([True, 0, 1, True, 1])
... except StopIteration as done:
...     done.value
[True]
>>> core.decode(core.codec.encode({"name": "Ada"}).data)
{'name': 'Ada'}
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeAlias, TypeVar

import orjson
from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    MaxConnectionsError,
    RedisClusterException,
    TimeoutError,
)

from pipeline.client.errors import (
    CacheCommandError,
    CacheError,
    CacheUnavailableError,
    RedisConfigError,
)
from pipeline.client.keys import (
    InvalidKeyError,
    data_key,
    escape_glob,
    keytags_key,
    smart_ttl_hash,
    split_data_key,
    tag_key,
    validate_key,
    validate_namespace,
    validate_tags,
    validate_ttl,
    warm_marker_key,
)
from pipeline.client.stats import ClientStats
from pipeline.codec import (
    FLAG_EDGE,
    FLAG_WARM,
    HEADER_SIZE,
    HIT_HEADER,
    PLAIN_HEAD,
    CodecError,
    ValueCodec,
    decode_fast,
    envelope_flags,
    is_loading_mark,
    written_ms,
)
from pipeline.config import MEMORY_POLICIES, Settings, parse_memory_size
from pipeline.ttl import load_ttl, published_ttl, value_ttl
from schemas.contracts import MAX_LABEL_LENGTH, MAX_LATENCY_US

__all__ = [
    "MEMORY_POLICIES",
    "MISS",
    "PRIORITY_HINTS_MAX",
    "PRIORITY_RANK",
    "SLOW",
    "TAG_ADD_SCRIPT",
    "CacheCore",
    "Command",
    "DeferredMiss",
    "EmitFn",
    "Plan",
    "Priority",
    "UserContext",
    "context_labels",
    "evict_oldest",
    "summarize_info",
    "xfetch_due",
]

log = logging.getLogger("pipeline.client")

T = TypeVar("T")
Command: TypeAlias = tuple[Any, ...]
#: A plan yields command batches, receives their replies, and returns a result.
Plan: TypeAlias = Generator[list[Command], list[Any], T]


class EmitFn(Protocol):
    """Where the client's access events go: ``AccessEmitter.emit``'s signature."""

    def __call__(
        self,
        namespace: str,
        key: str,
        op: str,
        outcome: str,
        latency_us: int = 0,
        size_bytes: int = 0,
        ttl: int | None = None,
        user: str | None = None,
        session: str | None = None,
        tags: Sequence[str] | None = None,
        warmed: bool = False,
        ts: float | None = None,
        raw_bytes: int = 0,
        warm_path: str | None = None,
        joined: bool = False,
    ) -> None: ...


UserContext: TypeAlias = "str | Mapping[str, Any] | None"
Priority: TypeAlias = str


class _Miss:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISS"


#: Returned by :meth:`CacheCore.record_hit` when the stored bytes could not be decoded.
MISS: Final = _Miss()


class _Slow:
    __slots__ = ()

    def __repr__(self) -> str:
        return "SLOW"


#: Returned by :meth:`CacheCore.read_hit` when a hit needs the general path.
SLOW: Final = _Slow()

#: The order edge warms start in when a rule names several keys and the namespace's
#: loader budget cannot take them all: keys last set ``high`` first, ``low`` last.
PRIORITY_RANK: Final[Mapping[str, int]] = {"high": 0, "normal": 1, "low": 2}
#: Most keys whose (non-normal) priority a client remembers, oldest forgotten first.
PRIORITY_HINTS_MAX: Final = 100_000

#: Add a member to a tag set and make the set live at least as long as the member.
#: Redis 6.2 has no ``EXPIRE GT``, hence the script; one key, so cluster-safe.
TAG_ADD_SCRIPT: Final = """
redis.call('SADD', KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[2])
local current = redis.call('TTL', KEYS[1])
if current == -1 or (current >= 0 and current < ttl) then
  redis.call('EXPIRE', KEYS[1], ttl)
end
return 1
"""
#: INCRBY that gives a new counter a TTL (explicit, else the default) in one round trip.
_INCR_SCRIPT: Final = """
if KEYS[2] then
  local done = redis.call('GET', KEYS[2])
  if done then return tonumber(done) end
end
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
elseif redis.call('TTL', KEYS[1]) == -1 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
if KEYS[2] then
  redis.call('SET', KEYS[2], value, 'PX', ARGV[4])
end
return value
"""
#: How long an increment's receipt is kept: a retry within it returns the first result.
INCR_RECEIPT_MS: Final = 10_000


def receipt_key(prefix: str, dkey: str, op: str) -> str | None:
    """Where an increment's receipt lives: internal (``prefix#incr:``), in ``dkey``'s
    Redis Cluster hash slot; None when no such key can be built (odd braces).

    >>> receipt_key("c:", "c:users:42", "ab")
    'c:#incr:{c:users:42}ab'
    >>> receipt_key("c:", "c:users:{42}:visits", "ab")
    'c:#incr:{42}ab'
    >>> receipt_key("c:", "c:users:a}b", "ab") is None
    True
    """
    if "{" in prefix or "}" in prefix:
        return None
    start = dkey.find("{")
    if start >= 0:
        end = dkey.find("}", start + 1)
        if end > start + 1:
            return f"{prefix}#incr:{{{dkey[start + 1 : end]}}}{op}"
    if "}" in dkey or "{" in dkey:
        return None
    return f"{prefix}#incr:{{{dkey}}}{op}"


_INTEGER: Final = re.compile(rb"-?[0-9]{1,20}")
_OUTAGE: Final = (ConnectionError, TimeoutError, ClusterDownError, RedisClusterException)
_MGET_CHUNK: Final = 1000
_DELETE_CHUNK: Final = 500
_WARM_SEEN_LIMIT: Final = 50_000
_LOG_EVERY_S: Final = 10.0


def evict_oldest(mapping: dict[str, Any]) -> None:
    """Drop the oldest entry of an insertion-ordered dict (bounded caches).

    Tolerates another thread changing the dict meanwhile (the sync client).
    """
    with contextlib.suppress(RuntimeError, StopIteration, KeyError):
        del mapping[next(iter(mapping))]


def _no_emit(*args: Any, **kwargs: Any) -> None:
    return None


def _label(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text[:MAX_LABEL_LENGTH] or None


def context_labels(user_context: UserContext, session_id: str | None) -> tuple[str | None, ...]:
    """The ``(user, session)`` labels of an access event.

    ``user_context`` is a user id, or a mapping with ``user_id`` (or ``userId``
    / ``id``) and optionally ``session_id`` (or ``sessionId``). Labels are cut
    to the contract's 256 characters.

    >>> context_labels({"user_id": 7, "session_id": "s1"}, None)
    ('7', 's1')
    >>> context_labels("u9", "s2")
    ('u9', 's2')
    """
    if (
        type(user_context) is str
        and type(session_id) is str
        and 0 < len(user_context) <= MAX_LABEL_LENGTH
        and 0 < len(session_id) <= MAX_LABEL_LENGTH
    ):
        return user_context, session_id
    user: Any = user_context
    session: Any = session_id
    if isinstance(user_context, Mapping):
        user = next(
            (user_context[k] for k in ("user_id", "userId", "id") if k in user_context), None
        )
        if session is None:
            session = next(
                (user_context[k] for k in ("session_id", "sessionId") if k in user_context), None
            )
    return _label(user), _label(session)


@dataclass(slots=True)
class DeferredMiss:
    """The access event of a miss that loads its key itself, held until its claim settles.

    Whether such a read joined a load is known only once its claim answers: a
    claim that finds the key taken (another client began loading it after this
    read's GET) waits for that load instead of fetching. ``ts`` is when the read
    started, so the event keeps its place among the reads however late it goes
    out. Sent once (:meth:`CacheCore.send_miss`).
    """

    namespace: str
    key: str
    elapsed_us: int
    user: str | None
    session: str | None
    ts: float
    sent: bool = False


@dataclass(frozen=True, slots=True)
class _Write:
    namespace: str
    key: str
    dkey: str
    data: bytes
    raw_size: int
    ttl: int
    tags: tuple[str, ...]
    #: A high-priority write: TOUCHed in the same round trip (see ``set_plan``).
    touch: bool = False


class CacheCore:
    """Keys, encoding, plans, statistics and events of one cache client.

    Parameters
    ----------
    settings
        Key prefix, default TTL, compression and retry settings.
    emit
        The access-event sink (an emitter's ``emit``), or None for no events.
    slot_of
        On a Redis Cluster, maps a key to its hash slot so multi-key commands
        are grouped per slot; None on a single server.
    """

    def __init__(
        self,
        settings: Settings,
        emit: EmitFn | None,
        *,
        slot_of: Callable[[str], int] | None = None,
        breaker_cooldown: float | None = None,
    ) -> None:
        self.settings = settings
        self.prefix = settings.redis_key_prefix
        #: Namespaces whose loaded values get a fixed TTL (see ``load_ttl``).
        self.fixed_ttls: dict[str, int] = {}
        self.default_ttl = settings.redis_default_ttl
        self.codec = ValueCodec(
            threshold=settings.redis_compression_threshold,
            enable_compression=settings.redis_enable_compression,
        )
        self.emit: EmitFn = emit or _no_emit
        self.slot_of = slot_of
        self.stats = ClientStats()
        self.get_latency = self.stats.latency["get"]
        self.bases: dict[str, str] = {}
        #: data key -> PRIORITY_RANK of the keys last set with a priority other than
        #: normal (bounded; see note_priority).
        self.priorities: OrderedDict[str, int] = OrderedDict()
        self._warm_seen: dict[str, int] = {}
        #: Monotonic time until which Redis is considered down (0: closed breaker).
        self.down_until = 0.0
        self._trial_at = 0.0  # when the half-open breaker let its one trial call through
        #: Reads waiting for Redis now, and since when none got an answer (perf_counter_ns).
        self.reads_waiting = 0
        self.waiting_since_ns = 0
        self.stall_ns = int(settings.redis_stall_ms * 1_000_000)
        self._stall_suspected = False
        self._trial_window = max(
            1.0, settings.redis_socket_timeout * (settings.redis_max_retries + 1)
        )
        self.breaker_cooldown = (
            breaker_cooldown
            if breaker_cooldown is not None
            else min(5.0, max(0.5, settings.redis_retry_delay_s * 2**settings.redis_max_retries))
        )
        self._logged_at = 0.0

    # -- keys ------------------------------------------------------------------------

    def base(self, namespace: str) -> str:
        """``prefix + namespace + ":"``, validating the namespace once."""
        base = self.bases.get(namespace)
        if base is None:
            validate_namespace(namespace)
            base = self.prefix + namespace + ":"
            if len(self.bases) < 10_000:
                self.bases[namespace] = base
        return base

    def data_key(self, namespace: str, key: str) -> str:
        """The validated data key of ``key`` in ``namespace``."""
        base = self.bases.get(namespace) or self.base(namespace)
        if type(key) is not str or not 0 < len(key) <= 1024:
            validate_key(key)
        return base + key

    # -- values ----------------------------------------------------------------------

    def decode(self, data: bytes) -> Any:
        """Decode stored bytes: an envelope, or a plain integer written by ``increment``.

        The common case (an uncompressed, intact envelope) is decoded here in
        well under a microsecond; anything else goes through
        :meth:`ValueCodec.decode`, which raises :class:`CodecError` with the reason.
        """
        value = decode_fast(data, SLOW)
        if value is not SLOW:
            return value
        if _INTEGER.fullmatch(data):
            return int(data)
        return self.codec.decode(data).value

    def warm_pending(self, dkey: str, data: bytes) -> bool:
        """True when ``data`` was written by the warmer and this client has not yet
        checked its marker (so the first-read check costs a round trip only once
        per warmed value and process, never on application-written values)."""
        if not envelope_flags(data) & FLAG_WARM:
            return False
        written = written_ms(data)
        seen = self._warm_seen
        if seen.get(dkey) == written:
            return False
        if len(seen) >= _WARM_SEEN_LIMIT:
            evict_oldest(seen)
        seen[dkey] = written
        return True

    def marker_key(self, namespace: str, key: str) -> str:
        return warm_marker_key(self.prefix, namespace, key)

    def smart_ttl_hash(self, namespace: str) -> str:
        return smart_ttl_hash(self.prefix, namespace)

    def parse_smart_ttl(self, raw: Any) -> int | None:
        """The published smart TTL, clamped to the configured bounds; None if absent/bad."""
        return published_ttl(raw, self.settings.smart_ttl_min, self.settings.smart_ttl_max)

    def prefix_match(self) -> str:
        """The SCAN pattern of every key under this client's prefix."""
        return escape_glob(self.prefix) + "*"

    def key_count(self, count: int, complete: bool, started: float) -> dict[str, Any]:
        """What ``count_keys`` reports (``started``: its ``time.perf_counter()``)."""
        return {
            "prefix": self.prefix,
            "keys": count,
            "complete": complete,
            "scan_ms": round((time.perf_counter() - started) * 1000, 1),
        }

    def load_ttl(self, namespace: str, smart_ttl: int | None) -> int:
        """The TTL of a loaded value: the namespace's fixed one (a ``cached`` function's
        ``ttl``), else the smart TTL, else the default."""
        return load_ttl(self.fixed_ttls.get(namespace), smart_ttl, self.default_ttl)

    def ttl_for(self, smart_ttl: int | None, priority: Priority = "normal") -> int:
        """The TTL of a value written without an explicit TTL (:func:`pipeline.ttl.value_ttl`)."""
        try:
            return value_ttl(smart_ttl, self.default_ttl, priority)
        except KeyError as exc:
            raise InvalidKeyError(exc.args[0]) from None

    # -- reads: statistics and events ------------------------------------------------

    def read_hit(
        self,
        namespace: str,
        key: str,
        data: bytes,
        elapsed_us: int,
        user: str | None,
        session: str | None,
        emit: bool,
    ) -> Any:
        """The cache-hit fast path: decode, count and emit an application-written value.

        Returns :data:`SLOW` for anything else (a warmed, compressed, damaged or
        foreign value, or a counter); the caller then takes the general path
        (warm-marker check, then :meth:`record_hit`). Nothing is counted then.
        """
        if len(data) >= HEADER_SIZE:
            head, checksum = HIT_HEADER.unpack_from(data)
            if head == PLAIN_HEAD:
                payload = memoryview(data)[HEADER_SIZE:]
                if zlib.crc32(payload) == checksum:
                    try:
                        value = orjson.loads(payload)
                    except orjson.JSONDecodeError:
                        return SLOW
                    stats = self.stats
                    stats.hits += 1
                    size = len(data)
                    stats.bytes_read += size
                    self.get_latency.record(elapsed_us)
                    if emit:
                        self.emit(
                            namespace, key, "get", "hit", elapsed_us, size, None, user, session
                        )
                    return value
        return SLOW

    def record_hit(
        self,
        namespace: str,
        key: str,
        data: bytes,
        elapsed_us: int,
        user: str | None,
        session: str | None,
        warmed: bool,
        emit: bool,
        op: str = "get",
    ) -> Any:
        """Decode a hit, count it and emit its event; :data:`MISS` if undecodable.

        A loading mark (a load in flight elsewhere, no value yet) is a miss.
        """
        if is_loading_mark(data):
            self.record_miss(namespace, key, elapsed_us, user, session, emit, op)
            return MISS
        try:
            value = self.decode(data)
        except CodecError as exc:
            self.record_undecodable(namespace, key, exc)
            self.record_miss(namespace, key, elapsed_us, user, session, emit, op)
            return MISS
        stats = self.stats
        stats.hits += 1
        stats.bytes_read += len(data)
        if op == "get":
            self.get_latency.record(elapsed_us)
        if warmed:
            stats.warmed_hits += 1
            if envelope_flags(data) & FLAG_EDGE:
                stats.edge_hits += 1
        if emit:
            if warmed:
                self.emit(
                    namespace, key, op, "hit", elapsed_us, len(data), None, user, session, None,
                    True, warm_path="edge" if envelope_flags(data) & FLAG_EDGE else "worker",
                )  # fmt: skip
            else:
                self.emit(
                    namespace, key, op, "hit", elapsed_us, len(data), None, user, session, None
                )
        return value

    def record_join(
        self,
        namespace: str,
        key: str,
        size: int,
        elapsed_us: int,
        user: str | None,
        session: str | None,
        emit: bool,
        warmed: bool,
    ) -> None:
        """A read served by joining an edge load in flight: a hit the origin paid once for.

        ``warmed``: this reader took the warm marker (the first read of the value).
        """
        stats = self.stats
        stats.hits += 1
        stats.inflight_joins += 1
        stats.bytes_read += size
        self.get_latency.record(elapsed_us)
        if emit:
            self.emit(
                namespace, key, "get", "hit", elapsed_us, size, None, user, session, None, warmed,
                warm_path="edge" if warmed else None, joined=True,
            )  # fmt: skip

    def record_edge_warm(
        self, namespace: str, key: str, written: bool, size: int, ttl: int | None, elapsed_us: int
    ) -> None:
        """An edge warm this client carried out (op ``warm``): written, or failed."""
        stats = self.stats
        if written:
            stats.edge_written += 1
            stats.edge_latency.record(elapsed_us)
        else:
            stats.edge_failed += 1
        self.emit(
            namespace, key, "warm", "none" if written else "error", elapsed_us, size, ttl,
            None, None, None,
        )  # fmt: skip

    def record_miss(
        self,
        namespace: str,
        key: str,
        elapsed_us: int,
        user: str | None,
        session: str | None,
        emit: bool,
        op: str = "get",
        joined: bool = False,
    ) -> None:
        """A read the cache did not serve; ``joined``: it gets its value from a load
        already in flight, so the origin is asked once (the worker's models take it
        as a read the cache would have served)."""
        self.stats.misses += 1
        if op == "get":
            self.get_latency.record(elapsed_us)
        if emit:
            self.emit(
                namespace, key, op, "miss", elapsed_us, 0, None, user, session, None, False,
                joined=joined,
            )  # fmt: skip

    def defer_miss(
        self,
        namespace: str,
        key: str,
        elapsed_us: int,
        user: str | None,
        session: str | None,
    ) -> DeferredMiss:
        """A miss counted now (:meth:`record_miss` without its event) whose event
        :meth:`send_miss` sends once the read's load has claimed its key."""
        self.record_miss(namespace, key, elapsed_us, user, session, False)
        started = time.time() - elapsed_us * 1e-6
        return DeferredMiss(namespace, key, elapsed_us, user, session, started)

    def send_miss(self, miss: DeferredMiss | None, joined: bool) -> None:
        """Send a deferred miss's event (the first call only): ``joined`` when its
        claim found another client's load and the read took that load's value."""
        if miss is None or miss.sent:
            return
        miss.sent = True
        self.emit(
            miss.namespace, miss.key, "get", "miss", miss.elapsed_us, 0, None, miss.user,
            miss.session, None, False, ts=miss.ts, joined=joined,
        )  # fmt: skip

    def record_undecodable(self, namespace: str, key: str, exc: CodecError) -> None:
        self.stats.decode_errors += 1
        self._log(
            logging.WARNING,
            "cache value %s:%s cannot be decoded, treated as a miss: %s",
            namespace,
            key,
            exc,
        )

    # -- failures and the circuit breaker --------------------------------------------

    def breaker_open(self) -> bool:
        """True while Redis is considered down after an outage-type failure: fail fast.

        After the cooldown the breaker is half-open: one caller is let through as
        a trial while the others keep failing fast (to their loader). The trial's
        success closes it (:meth:`redis_answered`); its failure starts a new
        cooldown; a trial that takes longer than its window lets another through.
        """
        until = self.down_until
        if not until:
            return False
        now = time.monotonic()
        if now < until:
            return True
        if self._trial_at and now - self._trial_at < self._trial_window:
            return True
        self._trial_at = now
        return False

    def redis_answered(self) -> None:
        """Redis answered a command: close the breaker."""
        self.down_until = 0.0
        self._trial_at = 0.0

    def watch(
        self,
        now_ns: int,
        answered_ns: int = 0,
        replies_pending: Callable[[], bool] | None = None,
    ) -> bool:
        """One watchdog tick: open the breaker when Redis has stopped answering.

        A hung Redis (a paused process, a network partition) fails nothing until
        the socket timeout, times the retries: seconds in which every read would
        wait. When reads have waited ``redis_stall_ms`` with no reply, seen on a
        tick and again on a confirming tick that the caller runs a few
        milliseconds later (after the event loop has read its sockets, so a loop
        that was busy, not Redis, is no alarm), the breaker opens: True is
        returned, and the caller aborts the reads still waiting, which then go to
        their loader, as all reads do until the cooldown ends. The first reply
        closes the breaker again, so a false alarm costs a few loads. A trial read
        of the half-open breaker that stalls opens it again the same way.
        ``answered_ns`` is when the connections last got any reply (a new
        connection's handshake included): a burst of reads that wait while their
        connections are opened is no stall. ``replies_pending`` says whether
        replies sit unread in the client's sockets: then the loop is behind, not
        Redis, and that is no stall either.
        """
        since = max(self.waiting_since_ns, answered_ns)
        stalled = (
            self.stall_ns > 0
            and self.reads_waiting > 0
            and now_ns - since > self.stall_ns
            and not (self.down_until and time.monotonic() < self.down_until)
            and not (replies_pending is not None and replies_pending())
        )
        if stalled and self._stall_suspected:
            self.down_until = time.monotonic() + self.breaker_cooldown
            self._trial_at = 0.0
            self.stats.redis_stalls += 1
            self._log(
                logging.WARNING,
                "Redis has not answered for %.0f ms with %d reads waiting; failing fast",
                (now_ns - since) / 1e6,
                self.reads_waiting,
            )
            self._stall_suspected = False
            return True
        self._stall_suspected = stalled
        return False

    @property
    def stall_suspected(self) -> bool:
        """The last tick saw a stall that the next one must confirm."""
        return self._stall_suspected

    def breaker_tripped(self) -> bool:
        """The breaker is open and its cooldown still running: retries are pointless."""
        return self.down_until > time.monotonic()

    def admit(
        self,
        plan: Plan[Any],
        op: str,
        namespace: str | None,
        keys: Sequence[str],
        user: str | None,
        session: str | None,
        emit: bool,
    ) -> int:
        """Before a plan runs: its start (``perf_counter_ns``); while the breaker is
        open, the plan is closed and :meth:`rejected`'s error raised instead."""
        if self.down_until and self.breaker_open():
            plan.close()
            raise self.rejected(op, namespace or "", keys if namespace else (), user, session, emit)
        return time.perf_counter_ns()

    def rejected(
        self,
        op: str,
        namespace: str,
        keys: Sequence[str],
        user: str | None = None,
        session: str | None = None,
        emit: bool = True,
    ) -> CacheUnavailableError:
        """The error for an operation refused by the open breaker (counted, emitted)."""
        self.stats.breaker_rejections += 1
        self.stats.errors += 1
        if emit:
            for key in keys:
                self.emit(namespace, key, op, "error", 0, 0, None, user, session, None, False)
        remaining = max(0.0, self.down_until - time.monotonic())
        return CacheUnavailableError(
            f"Redis is unavailable ({op} not attempted; retrying in {remaining:.2f} s)"
        )

    def failure(
        self,
        op: str,
        namespace: str | None,
        keys: Sequence[str],
        started_ns: int,
        exc: BaseException,
        user: str | None = None,
        session: str | None = None,
        emit: bool = True,
    ) -> CacheError:
        """Count a failed operation, emit its error events and build the error to raise."""
        elapsed = min(MAX_LATENCY_US, (time.perf_counter_ns() - started_ns) // 1000)
        self.stats.errors += 1
        if emit and namespace is not None:
            for key in keys:
                self.emit(namespace, key, op, "error", elapsed, 0, None, user, session, None, False)
        if isinstance(exc, _OUTAGE) and (
            not isinstance(exc, MaxConnectionsError) or self.breaker_tripped()
        ):  # a full pool is an outage only when its connections wait on a hung Redis
            self.down_until = time.monotonic() + self.breaker_cooldown
            self._trial_at = 0.0
            self._log(logging.WARNING, "Redis unavailable during %s: %s", op, exc)
            return CacheUnavailableError(f"Redis unavailable during {op}: {exc}")
        self._log(logging.WARNING, "Redis rejected %s: %s", op, exc)
        return CacheCommandError(f"Redis rejected {op}: {exc}")

    def _log(self, level: int, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY_S:
            self._logged_at = now
            log.log(level, message, *args)
        else:
            log.debug(message, *args)

    # -- writes ----------------------------------------------------------------------

    def _write(
        self,
        namespace: str,
        key: str,
        value: Any,
        ttl: int | None,
        tags: tuple[str, ...],
        compress: bool | None,
        now: float | None,
        touch: bool = False,
    ) -> _Write:
        dkey = self.data_key(namespace, key)
        seconds = self.default_ttl if ttl is None else validate_ttl(ttl)
        encoded = self.codec.encode(value, compress=compress, now=now)
        return _Write(namespace, key, dkey, encoded.data, encoded.raw_size, seconds, tags, touch)

    def _write_commands(self, write: _Write) -> list[Command]:
        ktk = keytags_key(self.prefix, write.namespace, write.key)
        commands: list[Command] = [("SET", write.dkey, write.data, "EX", write.ttl), ("DEL", ktk)]
        if write.tags:
            commands.append(("SADD", ktk, *write.tags))
            commands.append(("EXPIRE", ktk, write.ttl))
            for tag in write.tags:
                commands.append(
                    (
                        "EVAL",
                        TAG_ADD_SCRIPT,
                        1,
                        tag_key(self.prefix, write.namespace, tag),
                        write.dkey,
                        write.ttl,
                    )
                )
        if write.touch:
            commands.append(("TOUCH", write.dkey))
        return commands

    def note_priority(self, dkey: str, priority: Priority) -> None:
        """Remember the priority ``dkey`` was last set with (normal is forgotten)."""
        rank = PRIORITY_RANK.get(priority)
        if rank is None:
            raise InvalidKeyError(
                f"priority must be one of {sorted(PRIORITY_RANK)}, not {priority!r}"
            )
        hints = self.priorities
        hints.pop(dkey, None)  # (re)inserted last; no move_to_end a thread could race
        if rank == PRIORITY_RANK["normal"]:
            return
        hints[dkey] = rank
        if len(hints) > PRIORITY_HINTS_MAX:
            with contextlib.suppress(KeyError):  # another thread emptied it first
                hints.popitem(last=False)

    def set_plan(
        self,
        namespace: str,
        key: str,
        value: Any,
        ttl: int | None = None,
        tags: Iterable[str] | None = None,
        compress: bool | None = None,
        *,
        user: str | None = None,
        session: str | None = None,
        emit: bool = True,
        now: float | None = None,
        priority: Priority = "normal",
    ) -> Plan[list[bool]]:
        """SET the envelope with its TTL and (re)index its tags, in one round trip.

        ``priority`` (beyond the TTL factor a caller applies with :meth:`ttl_for`):
        a ``"high"`` write also sends ``TOUCH`` in the same round trip, which under
        an LFU eviction policy raises the key's access count by one, so that among
        keys read as often Redis evicts it last (under LRU the SET already made it
        the most recent); and the priority is remembered, so edge warms start the
        keys last set ``"high"`` first (:func:`pipeline.client.edge.worth_loading`).
        """
        checked = validate_tags(tags)
        write = self._write(
            namespace, key, value, ttl, checked, compress, now, touch=priority == "high"
        )
        self.note_priority(write.dkey, priority)
        return self._writes_plan([write], "set", user, session, emit)

    def mset_plan(
        self,
        namespace: str,
        items: Mapping[str, Any],
        ttl: int | None = None,
        tags: Iterable[str] | None = None,
        compress: bool | None = None,
    ) -> Plan[list[bool]]:
        """Many SETs pipelined (on a cluster, redis-py sends each node its share)."""
        checked = validate_tags(tags)
        writes = [
            self._write(namespace, key, value, ttl, checked, compress, None)
            for key, value in items.items()
        ]
        return self._writes_plan(writes, "mset", None, None, True)

    def _writes_plan(
        self,
        writes: list[_Write],
        op: str,
        user: str | None,
        session: str | None,
        emit: bool,
    ) -> Plan[list[bool]]:
        started = time.perf_counter_ns()
        commands: list[Command] = []
        offsets: list[int] = []
        for write in writes:
            offsets.append(len(commands))
            commands.extend(self._write_commands(write))
        replies = yield commands
        elapsed = (time.perf_counter_ns() - started) // 1000
        stats = self.stats
        stats.latency[op].record(elapsed)
        for write in writes:
            stats.sets += 1
            stats.bytes_written += len(write.data)
            stats.raw_bytes_written += write.raw_size
            if emit:
                self.emit(
                    write.namespace,
                    write.key,
                    op,
                    "none",
                    elapsed,
                    len(write.data),
                    write.ttl,
                    user,
                    session,
                    write.tags,
                    False,
                    raw_bytes=write.raw_size,
                )
        return [bool(replies[offset]) for offset in offsets]

    def increment_plan(
        self, namespace: str, key: str, amount: int = 1, ttl: int | None = None
    ) -> Plan[int]:
        """INCRBY a plain-integer counter; a new counter gets ``ttl`` or the default TTL."""
        dkey = self.data_key(namespace, key)
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise InvalidKeyError(f"amount must be an int, not {type(amount).__name__}")
        seconds = "" if ttl is None else validate_ttl(ttl)
        return self._increment(namespace, key, dkey, amount, seconds)

    def _increment(
        self, namespace: str, key: str, dkey: str, amount: int, ttl: int | str
    ) -> Plan[int]:
        started = time.perf_counter_ns()
        # A receipt keyed by a fresh id makes the script idempotent: when redis-py
        # retries it after a lost reply, the retry returns the first result
        # instead of adding ``amount`` again.
        receipt = receipt_key(self.prefix, dkey, os.urandom(12).hex())
        keys = (2, dkey, receipt) if receipt is not None else (1, dkey)
        (value,) = yield [
            ("EVAL", _INCR_SCRIPT, *keys, amount, ttl, self.default_ttl, INCR_RECEIPT_MS)
        ]
        elapsed = (time.perf_counter_ns() - started) // 1000
        self.stats.latency["incr"].record(elapsed)
        event_ttl = ttl if isinstance(ttl, int) else None  # "" means the default TTL
        self.emit(namespace, key, "incr", "none", elapsed, 0, event_ttl, None, None, None, False)
        return int(value)

    def expire_plan(self, namespace: str, key: str, ttl: int) -> Plan[bool]:
        """EXPIRE the value, its tag index and (extending only) its tag sets."""
        dkey = self.data_key(namespace, key)
        return self._expire(namespace, key, dkey, validate_ttl(ttl))

    def _expire(self, namespace: str, key: str, dkey: str, ttl: int) -> Plan[bool]:
        started = time.perf_counter_ns()
        ktk = keytags_key(self.prefix, namespace, key)
        existed, tags = yield [("EXPIRE", dkey, ttl), ("SMEMBERS", ktk)]
        if existed and tags:
            yield [("EXPIRE", ktk, ttl)] + [
                ("EVAL", TAG_ADD_SCRIPT, 1, tag_key(self.prefix, namespace, tag), dkey, ttl)
                for tag in _texts(tags)
            ]
        elapsed = (time.perf_counter_ns() - started) // 1000
        self.stats.latency["expire"].record(elapsed)
        self.emit(namespace, key, "expire", "none", elapsed, 0, ttl, None, None, None, False)
        return bool(existed)

    # -- reads -----------------------------------------------------------------------

    def exists_plan(self, namespace: str, key: str) -> Plan[bool]:
        dkey = self.data_key(namespace, key)
        return self._exists(namespace, key, dkey)

    def _exists(self, namespace: str, key: str, dkey: str) -> Plan[bool]:
        started = time.perf_counter_ns()
        (count,) = yield [("EXISTS", dkey)]
        elapsed = (time.perf_counter_ns() - started) // 1000
        self.stats.latency["exists"].record(elapsed)
        outcome = "hit" if count else "miss"
        self.emit(namespace, key, "exists", outcome, elapsed, 0, None, None, None, None, False)
        return bool(count)

    def mget_plan(self, namespace: str, keys: Sequence[str]) -> Plan[list[Any]]:
        """MGET grouped per hash slot on a cluster (one MGET per slot, pipelined)."""
        if isinstance(keys, str):
            raise InvalidKeyError("mget takes a sequence of keys, not a single str")
        dkeys = [self.data_key(namespace, key) for key in keys]
        return self._mget(namespace, list(keys), dkeys)

    def _mget_groups(self, dkeys: list[str]) -> list[list[int]]:
        if self.slot_of is None:
            positions = list(range(len(dkeys)))
            return [positions[i : i + _MGET_CHUNK] for i in range(0, len(positions), _MGET_CHUNK)]
        groups: dict[int, list[int]] = {}
        for index, dkey in enumerate(dkeys):
            groups.setdefault(self.slot_of(dkey), []).append(index)
        return [
            g[i : i + _MGET_CHUNK] for g in groups.values() for i in range(0, len(g), _MGET_CHUNK)
        ]

    def _mget(self, namespace: str, keys: list[str], dkeys: list[str]) -> Plan[list[Any]]:
        started = time.perf_counter_ns()
        if not keys:
            return []
        groups = self._mget_groups(dkeys)
        replies = yield [("MGET", *(dkeys[i] for i in group)) for group in groups]
        raw: list[bytes | None] = [None] * len(keys)
        for group, values in zip(groups, replies, strict=True):
            for index, value in zip(group, values, strict=True):
                raw[index] = value
        elapsed = (time.perf_counter_ns() - started) // 1000
        warm = [
            i
            for i, data in enumerate(raw)
            if data is not None and self.warm_pending(dkeys[i], data)
        ]
        warmed: set[int] = set()
        if warm:
            consumed = yield [("DEL", self.marker_key(namespace, keys[i])) for i in warm]
            warmed = {i for i, n in zip(warm, consumed, strict=True) if n}
        self.stats.latency["mget"].record(elapsed)
        result: list[Any] = []
        for index, data in enumerate(raw):
            if data is None:
                self.record_miss(namespace, keys[index], elapsed, None, None, True, "mget")
                result.append(None)
                continue
            value = self.record_hit(
                namespace, keys[index], data, elapsed, None, None, index in warmed, True, "mget"
            )
            result.append(None if value is MISS else value)
        return result

    # -- deletes ---------------------------------------------------------------------

    def delete_plan(self, namespace: str, keys: Sequence[str]) -> Plan[int]:
        """Delete values with their tag index and warm markers; returns how many existed."""
        for key in keys:
            self.data_key(namespace, key)
        return self._delete(namespace, list(keys), True)

    def _delete(self, namespace: str, keys: list[str], emit: bool) -> Plan[int]:
        deleted = 0
        for chunk_start in range(0, len(keys), _DELETE_CHUNK):
            chunk = keys[chunk_start : chunk_start + _DELETE_CHUNK]
            started = time.perf_counter_ns()
            commands: list[Command] = []
            for key in chunk:
                commands.append(("SMEMBERS", keytags_key(self.prefix, namespace, key)))
                commands.append(("DEL", data_key(self.prefix, namespace, key)))
                commands.append(("DEL", keytags_key(self.prefix, namespace, key)))
                commands.append(("DEL", warm_marker_key(self.prefix, namespace, key)))
            replies = yield commands
            by_tag: dict[str, list[str]] = {}
            for i, key in enumerate(chunk):
                tags, existed = replies[4 * i], replies[4 * i + 1]
                deleted += int(existed)
                for tag in _texts(tags):
                    by_tag.setdefault(tag, []).append(data_key(self.prefix, namespace, key))
            if by_tag:
                yield [
                    ("SREM", tag_key(self.prefix, namespace, tag), *members)
                    for tag, members in by_tag.items()
                ]
            elapsed = (time.perf_counter_ns() - started) // 1000
            self.stats.latency["delete"].record(elapsed)
            self.stats.deletes += len(chunk)
            if emit:
                for key in chunk:
                    self.emit(
                        namespace, key, "delete", "none", elapsed, 0, None, None, None, None, False
                    )
        return deleted

    def delete_found_plan(self, namespace: str, found: Sequence[bytes | str]) -> Plan[int]:
        """Delete data keys found by SCAN, keeping only those inside ``namespace``."""
        keys: list[str] = []
        for full in found:
            key = split_data_key(self.prefix, namespace, _text(full))
            if key is not None:
                keys.append(key)
        return self._delete(namespace, keys, True)

    def delete_by_tags_plan(self, namespace: str, tags: Iterable[str]) -> Plan[int]:
        """Delete every value of ``namespace`` currently tagged with any of ``tags``."""
        self.base(namespace)
        wanted = validate_tags(tags)
        return self._delete_by_tags(namespace, wanted)

    def _delete_by_tags(self, namespace: str, tags: tuple[str, ...]) -> Plan[int]:
        if not tags:
            return 0
        tkeys = [tag_key(self.prefix, namespace, tag) for tag in tags]
        member_sets = yield [("SMEMBERS", tkey) for tkey in tkeys]
        candidates: dict[str, set[str]] = {}
        for tag, members in zip(tags, member_sets, strict=True):
            for member in members:
                key = split_data_key(self.prefix, namespace, _text(member))
                if key is not None:
                    candidates.setdefault(key, set()).add(tag)
        # A key re-set without a tag may still be listed in the tag's set: only
        # delete keys whose own tag index still names one of the tags.
        keys = list(candidates)
        deleted = 0
        for start in range(0, len(keys), _DELETE_CHUNK):
            chunk = keys[start : start + _DELETE_CHUNK]
            current = yield [
                ("SMEMBERS", keytags_key(self.prefix, namespace, key)) for key in chunk
            ]
            confirmed = [
                key
                for key, now_tags in zip(chunk, current, strict=True)
                if candidates[key] & set(_texts(now_tags))
            ]
            if confirmed:
                deleted += yield from self._delete(namespace, confirmed, True)
        cleanup = [
            ("SREM", tkey, *members)
            for tkey, members in zip(tkeys, member_sets, strict=True)
            if members
        ]
        if cleanup:
            yield cleanup
        return deleted

    # -- administration --------------------------------------------------------------

    def memory_settings(self, options: Mapping[str, Any] | None) -> list[tuple[str, str]]:
        """Validate ``configure_redis`` options into ``CONFIG SET`` pairs.

        >>> from pipeline.config import Settings
        >>> core = CacheCore(Settings(), None)
        >>> core.memory_settings({"maxmemory": "1mb", "maxmemory_policy": "allkeys-lru"})
        [('maxmemory', '1048576'), ('maxmemory-policy', 'allkeys-lru')]
        """
        if options is None:
            limit = self.settings.redis_max_memory_bytes()
            if limit is None:
                raise RedisConfigError("nothing to configure: pass options or set REDIS_MAX_MEMORY")
            options = {"maxmemory": limit}
        pairs: list[tuple[str, str]] = []
        for name, value in options.items():
            setting = name.replace("_", "-").lower()
            if setting == "maxmemory":
                pairs.append((setting, str(_memory_bytes(value))))
            elif setting == "maxmemory-policy":
                if value not in MEMORY_POLICIES:
                    raise RedisConfigError(
                        f"maxmemory-policy must be one of {', '.join(MEMORY_POLICIES)}; "
                        f"got {value!r}"
                    )
                pairs.append((setting, str(value)))
            elif setting == "maxmemory-samples":
                if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
                    raise RedisConfigError(
                        f"maxmemory-samples must be an int in 1..64; got {value!r}"
                    )
                pairs.append((setting, str(value)))
            else:
                raise RedisConfigError(
                    f"configure_redis manages maxmemory, maxmemory-policy and "
                    f"maxmemory-samples only; got {name!r}"
                )
        if not pairs:
            raise RedisConfigError("nothing to configure: no options given")
        return pairs


def _memory_bytes(value: Any) -> int:
    if isinstance(value, bool):
        raise RedisConfigError(f"maxmemory must be bytes or a size such as '256mb'; got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise RedisConfigError(f"maxmemory must be >= 0; got {value}")
        return value
    if isinstance(value, str):
        try:
            return parse_memory_size(value)
        except ValueError as exc:
            raise RedisConfigError(f"maxmemory: {exc}") from None
    raise RedisConfigError(f"maxmemory must be bytes or a size such as '256mb'; got {value!r}")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _texts(values: Iterable[bytes | str] | None) -> list[str]:
    return [_text(v) for v in values] if values else []


def summarize_info(infos: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Memory, keyspace and eviction figures from INFO of one server or all primaries.

    >>> info = {"used_memory": 10, "evicted_keys": 2, "db0": {"keys": 3, "expires": 3}}
    >>> summary = summarize_info([info, info])
    >>> summary["evictions"], summary["keyspace"]
    (4, {'db0': {'keys': 6, 'expires': 6}})
    """
    memory: dict[str, Any] = {"used_memory": 0, "used_memory_peak": 0, "maxmemory": 0}
    keyspace: dict[str, dict[str, int]] = {}
    totals = {"evicted_keys": 0, "expired_keys": 0, "keyspace_hits": 0, "keyspace_misses": 0}
    policies: set[str] = set()
    fragmentation: list[float] = []
    versions: set[str] = set()
    for info in infos:
        for name in memory:
            memory[name] += int(info.get(name, 0) or 0)
        if "maxmemory_policy" in info:
            policies.add(str(info["maxmemory_policy"]))
        if "mem_fragmentation_ratio" in info:
            fragmentation.append(float(info["mem_fragmentation_ratio"]))
        if "redis_version" in info:
            versions.add(str(info["redis_version"]))
        for name in totals:
            totals[name] += int(info.get(name, 0) or 0)
        for name, value in info.items():
            if name.startswith("db") and name[2:].isdigit() and isinstance(value, Mapping):
                db = keyspace.setdefault(name, {"keys": 0, "expires": 0})
                db["keys"] += int(value.get("keys", 0))
                db["expires"] += int(value.get("expires", 0))
    memory["maxmemory_policy"] = ",".join(sorted(policies)) or None
    memory["mem_fragmentation_ratio"] = (
        sum(fragmentation) / len(fragmentation) if fragmentation else None
    )
    return {
        "nodes": len(infos),
        "redis_version": ",".join(sorted(versions)) or None,
        "memory": memory,
        "keyspace": keyspace,
        "evictions": totals["evicted_keys"],
        "expired_keys": totals["expired_keys"],
        "keyspace_hits": totals["keyspace_hits"],
        "keyspace_misses": totals["keyspace_misses"],
    }


def xfetch_due(expires_at: float, delta: float, beta: float, now: float, draw: float) -> bool:
    """XFetch (Vattani et al., 2015): refresh early with a probability that grows
    as expiry nears, more eagerly for values that are slow to recompute.

    ``draw`` is uniform in (0, 1].

    >>> xfetch_due(expires_at=100.0, delta=1.0, beta=1.0, now=99.5, draw=0.5)
    True
    >>> xfetch_due(expires_at=100.0, delta=1.0, beta=1.0, now=50.0, draw=0.5)
    False
    """
    return now - delta * beta * math.log(draw) >= expires_at

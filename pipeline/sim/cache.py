"""Exact cache simulators: LRU with warms on two paths, and Belady's offline optimum.

(:class:`SampledEviction` makes the LRU evict as Redis does instead: approximately.)

Objects have unit size (a cache of size ``C`` holds ``C`` keys), as in the
reference numbers of libCacheSim.

cachecast warms a cache on two paths, and :func:`replay_lru` models both at once:

* the **worker path**: a policy raises keys after each request; they land
  ``delay`` requests later (Kafka and a worker in between);
* the **edge path**: prefetch rules ("when A misses, load B") are published by
  the pipeline every ``rule_refresh`` requests and seen by clients
  ``rule_lag`` requests later; a client that misses A loads A's successors
  itself, and each load lands ``edge_delay`` requests later (the origin's
  latency). A request for a key whose edge load is under way *joins* it.
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, cast

import numpy as np
import numpy.typing as npt

ProgressCallback = Callable[[int], None]
"""Called with the number of requests replayed since the previous call."""

_PROGRESS_EVERY = 1 << 16

DEFAULT_EDGE_DELAY = 1
"""Requests an edge load takes by default (1: it lands before the next request)."""
DEFAULT_RULE_REFRESH = 400
"""Requests between two publications of the prefetch rules, by default."""
DEFAULT_RULE_LAG = 10
"""Requests between a publication and the moment clients see it, by default."""

# What a cached key's flag says: read since it was inserted, or warmed by which path.
_READ = 0
_WORKER = 1
_EDGE = 2


class WarmPolicy(Protocol):
    """Decides, after each request, which keys to warm.

    ``index`` is the request's position in the trace, ``hit`` its outcome and
    ``warmed`` whether the hit was served by a warmed copy. The returned keys are
    inserted at the MRU end of the cache ``delay`` requests later (at most
    ``max_warms`` per request; keys already cached are skipped and cost nothing).
    """

    def __call__(self, index: int, key: int, hit: bool, warmed: bool) -> Sequence[int]: ...


class TtlPolicy(Protocol):
    """Decides a TTL (in requests) for a key the cache just missed, or None for no TTL.

    The expiry lands with the warms' ``delay``: the key expires ``delay + ttl``
    requests after the miss, unless it was evicted or re-inserted before.
    """

    def __call__(self, index: int, key: int) -> int | None: ...


class UserTrigger(NamedTuple):
    """The trigger a user rule is published under (never equal to a key)."""

    user: Hashable


def session_opens(
    users: Sequence[int] | None, ts: Sequence[float], gap: float
) -> list[int | None] | None:
    """Per request, the user whose session it opens as a client sees it, else None.

    A session opens at a user's first request and after ``gap`` (in ``ts``
    units) of the user's silence; requests without a user (-1) open none.

    >>> session_opens([7, 8, 7, -1, 7], [0.0, 1.0, 2.0, 3.0, 9.0], gap=5.0)
    [7, 8, None, None, 7]
    """
    if users is None:
        return None
    last: dict[int, float] = {}
    opens: list[int | None] = []
    for user, at in zip(users, ts, strict=True):
        if user < 0:
            opens.append(None)
            continue
        before = last.get(user)
        last[user] = at
        opens.append(user if before is None or at - before > gap else None)
    return opens


class RuleSource(Protocol):
    """Prefetch rules as the pipeline publishes them (:class:`pipeline.models.PrefetchRules`).

    :meth:`changed` returns the triggers whose rule may have changed since the
    previous call, each with its rule now, ``[(trigger, [(successor, p), ...])]``;
    an empty rule deletes the trigger's rule.
    """

    def changed(self) -> Sequence[tuple[Hashable, Sequence[tuple[Hashable, float]]]]: ...


@dataclass(frozen=True)
class ReplayCounts:
    """What one replay measured.

    ``warms`` and ``useful_warms`` count both paths (a request that joined an
    edge load counts that load once, as a useful warm, and is no miss);
    ``edge_warms`` and ``edge_useful`` are the edge path's share of them.
    """

    requests: int
    misses: int
    warms: int
    useful_warms: int
    expired: int = 0
    joined: int = 0
    edge_warms: int = 0
    edge_useful: int = 0

    @property
    def miss_ratio(self) -> float:
        """Demand misses per request."""
        return self.misses / self.requests if self.requests else 0.0

    @property
    def fetches_per_request(self) -> float:
        """Origin fetches (demand misses + warms) per request."""
        return (self.misses + self.warms) / self.requests if self.requests else 0.0

    @property
    def prefetch_precision(self) -> float:
        """Warmed keys read before eviction / warms (0.0 without warms)."""
        return self.useful_warms / self.warms if self.warms else 0.0

    @property
    def worker_warms(self) -> int:
        """Warms of the worker path (the policy's)."""
        return self.warms - self.edge_warms

    @property
    def worker_useful(self) -> int:
        """Worker warms read before eviction."""
        return self.useful_warms - self.edge_useful

    @property
    def worker_precision(self) -> float:
        """Useful worker warms / worker warms (0.0 without worker warms)."""
        warms = self.worker_warms
        return self.worker_useful / warms if warms else 0.0

    @property
    def edge_precision(self) -> float:
        """Useful edge loads (read or joined before eviction) / edge loads (0.0 without)."""
        return self.edge_useful / self.edge_warms if self.edge_warms else 0.0


@dataclass(frozen=True)
class SampledEviction:
    """Evict as Redis's approximated LRU does (``maxmemory-policy allkeys-lru``).

    Redis does not keep an LRU order: to make room it samples ``samples`` keys
    (``maxmemory-samples``) and evicts the one idle the longest, and it knows a
    key's last access only to the tick of its LRU clock (one second). When the
    cache turns over in about a second or less, keys read within the same tick
    look alike, and the one evicted is close to a random recent key. ``clock`` is
    the tick in requests (the request rate times one second).

    Like Redis (``evictionPoolPopulate`` in its ``evict.c``), the sampled keys go
    into a pool of ``pool`` candidates kept across evictions, ordered by the idle
    time they had when sampled (a later read does not update it), and the most
    idle candidate still cached is evicted. ``pool=0`` keeps none: the most idle
    of this eviction's samples goes, ties to the first sampled.
    """

    samples: int = 10
    clock: int = 1
    seed: int = 0
    pool: int = 16

    def __post_init__(self) -> None:
        if self.samples < 1 or self.clock < 1 or self.pool < 0:
            raise ValueError("samples and clock must be >= 1, pool >= 0")


Publication = tuple[int, list[tuple[Hashable, tuple[int, ...]]]]
"""A publication of prefetch rules: the request index from which clients see it, and
the changed rules ``(trigger, successors)`` (no successors: the rule is deleted)."""


def apply_publication(
    rules: dict[Hashable, tuple[int, ...]], changes: list[tuple[Hashable, tuple[int, ...]]]
) -> None:
    """Apply one publication's changed rules to the rules a client holds."""
    for trigger, successors in changes:
        if successors:
            rules[trigger] = successors
        else:
            rules.pop(trigger, None)


class _Sampled:
    """The sampled eviction's bookkeeping: a slot per key (to sample from) and last reads."""

    def __init__(self, cache: OrderedDict[int, int], eviction: SampledEviction) -> None:
        self.cache = cache
        self.samples = eviction.samples
        self.clock = eviction.clock
        self.rng = random.Random(eviction.seed)
        self.slots: list[int] = []
        self.slot_of: dict[int, int] = {}
        self.read_at: dict[int, int] = {}
        self.pool_size = eviction.pool
        #: Eviction candidates, (idle ticks when sampled, key), least idle first.
        self.pool: list[tuple[int, int]] = []

    def touch(self, key: int, index: int) -> None:
        """``key`` (in the cache, new or not) was read or written at request ``index``."""
        if key not in self.slot_of:
            self.slot_of[key] = len(self.slots)
            self.slots.append(key)
        self.read_at[key] = index

    def forget(self, key: int) -> None:
        """``key`` left the cache (expired): its slot goes to the last key's."""
        slot = self.slot_of.pop(key)
        last = self.slots.pop()
        if last != key:
            self.slots[slot] = last
            self.slot_of[last] = slot
        del self.read_at[key]

    def evict(self, index: int) -> None:
        """Make room for the key just added (the last slot) at request ``index``: evict
        the sampled key idle the longest, at the clock's resolution."""
        if self.pool_size:
            self._evict_from_pool(index // self.clock)
            return
        candidates = len(self.slots) - 1
        picks = self.rng.sample(range(candidates), min(self.samples, candidates))
        victim = self.slots[picks[0]]
        oldest = self.read_at[victim] // self.clock
        for pick in picks[1:]:
            key = self.slots[pick]
            tick = self.read_at[key] // self.clock
            if tick < oldest:
                victim, oldest = key, tick
        del self.cache[victim]
        self.forget(victim)

    def _evict_from_pool(self, now: int) -> None:
        """Redis's way: sample into the pool, then evict its most idle candidate still
        cached (others are dropped as they come up: evicted or expired since); ``now``
        is the clock's tick."""
        candidates = len(self.slots) - 1
        added = self.slots[-1]
        pool = self.pool
        size = self.pool_size
        while True:
            for pick in self.rng.sample(range(candidates), min(self.samples, candidates)):
                key = self.slots[pick]
                idle = now - self.read_at[key] // self.clock
                at = bisect.bisect_left(pool, idle, key=_idle)  # before candidates as idle
                if len(pool) < size:
                    pool.insert(at, (idle, key))
                elif at:  # full: the least idle candidate makes room
                    pool.pop(0)
                    pool.insert(at - 1, (idle, key))
            while pool:
                victim = pool.pop()[1]
                if victim != added and victim in self.slot_of:
                    del self.cache[victim]
                    self.forget(victim)
                    return


def _idle(candidate: tuple[int, int]) -> int:
    return candidate[0]


def replay_lru(
    keys: Sequence[int],
    cache_size: int,
    warm_policy: WarmPolicy | None = None,
    delay: int = 0,
    max_warms: int = 4,
    progress: ProgressCallback | None = None,
    ttl_policy: TtlPolicy | None = None,
    *,
    rule_source: RuleSource | None = None,
    rule_refresh: int = DEFAULT_RULE_REFRESH,
    rule_lag: int = DEFAULT_RULE_LAG,
    edge_delay: int = DEFAULT_EDGE_DELAY,
    session_opens: Sequence[Hashable | None] | None = None,
    eviction: SampledEviction | None = None,
    publications: list[Publication] | None = None,
) -> ReplayCounts:
    """Replay ``keys`` through an exact LRU cache of ``cache_size`` keys, with optional warms.

    With ``eviction``, the cache evicts as Redis does instead (:class:`SampledEviction`).

    Worker path: a warm landing for a key not in the cache inserts it at the MRU
    end and counts as an origin fetch; a warm for a cached key, or for a key
    whose edge load is under way, is skipped (the writer checks first). A
    warmed key's first read is a hit and makes the warm *useful*. ``delay``
    counts requests between a decision and its landing (0: right after the
    request that triggered it). A ``ttl_policy`` may give keys inserted on a
    miss an expiry; expired keys leave the cache.

    Edge path (on with a ``rule_source``): after every ``rule_refresh``
    requests the rules that changed are published (``rule_source.changed()``,
    asked after the warm policy saw the request); clients see them
    ``rule_lag`` requests later (0 or 1: from the next request on). A
    request that misses key A, or reads a warmed A for the first time, starts
    a load of each successor in A's visible rule that is neither cached nor
    already loading: an origin fetch, which lands ``edge_delay`` requests
    later (0 or 1: before the next request). A request for a key still
    loading *joins* that load: it is a hit on a warmed value (no miss, no
    second fetch), and makes the load useful. A request that opens a user's
    session (``session_opens``) loads the user's visible rule (published under
    the trigger ``UserTrigger(user)``) the same way, hit or miss.

    Parameters
    ----------
    keys
        The requested keys, in order.
    cache_size
        Keys the cache holds.
    warm_policy
        The worker path: keys to warm after each request (None: none).
    delay
        Requests between a worker warm decision and its landing.
    max_warms
        Most worker warms per request.
    progress
        Called with the number of requests replayed, every 65,536 requests.
    ttl_policy
        Expiry of keys inserted on a miss (None: none).
    rule_source
        The edge path: the prefetch rules to publish (None: no edge path).
    rule_refresh
        Requests between two publications of the rules that changed.
    rule_lag
        Requests between a publication and the moment clients see it.
    edge_delay
        Requests an edge load takes (the origin's latency).
    session_opens
        Per request, the user whose session it opens as a client sees it
        (:func:`session_opens`), else None.
    eviction
        Evict as Redis's approximated LRU does (None: exact LRU).
    publications
        If given, every publication of the rules is appended to it: the request index
        from which clients see it, and the (trigger, successors) changes.

    Examples
    --------
    >>> replay_lru([1, 2, 1, 3, 1, 2], cache_size=2).misses
    4
    >>> def next_key(index, key, hit, warmed):
    ...     return [key + 1]
    >>> counts = replay_lru([1, 2, 3, 4], cache_size=2, warm_policy=next_key)
    >>> counts.misses, counts.warms, counts.useful_warms
    (1, 4, 3)
    >>> def short(index, key):
    ...     return 1
    >>> replay_lru([1, 2, 3, 1], cache_size=3, ttl_policy=short).misses
    4

    A fixed rule "when 1 misses, load 2 and 3", published after every request
    and seen from the next one on. 1 misses again at index 3 and starts both
    loads, which take 2 requests: 3 joins its load, 2 is read once landed:

    >>> class Fixed:
    ...     def changed(self):
    ...         return [(1, [(2, 0.9), (3, 0.8)])]
    >>> keys = [1, 9, 8, 1, 3, 2]
    >>> counts = replay_lru(
    ...     keys, 2, rule_source=Fixed(), rule_refresh=1, rule_lag=0, edge_delay=2
    ... )
    >>> counts.misses, counts.joined, counts.edge_warms, counts.edge_useful
    (4, 1, 2, 2)
    """
    if cache_size < 1:
        raise ValueError("cache_size must be >= 1")
    if rule_refresh < 1 or rule_lag < 0 or edge_delay < 0:
        raise ValueError("rule_refresh must be >= 1, rule_lag and edge_delay >= 0")
    cache: OrderedDict[int, int] = OrderedDict()  # key -> _READ, or the path that warmed it
    move_to_end = cache.move_to_end
    pop_lru = cache.popitem
    sampled = None if eviction is None else _Sampled(cache, eviction)
    landing: deque[tuple[int, int]] = deque()  # worker warms: (due request index, key)
    expiries: dict[int, int] = {}  # key -> request index at which it expires
    expiry_heap: list[tuple[int, int]] = []
    # The edge path: rules as clients see them, publications on their way, loads under way.
    edge = rule_source is not None
    rules: dict[Hashable, tuple[int, ...]] = {}
    published: deque[tuple[int, list[tuple[Hashable, tuple[int, ...]]]]] = deque()
    loading: dict[int, int] = {}  # key -> request index its edge load lands at
    edge_landing: deque[tuple[int, int]] = deque()  # (due request index, key)
    next_publication = rule_refresh - 1 if edge else -1
    misses = warms = useful = expired = 0
    joined = edge_warms = edge_useful = 0
    n = len(keys)
    for index in range(n):
        key = keys[index]
        while expiry_heap and expiry_heap[0][0] <= index:
            due, old = heapq.heappop(expiry_heap)
            if expiries.get(old) == due:
                del expiries[old]
                if cache.pop(old, None) is not None:
                    expired += 1
                    if sampled is not None:
                        sampled.forget(old)
        while edge_landing and edge_landing[0][0] <= index:
            due, warm_key = edge_landing.popleft()
            # A load that a request joined has ended already (and its key may load again).
            if loading.get(warm_key) == due:
                del loading[warm_key]
                # Nothing else could insert it: its load was under way.
                _insert(cache, expiries, warm_key, _EDGE, cache_size, sampled, index)
        while landing and landing[0][0] <= index:
            warm_key = landing.popleft()[1]
            if warm_key not in cache and warm_key not in loading:
                warms += 1
                _insert(cache, expiries, warm_key, _WORKER, cache_size, sampled, index)
        while published and published[0][0] <= index:
            apply_publication(rules, published.popleft()[1])
        flag = cache.get(key)
        if flag is None:
            if key in loading:  # join the edge load under way: no miss, no second fetch
                del loading[key]
                joined += 1
                useful += 1
                edge_useful += 1
                hit = warmed = True
            else:
                misses += 1
                hit = warmed = False
            cache[key] = _READ
            if sampled is None:
                if len(cache) > cache_size:
                    pop_lru(last=False)
            else:
                sampled.touch(key, index)
                if len(cache) > cache_size:
                    sampled.evict(index)
            expiries.pop(key, None)
        else:
            hit = True
            if flag:  # the first read of a warmed value
                warmed = True
                useful += 1
                if flag == _EDGE:
                    edge_useful += 1
                cache[key] = _READ
            else:
                warmed = False
            if sampled is None:
                move_to_end(key)
            else:
                sampled.touch(key, index)
        if edge:
            rule = rules.get(key) if warmed or not hit else None
            opened = None if session_opens is None else session_opens[index]
            if opened is not None:
                user_rule = rules.get(UserTrigger(opened))
                if user_rule is not None:
                    rule = user_rule if rule is None else rule + user_rule
            if rule is not None:
                due = index + edge_delay
                for successor in rule:
                    if successor not in cache and successor not in loading:
                        edge_warms += 1
                        loading[successor] = due
                        edge_landing.append((due, successor))
        if warm_policy is not None:
            chosen = warm_policy(index, key, hit, warmed)
            if chosen:
                for warm_key in chosen[:max_warms]:
                    if delay:
                        landing.append((index + delay, warm_key))
                    elif warm_key not in cache and warm_key not in loading:
                        warms += 1
                        _insert(cache, expiries, warm_key, _WORKER, cache_size, sampled, index)
        if ttl_policy is not None and not hit:
            # Asked after the warm policy: the engine has seen this access by now.
            ttl = ttl_policy(index, key)
            if ttl is not None and key in cache:
                due = index + delay + max(ttl, 1)
                expiries[key] = due
                heapq.heappush(expiry_heap, (due, key))
        if index == next_publication:
            next_publication += rule_refresh
            changes = rule_source.changed() if rule_source is not None else ()
            published.append(
                (index + rule_lag, [(trigger, _successors(rule)) for trigger, rule in changes])
            )
            if publications is not None:
                publications.append(published[-1])
        if progress is not None and index % _PROGRESS_EVERY == _PROGRESS_EVERY - 1:
            progress(_PROGRESS_EVERY)
    if progress is not None:
        progress(n % _PROGRESS_EVERY)
    return ReplayCounts(
        requests=n,
        misses=misses,
        warms=warms + edge_warms,
        useful_warms=useful,
        expired=expired,
        joined=joined,
        edge_warms=edge_warms,
        edge_useful=edge_useful,
    )


def _insert(
    cache: OrderedDict[int, int],
    expiries: dict[int, int],
    key: int,
    path: int,
    size: int,
    sampled: _Sampled | None,
    index: int,
) -> None:
    """A warm (``path`` says whose) lands at request ``index``: newest in the LRU
    order, no expiry yet, a key evicted if the cache is over ``size`` (the least
    recently used one, or as ``sampled`` picks)."""
    cache[key] = path
    expiries.pop(key, None)
    if sampled is None:
        if len(cache) > size:
            cache.popitem(last=False)
    else:
        sampled.touch(key, index)
        if len(cache) > size:
            sampled.evict(index)


def _successors(rule: Sequence[tuple[Hashable, float]]) -> tuple[int, ...]:
    """The keys a rule loads, most probable first (the simulator's keys are ints)."""
    return cast("tuple[int, ...]", tuple(successor for successor, _ in rule))


def replay_belady(
    keys: Sequence[int],
    next_access: npt.NDArray[np.int64],
    cache_size: int,
    progress: ProgressCallback | None = None,
) -> ReplayCounts:
    """Belady's MIN (offline optimum without prefetching): evict the key needed furthest ahead.

    ``next_access[i]`` is the index of the next request to ``keys[i]`` (-1: none).
    This is the only place in cachecast that reads the future.

    >>> import numpy as np
    >>> from pipeline.sim.traces import next_access_of
    >>> keys = np.array([1, 2, 3, 1, 2, 4, 1])  # 3 and 4 are never requested again
    >>> replay_belady(keys.tolist(), next_access_of(keys), cache_size=2).misses
    4
    """
    if cache_size < 1:
        raise ValueError("cache_size must be >= 1")
    n = len(keys)
    never = n + 1
    upcoming = next_access.tolist()
    cache: dict[int, int] = {}  # key -> index of its next request
    heap: list[tuple[int, int]] = []  # (-next request, key), lazily invalidated
    misses = 0
    for index in range(n):
        key = keys[index]
        nxt = upcoming[index]
        if nxt < 0:
            nxt = never
        if key in cache:
            cache[key] = nxt
            heapq.heappush(heap, (-nxt, key))
        else:
            misses += 1
            if nxt == never:
                pass  # never requested again: the optimum does not keep it
            else:
                if len(cache) >= cache_size:
                    while True:
                        far, victim = heapq.heappop(heap)
                        if cache.get(victim) == -far:
                            del cache[victim]
                            break
                cache[key] = nxt
                heapq.heappush(heap, (-nxt, key))
        if len(heap) > 4 * cache_size + 1024:
            heap = [(-nxt_use, k) for k, nxt_use in cache.items()]
            heapq.heapify(heap)
        if progress is not None and index % _PROGRESS_EVERY == _PROGRESS_EVERY - 1:
            progress(_PROGRESS_EVERY)
    if progress is not None:
        progress(n % _PROGRESS_EVERY)
    return ReplayCounts(requests=n, misses=misses, warms=0, useful_warms=0)

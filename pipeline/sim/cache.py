"""Exact cache simulators: LRU with a warm policy, and Belady's offline optimum.

Objects have unit size (a cache of size ``C`` holds ``C`` keys), as in the
reference numbers of libCacheSim.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

ProgressCallback = Callable[[int], None]
"""Called with the number of requests replayed since the previous call."""

_PROGRESS_EVERY = 1 << 16


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


@dataclass(frozen=True)
class ReplayCounts:
    """What one replay measured."""

    requests: int
    misses: int
    warms: int
    useful_warms: int
    expired: int = 0

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


def replay_lru(
    keys: Sequence[int],
    cache_size: int,
    warm_policy: WarmPolicy | None = None,
    delay: int = 0,
    max_warms: int = 4,
    progress: ProgressCallback | None = None,
    ttl_policy: TtlPolicy | None = None,
) -> ReplayCounts:
    """Replay ``keys`` through an exact LRU cache of ``cache_size`` keys, with optional warms.

    A warm landing for a key not in the cache inserts it at the MRU end and
    counts as an origin fetch; a warm for a cached key is skipped (the writer
    checks first). A warmed key's first read is a hit and makes the warm
    *useful*. ``delay`` counts requests between a decision and its landing
    (0: right after the request that triggered it). A ``ttl_policy`` may give
    keys inserted on a miss an expiry; expired keys leave the cache.

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
    """
    if cache_size < 1:
        raise ValueError("cache_size must be >= 1")
    cache: OrderedDict[int, bool] = OrderedDict()  # key -> warmed and not read yet
    move_to_end = cache.move_to_end
    pop_lru = cache.popitem
    landing: deque[tuple[int, int]] = deque()  # (due request index, key)
    expiries: dict[int, int] = {}  # key -> request index at which it expires
    expiry_heap: list[tuple[int, int]] = []
    misses = warms = useful = expired = 0
    n = len(keys)
    for index in range(n):
        key = keys[index]
        while expiry_heap and expiry_heap[0][0] <= index:
            due, old = heapq.heappop(expiry_heap)
            if expiries.get(old) == due:
                del expiries[old]
                if cache.pop(old, None) is not None:
                    expired += 1
        while landing and landing[0][0] <= index:
            warm_key = landing.popleft()[1]
            if warm_key not in cache:
                warms += 1
                cache[warm_key] = True
                expiries.pop(warm_key, None)
                if len(cache) > cache_size:
                    pop_lru(last=False)
        flag = cache.get(key)
        if flag is None:
            misses += 1
            hit = warmed = False
            cache[key] = False
            if len(cache) > cache_size:
                pop_lru(last=False)
            expiries.pop(key, None)
        else:
            hit = True
            warmed = flag
            if flag:
                useful += 1
                cache[key] = False
            move_to_end(key)
        if warm_policy is not None:
            chosen = warm_policy(index, key, hit, warmed)
            if chosen:
                for warm_key in chosen[:max_warms]:
                    if delay:
                        landing.append((index + delay, warm_key))
                    elif warm_key not in cache:
                        warms += 1
                        cache[warm_key] = True
                        expiries.pop(warm_key, None)
                        if len(cache) > cache_size:
                            pop_lru(last=False)
        if ttl_policy is not None and not hit:
            # Asked after the warm policy: the engine has seen this access by now.
            ttl = ttl_policy(index, key)
            if ttl is not None and key in cache:
                due = index + delay + max(ttl, 1)
                expiries[key] = due
                heapq.heappush(expiry_heap, (due, key))
        if progress is not None and index % _PROGRESS_EVERY == _PROGRESS_EVERY - 1:
            progress(_PROGRESS_EVERY)
    if progress is not None:
        progress(n % _PROGRESS_EVERY)
    return ReplayCounts(
        requests=n, misses=misses, warms=warms, useful_warms=useful, expired=expired
    )


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

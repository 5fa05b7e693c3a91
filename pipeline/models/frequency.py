"""Decayed access counts for the hottest keys, in bounded memory."""

from __future__ import annotations

import heapq
import math
from operator import itemgetter
from typing import ClassVar

from pipeline.models.base import Key, Predictor

# Forward decay keeps weights as w * 2**(n / half_life); rebase before floats overflow.
_MAX_BASE = 2.0**512
_by_weight = itemgetter(1)


class DecayedFrequency(Predictor):
    """Exponentially decayed access counts, heavy-hitter style (bounded lossy counting).

    Each access adds 1 to its key's count, and every count halves after
    ``half_life`` further accesses (to any key), so the model follows popularity
    as it drifts. Decay is *forward*: a key's stored weight is scaled by
    ``2**(n / half_life)`` at insertion, so an update is O(1) and no count is
    touched when time passes.

    Memory is bounded by ``max_keys``. When the table grows past it, the quarter
    of keys with the lowest decayed count is evicted in one pass (amortised
    O(log n) per access). Like lossy counting / space-saving, a key whose decayed
    frequency exceeds ``1 / (0.75 * max_keys)`` of the decayed total can never be
    evicted, so the heavy hitters are always tracked.

    Hand-written, not river's ``sketch.HeavyHitters`` (lossy counting with a
    forgetting factor): on the cache2k slice with the same half-life,
    ``benchmarks/river_estimators.py`` found the exact decayed top 64 with recall
    1.00 here against 0.36, at 0.18 µs per update against 0.35 (river's holds less
    memory: 0.1 MB against 0.5).

    Parameters
    ----------
    max_keys
        Most keys tracked at once.
    half_life
        Accesses after which a count has halved.

    Examples
    --------
    >>> from pipeline.models import DecayedFrequency
    >>> freq = DecayedFrequency(max_keys=100, half_life=1_000)
    >>> for key in ["a", "b", "a", "c", "a"]:
    ...     freq.learn_one(key)
    >>> round(freq.predict_one("a"), 3)
    2.996
    >>> freq.predict_one("never-seen")
    0.0
    >>> freq.most_common(1)
    [('a', 2.99...)]

    A stream of unique keys cannot grow it past ``max_keys``:

    >>> for i in range(10_000):
    ...     freq.learn_one(i)
    >>> freq.n_tracked <= 100
    True
    """

    _state_attrs: tuple[str, ...] = ("_weights", "_base")

    #: The constructor's parameters (compiled classes have no signature to read).
    PARAMS: ClassVar[tuple[str, ...]] = ("max_keys", "half_life")

    def __init__(self, max_keys: int = 100_000, half_life: float = 100_000.0) -> None:
        if max_keys < 4:
            raise ValueError("max_keys must be >= 4")
        if half_life <= 0:
            raise ValueError("half_life must be > 0")
        self.max_keys = max_keys
        self.half_life = half_life
        self._growth = 2.0 ** (1.0 / half_life)
        self._weights: dict[Key, float] = {}
        self._base = 1.0  # 2 ** (accesses since the last rebase / half_life): one access now

    def learn_one(self, key: Key) -> None:
        """Count one access to ``key``."""
        weights = self._weights
        base = self._base * self._growth  # older counts decay by one step...
        self._base = base
        weights[key] = weights.get(key, 0.0) + base  # ...and this access counts 1
        if base > _MAX_BASE:
            self._rebase()
        if len(weights) > self.max_keys:
            self._evict()

    def predict_one(self, key: Key) -> float:
        """The decayed access count of ``key`` (0.0 when not tracked)."""
        return self._weights.get(key, 0.0) / self._base

    def most_common(self, n: int) -> list[tuple[Key, float]]:
        """The ``n`` keys with the highest decayed counts, highest first."""
        weights = self._weights
        if n <= 0 or not weights:
            return []
        floor = heapq.nlargest(n, weights.values())[-1]
        top = [(key, w) for key, w in weights.items() if w >= floor]
        top.sort(key=_by_weight, reverse=True)
        return [(key, weight / self._base) for key, weight in top[:n]]

    def total(self) -> float:
        """Decayed number of accesses tracked (the sum of all counts)."""
        return sum(self._weights.values()) / self._base

    @property
    def n_tracked(self) -> int:
        return len(self._weights)

    def _rebase(self) -> None:
        scale = 1.0 / self._base
        self._weights = {key: weight * scale for key, weight in self._weights.items()}
        self._base = 1.0

    def _evict(self) -> None:
        keep = (self.max_keys * 3) // 4
        weights = self._weights
        ranked = sorted(weights.values())
        cutoff = ranked[len(ranked) - keep]
        survivors = {key: w for key, w in weights.items() if w > cutoff}
        # Ties at the cutoff: keep the latest inserted ones, up to `keep` keys in all.
        if len(survivors) < keep:
            ties = [key for key, w in weights.items() if w == cutoff]
            for key in ties[len(ties) - (keep - len(survivors)) :]:
                survivors[key] = cutoff
        self._weights = survivors

    def log_count(self, key: Key) -> float:
        """``log1p`` of the decayed count, a bounded-scale feature for the ensemble."""
        return math.log1p(self._weights.get(key, 0.0) / self._base)

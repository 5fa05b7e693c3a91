"""Last access and inter-arrival statistics per key."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from pipeline.models.base import Key, Predictor

_SQRT2 = math.sqrt(2.0)
# Gaps shorter than this (in ts units) are clamped, so log() stays finite on bursts.
_MIN_GAP = 1e-3


@dataclass(frozen=True, slots=True)
class KeyRhythm:
    """What the recency model knows about one key.

    ``mu`` and ``sigma`` describe the log of the inter-arrival time (a log-normal fit,
    updated as an exponentially weighted mean and variance).
    """

    last_ts: float
    n_gaps: int
    mu: float
    sigma: float

    @property
    def typical_gap(self) -> float:
        """The median inter-arrival time, ``exp(mu)``."""
        return math.exp(self.mu)

    @property
    def next_ts(self) -> float:
        """Predicted time of the next access: last access plus the typical gap."""
        return self.last_ts + math.exp(self.mu)


class InterArrival(Predictor):
    """Last access time and a log-normal fit of inter-arrival times per key.

    For each key the model keeps ``[last_ts, n_gaps, mu, var]`` where ``mu``/``var``
    are the exponentially weighted mean and variance of ``log(gap)``; the first gaps
    are averaged exactly, then the weight of a new gap never drops below ``alpha``,
    so rhythms that change are followed.

    It predicts the time of the next access (``predict_one``) and the probability
    that a key is accessed within a horizon given how long it has been idle
    (``prob_within``).

    Hand-written, not one ``river.stats.EWMean`` + ``EWVar`` per key: the statistic
    is the same (means within 0.06 in log units on keys with 20+ gaps), but
    ``benchmarks/river_estimators.py`` measured 0.2 µs per update and 3.4 MB for
    the cache2k slice here against 0.6-1.2 µs and 7.1 MB (two objects per key).

    Memory is bounded by ``max_keys``: past it, the quarter of keys idle the longest
    is evicted in one pass.

    Parameters
    ----------
    max_keys
        Most keys tracked at once.
    alpha
        Smallest weight of a new gap in the running log-gap statistics.

    Examples
    --------
    >>> from pipeline.models import InterArrival
    >>> rec = InterArrival(max_keys=1000)
    >>> for ts in [0.0, 10.0, 20.0, 30.0]:
    ...     rec.learn_one("k", ts)
    >>> rec.predict_one("k")
    40.0
    >>> rec.rhythm("k").n_gaps
    3
    >>> rec.prob_within("k", now=35.0, horizon=10.0) > 0.5
    True
    >>> rec.predict_one("unseen") is None
    True
    """

    _state_attrs: tuple[str, ...] = ("_keys",)

    #: The constructor's parameters (compiled classes have no signature to read).
    PARAMS: ClassVar[tuple[str, ...]] = ("max_keys", "alpha")

    def __init__(self, max_keys: int = 100_000, alpha: float = 0.2) -> None:
        if max_keys < 4:
            raise ValueError("max_keys must be >= 4")
        if not 0.0 < alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        self.max_keys = max_keys
        self.alpha = alpha
        self._keys: dict[Key, list[float]] = {}

    def learn_one(self, key: Key, ts: float) -> None:
        """Record an access to ``key`` at time ``ts``."""
        state = self._keys.get(key)
        if state is None:
            self._keys[key] = [ts, 0.0, 0.0, 0.0]
            if len(self._keys) > self.max_keys:
                self._evict()
            return
        gap = ts - state[0]
        state[0] = ts
        if gap <= 0.0:
            return
        x = math.log(gap if gap > _MIN_GAP else _MIN_GAP)
        n = state[1] + 1.0
        state[1] = n
        w = 1.0 / n if 1.0 / n > self.alpha else self.alpha
        delta = x - state[2]
        state[2] += w * delta
        state[3] = (1.0 - w) * (state[3] + w * delta * delta)

    def last_seen(self, key: Key) -> float | None:
        """Time of the last access to ``key``, or None when not tracked."""
        state = self._keys.get(key)
        return None if state is None else state[0]

    def rhythm(self, key: Key) -> KeyRhythm | None:
        """The key's statistics, or None when it has no inter-arrival yet."""
        state = self._keys.get(key)
        if state is None or state[1] < 1.0:
            return None
        return KeyRhythm(state[0], int(state[1]), state[2], math.sqrt(state[3]))

    def predict_one(self, key: Key) -> float | None:
        """Predicted time of the next access, or None with fewer than one gap seen."""
        state = self._keys.get(key)
        if state is None or state[1] < 1.0:
            return None
        return state[0] + math.exp(state[2])

    def prob_within(self, key: Key, now: float, horizon: float) -> float:
        """P(next access in ``(now, now + horizon]``) given no access since the last one.

        Uses the log-normal fit: ``(F(a + h) - F(a)) / (1 - F(a))`` with ``a`` the
        idle time. Keys without a gap yet get 0.0.
        """
        state = self._keys.get(key)
        if state is None or state[1] < 1.0:
            return 0.0
        sigma = math.sqrt(state[3]) if state[3] > 1e-6 else 1e-3
        idle = now - state[0]
        mu = state[2]
        f_idle = 0.0 if idle <= 0.0 else _lognorm_cdf(idle, mu, sigma)
        survive = 1.0 - f_idle
        if survive <= 1e-12:
            return 0.0
        return (_lognorm_cdf(max(idle, 0.0) + horizon, mu, sigma) - f_idle) / survive

    @property
    def n_tracked(self) -> int:
        return len(self._keys)

    def _evict(self) -> None:
        keep = (self.max_keys * 3) // 4
        ordered = sorted(self._keys.items(), key=lambda item: item[1][0])
        self._keys = dict(ordered[len(ordered) - keep :])


def _lognorm_cdf(x: float, mu: float, sigma: float) -> float:
    if x <= 0.0:
        return 0.0
    return 0.5 * (1.0 + math.erf((math.log(x) - mu) / (sigma * _SQRT2)))

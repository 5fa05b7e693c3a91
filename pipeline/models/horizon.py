"""How long an unread key survives in the cache, estimated from hits and misses."""

from __future__ import annotations

from typing import ClassVar

from pipeline.models.base import Predictor


class CacheHorizon(Predictor):
    """Online estimate of the cache's characteristic time (the LRU eviction age).

    In an LRU cache a key is found again iff it is re-requested before about ``T``
    time units of traffic push it out. Every access whose previous access is known
    gives a reuse time ``r`` and an outcome: a hit with ``r > T`` says ``T`` is too
    small, a miss with ``r < T`` that it is too large; ``T`` moves by a factor
    ``1 ± rate`` on each such error, so it settles where the two errors balance.
    Hits served from a warmed copy say nothing about ``T`` and must be skipped.

    The engine uses ``T`` as the horizon of its predictions: a warmed key that is
    not read within ``T`` is evicted unread.

    Parameters
    ----------
    initial
        Starting estimate, in ts units.
    rate
        Relative step of each correction.
    min_value, max_value
        Bounds of the estimate.

    Examples
    --------
    >>> from pipeline.models import CacheHorizon
    >>> horizon = CacheHorizon(initial=10.0)
    >>> for reuse in range(1, 2_000):     # an LRU that keeps keys for ~300 units
    ...     horizon.learn_one(float(reuse % 600), hit=reuse % 600 < 300)
    >>> 250 < horizon.predict_one() < 350
    True
    """

    _state_attrs: tuple[str, ...] = ("_value",)

    #: The constructor's parameters (compiled classes have no signature to read).
    PARAMS: ClassVar[tuple[str, ...]] = ("initial", "rate", "min_value", "max_value")

    def __init__(
        self,
        initial: float = 1000.0,
        rate: float = 0.01,
        min_value: float = 1.0,
        max_value: float = 1e12,
    ) -> None:
        if not 0.0 < rate < 1.0:
            raise ValueError("rate must be in (0, 1)")
        if not 0.0 < min_value <= initial <= max_value:
            raise ValueError("need 0 < min_value <= initial <= max_value")
        self.initial = initial
        self.rate = rate
        self.min_value = min_value
        self.max_value = max_value
        self._value = initial

    def learn_one(self, reuse_time: float, hit: bool) -> None:
        """Correct the estimate with one access: its reuse time and whether it hit."""
        value = self._value
        if hit:
            if reuse_time > value:
                self._value = min(value * (1.0 + self.rate), self.max_value)
        elif reuse_time < value:
            self._value = max(value * (1.0 - self.rate), self.min_value)

    def predict_one(self) -> float:
        """The current estimate of the cache's characteristic time."""
        return self._value

    @property
    def n_tracked(self) -> int:
        return 0

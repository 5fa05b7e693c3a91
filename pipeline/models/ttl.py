"""Smart TTL: a time-to-live per key from its inter-arrival distribution."""

from __future__ import annotations

import math
import random
from collections import deque
from typing import ClassVar

from pipeline.models.base import Key, Predictor, stable_hash
from pipeline.models.recency import InterArrival, KeyRhythm

_MASK64 = 0xFFFFFFFFFFFFFFFF


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit hash of ``x``."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class SmartTTL(Predictor):
    """A TTL per key: long enough to cover its next access, no longer.

    A key's gaps are modelled as log-normal (see :class:`InterArrival`); its TTL is
    the ``exp(mu + z * sigma)`` quantile of the gap (``z = 2``: ~98% of gaps are
    shorter) times ``multiplier``, converted to seconds with ``time_scale``,
    clamped to ``[min_ttl, max_ttl]``, and jittered by up to ``±jitter`` (a fixed
    fraction per key, from a seeded hash), so keys warmed together do not expire
    together. Keys with no gap yet get ``default_ttl`` (jittered too).

    Parameters
    ----------
    min_ttl, max_ttl
        Bounds of the TTL in seconds.
    default_ttl
        TTL of a key without an inter-arrival yet.
    z
        How many log-standard deviations above the typical gap the TTL reaches.
    multiplier
        Safety factor on the gap quantile.
    jitter
        Largest relative change added per key.
    time_scale
        Seconds per ts unit (1.0 for wall-clock timestamps).
    seed
        Seed of the per-key jitter.
    max_keys
        Most keys tracked by the built-in :class:`InterArrival`.

    Examples
    --------
    >>> from pipeline.models import SmartTTL
    >>> ttl = SmartTTL(min_ttl=30, max_ttl=3600, default_ttl=300, jitter=0.1, seed=7)
    >>> for ts in range(0, 1000, 100):
    ...     ttl.learn_one("menu", float(ts))
    >>> 90 <= ttl.predict_one("menu") <= 110     # gaps of 100 s
    True
    >>> 270 <= ttl.predict_one("brand-new") <= 330
    True
    >>> ttl.predict_one("menu") == ttl.predict_one("menu")
    True
    """

    _state_attrs: tuple[str, ...] = ("_recency_state",)

    #: The constructor's parameters (compiled classes have no signature to read).
    PARAMS: ClassVar[tuple[str, ...]] = (
        "min_ttl",
        "max_ttl",
        "default_ttl",
        "z",
        "multiplier",
        "jitter",
        "time_scale",
        "seed",
        "max_keys",
    )

    def __init__(
        self,
        min_ttl: int = 60,
        max_ttl: int = 86_400,
        default_ttl: int = 3_600,
        z: float = 2.0,
        multiplier: float = 1.0,
        jitter: float = 0.1,
        time_scale: float = 1.0,
        seed: int = 0,
        max_keys: int = 100_000,
    ) -> None:
        if not 0 < min_ttl <= default_ttl <= max_ttl:
            raise ValueError("need 0 < min_ttl <= default_ttl <= max_ttl")
        if not 0.0 <= jitter < 1.0:
            raise ValueError("jitter must be in [0, 1)")
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.default_ttl = default_ttl
        self.z = z
        self.multiplier = multiplier
        self.jitter = jitter
        self.time_scale = time_scale
        self.seed = seed
        self.max_keys = max_keys
        self.recency = InterArrival(max_keys=max_keys)

    @property
    def _recency_state(self) -> dict[Key, list[float]]:
        return self.recency._keys

    @_recency_state.setter
    def _recency_state(self, value: dict[Key, list[float]]) -> None:
        self.recency._keys = value

    def learn_one(self, key: Key, ts: float) -> None:
        """Record an access to ``key`` at ``ts``."""
        self.recency.learn_one(key, ts)

    def predict_one(self, key: Key) -> int:
        """The TTL of ``key`` in whole seconds."""
        return self.ttl_from(key, self.recency.rhythm(key))

    def ttl_from(self, key: Key, rhythm: KeyRhythm | None, default: float | None = None) -> int:
        """The TTL of ``key`` given its rhythm (lets a shared :class:`InterArrival` drive it).

        ``default`` (seconds) replaces ``default_ttl`` for a key without a rhythm.
        """
        if rhythm is None:
            base = float(self.default_ttl if default is None else default)
        else:
            quantile = math.exp(min(rhythm.mu + self.z * rhythm.sigma, 700.0))
            base = quantile * self.multiplier * self.time_scale
            base = min(max(base, float(self.min_ttl)), float(self.max_ttl))
        u = _mix64(stable_hash(key) ^ _mix64(self.seed)) / _MASK64  # in [0, 1]
        jittered = base * (1.0 + self.jitter * (2.0 * u - 1.0))
        return int(min(max(round(jittered), self.min_ttl), self.max_ttl))

    @property
    def n_tracked(self) -> int:
        return self.recency.n_tracked


class NewKeyReuse(Predictor):
    """Would a short TTL on keys seen for the first time pay on this traffic?

    A short TTL (``short_fraction`` of the cache's horizon) on a new key loses the
    hits of new keys that come back *late* (after the TTL, before the horizon) and
    frees their space for keys already known. On a sample of demand misses (one in
    ``sample_every``) the model remembers the key until ``ts + horizon``, as *new*
    (no state for it) or *known*, and counts, per class, the keys that come back:
    for new keys only the late returns, for known keys any return. Counts decay
    exponentially so the answer follows the traffic.

    :meth:`predict_one` says yes when new keys come back late less than ``ratio``
    times as often as known keys come back at all (one-hit wonders, scans): the
    freed space is worth more than the hits lost. On traffic where any key is as
    likely as another to return, it says no and TTLs stay out of the way.

    Parameters
    ----------
    short_fraction
        The short TTL as a fraction of the horizon.
    ratio
        Largest late-return rate of new keys, relative to the return rate of known
        keys, at which the short TTL pays.
    sample_every
        Probe one demand miss in this many.
    min_samples
        Probes of each class needed before answering yes.
    decay
        Factor applied to the counts at each resolved probe.
    max_pending
        Most probes in flight.
    seed
        Seed of the probe sampling.

    Examples
    --------
    >>> from pipeline.models import NewKeyReuse
    >>> gate = NewKeyReuse(sample_every=1, min_samples=20)
    >>> ts = 0.0
    >>> for i in range(400):            # known keys come back, new ones never do
    ...     gate.learn_one(f"hot{i % 10}", ts, missed=True, new=False, horizon=50.0)
    ...     gate.learn_one(f"once{i}", ts + 0.5, missed=True, new=True, horizon=50.0)
    ...     ts += 1.0
    >>> gate.predict_one()
    True
    >>> gate.reuse_rates()
    (0.0, 1.0)
    """

    _state_attrs: tuple[str, ...] = ("_pending", "_deadlines", "_counts", "_rng")

    #: The constructor's parameters (compiled classes have no signature to read).
    PARAMS: ClassVar[tuple[str, ...]] = (
        "short_fraction",
        "ratio",
        "sample_every",
        "min_samples",
        "decay",
        "max_pending",
        "seed",
    )

    def __init__(
        self,
        short_fraction: float = 0.1,
        ratio: float = 0.5,
        sample_every: int = 4,
        min_samples: int = 200,
        decay: float = 0.9995,
        max_pending: int = 100_000,
        seed: int = 0,
    ) -> None:
        if sample_every < 1 or min_samples < 1 or max_pending < 1:
            raise ValueError("sample_every, min_samples and max_pending must be >= 1")
        if not 0.0 <= short_fraction < 1.0:
            raise ValueError("short_fraction must be in [0, 1)")
        if not 0.0 < ratio <= 1.0 or not 0.0 < decay <= 1.0:
            raise ValueError("ratio and decay must be in (0, 1]")
        self.short_fraction = short_fraction
        self.ratio = ratio
        self.sample_every = sample_every
        self.min_samples = min_samples
        self.decay = decay
        self.max_pending = max_pending
        self.seed = seed
        self._rng = random.Random(seed)
        self._probability = 1.0 / sample_every
        # key -> (deadline, early deadline, class: 0 = new, 1 = known)
        self._pending: dict[Key, tuple[float, float, int]] = {}
        self._deadlines: deque[tuple[float, Key]] = deque()
        # per class: [returns counted, probes]
        self._counts: list[list[float]] = [[0.0, 0.0], [0.0, 0.0]]

    def learn_one(self, key: Key, ts: float, *, missed: bool, new: bool, horizon: float) -> None:
        """One access: resolve its probe if any, expire old probes, maybe probe this miss."""
        pending = self._pending
        if pending:
            probe = pending.pop(key, None)
            if probe is not None and ts <= probe[0]:
                # A new key counts only when it returns after the short TTL.
                self._count(probe[2], probe[2] == 1 or ts > probe[1])
            deadlines = self._deadlines
            while deadlines and deadlines[0][0] < ts:
                deadline, old = deadlines.popleft()
                probe = pending.get(old)
                if probe is not None and probe[0] == deadline:
                    del pending[old]
                    self._count(probe[2], False)
        if missed and self._rng.random() < self._probability and key not in pending:
            deadline = ts + horizon
            pending[key] = (deadline, ts + self.short_fraction * horizon, 0 if new else 1)
            self._deadlines.append((deadline, key))
            if len(self._deadlines) > self.max_pending:
                _, old = self._deadlines.popleft()
                pending.pop(old, None)

    def _count(self, cls: int, returned: bool) -> None:
        decay = self.decay
        for row in self._counts:
            row[0] *= decay
            row[1] *= decay
        row = self._counts[cls]
        row[1] += 1.0
        if returned:
            row[0] += 1.0

    def reuse_rates(self) -> tuple[float, float]:
        """Late-return rate of new keys and return rate of known keys (0.0 before probes)."""
        (new_late, new_total), (known_back, known_total) = self._counts
        return (
            new_late / new_total if new_total else 0.0,
            known_back / known_total if known_total else 0.0,
        )

    def predict_one(self) -> bool:
        """Whether a short TTL on new keys pays on this traffic."""
        if min(self._counts[0][1], self._counts[1][1]) < self.min_samples:
            return False
        new_late, known_back = self.reuse_rates()
        return new_late < self.ratio * known_back

    @property
    def n_tracked(self) -> int:
        return len(self._pending)

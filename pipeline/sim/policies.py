"""Warm policies the simulator compares: the naive successor reference and cachecast."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from pipeline.models import CoAccess, EngineConfig, WarmEngine
from pipeline.models.temporal import is_wall_clock

POLICIES: tuple[str, ...] = ("lru", "lru+successor", "lru+cachecast", "belady")
"""Policy names, in the order of the report.

``lru+cachecast`` is what runs in production: both warm paths (the worker's
warms and the clients' edge loads from the engine's prefetch rules) and the
smart TTL.
"""

ABLATIONS: tuple[str, ...] = (
    "lru+cachecast-worker",
    "lru+cachecast-edge",
    "lru+cachecast-warm",
    "lru+cachecast-ttl",
)
"""cachecast with one warm path only (worker or edge, each with the smart TTL), with
only its warms (both paths, no TTL), or only its smart TTLs: what each part contributes."""


class SuccessorWarmer:
    """The naive reference: after each access to A, warm A's 2 most frequent successors.

    A successor is a key seen within the 4 requests after A; it is warmed if it
    followed A in >= 30% of A's accesses and A was seen >= 3 times. Successor
    lists hold at most 64 keys, trimmed to the top 32. This is
    :class:`~pipeline.models.CoAccess` with those parameters.

    >>> warm = SuccessorWarmer()
    >>> for i, key in enumerate([1, 2, 3, 1, 2, 3, 1]):
    ...     chosen = warm(i, key, False, False)
    >>> chosen
    [2, 3]
    """

    def __init__(self, max_keys: int = 1 << 22) -> None:
        self.model = CoAccess(
            window=4,
            max_keys=max_keys,
            max_successors=64,
            trim_to=32,
            min_support=3,
            min_confidence=0.3,
            top_n=2,
        )

    def __call__(self, index: int, key: int, hit: bool, warmed: bool) -> Sequence[int]:
        model = self.model
        model.learn_one(key)
        return [successor for successor, _ in model.predict_one(key)]  # type: ignore[misc]


class CachecastWarmer:
    """cachecast's :class:`~pipeline.models.WarmEngine` as a warm policy.

    The engine sees what the agents see: key, time, and the cache outcome (hit,
    and whether a hit was served by a warm). It never sees ``next_access``.
    Timestamps are passed through when they are wall clock; otherwise the
    request index is the clock. With ``worker_clock`` the engine runs as the
    worker runs it: the request index is the clock and wall-clock timestamps
    only feed the time-of-week profiles (``wall_ts``). ``delay`` (in requests)
    becomes the engine's ``lead`` in ts units. The engine learns its prefetch rules as it observes:
    ``warmer.engine.rules`` is the edge path's rule source. ``ttl_floor`` is the
    shortest TTL :meth:`miss_ttl` gives, in requests.
    """

    def __init__(
        self,
        ts: npt.NDArray[np.float64],
        delay: int,
        config: EngineConfig | None = None,
        users: npt.NDArray[np.int64] | None = None,
        sequences: bool = True,
        worker_clock: bool = False,
        ttl_floor: int = 1,
    ) -> None:
        #: Whether the worker path warms sequence predictions too (with prefetch rules on,
        #: production leaves them to the edge: ``CACHECAST_WORKER_SEQUENCES``).
        self.sequences = sequences
        config = config or EngineConfig()
        wall_clock = len(ts) > 0 and is_wall_clock(float(ts[0]))
        #: Wall-clock times passed as ``wall_ts`` (the worker's clocks), or None.
        self._wall: list[float] | None = None
        self._ts: list[float] | None = None
        per_request = 1.0
        if wall_clock and worker_clock:
            wall_clock = False
            self._wall = ts.tolist()
            config = replace(config, lead=float(delay), wall_clock=False)
        elif wall_clock:
            span = float(ts[-1] - ts[0])
            per_request = span / max(len(ts) - 1, 1)
            self._ts = ts.tolist()
            config = replace(config, lead=delay * per_request, wall_clock=True)
        else:
            config = replace(config, lead=float(delay), wall_clock=False)
        self._users: list[int] | None = None if users is None else users.tolist()
        self._requests_per_ts = 1.0 / per_request if wall_clock and per_request > 0 else 1.0
        #: The shortest TTL a key gets, in requests: production clamps TTLs to
        #: ``CACHECAST_TTL_MIN`` seconds, which a replay at a known rate can count.
        self._ttl_floor = max(1, ttl_floor)
        self.engine = WarmEngine(config)

    def __call__(self, index: int, key: int, hit: bool, warmed: bool) -> Sequence[int]:
        ts = float(index) if self._ts is None else self._ts[index]
        user = None
        if self._users is not None and self._users[index] >= 0:
            user = self._users[index]
        wall = -1.0 if self._wall is None else self._wall[index]
        candidates = self.engine.observe(
            key, ts, user=user, hit=hit, warmed=warmed, wall_ts=wall, event_ts=wall
        )
        if not candidates:
            return ()
        if not self.sequences:
            return [c.key for c in candidates if c.reason != "similarity"]  # type: ignore[misc]
        return [candidate.key for candidate in candidates]  # type: ignore[misc]

    def miss_ttl(self, index: int, key: int) -> int | None:
        """The engine's TTL for a key that just missed, in requests (None: no TTL), never
        shorter than the floor."""
        ttl = self.engine.miss_ttl(key)
        if ttl is None:
            return None
        return max(self._ttl_floor, int(ttl * self._requests_per_ts))

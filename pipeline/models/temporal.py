"""Time-of-day / day-of-week access profiles, for wall-clock timestamps."""

from __future__ import annotations

import heapq
from typing import Any, ClassVar

from pipeline.models.base import Key, Predictor

WALL_CLOCK_EPOCH = 946_684_800.0
"""2000-01-01T00:00:00Z: timestamps above it are taken as Unix seconds, below as request indices."""

_DAY = 86_400.0
# 1970-01-01 was a Thursday: shifting by 3 days puts Monday 00:00 in bin 0.
_MONDAY_SHIFT = 3 * _DAY


def is_wall_clock(ts: float) -> bool:
    """Whether ``ts`` looks like Unix seconds rather than a request index.

    >>> is_wall_clock(1_700_000_000.0), is_wall_clock(12_345.0)
    (True, False)
    """
    return ts >= WALL_CLOCK_EPOCH


class TimeProfile(Predictor):
    """When in the week each key is requested: a histogram of accesses per time bin.

    The week is cut into ``7 * bins_per_day`` bins (``bins_per_day`` with
    ``weekly=False``: one daily profile). For each key the model counts accesses
    per bin, and for all keys together; the *lift* of a key at a time is how much
    more likely the key is in that bin than the traffic as a whole (1.0: no
    seasonality). With ``weekly``, the lift is the larger of the hour-of-week lift
    and the hour-of-day lift (the seven days' bins of that hour added up, once the
    key was read in that hour on two different days): a key read every morning is
    recognised from the second morning on, not only after a week. Counts of a key
    are halved when they pass ``max_count`` so old habits fade.

    Memory is bounded by ``max_keys`` (past it, the quarter with the fewest counted
    accesses is evicted); each key holds only the bins it was seen in.

    Parameters
    ----------
    max_keys
        Most keys tracked.
    bins_per_day
        Time bins per day (24: hourly).
    weekly
        One profile per day of the week (True) or one daily profile (False).
    utc_offset
        Seconds added to timestamps before binning (the traffic's local time).
    smoothing
        Pseudo-reads per bin, spread like the traffic, so rare keys have a lift near 1.
    max_count
        A key's total count above which its bins are halved.

    Examples
    --------
    >>> from pipeline.models import TimeProfile
    >>> tp = TimeProfile(bins_per_day=24, weekly=False)
    >>> monday = 1_700_438_400.0  # 2023-11-20 00:00 UTC
    >>> for day in range(5):
    ...     tp.learn_one("report", monday + day * 86_400 + 9 * 3600)   # every day at 9:00
    ...     for hour in range(24):
    ...         tp.learn_one("home", monday + day * 86_400 + hour * 3600)  # all day
    >>> tp.predict_one("report", monday + 9 * 3600 + 600) > 2.0
    True
    >>> tp.predict_one("report", monday + 15 * 3600) < 1.0
    True
    >>> tp.top_keys(monday + 9 * 3600, 1)
    [('report', ...)]
    >>> tp.predict_one("unseen", monday)
    1.0
    >>> weekly = TimeProfile(bins_per_day=24)
    >>> for day in range(2):  # Monday and Tuesday at 9:00: Wednesday 9:00 is expected
    ...     weekly.learn_one("report", monday + day * 86_400 + 9 * 3600)
    ...     for hour in range(24):
    ...         weekly.learn_one("home", monday + day * 86_400 + hour * 3600)
    >>> weekly.top_keys(monday + 2 * 86_400 + 9 * 3600, 1)
    [('report', ...)]
    """

    _state_attrs: tuple[str, ...] = ("_keys", "_global")

    #: The constructor's parameters (compiled classes have no signature to read).
    PARAMS: ClassVar[tuple[str, ...]] = (
        "max_keys",
        "bins_per_day",
        "weekly",
        "utc_offset",
        "smoothing",
        "max_count",
    )

    def __init__(
        self,
        max_keys: int = 10_000,
        bins_per_day: int = 24,
        weekly: bool = True,
        utc_offset: float = 0.0,
        smoothing: float = 1.0,
        max_count: float = 4096.0,
    ) -> None:
        if max_keys < 4 or bins_per_day < 1:
            raise ValueError("max_keys must be >= 4 and bins_per_day >= 1")
        self.max_keys = max_keys
        self.bins_per_day = bins_per_day
        self.weekly = weekly
        self.utc_offset = utc_offset
        self.smoothing = smoothing
        self.max_count = max_count
        self._n_bins = bins_per_day * (7 if weekly else 1)
        self._bin_width = _DAY / bins_per_day
        # key -> [total, {bin: count}]
        self._keys: dict[Key, tuple[list[float], dict[int, float]]] = {}
        self._global: list[float] = [0.0] * self._n_bins
        self._global_total = 0.0  # sum(self._global), kept as it changes

    def time_bin(self, ts: float) -> int:
        """The bin index of ``ts`` (0 = Monday 00:00 with ``weekly``)."""
        return int((ts + self.utc_offset + _MONDAY_SHIFT) // self._bin_width) % self._n_bins

    def bin_number(self, ts: float) -> int:
        """Bins since the epoch up to ``ts``: grows with time, unlike :meth:`time_bin`."""
        return int((ts + self.utc_offset) // self._bin_width)

    def learn_one(self, key: Key, ts: float) -> None:
        """Count an access to ``key`` at wall-clock time ``ts``."""
        b = self.time_bin(ts)
        self._global[b] += 1.0
        self._global_total += 1.0
        entry = self._keys.get(key)
        if entry is None:
            entry = ([0.0], {})
            self._keys[key] = entry
            if len(self._keys) > self.max_keys:
                self._evict()
        total, bins = entry
        bins[b] = bins.get(b, 0.0) + 1.0
        total[0] += 1.0
        if total[0] > self.max_count:
            for k in bins:
                bins[k] *= 0.5
            total[0] *= 0.5

    def predict_one(self, key: Key, ts: float) -> float:
        """Lift of ``key`` at ``ts``: P(bin | key) / P(bin | all traffic); 1.0 if unknown."""
        entry = self._keys.get(key)
        if entry is None:
            return 1.0
        return self._lift(entry, self.time_bin(ts))

    def top_keys(
        self, ts: float, n: int, min_reads: float = 0.0, min_lift: float = 1.0
    ) -> list[tuple[Key, float]]:
        """The ``n`` keys with the highest lift at ``ts`` (above ``min_lift``), highest
        first; only keys read at least ``min_reads`` times (counts decay, see
        ``max_count``)."""
        b = self.time_bin(ts)
        scored = (
            (key, self._lift(entry, b))
            for key, entry in self._keys.items()
            if entry[0][0] >= min_reads
        )
        top = heapq.nlargest(n, scored, key=lambda kv: kv[1])
        return [item for item in top if item[1] > min_lift]

    @property
    def n_tracked(self) -> int:
        return len(self._keys)

    def _lift(self, entry: tuple[list[float], dict[int, float]], b: int) -> float:
        """P(bin | key) / P(bin | all traffic), the key's profile shrunk towards the traffic's.

        The prior is ``smoothing`` pseudo-reads per bin spread like the traffic (not
        evenly): a key read a few times is never "seasonal" merely because the
        night is quiet.
        """
        a = self.smoothing
        nb = self._n_bins
        total = entry[0][0]
        bins = entry[1]
        everyone = self._global
        all_total = self._global_total
        prior = a * nb
        p_all = (everyone[b] + a) / (all_total + prior)
        lift = ((bins.get(b, 0.0) + prior * p_all) / (total + prior)) / p_all
        if self.weekly:  # the same hour on every day of the week
            per_day = self.bins_per_day
            hour = b % per_day
            key_hour = 0.0
            all_hour = 0.0
            days = 0
            for day in range(7):
                index = hour + day * per_day
                reads = bins.get(index, 0.0)
                if reads > 0.0:
                    key_hour += reads
                    days += 1
                all_hour += everyone[index]
            if days < 2:  # one day's reads are no daily habit (a new key, a burst)
                return lift
            prior = a * per_day
            p_hour = (all_hour + a) / (all_total + prior)
            daily = ((key_hour + prior * p_hour) / (total + prior)) / p_hour
            if daily > lift:
                lift = daily
        return lift

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._global_total = float(sum(self._global))

    def _evict(self) -> None:
        keep = (self.max_keys * 3) // 4
        top = heapq.nlargest(keep, self._keys.items(), key=lambda item: item[1][0][0])
        self._keys = dict(top)

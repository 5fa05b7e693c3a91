"""The one latency histogram: cheap to record, mergeable, and safe to read from a topic.

Every latency cachecast reports goes through :class:`LatencyHistogram`: the
client's per-operation latencies, the worker's window statistics (which travel
as stats deltas and snapshots and are merged across workers), the consume lag,
loop stalls and GC pauses, and the replay's warm latencies.

A sample costs one ``int.bit_length``, two shifts and a list increment: no list
of samples, no sorting, bounded memory (504 counters). Values are non-negative
integers (microseconds); below 16 each value has its own bucket, above there are
8 log-spaced buckets per power of two, so a reported quantile is within about
6 % of the true value.

>>> h = LatencyHistogram()
>>> for us in range(1, 1001):
...     h.record(us)
>>> h.count, h.quantile(0.5), h.quantile(0.99), h.maximum
(1000, 495, 991, 1000)
>>> other = LatencyHistogram.from_dict(h.to_dict())
>>> other.merge(h)
>>> other.count, other.quantile(0.5)
(2000, 495)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["LatencyHistogram", "checked_count"]

_SUB_BITS: Final = 3
_SUB: Final = 1 << _SUB_BITS
#: Values below this are their own bucket; above, 8 buckets per power of two.
_LINEAR: Final = 2 * _SUB
#: Enough buckets for any 64-bit microsecond value.
BUCKETS: Final = (64 - _SUB_BITS) * _SUB + _LINEAR
_MAX_VALUE: Final = (1 << 63) - 1

#: The bucket scheme of window statistics written before this module existed:
#: ``[1.05**i, 1.05**(i+1))``, i in [0, 500]. Still read (a rolling upgrade has
#: older workers' deltas in flight); each bucket is re-counted at its midpoint.
_LEGACY_GROWTH: Final = 1.05
_LEGACY_MAX_BUCKET: Final = 500


def _bucket_low(index: int) -> int:
    if index < _LINEAR:
        return index
    octave, sub = divmod(index - _LINEAR, _SUB)
    return (_SUB + sub) << (octave + 1)


def _bucket_of(value: int) -> int:
    if value < _LINEAR:
        return value if value > 0 else 0
    shift = value.bit_length() - _SUB_BITS - 1
    return (shift << _SUB_BITS) + (value >> shift)


def _midpoint(index: int) -> int:
    return (_bucket_low(index) + _bucket_low(index + 1) - 1) // 2


class LatencyHistogram:
    """Fixed log-bucket histogram of non-negative integer latencies (microseconds)."""

    __slots__ = ("counts", "max")

    def __init__(self) -> None:
        self.counts: list[int] = [0] * BUCKETS
        self.max = 0

    def record(self, value: int) -> None:
        """Add one sample (negative values count as 0). The cache path's call."""
        if value < _LINEAR:
            if value < 0:
                value = 0
            self.counts[value] += 1
        else:
            if value > _MAX_VALUE:
                value = _MAX_VALUE
            shift = value.bit_length() - _SUB_BITS - 1
            self.counts[(shift << _SUB_BITS) + (value >> shift)] += 1
            if value > self.max:
                self.max = value

    def add(self, value: float, n: int = 1) -> None:
        """Add ``n`` samples of ``value`` (rounded; clamped to 0 .. 2**63-1)."""
        sample = min(_MAX_VALUE, max(0, round(value))) if math.isfinite(value) else _MAX_VALUE
        self.counts[_bucket_of(sample)] += n
        if sample >= _LINEAR and sample > self.max:
            self.max = sample

    def merge(self, other: LatencyHistogram) -> None:
        """Add every sample of ``other`` (exact: the buckets are the same everywhere)."""
        counts = self.counts
        for index, n in enumerate(other.counts):
            if n:
                counts[index] += n
        if other.max > self.max:
            self.max = other.max

    @property
    def count(self) -> int:
        """Samples recorded (summed on demand: recording stays two operations)."""
        return sum(self.counts)

    def quantile(self, q: float) -> int:
        """The ``q`` quantile (0..1): midpoint of the bucket holding it, 0 when empty."""
        count = self.count
        if count == 0:
            return 0
        rank = max(1, round(q * count))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return min(self.maximum, _midpoint(index))
        return self.maximum

    @property
    def maximum(self) -> int:
        """The largest sample (exact above 15 µs; the largest small bucket otherwise)."""
        if self.max:
            return self.max
        return max((i for i, n in enumerate(self.counts[:_LINEAR]) if n), default=0)

    def mean(self) -> float:
        """The mean, from the bucket midpoints (within about 6 %); 0 when empty."""
        count = 0
        total = 0.0
        for index, n in enumerate(self.counts):
            if n:
                count += n
                total += n * (_bucket_low(index) + _bucket_low(index + 1) - 1) / 2
        return total / count if count else 0.0

    def summary(self) -> dict[str, int]:
        """count, p50, p90, p99 and max, in microseconds."""
        return {
            "count": self.count,
            "p50": self.quantile(0.50),
            "p90": self.quantile(0.90),
            "p99": self.quantile(0.99),
            "max": self.maximum,
        }

    def cumulative(self, bounds: list[float]) -> tuple[list[int], float]:
        """Counts at or below each of ``bounds`` (ascending, µs), and the sum of samples.

        For a Prometheus histogram: a bucket's samples count below a bound when its
        midpoint does (so within a bucket's width, about 6 %); the sum is of midpoints.

        >>> h = LatencyHistogram()
        >>> for v in (10, 100, 1000):
        ...     h.record(v)
        >>> counts, total = h.cumulative([50.0, 500.0])
        >>> counts, 1000 < total < 1250
        ([1, 2], True)
        """
        counts = [0] * len(bounds)
        total = 0.0
        for index, n in enumerate(self.counts):
            if not n:
                continue
            mid = _midpoint(index)
            total += mid * n
            for i, bound in enumerate(bounds):
                if mid <= bound:
                    counts[i] += n
        return counts, total

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form: the non-empty buckets and the maximum."""
        return {
            "log2": {str(index): n for index, n in enumerate(self.counts) if n},
            "max": self.max,
        }

    @classmethod
    def from_dict(cls, data: Any, name: str = "histogram") -> LatencyHistogram:
        """Read :meth:`to_dict`'s form back, validating it: it arrives from a topic.

        Buckets must be integers in ``[0, 503]`` with non-negative integer counts
        below 2**63; anything else raises ``ValueError`` naming ``name`` (a crafted
        bucket like ``1e6`` would otherwise break every quantile). The form older
        workers wrote (``{"<1.05-bucket>": n}``) is read too.

        >>> LatencyHistogram.from_dict({"log2": {"99999": 1}, "max": 0}, "latency")
        Traceback (most recent call last):
        ...
        ValueError: latency: bucket 99999 is outside [0, 503]
        >>> LatencyHistogram.from_dict({"48": 2}).quantile(0.5)  # legacy: 1.05**48.5 = 10.6 µs
        11
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{name}: expected an object, got {type(data).__name__}")
        hist = cls()
        if "log2" not in data:
            for index, n in _buckets(name, data, _LEGACY_MAX_BUCKET):
                hist.add(0.5 if index == 0 else _LEGACY_GROWTH ** (index + 0.5), n)
            return hist
        for index, n in _buckets(name, data["log2"], BUCKETS - 1):
            hist.counts[index] += n
        largest = checked_count(f"{name}.max", data.get("max", 0))
        top = max((i for i, n in enumerate(hist.counts) if n), default=-1)
        if top >= _LINEAR:  # the maximum lies in the highest non-empty bucket
            low, high = _bucket_low(top), min(_MAX_VALUE, _bucket_low(top + 1) - 1)
            hist.max = largest if low <= largest <= high else high
        return hist


def _buckets(name: str, data: Any, highest: int) -> list[tuple[int, int]]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{name}: expected an object of buckets, got {type(data).__name__}")
    out: list[tuple[int, int]] = []
    for key, n in data.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: bucket {key!r} is not an integer") from None
        if not 0 <= index <= highest:
            raise ValueError(f"{name}: bucket {index} is outside [0, {highest}]")
        out.append((index, checked_count(f"{name}[{index}]", n)))
    return out


def checked_count(name: str, value: Any) -> int:
    """``value`` if it is a count (an int in 0 .. 2**63-1), else ``ValueError`` naming ``name``."""
    if type(value) is not int or not 0 <= value <= _MAX_VALUE:
        raise ValueError(f"{name}: {value!r} is not a count (a non-negative integer below 2**63)")
    return value

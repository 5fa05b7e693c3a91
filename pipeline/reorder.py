"""Put a re-partitioned stream back in time order, within a bounded delay.

Access events of one sequence (a session, a user, a client) arrive on the
access topic spread over its partitions, and reach the sequence partition as
interleaved batches. The sequence models need them in order. A
:class:`Reorderer` holds events for at most ``delay`` seconds and releases them
sorted by their timestamp: an event is released once an event at least
``delay`` newer has been seen (a watermark on the events' own clock), or once it
has waited ``delay`` on the local clock (so a quiet stream is not held back).
Events that arrive after newer ones were released are passed on at once: late,
but never lost.

>>> r = Reorderer(delay=0.010, clock=lambda: 0.0)
>>> r.push([{"ts": 1.000}, {"ts": 1.002}])
[]
>>> [e["ts"] for e in r.push([{"ts": 1.001}, {"ts": 1.020}])]
[1.0, 1.001, 1.002]
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Reorderer"]


class Reorderer:
    """A bounded-delay reordering buffer over dicts with a ``"ts"`` field."""

    def __init__(self, delay: float, clock: Callable[[], float] = time.monotonic) -> None:
        if delay < 0:
            raise ValueError("delay must be >= 0")
        self.delay = delay
        self.clock = clock
        self._heap: list[tuple[float, int, float, dict[str, Any]]] = []
        self._seq = itertools.count()
        self._max_ts = float("-inf")
        self._released_ts = float("-inf")
        self.late = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Add events; return those now due, in time order."""
        now = self.clock()
        late: list[dict[str, Any]] = []
        for event in events:
            ts = event["ts"]
            if ts < self._released_ts:
                late.append(event)
                continue
            self._max_ts = max(self._max_ts, ts)
            heapq.heappush(self._heap, (ts, next(self._seq), now, event))
        self.late += len(late)
        return late + self.release(now)

    def release(self, now: float | None = None) -> list[dict[str, Any]]:
        """Events due by the watermark or by their time in the buffer."""
        now = self.clock() if now is None else now
        watermark = self._max_ts - self.delay
        heap = self._heap
        out: list[dict[str, Any]] = []
        while heap and (heap[0][0] <= watermark or now - heap[0][2] >= self.delay):
            ts, _, _, event = heapq.heappop(heap)
            self._released_ts = ts
            out.append(event)
        return out

    def drain(self) -> list[dict[str, Any]]:
        """Everything held, in time order."""
        out = [heapq.heappop(self._heap)[3] for _ in range(len(self._heap))]
        if out:
            self._released_ts = max(self._released_ts, out[-1]["ts"])
        return out

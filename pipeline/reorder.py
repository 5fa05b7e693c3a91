"""Put a re-partitioned stream back in time order, holding events no longer than needed.

Access events of one sequence (a session, a user, a client) arrive on the
access topic spread over its partitions, and reach the sequence partition as
interleaved batches, one stream per *source* (the access partition that
re-batched them). The sequence models need them in order. A :class:`Reorderer`
keeps a watermark per source: the newest timestamp that source has sent, minus
the disorder it has shown lately (a source fed by several clients is a little
out of order itself). An event is released once every active source's
watermark has passed it, so no event still to come should be older, or once it
has waited ``delay`` on the local clock (so a quiet or slow source never holds
the others back longer than that).

One in-order source is therefore never held at all, and several busy sources
are held only as long as their slowest is behind. Events that arrive after newer
ones were released are passed on at once: late, but never lost.

The longest hold adapts: a late event raises it to twice the time (local clock)
between the arrival of the newer event that was released before it and its own
arrival (at most ``max_delay``), and it decays back towards ``delay`` (halving the
difference every :data:`HOLD_HALF_LIFE_S`). One worker feeding the stream is
rarely late and keeps the short hold; sources on two workers, whose batches
reach the sequence partition tens of milliseconds apart, get the hold they need
without anyone setting it (with a fixed 10 ms hold, two workers learnt 8-18 of
30 successor pairs in three rounds, where one worker learnt at least 10).

>>> r = Reorderer(delay=0.010, clock=lambda: 0.0)
>>> [e["ts"] for e in r.push([{"ts": 1.000}, {"ts": 1.002}], source=0)]
[1.0, 1.002]
>>> r.push([{"ts": 1.005}], source=1)  # a second source: wait for both
[]
>>> [e["ts"] for e in r.push([{"ts": 1.004}, {"ts": 1.009}], source=0)]
[1.004, 1.005]
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any

__all__ = ["Reorderer"]

#: A source silent for this long (local clock) no longer holds the others back.
SOURCE_IDLE_S = 1.0
#: How fast a source's remembered disorder fades (halves per this many seconds).
SLACK_HALF_LIFE_S = 5.0
#: How fast a raised hold falls back towards the configured delay.
HOLD_HALF_LIFE_S = 30.0
#: The longest hold late events can raise it to, unless the constructor says otherwise.
MAX_DELAY_S = 0.5


class _Source:
    __slots__ = ("max_ts", "seen", "slack")

    def __init__(self, now: float) -> None:
        self.max_ts = float("-inf")
        self.slack = 0.0
        self.seen = now


class Reorderer:
    """A bounded-delay reordering buffer over dicts with a ``"ts"`` field."""

    def __init__(
        self,
        delay: float,
        clock: Callable[[], float] = time.monotonic,
        max_delay: float | None = None,
    ) -> None:
        if delay < 0:
            raise ValueError("delay must be >= 0")
        #: The configured (shortest) hold, the longest one, and the one in force.
        self.min_delay = delay
        if max_delay is None:  # a delay of 0 asks for no holding at all: it stays 0
            max_delay = MAX_DELAY_S if delay > 0 else 0.0
        self.max_delay = max(delay, max_delay)
        self.delay = delay
        self._delay_at = clock()
        self.clock = clock
        self._heap: list[tuple[float, int, float, dict[str, Any]]] = []
        self._seq = itertools.count()
        self._sources: dict[Hashable, _Source] = {}
        self._released_ts = float("-inf")
        self._released_arrival = float("-inf")  # local arrival time of the last released event
        self.late = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(
        self, events: Iterable[dict[str, Any]], source: Hashable = None
    ) -> list[dict[str, Any]]:
        """Add events from ``source``; return those now due, in time order."""
        now = self.clock()
        if self.delay > self.min_delay:
            self._relax(now)
        state = self._sources.get(source)
        if state is None:
            state = self._sources[source] = _Source(now)
        else:
            state.slack *= 0.5 ** ((now - state.seen) / SLACK_HALF_LIFE_S)
            state.seen = now
        late: list[dict[str, Any]] = []
        max_ts, slack, delay = state.max_ts, state.slack, self.delay
        if not self._heap and isinstance(events, list) and events:
            batch = self._pass_through(events, state, now)
            if batch is not None:
                return batch
        for event in events:
            ts = event["ts"]
            if ts >= max_ts:
                max_ts = ts
            elif max_ts - ts > slack:
                slack = min(delay, max_ts - ts)
            if ts < self._released_ts:
                late.append(event)
                continue
            heapq.heappush(self._heap, (ts, next(self._seq), now, event))
        state.max_ts, state.slack = max_ts, slack
        if late:
            self.late += len(late)
            held = min(self.max_delay, 2 * (now - self._released_arrival))
            if held > self.delay:
                self.delay, self._delay_at = held, now
        return late + self.release(now)

    def _relax(self, now: float) -> None:
        """Let a raised hold fall back towards the configured one."""
        excess = (self.delay - self.min_delay) * 0.5 ** ((now - self._delay_at) / HOLD_HALF_LIFE_S)
        self.delay = self.min_delay + (excess if excess > 1e-4 else 0.0)
        self._delay_at = now

    def _pass_through(
        self, events: list[dict[str, Any]], state: _Source, now: float
    ) -> list[dict[str, Any]] | None:
        """The common case, without the heap: nothing held, and a sorted batch all due."""
        first, last = events[0]["ts"], events[-1]["ts"]
        if first < self._released_ts or first < state.max_ts - state.slack:
            return None
        previous = first
        for event in events:
            ts = event["ts"]
            if ts < previous:
                return None
            previous = ts
        before = state.max_ts
        state.max_ts = max(before, last)
        if last > self.watermark(now):
            state.max_ts = before
            return None
        self._released_ts = last
        self._released_arrival = now
        return events

    def watermark(self, now: float | None = None) -> float:
        """Events up to this timestamp are not expected from any active source any more."""
        now = self.clock() if now is None else now
        marks = [s.max_ts - s.slack for s in self._sources.values() if now - s.seen < SOURCE_IDLE_S]
        return min(marks) if marks else float("-inf")

    def release(self, now: float | None = None) -> list[dict[str, Any]]:
        """Events due by the watermark or by their time in the buffer."""
        now = self.clock() if now is None else now
        heap = self._heap
        if not heap:
            return []
        watermark = self.watermark(now)
        out: list[dict[str, Any]] = []
        while heap and (heap[0][0] <= watermark or now - heap[0][2] >= self.delay):
            ts, _, arrived, event = heapq.heappop(heap)
            self._released_ts, self._released_arrival = ts, arrived
            out.append(event)
        return out

    def drain(self) -> list[dict[str, Any]]:
        """Everything held, in time order."""
        out = [heapq.heappop(self._heap)[3] for _ in range(len(self._heap))]
        if out:
            self._released_ts = max(self._released_ts, out[-1]["ts"])
            self._released_arrival = self.clock()  # released by force, not by lateness
        return out

"""Decide: from learned predictions to WarmupCommands.

The engine says which keys it expects soon; the decider adds what a production
warmer needs around that: only reads teach the models (a write after a miss is
the same request, not a new one), events are fed in time order, a key warmed
recently is not warmed again, and every command carries a TTL, a deadline after
which it is stale, and the time of the access that triggered it.

The engine runs on a request clock: its ``ts`` is the number of reads this
partition has seen, exactly as in the offline simulator (where ``ts`` is the
request index), so every knob tuned offline (horizons, windows, budgets, all in
requests) means the same online, whatever the traffic rate. The command's TTL is
the default; the Redis writer replaces it with the key's smart TTL, which the
observe agent learns in wall-clock seconds from every access of the key.

>>> from pipeline.config import Settings
>>> from pipeline.models import WarmEngine
>>> settings = Settings(model_admission_threshold=0.5)
>>> engine = WarmEngine(engine_config(settings))
>>> decider = Decider(settings, model_version="doc", clock=lambda: 1_000.0)
>>> events = [{"namespace": "shop", "key": k, "ts": float(i), "op": "get", "outcome": "miss",
...            "user": None, "warmed": False} for i, k in enumerate(["a", "b", "c"] * 50)]
>>> commands = decider.decide(engine, events)
>>> sorted({c["key"] for c in commands}) <= ["a", "b", "c"]
True
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any, Final

from pipeline.config import Settings
from pipeline.models import EngineConfig, WarmEngine
from pipeline.ttl import command_ttl
from schemas.contracts import READ_OPS

__all__ = [
    "LIVE_AGE_S",
    "WALL_SKEW_S",
    "Decider",
    "LookaheadTuner",
    "WarmLatency",
    "engine_config",
]

_DEDUP_MEMO: Final = 200_000


def engine_config(settings: Settings) -> EngineConfig:
    """The engine's knobs from the settings (time in requests, see the module doc)."""
    return EngineConfig(
        max_keys=settings.model_max_tracked_keys,
        threshold=settings.model_admission_threshold,
        min_threshold=min(0.5, settings.model_admission_threshold),
        waste_budget=settings.model_waste_budget,
        rule_waste_budget=settings.model_rule_waste_budget,
        wall_clock=False,  # the engine counts requests; events' own times feed wall_time
        wall_time=settings.model_wall_time,
        max_users=settings.model_max_users,
        session_gap=settings.model_session_gap_s,
        lookahead=2 + settings.model_delay_requests,
        lead=float(settings.model_lead_requests),
        seed=settings.seed,
    )


def _in_time_order(events: Sequence[dict[str, Any]]) -> Sequence[dict[str, Any]]:
    """``events`` sorted by ``ts`` (they usually are already: then no copy is made)."""
    previous = float("-inf")
    for event in events:
        ts: float = event["ts"]
        if ts < previous:
            return sorted(events, key=lambda e: e["ts"])
        previous = ts
    return events


def _served(event: dict[str, Any]) -> bool | None:
    """Whether the cache served a read, as the models learn it (None: unknown).

    A miss that joined a load in flight cost the origin nothing more: to the models
    it is the hit a cache gives once the first reader's load is in. Counted as a
    miss, it would open rule trials and grow the waste budget's count of origin
    reads with every concurrent reader of a key.
    """
    outcome = event["outcome"]
    if outcome == "miss":
        return bool(event.get("joined", False))
    return True if outcome == "hit" else None


#: Events older than this when decided mean the worker is catching up on a backlog:
#: the lookahead is not retuned from them (nor from warms slower than this).
LIVE_AGE_S: Final = 1.0
#: An event's own time feeds the time-of-week profiles only within this many seconds
#: of the worker's clock: one event from the far future would hold the profiles'
#: hour until then, and a backlog's past hours would raise warms for hours gone.
WALL_SKEW_S: Final = 300.0


class WarmLatency:
    """The latest warm latencies (trigger to written, seconds) a worker measured.

    >>> latency = WarmLatency()
    >>> for ms in range(1, 101):
    ...     latency.add(ms / 1000)
    >>> latency.quantile(0.5), latency.quantile(0.99)
    (0.05, 0.099)
    """

    def __init__(self, size: int = 1024, min_samples: int = 20) -> None:
        self._recent: deque[float] = deque(maxlen=size)
        self.min_samples = min_samples

    def __len__(self) -> int:
        return len(self._recent)

    def add(self, seconds: float) -> None:
        if seconds >= 0.0:
            self._recent.append(seconds)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of the recent latencies; None until ``min_samples`` are in."""
        if len(self._recent) < self.min_samples:
            return None
        ordered = sorted(self._recent)
        return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1)))]


class LookaheadTuner:
    """Keeps an engine's lead and lookahead at (warm latency x request rate).

    The engine counts time in requests; warms take milliseconds. How many requests
    pass while a warm is on its way is the partition's request rate times the warm
    latency, and both move (traffic has a daily rhythm; latency follows load). Every
    ``every_s`` seconds of event time the tuner measures the rate (reads between
    two tunings over their time span, smoothed) and sets the engine's lead to
    rate x median latency and its delay to rate x p90 latency. (The p90, not the
    p99: predicting further ahead for the slowest warms costs more in precision
    than it wins; on the demo trace a p99-based delay halved the gain.) Until
    enough warms are written to measure their latency, ``fallback`` stands in: the
    decider's measure of how old events are when decided. A worker catching up on a
    backlog (events older than :data:`LIVE_AGE_S` when decided) does not retune.
    """

    def __init__(
        self,
        latency: WarmLatency,
        every_s: float = 5.0,
        max_requests: int = 4096,
        fallback: WarmLatency | None = None,
    ) -> None:
        self.latency = latency
        self.fallback = fallback
        self.every_s = every_s
        self.max_requests = max_requests
        self.rate = 0.0
        self.lead = -1.0
        self.delay = -1
        self._mark_ts: float | None = None
        self._mark_requests = 0

    def observe(self, engine: WarmEngine, requests: int, ts: float) -> bool:
        """Called after each batch with the request count and the newest event time;
        True when the engine was retuned."""
        if self._mark_ts is None:
            self._mark_ts, self._mark_requests = ts, requests
            return False
        span = ts - self._mark_ts
        if span < self.every_s:
            return False
        rate = (requests - self._mark_requests) / span
        self.rate = rate if self.rate == 0.0 else 0.5 * (self.rate + rate)
        self._mark_ts, self._mark_requests = ts, requests
        source = self.latency
        if len(source) < source.min_samples and self.fallback is not None:
            source = self.fallback  # too few warms written yet: how late events reach decide
        median, tail = source.quantile(0.5), source.quantile(0.9)
        if median is None or tail is None:
            return False  # nothing measured yet: keep the configured values
        lead = min(float(self.max_requests), round(self.rate * median, 1))
        delay = min(self.max_requests, math.ceil(self.rate * tail))
        if abs(lead - self.lead) < 0.5 and delay == self.delay:
            return False
        self.lead, self.delay = lead, delay
        engine.retune(lead, 2 + delay)
        return True


class Decider:
    """Feeds one engine in time order and turns its candidates into commands.

    With a :class:`WarmLatency` and ``model_auto_lookahead`` on, a
    :class:`LookaheadTuner` keeps the engine's lead and delay in step with the
    measured warm latency and this partition's request rate.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        model_version: str,
        clock: Callable[[], float] = time.time,
        latency: WarmLatency | None = None,
    ) -> None:
        self.settings = settings
        self.model_version = model_version
        self.clock = clock
        self.requests = 0
        self._warmed_at: OrderedDict[str, float] = OrderedDict()
        self.suppressed = 0
        #: How old events are when decided (now - ts): the tuner's estimate of the warm
        #: latency until enough warms have been written to measure it.
        self.age = WarmLatency()
        self.tuner: LookaheadTuner | None = (
            LookaheadTuner(latency, fallback=self.age)
            if latency is not None and settings.model_auto_lookahead
            else None
        )

    def decide(self, engine: WarmEngine, events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Learn from ``events`` (validated AccessEvent dicts) and return WarmupCommand dicts."""
        commands: list[dict[str, Any]] = []
        now = self.clock()
        deadline = now + self.settings.warm_deadline_s
        dedup = self.settings.warm_dedup_s
        warming = self.settings.warming_enabled
        if self.requests == 0:
            # Resume the request clock where a restored engine stopped.
            self.requests = int(engine.stats()["events"])
        observe = engine.observe
        ttl = command_ttl(self.settings)
        # Sequence predictions are left to the edge, where prefetch rules act at once.
        skip_sequences = self.settings.rules_publish and not self.settings.worker_sequences
        ordered = _in_time_order(events)
        for event in ordered:
            if event["op"] not in READ_OPS:
                continue
            self.requests += 1
            hit = _served(event)
            candidates = observe(
                event["namespace"] + ":" + event["key"],
                float(self.requests),
                user=event["user"],
                hit=hit,
                warmed=event["warmed"],
                wall_ts=event["ts"] if abs(now - event["ts"]) <= WALL_SKEW_S else -1.0,
                event_ts=event["ts"],
            )
            for candidate in candidates:
                if skip_sequences and candidate.reason == "similarity":
                    self.suppressed += 1
                    continue
                full = str(candidate.key)
                last = self._warmed_at.get(full)
                if last is not None and now - last < dedup:
                    self.suppressed += 1
                    continue
                if not warming:
                    self.suppressed += 1
                    continue
                self._remember(full, now)
                namespace, _, key = full.partition(":")
                commands.append(
                    {
                        "namespace": namespace,
                        "key": key,
                        "score": min(1.0, max(0.0, float(candidate.score))),
                        "reason": candidate.reason,
                        "ttl": ttl,
                        "deadline": deadline,
                        "issued_at": now,
                        "trigger_ts": event["ts"],
                        "model_version": self.model_version,
                        "version": 1,
                    }
                )
        if self.tuner is not None and ordered:
            newest = float(ordered[-1]["ts"])
            if now - newest < LIVE_AGE_S:  # live traffic, not a backlog being caught up
                self.age.add(now - float(ordered[len(ordered) // 2]["ts"]))
                self.tuner.observe(engine, self.requests, newest)
        return commands

    def _remember(self, full: str, now: float) -> None:
        self._warmed_at[full] = now
        self._warmed_at.move_to_end(full)
        if len(self._warmed_at) > _DEDUP_MEMO:
            self._warmed_at.popitem(last=False)

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

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Final

from pipeline.config import Settings
from pipeline.models import EngineConfig, WarmEngine
from schemas.contracts import READ_OPS

__all__ = ["Decider", "engine_config"]

_DEDUP_MEMO: Final = 200_000


def engine_config(settings: Settings) -> EngineConfig:
    """The engine's knobs from the settings (time in requests, see the module doc)."""
    return EngineConfig(
        max_keys=settings.model_max_tracked_keys,
        threshold=settings.model_admission_threshold,
        min_threshold=min(0.5, settings.model_admission_threshold),
        wall_clock=False,
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


class Decider:
    """Feeds one engine in time order and turns its candidates into commands."""

    def __init__(
        self,
        settings: Settings,
        *,
        model_version: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.model_version = model_version
        self.clock = clock
        self.requests = 0
        self._warmed_at: OrderedDict[str, float] = OrderedDict()
        self.suppressed = 0

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
        ttl = self.settings.redis_default_ttl
        for event in _in_time_order(events):
            if event["op"] not in READ_OPS:
                continue
            self.requests += 1
            outcome = event["outcome"]
            hit = True if outcome == "hit" else False if outcome == "miss" else None
            candidates = observe(
                event["namespace"] + ":" + event["key"],
                float(self.requests),
                user=event["user"],
                hit=hit,
                warmed=event["warmed"],
            )
            for candidate in candidates:
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
        return commands

    def _remember(self, full: str, now: float) -> None:
        self._warmed_at[full] = now
        self._warmed_at.move_to_end(full)
        if len(self._warmed_at) > _DEDUP_MEMO:
            self._warmed_at.popitem(last=False)

"""Time-of-week profiles on the worker's clocks: the engine counts requests, and the
events' own wall-clock times tell it when in the day and the week keys are read.

The workload is SYNTHETIC (pipeline.sim.synthetic), with known ground truth.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

import numpy as np

from pipeline.config import Settings
from pipeline.decide import Decider, engine_config
from pipeline.models import EngineConfig, WarmEngine
from pipeline.sim.synthetic import MONDAY, synthetic_workload

_DAY = 86_400.0


def _hour(ts: float) -> int:
    return int(((ts - MONDAY) % _DAY) // 3600)


def test_the_generator_puts_in_what_its_truth_says() -> None:
    trace, truth = synthetic_workload(days=3, requests_per_day=6_000, seed=3)
    assert trace.users is not None
    keys, ts = trace.keys.tolist(), trace.ts.tolist()
    for key, when in zip(keys, ts, strict=True):
        if key in truth.daily:
            assert _hour(when) == truth.daily[key]  # daily keys only in their hour
        if key in truth.weekly:
            weekday = int((when - MONDAY) // _DAY) % 7
            assert (weekday, _hour(when)) == truth.weekly[key]
    counts = Counter(keys)
    one_hit = [k for k in counts if k >= 10_000_000_000]
    assert len(one_hit) == truth.one_hit_requests
    assert all(counts[k] == 1 for k in one_hit)
    assert len(truth.cohort_of) == int(trace.users.max()) + 1
    # Traffic follows the day: the afternoon is busier than the night.
    hours = np.array([_hour(t) for t in ts])
    assert (hours == 15).sum() > 3 * (hours == 3).sum()


def _lru_hits(keys: list[int], fraction: float = 0.05) -> list[bool]:
    """Whether each read hits an LRU cache of ``fraction`` of the keys (what the
    application's cache would report; the models learn the cache horizon from it)."""
    size = max(1, int(len(set(keys)) * fraction))
    cache: OrderedDict[int, None] = OrderedDict()
    hits = []
    for key in keys:
        hit = key in cache
        hits.append(hit)
        cache[key] = None
        cache.move_to_end(key)
        if len(cache) > size:
            cache.popitem(last=False)
    return hits


def _temporal_raises(config: EngineConfig, days: int = 4) -> list[tuple[int, float]]:
    """(key, wall time) of every temporal candidate admitted, on the worker's clocks.

    Without the workload's users: they are drawn anew for every request (no
    sessions), and the user models' warms would spend the waste budget the time
    profiles are tested for here.
    """
    trace, _ = synthetic_workload(days=days, requests_per_day=20_000, seed=0)
    engine = WarmEngine(config)
    raised: list[tuple[int, float]] = []
    keys = trace.keys.tolist()
    hits = _lru_hits(keys)
    for i, (key, wall) in enumerate(zip(keys, trace.ts.tolist(), strict=True)):
        for candidate in engine.observe(key, float(i), hit=hits[i], warmed=False, wall_ts=wall):
            if candidate.reason == "temporal":
                raised.append((int(candidate.key), wall))  # type: ignore[call-overload]
    return raised


def test_daily_keys_are_raised_as_their_hour_begins() -> None:
    _, truth = synthetic_workload(days=4, requests_per_day=20_000, seed=0)
    raised = _temporal_raises(EngineConfig(lead=5.0))
    daily = [(key, wall) for key, wall in raised if key in truth.daily]
    weekly = [key for key, _ in raised if key in truth.weekly]
    assert len(daily) >= 100, len(raised)
    assert len(daily) + len(weekly) >= 0.5 * len(raised)  # mostly the keys that have a time
    # Raised just before their hour (lead: 5 requests, seconds) or in its first minutes.
    on_time = [(key, wall) for key, wall in daily if truth.daily[key] == _hour(wall + 120.0)]
    assert len(on_time) >= 0.9 * len(daily)
    minutes = [((wall + 120.0 - MONDAY) % 3600) / 60 for _, wall in on_time]
    assert np.median(minutes) < 15  # early in the hour, not at its end


def test_without_wall_time_nothing_is_raised_by_time() -> None:
    assert _temporal_raises(EngineConfig(lead=5.0, wall_time=False)) == []


def test_an_engine_restored_mid_run_raises_the_same_keys() -> None:
    trace, _ = synthetic_workload(days=3, requests_per_day=20_000, seed=1)
    keys, walls = trace.keys.tolist(), trace.ts.tolist()
    hits = _lru_hits(keys)
    engine = WarmEngine(EngineConfig(lead=5.0))
    half = len(keys) // 2 + 137
    for i in range(half):
        engine.observe(keys[i], float(i), hit=hits[i], wall_ts=walls[i])
    restored = WarmEngine(EngineConfig(lead=5.0))
    restored.load_state_dict(engine.state_dict())
    raised = 0
    for i in range(half, len(keys)):
        a = engine.observe(keys[i], float(i), hit=hits[i], wall_ts=walls[i])
        b = restored.observe(keys[i], float(i), hit=hits[i], wall_ts=walls[i])
        raised += sum(c.reason == "temporal" for c in a)
        assert [(c.key, c.reason) for c in a] == [(c.key, c.reason) for c in b]
    assert raised  # the comparison covered time-profile warms


def test_the_worker_decider_warms_by_time_from_the_events_timestamps() -> None:
    trace, truth = synthetic_workload(days=4, requests_per_day=20_000, seed=0)
    settings = Settings(model_delay_requests=5)
    engine = WarmEngine(engine_config(settings))
    now = [0.0]
    decider = Decider(settings, model_version="t", clock=lambda: now[0])
    keys = trace.keys.tolist()
    hits = _lru_hits(keys)
    events: list[dict[str, Any]] = [
        {
            "namespace": "n",
            "key": str(key),
            "ts": wall,
            "op": "get",
            "outcome": "hit" if hit else "miss",
            "user": None,
            "warmed": False,
        }
        for key, wall, hit in zip(keys, trace.ts.tolist(), hits, strict=True)
    ]
    commands: list[dict[str, Any]] = []
    for i in range(0, len(events), 20):
        batch = events[i : i + 20]
        now[0] = batch[-1]["ts"] + 0.01
        if i == len(events) // 2:  # one client with its clock a year ahead changes nothing
            batch = [*batch, {**batch[-1], "key": "skewed", "ts": now[0] + 365 * _DAY}]
        commands += decider.decide(engine, batch)
    by_time = [c for c in commands if c["reason"] == "temporal"]
    assert len(by_time) >= 50
    late = [c for c in by_time if c["issued_at"] > events[len(events) // 2]["ts"] + _DAY]
    assert late  # still warming by time on the last day, after the skewed event
    assert sum(int(c["key"]) in truth.daily for c in by_time) >= 0.3 * len(by_time)
    # What the application notices: most of these warms are read within the hour.
    reads: dict[str, list[float]] = {}
    for event in events:
        reads.setdefault(event["key"], []).append(event["ts"])
    read_soon = sum(
        any(c["issued_at"] < t <= c["issued_at"] + 3600 for t in reads[c["key"]]) for c in by_time
    )
    assert read_soon >= 0.5 * len(by_time), (read_soon, len(by_time))

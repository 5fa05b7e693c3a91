"""The decider: lookahead tuning (lead and delay follow warm latency x request rate), and
which candidates the worker issues."""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

import pytest

from pipeline.config import Settings
from pipeline.decide import Decider, LookaheadTuner, WarmLatency, engine_config
from pipeline.models import WarmEngine
from pipeline.sim.synthetic import session_workload


def _events(n: int, rate: float, start: float = 1_700_000_000.0) -> list[dict[str, Any]]:
    return [
        {
            "namespace": "shop",
            "key": str(i % 50),
            "ts": start + i / rate,
            "op": "get",
            "outcome": "miss",
            "user": None,
            "warmed": False,
        }
        for i in range(n)
    ]


class Live:
    """A clock just after the newest event decided: live traffic, not a backlog."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def feed(
        self, decider: Decider, engine: WarmEngine, events: list[dict[str, Any]], n: int
    ) -> None:
        for i in range(0, len(events), n):
            batch = events[i : i + n]
            self.now = batch[-1]["ts"] + 0.005
            decider.decide(engine, batch)


def _latency(median_ms: float, tail_ms: float) -> WarmLatency:
    """90 warms at ``median_ms``, the slowest 10 at ``tail_ms`` (so p90 = ``tail_ms``)."""
    latency = WarmLatency()
    for _ in range(89):
        latency.add(median_ms / 1000)
    for _ in range(11):
        latency.add(tail_ms / 1000)
    return latency


def test_lead_and_delay_follow_latency_times_rate() -> None:
    settings = Settings(model_delay_requests=30, model_lead_requests=0, model_auto_lookahead=True)
    engine = WarmEngine(engine_config(settings))
    clock = Live()
    decider = Decider(settings, model_version="t", latency=_latency(10, 30), clock=clock)
    clock.feed(decider, engine, _events(12_000, rate=1_000.0), 500)  # 12 s at 1,000 reads/s
    # 1,000 reads/s x 10 ms median = 10 requests of lead; x 30 ms p90 = 30 of delay.
    assert engine.config.lead == pytest.approx(10.0, abs=0.5)
    assert engine.config.lookahead == 2 + 30
    assert engine.stats()["lookahead"] == 32
    assert engine.replay.lookahead == 32


def test_a_faster_rate_looks_further_ahead() -> None:
    settings = Settings(model_auto_lookahead=True)
    slow, fast = WarmEngine(engine_config(settings)), WarmEngine(engine_config(settings))
    latency = _latency(10, 30)
    for engine, rate in ((slow, 200.0), (fast, 2_000.0)):
        clock = Live()
        decider = Decider(settings, model_version="t", latency=latency, clock=clock)
        clock.feed(decider, engine, _events(int(rate * 12), rate), 100)
    assert slow.config.lookahead < fast.config.lookahead
    assert slow.config.lead < fast.config.lead


def test_until_warms_are_measured_the_age_of_events_stands_in() -> None:
    settings = Settings(model_delay_requests=7, model_lead_requests=3, model_auto_lookahead=True)
    engine = WarmEngine(engine_config(settings))
    now = [0.0]
    decider = Decider(settings, model_version="t", latency=WarmLatency(), clock=lambda: now[0])
    events = _events(12_000, rate=1_000.0)
    for i in range(0, len(events), 500):
        batch = events[i : i + 500]
        now[0] = batch[-1]["ts"] + 0.012  # decided 12 ms after the newest event
        decider.decide(engine, batch)
    # The middle event of a batch is 250 ms older at 1,000/s: 262 ms x 1,000/s.
    assert engine.config.lead == pytest.approx(262.0, abs=1.0)


def test_with_nothing_measured_the_configured_values_stay() -> None:
    settings = Settings(model_delay_requests=7, model_lead_requests=3, model_auto_lookahead=True)
    engine = WarmEngine(engine_config(settings))
    tuner = LookaheadTuner(WarmLatency())
    for ts in (0.0, 6.0, 12.0):
        assert not tuner.observe(engine, int(ts * 100), ts)
    assert (engine.config.lead, engine.config.lookahead) == (3.0, 9)


def test_auto_lookahead_is_off_unless_asked_for() -> None:
    settings = Settings()
    assert Decider(settings, model_version="t", latency=_latency(10, 30)).tuner is None


def test_retune_keeps_what_was_learned() -> None:
    engine = WarmEngine(engine_config(Settings()))
    tuner = LookaheadTuner(_latency(5, 20))
    for i, event in enumerate(_events(2_000, rate=100.0)):
        engine.observe(event["namespace"] + ":" + event["key"], float(i), hit=False)
    before = engine.stats()["events"], engine.n_tracked
    engine.retune(4.0, 12)
    assert (engine.stats()["events"], engine.n_tracked) == before
    assert engine.config.lead == 4.0
    assert engine.config.lookahead == 12
    with pytest.raises(ValueError, match="lead >= 0"):
        engine.retune(-1.0, 12)
    assert tuner.lead == -1.0  # untouched until it has tuned something


def test_a_backlog_being_caught_up_does_not_retune() -> None:
    settings = Settings(model_delay_requests=7, model_lead_requests=3, model_auto_lookahead=True)
    engine = WarmEngine(engine_config(settings))
    events = _events(12_000, rate=1_000.0)
    late = events[-1]["ts"] + 60.0  # a minute behind: a worker catching up
    decider = Decider(settings, model_version="t", latency=_latency(10, 30), clock=lambda: late)
    for i in range(0, len(events), 500):
        decider.decide(engine, events[i : i + 500])
    assert (engine.config.lead, engine.config.lookahead) == (3.0, 9)


def test_the_worker_issues_user_warms_while_leaving_sequences_to_the_rules() -> None:
    """Sessions of a SYNTHETIC workload through the worker's decide step, its defaults:
    sequence candidates go to the edge's rules, a user's session keys are the worker's."""
    settings = Settings()
    assert settings.rules_publish
    assert not settings.worker_sequences
    trace, _ = session_workload(days=2, requests_per_day=10_000, users=200)
    assert trace.users is not None
    engine = WarmEngine(engine_config(settings))
    now = [0.0]
    decider = Decider(settings, model_version="t", clock=lambda: now[0])
    cache: OrderedDict[int, None] = OrderedDict()  # what a 5% LRU cache would serve
    outcomes: list[str] = []
    for key in trace.keys.tolist():
        outcomes.append("hit" if key in cache else "miss")
        cache[key] = None
        cache.move_to_end(key)
        if len(cache) > trace.n_unique // 20:
            cache.popitem(last=False)
    events = [
        {"namespace": "shop", "key": str(k), "ts": t, "op": "get",
         "outcome": outcome, "user": f"u{u}", "warmed": False}
        for k, t, u, outcome in zip(trace.keys.tolist(), trace.ts.tolist(),
                                    trace.users.tolist(), outcomes, strict=True)
    ]  # fmt: skip
    reasons: Counter[str] = Counter()
    for i in range(0, len(events), 100):
        batch = events[i : i + 100]
        now[0] = batch[-1]["ts"]
        reasons.update(command["reason"] for command in decider.decide(engine, batch))
    assert reasons["user"] > 100, reasons
    assert reasons["similarity"] == 0


@pytest.mark.parametrize("joined", [False, True], ids=["its-own-load", "joined-a-load"])
def test_a_miss_that_joined_a_load_in_flight_teaches_the_rules_no_origin_read(
    joined: bool,
) -> None:
    """Clients reading one key at once send one miss and, for the others, misses that
    joined its load: the origin was read once. The rules learn successors and count
    origin reads from the misses that loaded, not from every concurrent reader.

    Each visit reads "a", then "b" (its own load, or joining another reader's), then
    30 keys never seen again."""
    settings = Settings()
    engine = WarmEngine(engine_config(settings))
    decider = Decider(settings, model_version="t", clock=lambda: 0.0)
    events: list[dict[str, Any]] = []
    for visit in range(200):
        reads = [("a", False), ("b", joined)] + [(f"other-{visit}-{n}", False) for n in range(30)]
        for key, concurrent in reads:
            events.append(
                {"namespace": "shop", "key": key, "ts": float(len(events)), "op": "get",
                 "outcome": "miss", "user": None, "warmed": False, "joined": concurrent}
            )  # fmt: skip
    decider.decide(engine, events)
    rules = dict(engine.rules.changed())
    if joined:  # "b" never cost a load: it is no successor, and no origin read
        assert rules.get("shop:a", []) == []
        assert engine.rules._accesses == 200 * 31
    else:
        assert [key for key, _ in rules["shop:a"]] == ["shop:b"]
        assert engine.rules._accesses == 200 * 32

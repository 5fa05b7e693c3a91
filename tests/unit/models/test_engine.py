"""WarmEngine: the façade the agents and the simulator share."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from pipeline.checkpoint import decode_snapshot, encode_snapshot
from pipeline.models import Candidate, EngineConfig, WarmEngine

SESSION = ["home", "cart", "price", "stock", "checkout", "shipping"]


def _shop_traffic(visits: int, seed: int = 0) -> list[str]:
    """Sessions replaying the same pages in order, between unique noise keys."""
    rng = random.Random(seed)
    out: list[str] = []
    for visit in range(visits):
        out += SESSION
        out += [f"noise-{visit}-{i}" for i in range(rng.randrange(40, 80))]
    return out


def _config(**changes: object) -> EngineConfig:
    base = EngineConfig(max_keys=5_000, horizon=30.0, adapt_horizon=False, threshold=0.6)
    return replace(base, **changes)  # type: ignore[arg-type]


def test_warms_the_rest_of_a_repeated_session() -> None:
    engine = WarmEngine(_config(waste_budget=None))
    warmed: list[Candidate] = []
    for ts, key in enumerate(_shop_traffic(60)):
        warmed += engine.observe(key, float(ts), hit=False)
    keys = {c.key for c in warmed}
    assert {"price", "stock", "checkout", "shipping"} <= keys
    noise = [c for c in warmed if str(c.key).startswith("noise")]
    assert len(noise) < 0.1 * len(warmed)
    assert all(c.reason in ("frequency", "recency", "similarity", "temporal") for c in warmed)
    assert all(0.6 <= c.score <= 1.0 and c.horizon == 30.0 for c in warmed)
    stats = engine.stats()
    assert stats["precision"] > 0.9
    assert stats["labels"] > 100


def test_int_and_str_keys_give_the_same_decisions() -> None:
    traffic = _shop_traffic(30)
    ids = {key: i for i, key in enumerate(dict.fromkeys(traffic))}
    by_str, by_int = WarmEngine(_config()), WarmEngine(_config())
    for ts, key in enumerate(traffic):
        a = by_str.observe(key, float(ts), hit=False)
        b = by_int.observe(ids[key], float(ts), hit=False)
        assert [ids[c.key] for c in a] == [c.key for c in b]  # type: ignore[index]


def test_observe_batch_is_observe_in_order() -> None:
    traffic = _shop_traffic(20)
    one, batch = WarmEngine(_config()), WarmEngine(_config())
    expected = [c for ts, key in enumerate(traffic) for c in one.observe(key, float(ts), hit=False)]
    got: list[Candidate] = []
    for start in range(0, len(traffic), 64):
        chunk = traffic[start : start + 64]
        got += batch.observe_batch(
            chunk,
            [float(start + i) for i in range(len(chunk))],
            hits=[False] * len(chunk),
        )
    assert got == expected
    with pytest.raises(ValueError, match="same length"):
        batch.observe_batch(["a", "b"], [1.0])


def test_snapshot_restores_identical_behaviour() -> None:
    traffic = _shop_traffic(40)
    engine = WarmEngine(_config())
    for ts, key in enumerate(traffic[:2_000]):
        engine.observe(key, float(ts), hit=ts % 3 == 0)
    restored = engine.clone()
    restored.load_state_dict(
        decode_snapshot(encode_snapshot(engine.state_dict(), stage="engine", partition=0))
    )
    for ts, key in enumerate(traffic[2_000:], start=2_000):
        assert engine.observe(key, float(ts), hit=ts % 3 == 0) == restored.observe(
            key, float(ts), hit=ts % 3 == 0
        )
    assert engine.stats() == restored.stats()


def test_snapshot_of_another_config_is_refused() -> None:
    engine = WarmEngine(_config())
    with pytest.raises(ValueError, match="different EngineConfig"):
        WarmEngine(_config(lookahead=5)).load_state_dict(engine.state_dict())


def test_a_snapshot_from_before_the_user_bound_setting_restores() -> None:
    """Configs written before ``max_users`` existed lack it; its default keeps them equal."""
    engine = WarmEngine(_config())
    for ts, key in enumerate(SESSION * 10):
        engine.observe(key, float(ts), hit=False, user="u")
    state = engine.state_dict()
    del state["engine"]["config"]["max_users"]
    restored = WarmEngine(_config())
    restored.load_state_dict(state)
    assert restored.stats() == engine.stats()
    assert restored.affinity._users == engine.affinity._users
    assert restored.affinity._users
    with pytest.raises(ValueError, match="different EngineConfig"):
        WarmEngine(_config(max_users=50)).load_state_dict(state)


def test_state_is_bounded_under_unique_keys() -> None:
    engine = WarmEngine(_config(max_keys=500, history=1_024))
    sizes = []
    for i in range(20_000):
        engine.observe(f"unique-{i}", float(i), hit=False)
        if i % 5_000 == 4_999:
            sizes.append(engine.memory_bytes())
    assert engine.n_tracked <= 500
    assert max(sizes) < 1.5 * min(sizes)  # flat, not growing with the stream


def test_backs_off_on_traffic_without_structure() -> None:
    rng = random.Random(4)
    engine = WarmEngine(EngineConfig(max_keys=5_000))
    admitted = 0
    for ts in range(60_000):
        admitted += len(engine.observe(rng.randrange(20_000), float(ts), hit=rng.random() < 0.1))
    assert admitted < 0.002 * 60_000
    assert engine.miss_ttl(12) is None


def test_learns_the_cache_horizon_from_outcomes() -> None:
    engine = WarmEngine(EngineConfig(horizon=10.0))
    rng = random.Random(1)
    last: dict[int, int] = {}
    for ts in range(50_000):
        key = rng.randrange(3_000)
        hit = key in last and ts - last[key] < 1_000
        engine.observe(key, float(ts), hit=hit)
        last[key] = ts
    assert 700 < engine.horizon_estimate < 1_400


def test_lead_warms_further_ahead() -> None:
    pages = [f"page-{i}" for i in range(30)]
    traffic: list[str] = []
    for visit in range(40):
        traffic += pages + [f"noise-{visit}-{i}" for i in range(60)]
    engine = WarmEngine(_config(lead=5.0, lookahead=7, waste_budget=None))
    warmed: list[Candidate] = []
    for ts, key in enumerate(traffic):
        warmed += engine.observe(key, float(ts), hit=False)
    assert warmed
    assert all(c.horizon == 35.0 for c in warmed)
    assert engine.stats()["precision"] > 0.9
    # Keys requested before a warm could land get no label: labels are for far keys.
    assert engine.stats()["labels"] < engine.stats()["raised"]


def test_short_ttl_for_one_hit_wonders() -> None:
    engine = WarmEngine(EngineConfig(horizon=200.0, adapt_horizon=False))
    ts = 0.0
    for i in range(20_000):
        engine.observe(f"hot-{i % 50}", ts, hit=False)
        engine.observe(f"once-{i}", ts + 0.5, hit=False)
        ts += 1.0
    ttl = engine.miss_ttl(f"once-{19_999}")
    assert ttl == pytest.approx(20.0)  # 0.1 of the horizon
    assert engine.miss_ttl("hot-3") is None  # not the key just observed
    engine.observe("hot-3", ts, hit=False)
    assert engine.miss_ttl("hot-3") is None  # known key: no short TTL
    assert engine.smart_ttl("brand-new") == 60  # short TTL, clamped to min_ttl


def test_smart_ttl_follows_the_key_rhythm() -> None:
    engine = WarmEngine(EngineConfig(ttl_jitter=0.0))
    for ts in range(0, 10_000, 500):
        engine.observe("report", float(ts))
    assert engine.smart_ttl("report") == 500
    assert engine.smart_ttl("never-seen") == 3_600


def test_user_sessions_raise_favourite_keys() -> None:
    engine = WarmEngine(_config(session_gap=100.0, threshold=0.5, waste_budget=None))
    reasons: set[str] = set()
    ts = 0.0
    for day in range(30):
        for key in ("inbox", "calendar", "inbox"):
            reasons |= {c.reason for c in engine.observe(key, ts, user="ada", hit=False)}
            ts += 1.0
        for i in range(300):
            reasons |= {c.reason for c in engine.observe(f"x{day}-{i}", ts, user="bob", hit=False)}
            ts += 1.0
    assert engine.affinity.predict_one("ada")[0][0] == "inbox"
    assert engine.scorer.stats()["labels"] > 0
    assert "user" in reasons  # ada's sessions raised her keys


def test_user_rules_name_the_keys_of_most_of_a_users_sessions() -> None:
    engine = WarmEngine(_config(session_gap=100.0, user_rule_share=0.6))
    ts = 0.0
    for session in range(5):
        for key in ("inbox", "calendar", f"once-{session}"):
            engine.observe(key, ts, user="ada")
            ts += 1.0
        ts += 1_000.0
    rules = dict(engine.user_rules())
    assert [key for key, _ in rules["ada"]] == ["inbox", "calendar"]  # not the one-offs
    assert all(0.6 <= p <= 1.0 for _, p in rules["ada"])
    assert engine.user_rules() == []  # nothing changed since
    engine.observe("inbox", ts, user="ada")
    assert [user for user, _ in engine.user_rules(limit=5)] == ["ada"]


def test_wall_clock_turns_on_time_profiles() -> None:
    engine = WarmEngine(_config())
    monday = 1_700_438_400.0
    for day in range(3):
        for hour in range(24):
            engine.observe(f"h{hour}", monday + day * 86_400 + hour * 3_600)
    assert engine.temporal.n_tracked == 24
    index_clock = WarmEngine(_config())
    index_clock.observe("a", 1.0)
    assert index_clock.temporal.n_tracked == 0


def test_deterministic() -> None:
    traffic = _shop_traffic(30, seed=9)
    runs = []
    for _ in range(2):
        engine = WarmEngine(_config())
        runs.append([engine.observe(k, float(t), hit=t % 2 == 0) for t, k in enumerate(traffic)])
    assert runs[0] == runs[1]


def test_bytes_per_tracked_key_is_bounded() -> None:
    engine = WarmEngine(EngineConfig(max_keys=20_000, history=1 << 14))
    rng = random.Random(3)
    for ts in range(60_000):
        engine.observe(int(rng.paretovariate(1.1)) % 50_000, float(ts), hit=rng.random() < 0.5)
    per_key = engine.memory_bytes() / engine.n_tracked
    assert 100 < per_key < 2_000


def test_each_strategy_reports_its_labelled_warms() -> None:
    """Sessions t_i, s_i, u_i replayed with noise: the sequence models (similarity) and the
    prefetch rules raise the warms, nearly all read in time; the rhythm and heavy-hitter
    strategies raise nothing on this traffic, so they report nothing."""
    engine = WarmEngine(EngineConfig())
    totals: dict[str, list[int]] = {}
    t = 0.0
    for round_ in range(6):
        keys = [f"shop:{p}{i}" for i in range(60) for p in "tsu"]
        keys += [f"shop:n{round_}-{j}" for j in range(300)]
        for key in keys:
            t += 1
            engine.observe(key, t, hit=False)
        for namespace, by_strategy in engine.drain_strategies().items():
            assert namespace == "shop"
            for strategy, (useful, wasted) in by_strategy.items():
                tally = totals.setdefault(strategy, [0, 0])
                tally[0] += useful
                tally[1] += wasted
    assert set(totals) == {"similarity", "rules"}
    for useful, wasted in totals.values():
        assert useful > 100
        assert useful / (useful + wasted) > 0.95
    assert engine.drain_strategies() == {}

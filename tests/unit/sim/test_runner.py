"""The simulator's policies and reference numbers."""

from __future__ import annotations

from collections import deque
from dataclasses import replace

import numpy as np
import pytest

from pipeline.models import EngineConfig
from pipeline.sim.cache import Publication, replay_lru
from pipeline.sim.cli import engine_config
from pipeline.sim.runner import cache_size_for, run, run_policy, sweep
from pipeline.sim.synthetic import session_workload
from pipeline.sim.traces import Trace

from .conftest import shared_trace

# libCacheSim's LRU rows (../shared/traces/README.md), full traces.
LIBCACHESIM_LRU = {
    "scarab_recs": {0.01: 0.6529, 0.05: 0.4829, 0.1: 0.3940},
    "cache2k_orm_busy": {0.01: 0.2297, 0.05: 0.1587, 0.1: 0.1199},
}


@pytest.mark.parametrize("name", sorted(LIBCACHESIM_LRU))
def test_lru_reproduces_libcachesim_to_three_decimals(name: str) -> None:
    trace = shared_trace(name)
    results = run(trace, sizes=(0.01, 0.05, 0.1), policies=("lru",))
    for r in results:
        assert round(r.counts.miss_ratio, 4) == pytest.approx(
            LIBCACHESIM_LRU[name][r.size_fraction], abs=0.0005
        )


def test_belady_reproduces_libcachesim() -> None:
    trace = shared_trace("scarab_recs")
    (result,) = run(trace, sizes=(0.05,), policies=("belady",))
    assert result.counts.miss_ratio == pytest.approx(0.3096, abs=0.0005)


def _naive_successor(keys: list[int], size: int) -> tuple[int, int]:
    """The README's ~50-line reference, written independently of CoAccess."""
    from collections import OrderedDict

    cache: OrderedDict[int, None] = OrderedDict()
    succ: dict[int, dict[int, int]] = {}
    seen: dict[int, int] = {}
    window: deque[int] = deque(maxlen=4)
    misses = warms = 0
    for x in keys:
        recent = list(window)
        for j, a in enumerate(recent):
            if a == x or x in recent[j + 1 :]:
                continue
            counts = succ.setdefault(a, {})
            counts[x] = counts.get(x, 0) + 1
            if len(counts) > 64:
                succ[a] = dict(sorted(counts.items(), key=lambda kv: -kv[1])[:32])
        window.append(x)
        seen[x] = seen.get(x, 0) + 1
        if x in cache:
            cache.move_to_end(x)
        else:
            misses += 1
            cache[x] = None
            if len(cache) > size:
                cache.popitem(last=False)
        if seen[x] >= 3:
            top = sorted(succ.get(x, {}).items(), key=lambda kv: -kv[1])[:2]
            for b, count in top:
                if count >= 0.3 * seen[x] and b not in cache:
                    warms += 1
                    cache[b] = None
                    if len(cache) > size:
                        cache.popitem(last=False)
    return misses, warms


def test_successor_policy_matches_the_naive_reference() -> None:
    trace = shared_trace("scarab_recs", 60_000)
    size = 600
    counts = run_policy(trace, "lru+successor", size)
    misses, warms = _naive_successor(trace.keys.tolist(), size)
    assert abs(counts.misses - misses) <= 0.005 * len(trace)
    assert abs(counts.warms - warms) <= 0.005 * len(trace)


@pytest.mark.parametrize("policy", ["lru+successor", "lru+cachecast"])
def test_no_policy_reads_the_future(policy: str) -> None:
    trace = shared_trace("cache2k_orm_busy", 100_000)
    size = cache_size_for(trace, 0.05)
    honest = run_policy(trace, policy, size)
    blind = run_policy(trace.without_future(), policy, size)
    assert honest == blind
    assert honest.warms > 0


def test_cachecast_beats_lru_on_structured_traffic(sequential_trace: Trace) -> None:
    results = {r.policy: r.counts for r in run(sequential_trace, sizes=(0.01,))}
    lru, cachecast = results["lru"], results["lru+cachecast"]
    assert cachecast.miss_ratio < lru.miss_ratio - 0.05
    assert cachecast.fetches_per_request <= 1.02 * lru.miss_ratio
    assert cachecast.prefetch_precision > 0.9
    assert results["belady"].miss_ratio < lru.miss_ratio


@pytest.mark.parametrize("policy", ["lru+cachecast-worker", "lru+cachecast"])
def test_cachecast_backs_off_without_structure(random_trace: Trace, policy: str) -> None:
    for r in run(random_trace, sizes=(0.01, 0.1), policies=("lru", policy)):
        if r.policy == "lru":
            lru = r.counts.miss_ratio
        else:
            assert r.counts.miss_ratio <= lru + 0.005
            assert r.counts.fetches_per_request <= 1.02 * lru


def test_a_slow_pipeline_still_gains_without_extra_origin_load() -> None:
    rng = np.random.default_rng(3)
    keys: list[int] = []
    while len(keys) < 80_000:  # long page loads replayed in order, interleaved with noise
        start = int(rng.integers(20)) * 1_000
        for j in range(300):
            keys.append(start + j)
            if rng.random() < 0.3:
                keys.append(int(rng.integers(10**6, 10**7)))
    arr = np.asarray(keys, dtype=np.int64)
    trace = Trace(keys=arr, ts=np.arange(len(arr), dtype=np.float64))
    size = 2_000
    lru = replay_lru(arr.tolist(), size).miss_ratio
    for delay in (0, 50):
        config = engine_config(delay, 0.015, None)
        counts = run_policy(trace, "lru+cachecast", size, delay=delay, config=config)
        assert counts.miss_ratio < lru - 0.05
        assert counts.fetches_per_request <= 1.02 * lru


def test_ablations_split_the_gain(sequential_trace: Trace) -> None:
    size = cache_size_for(sequential_trace, 0.01)
    both = run_policy(sequential_trace, "lru+cachecast", size)
    warm_only = run_policy(sequential_trace, "lru+cachecast-warm", size)
    ttl_only = run_policy(sequential_trace, "lru+cachecast-ttl", size)
    assert ttl_only.warms == 0
    assert warm_only.expired == 0
    assert warm_only.edge_warms > 0  # warms only: both paths
    assert both.miss_ratio <= warm_only.miss_ratio + 0.002
    with pytest.raises(ValueError, match="unknown policy"):
        run_policy(sequential_trace, "lru+magic", size)


def test_sweep_traces_the_curve(sequential_trace: Trace) -> None:
    results = sweep(sequential_trace.head(20_000), 0.01, thresholds=(0.5, 0.99))
    assert [r.policy for r in results[:3]] == ["lru", "lru+successor", "lru+cachecast"]
    curve = [r for r in results if r.threshold is not None]
    assert [r.threshold for r in curve] == [0.5, 0.99]
    assert curve[0].counts.warms >= curve[1].counts.warms
    row = curve[0].row()
    assert set(row) >= {
        "policy",
        "size_fraction",
        "cache_size",
        "requests",
        "miss_ratio",
        "fetches_per_request",
        "prefetch_precision",
        "warms",
    }
    assert row["threshold"] == 0.5


def test_users_cut_misses_when_sessions_come_back() -> None:
    """SYNTHETIC sessions (teams, personal keys): the worker path with the events' users
    against the same events without them, and with similar users against own keys only."""
    trace, _ = session_workload(days=3, requests_per_day=10_000, users=300)
    keys = trace.keys.tolist()
    size = cache_size_for(trace, 0.05)

    def misses(replayed: Trace, config: EngineConfig) -> tuple[int, int]:
        counts = run_policy(
            replayed, "lru+cachecast", size, delay=5, config=config, keys=keys, worker_clock=True
        )
        return counts.misses, counts.misses + counts.warms

    off, off_fetches = misses(replace(trace, users=None), EngineConfig())
    own, _ = misses(trace, EngineConfig(user_peers=0))
    on, on_fetches = misses(trace, EngineConfig())
    lru = run_policy(trace, "lru", size, keys=keys).misses
    assert on <= 0.85 * off, (on, off)
    assert on < own, (on, own)  # similar users add to the user's own keys
    assert on_fetches <= 1.05 * lru  # paid for with few wasted warms
    assert off_fetches <= 1.05 * lru


def test_the_ttl_floor_keeps_short_new_key_ttls_from_expiring_keys() -> None:
    """Half the reads are keys never read again, so the engine gives new keys a short
    TTL; production clamps every TTL to ``CACHECAST_TTL_MIN``, which the floor stands for."""
    rng = np.random.default_rng(0)
    keys = [int(rng.integers(0, 50)) if rng.random() < 0.5 else 1_000 + i for i in range(20_000)]
    trace = Trace(np.array(keys, dtype=np.int64), np.arange(len(keys), dtype=np.float64))
    unfloored = run_policy(trace, "lru+cachecast-ttl", 100)
    floored = run_policy(trace, "lru+cachecast-ttl", 100, ttl_floor=len(keys))
    assert unfloored.expired > 1_000
    assert floored.expired == 0
    assert floored.misses == run_policy(trace, "lru", 100).misses


def test_the_rules_clients_see_can_be_collected(sequential_trace: Trace) -> None:
    """``publications`` records each round the edge path publishes: from which request
    clients see it (a refresh's last request plus the lag) and the rules it changed."""
    publications: list[Publication] = []
    counts = run_policy(
        sequential_trace,
        "lru+cachecast",
        cache_size_for(sequential_trace, 0.05),
        rule_refresh=100,
        rule_lag=7,
        publications=publications,
    )
    assert counts.edge_warms > 0
    assert [due for due, _ in publications] == [
        100 * (n + 1) - 1 + 7 for n in range(len(publications))
    ]
    assert any(rule for _, changes in publications for _, rule in changes)

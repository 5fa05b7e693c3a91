"""Both warm paths in the LRU replay: worker warms, and edge loads from published rules."""

from __future__ import annotations

import itertools
import random
from collections.abc import Hashable, Sequence

import numpy as np
import pytest

from pipeline.sim.cache import ReplayCounts, UserTrigger, replay_lru
from pipeline.sim.runner import run_policy
from pipeline.sim.traces import Trace

Changes = list[tuple[Hashable, list[tuple[Hashable, float]]]]


class Publications:
    """A rule source that publishes ``schedule[n]`` at its n-th publication (then nothing)."""

    def __init__(self, *schedule: Changes) -> None:
        self.schedule = list(schedule)
        self.calls = 0

    def changed(self) -> Changes:
        self.calls += 1
        return self.schedule.pop(0) if self.schedule else []


def _rule(trigger: int, *successors: int) -> Publications:
    """``trigger -> successors``, published after the first request."""
    return Publications([(trigger, [(successor, 0.9) for successor in successors])])


def _edge(
    keys: Sequence[int],
    source: Publications,
    *,
    rule_refresh: int = 1,
    rule_lag: int = 0,
    edge_delay: int = 3,
) -> ReplayCounts:
    """The edge path alone; by default every request publishes, seen from the next one."""
    return replay_lru(
        keys,
        100,
        rule_source=source,
        rule_refresh=rule_refresh,
        rule_lag=rule_lag,
        edge_delay=edge_delay,
    )


def test_a_request_joins_a_load_under_way() -> None:
    # 1 misses and starts the load of 2 (lands at index 4); 2 is asked at index 3.
    counts = _edge([0, 1, 9, 2, 2], _rule(1, 2))
    assert counts.misses == 3  # 0, 1, 9: the joined request is no miss, the next one a hit
    assert counts.joined == 1
    assert counts.edge_warms == counts.edge_useful == counts.useful_warms == 1
    assert counts.warms == counts.edge_warms  # one fetch for the load, however many joined
    assert counts.fetches_per_request == pytest.approx((3 + 1) / 5)
    assert counts.edge_precision == 1.0


def test_a_landed_load_is_a_warmed_hit_and_an_unread_one_is_wasted() -> None:
    counts = _edge([0, 1, 9, 8, 7, 2, 6], _rule(1, 2, 3))
    assert counts.joined == 0
    assert counts.misses == 6
    assert counts.edge_warms == 2  # 2 and 3
    assert counts.edge_useful == 1  # 3 is never read
    assert counts.edge_precision == 0.5
    assert counts.fetches_per_request == pytest.approx((6 + 2) / 7)


def test_a_key_under_way_is_not_loaded_twice() -> None:
    # 1 and 4 both name 2: 4 misses while 2 is still loading.
    source = Publications([(1, [(2, 0.9)]), (4, [(2, 0.9)])])
    counts = _edge([0, 1, 4, 9, 9, 9, 2], source)
    assert counts.edge_warms == 1
    # A worker warm for a key under way is skipped too (its loading mark is in Redis).
    for delay in (0, 1):
        both = replay_lru(
            [0, 1, 9, 9, 9, 2],
            100,
            lambda i, k, h, w: [2] if k == 1 else [],
            delay,
            rule_source=_rule(1, 2),
            rule_refresh=1,
            rule_lag=0,
            edge_delay=4,
        )
        assert (both.worker_warms, both.edge_warms, both.edge_useful) == (0, 1, 1)


def test_a_joined_load_ends_and_the_key_may_load_again() -> None:
    # 2 joins its load (started at index 1) at index 2 and is evicted; 1 misses again at
    # index 4 and starts a new load of 2, which the first load's landing (index 5) must
    # not land early: 2 joins it at index 6.
    keys = [0, 1, 2, 5, 1, 9, 2, 2]
    counts = replay_lru(keys, 2, rule_source=_rule(1, 2), rule_refresh=1, rule_lag=0, edge_delay=4)
    assert counts.edge_warms == 2
    assert counts.joined == 2
    assert counts.misses == 5


def test_rules_apply_only_after_their_lag() -> None:
    # Published after request 0, seen from request 0 + lag on.
    keys = [0, 9, 9, 9, 9, 9, 1, 8, 8, 2]
    for lag, warmed in ((5, 1), (6, 1), (7, 0)):
        counts = _edge(keys, _rule(1, 2), rule_lag=lag)
        assert counts.edge_warms == warmed, lag
    # Publications come every rule_refresh requests: the first after request 3 here.
    assert _edge(keys, _rule(1, 2), rule_refresh=4, rule_lag=3).edge_warms == 1
    assert _edge(keys, _rule(1, 2), rule_refresh=4, rule_lag=4).edge_warms == 0


def test_an_empty_rule_deletes_the_trigger() -> None:
    # The rule is seen from request 1 on, its deletion from request 2 on.
    source = Publications([(1, [(2, 0.9)])], [(1, [])])
    assert _edge([0, 1, 2], source).edge_warms == 1
    source = Publications([(1, [(2, 0.9)])], [(1, [])])
    assert _edge([0, 9, 1, 2], source).edge_warms == 0


def test_edge_loads_for_cached_keys_are_skipped() -> None:
    counts = _edge([2, 3, 1, 2, 3], _rule(1, 2, 3, 4))
    assert counts.edge_warms == 1  # only 4: 2 and 3 are cached
    assert counts.misses == 3


def test_hits_trigger_nothing_but_first_reads_of_warms_do() -> None:
    # 1 hits at index 2: no load. Evicted, 1 is warmed by the worker after request 4 and
    # read at index 5: that loads 2, read at index 9.
    counts = replay_lru(
        [1, 0, 1, 5, 9, 1, 9, 9, 9, 2],
        2,
        lambda i, k, h, w: [1] if i == 4 else [],
        rule_source=_rule(1, 2),
        rule_refresh=1,
        rule_lag=0,
        edge_delay=1,
    )
    assert counts.edge_warms == 1
    assert counts.worker_warms == 1
    assert counts.worker_useful == counts.edge_useful == 1
    assert counts.worker_precision == counts.edge_precision == 1.0


def test_without_a_rule_source_nothing_changes() -> None:
    keys = [1, 2, 3, 1, 2, 4, 1]
    counts = replay_lru(keys, 2, rule_refresh=1, rule_lag=0, edge_delay=0)
    assert counts == replay_lru(keys, 2)
    assert counts.joined == counts.edge_warms == counts.edge_useful == 0
    with pytest.raises(ValueError, match="rule_refresh"):
        replay_lru(keys, 2, rule_refresh=0)


def _reference(
    keys: Sequence[int],
    size: int,
    worker: object,
    schedule: list[Changes],
    delay: int,
    refresh: int,
    lag: int,
    edge_delay: int,
) -> ReplayCounts:
    """The two-path model with plain lists: slow, and obviously what the docstring says."""
    assert callable(worker)
    schedule = list(schedule)
    cache: list[int] = []  # LRU order, most recent last
    warm_by: dict[int, str] = {}  # cached key -> path that warmed it, until read
    loads: dict[int, int] = {}  # key -> index its edge load lands at (in start order)
    worker_due: list[tuple[int, int]] = []
    published: list[tuple[int, Changes]] = []
    rules: dict[Hashable, list[Hashable]] = {}
    n = {"miss": 0, "warm": 0, "useful": 0, "joined": 0, "edge": 0, "edge_useful": 0}

    def insert(key: int, path: str | None) -> None:
        if key in cache:
            cache.remove(key)
        cache.append(key)
        warm_by.pop(key, None)
        if path is not None:
            warm_by[key] = path
        if len(cache) > size:
            warm_by.pop(cache.pop(0), None)

    for index, key in enumerate(keys):
        for loaded in [k for k, due in loads.items() if due <= index]:
            del loads[loaded]
            insert(loaded, "edge")
        for due, warm in [w for w in worker_due if w[0] <= index]:
            worker_due.remove((due, warm))
            if warm not in cache and warm not in loads:
                n["warm"] += 1
                insert(warm, "worker")
        for visible, changes in [p for p in published if p[0] <= index]:
            published.remove((visible, changes))
            for trigger, rule in changes:
                rules[trigger] = [successor for successor, _ in rule]
        if key in cache:
            hit, path = True, warm_by.pop(key, None)
            warmed = path is not None
            cache.remove(key)
            cache.append(key)
        elif key in loads:
            hit, warmed, path = True, True, "edge"
            del loads[key]
            n["joined"] += 1
            insert(key, None)
        else:
            hit, warmed, path = False, False, None
            n["miss"] += 1
            insert(key, None)
        if path is not None:
            n["useful"] += 1
            n["edge_useful"] += path == "edge"
        if not hit or warmed:
            for successor in rules.get(key, []):
                if successor not in cache and successor not in loads:
                    assert isinstance(successor, int)
                    n["edge"] += 1
                    loads[successor] = index + edge_delay
        for warm in worker(index, key, hit, warmed)[:4]:
            if delay:
                worker_due.append((index + delay, warm))
            elif warm not in cache and warm not in loads:
                n["warm"] += 1
                insert(warm, "worker")
        if index % refresh == refresh - 1:
            published.append((index + lag, schedule.pop(0) if schedule else []))
    return ReplayCounts(
        requests=len(keys),
        misses=n["miss"],
        warms=n["warm"] + n["edge"],
        useful_warms=n["useful"],
        joined=n["joined"],
        edge_warms=n["edge"],
        edge_useful=n["edge_useful"],
    )


@pytest.mark.parametrize(
    ("seed", "delay", "edge_delay", "lag", "refresh"),
    [
        (seed, *knobs)
        for seed, knobs in enumerate(itertools.product((0, 3), (0, 1, 4), (0, 7), (1, 5)))
    ],
)
def test_replay_matches_the_reference(
    seed: int, delay: int, edge_delay: int, lag: int, refresh: int
) -> None:
    rng = random.Random(seed)
    keys = [int(rng.paretovariate(1.0)) % 30 for _ in range(1_500)]
    schedule: list[Changes] = [
        [
            (rng.randrange(30), [(rng.randrange(30), 0.9) for _ in range(rng.randrange(3))])
            for _ in range(rng.randrange(4))
        ]
        for _ in range(400)
    ]

    def worker(index: int, key: int, hit: bool, warmed: bool) -> list[int]:
        return [(key * 7 + index % 3) % 30] if not hit or warmed else []

    size = 6
    counts = replay_lru(
        keys,
        size,
        worker,
        delay,
        rule_source=Publications(*schedule),
        rule_refresh=refresh,
        rule_lag=lag,
        edge_delay=edge_delay,
    )
    assert counts == _reference(keys, size, worker, schedule, delay, refresh, lag, edge_delay)
    assert counts.joined > 0 or edge_delay <= 1
    assert counts.fetches_per_request == pytest.approx(
        (counts.misses + counts.worker_warms + counts.edge_warms) / len(keys)
    )


def _sequences(n: int, seed: int = 7) -> Trace:
    """Page loads (30 sequences of 8 keys) between bursts of one-off keys."""
    rng = np.random.default_rng(seed)
    sequences = [list(range(1_000 + 20 * s, 1_000 + 20 * s + 8)) for s in range(30)]
    keys: list[int] = []
    while len(keys) < n:
        if rng.random() < 0.5:
            keys += sequences[int(rng.integers(len(sequences)))]
        else:
            keys += rng.integers(100_000, 400_000, size=4).tolist()
    arr = np.asarray(keys[:n], dtype=np.int64)
    return Trace(keys=arr, ts=np.arange(n, dtype=np.float64), name="sequences")


def test_the_edge_path_alone_beats_lru_on_repeated_sequences() -> None:
    trace = _sequences(8_000)
    size = 120
    lru = replay_lru(trace.keys.tolist(), size)
    edge = run_policy(trace, "lru+cachecast-edge", size, edge_delay=3, rule_refresh=100, rule_lag=5)
    assert edge.worker_warms == 0  # the engine learns, its worker candidates are dropped
    assert edge.miss_ratio < lru.miss_ratio - 0.2
    assert edge.joined > 0
    assert edge.edge_precision > 0.9
    assert edge.fetches_per_request <= 1.05 * lru.miss_ratio


def test_the_worker_policy_has_no_edge_path() -> None:
    trace = _sequences(3_000)
    worker = run_policy(trace, "lru+cachecast-worker", 120, rule_refresh=10, rule_lag=0)
    assert worker.edge_warms == worker.joined == 0


def test_a_session_opening_loads_the_users_rule_hit_or_miss() -> None:
    source = Publications([(UserTrigger("ada"), [(5, 0.8), (6, 0.7)])])
    keys = [0, 1, 1, 5, 6]
    # Ada's session opens at index 2 (a hit): 5 and 6 load then and are read as warms.
    opens: list[Hashable | None] = [None, None, "ada", None, None]
    counts = replay_lru(
        keys, 100, rule_source=source, rule_refresh=1, rule_lag=0, edge_delay=0,
        session_opens=opens,
    )  # fmt: skip
    assert counts.misses == 2  # 0 and 1
    assert counts.edge_warms == counts.edge_useful == 2
    # Without the opening (a read in the middle of her session), nothing loads.
    source = Publications([(UserTrigger("ada"), [(5, 0.8), (6, 0.7)])])
    counts = replay_lru(keys, 100, rule_source=source, rule_refresh=1, rule_lag=0, edge_delay=0)
    assert (counts.misses, counts.edge_warms) == (4, 0)

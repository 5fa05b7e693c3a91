"""The cache simulators against brute-force references."""

from __future__ import annotations

import itertools
import random
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import pytest

from pipeline.sim.cache import SampledEviction, _Sampled, replay_belady, replay_lru
from pipeline.sim.traces import next_access_of


def _lru_reference(keys: Sequence[int], size: int) -> int:
    """LRU as a plain list, most recent last: obviously right, quadratic."""
    cache: list[int] = []
    misses = 0
    for key in keys:
        if key in cache:
            cache.remove(key)
        else:
            misses += 1
            if len(cache) == size:
                cache.pop(0)
        cache.append(key)
    return misses


def _belady_reference(keys: Sequence[int], size: int) -> int:
    """MIN by scanning the future at each eviction; a key never requested again is not kept."""
    cache: set[int] = set()
    misses = 0
    for i, key in enumerate(keys):
        if key in cache:
            continue
        misses += 1

        def next_use(k: int, start: int = i) -> int:
            for j in range(start + 1, len(keys)):
                if keys[j] == k:
                    return j
            return len(keys) + 1

        if next_use(key) > len(keys):
            continue
        if len(cache) == size:
            cache.remove(max(cache, key=next_use))
        cache.add(key)
    return misses


@pytest.mark.parametrize(("seed", "size"), list(itertools.product(range(3), (1, 3, 10))))
def test_sampling_every_key_at_a_fine_clock_is_exact_lru(seed: int, size: int) -> None:
    """The sampled eviction without a pool, given every key and one tick per request, is
    an exact LRU, also when keys expire (an expired key leaves the sample)."""
    rng = random.Random(seed)
    keys = [int(rng.paretovariate(1.0)) % 40 for _ in range(2_000)]
    every_key = SampledEviction(samples=64, clock=1, seed=seed, pool=0)
    assert replay_lru(keys, size, eviction=every_key).misses == _lru_reference(keys, size)

    def ttl(index: int, key: int) -> int | None:
        return 5 if key % 3 == 0 else None

    expiring = replay_lru(keys, size, ttl_policy=ttl, eviction=every_key)
    assert expiring == replay_lru(keys, size, ttl_policy=ttl)
    # With room for one key, the next miss evicts a key before it can expire.
    assert expiring.expired > 0 or size == 1


def test_a_coarse_clock_evicts_about_at_random_as_redis_does() -> None:
    """Keys read within one tick of the clock look alike, so eviction among them is close
    to random and loses hits an exact LRU keeps; ten samples at a fine clock come close
    to LRU. A seed makes a run repeatable."""
    rng = random.Random(1)
    keys = [int(rng.paretovariate(0.8)) % 400 for _ in range(20_000)]
    exact = replay_lru(keys, 40).misses
    coarse = SampledEviction(samples=10, clock=5_000, seed=1)
    fine = SampledEviction(samples=10, clock=1, seed=1)
    assert replay_lru(keys, 40, eviction=coarse).misses > exact * 1.2
    assert replay_lru(keys, 40, eviction=fine).misses < exact * 1.05
    assert replay_lru(keys, 40, eviction=coarse) == replay_lru(keys, 40, eviction=coarse)
    with pytest.raises(ValueError, match="samples and clock"):
        SampledEviction(samples=0)
    with pytest.raises(ValueError, match="pool"):
        SampledEviction(pool=-1)


@pytest.mark.parametrize("seed", range(3))
def test_the_candidate_pool_brings_few_samples_closer_to_lru(seed: int) -> None:
    """Redis keeps the best candidates of earlier samplings: with 2 samples an eviction,
    the pool evicts keys idle longer than the samples alone find, and so misses less.
    With 1 sample nothing stays in the pool (each eviction takes the one candidate)."""
    rng = random.Random(seed)
    keys = [int(rng.paretovariate(0.8)) % 400 for _ in range(20_000)]
    exact = replay_lru(keys, 40).misses

    def misses(samples: int, pool: int) -> int:
        eviction = SampledEviction(samples=samples, clock=1, seed=seed, pool=pool)
        return replay_lru(keys, 40, eviction=eviction).misses

    assert exact < misses(2, 16) < misses(2, 0)
    assert misses(1, 16) == misses(1, 0)


@pytest.mark.parametrize(("seed", "size"), list(itertools.product(range(4), (1, 3, 10))))
def test_lru_matches_the_reference(seed: int, size: int) -> None:
    rng = random.Random(seed)
    keys = [int(rng.paretovariate(1.0)) % 40 for _ in range(2_000)]
    assert replay_lru(keys, size).misses == _lru_reference(keys, size)


@pytest.mark.parametrize(("seed", "size"), list(itertools.product(range(3), (1, 4, 12))))
def test_belady_matches_the_reference(seed: int, size: int) -> None:
    rng = random.Random(seed)
    keys = [int(rng.paretovariate(0.8)) % 30 for _ in range(600)]
    arr = np.asarray(keys, dtype=np.int64)
    assert replay_belady(keys, next_access_of(arr), size).misses == _belady_reference(keys, size)


def test_belady_never_worse_than_lru() -> None:
    rng = random.Random(9)
    keys = [rng.randrange(500) for _ in range(20_000)]
    future = next_access_of(np.asarray(keys, dtype=np.int64))
    for size in (10, 50, 200):
        assert replay_belady(keys, future, size).misses <= replay_lru(keys, size).misses


def test_warm_accounting() -> None:
    def successor(index: int, key: int, hit: bool, warmed: bool) -> list[int]:
        return [key + 1, key + 100]  # the first is read next, the second never

    counts = replay_lru(list(range(1, 50)), cache_size=10, warm_policy=successor)
    assert counts.misses == 1  # every later key was warmed in time
    assert counts.warms == 2 * 49
    assert counts.useful_warms == 48
    assert counts.fetches_per_request == pytest.approx((1 + 98) / 49)
    assert counts.prefetch_precision == pytest.approx(48 / 98)


def test_warms_for_cached_keys_cost_nothing() -> None:
    counts = replay_lru([1, 2, 1, 2], cache_size=4, warm_policy=lambda i, k, h, w: [1, 2])
    assert counts.warms == 1
    assert counts.misses == 1


def test_delay_lands_warms_later() -> None:
    keys = [10, 11, 12, 13, 14, 15]

    def next_two(index: int, key: int, hit: bool, warmed: bool) -> list[int]:
        return [key + 2]

    on_time = replay_lru(keys, 8, next_two, delay=0)
    late = replay_lru(keys, 8, next_two, delay=2)  # lands exactly when needed
    too_late = replay_lru(keys, 8, next_two, delay=3)
    assert on_time.misses == late.misses == 2
    assert too_late.misses == 6
    assert too_late.warms == 0


def test_max_warms_caps_each_request() -> None:
    counts = replay_lru([1, 2, 3], 100, lambda i, k, h, w: list(range(1_000, 1_010)), max_warms=3)
    assert counts.warms == 3  # the same three keys each time: cached after the first


def test_ttl_expires_keys() -> None:
    keys = [1, 2, 1, 3, 1, 4, 1]
    no_ttl = replay_lru(keys, 10)
    expiring = replay_lru(keys, 10, ttl_policy=lambda index, key: 1)
    assert no_ttl.misses == 4
    assert expiring.misses == 7
    assert expiring.expired > 0
    delayed = replay_lru(
        keys, 10, warm_policy=lambda i, k, h, w: (), delay=5, ttl_policy=lambda index, key: 1
    )
    assert delayed.misses == 5  # the expiry lands with the delay


def test_expiry_frees_space_for_other_keys() -> None:
    # Key 99 is a one-hit wonder: expiring it keeps 1 and 2 in a cache of 2.
    keys = [1, 2, 99, 1, 2]
    assert replay_lru(keys, 2).misses == 5
    short = replay_lru(keys, 2, ttl_policy=lambda index, key: 1 if key == 99 else None)
    assert short.misses == 4


def test_rejects_empty_cache() -> None:
    with pytest.raises(ValueError, match="cache_size"):
        replay_lru([1], 0)


class _Chosen:
    """A stand-in for the sampler's RNG: each call picks the given keys' slots."""

    def __init__(self, sampled: _Sampled, picks: list[list[int]]) -> None:
        self.sampled = sampled
        self.picks = picks

    def sample(self, population: range, k: int) -> list[int]:
        keys = self.picks.pop(0)
        assert len(keys) == k
        return [self.sampled.slot_of[key] for key in keys]


@pytest.mark.parametrize(("pool", "evicted"), [(16, 11), (0, 13)])
def test_a_pooled_candidate_keeps_the_idle_time_it_was_sampled_with(
    pool: int, evicted: int
) -> None:
    """As in Redis: key 11, pooled while idle, is evicted after a read that made it the
    most recent key; without a pool the sample's most idle key goes."""
    cache: OrderedDict[int, int] = OrderedDict()
    sampled = _Sampled(cache, SampledEviction(samples=2, clock=1, pool=pool))

    def add(key: int, index: int) -> None:
        cache[key] = 0
        sampled.touch(key, index)

    for index, key in ((0, 10), (1, 11), (2, 12), (5, 13)):
        add(key, index)
    sampled.rng = _Chosen(sampled, [[10, 11], [13, 14]])  # type: ignore[assignment]
    add(14, 10)
    sampled.evict(10)  # 10 (idle 10) goes; with a pool, 11 (idle 9) stays a candidate
    assert 10 not in cache
    sampled.touch(11, 11)  # read: now the most recent key
    add(15, 12)
    sampled.evict(12)  # samples 13 (idle 7) and 14 (idle 2); 11 was pooled at idle 9
    assert evicted not in cache
    assert len(cache) == 4
    assert 15 in cache  # the key just added is never evicted for itself

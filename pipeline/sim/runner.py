"""Run the policies over a trace and cache sizes; the admission-threshold sweep."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from pipeline.models import EngineConfig, WarmEngine
from pipeline.sim.cache import (
    DEFAULT_EDGE_DELAY,
    DEFAULT_RULE_LAG,
    DEFAULT_RULE_REFRESH,
    ProgressCallback,
    Publication,
    ReplayCounts,
    RuleSource,
    SampledEviction,
    TtlPolicy,
    UserTrigger,
    WarmPolicy,
    replay_belady,
    replay_lru,
    session_opens,
)
from pipeline.sim.policies import ABLATIONS, POLICIES, CachecastWarmer, SuccessorWarmer
from pipeline.sim.traces import Trace, next_access_of

DEFAULT_SIZES: tuple[float, ...] = (0.01, 0.05, 0.1)
"""Cache sizes as fractions of the trace's unique keys."""

DEFAULT_SWEEP: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)
"""Fixed admission thresholds of ``--sweep``."""

ProgressFactory = Callable[[str, int], ProgressCallback | None]
"""Given a label and a number of requests, returns a progress callback (or None)."""


@dataclass(frozen=True)
class SimResult:
    """One (policy, cache size) measurement.

    ``delay`` is the worker path's, ``edge_delay``, ``rule_refresh`` and
    ``rule_lag`` the edge path's timing (see :func:`~pipeline.sim.cache.replay_lru`).
    """

    policy: str
    size_fraction: float
    cache_size: int
    counts: ReplayCounts
    delay: int
    seconds: float
    threshold: float | None = None
    edge_delay: int = DEFAULT_EDGE_DELAY
    rule_refresh: int = DEFAULT_RULE_REFRESH
    rule_lag: int = DEFAULT_RULE_LAG
    eviction: SampledEviction | None = None
    ttl_floor: int = 1

    def row(self) -> dict[str, Any]:
        """The JSON row: policy, size, requests, miss ratio, fetches/request, precision,
        warms, joins, and each path's warms and precision and timing."""
        counts = self.counts
        row: dict[str, Any] = {
            "policy": self.policy,
            "size_fraction": self.size_fraction,
            "cache_size": self.cache_size,
            "requests": counts.requests,
            "miss_ratio": counts.miss_ratio,
            "fetches_per_request": counts.fetches_per_request,
            "prefetch_precision": counts.prefetch_precision,
            "warms": counts.warms,
            "joined": counts.joined,
            "worker_warms": counts.worker_warms,
            "worker_precision": counts.worker_precision,
            "edge_warms": counts.edge_warms,
            "edge_precision": counts.edge_precision,
            "delay": self.delay,
            "edge_delay": self.edge_delay,
            "rule_refresh": self.rule_refresh,
            "rule_lag": self.rule_lag,
            # How the cache evicted: "lru" (exact), or Redis's sampling with its clock.
            "eviction": "lru"
            if self.eviction is None
            else f"redis(samples={self.eviction.samples}, pool={self.eviction.pool},"
            f" clock={self.eviction.clock},"
            f" seed={self.eviction.seed})",
            "ttl_floor": self.ttl_floor,
        }
        if self.threshold is not None:
            row["threshold"] = self.threshold
        return row

    @property
    def requests_per_second(self) -> float:
        """Replay speed."""
        return self.counts.requests / self.seconds if self.seconds > 0 else 0.0


def cache_size_for(trace: Trace, fraction: float, n_unique: int | None = None) -> int:
    """Cache size for a fraction of the unique keys, as libCacheSim computes it (floor, >= 1)."""
    unique = trace.n_unique if n_unique is None else n_unique
    return max(1, int(unique * fraction))


def run_policy(
    trace: Trace,
    policy: str,
    cache_size: int,
    *,
    delay: int = 0,
    max_warms: int = 4,
    config: EngineConfig | None = None,
    keys: list[int] | None = None,
    progress: ProgressCallback | None = None,
    edge_delay: int = DEFAULT_EDGE_DELAY,
    rule_refresh: int = DEFAULT_RULE_REFRESH,
    rule_lag: int = DEFAULT_RULE_LAG,
    worker_clock: bool = False,
    eviction: SampledEviction | None = None,
    ttl_floor: int = 1,
    publications: list[Publication] | None = None,
) -> ReplayCounts:
    """Replay ``trace`` under one policy at one cache size.

    ``delay`` times the worker path; ``edge_delay``, ``rule_refresh`` and
    ``rule_lag`` time the edge path of the cachecast policies (see
    :func:`~pipeline.sim.cache.replay_lru`). ``worker_clock`` runs the engine on
    the worker's clocks (see :class:`~pipeline.sim.policies.CachecastWarmer`).
    ``eviction`` makes the LRU policies evict as Redis does (not Belady's).
    ``ttl_floor`` is the shortest TTL, in requests, cachecast gives a key.
    ``publications`` collects the rules the edge path publishes (see
    :func:`~pipeline.sim.cache.replay_lru`).
    """
    key_list = trace.keys.tolist() if keys is None else keys
    if policy == "lru":
        return replay_lru(key_list, cache_size, progress=progress, eviction=eviction)
    if policy == "lru+successor":
        return replay_lru(
            key_list,
            cache_size,
            SuccessorWarmer(),
            delay,
            max_warms,
            progress=progress,
            eviction=eviction,
        )
    if policy.startswith("lru+cachecast"):
        # As in production: with the edge path on, the worker leaves sequences to it.
        sequences = policy == "lru+cachecast-worker"
        warmer = CachecastWarmer(
            trace.ts,
            delay,
            config,
            trace.users,
            sequences=sequences,
            worker_clock=worker_clock,
            ttl_floor=ttl_floor,
        )
        warm: WarmPolicy | None = warmer
        ttl: TtlPolicy | None = warmer.miss_ttl
        rules: RuleSource | None = _EngineRules(warmer.engine)
        if policy == "lru+cachecast-worker":
            rules = None
        elif policy == "lru+cachecast-edge":
            warm = _observe_only(warmer)
        elif policy == "lru+cachecast-ttl":
            warm = _observe_only(warmer)
            rules = None
        elif policy == "lru+cachecast-warm":
            ttl = None
        elif policy != "lru+cachecast":
            raise ValueError(f"unknown policy {policy!r}")
        return replay_lru(
            key_list,
            cache_size,
            warm,
            delay,
            max_warms,
            progress=progress,
            ttl_policy=ttl,
            rule_source=rules,
            rule_refresh=rule_refresh,
            rule_lag=rule_lag,
            edge_delay=edge_delay,
            session_opens=session_opens(
                None if trace.users is None else trace.users.tolist(),
                trace.ts.tolist(),
                warmer.engine.config.session_gap,
            ),
            eviction=eviction,
            publications=publications,
        )
    if policy == "belady":
        future = trace.next_access if trace.next_access is not None else next_access_of(trace.keys)
        return replay_belady(key_list, future, cache_size, progress=progress)
    raise ValueError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES + ABLATIONS)}")


class _EngineRules:
    """The engine's prefetch rules and user rules, as the predict agent publishes them."""

    def __init__(self, engine: WarmEngine) -> None:
        self.engine = engine

    def changed(self) -> list[tuple[Hashable, Sequence[tuple[Hashable, float]]]]:
        changes: list[tuple[Hashable, Sequence[tuple[Hashable, float]]]] = []
        changes.extend(self.engine.rules.changed())
        changes.extend((UserTrigger(user), rule) for user, rule in self.engine.user_rules())
        return changes


def _observe_only(warmer: CachecastWarmer) -> WarmPolicy:
    """The engine keeps learning from every request, but its warms are dropped."""

    def observe(index: int, key: int, hit: bool, warmed: bool) -> Sequence[int]:
        warmer(index, key, hit, warmed)
        return ()

    return observe


class _Timing(NamedTuple):
    """The warm paths' settings, the cache's eviction and the shortest TTL, which one
    :func:`run` or :func:`sweep` applies to every policy."""

    delay: int
    max_warms: int
    edge_delay: int
    rule_refresh: int
    rule_lag: int
    eviction: SampledEviction | None = None
    ttl_floor: int = 1


def _measure(
    trace: Trace,
    keys: list[int],
    policy: str,
    fraction: float,
    size: int,
    config: EngineConfig | None,
    timing: _Timing,
    label: str,
    progress: ProgressFactory | None,
    threshold: float | None = None,
) -> SimResult:
    """One policy at one cache size, timed (``label`` names its progress bar)."""
    callback = progress(label, len(keys)) if progress else None
    start = time.perf_counter()
    counts = run_policy(
        trace,
        policy,
        size,
        delay=timing.delay,
        max_warms=timing.max_warms,
        config=config,
        keys=keys,
        progress=callback,
        edge_delay=timing.edge_delay,
        rule_refresh=timing.rule_refresh,
        rule_lag=timing.rule_lag,
        eviction=timing.eviction,
        ttl_floor=timing.ttl_floor,
    )
    return SimResult(
        policy,
        fraction,
        size,
        counts,
        timing.delay,
        time.perf_counter() - start,
        threshold=threshold,
        edge_delay=timing.edge_delay,
        rule_refresh=timing.rule_refresh,
        rule_lag=timing.rule_lag,
        eviction=timing.eviction,
        ttl_floor=timing.ttl_floor,
    )


def run(
    trace: Trace,
    sizes: Iterable[float] = DEFAULT_SIZES,
    policies: Sequence[str] = POLICIES,
    *,
    delay: int = 0,
    max_warms: int = 4,
    config: EngineConfig | None = None,
    progress: ProgressFactory | None = None,
    edge_delay: int = DEFAULT_EDGE_DELAY,
    rule_refresh: int = DEFAULT_RULE_REFRESH,
    rule_lag: int = DEFAULT_RULE_LAG,
    eviction: SampledEviction | None = None,
    ttl_floor: int = 1,
) -> list[SimResult]:
    """Every policy at every cache size; results in (size, policy) order."""
    timing = _Timing(delay, max_warms, edge_delay, rule_refresh, rule_lag, eviction, ttl_floor)
    keys = trace.keys.tolist()
    n_unique = trace.n_unique
    results: list[SimResult] = []
    for fraction in sizes:
        size = cache_size_for(trace, fraction, n_unique)
        for policy in policies:
            label = f"{policy} @ {fraction:g}"
            results.append(
                _measure(trace, keys, policy, fraction, size, config, timing, label, progress)
            )
    return results


def sweep(
    trace: Trace,
    size_fraction: float,
    thresholds: Iterable[float] = DEFAULT_SWEEP,
    *,
    delay: int = 0,
    max_warms: int = 4,
    config: EngineConfig | None = None,
    progress: ProgressFactory | None = None,
    edge_delay: int = DEFAULT_EDGE_DELAY,
    rule_refresh: int = DEFAULT_RULE_REFRESH,
    rule_lag: int = DEFAULT_RULE_LAG,
    eviction: SampledEviction | None = None,
    ttl_floor: int = 1,
) -> list[SimResult]:
    """cachecast at fixed admission thresholds (no waste budget), plus the baselines.

    Traces the miss-ratio vs fetches-per-request curve; ``lru`` and
    ``lru+successor`` are measured in the same run for comparison. The
    thresholds are the worker path's (the ensemble's); the edge path runs as
    in ``lru+cachecast``, with its own waste budget.
    """
    base = config or EngineConfig()
    timing = _Timing(delay, max_warms, edge_delay, rule_refresh, rule_lag, eviction, ttl_floor)
    keys = trace.keys.tolist()
    size = cache_size_for(trace, size_fraction, trace.n_unique)
    # (policy, config, fixed threshold, progress label): the baselines, then the curve.
    jobs: list[tuple[str, EngineConfig, float | None, str]] = [
        (policy, base, None, f"{policy} @ {size_fraction:g}")
        for policy in ("lru", "lru+successor", "lru+cachecast")
    ]
    jobs += [
        (
            "lru+cachecast",
            replace(base, threshold=threshold, min_threshold=threshold, waste_budget=None),
            threshold,
            f"threshold {threshold:g}",
        )
        for threshold in thresholds
    ]
    results: list[SimResult] = []
    for policy, fixed, threshold, label in jobs:
        results.append(
            _measure(
                trace, keys, policy, size_fraction, size, fixed, timing, label, progress, threshold
            )
        )
    return results

"""cachecast's hand-written estimators against river's nearest ones, in one run.

The design card names river for the frequency, recency and similarity models.
Where a river estimator does the job it is used (the ensemble is river's
``LogisticRegression``); the others are hand-written, and this benchmark is why.
Each pair sees the same stream, and the benchmark prints what each costs per update
and per query, the memory it holds, and how well it answers:

* frequency: ``DecayedFrequency`` vs ``river.sketch.HeavyHitters`` (lossy counting
  with a forgetting factor set to the same half-life), on the bundled cache2k
  slice; quality = recall of the exact decayed top 64.
* recency: ``InterArrival`` vs one ``river.stats.EWMean`` + ``EWVar`` of the log gap
  per key (the same statistic, same smoothing); quality = the largest difference
  of the per-key means among keys with 20 gaps or more (they should agree; river's
  mean starts at 0, ours at the first gap).
* users: ``UserAffinity`` (the user's own keys, and ``recommend`` with similar
  users) vs ``river.reco.FunkMF`` (implicit feedback: each read a 1, one random
  unread key a 0), on the SYNTHETIC sessions (pipeline.sim.synthetic's
  session_workload); at each session start, the top 5 keys for the user;
  quality = how many of them the session then reads, of how many were ranked.

Usage: python benchmarks/river_estimators.py [--requests 100000]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from river import reco, sketch, stats

from pipeline.models import DecayedFrequency, InterArrival, UserAffinity
from pipeline.sim.synthetic import session_workload
from pipeline.sim.traces import BUNDLED_TRACE, load_trace

HALF_LIFE = 10_000
ALPHA = 0.2


def _memory(build: Callable[[], Any]) -> int:
    """Bytes still allocated after ``build()`` ran (its result kept alive)."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = build()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    return after - before


def _cpu(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.process_time()
    out = fn()
    return out, time.process_time() - started


def _row(name: str, update_us: float, query_us: float, memory: int, quality: str) -> None:
    print(f"  {name:<34} {update_us:>9.2f} {query_us:>9.1f} {memory / 1e6:>9.1f}  {quality}")


def _header(title: str) -> None:
    print(f"\n{title}")
    print(f"  {'estimator':<34} {'µs/update':>9} {'µs/query':>9} {'MB':>9}  quality")


def frequency(keys: list[int]) -> None:
    _header(f"frequency: {len(keys):,} reads of the bundled cache2k slice, half-life {HALF_LIFE}")
    decay = 2.0 ** (-1.0 / HALF_LIFE)
    exact: dict[int, float] = {}
    scale = 1.0
    for key in keys:  # forward-decayed exact counts
        scale /= decay
        exact[key] = exact.get(key, 0.0) + scale
    truth = {k for k, _ in sorted(exact.items(), key=lambda kv: -kv[1])[:64]}

    def ours() -> DecayedFrequency:
        model = DecayedFrequency(max_keys=10_000, half_life=HALF_LIFE)
        for key in keys:
            model.learn_one(key)
        return model

    def theirs() -> sketch.HeavyHitters:
        model = sketch.HeavyHitters(support=0.0005, epsilon=0.001, fading_factor=decay)
        for key in keys:
            model.update(key)
        return model

    builds: tuple[tuple[str, Callable[[], Any]], ...] = (
        ("DecayedFrequency", ours),
        ("river HeavyHitters", theirs),
    )
    for name, build in builds:
        model, seconds = _cpu(build)

        def top64(model: Any = model) -> set[Any]:
            found: set[Any] = set()
            for _ in range(20):
                found = {k for k, _ in model.most_common(64)}
            return found

        found, query = _cpu(top64)
        recall = len(found & truth) / len(truth)
        _row(
            name,
            seconds / len(keys) * 1e6,
            query / 20 * 1e6,
            _memory(build),
            f"top-64 recall {recall:.2f}",
        )


def recency(keys: list[int]) -> None:
    _header(f"recency: the same {len(keys):,} reads, log-gap mean and variance per key")

    def ours() -> InterArrival:
        model = InterArrival(max_keys=100_000, alpha=ALPHA)
        for i, key in enumerate(keys):
            model.learn_one(key, float(i))
        return model

    def theirs() -> dict[int, tuple[float, stats.EWMean, stats.EWVar]]:
        table: dict[int, tuple[float, stats.EWMean, stats.EWVar]] = {}
        for i, key in enumerate(keys):
            entry = table.get(key)
            if entry is None:
                table[key] = (float(i), stats.EWMean(fading_factor=ALPHA), stats.EWVar(ALPHA))
                continue
            gap = math.log(max(1e-9, i - entry[0]))
            entry[1].update(gap)
            entry[2].update(gap)
            table[key] = (float(i), entry[1], entry[2])
        return table

    model, seconds = _cpu(ours)
    query_keys = keys[-2000:]
    _, query = _cpu(lambda: [model.predict_one(k) for k in query_keys])
    _row("InterArrival", seconds / len(keys) * 1e6, query / 2000 * 1e6, _memory(ours), "-")
    table, seconds = _cpu(theirs)
    _, query = _cpu(lambda: [table[k][1].get() for k in query_keys])
    worst = 0.0
    for key, entry in table.items():
        rhythm = model.rhythm(key)
        if rhythm is not None and rhythm.n_gaps >= 20:  # river's mean starts at 0, so
            worst = max(worst, abs(rhythm.mu - entry[1].get()))  # compare settled keys
    _row(
        "river EWMean + EWVar per key",
        seconds / len(keys) * 1e6,
        query / 2000 * 1e6,
        _memory(theirs),
        f"largest difference of the means, keys with 20+ gaps: {worst:.3f} (log units)",
    )


def users(days: int, per_day: int) -> None:
    trace, _ = session_workload(days=days, requests_per_day=per_day, users=1_000, seed=0)
    assert trace.users is not None
    keys, times, who = trace.keys.tolist(), trace.ts.tolist(), trace.users.tolist()
    _header(
        f"users: SYNTHETIC sessions (session_workload), {len(keys):,} reads by"
        f" {len(set(who)):,} users; 5 keys ranked as each session opens"
    )
    gap = 1_800.0
    rng = random.Random(0)

    def evaluate(
        learn: Callable[[int, int, float], None], top5: Callable[[int], list[int]]
    ) -> tuple[float, float, int, int, int]:
        last: dict[int, float] = {}
        pending: dict[int, set[int]] = {}  # user -> what is left of their session's top 5
        given = read = sessions = 0
        query_s = 0.0
        started = time.process_time()
        for key, ts, user in zip(keys, times, who, strict=True):
            opens = ts - last.get(user, -math.inf) > gap
            if not opens and key in pending.get(user, ()):
                read += 1
                pending[user].discard(key)
            last[user] = ts
            learn(user, key, ts)
            if opens:  # ranked once the session's first read is known, as the engine does
                q = time.process_time()
                pending[user] = set([k for k in top5(user) if k != key][:5])
                query_s += time.process_time() - q
                given += len(pending[user])
                sessions += 1
        total = time.process_time() - started - query_s
        return total, query_s, read, given, sessions

    affinity = UserAffinity(max_users=10_000, session_gap=gap, top_n=6)

    def learn_ours(user: int, key: int, ts: float) -> None:
        affinity.learn_one(key, ts, user)

    def top_own(user: int) -> list[int]:
        return [k for k, _ in affinity.predict_one(user)]  # type: ignore[misc]

    def top_peers(user: int) -> list[int]:
        return [k for k, _, _ in affinity.recommend(user)]  # type: ignore[misc]

    funk = reco.FunkMF(n_factors=10, seed=0)
    items: list[int] = []
    known: set[int] = set()

    def learn_theirs(user: int, key: int, ts: float) -> None:
        funk.learn_one(user, key, 1.0)  # type: ignore[no-untyped-call]
        if key not in known:
            known.add(key)
            items.append(key)
        funk.learn_one(user, items[rng.randrange(len(items))], 0.0)  # type: ignore[no-untyped-call]

    def top_theirs(user: int) -> list[int]:
        ranked: list[Any] = funk.rank(user, items)  # type: ignore[arg-type]
        return [int(k) for k in ranked[:6]]

    for name, learn, top in (
        ("UserAffinity, own keys", learn_ours, top_own),
        ("UserAffinity.recommend (+ peers)", learn_ours, top_peers),
        ("river FunkMF (rank all keys)", learn_theirs, top_theirs),
    ):
        if name.startswith("UserAffinity.recommend"):
            affinity = UserAffinity(max_users=10_000, session_gap=gap, top_n=6)
        total, query_s, read, given, sessions = evaluate(learn, top)
        _row(
            name,
            total / len(keys) * 1e6,
            query_s / max(sessions, 1) * 1e6,
            0,
            f"{read:,} ranked keys read in their session, of {given:,} ({sessions:,} sessions)",
        )
    print("  (MB not measured for the user models: both hold a few thousand entries here)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--per-day", type=int, default=10_000)
    args = parser.parse_args(argv)
    keys = load_trace(BUNDLED_TRACE, max_requests=args.requests).keys.tolist()
    frequency(keys)
    recency(keys)
    users(args.days, args.per_day)
    return 0


if __name__ == "__main__":
    sys.exit(main())

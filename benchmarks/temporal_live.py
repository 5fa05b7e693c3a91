"""Time-of-week profiles on the worker's clocks: misses with and without them, same run.

SYNTHETIC workload (pipeline.sim.synthetic: cohorts of users, daily and weekly
cycles, one-hit wonders, drift), because no public trace found so far carries
timestamps and users under a licence the project can ship. The engine runs as the
worker runs it: its clock counts requests, and each access's wall-clock time feeds
only the time-of-week profiles (``CACHECAST_WALL_TIME``, on by default). The
baseline is the same engine with them off, in the same run; plain LRU is shown
for scale. Worker path only (``lru+cachecast-worker``), warms landing ``--delay``
requests after their trigger.

Usage: python benchmarks/temporal_live.py [--days 7] [--per-day 20000] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import sys

from pipeline.models import EngineConfig
from pipeline.sim.runner import cache_size_for, run_policy
from pipeline.sim.synthetic import synthetic_workload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--per-day", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--delay", type=int, default=5)
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.05, 0.1])
    args = parser.parse_args(argv)
    print(
        f"SYNTHETIC workload: {args.days} days x {args.per_day:,} requests, seeds {args.seeds};"
        f" worker path, delay {args.delay};"
        " fetches = misses + warms, as a multiple of LRU's"
    )
    print(
        f"{'cache':>6} {'seed':>4} {'lru':>8} {'off':>8} {'on':>8} {'on/off':>7}"
        f" {'fetches off':>12} {'fetches on':>11}"
    )
    ratios: list[float] = []
    for seed in args.seeds:
        trace, _ = synthetic_workload(days=args.days, requests_per_day=args.per_day, seed=seed)
        n = len(trace)
        keys = trace.keys.tolist()
        for fraction in args.sizes:
            size = cache_size_for(trace, fraction)
            lru = run_policy(trace, "lru", size, keys=keys).misses / n
            miss: dict[str, float] = {}
            fetches: dict[str, float] = {}
            for name, wall_time in (("off", False), ("on", True)):
                counts = run_policy(
                    trace,
                    "lru+cachecast-worker",
                    size,
                    delay=args.delay,
                    config=EngineConfig(wall_time=wall_time),
                    keys=keys,
                    worker_clock=True,
                )
                miss[name] = counts.misses / n
                fetches[name] = (counts.misses + counts.warms) / (lru * n)  # x LRU's
            ratio = miss["on"] / miss["off"]
            ratios.append(ratio)
            print(
                f"{fraction:>6.0%} {seed:>4} {lru:>8.4f} {miss['off']:>8.4f} {miss['on']:>8.4f}"
                f" {ratio:>7.3f} {fetches['off']:>11.3f}x {fetches['on']:>10.3f}x"
            )
    mean = sum(ratios) / len(ratios)
    print(f"mean miss ratio with time profiles / without: {mean:.3f} (below 1: fewer misses)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

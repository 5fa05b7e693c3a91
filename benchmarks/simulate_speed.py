"""Simulation speed and engine cost per event, against plain LRU in the same run.

- requests/s of the simulator: lru vs lru+cachecast (all models on), scarab_recs at 1%
  (target: >= 100k requests/s), in CPU time and wall time;
- µs per ``WarmEngine.observe`` with "ns:key" strings, as the agents call it;
- bytes of state per tracked key.

Usage: python benchmarks/simulate_speed.py [--traces DIR] [--requests N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipeline.models import EngineConfig, WarmEngine
from pipeline.sim.runner import cache_size_for, run_policy
from pipeline.sim.traces import read_trace

DEFAULT_TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"


def _timed(fn: object, *args: object, **kwargs: object) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)  # type: ignore[operator]
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    parser.add_argument("--requests", type=int, default=None, help="replay only the first N")
    args = parser.parse_args(argv)
    full = read_trace(args.traces / "scarab_recs.oracleGeneral.bin.zst")
    size = cache_size_for(full, 0.01)
    trace = full.head(args.requests) if args.requests else full
    keys = trace.keys.tolist()
    n = len(keys)
    print(f"scarab_recs @ 1% ({size} keys), {n:,} requests")
    base: dict[str, float] = {}
    for policy in ("lru", "lru+cachecast"):
        _, wall, cpu = _timed(run_policy, trace, policy, size, keys=keys)
        base[policy] = cpu
        print(
            f"  {policy:<14} {n / cpu:>10,.0f} req/s (CPU)  {n / wall:>10,.0f} req/s (wall)"
            f"  {cpu / base['lru']:5.1f}x LRU's time"
        )
    rate = n / base["lru+cachecast"]
    print(f"  target >= 100,000 req/s with all models on: {'OK' if rate >= 100_000 else 'MISSED'}")

    engine = WarmEngine(EngineConfig())
    names = [f"ns:{k}" for k in keys[:300_000]]
    start = time.process_time()
    for i, name in enumerate(names):
        engine.observe(name, float(i), hit=(i % 3 == 0))
    per_event = (time.process_time() - start) / len(names) * 1e6
    print(f"  WarmEngine.observe with 'ns:key' strings: {per_event:.1f} µs/event (CPU)")
    memory = engine.memory_bytes()
    print(
        f"  state: {memory / 1e6:.1f} MB for {engine.n_tracked:,} tracked keys = "
        f"{memory / engine.n_tracked:,.0f} bytes per tracked key"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

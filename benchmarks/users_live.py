"""Users on the worker's path: misses with and without users, and with and without peers.

SYNTHETIC workload (``pipeline.sim.synthetic.session_workload``: 1,000 users in
teams of 5, sessions that open on the user's own keys and their team's, drift,
one-hit wonders, hourly keys), because no public cache trace found so far
carries users, sessions and timestamps under a licence the project can ship.
Every figure it prints says so.

Simulator (default): the engine runs as the worker runs it (request clock; each
access's wall-clock time detects sessions), both paths as in production
(``lru+cachecast``): worker warms land ``--delay`` requests after their
trigger; the edge path applies the published prefetch rules and, as each
user's session opens, the user's rule, with the simulator's default edge
timing (rules published every 400 requests, seen 10 later, loads taking one
request). Three runs in the same process, on the same trace: users off (the
events carry no user), users on with the user's own keys only
(``user_peers=0``), and users on with similar users (the default). Plain LRU is
shown for scale.

``--end-to-end``: the same workload through the whole pipeline: writes the
first ``--requests`` requests as a JSONL trace, runs ``cachecast demo`` on it
with ``--users on`` and ``--users off`` (real Kafka, Redis, worker and client),
and prints the demand misses of each warming-on run.

Usage: python benchmarks/users_live.py [--days 4] [--seeds 0 1] [--sizes 0.05 0.1]
       python benchmarks/users_live.py --end-to-end [--requests 40000] [--rate 400]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import orjson

from pipeline.models import EngineConfig
from pipeline.replay import user_labels
from pipeline.sim.runner import cache_size_for, run_policy
from pipeline.sim.synthetic import session_workload
from pipeline.sim.traces import Trace

ROOT = Path(__file__).resolve().parents[1]


def simulate(args: argparse.Namespace) -> int:
    print(
        f"SYNTHETIC workload with users and sessions: {args.days} days x {args.per_day:,}"
        f" requests, seeds {args.seeds}; worker warms at delay {args.delay}, edge path on;"
        " fetches = misses + warms, as a multiple of LRU's"
    )
    print(
        f"{'cache':>6} {'seed':>4} {'lru':>8} {'off':>8} {'own':>8} {'peers':>8}"
        f" {'on/off':>7} {'fetches off':>12} {'fetches on':>11}"
    )
    ratios: list[float] = []
    for seed in args.seeds:
        trace, _ = session_workload(days=args.days, requests_per_day=args.per_day, seed=seed)
        n = len(trace)
        keys = trace.keys.tolist()
        for fraction in args.sizes:
            size = cache_size_for(trace, fraction)
            lru = run_policy(trace, "lru", size, keys=keys).misses / n
            miss: dict[str, float] = {}
            fetches: dict[str, float] = {}
            runs = (
                ("off", replace(trace, users=None), EngineConfig()),
                ("own", trace, EngineConfig(user_peers=0)),
                ("peers", trace, EngineConfig()),
            )
            for name, replayed, config in runs:
                counts = run_policy(
                    replayed,
                    "lru+cachecast",
                    size,
                    delay=args.delay,
                    config=config,
                    keys=keys,
                    worker_clock=True,
                )
                miss[name] = counts.misses / n
                fetches[name] = (counts.misses + counts.warms) / (lru * n)
            ratio = miss["peers"] / miss["off"]
            ratios.append(ratio)
            print(
                f"{fraction:>6.0%} {seed:>4} {lru:>8.4f} {miss['off']:>8.4f} {miss['own']:>8.4f}"
                f" {miss['peers']:>8.4f} {ratio:>7.3f} {fetches['off']:>11.3f}x"
                f" {fetches['peers']:>10.3f}x"
            )
    mean = sum(ratios) / len(ratios)
    print(f"mean miss ratio with users / without: {mean:.3f} (below 1: fewer misses)")
    return 0


def write_jsonl(trace: Trace, path: Path, namespace: str = "synthetic") -> None:
    """``trace`` as our JSONL of access events (key, wall-clock ts, user), one per line."""
    users = user_labels(trace) or [None] * len(trace)
    with path.open("wb") as out:
        for key, ts, user in zip(trace.keys.tolist(), trace.ts.tolist(), users, strict=True):
            event = {"ts": ts, "namespace": namespace, "key": str(key), "op": "get"}
            if user is not None:
                event["user"] = user
            out.write(orjson.dumps(event) + b"\n")


def end_to_end(args: argparse.Namespace) -> int:
    per_day = 20_000
    days = max(1, -(-args.requests // per_day))
    trace, _ = session_workload(days=days, requests_per_day=per_day, seed=args.seeds[0])
    print(
        f"SYNTHETIC workload with users and sessions, end to end: the first"
        f" {args.requests:,} requests at {args.rate:g}/s, 5% cache, `cachecast demo`"
        " with --users on and --users off"
    )
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sessions.jsonl"
        write_jsonl(trace.head(args.requests), path)
        for users in ("off", "on"):
            out = Path(tmp) / f"users-{users}.json"
            command = [
                sys.executable, "-m", "pipeline.cli", "demo", "--trace", str(path),
                "--requests", str(args.requests), "--rate", str(args.rate),
                "--users", users, "--json", str(out),
            ]  # fmt: skip
            subprocess.run(command, check=True, cwd=ROOT)
            results[users] = json.loads(out.read_text())
    print(f"{'users':>6} {'misses, warming off':>20} {'warming on':>11} {'fetches/req':>12}")
    for users in ("off", "on"):
        off, on = results[users]["off"], results[users]["on"]
        print(
            f"{users:>6} {off['demand_misses']:>20,} {on['demand_misses']:>11,}"
            f" {on['fetches_per_request']:>12.4f}"
        )
    cut = results["on"]["on"]["demand_misses"] / results["off"]["on"]["demand_misses"]
    print(f"demand misses with users / without (warming on): {cut:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--per-day", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--delay", type=int, default=5)
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.05, 0.1])
    parser.add_argument("--end-to-end", action="store_true")
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--rate", type=float, default=400.0)
    args = parser.parse_args(argv)
    return end_to_end(args) if args.end_to_end else simulate(args)


if __name__ == "__main__":
    sys.exit(main())

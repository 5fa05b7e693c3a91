"""Full-trace simulation of every policy on the shared traces, against the targets.

Prints, per trace and cache size, each policy's demand miss ratio, origin
fetches per request and prefetch precision, with ratios against LRU measured in
the same run, and checks cachecast's targets:

- LRU reproduces libCacheSim's LRU rows to 3 decimals;
- lru+cachecast: fetches/request <= 1.02 x LRU's miss ratio, and a miss ratio
  below LRU+Mithril's (reference numbers from ../shared/traces/README.md);
- with ``--delay``, the share of the no-delay miss reduction that is kept.

Usage: python benchmarks/simulate_traces.py [--traces DIR] [--delay 100]
       [--sizes 0.01,0.05,0.1] [--json OUT] [--ablations]
One heavy simulation at a time: the policies run one after another.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import orjson

from pipeline.sim.cli import engine_config
from pipeline.sim.runner import SimResult, run
from pipeline.sim.traces import read_trace

REFERENCE = {  # ../shared/traces/README.md: (LRU, LRU+Mithril, LRU+successor) miss ratios
    "scarab_recs": {
        0.01: (0.6529, 0.5790, 0.4965),
        0.05: (0.4829, 0.4249, 0.3951),
        0.1: (0.3940, 0.3622, 0.3397),
    },
    "cache2k_orm_busy": {
        0.01: (0.2297, 0.1841, 0.0702),
        0.05: (0.1587, 0.0752, 0.0551),
        0.1: (0.1199, 0.0565, 0.0463),
    },
}
DEFAULT_TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"


def _row(r: SimResult, lru: float) -> str:
    c = r.counts
    precision = f"{c.prefetch_precision:.3f}" if c.warms else "  -  "
    return (
        f"  {r.policy:<20} miss {c.miss_ratio:.4f} ({c.miss_ratio / lru:5.3f}x LRU)  "
        f"fetches/req {c.fetches_per_request:.4f} ({c.fetches_per_request / lru:5.3f}x)  "
        f"precision {precision}  {r.requests_per_second:>9,.0f} req/s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    parser.add_argument("--delay", type=int, default=100)
    parser.add_argument("--sizes", default="0.01,0.05,0.1")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--ablations", action="store_true", help="also run warm-only, TTL-only")
    args = parser.parse_args(argv)
    sizes = tuple(float(s) for s in args.sizes.split(","))
    policies: tuple[str, ...] = ("lru", "lru+successor", "lru+cachecast", "belady")
    if args.ablations:
        policies += ("lru+cachecast-warm", "lru+cachecast-ttl")
    rows: list[dict[str, object]] = []
    failures: list[str] = []
    for name, reference in REFERENCE.items():
        trace = read_trace(args.traces / f"{name}.oracleGeneral.bin.zst")
        print(f"\n{name}: {len(trace):,} requests, {trace.n_unique:,} unique keys", flush=True)
        start = time.perf_counter()
        no_delay = run(trace, sizes, policies, config=engine_config(0, 0.03, None))
        delayed = (
            run(
                trace,
                sizes,
                ("lru+cachecast",),
                delay=args.delay,
                config=engine_config(args.delay, 0.03, None),
            )
            if args.delay
            else []
        )
        for size in sizes:
            lru_row, mithril, successor = reference[size]
            here = {r.policy: r for r in no_delay if r.size_fraction == size}
            lru = here["lru"].counts.miss_ratio
            cachecast = here["lru+cachecast"].counts
            print(f" cache {size:g} ({here['lru'].cache_size} keys)")
            for r in here.values():
                print(_row(r, lru))
            ok_lru = round(lru, 3) == round(lru_row, 3)
            ok_fetch = cachecast.fetches_per_request <= 1.02 * lru
            ok_miss = cachecast.miss_ratio < mithril
            print(
                f"  targets: LRU = libCacheSim {lru_row} {'OK' if ok_lru else 'MISSED'}; "
                f"cachecast fetches <= 1.02x LRU {'OK' if ok_fetch else 'MISSED'}; "
                f"miss < Mithril {mithril} {'OK' if ok_miss else 'MISSED'} "
                f"(successor reference {successor})"
            )
            failures += [
                f"{name}@{size}: {t}"
                for t, ok in (("LRU", ok_lru), ("fetches", ok_fetch), ("vs Mithril", ok_miss))
                if not ok
            ]
            for r in delayed:
                if r.size_fraction == size:
                    print(_row(r, lru).replace("lru+cachecast ", f"  delay {args.delay:<4}"))
                    gain = lru - cachecast.miss_ratio
                    kept = (lru - r.counts.miss_ratio) / gain if gain > 0 else 0.0
                    ok_kept = kept >= 0.8
                    print(
                        f"  delay {args.delay}: keeps {kept:.0%} of the no-delay miss reduction "
                        f"{'OK' if ok_kept else 'MISSED'} (target >= 80%)"
                    )
                    if not ok_kept:
                        failures.append(f"{name}@{size}: delay {args.delay}")
        rows += [{"trace": name, **r.row()} for r in no_delay + delayed]
        print(f" ({time.perf_counter() - start:.0f} s)", flush=True)
    if args.json:
        args.json.write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
    print("\nmissed targets: " + (", ".join(failures) if failures else "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

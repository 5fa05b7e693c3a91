"""Admission-threshold sweep on the shared traces: the miss-vs-fetches curve, and a PNG.

For each trace, runs lru, lru+successor, lru+cachecast (waste budget) and
cachecast at fixed thresholds, prints the curve, says whether some point beats
lru+successor on both axes at once (lower miss AND fewer fetches), and plots
``sweep-TRACE-SIZE.png`` (needs matplotlib).

Usage: python benchmarks/simulate_sweep.py [--traces DIR] [--size 0.05] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.sim.cli import engine_config
from pipeline.sim.report import plot_sweep
from pipeline.sim.runner import DEFAULT_SWEEP, sweep
from pipeline.sim.traces import read_trace

DEFAULT_TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    parser.add_argument("--size", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    for name in ("scarab_recs", "cache2k_orm_busy"):
        trace = read_trace(args.traces / f"{name}.oracleGeneral.bin.zst")
        results = sweep(trace, args.size, DEFAULT_SWEEP, config=engine_config(0, 0.03, None))
        lru = next(r for r in results if r.policy == "lru").counts
        successor = next(r for r in results if r.policy == "lru+successor").counts
        print(f"\n{name} @ {args.size:g}: LRU miss {lru.miss_ratio:.4f}")
        print(
            f"  lru+successor          miss {successor.miss_ratio:.4f} "
            f"fetches/req {successor.fetches_per_request:.4f}"
        )
        dominating = []
        for r in results:
            if r.policy != "lru+cachecast":
                continue
            c = r.counts
            label = "budget" if r.threshold is None else f"thr {r.threshold:g}"
            beats = (
                c.miss_ratio < successor.miss_ratio
                and c.fetches_per_request < successor.fetches_per_request
            )
            if beats:
                dominating.append(label)
            ratio = c.fetches_per_request / lru.miss_ratio
            note = "  beats successor on both axes" if beats else ""
            print(
                f"  cachecast {label:<12} miss {c.miss_ratio:.4f} "
                f"fetches/req {c.fetches_per_request:.4f} ({ratio:.3f}x LRU) "
                f"precision {c.prefetch_precision:.3f}{note}"
            )
        print(
            f"  target (a point beating lru+successor on both axes): "
            f"{'OK: ' + ', '.join(dominating) if dominating else 'MISSED'}"
        )
        png = args.out / f"sweep-{name}-{args.size:g}.png"
        try:
            plot_sweep(results, png, f"{name}, cache {args.size:g} of keys")
            print(f"  plot: {png}")
        except ImportError as exc:
            print(f"  no plot: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

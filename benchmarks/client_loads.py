"""What a miss that loads costs the asyncio client: its load's claim and write on the
read line against the same on redis-py's pool, in one run.

A miss with ``fallback_data`` sends three batches besides its GET: the claim (a
loading mark, ``SET NX PX``, and the key's smart TTL, ``HGET``), then, once the
loader answered, the write (``SET``). An edge warm does the same with a Lua
write. At 2,000 requests/s the demo's client spends a quarter of its CPU in the
pool's commands, so they ride the read line too (``pipeline/client/reads.py``).
This benchmark times blocks of misses (each of a key never read before, loaded
by a loader that answers at once) on two clients of the same Redis, one with the
line (the default) and one without (``CACHECAST_REDIS_READ_LINE=false``), block
by block, alternating which goes first, and prints the CPU and the wall time per
miss of each, and their ratios. Target: the line's CPU per miss well below the
pool's (ratio < 0.8).

Usage::

    python benchmarks/client_loads.py [--rounds 10] [--block 1000]

Redis comes from ``pipeline.devstack`` (a real server started for the run), or
from ``REDIS_HOST``/``REDIS_PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import time
from typing import Any

from pipeline.client import IntelligentCache
from pipeline.config import Settings, load_settings
from pipeline.devstack import DevStack

VALUE = {"id": 42, "name": "Ada Lovelace", "plan": "pro", "tags": ["a", "b"], "score": 0.93}
TARGET_CPU_RATIO = 0.8


async def _loader() -> dict[str, Any]:
    return VALUE


async def _block(
    cache: IntelligentCache, keys: itertools.count[int], n: int
) -> tuple[float, float]:
    """CPU and wall seconds of ``n`` misses that load, one after the other."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        await cache.get("loads", f"k{next(keys)}", fallback_data=_loader)
    return time.process_time() - cpu, time.perf_counter() - wall


async def bench(
    settings: Settings, rounds: int, block: int
) -> dict[str, tuple[list[float], list[float]]]:
    caches = {
        "read line": IntelligentCache(settings.model_copy(update={"emitter_enabled": False})),
        "pool": IntelligentCache(
            settings.model_copy(update={"emitter_enabled": False, "redis_read_line": False})
        ),
    }
    keys = itertools.count()
    for cache in caches.values():
        await cache.start()
        await _block(cache, keys, 200)  # connects the line, warms the code paths
    for _ in range(500):
        if (await caches["read line"].get_stats())["read_line"]["connected"]:
            break
        await asyncio.sleep(0.01)
    samples: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in caches}
    order = list(caches)
    for index in range(rounds):
        for name in order if index % 2 == 0 else reversed(order):
            cpu, wall = await _block(caches[name], keys, block)
            samples[name][0].append(cpu / block)
            samples[name][1].append(wall / block)
    line = (await caches["read line"].get_stats())["read_line"]
    print(f"  read line: {line}", file=sys.stderr)
    for cache in caches.values():
        await cache.close(timeout=2.0)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="alternating blocks per client")
    parser.add_argument("--block", type=int, default=1000, help="misses per block")
    args = parser.parse_args(argv)
    if os.environ.get("REDIS_HOST"):
        samples = asyncio.run(bench(load_settings(), args.rounds, args.block))
    else:
        with DevStack(kafka=False, redis=True) as stack:
            settings = load_settings(
                redis_host=stack.env()["REDIS_HOST"], redis_port=int(stack.env()["REDIS_PORT"])
            )
            samples = asyncio.run(bench(settings, args.rounds, args.block))
    print(f"{args.rounds} blocks of {args.block:,} misses that load, per client (medians)")
    print(f"{'client':<10} {'CPU µs/miss':>12} {'wall µs/miss':>13}")
    medians = {
        name: (statistics.median(cpu) * 1e6, statistics.median(wall) * 1e6)
        for name, (cpu, wall) in samples.items()
    }
    for name, (cpu, wall) in medians.items():
        print(f"{name:<10} {cpu:>12.1f} {wall:>13.1f}")
    cpu_ratio = medians["read line"][0] / medians["pool"][0]
    wall_ratio = medians["read line"][1] / medians["pool"][1]
    verdict = "met" if cpu_ratio < TARGET_CPU_RATIO else "NOT met"
    print(
        f"read line / pool: CPU {cpu_ratio:.3f}, wall {wall_ratio:.3f}"
        f" (target CPU < {TARGET_CPU_RATIO}: {verdict})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

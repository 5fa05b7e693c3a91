"""A cache hit while Kafka is down, against the same hit while it is up, in one run.

The cache path must never wait on Kafka: with the broker stopped, events are
dropped (counted) and reads go on. This starts real Kafka and Redis, then times
``IntelligentCache.get`` hits (async client, emitter on) in blocks: ``--blocks``
with the broker up; the broker stopped, and gets until the emitter has noticed
(its first delivery stalls for a second: "going down"); ``--blocks`` with it
down; the broker started again; ``--blocks`` after it came back. For each phase it
prints p50/p99 and the process CPU per second of wall time (a client that spins
on a dead broker burns a core). The same phases run again with no access events
at all, as the control: on this machine a get's latency depends on how busy the
event loop is (with events on and the broker up, the sender's work keeps the
process awake and gets are faster than with no events at all), so the figure is
the p50 with events / without, phase by phase. Target while the broker is down:
<= 1.1.

Usage: python benchmarks/kafka_outage.py [--blocks 5] [--block 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
import time
from dataclasses import dataclass, field

from pipeline.client import IntelligentCache
from pipeline.config import load_settings
from pipeline.devstack import DevStack, KafkaServer

TARGET_P50_RATIO = 1.1
VALUE = {"id": 42, "name": "Ada Lovelace", "plan": "pro"}


@dataclass
class Phase:
    name: str
    samples: list[int] = field(default_factory=list)
    cpu_s: float = 0.0
    wall_s: float = 0.0

    def quantile(self, q: float) -> float:
        ordered = sorted(self.samples)
        if not ordered:
            return math.nan
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0


async def _time_block(cache: IntelligentCache, n: int, phase: Phase) -> None:
    clock = time.perf_counter_ns
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        started = clock()
        await cache.get("bench", "hot")
        phase.samples.append(clock() - started)
    phase.wall_s += time.perf_counter() - wall
    phase.cpu_s += time.process_time() - cpu


async def _idle(seconds: float, phase: Phase) -> None:
    """Wall time with no reads: what the client's background work costs then."""
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    phase.wall_s += time.perf_counter() - wall
    phase.cpu_s += time.process_time() - cpu


async def run(
    kafka: KafkaServer, redis_host: str, redis_port: int, blocks: int, n: int, emitter: bool
) -> dict[str, float]:
    """Time the phases; their p50s (µs)."""
    settings = load_settings(
        redis_host=redis_host,
        redis_port=redis_port,
        emitter_enabled=emitter,
        kafka_bootstrap_servers=kafka.bootstrap_servers,
        topic_access="cachecast.access.outage-bench",
    )
    cache = IntelligentCache(settings)
    await cache.start()
    await cache.set("bench", "hot", VALUE, ttl=3600)
    for _ in range(2):  # warm up: connections, the producer, the interpreter's caches
        await _time_block(cache, n, Phase("warm-up"))
    phases = [
        Phase("broker up"),
        Phase("going down"),
        Phase("broker down"),
        Phase("broker back"),
    ]
    idle = [Phase("idle, up"), Phase("idle, down")]
    for _ in range(blocks):
        await _time_block(cache, n, phases[0])
    await _idle(3.0, idle[0])
    await asyncio.to_thread(kafka.stop)
    await _idle(3.0, idle[1])
    deadline = time.monotonic() + (10.0 if cache.emitter is not None else 1.5)
    while time.monotonic() < deadline:
        if cache.emitter is not None and cache.emitter.stats().outages:
            break
        await _time_block(cache, n // 10, phases[1])
    for _ in range(blocks):
        await _time_block(cache, n, phases[2])
    dropped = cache.emitter.stats().dropped if cache.emitter is not None else 0
    await asyncio.to_thread(kafka.start)
    await asyncio.sleep(2.0)
    for _ in range(blocks):
        await _time_block(cache, n, phases[3])
    await cache.close()

    label = "access events on" if emitter else "control: no access events"
    print(f"\n{label}: cache hit latency, µs ({blocks * n} gets per phase but going down)")
    print(f"{'phase':<14} {'p50':>8} {'p99':>8} {'CPU s / wall s':>15}")
    for phase in phases + idle:
        cpu = phase.cpu_s / phase.wall_s if phase.wall_s else 0.0
        if phase.samples:
            print(
                f"{phase.name:<14} {phase.quantile(0.5):>8.1f} {phase.quantile(0.99):>8.1f}"
                f" {cpu:>15.2f}"
            )
        else:
            print(f"{phase.name:<14} {'':>8} {'':>8} {cpu:>15.2f}")
    print(f"events dropped while the broker was down: {dropped:,}")
    return {phase.name: phase.quantile(0.5) for phase in phases}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--blocks", type=int, default=5, help="blocks of gets per phase")
    parser.add_argument("--block", type=int, default=2000, help="gets per block")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with DevStack(kafka=True, redis=True) as stack:
        if stack.redis is None or stack.kafka is None or not stack.kafka.managed:
            raise SystemExit("needs a Redis and a Kafka broker of its own (it stops the broker)")
        redis = stack.redis
        p50 = {
            emitter: asyncio.run(
                run(stack.kafka, redis.host, redis.port, args.blocks, args.block, emitter)
            )
            for emitter in (True, False)
        }
    down = p50[True]["broker down"] / p50[False]["broker down"]
    up = p50[True]["broker up"] / p50[False]["broker up"]
    print(
        f"\np50 with access events / without, same phase: broker down {down:.3f},"
        f" broker up {up:.3f} (target while down <= {TARGET_P50_RATIO}):"
        f" {'PASS' if down <= TARGET_P50_RATIO else 'FAIL'}"
    )
    return 0 if down <= TARGET_P50_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())

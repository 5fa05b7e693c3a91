"""``cachecast demo``: the whole pipeline on the bundled trace, warming off and then on.

For each of the two runs: a fresh devstack (real Kafka and Redis), a worker
process (``cachecast worker``), and a replay of the bundled cache2k trace slice
through the real client at a fixed request rate into a Redis sized to hold a
fraction of the keys. The first run learns but does not warm; the second warms.
The table at the end compares what the application saw.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from pipeline.config import Settings, load_settings
from pipeline.devstack import DevStack, free_port
from pipeline.replay import BUNDLED_TRACE, ReplayResult, load_trace, replay
from pipeline.sim.traces import Trace
from pipeline.worker import WorkerProcess

__all__ = ["register", "run_demo"]

NAMESPACE = "orders"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on the bundled trace, warming off then on",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--requests", type=int, default=40_000, help="trace requests to replay")
    parser.add_argument("--rate", type=float, default=400.0, help="requests per second")
    parser.add_argument("--cache-fraction", type=float, default=0.05)
    parser.add_argument(
        "--partitions", type=int, default=1, help="partitions per topic (one worker needs one)"
    )
    parser.add_argument("--json", default=None, help="also write both results as JSON here")
    parser.set_defaults(func=run_demo)


def _run_once(
    args: argparse.Namespace, warming: bool, workdir: Path, console: Console
) -> ReplayResult:
    trace = load_trace(BUNDLED_TRACE, max_requests=args.requests)
    n_values = max(1, int(trace.n_unique * args.cache_fraction))
    label = "warming on " if warming else "warming off"
    with DevStack(kafka=True, redis=True, kafka_partitions=args.partitions) as stack:
        port = free_port()
        env = {
            **os.environ,
            **stack.env(),
            "CACHECAST_TOPIC_PARTITIONS": str(args.partitions),
            "CACHECAST_SESSION_TIMEOUT_S": "2",
            "CACHECAST_HEARTBEAT_S": "0.5",
            "CACHECAST_WARMING": "true" if warming else "false",
            # Warms land ~10-25 ms after their trigger: that many requests ahead.
            "CACHECAST_DELAY_REQUESTS": str(max(1, int(args.rate * 0.02))),
            "CACHECAST_LEAD_REQUESTS": str(int(args.rate * 0.012)),
            "CACHECAST_LOADERS": orjson.dumps(
                {NAMESPACE: {"callable": "pipeline.replay:demo_origin", "rate": 5000}}
            ).decode(),
        }
        servers = stack.env()
        settings = load_settings(
            kafka_bootstrap_servers=servers["KAFKA_BOOTSTRAP_SERVERS"],
            redis_host=servers["REDIS_HOST"],
            redis_port=int(servers["REDIS_PORT"]),
            topic_partitions=args.partitions,
        )
        log = workdir / f"worker-{'on' if warming else 'off'}.log"
        log.unlink(missing_ok=True)
        worker = WorkerProcess(env, log, web_port=port).start()
        try:
            return _replay_with_progress(args, trace, settings, n_values, label, console)
        finally:
            worker.stop()


def _replay_with_progress(
    args: argparse.Namespace,
    trace: Trace,
    settings: Settings,
    n_values: int,
    label: str,
    console: Console,
) -> ReplayResult:
    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("requests"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(label, total=len(trace))
        return asyncio.run(
            replay(
                trace,
                settings,
                namespace=NAMESPACE,
                rate=args.rate,
                cache_values=n_values,
                progress=lambda done, total: bar.update(task, completed=done),
            )
        )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def run_demo(args: argparse.Namespace) -> int:
    console = Console()
    workdir = Path(os.environ.get("CACHECAST_DEMO_DIR", ".")).resolve() / "out" / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    console.print(
        f"[bold]cachecast demo[/]: {args.requests:,} requests of the cache2k orm trace at "
        f"{args.rate:,.0f}/s, Redis holding {100 * args.cache_fraction:.0f}% of the keys, "
        f"real Kafka + Redis started here. Worker logs in {workdir}."
    )
    off = _run_once(args, False, workdir, console)
    on = _run_once(args, True, workdir, console)
    table = Table(title="what the application saw")
    table.add_column("")
    table.add_column("warming off", justify="right")
    table.add_column("warming on", justify="right")
    rows: list[tuple[str, str, str]] = [
        ("requests", f"{off.requests:,}", f"{on.requests:,}"),
        ("hit ratio", _pct(off.hit_ratio), _pct(on.hit_ratio)),
        ("misses", f"{off.misses:,}", f"{on.misses:,}"),
        ("warms written", f"{off.warms_written:,}", f"{on.warms_written:,}"),
        (
            "origin fetches / request",
            f"{off.fetches_per_request:.4f}",
            f"{on.fetches_per_request:.4f}",
        ),
        ("warm precision", _pct(off.warm_precision), _pct(on.warm_precision)),
        ("warm latency p50", _ms(off.warm_latency_p50_ms), _ms(on.warm_latency_p50_ms)),
        ("warm latency p99", _ms(off.warm_latency_p99_ms), _ms(on.warm_latency_p99_ms)),
        ("access events dropped", f"{off.events_dropped:,}", f"{on.events_dropped:,}"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    gained = on.hit_ratio - off.hit_ratio
    change = (on.misses - off.misses) / off.misses if off.misses else 0.0
    console.print(
        f"Warming changed the hit ratio by {100 * gained:+.2f} points; demand misses by "
        f"{100 * change:+.1f}%, origin fetches per request by "
        f"{on.fetches_per_request - off.fetches_per_request:+.4f}."
    )
    if args.json:
        doc: dict[str, Any] = {"off": off.as_dict(), "on": on.as_dict()}
        Path(args.json).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return 0

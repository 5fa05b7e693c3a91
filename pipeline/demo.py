"""``cachecast demo``: the whole pipeline on a trace, warming off and then on.

For each of the two runs: a fresh devstack (real Kafka and Redis), a worker
process (``cachecast worker``), and a replay of the trace (by default the bundled
cache2k orm slice) through the real client into a Redis sized to hold a fraction
of the keys. The replay is open-loop at the given rate: requests start on
schedule whether or not earlier ones have finished, as an application's do, and
every miss waits for the synthetic origin (``--origin-ms``), as do the warms.
The first run learns but does not warm; the second warms. The table at the end
compares what the application saw, and what each warm path (the worker's, and
the clients' own edge warms) cost the origin.

Two runs of the same demo differ by a few points at a few thousand requests a
second (Redis evicts close to at random when its cache turns over within a
second, and timing decides which concurrent reads join a load). ``--repeat N`` runs
N such pairs, prints each pair's result, and pools them: the table and its
summary add up every pair's counts (so the change is the pairs' demand misses
and origin fetches added up, on against off), and a last line gives the range
of the pairs' own changes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from pipeline.config import Settings, load_settings
from pipeline.devstack import DevStack, free_port
from pipeline.models.temporal import is_wall_clock
from pipeline.replay import (
    ORIGIN_MS_ENV,
    ReplayResult,
    add_load_options,
    origin_latency,
    replay,
)
from pipeline.sim.traces import BUNDLED_TRACE, Trace, add_trace_options, load_trace
from pipeline.worker import WorkerProcess

__all__ = [
    "demo_loaders",
    "pairs_range",
    "pooled",
    "register",
    "result_rows",
    "run_demo",
    "summary",
    "worker_env",
]

NAMESPACE = "orders"
#: The loader both the worker and the clients use for the demo's namespace.
ORIGIN_CALLABLE = "pipeline.replay:demo_origin"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on a trace (default: the bundled one), warming off then on",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--trace",
        type=Path,
        default=BUNDLED_TRACE,
        help="trace file (default: the bundled cache2k orm slice)",
    )
    add_trace_options(parser)
    parser.add_argument("--requests", type=int, default=40_000, help="trace requests to replay")
    parser.add_argument("--rate", type=float, default=400.0, help="requests per second")
    parser.add_argument("--cache-fraction", type=float, default=0.05)
    add_load_options(parser)
    parser.add_argument(
        "--partitions", type=int, default=1, help="partitions per topic (one worker needs one)"
    )
    parser.add_argument(
        "--tuned",
        action="store_true",
        help="give the worker a lead and delay derived from the rate (~12 and ~20 ms of "
        "requests); without it the worker runs with its defaults",
    )
    parser.add_argument(
        "--users",
        choices=("on", "off"),
        default="on",
        help="send a trace's users with its requests (default on), as an application that"
        " knows who is asking does",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run N pairs (warming off, then on; N <= 100) and pool them: single runs at a"
        " few thousand requests a second vary by a few points (default 1)",
    )
    parser.add_argument(
        "--json",
        default=None,
        help="also write the results as JSON here: {off, on}; with --repeat, off and on"
        " pooled over the pairs, and each pair's under pairs",
    )
    parser.set_defaults(func=run_demo)


#: The longest session gap the worker accepts (``CACHECAST_SESSION_GAP_S``).
MAX_SESSION_GAP_S = 7 * 86_400.0


def session_gap_for(trace: Trace, rate: float, gap_s: float = 1800.0) -> float | None:
    """The session gap of a replay of ``trace`` at ``rate``: ``gap_s`` of the trace's time.

    A replay at a fixed rate compresses (or stretches) the trace's time; the worker's
    session gap (``CACHECAST_SESSION_GAP_S``) must follow, or every user's sessions
    of a day would merge into one. None when the trace has no users or its times are
    not wall-clock. At most a week (the setting's bound).

    >>> import numpy as np
    >>> day = Trace(keys=np.arange(4), ts=1.7e9 + np.array([0.0, 1, 2, 3]) * 28_800,
    ...             users=np.array([1, 2, 1, 2]))
    >>> session_gap_for(day, rate=1.0)  # a day in 4 s: 30 minutes are 1/12 s
    0.08333333333333333
    >>> counted = Trace(keys=np.arange(4), ts=np.arange(4.0), users=np.arange(4))
    >>> session_gap_for(counted, rate=1.0) is None  # request indices, not time
    True
    """
    if trace.users is None or len(trace) < 2 or not is_wall_clock(float(trace.ts[0])):
        return None
    span = float(trace.ts[-1] - trace.ts[0])
    if span <= 0.0:
        return None
    return min(gap_s * len(trace) / rate / span, MAX_SESSION_GAP_S)


def demo_loaders(namespace: str = NAMESPACE) -> str:
    """The CACHECAST_LOADERS document of the demo: the synthetic origin, guarded."""
    config = {namespace: {"callable": ORIGIN_CALLABLE, "rate": 5000, "concurrency": 64}}
    return orjson.dumps(config).decode()


def worker_env(
    args: argparse.Namespace,
    servers: Mapping[str, str],
    *,
    warming: bool,
    loaders: str,
    origin_ms: float,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The worker's environment: ``base`` (default: this process's) plus the demo's settings.

    Model settings (lead, delay) are given only with ``--tuned``; otherwise the
    worker runs with its defaults (or what ``base`` says).
    """
    env = {
        **(os.environ if base is None else base),
        **servers,
        "CACHECAST_TOPIC_PARTITIONS": str(args.partitions),
        "CACHECAST_SESSION_TIMEOUT_S": "2",
        "CACHECAST_HEARTBEAT_S": "0.5",
        "CACHECAST_WARMING": "true" if warming else "false",
        "CACHECAST_LOADERS": loaders,
        ORIGIN_MS_ENV: repr(float(origin_ms)),
    }
    gap = getattr(args, "session_gap_s", None)
    if gap is not None:
        env["CACHECAST_SESSION_GAP_S"] = repr(gap)
    if args.tuned:
        # Warms land ~10-25 ms after their trigger: that many requests ahead.
        env["CACHECAST_DELAY_REQUESTS"] = str(max(1, int(args.rate * 0.02)))
        env["CACHECAST_LEAD_REQUESTS"] = str(int(args.rate * 0.012))
    return env


def _run_once(
    args: argparse.Namespace,
    trace: Trace,
    warming: bool,
    workdir: Path,
    console: Console,
    loaders: str,
    origin_ms: float,
    pair: int = 0,
) -> ReplayResult:
    """One run on fresh servers; ``pair`` numbers it among ``--repeat`` pairs (0: alone)."""
    n_values = max(1, int(trace.n_unique * args.cache_fraction))
    label = ("warming on " if warming else "warming off") + (
        f" ({pair}/{args.repeat})" if pair else ""
    )
    with DevStack(kafka=True, redis=True, kafka_partitions=args.partitions) as stack:
        servers = stack.env()
        env = worker_env(args, servers, warming=warming, loaders=loaders, origin_ms=origin_ms)
        # The clients get the same loaders as the worker: they warm through them too; and
        # its session gap: they load a user's rule as the user's session opens.
        gap = getattr(args, "session_gap_s", None)
        settings = load_settings(
            kafka_bootstrap_servers=servers["KAFKA_BOOTSTRAP_SERVERS"],
            redis_host=servers["REDIS_HOST"],
            redis_port=int(servers["REDIS_PORT"]),
            topic_partitions=args.partitions,
            loaders=loaders,
            **({} if gap is None else {"model_session_gap_s": gap}),
        )
        log = workdir / f"worker-{'on' if warming else 'off'}{f'-{pair}' if pair else ''}.log"
        log.unlink(missing_ok=True)
        worker = WorkerProcess(env, log, web_port=free_port()).start()
        try:
            result = _replay_with_progress(
                args, trace, settings, n_values, label, console, origin_ms
            )
            with contextlib.suppress(OSError, ValueError):
                result.worker = worker.monitor()
            return result
        finally:
            worker.stop()


def _replay_with_progress(
    args: argparse.Namespace,
    trace: Trace,
    settings: Settings,
    n_values: int,
    label: str,
    console: Console,
    origin_ms: float,
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
                clients=args.clients,
                origin_ms=origin_ms,
                pool_size=args.connections,
                users=args.users == "on",
            )
        )


def _users_note(trace: Trace, args: argparse.Namespace) -> str:
    """What the banner says of the trace's users."""
    if trace.users is None:
        return ""
    if args.users == "off":
        return ", the trace's users left out"
    gap = args.session_gap_s
    return ", users sent" + ("" if gap is None else f" (session gap {gap:.3g} s of replay)")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _latency(p50: float | None, p99: float | None) -> str:
    if p50 is None and p99 is None:
        return "-"
    return f"{_ms(p50)} / {_ms(p99)}"


def result_rows(off: ReplayResult, on: ReplayResult) -> list[tuple[str, str, str]]:
    """The comparison table's rows: (what, warming off, warming on)."""

    def count(name: str, attr: str) -> tuple[str, str, str]:
        return (name, f"{getattr(off, attr):,}", f"{getattr(on, attr):,}")

    def pct(name: str, attr: str) -> tuple[str, str, str]:
        return (name, _pct(getattr(off, attr)), _pct(getattr(on, attr)))

    def latency(name: str, p50: str, p99: str) -> tuple[str, str, str]:
        return (
            name,
            _latency(getattr(off, p50), getattr(off, p99)),
            _latency(getattr(on, p50), getattr(on, p99)),
        )

    rows = [
        count("requests", "requests"),
        ("requests/s achieved", f"{off.achieved_rate:,.0f}", f"{on.achieved_rate:,.0f}"),
        pct("hit ratio", "hit_ratio"),
        latency("request latency p50 / p99", "latency_p50_ms", "latency_p99_ms"),
        count("demand misses (origin loads)", "demand_misses"),
        count("reads that joined an app load in flight", "load_joins"),
        count("reads that joined an edge load in flight", "inflight_joins"),
        (
            "origin fetches / request",
            f"{off.fetches_per_request:.4f}",
            f"{on.fetches_per_request:.4f}",
        ),
        count("edge warms issued", "edge_issued"),
        count("edge warms written", "edge_written"),
        count("edge warms useful", "edge_useful"),
        pct("edge precision", "edge_precision"),
        count("worker warms written", "warms_written"),
        count("worker warms useful", "worker_useful"),
        pct("worker precision", "warm_precision"),
        latency("edge warm latency p50 / p99", "edge_latency_p50_ms", "edge_latency_p99_ms"),
        latency("worker warm latency p50 / p99", "warm_latency_p50_ms", "warm_latency_p99_ms"),
        latency("request start lag p99 / max", "start_lag_p99_ms", "start_lag_max_ms"),
        count("access events dropped", "events_dropped"),
    ]
    if off.user_rule_reads or on.user_rule_reads:
        rows.insert(
            rows.index(count("edge warms issued", "edge_issued")),
            count("sessions that opened on a user rule", "user_rules_applied"),
        )
    if off.rule_resyncs or on.rule_resyncs:
        rows.insert(
            rows.index(count("edge warms issued", "edge_issued")),
            count("rule table re-reads (rule stream lost entries)", "rule_resyncs"),
        )
    if off.request_errors or on.request_errors:
        rows.append(count("failed requests", "request_errors"))
    if off.errors or on.errors:
        rows.append(count("client errors", "errors"))
    if off.backlog_waits or on.backlog_waits:
        rows.append(count("starts held by the in-flight cap", "backlog_waits"))
    return rows


def summary(off: ReplayResult, on: ReplayResult) -> str:
    """One line: what warming changed (hit ratio, demand misses in %, fetches as a ratio)."""
    gained = on.hit_ratio - off.hit_ratio
    if off.demand_misses:
        change = (on.demand_misses - off.demand_misses) / off.demand_misses
        misses = f"{100 * change:+.1f}% ({off.demand_misses:,} -> {on.demand_misses:,})"
    else:
        misses = f"{off.demand_misses:,} -> {on.demand_misses:,}"
    if off.fetches_per_request:
        ratio = on.fetches_per_request / off.fetches_per_request
        fetches = f"x{ratio:.3f} ({off.fetches_per_request:.4f} -> {on.fetches_per_request:.4f})"
    else:
        fetches = f"{off.fetches_per_request:.4f} -> {on.fetches_per_request:.4f}"
    return (
        f"Warming changed the hit ratio by {100 * gained:+.2f} points; demand misses by "
        f"{misses}; origin fetches per request by {fetches}."
    )


#: Fields a pooled result takes from its first run, those it takes the highest of, and
#: those it leaves out: quantiles do not add up, and the worker's document is per run.
_SAME_IN_EVERY_RUN = frozenset(
    {"namespace", "cache_values", "trace", "clients", "rate", "origin_ms"}
)
_HIGHEST = frozenset({"peak_outstanding", "start_lag_max_ms", "latency_max_ms"})
_LEFT_OUT_SUFFIXES = ("_p50_ms", "_p99_ms")


def pooled(results: Sequence[ReplayResult]) -> ReplayResult:
    """Several runs of the same replay as one: counts and seconds added up (so its
    ratios are ratios of sums, not means of ratios), the highest peaks kept, the
    quantiles left out (they do not add up), the error samples of every run kept."""
    values: dict[str, Any] = {}
    for spec in fields(ReplayResult):
        name = spec.name
        column = [getattr(result, name) for result in results]
        if name in _SAME_IN_EVERY_RUN:
            values[name] = column[0]
        elif name in _HIGHEST:
            present = [value for value in column if value is not None]
            values[name] = max(present) if present else None
        elif name == "warm_outcomes":
            total: Counter[str] = Counter()
            for outcomes in column:
                total.update(outcomes)
            values[name] = dict(total)
        elif name == "error_samples":
            values[name] = [
                f"run {n}: {sample}" for n, samples in enumerate(column, 1) for sample in samples
            ]
        elif name == "worker" or name.endswith(_LEFT_OUT_SUFFIXES):
            values[name] = None
        else:
            values[name] = sum(column)
    return ReplayResult(**values)


def pairs_range(pairs: Sequence[tuple[ReplayResult, ReplayResult]]) -> str:
    """One line: how far the pairs' own changes spread around the pooled one."""
    cuts = [
        (on.demand_misses - off.demand_misses) / off.demand_misses
        for off, on in pairs
        if off.demand_misses
    ]
    ratios = [
        on.fetches_per_request / off.fetches_per_request
        for off, on in pairs
        if off.fetches_per_request
    ]
    line = f"The {len(pairs)} pairs, each on its own:"
    if cuts:
        line += f" demand misses {100 * min(cuts):+.1f}% to {100 * max(cuts):+.1f}%"
    if ratios:
        line += f"{',' if cuts else ''} origin fetches per request"
        line += f" x{min(ratios):.3f} to x{max(ratios):.3f}"
    if len(cuts) < len(pairs):
        line += f" ({len(pairs) - len(cuts)} with no demand miss warming off left out)"
    return line + "."


def run_demo(args: argparse.Namespace) -> int:
    console = Console()
    err = Console(stderr=True)
    if args.requests < 1 or args.rate <= 0 or not 0 < args.cache_fraction <= 1:
        err.print("[red]--requests must be >= 1, --rate > 0, --cache-fraction in (0, 1][/red]")
        return 2
    if not 1 <= args.repeat <= 100:
        err.print("[red]--repeat must be between 1 and 100[/red]")
        return 2
    if not Path(args.trace).exists():
        err.print(f"[red]no such trace: {args.trace}[/red]")
        return 2
    try:
        trace = load_trace(args.trace, args.format, args.csv_columns or None, args.requests)
    except (OSError, ValueError) as exc:
        err.print(f"[red]cannot read {args.trace}: {exc}[/red]")
        return 2
    if len(trace) == 0:
        err.print("[red]the trace has no requests[/red]")
        return 2
    args.session_gap_s = session_gap_for(trace, args.rate) if args.users == "on" else None
    workdir = Path(os.environ.get("CACHECAST_DEMO_DIR", ".")).resolve() / "out" / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    loaders = demo_loaders()
    with origin_latency(args.origin_ms) as origin_ms:
        clients = "one client" if args.clients == 1 else f"{args.clients} clients"
        console.print(
            f"[bold]cachecast demo[/]: {len(trace):,} requests of the {trace.name} trace "
            f"({trace.n_unique:,} keys) at {args.rate:,.0f}/s from {clients}, Redis holding "
            f"{100 * args.cache_fraction:g}% of the keys, origin {origin_ms:g} ms, worker "
            f"{'tuned to the rate' if args.tuned else 'with its default settings'}"
            f"{_users_note(trace, args)}; "
            f"real Kafka + Redis started here. Worker logs in {workdir}."
        )
        pairs: list[tuple[ReplayResult, ReplayResult]] = []
        for n in range(1, args.repeat + 1):
            pair = n if args.repeat > 1 else 0
            off = _run_once(args, trace, False, workdir, console, loaders, origin_ms, pair)
            on = _run_once(args, trace, True, workdir, console, loaders, origin_ms, pair)
            pairs.append((off, on))
            if pair:
                console.print(f"Pair {n} of {args.repeat}: {summary(off, on)}")
    if args.repeat == 1:
        off, on = pairs[0]
        title = f"what the application saw ({trace.name})"
    else:
        off, on = pooled([p[0] for p in pairs]), pooled([p[1] for p in pairs])
        title = f"what the application saw ({trace.name}, {args.repeat} pairs pooled)"
    table = Table(title=title)
    table.add_column("")
    table.add_column("warming off", justify="right")
    table.add_column("warming on", justify="right")
    for row in result_rows(off, on):
        table.add_row(*row)
    console.print(table)
    console.print(summary(off, on))
    if args.repeat > 1:
        console.print(pairs_range(pairs))
    for result, name in ((off, "off"), (on, "on")):
        for sample in result.error_samples:
            err.print(f"[yellow]warming {name}: a request failed: {sample}[/yellow]")
    if args.json:
        doc: dict[str, Any] = {"off": off.as_dict(), "on": on.as_dict()}
        if args.repeat > 1:
            doc["pairs"] = [{"off": a.as_dict(), "on": b.as_dict()} for a, b in pairs]
        Path(args.json).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return 0

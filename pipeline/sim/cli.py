"""``cachecast simulate``: replay a trace through LRU with and without warming."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Final, NamedTuple, TypedDict, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from pipeline.config import Settings
from pipeline.models import EngineConfig
from pipeline.sim.cache import (
    DEFAULT_EDGE_DELAY,
    DEFAULT_RULE_LAG,
    DEFAULT_RULE_REFRESH,
    ProgressCallback,
    SampledEviction,
)
from pipeline.sim.policies import ABLATIONS, POLICIES
from pipeline.sim.report import plot_sweep, results_table, write_json
from pipeline.sim.runner import (
    DEFAULT_SIZES,
    DEFAULT_SWEEP,
    ProgressFactory,
    SimResult,
    run,
    sweep,
)
from pipeline.sim.traces import add_trace_options, load_trace

_T = TypeVar("_T")

_LATENCIES = ("origin_ms", "worker_ms", "rules_interval_ms", "rules_lag_ms", "ttl_min")
"""The ``--rate`` options: keyword arguments of :func:`timing_for_rate`."""

#: The pipeline's shortest TTL in seconds by default (``CACHECAST_TTL_MIN``).
DEFAULT_TTL_MIN_S: Final = float(Settings.model_fields["smart_ttl_min"].default)


class Timing(NamedTuple):
    """Both warm paths' timing, in requests (see :func:`~pipeline.sim.cache.replay_lru`)."""

    delay: int
    """Worker path: from a warm decision to its landing."""
    edge_delay: int
    """Edge path: from a trigger to its loads landing."""
    rule_refresh: int
    """Edge path: between two publications of the prefetch rules."""
    rule_lag: int
    """Edge path: from a publication to the moment clients see it."""
    ttl_floor: int = 1
    """The shortest TTL cachecast gives a key (1: none shorter than a request)."""


class _RunOptions(TypedDict):
    """The keyword arguments ``simulate`` gives both :func:`run` and :func:`sweep`."""

    delay: int
    max_warms: int
    config: EngineConfig
    progress: ProgressFactory
    edge_delay: int
    rule_refresh: int
    rule_lag: int
    eviction: SampledEviction | None
    ttl_floor: int


def timing_for_rate(
    rate: float,
    *,
    origin_ms: float = 3.0,
    worker_ms: float = 15.0,
    rules_interval_ms: float = 100.0,
    rules_lag_ms: float = 25.0,
    ttl_min: float = DEFAULT_TTL_MIN_S,
) -> Timing:
    """The timing, in requests, of a pipeline serving ``rate`` requests/s.

    A latency becomes the requests that arrive meanwhile, rounded up (a warm
    landing a fraction of a request late is late); the publication interval is
    rounded to the nearest request. The pipeline never gives a TTL shorter than
    ``ttl_min`` seconds (its ``CACHECAST_TTL_MIN``): the requests that arrive
    meanwhile are the floor of the simulated TTLs.

    >>> timing_for_rate(400)
    Timing(delay=6, edge_delay=2, rule_refresh=40, rule_lag=10, ttl_floor=12000)
    >>> timing_for_rate(2_000, origin_ms=3.0)
    Timing(delay=30, edge_delay=6, rule_refresh=200, rule_lag=50, ttl_floor=60000)
    """
    if rate <= 0:
        raise ValueError("rate must be > 0")

    def requests(ms: float) -> int:
        # round() first: 400 req/s x 25 ms must be 10 requests, not 11 by float noise.
        return math.ceil(round(rate * ms / 1_000.0, 9))

    return Timing(
        delay=requests(worker_ms),
        edge_delay=requests(origin_ms),
        rule_refresh=max(1, round(rate * rules_interval_ms / 1_000.0)),
        rule_lag=requests(rules_lag_ms),
        ttl_floor=max(1, math.ceil(round(rate * ttl_min, 9))),
    )


def resolve_timing(args: argparse.Namespace) -> Timing:
    """The timing of a ``simulate`` run: explicit options, else derived from ``--rate``, else
    the defaults."""
    derived = Timing(0, DEFAULT_EDGE_DELAY, DEFAULT_RULE_REFRESH, DEFAULT_RULE_LAG)
    if args.rate is not None:
        latencies: dict[str, float] = {
            name: getattr(args, name) for name in _LATENCIES if getattr(args, name) is not None
        }
        derived = timing_for_rate(args.rate, **latencies)
    return Timing(
        delay=_or(args.delay, derived.delay),
        edge_delay=_or(args.edge_delay, derived.edge_delay),
        rule_refresh=_or(args.rule_refresh, derived.rule_refresh),
        rule_lag=_or(args.rule_lag, derived.rule_lag),
        ttl_floor=derived.ttl_floor,
    )


def _or(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _policies(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in POLICIES + ABLATIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"policies must be among {', '.join(POLICIES + ABLATIONS)}"
        )
    return names


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``simulate`` subcommand to the ``cachecast`` parser."""
    parser = subparsers.add_parser(
        "simulate",
        help="replay a cache trace: LRU vs LRU + warming (successor, cachecast) vs Belady",
        description=(
            "Replay TRACE through an exact LRU cache at each size (a fraction of the "
            "trace's unique keys) under the policies lru, lru+successor, lru+cachecast "
            "and belady, and report demand miss ratio, origin fetches per request "
            "(misses + warms) and prefetch precision. cachecast warms on two paths: "
            "the worker's warms land --delay requests after their decision; the "
            "clients' edge loads, from prefetch rules published every --rule-refresh "
            "requests and seen --rule-lag requests later, land --edge-delay requests "
            "after their trigger. --rate derives all four from latencies in ms."
        ),
    )
    parser.add_argument("trace", type=Path, help="trace file (.zst compressed or not)")
    add_trace_options(parser)
    parser.add_argument(
        "--sizes",
        type=_floats,
        default=DEFAULT_SIZES,
        help="cache sizes as fractions of unique keys (default: 0.01,0.05,0.1)",
    )
    parser.add_argument(
        "--delay",
        type=int,
        default=None,
        help="worker path: requests between a warm decision and its landing in the cache "
        "(default: 0, or from --rate)",
    )
    parser.add_argument(
        "--edge-delay",
        type=int,
        default=None,
        help=f"edge path: requests an edge load takes (default: {DEFAULT_EDGE_DELAY}, "
        "or from --rate)",
    )
    parser.add_argument(
        "--rule-refresh",
        type=int,
        default=None,
        help="edge path: requests between two publications of the prefetch rules "
        f"(default: {DEFAULT_RULE_REFRESH}, or from --rate)",
    )
    parser.add_argument(
        "--rule-lag",
        type=int,
        default=None,
        help="edge path: requests between a publication and the moment clients see it "
        f"(default: {DEFAULT_RULE_LAG}, or from --rate)",
    )
    timing = parser.add_argument_group(
        "timing from a request rate",
        "With --rate, each latency becomes the requests that arrive meanwhile "
        "(rounded up): delay = rate x worker-ms, edge delay = rate x origin-ms, "
        "rule refresh = rate x rules-interval-ms (rounded), rule lag = rate x "
        "rules-lag-ms, and no TTL is shorter than rate x ttl-min. An explicit --delay, "
        "--edge-delay, --rule-refresh or --rule-lag wins.",
    )
    timing.add_argument(
        "--rate", type=float, default=None, help="requests per second the trace is replayed at"
    )
    timing.add_argument(
        "--redis-eviction",
        action="store_true",
        help="evict as Redis's allkeys-lru does, not as an exact LRU: 10 sampled keys"
        " (the demo's maxmemory-samples) into a pool of 16 candidates, last reads known"
        " to the second (needs --rate)",
    )
    timing.add_argument(
        "--redis-seed",
        type=int,
        default=0,
        help="seed of --redis-eviction's sampling (default: 0)",
    )
    timing.add_argument(
        "--origin-ms",
        type=float,
        default=None,
        help="origin latency: how long an edge load takes (default: 3.0)",
    )
    timing.add_argument(
        "--worker-ms",
        type=float,
        default=None,
        help="from a request to its warms landing through Kafka and a worker (default: 15.0)",
    )
    timing.add_argument(
        "--rules-interval-ms",
        type=float,
        default=None,
        help="time between two publications of the prefetch rules (default: 100.0)",
    )
    timing.add_argument(
        "--rules-lag-ms",
        type=float,
        default=None,
        help="from a publication to the moment clients see it (default: 25.0)",
    )
    timing.add_argument(
        "--ttl-min",
        type=float,
        default=None,
        help="the pipeline's shortest TTL in seconds (its CACHECAST_TTL_MIN): no simulated"
        " TTL is shorter than the requests that arrive meanwhile (default:"
        f" {DEFAULT_TTL_MIN_S:g}, CACHECAST_TTL_MIN's default)",
    )
    parser.add_argument(
        "--max-warms", type=int, default=4, help="most warms per request (default: 4)"
    )
    parser.add_argument(
        "--max-requests", type=int, default=None, help="replay only the first N requests"
    )
    parser.add_argument(
        "--policies",
        type=_policies,
        default=POLICIES,
        help=f"comma-separated, among {','.join(POLICIES + ABLATIONS)} (default: the first 4)",
    )
    parser.add_argument(
        "--waste-budget",
        type=float,
        default=EngineConfig().waste_budget,
        help="cachecast: wasted warms allowed per read the origin would serve with warming"
        " off (default: %(default)s)",
    )
    parser.add_argument(
        "--lookahead",
        type=int,
        default=None,
        help="cachecast: positions predicted past a replayed stream (default: 2 + delay)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument(
        "--sweep",
        type=_floats,
        nargs="?",
        const=DEFAULT_SWEEP,
        default=None,
        help="also run cachecast at fixed admission thresholds (default list if none given) "
        "and plot miss ratio vs fetches per request",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="PNG for the sweep (default: sweep-TRACE-SIZE.png; one per size)",
    )
    parser.set_defaults(func=simulate_command)


@contextmanager
def _progress(console: Console) -> Iterator[Callable[[str, int], ProgressCallback]]:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:

        def factory(label: str, total: int) -> ProgressCallback:
            task = progress.add_task(label, total=total)

            def advance(n: int) -> None:
                progress.advance(task, n)

            return advance

        yield factory


def simulate_command(args: argparse.Namespace) -> int:
    """Run ``cachecast simulate`` with parsed arguments; returns the exit code."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a file or a pipe: no terminal width to fit
    err = Console(stderr=True)
    problem = _timing_problem(args)
    if problem:
        err.print(f"[red]{problem}[/red]")
        return 2
    timing = resolve_timing(args)
    if args.max_warms < 1:
        err.print("[red]--max-warms must be >= 1[/red]")
        return 2
    if any(not 0.0 < size <= 1.0 for size in args.sizes):
        err.print("[red]--sizes must be fractions in (0, 1][/red]")
        return 2
    if not args.trace.exists():
        err.print(f"[red]no such trace: {args.trace}[/red]")
        return 2
    try:
        trace = load_trace(args.trace, args.format, args.csv_columns or None, args.max_requests)
    except ValueError as exc:
        err.print(f"[red]cannot read {args.trace}: {exc}[/red]")
        return 2
    if len(trace) == 0:
        err.print("[red]the trace has no requests[/red]")
        return 2
    console.print(f"{trace.name}: {len(trace):,} requests, {trace.n_unique:,} unique keys")
    delay = timing.delay
    config = engine_config(delay, args.waste_budget, args.lookahead)
    eviction = (
        SampledEviction(samples=10, clock=max(1, round(args.rate)), seed=args.redis_seed)
        if args.redis_eviction and args.rate is not None
        else None
    )

    results: list[SimResult] = []
    with _progress(err) as factory:
        options = _RunOptions(
            delay=delay,
            max_warms=args.max_warms,
            config=config,
            progress=factory,
            edge_delay=timing.edge_delay,
            rule_refresh=timing.rule_refresh,
            rule_lag=timing.rule_lag,
            eviction=eviction,
            ttl_floor=timing.ttl_floor,
        )
        results += run(trace, args.sizes, args.policies, **options)
        sweeps: list[list[SimResult]] = []
        if args.sweep is not None:
            for size in args.sizes:
                sweeps.append(sweep(trace, size, args.sweep, **options))
    rate = f", {args.rate:g} requests/s" if args.rate is not None else ""
    console.print(
        results_table(
            results,
            f"{trace.name}{rate}: worker delay {delay}, edge delay {timing.edge_delay}, "
            f"rules every {timing.rule_refresh} requests (+{timing.rule_lag})"
            f"{', Redis eviction' if eviction is not None else ''}"
            f"{f', TTLs >= {timing.ttl_floor:,} requests' if timing.ttl_floor > 1 else ''}",
        )
    )
    for size, curve in zip(args.sizes, sweeps, strict=False):
        console.print(results_table(curve, f"{trace.name} @ {size:g}: admission-threshold sweep"))
        png = _plot_path(args.plot, trace.name, size, len(args.sizes))
        try:
            plot_sweep(curve, png, f"{trace.name}, cache {size:g} of keys, delay {delay}")
            console.print(f"sweep plot: {png}")
        except ImportError as exc:
            err.print(f"[yellow]{exc}[/yellow]")
        results += [r for r in curve if r.threshold is not None]
    if args.json is not None:
        write_json(results, args.json)
        console.print(f"rows written to {args.json}")
    return 0


def _timing_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the timing options, if anything."""
    for name in ("delay", "edge_delay", "rule_lag"):
        value = getattr(args, name)
        if value is not None and value < 0:
            return f"--{name.replace('_', '-')} must be >= 0"
    if args.rule_refresh is not None and args.rule_refresh < 1:
        return "--rule-refresh must be >= 1"
    if args.rate is None:
        given = [name for name in _LATENCIES if getattr(args, name) is not None]
        if given:
            return f"--{given[0].replace('_', '-')} needs --rate"
        if getattr(args, "redis_eviction", False):
            return "--redis-eviction needs --rate (its clock ticks once a second)"
        return None
    if args.rate <= 0:
        return "--rate must be > 0"
    if any(getattr(args, name) is not None and getattr(args, name) < 0 for name in _LATENCIES):
        return "latencies and --ttl-min must be >= 0"
    return None


def engine_config(delay: int, waste_budget: float | None, lookahead: int | None) -> EngineConfig:
    """The engine configuration for a simulation: warms are predicted ``delay`` further ahead.

    Replayed streams predict up to ``2 + delay`` positions past their head, and skip
    the nearest ``delay // 2`` (a warm for them would land after they are requested).
    """
    base = EngineConfig()
    ahead = lookahead if lookahead is not None else base.lookahead + delay
    return replace(
        base,
        waste_budget=waste_budget,
        lookahead=ahead,
        replay_skip=min(delay // 2, ahead - 1),
    )


def _plot_path(plot: Path | None, trace: str, size: float, n_sizes: int) -> Path:
    if plot is None:
        return Path(f"sweep-{trace}-{size:g}.png")
    if n_sizes == 1:
        return plot
    return plot.with_name(f"{plot.stem}-{size:g}{plot.suffix}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``simulate`` as a standalone program (``python -m pipeline.sim.cli``)."""
    parser = argparse.ArgumentParser(prog="cachecast")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())

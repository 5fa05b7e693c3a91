"""``cachecast simulate``: replay a trace through LRU with and without warming."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import get_args

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from pipeline.models import EngineConfig
from pipeline.sim.cache import ProgressCallback
from pipeline.sim.policies import ABLATIONS, POLICIES
from pipeline.sim.report import plot_sweep, results_table, write_json
from pipeline.sim.runner import DEFAULT_SIZES, DEFAULT_SWEEP, SimResult, run, sweep
from pipeline.sim.traces import CsvMapping, TraceFormat, read_trace


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
            "(misses + warms) and prefetch precision."
        ),
    )
    parser.add_argument("trace", type=Path, help="trace file (.zst compressed or not)")
    parser.add_argument(
        "--format",
        choices=get_args(TraceFormat),
        default=None,
        help="trace format (default: guessed from the file name)",
    )
    parser.add_argument(
        "--sizes",
        type=_floats,
        default=DEFAULT_SIZES,
        help="cache sizes as fractions of unique keys (default: 0.01,0.05,0.1)",
    )
    parser.add_argument(
        "--delay",
        type=int,
        default=0,
        help="requests between a warm decision and its landing in the cache (default: 0)",
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
        help="cachecast: wasted warms allowed per demand miss (default: %(default)s)",
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
    parser.add_argument(
        "--csv-columns",
        default="",
        help="CSV column mapping, e.g. 'key=1,ts=0,op=5,header=0' (default: Twitter format)",
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
    if args.delay < 0 or args.max_warms < 1:
        err.print("[red]--delay must be >= 0 and --max-warms >= 1[/red]")
        return 2
    if any(not 0.0 < size <= 1.0 for size in args.sizes):
        err.print("[red]--sizes must be fractions in (0, 1][/red]")
        return 2
    if not args.trace.exists():
        err.print(f"[red]no such trace: {args.trace}[/red]")
        return 2
    try:
        mapping = CsvMapping.parse(args.csv_columns) if args.csv_columns else None
        trace = read_trace(args.trace, args.format, args.max_requests, mapping)
    except ValueError as exc:
        err.print(f"[red]cannot read {args.trace}: {exc}[/red]")
        return 2
    if len(trace) == 0:
        err.print("[red]the trace has no requests[/red]")
        return 2
    console.print(f"{trace.name}: {len(trace):,} requests, {trace.n_unique:,} unique keys")
    config = engine_config(args.delay, args.waste_budget, args.lookahead)

    results: list[SimResult] = []
    with _progress(err) as factory:
        results += run(
            trace,
            args.sizes,
            args.policies,
            delay=args.delay,
            max_warms=args.max_warms,
            config=config,
            progress=factory,
        )
        sweeps: list[list[SimResult]] = []
        if args.sweep is not None:
            for size in args.sizes:
                sweeps.append(
                    sweep(
                        trace,
                        size,
                        args.sweep,
                        delay=args.delay,
                        max_warms=args.max_warms,
                        config=config,
                        progress=factory,
                    )
                )
    console.print(results_table(results, f"{trace.name}, delay {args.delay}"))
    for size, curve in zip(args.sizes, sweeps, strict=False):
        console.print(results_table(curve, f"{trace.name} @ {size:g}: admission-threshold sweep"))
        png = _plot_path(args.plot, trace.name, size, len(args.sizes))
        try:
            plot_sweep(curve, png, f"{trace.name}, cache {size:g} of keys, delay {args.delay}")
            console.print(f"sweep plot: {png}")
        except ImportError as exc:
            err.print(f"[yellow]{exc}[/yellow]")
        results += [r for r in curve if r.threshold is not None]
    if args.json is not None:
        write_json(results, args.json)
        console.print(f"rows written to {args.json}")
    return 0


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

"""Render simulation results: a rich table, JSON rows, the miss-vs-fetches plot."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import orjson
from rich.table import Table

from pipeline.sim.runner import SimResult


def results_table(results: Sequence[SimResult], title: str = "cachecast simulate") -> Table:
    """One row per (size, policy): miss ratio, fetches/request, precision, warms, speed.

    Ratios against the LRU row of the same size are shown so a reader sees at a
    glance whether a policy hits more and what it costs the origin. Warms are
    shown with their precision, in all and split by path: the worker's, and the
    clients' edge loads (``joined``: requests that joined an edge load under way).
    """
    table = Table(title=title)
    for name, justify in (
        ("size", "right"),
        ("cache", "right"),
        ("policy", "left"),
        ("miss ratio", "right"),
        ("fetches/req", "right"),
        ("fetches / LRU miss", "right"),
        ("warms (precision)", "right"),
        ("worker warms", "right"),
        ("edge warms", "right"),
        ("joined", "right"),
        ("req/s", "right"),
    ):
        table.add_column(name, justify=justify, no_wrap=name == "policy")  # type: ignore[arg-type]
    lru = {r.size_fraction: r.counts.miss_ratio for r in results if r.policy == "lru"}
    for r in results:
        counts = r.counts
        base = lru.get(r.size_fraction)
        label = r.policy if r.threshold is None else f"{r.policy} @ {r.threshold:g}"
        table.add_row(
            f"{r.size_fraction:g}",
            str(r.cache_size),
            label,
            f"{counts.miss_ratio:.4f}",
            f"{counts.fetches_per_request:.4f}",
            f"{counts.fetches_per_request / base:.3f}x" if base else "-",
            _warms(counts.warms, counts.prefetch_precision),
            _warms(counts.worker_warms, counts.worker_precision),
            _warms(counts.edge_warms, counts.edge_precision),
            f"{counts.joined:,}",
            f"{r.requests_per_second:,.0f}",
        )
    return table


def _warms(warms: int, precision: float) -> str:
    """``"1,234 (0.917)"``: warms and the share of them read before eviction."""
    return f"{warms:,} ({precision:.3f})" if warms else "-"


def write_json(results: Sequence[SimResult], path: str | os.PathLike[str]) -> None:
    """Write the results as a JSON list of rows (see :meth:`SimResult.row`)."""
    Path(path).write_bytes(
        orjson.dumps([r.row() for r in results], option=orjson.OPT_INDENT_2) + b"\n"
    )


def plot_sweep(results: Sequence[SimResult], path: str | os.PathLike[str], title: str = "") -> None:
    """Plot miss ratio against origin fetches per request (the admission-threshold curve).

    Needs matplotlib (``pip install matplotlib``); raises ImportError with that hint.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plotting the sweep needs matplotlib: pip install matplotlib") from exc

    curve = sorted(
        (r for r in results if r.threshold is not None),
        key=lambda r: r.counts.fetches_per_request,
    )
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.plot(
        [r.counts.fetches_per_request for r in curve],
        [r.counts.miss_ratio for r in curve],
        marker="o",
        label="lru+cachecast (fixed thresholds)",
    )
    for r in curve:
        ax.annotate(
            f"{r.threshold:g}",
            (r.counts.fetches_per_request, r.counts.miss_ratio),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    markers = {"lru": "s", "lru+successor": "^", "lru+cachecast": "*"}
    for r in results:
        if r.threshold is None and r.policy in markers:
            label = "lru+cachecast (waste budget)" if r.policy == "lru+cachecast" else r.policy
            ax.scatter(
                [r.counts.fetches_per_request],
                [r.counts.miss_ratio],
                marker=markers[r.policy],
                s=90,
                label=label,
                zorder=3,
            )
    lru = [r for r in results if r.policy == "lru"]
    if lru:
        ax.axvline(lru[0].counts.miss_ratio, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("origin fetches per request (misses + warms)")
    ax.set_ylabel("demand miss ratio")
    ax.set_title(title or "miss ratio vs origin fetches")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(path), dpi=120)
    plt.close(fig)

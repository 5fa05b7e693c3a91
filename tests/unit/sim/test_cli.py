"""``cachecast simulate``: argument handling, table, JSON rows, sweep plot."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import orjson
import pytest

from pipeline.sim.cli import Timing, main, register, timing_for_rate
from pipeline.sim.traces import BUNDLED_TRACE

from .conftest import write_oracle_general


@pytest.fixture
def small_trace(tmp_path: Path) -> Path:
    rng = np.random.default_rng(2)
    keys: list[int] = []
    while len(keys) < 8_000:
        keys += (
            list(range(100, 110)) if rng.random() < 0.4 else rng.integers(1_000, 9_000, 5).tolist()
        )
    path = tmp_path / "small.oracleGeneral.bin.zst"
    write_oracle_general(path, keys[:8_000], compress=True)
    return path


def test_register_adds_simulate_with_a_func() -> None:
    parser = argparse.ArgumentParser(prog="cachecast")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["simulate", "trace.bin", "--sizes", "0.02,0.2", "--delay", "10"])
    assert args.sizes == (0.02, 0.2)
    assert args.delay == 10
    assert callable(args.func)


def test_simulate_writes_rows(
    small_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rows.json"
    code = main(["simulate", str(small_trace), "--sizes", "0.05,0.2", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "lru+cachecast" in text
    assert "belady" in text
    rows = orjson.loads(out.read_bytes())
    assert [(r["size_fraction"], r["policy"]) for r in rows] == [
        (size, policy)
        for size in (0.05, 0.2)
        for policy in ("lru", "lru+successor", "lru+cachecast", "belady")
    ]
    for row in rows:
        assert row["requests"] == 8_000
        assert row["fetches_per_request"] >= row["miss_ratio"]
        assert 0.0 <= row["prefetch_precision"] <= 1.0
    by = {(r["size_fraction"], r["policy"]): r for r in rows}
    assert by[(0.05, "belady")]["miss_ratio"] <= by[(0.05, "lru")]["miss_ratio"]


def test_sweep_plots_the_curve(small_trace: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "curve.png"
    out = tmp_path / "rows.json"
    args = ["simulate", str(small_trace), "--sizes", "0.1", "--policies", "lru,lru+cachecast"]
    code = main([*args, "--sweep", "0.6,0.9", "--plot", str(png), "--json", str(out)])
    assert code == 0
    assert png.read_bytes().startswith(b"\x89PNG")
    thresholds = [r.get("threshold") for r in orjson.loads(out.read_bytes())]
    assert thresholds[-2:] == [0.6, 0.9]


def test_bad_arguments(small_trace: Path, tmp_path: Path) -> None:
    assert main(["simulate", str(tmp_path / "missing.bin")]) == 2
    assert main(["simulate", str(small_trace), "--sizes", "1.5"]) == 2
    assert main(["simulate", str(small_trace), "--delay", "-1"]) == 2
    with pytest.raises(SystemExit):
        main(["simulate", str(small_trace), "--policies", "fifo"])


def test_max_requests_and_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "trace.csv"
    csv.write_text("".join(f"{i},k{i % 50},1,1,1,get,0\n" for i in range(3_000)))
    code = main(
        ["simulate", str(csv), "--max-requests", "1000", "--policies", "lru", "--sizes", "0.5"]
    )
    assert code == 0
    assert "1,000 requests, 50 unique keys" in capsys.readouterr().out


def test_timing_for_rate() -> None:
    assert timing_for_rate(400) == Timing(
        delay=6, edge_delay=2, rule_refresh=40, rule_lag=10, ttl_floor=12_000
    )
    assert timing_for_rate(2_000) == Timing(30, 6, 200, 50, 60_000)
    slow = timing_for_rate(10, origin_ms=1.0, rules_interval_ms=1.0, ttl_min=0.0)
    assert slow == Timing(delay=1, edge_delay=1, rule_refresh=1, rule_lag=1, ttl_floor=1)
    with pytest.raises(ValueError, match="rate"):
        timing_for_rate(0)


def test_rate_sets_the_timing_and_explicit_options_win(small_trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    args = ["simulate", str(small_trace), "--sizes", "0.05", "--max-requests", "4000"]
    args += ["--json", str(out)]
    policies = ["--policies", "lru,lru+cachecast-worker,lru+cachecast-edge,lru+cachecast"]
    code = main([*args, *policies, "--rate", "2000", "--origin-ms", "2", "--rule-lag", "3"])
    assert code == 0
    rows = {r["policy"]: r for r in orjson.loads(out.read_bytes())}
    for row in rows.values():
        timing = (row["delay"], row["edge_delay"], row["rule_refresh"], row["rule_lag"])
        assert timing == (30, 4, 200, 3)
        assert row["ttl_floor"] == 60_000  # CACHECAST_TTL_MIN's 30 s at 2,000/s
        assert row["worker_warms"] + row["edge_warms"] == row["warms"]
        assert 0.0 <= row["worker_precision"] <= 1.0
        assert 0.0 <= row["edge_precision"] <= 1.0
        assert row["joined"] <= row["edge_warms"]
    assert rows["lru"]["warms"] == rows["lru"]["joined"] == 0
    assert rows["lru+cachecast-worker"]["edge_warms"] == 0
    assert rows["lru+cachecast-edge"]["worker_warms"] == 0


def test_redis_eviction_loses_hits_an_exact_lru_keeps_at_a_high_rate(
    small_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """At 2,000 requests/s the 4,000 requests span two ticks of Redis's LRU clock."""
    rows = []
    for extra in ([], ["--redis-eviction"]):
        out = tmp_path / f"rows{len(extra)}.json"
        args = ["simulate", str(small_trace), "--sizes", "0.05", "--max-requests", "4000"]
        assert main([*args, "--policies", "lru", "--rate", "2000", "--json", str(out), *extra]) == 0
        (row,) = orjson.loads(out.read_bytes())
        rows.append(row)
    exact, redis = rows
    assert redis["miss_ratio"] > exact["miss_ratio"]
    assert exact["eviction"] == "lru"
    assert redis["eviction"] == "redis(samples=10, pool=16, clock=2000, seed=0)"
    assert "Redis eviction" in " ".join(capsys.readouterr().out.split())


def test_timing_defaults_without_a_rate(small_trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    code = main(
        ["simulate", str(small_trace), "--sizes", "0.05", "--policies", "lru", "--json", str(out)]
    )
    assert code == 0
    (row,) = orjson.loads(out.read_bytes())
    timing = (row["delay"], row["edge_delay"], row["rule_refresh"], row["rule_lag"])
    assert timing == (0, 1, 400, 10)


@pytest.mark.parametrize(
    "options",
    [
        ["--edge-delay", "-1"],
        ["--rule-lag", "-1"],
        ["--rule-refresh", "0"],
        ["--rate", "0"],
        ["--origin-ms", "5"],  # needs --rate
        ["--redis-eviction"],  # needs --rate
        ["--rate", "100", "--worker-ms", "-1"],
    ],
)
def test_bad_timing_options(small_trace: Path, options: list[str]) -> None:
    assert main(["simulate", str(small_trace), "--policies", "lru", *options]) == 2


def test_simulate_reads_the_bundled_trace_without_a_column_mapping(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        [
            "simulate",
            str(BUNDLED_TRACE),
            "--sizes",
            "0.05",
            "--max-requests",
            "2000",
            "--policies",
            "lru",
        ]
    )
    assert code == 0
    assert "cache2k_orm_busy_200k: 2,000 requests" in capsys.readouterr().out


def test_ttl_min_is_counted_at_the_rate_and_needs_one(
    small_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rows.json"
    args = ["simulate", str(small_trace), "--sizes", "0.05", "--max-requests", "2000"]
    args += ["--policies", "lru+cachecast", "--json", str(out)]
    assert main([*args, "--rate", "100", "--ttl-min", "2.5"]) == 0
    (row,) = orjson.loads(out.read_bytes())
    assert row["ttl_floor"] == 250
    assert "TTLs >= 250 requests" in " ".join(capsys.readouterr().out.split())
    assert main([*args]) == 0
    assert orjson.loads(out.read_bytes())[0]["ttl_floor"] == 1  # no rate: no seconds to count
    assert main([*args, "--ttl-min", "30"]) == 2
    assert "--ttl-min needs --rate" in capsys.readouterr().err
    assert main([*args, "--rate", "100", "--ttl-min", "-1"]) == 2

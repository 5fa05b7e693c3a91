"""``cachecast simulate``: argument handling, table, JSON rows, sweep plot."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import orjson
import pytest

from pipeline.sim.cli import main, register

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

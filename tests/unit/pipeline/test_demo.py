"""``cachecast demo`` without servers: options, the worker's environment, the report."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from pipeline import demo
from pipeline.config import load_settings
from pipeline.loaders import loaders_from_config
from pipeline.replay import ORIGIN_MS_ENV, ReplayResult
from pipeline.sim.synthetic import session_workload
from pipeline.sim.traces import BUNDLED_TRACE

SERVERS = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "REDIS_HOST": "127.0.0.1", "REDIS_PORT": "2"}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cachecast")
    demo.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["demo", *argv])


def test_defaults() -> None:
    args = _parse([])
    assert args.trace == BUNDLED_TRACE
    assert args.format is None
    assert args.csv_columns == ""
    assert (args.requests, args.rate, args.cache_fraction) == (40_000, 400.0, 0.05)
    assert args.clients == 1
    assert args.connections == 16
    assert args.origin_ms is None
    assert args.tuned is False
    assert args.json is None
    assert args.users == "on"
    assert args.repeat == 1
    assert args.func is demo.run_demo


def test_options() -> None:
    args = _parse(
        [
            "--trace",
            "x.oracleGeneral.bin.zst",
            "--format",
            "oracleGeneral",
            "--csv-columns",
            "key=2",
            "--clients",
            "4",
            "--origin-ms",
            "5",
            "--rate",
            "2000",
            "--tuned",
            "--json",
            "out.json",
        ]
    )
    assert args.trace == Path("x.oracleGeneral.bin.zst")
    assert (args.format, args.csv_columns) == ("oracleGeneral", "key=2")
    assert (args.clients, args.origin_ms, args.rate, args.tuned) == (4, 5.0, 2000.0, True)


@pytest.mark.parametrize(
    "argv", [["--clients", "0"], ["--origin-ms", "x"], ["--format", "parquet"]]
)
def test_bad_options(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse(argv)
    capsys.readouterr()


def test_one_loader_config_for_worker_and_clients() -> None:
    text = demo.demo_loaders()
    config = orjson.loads(text)
    assert config == {
        "orders": {"callable": "pipeline.replay:demo_origin", "rate": 5000, "concurrency": 64}
    }
    assert set(loaders_from_config(config)) == {"orders"}
    settings = load_settings(loaders=text)
    assert settings.loaders == text


def test_worker_env_untuned_has_no_model_settings() -> None:
    args = _parse(["--partitions", "2"])
    env = demo.worker_env(
        args, SERVERS, warming=True, loaders="{}", origin_ms=2.5, base={"PATH": "/bin"}
    )
    assert env["PATH"] == "/bin"
    assert env["REDIS_PORT"] == "2"
    assert env["CACHECAST_WARMING"] == "true"
    assert env["CACHECAST_TOPIC_PARTITIONS"] == "2"
    assert env["CACHECAST_LOADERS"] == "{}"
    assert float(env[ORIGIN_MS_ENV]) == 2.5
    assert "CACHECAST_DELAY_REQUESTS" not in env
    assert "CACHECAST_LEAD_REQUESTS" not in env


def test_worker_env_tuned() -> None:
    args = _parse(["--tuned", "--rate", "2000"])
    env = demo.worker_env(args, SERVERS, warming=False, loaders="{}", origin_ms=3.0, base={})
    assert env["CACHECAST_WARMING"] == "false"
    assert env["CACHECAST_DELAY_REQUESTS"] == "40"
    assert env["CACHECAST_LEAD_REQUESTS"] == "24"


def test_a_compressed_traces_sessions_keep_their_shape() -> None:
    """Two SYNTHETIC days replayed at 400/s: the worker's session gap shrinks with them."""
    trace, _ = session_workload(days=2, requests_per_day=2_000, users=100)
    gap = demo.session_gap_for(trace, rate=400.0)
    assert gap is not None
    span = float(trace.ts[-1] - trace.ts[0])
    assert gap == pytest.approx(1800.0 * (len(trace) / 400.0) / span)
    args = _parse(["--rate", "400"])
    args.session_gap_s = gap
    env = demo.worker_env(args, SERVERS, warming=True, loaders="{}", origin_ms=3.0, base={})
    assert float(env["CACHECAST_SESSION_GAP_S"]) == pytest.approx(gap)
    assert load_settings(model_session_gap_s=gap).model_session_gap_s == pytest.approx(gap)
    # Users left out, or a trace without users: the worker keeps its own gap.
    args.session_gap_s = None
    env = demo.worker_env(args, SERVERS, warming=True, loaders="{}", origin_ms=3.0, base={})
    assert "CACHECAST_SESSION_GAP_S" not in env
    assert demo.session_gap_for(replace(trace, users=None), rate=400.0) is None


def test_missing_or_bad_trace_fails_before_any_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert demo.run_demo(_parse(["--trace", str(tmp_path / "nope.csv")])) == 2
    bad = tmp_path / "two.csv"
    bad.write_text("a,b\n")
    # Twitter's default mapping reads column 5: this CSV is too narrow.
    assert demo.run_demo(_parse(["--trace", str(bad)])) == 2
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert demo.run_demo(_parse(["--trace", str(empty), "--csv-columns", "key=0"])) == 2
    assert demo.run_demo(_parse(["--rate", "0"])) == 2
    err = capsys.readouterr().err
    for repeat in ("0", "101"):
        assert demo.run_demo(_parse(["--repeat", repeat])) == 2
        assert "--repeat must be between 1 and 100" in capsys.readouterr().err
    assert "no such trace" in err
    assert "cannot read" in err
    assert "no requests" in err


def _result(**kw: object) -> ReplayResult:
    base = ReplayResult("orders", 1000, 700, 300, 0, 0, 2.5, 50, trace="t", demand_misses=280)
    for name, value in kw.items():
        setattr(base, name, value)
    return base


def test_table_and_summary() -> None:
    off = _result()
    on = _result(
        hits=750,
        misses=250,
        demand_misses=210,
        warmed_hits=40,
        inflight_joins=10,
        edge_issued=30,
        edge_written=25,
        edge_useful=20,
        edge_hits=10,
        edge_latency_p50_ms=4.0,
        edge_latency_p99_ms=11.0,
        warm_outcomes={"written": 60},
        warm_latency_p50_ms=12.0,
        warm_latency_p99_ms=30.0,
    )
    rows = {name: (a, b) for name, a, b in demo.result_rows(off, on)}
    assert rows["requests"] == ("1,000", "1,000")
    assert rows["requests/s achieved"] == ("400", "400")
    assert rows["hit ratio"] == ("70.0%", "75.0%")
    assert rows["demand misses (origin loads)"] == ("280", "210")
    assert rows["reads that joined an edge load in flight"] == ("0", "10")
    assert rows["reads that joined an app load in flight"] == ("0", "0")
    assert rows["request latency p50 / p99"] == ("-", "-")
    assert rows["origin fetches / request"] == ("0.2800", "0.3000")
    assert rows["edge warms issued"] == ("0", "30")
    assert rows["edge precision"] == ("-", "80.0%")
    assert rows["worker warms written"] == ("0", "60")
    # 40 warmed hits, 10 of them first reads of edge warms: 30 worker warms read.
    assert rows["worker warms useful"] == ("0", "30")
    assert rows["worker precision"] == ("-", "50.0%")
    assert rows["edge warm latency p50 / p99"] == ("-", "4.0 ms / 11.0 ms")
    assert rows["worker warm latency p50 / p99"] == ("-", "12.0 ms / 30.0 ms")
    assert "failed requests" not in rows
    assert "client errors" not in rows
    assert not any(name.startswith("rule table re-reads") for name in rows)

    line = demo.summary(off, on)
    assert "+5.00 points" in line
    assert "-25.0% (280 -> 210)" in line
    assert "x1.071 (0.2800 -> 0.3000)" in line


def test_table_shows_failures_when_there_are_some() -> None:
    off = _result()
    on = _result(request_errors=3, errors=2, backlog_waits=1)
    rows = {name: (a, b) for name, a, b in demo.result_rows(off, on)}
    assert rows["failed requests"] == ("0", "3")
    assert rows["client errors"] == ("0", "2")
    assert rows["starts held by the in-flight cap"] == ("0", "1")


def test_table_shows_rule_table_re_reads_when_there_are_some() -> None:
    table = demo.result_rows(_result(), _result(rule_resyncs=14))
    names = [name for name, _, _ in table]
    row = "rule table re-reads (rule stream lost entries)"
    assert names.index(row) == names.index("edge warms issued") - 1
    rows = {name: (a, b) for name, a, b in table}
    assert rows[row] == ("0", "14")


def test_summary_without_misses() -> None:
    off = _result(demand_misses=0, requests=0)
    assert "0 -> 0" in demo.summary(off, off)


def test_pooled_runs_add_up_their_counts() -> None:
    """Ratios come from the sums, so a run with more requests weighs more; quantiles do
    not add up and are left out; every run's failures are kept."""
    a = _result(
        edge_issued=20,
        edge_written=20,
        edge_useful=10,
        latency_p50_ms=1.0,
        latency_max_ms=80.0,
        warm_outcomes={"written": 5},
        request_errors=1,
        error_samples=["TimeoutError: slow"],
    )
    b = _result(
        requests=3000,
        hits=2400,
        demand_misses=500,
        edge_written=10,
        edge_useful=9,
        latency_p50_ms=2.0,
        latency_max_ms=90.0,
        warm_outcomes={"written": 3, "skipped": 1},
    )
    both = demo.pooled([a, b])
    assert (both.requests, both.hits, both.demand_misses) == (4000, 3100, 780)
    assert (both.seconds, both.trace, both.rate) == (5.0, "t", a.rate)
    # Origin fetches: demand misses plus the edge loads issued (20 + 0) and the worker's warms.
    assert both.origin_fetches == 808
    assert both.fetches_per_request == pytest.approx(0.202)
    assert both.hit_ratio == pytest.approx(0.775)
    assert both.edge_precision == pytest.approx(19 / 30)
    assert both.warm_outcomes == {"written": 8, "skipped": 1}
    assert (both.latency_p50_ms, both.latency_max_ms) == (None, 90.0)
    assert both.request_errors == 1
    assert both.error_samples == ["run 1: TimeoutError: slow"]
    rows = {name: (x, y) for name, x, y in demo.result_rows(both, both)}
    assert rows["request latency p50 / p99"] == ("-", "-")
    assert rows["failed requests"] == ("1", "1")


def test_repeat_runs_interleaved_pairs_and_pools_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Off, on, off, on...: each pair is reported, then the pooled table and the range."""
    demand = iter([1000, 800, 1100, 990])  # pairs at -20% and -10%
    calls: list[tuple[bool, int]] = []

    def run_once(
        args: argparse.Namespace, trace: object, warming: bool, *rest: object
    ) -> ReplayResult:
        pair = rest[-1]
        assert isinstance(pair, int)
        calls.append((warming, pair))
        failed = ["OSError: origin down"] if pair == 1 and warming else []
        return _result(requests=10_000, demand_misses=next(demand), error_samples=failed)

    monkeypatch.setattr(demo, "_run_once", run_once)
    monkeypatch.setenv("CACHECAST_DEMO_DIR", str(tmp_path))
    out = tmp_path / "demo.json"
    assert demo.run_demo(_parse(["--repeat", "2", "--requests", "100", "--json", str(out)])) == 0
    assert calls == [(False, 1), (True, 1), (False, 2), (True, 2)]
    captured = capsys.readouterr()
    text = " ".join(captured.out.split())
    assert "Pair 1 of 2" in text
    assert "-20.0% (1,000 -> 800)" in text
    assert "Pair 2 of 2" in text
    assert "-10.0% (1,100 -> 990)" in text
    assert "2 pairs pooled" in text
    assert "demand misses by -14.8% (2,100 -> 1,790)" in text
    assert "x0.852 (0.1050 -> 0.0895)" in text
    assert "The 2 pairs, each on its own: demand misses -20.0% to -10.0%" in text
    assert "origin fetches per request x0.800 to x0.900" in text
    assert "warming on: a request failed: run 1: OSError: origin down" in captured.err
    doc = orjson.loads(out.read_bytes())
    assert doc["off"]["demand_misses"] == 2100
    assert doc["on"]["demand_misses"] == 1790
    assert doc["on"]["requests"] == 20_000
    assert doc["on"]["fetches_per_request"] == pytest.approx(1790 / 20_000)
    assert [pair["on"]["demand_misses"] for pair in doc["pairs"]] == [800, 990]


def test_one_pair_writes_its_two_results_as_before(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = iter([_result(), _result(demand_misses=210)])
    monkeypatch.setattr(demo, "_run_once", lambda *args: next(results))
    monkeypatch.setenv("CACHECAST_DEMO_DIR", str(tmp_path))
    out = tmp_path / "demo.json"
    assert demo.run_demo(_parse(["--requests", "100", "--json", str(out)])) == 0
    text = capsys.readouterr().out
    assert "pooled" not in text
    assert "Pair" not in text
    doc = orjson.loads(out.read_bytes())
    assert set(doc) == {"off", "on"}
    assert doc["on"]["demand_misses"] == 210
    assert doc["off"]["requests"] == 1000

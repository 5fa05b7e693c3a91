"""``cachecast replay`` without servers: trace options, the origin, the open-loop
scheduler (against fake clients), and the result's arithmetic."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest

from pipeline import replay as rp
from pipeline.replay import (
    ReplayResult,
    dealer,
    demo_origin,
    origin_latency,
    origin_ms,
    run_requests,
    sum_client_stats,
    synthetic_value,
    user_labels,
)
from pipeline.sim.traces import BUNDLED_TRACE, Trace


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cachecast")
    rp.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["replay", *argv])


# -- command line -------------------------------------------------------------------------


def test_replay_defaults() -> None:
    args = _parse([])
    assert args.trace == str(BUNDLED_TRACE)
    assert args.format is None
    assert args.csv_columns == ""
    assert args.rate is None
    assert args.clients == 1
    assert args.origin_ms is None
    assert args.max_outstanding == rp.MAX_OUTSTANDING
    assert args.connections == rp.POOL_SIZE


def test_replay_options() -> None:
    args = _parse(
        [
            "t.csv",
            "--format",
            "csv",
            "--csv-columns",
            "key=0,ts=none,op=none",
            "--rate",
            "2000",
            "--clients",
            "3",
            "--origin-ms",
            "1.5",
            "--max-outstanding",
            "64",
            "--connections",
            "8",
        ]
    )
    assert (args.trace, args.format, args.csv_columns) == ("t.csv", "csv", "key=0,ts=none,op=none")
    assert (args.rate, args.clients, args.origin_ms) == (2000.0, 3, 1.5)
    assert (args.max_outstanding, args.connections) == (64, 8)
    # The former name of --csv-columns still works.
    assert _parse(["--csv-mapping", "key=2"]).csv_columns == "key=2"
    assert _parse(["--origin-ms", "0"]).origin_ms == 0.0


@pytest.mark.parametrize(
    "argv",
    [
        ["--clients", "0"],
        ["--rate", "0"],
        ["--origin-ms", "-1"],
        ["--format", "parquet"],
        ["--max-outstanding", "0"],
        ["--connections", "0"],
    ],
)
def test_replay_rejects_bad_options(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse(argv)
    capsys.readouterr()


# -- the origin --------------------------------------------------------------------------------


def test_origin_ms_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(rp.ORIGIN_MS_ENV, raising=False)
    assert origin_ms() == rp.DEFAULT_ORIGIN_MS == 3.0
    monkeypatch.setenv(rp.ORIGIN_MS_ENV, "0.5")
    assert origin_ms() == 0.5
    monkeypatch.setenv(rp.ORIGIN_MS_ENV, "-2")
    assert origin_ms() == 0.0
    monkeypatch.setenv(rp.ORIGIN_MS_ENV, "fast")
    with pytest.raises(ValueError, match=rp.ORIGIN_MS_ENV):
        origin_ms()


def test_origin_latency_sets_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(rp.ORIGIN_MS_ENV, "7")
    with origin_latency(1.25) as ms:
        assert ms == 1.25
        assert origin_ms() == 1.25
    assert origin_ms() == 7.0
    with origin_latency(None) as ms:
        assert ms == 7.0
    monkeypatch.delenv(rp.ORIGIN_MS_ENV)
    with origin_latency(0):
        assert origin_ms() == 0.0
    assert rp.ORIGIN_MS_ENV not in os.environ
    with pytest.raises(ValueError, match=">= 0"), origin_latency(-1):
        pass


async def test_demo_origin_waits_its_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHECAST_DEMO_VALUE_BYTES", "256")
    monkeypatch.setenv(rp.ORIGIN_MS_ENV, "20")
    started = time.perf_counter()
    value = await demo_origin("ns", "k")
    assert time.perf_counter() - started >= 0.019
    assert value == synthetic_value("ns", "k")
    # A sleep, not a busy wait: loads overlap.
    started = time.perf_counter()
    await asyncio.gather(*(demo_origin("ns", str(i)) for i in range(20)))
    assert time.perf_counter() - started < 0.2


def test_the_synthetic_origin_serves_each_key_one_fixed_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CACHECAST_DEMO_VALUE_BYTES", "1024")
    first = synthetic_value("ns", "a")
    first["body"] = "changed by a caller"
    again = synthetic_value("ns", "a")
    assert again["body"] != first["body"]  # each load gets a dict of its own
    assert again == synthetic_value("ns", "a")
    assert again["body"] != synthetic_value("ns", "b")["body"]
    assert 900 <= len(orjson.dumps(again)) <= 1024
    monkeypatch.setenv("CACHECAST_DEMO_VALUE_BYTES", "4096")
    assert len(orjson.dumps(synthetic_value("ns", "a"))) > 3000  # the size is read each time


# -- the scheduler ----------------------------------------------------------------------------


class FakeCache:
    """Records when each read starts and how many are in flight; a miss awaits the loader."""

    def __init__(self, shared: FakeCache | None = None, *, hold: float = 0.0) -> None:
        self.shared = shared or self
        self.hold = hold
        self.starts: dict[str, float] = {}
        self.keys: list[str] = []
        self.users: list[str | None] = []
        self.in_flight = 0
        self.peak = 0
        self.finished = 0
        self.fail: Callable[[str], bool] = lambda key: False

    async def get(
        self,
        namespace: str,
        key: str,
        *,
        user_context: str | None = None,
        fallback_data: Callable[[], Any] | None = None,
    ) -> Any:
        shared = self.shared
        shared.starts[key] = time.perf_counter()
        self.keys.append(key)
        self.users.append(user_context)
        shared.in_flight += 1
        shared.peak = max(shared.peak, shared.in_flight)
        try:
            if shared.fail(key):
                raise ConnectionError(f"no luck for {key}")
            if self.hold:
                await asyncio.sleep(self.hold)
            value = fallback_data() if fallback_data is not None else None
            if asyncio.iscoroutine(value):
                value = await value
            return value
        finally:
            shared.in_flight -= 1
            shared.finished += 1


async def test_open_loop_starts_on_schedule_and_overlaps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(rp.ORIGIN_MS_ENV, "20")  # every request is a 20 ms load
    monkeypatch.setenv("CACHECAST_DEMO_VALUE_BYTES", "128")
    cache = FakeCache()
    n, rate = 40, 1000.0
    begun = time.perf_counter()
    report = await run_requests(n, dealer([cache], "ns", [str(i) for i in range(n)]), rate=rate)
    assert cache.finished == n  # every request awaited before returning
    assert cache.keys == [str(i) for i in range(n)]  # started in trace order
    # Open loop: never early, and the 20 ms loads overlap (sequential would take 0.8 s).
    for i in range(n):
        assert cache.starts[str(i)] - begun >= i / rate - 0.002
    assert cache.peak >= 10
    assert report.requests == n
    assert report.errors == 0
    assert report.backlog_waits == 0
    assert report.peak_outstanding >= cache.peak
    assert report.start_lag_p99_ms is not None
    assert report.start_lag_max_ms is not None
    assert report.seconds >= (n - 1) / rate
    # What the application waited: at least the 20 ms load, counted from when it was due.
    assert report.latency_p50_ms is not None
    assert report.latency_max_ms is not None
    assert 19 <= report.latency_p50_ms <= report.latency_max_ms < 400


async def test_open_loop_bounds_requests_in_flight() -> None:
    cache = FakeCache(hold=0.01)
    keys = [str(i) for i in range(30)]
    report = await run_requests(
        len(keys), dealer([cache], "ns", keys), rate=20_000, max_outstanding=4
    )
    assert cache.peak == 4 == report.peak_outstanding
    assert report.backlog_waits > 0
    assert cache.finished == len(keys)


async def test_failures_are_counted_not_lost() -> None:
    for rate in (None, 5_000.0):
        cache = FakeCache(hold=0.001)
        cache.fail = lambda key: int(key) % 3 == 0
        keys = [str(i) for i in range(30)]
        report = await run_requests(len(keys), dealer([cache], "ns", keys), rate=rate)
        assert report.errors == 10, rate
        assert len(report.error_samples) == 5
        assert report.error_samples[0] == "ConnectionError: no luck for 0"
        assert cache.finished == len(keys)


async def test_sequential_without_a_rate() -> None:
    cache = FakeCache(hold=0.001)
    keys = [str(i) for i in range(20)]
    seen: list[tuple[int, int]] = []
    report = await run_requests(
        len(keys), dealer([cache], "ns", keys), progress=lambda d, t: seen.append((d, t))
    )
    assert cache.peak == 1
    assert report.peak_outstanding == 1
    assert report.start_lag_p99_ms is None
    assert report.latency_p50_ms is not None
    assert report.latency_p50_ms >= 0.9
    assert seen[-1] == (20, 20)


async def test_requests_are_dealt_round_robin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(rp.ORIGIN_MS_ENV, "0")
    monkeypatch.setenv("CACHECAST_DEMO_VALUE_BYTES", "128")
    shared = FakeCache()
    clients = [FakeCache(shared) for _ in range(3)]
    keys = [f"k{i}" for i in range(10)]
    request = dealer(clients, "orders", keys)
    values = [await request(i) for i in range(10)]
    assert [c.keys for c in clients] == [keys[0::3], keys[1::3], keys[2::3]]
    # The fallback is the synthetic origin, awaited.
    assert values == [synthetic_value("orders", k) for k in keys]
    assert all(user is None for c in clients for user in c.users)  # no users given


async def test_a_traces_users_come_with_its_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(rp.ORIGIN_MS_ENV, "0")
    trace = Trace(
        keys=np.array([5, 6, 5]), ts=np.zeros(3), users=np.array([1, -1, 2], dtype=np.int64)
    )
    labels = user_labels(trace)
    assert labels == ["user-1", None, "user-2"]
    cache = FakeCache()
    request = dealer([cache], "orders", ["5", "6", "5"], labels)
    for i in range(3):
        await request(i)
    assert cache.users == ["user-1", None, "user-2"]
    assert user_labels(Trace(keys=np.array([5]), ts=np.zeros(1))) is None


async def test_run_requests_validates() -> None:
    async def nothing(i: int) -> None:
        return None

    with pytest.raises(ValueError, match="rate"):
        await run_requests(1, nothing, rate=0)
    with pytest.raises(ValueError, match="max_outstanding"):
        await run_requests(1, nothing, rate=10, max_outstanding=0)
    report = await run_requests(0, nothing, rate=10)
    assert report.requests == 0
    assert report.start_lag_p99_ms is None


async def test_cancelling_the_replay_cancels_its_requests() -> None:
    cache = FakeCache(hold=10)
    keys = [str(i) for i in range(5)]
    runner = asyncio.ensure_future(run_requests(len(keys), dealer([cache], "ns", keys), rate=1e6))
    await asyncio.sleep(0.02)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    await asyncio.sleep(0)
    assert cache.finished == len(keys)


# -- the result -----------------------------------------------------------------------------


def test_client_stats_summed_and_latency_worst() -> None:
    old = {"hits": 10, "misses": 5, "loads": 4, "load_joins": 1, "warmed_hits": 2, "errors": 0}
    new = {
        "hits": 20,
        "misses": 4,
        "loads": 3,
        "warmed_hits": 6,
        "inflight_joins": 2,
        "edge_issued": 9,
        "edge_written": 8,
        "edge_useful": 5,
        "edge_latency_p50_ms": 1.5,
        "edge_latency_p99_ms": None,
    }
    other = {**new, "edge_latency_p50_ms": 2.5, "edge_latency_p99_ms": 9.0}
    total = sum_client_stats([old, new, other])
    assert total["hits"] == 50
    assert total["misses"] == 13
    assert total["loads"] == 10
    assert total["inflight_joins"] == 4
    assert total["edge_issued"] == 18
    assert total["edge_refused"] == 0  # absent everywhere: 0
    assert total["edge_latency_p50_ms"] == 2.5
    assert total["edge_latency_p99_ms"] == 9.0
    assert sum_client_stats([old])["edge_latency_p50_ms"] is None


def _result(**client: Any) -> ReplayResult:
    return ReplayResult.from_stats(
        sum_client_stats([client]),
        namespace="orders",
        requests=1000,
        seconds=2.0,
        cache_values=50,
        trace="t",
        clients=2,
        rate=500.0,
        origin_ms=3.0,
    )


def test_result_before_the_edge_counters() -> None:
    result = _result(hits=700, misses=300, loads=290, load_joins=10, warmed_hits=40, errors=0)
    result.warm_outcomes = {"written": 80, "skipped-present": 5}
    assert result.demand_misses == 290
    assert result.misses == 300
    assert result.hit_ratio == 0.7
    assert result.achieved_rate == 500.0
    assert result.worker_useful == 40
    assert result.warm_precision == 0.5
    assert result.edge_precision is None
    assert result.fetches_per_request == pytest.approx((290 + 80) / 1000)


def test_result_with_both_warm_paths() -> None:
    result = _result(
        hits=800,
        misses=200,
        loads=150,
        warmed_hits=70,
        inflight_joins=20,
        edge_issued=100,
        edge_written=90,
        edge_useful=60,
        edge_hits=40,
    )
    result.warm_outcomes = {"written": 50}
    # 70 warmed hits, 40 of them first reads of edge-warmed values: 30 of the worker's.
    assert result.worker_useful == 30
    assert result.warm_precision == 30 / 50
    assert result.edge_precision == 60 / 90
    assert result.origin_fetches == 150 + 100 + 50
    assert result.fetches_per_request == 0.3
    doc = result.as_dict()
    for name in (
        "requests",
        "misses",
        "demand_misses",
        "fetches_per_request",
        "inflight_joins",
        "edge_issued",
        "edge_written",
        "edge_useful",
        "warms_written",
        "worker_useful",
        "clients",
        "origin_ms",
        "rate",
        "trace",
    ):
        assert name in doc, name
    assert orjson.loads(orjson.dumps(doc))["fetches_per_request"] == 0.3


def test_empty_result() -> None:
    result = ReplayResult("ns", 0, 0, 0, 0, 0, 0.0, 1)
    assert result.hit_ratio == 0.0
    assert result.fetches_per_request == 0.0
    assert result.achieved_rate == 0.0
    assert result.warm_precision is None

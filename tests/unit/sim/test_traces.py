"""Trace readers: oracleGeneral (plain, .zst), CSV with a column mapping, our JSONL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
import zstandard

from pipeline.sim.traces import (
    BUNDLED_TRACE,
    CsvMapping,
    detect_format,
    load_trace,
    read_csv,
    read_jsonl,
    read_trace,
)

from .conftest import shared_trace, write_oracle_general


@pytest.mark.parametrize("compress", [False, True])
def test_oracle_general_round_trip(tmp_path: Path, compress: bool) -> None:
    keys = [5, 9, 5, 7, 9, 5]
    path = tmp_path / ("t.oracleGeneral.bin" + (".zst" if compress else ""))
    write_oracle_general(path, keys, compress)
    trace = read_trace(path)
    assert trace.keys.tolist() == keys
    assert trace.ts.tolist() == [0, 1, 2, 3, 4, 5]
    assert trace.next_access is not None
    assert trace.next_access.tolist() == [2, 4, 5, -1, -1, -1]
    assert trace.name == "t"
    cut = read_trace(path, max_requests=3)
    assert cut.keys.tolist() == [5, 9, 5]
    assert cut.next_access is not None
    assert cut.next_access.tolist() == [2, -1, -1]


def test_head_and_without_future(tmp_path: Path) -> None:
    path = tmp_path / "t.oracleGeneral.bin"
    write_oracle_general(path, [1, 2, 1, 2, 1], compress=False)
    trace = read_trace(path)
    assert trace.head(3).next_access.tolist() == [2, -1, -1]  # type: ignore[union-attr]
    assert trace.without_future().next_access.tolist() == [0] * 5  # type: ignore[union-attr]
    assert trace.n_unique == 2
    assert len(trace) == 5


def test_twitter_csv_counts_reads_only(tmp_path: Path) -> None:
    rows = [
        "0,key-a,10,100,1,get,0",
        "1,key-b,10,100,1,set,0",
        "1,key-b,10,100,2,gets,0",
        "2,key-a,10,100,3,get,0",
    ]
    path = tmp_path / "twitter.csv.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress("\n".join(rows).encode()))
    trace = read_csv(path)
    assert trace.keys.tolist() == [0, 1, 0]
    assert trace.ts.tolist() == [0.0, 1.0, 2.0]


def test_csv_mapping_with_header_and_users(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv"
    path.write_text("user\tkey\nann\tx\nbob\ty\nann\tx\n")
    mapping = CsvMapping.parse("key=1,ts=none,op=none,user=0,header=1,delimiter=tab")
    trace = read_csv(path, mapping)
    assert trace.keys.tolist() == [0, 1, 0]
    assert trace.users is not None
    assert trace.users.tolist() == [0, 1, 0]
    assert trace.ts.tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="unknown"):
        CsvMapping.parse("colour=3")


def test_jsonl_access_events(tmp_path: Path) -> None:
    events = [
        {"ts": 1.5, "namespace": "users", "key": "42", "op": "get", "user": "ann"},
        [
            {"ts": 2.0, "namespace": "users", "key": "42", "op": "set"},
            {"ts": 2.5, "namespace": "carts", "key": "42", "op": "get"},
        ],
        {"ts": 3.0, "namespace": "users", "key": "42", "op": "get", "user": "bob"},
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n\n")
    trace = read_jsonl(path)
    assert trace.keys.tolist() == [0, 1, 0]  # users:42, carts:42, users:42
    assert trace.ts.tolist() == [1.5, 2.5, 3.0]
    assert trace.users is not None
    assert trace.users.tolist() == [0, -1, 1]
    assert read_jsonl(path, max_requests=2).keys.tolist() == [0, 1]


def test_format_detection() -> None:
    assert detect_format("a.csv.zst") == "csv"
    assert detect_format("a.ndjson") == "jsonl"
    assert detect_format("a.oracleGeneral.bin") == "oracleGeneral"


def test_reads_the_shared_traces() -> None:
    trace = shared_trace("scarab_recs", 100_000)
    assert len(trace) == 100_000
    assert trace.keys.dtype == np.int64
    assert trace.keys.min() >= 1
    assert trace.ts[-1] == 99_999


def test_csv_with_too_few_columns_for_the_mapping_says_so(tmp_path: Path) -> None:
    path = tmp_path / "two.csv"
    path.write_text("ts,key\n1,a\n2,b\n")
    with pytest.raises(ValueError, match=r"line 1: 2 column\(s\).*column 5"):
        read_csv(path)  # the default mapping is twitter's, which reads column 5
    assert read_csv(path, CsvMapping.parse("key=1,ts=0,op=none,header=1")).n_unique == 2


# -- reading a trace as the CLI does (--format, --csv-columns) -------------------------------


def test_bundled_trace_reads_with_its_own_mapping() -> None:
    trace = load_trace(BUNDLED_TRACE, max_requests=500)
    assert len(trace) == 500
    assert trace.name == "cache2k_orm_busy_200k"


def test_csv_trace_with_a_column_mapping(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text("key,op\na,get\nb,set\na,get\nc,get\n")
    trace = load_trace(path, "csv", "key=0,ts=none,op=1,header=1")
    assert len(trace) == 3
    assert trace.n_unique == 2
    assert trace.name == "mine"
    assert len(load_trace(path, None, "key=0,ts=none,op=1,header=1", max_requests=2)) == 2
    # Without a mapping, a CSV other than the bundled one is read in Twitter's columns.
    with pytest.raises(ValueError, match="column"):
        load_trace(path)


def test_jsonl_trace_and_format_guess(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    events = [{"namespace": "n", "key": k, "op": "get"} for k in "abca"]
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in events))
    trace = load_trace(path)
    assert (len(trace), trace.n_unique, trace.name) == (4, 3, "events")
    with pytest.raises(ValueError, match="unknown trace format"):
        load_trace(path, "parquet")

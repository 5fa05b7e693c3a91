"""Bad input gets a precise reason; good input becomes records; nothing crashes."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from schemas import InvalidEvent, decode_access, decode_access_event

GOOD = {"ts": 1_700_000_000.5, "namespace": "users", "key": "42", "op": "get", "outcome": "hit"}


def _with(**changes: object) -> bytes:
    doc = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in doc.items() if v is not _DROP})


_DROP = object()


def test_a_minimal_event_gets_the_documented_defaults() -> None:
    event = decode_access_event(orjson.dumps(GOOD))
    assert (event.key, event.op, event.outcome, event.ts) == ("42", "get", "hit", 1_700_000_000.5)
    assert (event.latency_us, event.size_bytes, event.ttl, event.tags, event.warmed) == (
        0,
        0,
        None,
        [],
        False,
    )
    assert (event.warm_path, event.joined) == (None, False)
    assert event.version == schemas.CONTRACT_VERSION


def test_edge_warm_events_and_warm_paths_decode() -> None:
    warm = decode_access_event(_with(op="warm", outcome="none", size_bytes=512, ttl=60))
    assert (warm.op, warm.outcome, warm.size_bytes, warm.ttl) == ("warm", "none", 512, 60)
    read = decode_access_event(_with(warmed=True, warm_path="edge", joined=True))
    assert (read.warmed, read.warm_path, read.joined) == (True, "edge", True)
    assert decode_access_event(_with(warm_path=None)).warm_path is None
    assert decode_access_event(_with(warm_path="worker")).warm_path == "worker"


def test_a_full_event_round_trips_through_its_json() -> None:
    full = {
        **GOOD,
        "latency_us": 250,
        "size_bytes": 1024,
        "raw_bytes": 4096,
        "ttl": 60,
        "user": "u1",
        "session": "s1",
        "tags": ["profile", "eu"],
        "warmed": True,
        "warm_path": "edge",
        "joined": True,
        "client": "shop-api",
        "version": 1,
    }
    event = decode_access_event(orjson.dumps(full))
    assert orjson.loads(event.dumps()) == full
    assert decode_access_event(event.dumps()) == event


def test_integral_floats_are_integers_and_unknown_fields_are_ignored() -> None:
    event = decode_access_event(_with(latency_us=12.0, trace_id="abc"))
    assert event.latency_us == 12
    assert isinstance(event.latency_us, int)
    assert not hasattr(event, "trace_id")


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        (b"not json", None, "not valid JSON"),
        (b"", None, "empty record"),
        (b"42", None, "got int"),
        (b'"event"', None, "got str"),
        (b'{"ts": NaN, "namespace": "a"}', None, "not valid JSON"),
        (b'{"ts": 1e999}', None, "not valid JSON"),
        (b"[" * 2000 + b"]" * 2000, None, "not valid JSON"),
        (_with(ts=_DROP), "ts", "ts: is required but missing"),
        (_with(ts=-5), "ts", "ts: -5 is below the minimum 0"),
        (_with(ts=1_700_000_000_000), "ts", "looks like milliseconds"),
        (_with(ts=9e18), "ts", "above the maximum"),
        (_with(ts="2024-01-01"), "ts", "expected a number, got a string"),
        (_with(ts=True), "ts", "expected a number, got a boolean"),
        (_with(namespace=""), "namespace", "at least 1 character"),
        (_with(namespace="a:b"), "namespace", "does not match"),
        (_with(namespace=None), "namespace", "expected a string, got null"),
        (_with(key=7), "key", "expected a string, got a number"),
        (_with(key="k" * 1025), "key", "1025 characters long; the limit is 1024"),
        (_with(op="GET"), "op", "'GET' is not one of: get, set"),
        (_with(outcome="maybe"), "outcome", "is not one of: hit, miss, error, none"),
        (_with(latency_us=1.5), "latency_us", "expected an integer, got 1.5"),
        (_with(latency_us=-1), "latency_us", "below the minimum 0"),
        (_with(size_bytes=2**40), "size_bytes", "above the maximum"),
        (_with(ttl=0), "ttl", "below the minimum 1"),
        (_with(tags="a"), "tags", "expected an array of strings, got a string"),
        (_with(tags=["t"] * 33), "tags", "has 33 items; the limit is 32"),
        (_with(tags=[{"deep": [[[[1]]]]}]), "tags[]", "expected a string, got an object"),
        (_with(warmed="yes"), "warmed", "expected true or false"),
        (_with(warm_path="client"), "warm_path", "'client' is not one of: worker, edge"),
        (_with(warm_path=""), "warm_path", "is not one of: worker, edge"),
        (_with(joined=1), "joined", "expected true or false"),
        (_with(user=""), "user", "at least 1 character"),
        (_with(version=2), "version", "above the maximum 1"),
    ],
)
def test_each_bad_event_gets_a_precise_reason(raw: bytes, field: str | None, words: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_access_event(raw)
    assert words in info.value.reason
    assert info.value.field == field


def test_a_one_megabyte_key_is_refused_before_parsing() -> None:
    raw = _with(key="k" * (1024 * 1024))
    with pytest.raises(InvalidEvent, match=r"record is \d+ bytes; the limit is 1048576"):
        decode_access(raw)


def test_deep_nesting_in_an_unknown_field_is_harmless() -> None:
    nested: object = 1
    for _ in range(200):
        nested = [nested]
    event = decode_access_event(orjson.dumps({**GOOD, "extra": nested}))
    assert event.key == "42"


def test_a_tombstone_is_an_invalid_record_not_a_crash() -> None:
    with pytest.raises(InvalidEvent, match="null record"):
        decode_access(None)


def test_a_batch_item_too_deep_to_re_encode_is_rejected_with_the_whole_record() -> None:
    deep = b"[" * 300 + b"1" + b"]" * 300  # orjson reads 1024 levels, writes 255
    raw = b"[" + orjson.dumps(GOOD) + b"," + deep + b"]"
    result = decode_access(raw)
    assert [e.key for e in result.records] == ["42"]
    assert result.rejects[0].index == 1
    assert "expected a JSON object" in result.rejects[0].reason
    assert result.rejects[0].raw == raw  # the original bytes, since the item cannot be re-encoded


def test_a_batch_keeps_its_good_events_and_rejects_each_bad_one() -> None:
    batch = [GOOD, {**GOOD, "key": ""}, "oops", {**GOOD, "key": "43"}, {**GOOD, "op": "put"}]
    result = decode_access(orjson.dumps(batch))
    assert [e.key for e in result.records] == ["42", "43"]
    assert [(r.index, r.field) for r in result.rejects] == [(1, "key"), (2, None), (4, "op")]
    assert result.rejects[0].reason == "event [1]: key: must have at least 1 character(s), got 0"
    assert "expected a JSON object" in result.rejects[1].reason
    assert orjson.loads(result.rejects[2].raw) == batch[4]


def test_a_batch_over_the_event_limit_is_refused() -> None:
    small = {"ts": 1, "namespace": "n", "key": "k", "op": "get", "outcome": "hit"}
    with pytest.raises(InvalidEvent, match="batch holds 10001 events; the limit is 10000"):
        decode_access(orjson.dumps([small] * 10_001))
    assert len(decode_access(orjson.dumps([small] * 10_000)).records) == 10_000


def test_other_records_decode_and_validate() -> None:
    command = schemas.decode_warmup_command(
        b'{"namespace":"u","key":"1","score":0.8,"reason":"similarity","ttl":30,"deadline":5}'
    )
    assert (command.reason, command.ttl, command.model_version) == ("similarity", 30, "")
    with pytest.raises(InvalidEvent, match=r"score: 1.5 is above the maximum 1"):
        schemas.decode_warmup_command(
            b'{"namespace":"u","key":"1","score":1.5,"reason":"ensemble","ttl":30,"deadline":5}'
        )
    outcome = schemas.decode_warmup_outcome(
        b'{"namespace":"u","key":"1","status":"skipped-stale","ts":5}'
    )
    assert outcome.status == "skipped-stale"
    with pytest.raises(InvalidEvent, match="status"):
        schemas.decode_warmup_outcome(b'{"namespace":"u","key":"1","status":"done","ts":5}')
    snapshot = schemas.decode_metrics_snapshot(
        b'{"namespace":"u","window_start":1,"window_end":2,"hits":3,"hit_ratio":0.75}'
    )
    assert (snapshot.hits, snapshot.hit_ratio, snapshot.warm_precision) == (3, 0.75, None)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256) | st.text(max_size=256).map(str.encode))
def test_arbitrary_bytes_never_crash_the_decoder(raw: bytes) -> None:
    try:
        result = decode_access(raw)
    except InvalidEvent as exc:
        assert exc.reason  # noqa: PT017 - the reason itself is what is checked
    else:
        doc = orjson.loads(raw)
        expected = len(doc) if isinstance(doc, list) else 1
        assert len(result.records) + len(result.rejects) == expected

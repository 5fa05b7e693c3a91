"""Snapshots round-trip the real models and hold data only: nothing in one can run code."""

from __future__ import annotations

import os
import random
from collections import deque
from pathlib import Path

import hypothesis
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from pipeline.checkpoint import (
    MAX_SNAPSHOT_BYTES,
    SCHEMA_VERSION,
    SnapshotError,
    decode_snapshot,
    encode_snapshot,
)
from pipeline.config import Settings
from pipeline.decide import Decider, engine_config
from pipeline.models import SmartTTL, WarmEngine
from tests.forged import eval_pickle, legacy_snapshot


def _events(n: int) -> list[dict[str, object]]:
    keys = ["home", "cart", "price", "stock", "checkout"]
    return [
        {
            "namespace": "shop",
            "key": f"{keys[i % 5]}" if i % 3 else f"noise{i}",
            "ts": float(i),
            "op": "get",
            "outcome": "miss",
            "user": None,
            "warmed": False,
        }
        for i in range(n)
    ]


def test_an_engine_restored_from_its_snapshot_decides_exactly_as_the_original() -> None:
    settings = Settings(warm_dedup_s=0)
    engine = WarmEngine(engine_config(settings))
    Decider(settings, model_version="t", clock=lambda: 0.0).decide(engine, _events(3_000))
    restored = WarmEngine(engine_config(settings))
    restored.load_state_dict(
        decode_snapshot(encode_snapshot(engine.state_dict(), stage="engine", partition=0))
    )
    tail = _events(4_000)[3_000:]
    original = Decider(settings, model_version="t", clock=lambda: 0.0).decide(engine, tail)
    again = Decider(settings, model_version="t", clock=lambda: 0.0).decide(restored, tail)
    assert original == again
    assert restored.stats()["events"] == engine.stats()["events"]


def test_smart_ttl_state_round_trips() -> None:
    ttl = SmartTTL()
    for i in range(100):
        ttl.learn_one(f"k{i % 10}", float(i))
    copy = SmartTTL()
    copy.load_state_dict(
        decode_snapshot(encode_snapshot(ttl.state_dict(), stage="ttl", partition=3))
    )
    assert [copy.predict_one(f"k{i}") for i in range(10)] == [
        ttl.predict_one(f"k{i}") for i in range(10)
    ]


def test_a_crafted_pickle_on_the_state_topic_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "owned"
    blob = legacy_snapshot(eval_pickle(f"open({str(marker)!r}, 'w').write('x')"))
    with pytest.raises(SnapshotError, match="format 1"):
        decode_snapshot(blob)
    assert not marker.exists()


def test_a_snapshot_of_an_unknown_schema_version_is_refused() -> None:
    blob = bytearray(encode_snapshot({"a": 1}, stage="s", partition=0))
    blob[4:6] = (9).to_bytes(2, "big")
    with pytest.raises(SnapshotError, match="schema version 9 is unknown"):
        decode_snapshot(bytes(blob))


def test_a_snapshot_claiming_too_much_is_refused_before_decompressing() -> None:
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (MAX_SNAPSHOT_BYTES // 64))
    header = (
        b"CCST" + SCHEMA_VERSION.to_bytes(2, "big") + (MAX_SNAPSHOT_BYTES + 1).to_bytes(4, "big")
    )
    with pytest.raises(SnapshotError, match="over"):
        decode_snapshot(header + bomb)


def test_state_that_is_not_plain_data_cannot_be_snapshotted() -> None:
    with pytest.raises(SnapshotError, match="cannot hold"):
        encode_snapshot({"f": os.system}, stage="s", partition=0)


def test_containers_shared_between_places_stay_shared() -> None:
    entry = [1.0, "k"]
    state = {"pending": {"k": entry}, "deadlines": deque([(5.0, "k", entry)], maxlen=9)}
    back = decode_snapshot(encode_snapshot(state, stage="s", partition=0))
    assert back["pending"]["k"] is back["deadlines"][0][2]
    assert back["deadlines"].maxlen == 9
    back["pending"]["k"].append(True)
    assert back["deadlines"][0][2] == [1.0, "k", True]


def test_every_supported_type_round_trips() -> None:
    generator = random.Random(3)
    generator.random()
    state = {
        (1, "a"): {1, 2},
        "f": frozenset({"x"}),
        "big": 2**100,
        "neg": -(2**70),
        "bytes": b"\x00\xff",
        "none": None,
        "floats": [0.5, float("inf")],
        "rng": generator,
    }
    back = decode_snapshot(encode_snapshot(state, stage="s", partition=0))
    rng = back.pop("rng")
    assert back == {k: v for k, v in state.items() if k != "rng"}
    assert rng.random() == generator.random()


@given(st.binary(max_size=400))
@hypothesis.settings(max_examples=300, deadline=None)
def test_any_bytes_after_a_valid_header_decode_to_plain_data_or_a_snapshot_error(
    body: bytes,
) -> None:
    compressed = zstandard.ZstdCompressor().compress(body)
    blob = b"CCST" + SCHEMA_VERSION.to_bytes(2, "big") + len(body).to_bytes(4, "big") + compressed
    try:
        value = decode_snapshot(blob)
    except SnapshotError:
        return
    assert _plain(value)


def _plain(value: object) -> bool:
    if isinstance(value, dict):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset | deque):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, int | float | str | bytes | random.Random)


def test_foreign_and_corrupt_snapshots_are_refused() -> None:
    with pytest.raises(SnapshotError, match="not a cachecast snapshot"):
        decode_snapshot(b"PK\x03\x04 something else")
    blob = bytearray(encode_snapshot({"a": 1}, stage="s", partition=0))
    blob[-3] ^= 0xFF
    with pytest.raises(SnapshotError):
        decode_snapshot(bytes(blob))

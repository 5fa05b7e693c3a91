"""Snapshots round-trip the real models, and refuse anything outside the allowlist."""

from __future__ import annotations

import io
import os
import pickle

import pytest
import zstandard

from pipeline.checkpoint import SnapshotError, decode_snapshot, encode_snapshot
from pipeline.config import Settings
from pipeline.decide import Decider, engine_config
from pipeline.models import SmartTTL, WarmEngine


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


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo owned",))


def _blob(obj: object) -> bytes:
    raw = pickle.dumps(obj)
    return b"CCS1" + len(raw).to_bytes(4, "big") + zstandard.ZstdCompressor().compress(raw)


@pytest.mark.parametrize("payload", [_Exploit(), io.BytesIO(b"x"), getattr])
def test_a_snapshot_naming_anything_else_is_refused(payload: object) -> None:
    with pytest.raises(SnapshotError, match="forbidden"):
        decode_snapshot(_blob(payload))


def test_foreign_and_corrupt_snapshots_are_refused() -> None:
    with pytest.raises(SnapshotError, match="not a cachecast snapshot"):
        decode_snapshot(b"PK\x03\x04 something else")
    blob = bytearray(encode_snapshot({"a": 1}, stage="s", partition=0))
    blob[-3] ^= 0xFF
    with pytest.raises(SnapshotError):
        decode_snapshot(bytes(blob))

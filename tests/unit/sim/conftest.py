"""Fixtures for the simulator tests: the shared real traces, and small synthetic ones."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zstandard

from pipeline.sim.traces import ORACLE_GENERAL_DTYPE, Trace, next_access_of, read_oracle_general

TRACES_DIR = Path(
    os.environ.get(
        "CACHECAST_TRACES", Path(__file__).resolve().parents[3].parent / "shared" / "traces"
    )
)


def shared_trace(name: str, max_requests: int | None = None) -> Trace:
    """A trace from ../shared/traces; the test is skipped where the traces are not laid out."""
    path = TRACES_DIR / f"{name}.oracleGeneral.bin.zst"
    if not path.exists():
        pytest.skip(f"{path} not found (set CACHECAST_TRACES)")
    return read_oracle_general(path, max_requests)


def write_oracle_general(path: Path, keys: list[int], compress: bool) -> None:
    """Write keys as an oracleGeneral trace (timestamps = request index)."""
    arr = np.asarray(keys, dtype=np.int64)
    records = np.zeros(len(arr), dtype=ORACLE_GENERAL_DTYPE)
    records["ts"] = np.arange(len(arr))
    records["obj_id"] = arr
    records["obj_size"] = 1
    records["next_access_vtime"] = next_access_of(arr)
    data = records.tobytes()
    path.write_bytes(zstandard.ZstdCompressor().compress(data) if compress else data)


@pytest.fixture
def sequential_trace() -> Trace:
    """Repeated sequences between random noise: a trace warming can exploit."""
    rng = np.random.default_rng(11)
    keys: list[int] = []
    sequences = [list(range(1_000 + 20 * s, 1_000 + 20 * s + 12)) for s in range(40)]
    while len(keys) < 60_000:
        if rng.random() < 0.5:
            keys += sequences[int(rng.integers(len(sequences)))]
        else:
            keys += rng.integers(100_000, 400_000, size=6).tolist()
    arr = np.asarray(keys[:60_000], dtype=np.int64)
    return Trace(
        keys=arr,
        ts=np.arange(len(arr), dtype=np.float64),
        name="sequential",
        next_access=next_access_of(arr),
    )


@pytest.fixture
def random_trace() -> Trace:
    """Independent uniform requests: nothing to exploit."""
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 20_000, size=80_000).astype(np.int64)
    return Trace(
        keys=arr,
        ts=np.arange(len(arr), dtype=np.float64),
        name="random",
        next_access=next_access_of(arr),
    )

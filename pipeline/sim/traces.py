"""Trace readers: libCacheSim oracleGeneral (plain or .zst), CSV with a column mapping, our JSONL.

Every reader returns a :class:`Trace`: integer key ids in request order, their
timestamps, optional user ids, and, for oracleGeneral, the ``next_access_vtime``
field. That field is the future: only the Belady reference may read it.

It also owns how a command reads a trace: :func:`load_trace`, the
``--format``/``--csv-columns`` options that ``simulate``, ``replay`` and ``demo``
share (:func:`add_trace_options`), and the slice that ships with cachecast
(:data:`BUNDLED_TRACE`, read with its own column mapping).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final, Literal, cast, get_args

import numpy as np
import numpy.typing as npt
import orjson
import zstandard

TraceFormat = Literal["oracleGeneral", "csv", "jsonl"]

#: The trace slice that ships with cachecast (the demo's default; docs/simulation.md).
BUNDLED_TRACE: Final = Path(__file__).parent.parent / "data" / "cache2k_orm_busy_200k.csv.zst"
#: The bundled slice's CSV columns (``--csv-columns`` syntax).
BUNDLED_MAPPING: Final = "key=1,ts=0,op=none,header=1"

ORACLE_GENERAL_DTYPE = np.dtype(
    [("ts", "<u4"), ("obj_id", "<u8"), ("obj_size", "<u4"), ("next_access_vtime", "<i8")]
)
"""One oracleGeneral record: 24 bytes, little-endian ``<IQIq``."""

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

READ_OPS = frozenset({"get", "gets", "mget", "hget", "read"})
"""Operations that count as cache requests in CSV and JSONL traces (writes are skipped)."""


@dataclass(frozen=True)
class Trace:
    """A request stream, ready to replay.

    ``keys`` are int64 ids; ``ts`` float64 timestamps (wall-clock seconds or
    request indices); ``users`` int64 ids (-1: no user) or None; ``next_access``
    the index of each request's next request to the same key (-1: none), kept
    only for the Belady reference.
    """

    keys: npt.NDArray[np.int64]
    ts: npt.NDArray[np.float64]
    name: str = "trace"
    users: npt.NDArray[np.int64] | None = None
    next_access: npt.NDArray[np.int64] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def n_unique(self) -> int:
        """Number of distinct keys (the working set of unit-size objects)."""
        return len(np.unique(self.keys))

    def head(self, n: int) -> Trace:
        """The first ``n`` requests (``next_access`` recomputed for the cut)."""
        if n >= len(self):
            return self
        return Trace(
            keys=self.keys[:n],
            ts=self.ts[:n],
            name=self.name,
            users=None if self.users is None else self.users[:n],
            next_access=None if self.next_access is None else _cut_next(self.next_access[:n], n),
        )

    def without_future(self) -> Trace:
        """The same trace with ``next_access`` zeroed (what a predictor is allowed to see)."""
        return Trace(
            keys=self.keys,
            ts=self.ts,
            name=self.name,
            users=self.users,
            next_access=None if self.next_access is None else np.zeros_like(self.next_access),
        )


def _cut_next(next_access: npt.NDArray[np.int64], n: int) -> npt.NDArray[np.int64]:
    out = next_access.copy()
    out[out >= n] = -1
    return out


def next_access_of(keys: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """For each request, the index of the next request to the same key (-1: none).

    >>> next_access_of(np.array([5, 7, 5, 9, 7])).tolist()
    [2, 4, -1, -1, -1]
    """
    n = len(keys)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    out = np.full(n, -1, dtype=np.int64)
    same = sorted_keys[1:] == sorted_keys[:-1]
    out[order[:-1][same]] = order[1:][same]
    return out


def _open_bytes(path: Path) -> IO[bytes]:
    """Open ``path`` for reading, transparently decompressing zstd."""
    raw = path.open("rb")
    magic = raw.read(4)
    raw.seek(0)
    if magic == _ZSTD_MAGIC:
        return zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
    return raw


def _read_exactly(stream: IO[bytes], size: int | None) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining is None or remaining > 0:
        chunk = stream.read(1 << 24 if remaining is None else min(remaining, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        if remaining is not None:
            remaining -= len(chunk)
    return b"".join(chunks)


def read_oracle_general(path: str | os.PathLike[str], max_requests: int | None = None) -> Trace:
    """Read a libCacheSim oracleGeneral trace (``.zst`` compressed or not)."""
    path = Path(path)
    record = ORACLE_GENERAL_DTYPE.itemsize
    with _open_bytes(path) as stream:
        data = _read_exactly(stream, None if max_requests is None else max_requests * record)
    usable = len(data) - len(data) % record
    records = np.frombuffer(data[:usable], dtype=ORACLE_GENERAL_DTYPE)
    keys = records["obj_id"].astype(np.int64)
    next_access = records["next_access_vtime"].astype(np.int64)
    if max_requests is not None and len(keys) >= max_requests:
        next_access = _cut_next(next_access, len(keys))
    return Trace(
        keys=keys,
        ts=records["ts"].astype(np.float64),
        name=_trace_name(path),
        next_access=next_access,
    )


@dataclass(frozen=True)
class CsvMapping:
    """Where the fields are in a CSV trace (0-based column indices).

    The default reads Twitter's cache-trace format
    (``timestamp,key,key size,value size,client id,operation,TTL``, no header).
    ``op`` = None counts every row as a request; otherwise only ``read_ops`` do.
    """

    key: int = 1
    ts: int | None = 0
    op: int | None = 5
    user: int | None = None
    delimiter: str = ","
    header: bool = False
    read_ops: frozenset[str] = READ_OPS

    @classmethod
    def parse(cls, spec: str) -> CsvMapping:
        """Build from ``"key=1,ts=0,op=5,user=4,header=1,delimiter=tab"`` (unset: defaults).

        >>> CsvMapping.parse("key=2,ts=none,header=1")
        CsvMapping(key=2, ts=None, op=5, user=None, delimiter=',', header=True, read_ops=...)
        """
        values: dict[str, object] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, raw = part.partition("=")
            name = name.strip()
            raw = raw.strip()
            if name in ("key", "ts", "op", "user"):
                values[name] = None if raw.lower() in ("", "none", "-") else int(raw)
            elif name == "header":
                values[name] = raw.lower() in ("1", "true", "yes")
            elif name == "delimiter":
                values[name] = {"tab": "\t", "comma": ",", "space": " "}.get(raw, raw)
            else:
                raise ValueError(f"unknown CSV mapping field {name!r}")
        if values.get("key", 1) is None:
            raise ValueError("the key column is required")
        return cls(**values)  # type: ignore[arg-type]


class _Interner:
    """Maps arbitrary key strings to dense int ids, in order of first appearance."""

    def __init__(self) -> None:
        self.ids: dict[Hashable, int] = {}

    def __call__(self, value: Hashable) -> int:
        ids = self.ids
        found = ids.get(value)
        if found is None:
            found = ids[value] = len(ids)
        return found


def _columns() -> tuple[_Interner, _Interner, list[int], list[float], list[int]]:
    """A reader's empty columns: key and user interners, then key ids, times and user ids."""
    return _Interner(), _Interner(), [], [], []


def read_csv(
    path: str | os.PathLike[str],
    mapping: CsvMapping | None = None,
    max_requests: int | None = None,
) -> Trace:
    """Read a CSV trace (``.zst`` compressed or not) with a column mapping."""
    path = Path(path)
    mapping = mapping or CsvMapping()
    keys, users, key_ids, times, user_ids = _columns()
    with _open_bytes(path) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
        rows = csv.reader(text, delimiter=mapping.delimiter)
        if mapping.header:
            next(rows, None)
        needed = 1 + max(
            c for c in (mapping.key, mapping.ts, mapping.op, mapping.user) if c is not None
        )
        for row in rows:
            if not row:
                continue
            if len(row) < needed:
                raise ValueError(
                    f"{path.name}, line {rows.line_num}: {len(row)} column(s), but the column"
                    f" mapping reads column {needed - 1} (counted from 0); give the right"
                    " mapping, e.g. --csv-columns key=1,ts=0,op=none,header=1"
                )
            if mapping.op is not None and row[mapping.op].strip().lower() not in mapping.read_ops:
                continue
            key_ids.append(keys(row[mapping.key]))
            times.append(float(row[mapping.ts]) if mapping.ts is not None else float(len(times)))
            if mapping.user is not None:
                user_ids.append(users(row[mapping.user]))
            if max_requests is not None and len(key_ids) >= max_requests:
                break
    return _finish(path, key_ids, times, user_ids if mapping.user is not None else None)


def read_jsonl(path: str | os.PathLike[str], max_requests: int | None = None) -> Trace:
    """Read our JSONL of AccessEvents (one JSON object, or a JSON array batch, per line).

    The key is ``"namespace:key"``; events whose ``op`` is a write are skipped.
    """
    path = Path(path)
    keys, users, key_ids, times, user_ids = _columns()
    with _open_bytes(path) as stream:
        for event in _jsonl_events(stream):
            op = event.get("op")
            if op is not None and str(op).lower() not in READ_OPS:
                continue
            namespace = event.get("namespace") or event.get("ns") or ""
            key_ids.append(keys(f"{namespace}:{event['key']}"))
            raw_ts = event.get("ts")
            if isinstance(raw_ts, int | float | str):
                times.append(float(raw_ts))
            else:
                times.append(float(len(times)))
            user = event.get("user")
            user_ids.append(-1 if user is None else users(str(user)))
            if max_requests is not None and len(key_ids) >= max_requests:
                break
    has_users = any(u >= 0 for u in user_ids)
    return _finish(path, key_ids, times, user_ids if has_users else None)


def _jsonl_events(stream: IO[bytes]) -> Iterator[dict[str, object]]:
    for line in stream:
        line = line.strip()
        if not line:
            continue
        value = orjson.loads(line)
        if isinstance(value, list):
            yield from (v for v in value if isinstance(v, dict))
        elif isinstance(value, dict):
            yield value


def _finish(
    path: Path, key_ids: list[int], times: list[float], user_ids: list[int] | None
) -> Trace:
    return Trace(
        keys=np.asarray(key_ids, dtype=np.int64),
        ts=np.asarray(times, dtype=np.float64),
        name=_trace_name(path),
        users=None if user_ids is None else np.asarray(user_ids, dtype=np.int64),
    )


def _trace_name(path: Path) -> str:
    name = path.name
    for suffix in (".zst", ".bin", ".oracleGeneral", ".csv", ".jsonl", ".ndjson"):
        name = name.removesuffix(suffix)
    return name


def detect_format(path: str | os.PathLike[str]) -> TraceFormat:
    """Guess the trace format from the file name.

    >>> detect_format("scarab_recs.oracleGeneral.bin.zst"), detect_format("events.jsonl")
    ('oracleGeneral', 'jsonl')
    """
    name = Path(path).name.lower().removesuffix(".zst")
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".csv", ".tsv", ".txt")):
        return "csv"
    return "oracleGeneral"


def read_trace(
    path: str | os.PathLike[str],
    fmt: TraceFormat | None = None,
    max_requests: int | None = None,
    csv_mapping: CsvMapping | None = None,
) -> Trace:
    """Read a trace in any supported format (guessed from the name when ``fmt`` is None)."""
    fmt = fmt or detect_format(path)
    if fmt == "oracleGeneral":
        return read_oracle_general(path, max_requests)
    if fmt == "csv":
        return read_csv(path, csv_mapping, max_requests)
    if fmt == "jsonl":
        return read_jsonl(path, max_requests)
    raise ValueError(f"unknown trace format {fmt!r}")


def _is_bundled(path: Path) -> bool:
    try:
        return path.resolve() == BUNDLED_TRACE.resolve()
    except OSError:
        return False


def load_trace(
    path: str | os.PathLike[str],
    fmt: str | None = None,
    mapping: str | None = None,
    max_requests: int | None = None,
) -> Trace:
    """Read a trace as the CLI's ``--format`` and ``--csv-columns`` say (format
    guessed from the name if None).

    ``mapping`` is a CSV column mapping (``--csv-columns``); without one, the
    bundled trace is read with its own mapping and other CSV files with the
    default (Twitter's format).
    """
    path = Path(path)
    formats: tuple[str, ...] = get_args(TraceFormat)
    if fmt is not None and fmt not in formats:
        raise ValueError(f"unknown trace format {fmt!r} ({', '.join(formats)})")
    spec = mapping or (BUNDLED_MAPPING if _is_bundled(path) else None)
    csv_mapping = CsvMapping.parse(spec) if spec else None
    return read_trace(path, cast("TraceFormat | None", fmt), max_requests, csv_mapping)


def add_trace_options(parser: argparse.ArgumentParser) -> None:
    """``--format`` and ``--csv-columns``: how a command reads its trace (:func:`load_trace`)."""
    parser.add_argument(
        "--format",
        choices=get_args(TraceFormat),
        default=None,
        help="trace format (default: guessed from the file name)",
    )
    parser.add_argument(
        "--csv-columns",
        "--csv-mapping",
        dest="csv_columns",
        default="",
        help="CSV column mapping, e.g. 'key=1,ts=0,op=5,header=0' (default: Twitter format; "
        f"the bundled trace: {BUNDLED_MAPPING!r})",
    )

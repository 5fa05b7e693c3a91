"""Model-state snapshots: how learned state survives a worker restart or a rebalance.

Each stateful agent keeps one model object per input partition. At every
checkpoint it writes a snapshot of each to a compacted topic (key
``"<stage>:<partition>"``, on the same partition number), waits until Kafka has
it, and only then acknowledges the input records the snapshot covers. The
snapshot records the last input offset it covers: a worker that takes over a
partition loads the latest snapshot and skips the redelivered records at or
below that offset (a committed offset can lag its acks, and a worker stopping
cleanly commits nothing more), so the model has seen every event exactly once
per snapshot lineage, and the redelivery after a crash or a leave replays
exactly the events the snapshot lacks.

Snapshots are state documents, never code. The state (plain containers of
numbers and strings, as :meth:`Predictor.state_dict` returns it) is written as
MessagePack with a few tagged extensions (tuple, set, frozenset, deque, a
seeded ``random.Random``'s state, and references that keep a container held in
two places shared) and compressed with zstd. Reading one builds only those
types: no class is looked up by name, nothing is called, so a record
someone crafted on the state topic cannot run code in a worker. The header
carries a schema version and the uncompressed size; an unknown version, a size
above :data:`MAX_SNAPSHOT_BYTES` (checked before decompressing) or a malformed
document is a :class:`SnapshotError`, and the partition starts fresh. Protect
the state topic with ACLs like any changelog topic all the same: a forged
snapshot can still teach a worker wrong predictions.

>>> blob = encode_snapshot({"counts": {"a": 3}}, stage="ttl", partition=2)
>>> decode_snapshot(blob)
{'counts': {'a': 3}}
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgpack
import zstandard
from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = [
    "MAX_SNAPSHOT_BYTES",
    "SCHEMA_VERSION",
    "SnapshotError",
    "decode_snapshot",
    "encode_snapshot",
    "load_snapshot_blobs",
    "snapshot_key",
]

SCHEMA_VERSION: Final = 4
"""The snapshot format this code writes and reads (1 was a pickle, 2 a state without the
offset it covers, 3 an engine without the user index and its three features; none is
read: a partition whose snapshot is older starts fresh)."""

MAX_SNAPSHOT_BYTES: Final = 512 * 1024 * 1024
"""The largest uncompressed snapshot a worker accepts (checked before decompressing)."""

_MAGIC: Final = b"CCST"
_LEGACY_MAGIC: Final = b"CCS1"
_HEADER: Final = struct.Struct(">4sHI")  # magic, schema version, uncompressed size

# MessagePack extension codes: the only non-native types a snapshot may hold.
_TUPLE: Final = 1
_SET: Final = 2
_FROZENSET: Final = 3
_DEQUE: Final = 4
_RANDOM: Final = 5
_BIG_INT: Final = 6
_DEFINE: Final = 7  # a mutable container held in more than one place: [id, value]
_REF: Final = 8  # a later place holding it: id
_MAX_INT_DIGITS: Final = 40
_SHAREABLE: Final = (list, dict, set, deque)
_NESTED: Final = frozenset({list, dict, set, deque, tuple})  # what the first pass walks
_SCALARS: Final = frozenset({str, int, float, bool, bytes, type(None)})
_NARROW_SCALARS: Final = _SCALARS - {int}


class SnapshotError(ValueError):
    """A snapshot could not be read (corrupt, foreign, too large, or of an unknown version)."""


def _pack(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, strict_types=True, use_bin_type=True)
    return packed


class _Encoder:
    """Turns state into MessagePack, keeping containers shared between places shared.

    Models keep one list in two structures (a pending entry in its map and in
    its deadline queue); a restored model must too. A first pass counts the
    places each mutable container appears; the second writes a shared one once
    (``_DEFINE``) and refers to it afterwards (``_REF``), in stream order.

    Scalars (most of a state) are passed through inline. Dict keys and set
    members are hashable, so they never hold a mutable container and are not
    walked by the first pass. Integers beyond 64 bits are rare: they are
    tagged only when a first attempt to pack overflows (``wide_ints``).
    """

    def __init__(self, state: Any, *, wide_ints: bool = False) -> None:
        self._seen: dict[int, int] = {}
        self._ids: dict[int, int] = {}
        self._scalars = _NARROW_SCALARS if wide_ints else _SCALARS
        self._count(state)

    def _count(self, obj: Any) -> None:
        stack = [obj]
        seen = self._seen
        nested = _NESTED
        while stack:
            item = stack.pop()
            kind = type(item)
            if kind is not tuple:
                key = id(item)
                if key in seen:
                    seen[key] += 1
                    continue
                seen[key] = 1
            if kind is dict:
                stack.extend([v for v in item.values() if type(v) in nested])
            elif kind is list or kind is tuple or kind is deque:
                stack.extend([v for v in item if type(v) in nested])

    def encode(self, obj: Any) -> Any:
        kind = type(obj)
        if kind in self._scalars:
            return obj
        if kind is int:
            return msgpack.ExtType(_BIG_INT, str(obj).encode("ascii"))
        if kind in _SHAREABLE and self._seen.get(id(obj), 0) > 1:
            ref = self._ids.get(id(obj))
            if ref is not None:
                return msgpack.ExtType(_REF, _pack(ref))
            ref = self._ids[id(obj)] = len(self._ids)
            return msgpack.ExtType(_DEFINE, _pack([ref, self._plain(obj)]))
        return self._plain(obj)

    def _items(self, items: Any) -> list[Any]:
        scalars, encode = self._scalars, self.encode
        return [x if type(x) in scalars else encode(x) for x in items]

    def _plain(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is list:
            return self._items(obj)
        if kind is dict:
            scalars, encode = self._scalars, self.encode
            return {
                (k if type(k) in scalars else encode(k)): (v if type(v) in scalars else encode(v))
                for k, v in obj.items()
            }
        if kind is tuple:
            return msgpack.ExtType(_TUPLE, _pack(self._items(obj)))
        if kind is set:
            return msgpack.ExtType(_SET, _pack(self._items(obj)))
        if kind is frozenset:
            return msgpack.ExtType(_FROZENSET, _pack(self._items(obj)))
        if kind is deque:
            return msgpack.ExtType(_DEQUE, _pack([obj.maxlen, self._items(obj)]))
        if kind is random.Random:
            return msgpack.ExtType(_RANDOM, _pack(self.encode(list(obj.getstate()))))
        raise SnapshotError(f"a snapshot cannot hold a {kind.__module__}.{kind.__qualname__}")


def _encode(state: Any) -> bytes:
    try:
        return _pack(_Encoder(state).encode(state))
    except OverflowError:  # an integer beyond 64 bits somewhere: tag every wide one
        return _pack(_Encoder(state, wide_ints=True).encode(state))


class _Decoder:
    """Builds state back from MessagePack: plain containers, numbers and strings only."""

    def __init__(self) -> None:
        self._shared: list[Any] = []

    def unpack(self, data: bytes) -> Any:
        return msgpack.unpackb(data, ext_hook=self._ext, strict_map_key=False, raw=False)

    def _ext(self, code: int, data: bytes) -> Any:
        if code == _TUPLE:
            return tuple(_as_list(self.unpack(data)))
        if code == _SET:
            return set(_as_list(self.unpack(data)))
        if code == _FROZENSET:
            return frozenset(_as_list(self.unpack(data)))
        if code == _DEQUE:
            maxlen, items = _as_list(self.unpack(data))
            if maxlen is not None and (type(maxlen) is not int or maxlen < 0):
                raise SnapshotError(f"bad deque bound {maxlen!r}")
            return deque(_as_list(items), maxlen)
        if code == _RANDOM:
            generator = random.Random()
            generator.setstate(tuple(_as_list(self.unpack(data))))  # validates the shape itself
            return generator
        if code == _BIG_INT:
            if len(data) > _MAX_INT_DIGITS:
                raise SnapshotError("integer in snapshot too long")
            return int(data.decode("ascii"))
        if code == _DEFINE:
            ref, value = _as_list(self.unpack(data))
            if ref != len(self._shared) or type(value) not in _SHAREABLE:
                raise SnapshotError(f"bad shared container {ref!r} in snapshot")
            self._shared.append(value)
            return value
        if code == _REF:
            ref = self.unpack(data)
            if type(ref) is not int or not 0 <= ref < len(self._shared):
                raise SnapshotError(f"unknown shared container {ref!r} in snapshot")
            return self._shared[ref]
        raise SnapshotError(f"unknown type tag {code} in snapshot")


def _as_list(value: Any) -> list[Any]:
    if type(value) is not list:
        raise SnapshotError(f"expected a list in snapshot, got {type(value).__name__}")
    return value


def snapshot_key(stage: str, partition: int) -> bytes:
    return f"{stage}:{partition}".encode()


def encode_snapshot(state: Any, *, stage: str, partition: int, level: int = 3) -> bytes:
    """Encode and compress ``state``; the header records its version and uncompressed size.

    Raises :class:`SnapshotError` for anything but plain containers, numbers,
    strings, bytes, deques and ``random.Random`` (a model bug, caught by tests).
    """
    raw = _encode(state)
    if len(raw) > MAX_SNAPSHOT_BYTES:
        raise SnapshotError(
            f"snapshot of {stage}:{partition} is {len(raw)} bytes, over {MAX_SNAPSHOT_BYTES}"
        )
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
    return _HEADER.pack(_MAGIC, SCHEMA_VERSION, len(raw)) + compressor.compress(raw)


def decode_snapshot(blob: bytes) -> Any:
    """The state in ``blob``; :class:`SnapshotError` for anything this version cannot trust."""
    if blob[:4] == _LEGACY_MAGIC:
        raise SnapshotError("snapshot is in format 1 (pickle), which is no longer read")
    if len(blob) < _HEADER.size:
        raise SnapshotError("snapshot too short")
    magic, version, size = _HEADER.unpack_from(blob)
    if magic != _MAGIC:
        raise SnapshotError("not a cachecast snapshot")
    if version != SCHEMA_VERSION:
        raise SnapshotError(
            f"snapshot schema version {version} is unknown (this worker reads {SCHEMA_VERSION})"
        )
    if size > MAX_SNAPSHOT_BYTES:
        raise SnapshotError(f"snapshot claims {size} bytes, over {MAX_SNAPSHOT_BYTES}")
    try:
        raw = zstandard.ZstdDecompressor().decompress(blob[_HEADER.size :], max_output_size=size)
    except zstandard.ZstdError as exc:
        raise SnapshotError(f"corrupt snapshot: {exc}") from None
    if len(raw) != size:
        raise SnapshotError(f"snapshot is {len(raw)} bytes, its header says {size}")
    try:
        return _Decoder().unpack(raw)
    except SnapshotError:
        raise
    except (ValueError, TypeError, RecursionError, msgpack.ExtraData) as exc:
        raise SnapshotError(f"malformed snapshot: {exc!r}") from None


async def load_snapshot_blobs(
    bootstrap_servers: list[str],
    topic: str,
    stages: Sequence[str],
    partition: int,
    timeout: float = 30.0,
    connection: Mapping[str, Any] | None = None,
) -> dict[str, bytes | None]:
    """The latest record of each of ``stages`` for ``partition``, undecoded (None: none).

    Reads the state topic's partition once, from the beginning to its end offset
    (it is compacted, so this is about one record per key); each blob goes to
    :func:`decode_snapshot`.
    """
    keys = {snapshot_key(stage, partition): stage for stage in stages}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        group_id=None,
        max_partition_fetch_bytes=64 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        **(connection or {}),
    )
    tp = TopicPartition(topic, partition)
    latest: dict[str, bytes | None] = dict.fromkeys(stages)
    try:
        # One bound on the whole read, connecting included: a restore that hangs
        # would hold up its partition's first record (the caller retries).
        async with asyncio.timeout(timeout):
            await consumer.start()
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=500)
                for record in batch.get(tp, []):
                    stage = keys.get(record.key or b"")
                    if stage is not None:
                        latest[stage] = record.value
        return latest
    except TimeoutError:
        raise TimeoutError(
            f"reading snapshots of {topic}/{partition} took over {timeout}s"
        ) from None
    finally:
        await consumer.stop()

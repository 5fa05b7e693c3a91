"""Model-state snapshots: how learned state survives a worker restart or a rebalance.

Each stateful agent keeps one model object per input partition. At every
checkpoint it writes a snapshot of each to a compacted topic (key
``"<stage>:<partition>"``, on the same partition number), waits until Kafka has
it, and only then acknowledges the input records the snapshot covers. A worker
that takes over a partition loads the latest snapshot and resumes from the
committed offset, so the model has seen every event exactly once per snapshot
lineage, and the at-least-once redelivery after a crash replays exactly the
events the snapshot lacks.

Snapshots are zstd-compressed pickles. Unpickling runs with an allowlist of
modules (the models' own classes, river, and plain containers), so a snapshot
cannot name arbitrary callables; still, protect the state topic with ACLs like
any changelog topic.

>>> blob = encode_snapshot({"counts": {"a": 3}}, stage="ttl", partition=2)
>>> decode_snapshot(blob)
{'counts': {'a': 3}}
"""

from __future__ import annotations

import asyncio
import io
import pickle
import struct
from typing import Any, Final

import zstandard
from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = [
    "SnapshotError",
    "decode_snapshot",
    "encode_snapshot",
    "load_snapshot",
    "snapshot_key",
]

_MAGIC: Final = b"CCS1"
_HEADER: Final = struct.Struct(">4sI")
_ALLOWED_PREFIXES: Final = ("pipeline.models", "river.", "collections", "numpy", "builtins")
_ALLOWED_BUILTINS: Final = frozenset(
    {
        "dict",
        "list",
        "tuple",
        "set",
        "frozenset",
        "int",
        "float",
        "str",
        "bytes",
        "bool",
        "complex",
        "bytearray",
        "slice",
        "range",
        "object",
    }
)


class SnapshotError(ValueError):
    """A snapshot could not be read (corrupt, foreign, or naming a forbidden class)."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name not in _ALLOWED_BUILTINS:
            raise SnapshotError(f"snapshot names forbidden builtin {name!r}")
        numpy_internal = module in ("numpy.core.multiarray", "numpy._core.multiarray")
        if numpy_internal and name not in ("_reconstruct", "scalar"):
            raise SnapshotError(f"snapshot names forbidden numpy function {name!r}")
        if (module, name) == ("random", "Random"):
            return super().find_class(module, name)  # a seeded generator's state
        if module == "functools" and name == "partial":
            # partial only binds callables that passed this same allowlist.
            return super().find_class(module, name)
        if not module.startswith(_ALLOWED_PREFIXES) and module not in ("copyreg", "math"):
            raise SnapshotError(f"snapshot names a class from forbidden module {module!r}")
        if module == "copyreg" and name != "_reconstructor":
            raise SnapshotError(f"snapshot names forbidden copyreg.{name}")
        return super().find_class(module, name)


def snapshot_key(stage: str, partition: int) -> bytes:
    return f"{stage}:{partition}".encode()


def encode_snapshot(state: Any, *, stage: str, partition: int, level: int = 3) -> bytes:
    """Pickle and compress ``state``; the header records its uncompressed size."""
    raw = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
    return _HEADER.pack(_MAGIC, len(raw)) + compressor.compress(raw)


def decode_snapshot(blob: bytes) -> Any:
    if len(blob) < _HEADER.size:
        raise SnapshotError("snapshot too short")
    magic, size = _HEADER.unpack_from(blob)
    if magic != _MAGIC:
        raise SnapshotError("not a cachecast snapshot")
    try:
        raw = zstandard.ZstdDecompressor().decompress(blob[_HEADER.size :], max_output_size=size)
    except zstandard.ZstdError as exc:
        raise SnapshotError(f"corrupt snapshot: {exc}") from None
    try:
        return _RestrictedUnpickler(io.BytesIO(raw)).load()
    except SnapshotError:
        raise
    except Exception as exc:
        raise SnapshotError(f"snapshot does not unpickle: {exc!r}") from None


async def load_snapshot(
    bootstrap_servers: list[str], topic: str, stage: str, partition: int, timeout: float = 30.0
) -> Any | None:
    """The latest snapshot of ``stage`` for ``partition``, or None if there is none.

    Reads the state topic's partition from the beginning to its end offset (it is
    compacted, so this is about one record per key).
    """
    key = snapshot_key(stage, partition)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        group_id=None,
        max_partition_fetch_bytes=64 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        latest: bytes | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await consumer.position(tp) < end:
            if loop.time() > deadline:
                raise TimeoutError(f"reading snapshots of {topic}/{partition} took over {timeout}s")
            batch = await consumer.getmany(tp, timeout_ms=500)
            for record in batch.get(tp, []):
                if record.key == key:
                    latest = record.value
        return decode_snapshot(latest) if latest else None
    finally:
        await consumer.stop()

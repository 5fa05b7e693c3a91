"""Which partition a key goes to: Kafka's own default partitioner (murmur2).

Using Kafka's hash means a record cachecast re-batches lands on the partition
that any Kafka client's default partitioner would pick for the same key, so
single-event producers in other languages and cachecast's batches agree.

>>> partition_for("users:42", 12) == partition_for("users:42", 12)
True
>>> 0 <= partition_for("users:42", 12) < 12
True
"""

from __future__ import annotations

from aiokafka.partitioner import murmur2

__all__ = ["PartitionCache", "partition_for"]


def partition_for(key: str, partitions: int) -> int:
    """Kafka's default partition of ``key`` among ``partitions``.

    A key that is not valid UTF-8 text (a lone surrogate) still gets a partition.
    """
    digest: int = murmur2(key.encode("utf-8", "surrogatepass"))
    return (digest & 0x7FFFFFFF) % partitions


class PartitionCache:
    """``partition_for`` with a bounded memo (murmur2 in Python costs ~1 µs a key)."""

    def __init__(self, partitions: int, limit: int = 100_000) -> None:
        self.partitions = partitions
        self._limit = limit
        self._memo: dict[str, int] = {}

    def __call__(self, key: str) -> int:
        partition = self._memo.get(key)
        if partition is None:
            if len(self._memo) >= self._limit:
                self._memo.clear()
            partition = self._memo[key] = partition_for(key, self.partitions)
        return partition

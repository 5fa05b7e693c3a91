"""Writing warmed values, and how the client recognises their first read.

The warmer (the writer agent) stores a value encoded with
``origin="warm"`` only if the key is absent (``SET NX EX``), and beside it a
marker ``{prefix}#warm:{ns}:{key}`` with the same TTL. A client reading a value
whose envelope header says ``origin=warm`` deletes the marker: ``DEL`` returns
1 to exactly one reader in the whole fleet, whose access event then says
``warmed=true``. Application-written values never pay for this (the header is
checked first), and each client checks a given warmed value at most once.

On a single Redis server the value and marker are written atomically by one
Lua script. On a cluster they live in different hash slots, so they are
written one after the other (marker only if the value was written); a read in
between loses that one ``warmed=true`` but never produces two.
"""

from __future__ import annotations

from typing import Any, Final

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from pipeline.client.connection import AsyncRedisClient, SyncRedisClient
from pipeline.client.keys import (
    data_key,
    validate_key,
    validate_namespace,
    validate_ttl,
    warm_marker_key,
)
from pipeline.codec import CodecError, ValueCodec

__all__ = ["WARM_WRITE_SCRIPT", "write_warmed", "write_warmed_sync"]

#: SET NX EX the value; only if that happened, SET EX the marker. Returns 1 or 0.
WARM_WRITE_SCRIPT: Final = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
  return 1
end
return 0
"""
_CODEC: Final = ValueCodec()


def _checked(
    prefix: str, namespace: str, key: str, envelope_bytes: bytes, ttl: int
) -> tuple[str, str]:
    validate_namespace(namespace)
    validate_key(key)
    validate_ttl(ttl)
    if _CODEC.read_header(envelope_bytes).origin != "warm":
        raise CodecError(
            "write_warmed needs a value encoded with origin='warm' "
            "(ValueCodec.encode(value, origin='warm'))"
        )
    return data_key(prefix, namespace, key), warm_marker_key(prefix, namespace, key)


async def write_warmed(
    redis_client: AsyncRedisClient,
    prefix: str,
    namespace: str,
    key: str,
    envelope_bytes: bytes,
    ttl: int,
) -> bool:
    """Store a warmed value if the key is absent; True if it was written.

    Parameters
    ----------
    redis_client
        A redis-py asyncio client or ``RedisCluster``.
    prefix
        ``REDIS_KEY_PREFIX``.
    namespace, key
        Where the value goes (validated like the cache client's).
    envelope_bytes
        ``ValueCodec.encode(value, origin="warm").data``.
    ttl
        Seconds (the smart TTL of the warmup command).

    Raises
    ------
    pipeline.codec.CodecError
        If ``envelope_bytes`` is not an envelope with ``origin="warm"``.
    redis.exceptions.RedisError
        On Redis failures (the writer decides how to retry).
    """
    dkey, marker = _checked(prefix, namespace, key, envelope_bytes, ttl)
    if isinstance(redis_client, redis.asyncio.cluster.RedisCluster):
        written = await redis_client.set(dkey, envelope_bytes, nx=True, ex=ttl)
        if not written:
            return False
        await redis_client.set(marker, b"1", ex=ttl)
        return True
    result: Any = await redis_client.execute_command(  # type: ignore[no-untyped-call]
        "EVAL", WARM_WRITE_SCRIPT, 2, dkey, marker, envelope_bytes, ttl
    )
    return bool(result)


def write_warmed_sync(
    redis_client: SyncRedisClient,
    prefix: str,
    namespace: str,
    key: str,
    envelope_bytes: bytes,
    ttl: int,
) -> bool:
    """The blocking twin of :func:`write_warmed` (redis-py ``Redis`` or ``RedisCluster``)."""
    dkey, marker = _checked(prefix, namespace, key, envelope_bytes, ttl)
    if isinstance(redis_client, redis.cluster.RedisCluster):
        if not redis_client.set(dkey, envelope_bytes, nx=True, ex=ttl):
            return False
        redis_client.set(marker, b"1", ex=ttl)
        return True
    result: Any = redis_client.eval(WARM_WRITE_SCRIPT, 2, dkey, marker, envelope_bytes, ttl)
    return bool(result)

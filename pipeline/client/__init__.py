"""The cache client applications use instead of bare redis-py.

``RedisCacheManager`` and ``IntelligentCache`` (asyncio) and their blocking
twins in :mod:`pipeline.client.sync` cache values in Redis under
``prefix + namespace + ":" + key`` and emit one access event per operation
through a non-blocking emitter. :mod:`pipeline.client.keys` spells every Redis
key cachecast uses, and :func:`write_warmed` is how the warmer stores a value
whose first read is reported as ``warmed``.
"""

from pipeline.client.core import MEMORY_POLICIES
from pipeline.client.emitter import AccessEmitter, EmitterStats, ThreadedAccessEmitter
from pipeline.client.errors import (
    CacheCommandError,
    CacheError,
    CacheUnavailableError,
    InvalidKeyError,
    LoadTimeoutError,
    RedisConfigError,
)
from pipeline.client.intelligent import IntelligentCache, Loader
from pipeline.client.keys import (
    data_key,
    keytags_key,
    smart_ttl_hash,
    tag_key,
    warm_marker_key,
)
from pipeline.client.manager import RedisCacheManager
from pipeline.client.sync import SyncIntelligentCache, SyncRedisCacheManager
from pipeline.client.warm import write_warmed, write_warmed_sync
from pipeline.ttl import PRIORITY_TTL_FACTOR

__all__ = [
    "MEMORY_POLICIES",
    "PRIORITY_TTL_FACTOR",
    "AccessEmitter",
    "CacheCommandError",
    "CacheError",
    "CacheUnavailableError",
    "EmitterStats",
    "IntelligentCache",
    "InvalidKeyError",
    "LoadTimeoutError",
    "Loader",
    "RedisCacheManager",
    "RedisConfigError",
    "SyncIntelligentCache",
    "SyncRedisCacheManager",
    "ThreadedAccessEmitter",
    "data_key",
    "keytags_key",
    "smart_ttl_hash",
    "tag_key",
    "warm_marker_key",
    "write_warmed",
    "write_warmed_sync",
]

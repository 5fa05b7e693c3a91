"""The blocking cache client: the same API as :mod:`pipeline.client`, without ``await``."""

from pipeline.client.sync.intelligent import SyncIntelligentCache, SyncLoader
from pipeline.client.sync.manager import SyncRedisCacheManager

__all__ = ["SyncIntelligentCache", "SyncLoader", "SyncRedisCacheManager"]

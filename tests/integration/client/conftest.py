"""Cache clients on the devstack's real Redis (single server and 3-node cluster).

Every client gets its own key prefix, so tests sharing the session's servers
never see each other's keys; the prefix's keys are removed afterwards. Events
go to a :class:`RecordingSink` that checks each one against the AccessEvent
contract as it is emitted (the Kafka path has its own tests).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import redis
import redis.cluster

from pipeline.client import RedisCacheManager
from pipeline.client.keys import escape_glob
from pipeline.client.sync import SyncRedisCacheManager
from pipeline.config import Settings
from pipeline.devstack import DevStack, KafkaServer, RedisClusterServers, RedisServer
from schemas.decode import validate_access_event

M = TypeVar("M", bound=RedisCacheManager)
S = TypeVar("S", bound=SyncRedisCacheManager)


class RecordingSink:
    """An emit function that validates every event against the contract and keeps it."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(
        self,
        namespace: str,
        key: str,
        op: str,
        outcome: str,
        latency_us: int = 0,
        size_bytes: int = 0,
        ttl: int | None = None,
        user: str | None = None,
        session: str | None = None,
        tags: Any = None,
        warmed: bool = False,
        ts: float | None = None,
        raw_bytes: int = 0,
        warm_path: str | None = None,
        joined: bool = False,
    ) -> None:
        event = {
            "ts": time.time() if ts is None else ts,
            "namespace": namespace,
            "key": key,
            "op": op,
            "outcome": outcome,
            "latency_us": latency_us,
            "size_bytes": size_bytes,
            "raw_bytes": raw_bytes,
            "ttl": ttl,
            "user": user,
            "session": session,
            "tags": list(tags) if tags else [],
            "warmed": warmed,
            "warm_path": warm_path,
            "joined": joined,
            "client": "tests",
        }
        self.events.append(validate_access_event(event))

    def of(self, op: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if (op is None or e["op"] == op) and (key is None or e["key"] == key)
        ]

    def clear(self) -> None:
        self.events.clear()


@dataclass
class Backend:
    """Where the clients of a test connect: one Redis server or a Redis Cluster."""

    name: str
    server: RedisServer | None = None
    cluster: RedisClusterServers | None = None
    prefixes: list[str] = field(default_factory=list)

    def settings(self, **overrides: Any) -> Settings:
        prefix = overrides.pop("redis_key_prefix", None) or f"t{uuid.uuid4().hex[:10]}:"
        self.prefixes.append(prefix)
        values: dict[str, Any] = {
            "redis_key_prefix": prefix,
            "emitter_enabled": False,
            "redis_retry_delay_ms": 10,
            "redis_max_retries": 2,
            "redis_socket_timeout": 2.0,
        }
        if self.cluster is not None:
            values["redis_enable_clustering"] = True
            values["redis_cluster_nodes"] = ",".join(
                f"{host}:{port}" for host, port in self.cluster.startup_nodes
            )
        else:
            assert self.server is not None
            values["redis_host"] = self.server.host
            values["redis_port"] = self.server.port
        values.update(overrides)
        return Settings(**values)

    def raw(self) -> redis.Redis | redis.cluster.RedisCluster:
        """A plain redis-py client on the same servers, to look behind the cache's back."""
        if self.cluster is not None:
            host, port = self.cluster.startup_nodes[0]
            return redis.cluster.RedisCluster(host=host, port=port)
        assert self.server is not None
        return redis.Redis(host=self.server.host, port=self.server.port)

    def cleanup(self) -> None:
        if not self.prefixes:
            return
        client = self.raw()
        try:
            for prefix in self.prefixes:
                doomed = list(client.scan_iter(match=escape_glob(prefix) + "*", count=1000))
                for key in doomed:
                    client.delete(key)
        finally:
            client.close()


@pytest.fixture(
    params=["single", pytest.param("cluster", marks=pytest.mark.cluster)],
)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The session's single Redis server, then the session's 3-node Redis Cluster."""
    if request.param == "cluster":
        chosen = Backend("cluster", cluster=request.getfixturevalue("redis_cluster"))
    else:
        chosen = Backend("single", server=request.getfixturevalue("redis_server"))
    yield chosen
    chosen.cleanup()


@pytest.fixture
def single(redis_server: RedisServer) -> Iterator[Backend]:
    """The session's single Redis server only."""
    chosen = Backend("single", server=redis_server)
    yield chosen
    chosen.cleanup()


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


MakeCache = Callable[..., Any]


@pytest.fixture
async def make_cache(sink: RecordingSink) -> AsyncIterator[MakeCache]:
    """``make_cache(backend, cls=RedisCacheManager, **settings)``: a client, closed afterwards.

    Its events go to ``sink`` unless the settings enable the Kafka emitter.
    """
    made: list[RedisCacheManager] = []

    def make(backend: Backend, cls: type[M] = RedisCacheManager, **overrides: Any) -> M:  # type: ignore[assignment]
        kwargs = {k: overrides.pop(k) for k in list(overrides) if k in _CLIENT_KWARGS}
        settings = backend.settings(**overrides)
        cache = cls(settings, **kwargs)
        if not settings.emitter_enabled:
            cache.core.emit = sink
        made.append(cache)
        return cache

    yield make
    for cache in made:
        await cache.close()


@pytest.fixture
def make_sync_cache(sink: RecordingSink) -> Iterator[MakeCache]:
    """The blocking twin of ``make_cache``."""
    made: list[SyncRedisCacheManager] = []

    def make(backend: Backend, cls: type[S] = SyncRedisCacheManager, **overrides: Any) -> S:  # type: ignore[assignment]
        kwargs = {k: overrides.pop(k) for k in list(overrides) if k in _CLIENT_KWARGS}
        settings = backend.settings(**overrides)
        cache = cls(settings, **kwargs)
        if not settings.emitter_enabled:
            cache.core.emit = sink
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


_CLIENT_KWARGS = frozenset(
    {
        "redis",
        "emitter",
        "max_connections",
        "breaker_cooldown",
        "early_refresh",
        "refresh_beta",
        "tracked_keys",
        "on_error",
        "loaders",
        "edge_warming",
    }
)


@pytest.fixture(scope="module")
def own_kafka() -> Iterator[KafkaServer]:
    """A Kafka broker of the module's own, for tests that stop and restart it."""
    with DevStack(kafka=True, redis=False) as stack:
        assert stack.kafka is not None
        if not stack.kafka.managed:
            pytest.skip("KAFKA_BOOTSTRAP_SERVERS names an external broker; cannot stop it")
        yield stack.kafka

"""Real Kafka and Redis for the integration tests, from `pipeline.devstack`.

One Kafka broker and one Redis server serve the whole session (a broker start is
the costly part, ~1-2 s); the Redis Cluster and the extra Redis servers live in a
second, lazily used stack, so a test that needs only them never starts Kafka.
Every server is stopped at session end (and, failing that, at interpreter exit).

The servers' addresses are *not* exported to os.environ: unit tests of config
defaults run in the same session. Use ``devstack.env()`` with ``monkeypatch`` when a
test needs them in the environment.

Set ``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_HOST`` (+ ``REDIS_PORT``) to run the tests
against servers of your own; tests that must stop or restart a server then skip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.devstack import DevStack, KafkaServer, RedisClusterServers, RedisServer

_HERE = Path(__file__).resolve().parent

RedisFactory = Callable[..., RedisServer]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration `integration`, and cluster users `cluster`."""
    for item in items:
        if _HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)
            if "redis_cluster" in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def devstack() -> Iterator[DevStack]:
    """The session's Kafka + Redis (or the user's, when the env vars name them)."""
    with DevStack(kafka=True, redis=True) as stack:
        yield stack


@pytest.fixture(scope="session")
def kafka_server(devstack: DevStack) -> KafkaServer:
    assert devstack.kafka is not None
    return devstack.kafka


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_server: KafkaServer) -> str:
    return kafka_server.bootstrap_servers


@pytest.fixture(scope="session")
def redis_server(devstack: DevStack) -> RedisServer:
    assert devstack.redis is not None
    return devstack.redis


@pytest.fixture(scope="session")
def extra_servers() -> Iterator[DevStack]:
    """A stack without main servers that owns the extra Redis servers and clusters."""
    with DevStack(kafka=False, redis=False) as stack:
        yield stack


@pytest.fixture(scope="session")
def redis_cluster(extra_servers: DevStack) -> Iterator[RedisClusterServers]:
    """A 3-master Redis Cluster, started the first time a test asks for it."""
    cluster = extra_servers.start_redis_cluster(3)
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_factory(extra_servers: DevStack) -> Iterator[RedisFactory]:
    """Start isolated Redis servers: ``redis_factory(maxmemory="1mb", policy="allkeys-lru")``.

    Each is stopped when the test ends.
    """
    started: list[RedisServer] = []

    def make(*, maxmemory: str | None = None, policy: str | None = None) -> RedisServer:
        server = extra_servers.start_redis(maxmemory=maxmemory, policy=policy)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()

"""Authenticated transports end to end: Kafka SASL (in clear and over TLS), a Redis ACL
user, and Redis over TLS.

A broker of its own requires SASL PLAIN (a SASL_PLAINTEXT listener, then a
SASL_SSL one with a self-signed certificate that the clients are given as their
CA file), and the session's Redis gets an ACL user confined to this test's key prefix. The
worker (Faust, its admin and snapshot clients, its Redis clients) and the
application's client (its Redis pool and its event emitter) all connect with
the credentials from the environment; the secrets appear in no log and no repr. A
Redis of its own then speaks only TLS, and the worker and the client reach it with
``REDIS_TLS`` and its certificate as their CA file.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from pipeline.client import IntelligentCache
from pipeline.config import Settings, load_settings
from pipeline.devstack import DevStack, KafkaServer, RedisServer
from pipeline.devstack.redis import find_tls_redis_binary
from tests.integration.pipeline.conftest import NAMESPACE, StartWorker

KAFKA_USERS = {"broker": "broker-secret-1", "app": "app-secret-2"}
REDIS_PASSWORD = "redis-secret-3"


@pytest.fixture(scope="module", params=["SASL_PLAINTEXT", "SASL_SSL"])
def sasl_kafka(request: pytest.FixtureRequest) -> Iterator[KafkaServer]:
    tls = request.param == "SASL_SSL"
    if tls and shutil.which("openssl") is None:
        pytest.skip("the TLS broker's certificate needs openssl (Debian's openssl package)")
    with DevStack(kafka=True, redis=False, kafka_sasl_users=KAFKA_USERS, kafka_tls=tls) as stack:
        assert stack.kafka is not None
        assert stack.kafka.security_protocol == request.param
        yield stack.kafka


@pytest.fixture
def acl_user(settings: Settings) -> Iterator[str]:
    """A Redis ACL user that may touch only this test's keys."""
    name = f"cc-{uuid.uuid4().hex[:8]}"
    admin = redis.Redis(host=settings.redis_host, port=settings.redis_port)
    admin.acl_setuser(
        name,
        enabled=True,
        passwords=[f"+{REDIS_PASSWORD}"],
        keys=[f"{settings.redis_key_prefix}*"],
        commands=["+@all"],
    )
    try:
        yield name
    finally:
        admin.acl_deluser(name)
        admin.close()


async def _traffic(settings: Settings, reads: int, read_line: bool = False) -> dict[str, Any]:
    """``reads`` reads of 20 keys; ``read_line``: once its read line is connected."""
    cache = IntelligentCache(settings, early_refresh=False)
    try:
        if read_line:  # a first read connects the line (with the same credentials)
            await cache.get(NAMESPACE, "first", enable_prediction=False)  # no event
            deadline = time.monotonic() + 10
            while not (await cache.get_stats())["read_line"]["connected"]:
                assert time.monotonic() < deadline, "the read line did not connect"
                await asyncio.sleep(0.01)
        for i in range(reads):
            assert await cache.get(NAMESPACE, f"k{i % 20}", fallback_data=lambda i=i: i) is not None
        assert cache.emitter is not None
        delivered = await cache.emitter.flush(10.0)
        stats = await cache.get_stats()
        return {"delivered": delivered, **stats}
    finally:
        await cache.close()


@pytest.mark.timeout(240)
def test_worker_and_client_use_kafka_sasl_and_a_redis_acl_user(
    sasl_kafka: KafkaServer,
    acl_user: str,
    start_worker: StartWorker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secure = {
        "KAFKA_BOOTSTRAP_SERVERS": sasl_kafka.bootstrap_servers,
        "KAFKA_SECURITY_PROTOCOL": sasl_kafka.security_protocol,
        "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SASL_USERNAME": "app",
        "KAFKA_SASL_PASSWORD": KAFKA_USERS["app"],
        "REDIS_USERNAME": acl_user,
        "REDIS_PASSWORD": REDIS_PASSWORD,
    }
    if sasl_kafka.tls is not None:
        secure["KAFKA_SSL_CA_FILE"] = str(sasl_kafka.tls.cert)
    for name, value in secure.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert KAFKA_USERS["app"] not in repr(settings)
    assert REDIS_PASSWORD not in repr(settings)

    worker = start_worker(**secure)
    worker.wait_ready()
    client = asyncio.run(_traffic(settings, 100, read_line=True))
    assert client["delivered"] is True
    assert client["client"]["errors"] == 0
    assert client["read_line"]["reads"] >= 100  # the read line authenticated as the ACL user
    assert client["redis"]["memory"]["used_memory"] > 0  # INFO, as the ACL user
    deadline = time.monotonic() + 60
    while True:  # the events went through the SASL broker to the worker
        total = worker.monitor()["namespaces"].get(NAMESPACE, {}).get("total", {})
        if total.get("hits", 0) + total.get("misses", 0) == 100:
            break
        assert time.monotonic() < deadline, total
        time.sleep(0.5)

    if sasl_kafka.tls is not None:
        # Without the broker's certificate as CA, TLS refuses it: nothing is delivered.
        monkeypatch.delenv("KAFKA_SSL_CA_FILE")
        untrusted = asyncio.run(_traffic(load_settings(), 5))
        assert untrusted["delivered"] is False
        assert untrusted["client"]["errors"] == 0
        monkeypatch.setenv("KAFKA_SSL_CA_FILE", str(sasl_kafka.tls.cert))

    # A wrong Kafka password: the cache still serves, the events are not delivered.
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "wrong")
    refused = asyncio.run(_traffic(load_settings(), 5))
    assert refused["delivered"] is False
    assert refused["client"]["errors"] == 0

    # Outside its key prefix the ACL user is refused: the credentials were really used.
    user = redis.Redis(
        host=settings.redis_host,
        port=settings.redis_port,
        username=acl_user,
        password=REDIS_PASSWORD,
    )
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.get("someone-else:key")
    finally:
        user.close()
    log = worker.log_path.read_text(errors="replace")
    for secret in (*KAFKA_USERS.values(), REDIS_PASSWORD):
        assert secret not in log


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[RedisServer]:
    """A Redis of its own whose port speaks only TLS (self-signed certificate)."""
    if shutil.which("openssl") is None:
        pytest.skip("the TLS server's certificate needs openssl (Debian's openssl package)")
    if find_tls_redis_binary() is None:
        pytest.skip("no redis-server built with TLS here (Debian's redis-tools package has one)")
    with DevStack(kafka=False, redis=False) as stack:
        yield stack.start_redis(tls=True)


@pytest.mark.timeout(240)
def test_worker_and_client_use_redis_over_tls(
    tls_redis: RedisServer, start_worker: StartWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tls_redis.tls is not None
    secure = {
        "REDIS_HOST": tls_redis.host,
        "REDIS_PORT": str(tls_redis.port),
        "REDIS_TLS": "true",
        "REDIS_TLS_CA_FILE": str(tls_redis.tls.cert),
    }
    for name, value in secure.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    worker = start_worker(**secure)
    worker.wait_ready()
    client = asyncio.run(_traffic(settings, 100, read_line=True))
    assert client["client"]["errors"] == 0
    assert client["read_line"]["reads"] >= 100  # the read line speaks TLS too
    assert client["redis"]["memory"]["used_memory"] > 0  # INFO over TLS
    # The worker's own Redis clients talk TLS too: it answers health checks and
    # publishes the smart TTLs it learns (20 keys read 5 times each) into that Redis.
    reader = redis.Redis(
        host=tls_redis.host, port=tls_redis.port, ssl=True, ssl_ca_certs=str(tls_redis.tls.cert)
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            doc = worker.monitor()
            published = reader.hlen(f"{settings.redis_key_prefix}#ttl:{NAMESPACE}")
            if doc.get("redis_health", {}).get("healthy") and published:
                break
            assert time.monotonic() < deadline, (doc.get("redis_health"), published)
            time.sleep(0.5)
    finally:
        reader.close()
    # The port speaks only TLS: a plaintext client is not served.
    plain = redis.Redis(host=tls_redis.host, port=tls_redis.port, socket_timeout=2)
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            plain.ping()
    finally:
        plain.close()
    # Without the server's certificate as CA, TLS refuses it: the cache serves from
    # the loader and counts the Redis errors, nothing more.
    monkeypatch.delenv("REDIS_TLS_CA_FILE")
    untrusted = asyncio.run(_traffic(load_settings(), 5))
    assert untrusted["client"]["hits"] == 0

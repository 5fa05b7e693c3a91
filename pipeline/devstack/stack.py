"""The DevStack: Kafka + Redis for a test session, the demo or `cachecast devstack`.

Owns :class:`DevStack`, which starts (or adopts, when the environment names external
servers) a broker and a Redis server, extra isolated Redis servers and clusters, and
stops all it started; and the sweep of temp dirs left by devstacks that were killed
before they could clean up.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

from pipeline.devstack.kafka import KafkaServer, _launch_kafka
from pipeline.devstack.process import DevStackError, _owned_dirs
from pipeline.devstack.redis import (
    REDIS_POLICIES,
    RedisClusterServers,
    RedisServer,
    _check_maxmemory,
    _form_cluster,
    _launch_redis,
)

logger = logging.getLogger(__name__)

_ROOT_PREFIX = "cachecast-devstack-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale_roots() -> None:
    """Remove the temp dirs of devstacks whose process was killed before cleaning up.

    SIGKILL skips atexit; the servers die with their parent (PDEATHSIG) but their
    data dirs would pile up in /tmp. Only dirs whose recorded owner is dead go.
    """
    for candidate in Path(tempfile.gettempdir()).glob(_ROOT_PREFIX + "*"):
        try:
            owner = int((candidate / ".owner").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # not ours, or being created right now
        if not _pid_alive(owner):
            shutil.rmtree(candidate, ignore_errors=True)


class DevStack:
    """Kafka + Redis for a test session, the demo or `cachecast devstack`.

    A context manager that owns what it started: ``stop()`` (or leaving the ``with``
    block) stops every server it started, extra Redis servers and clusters
    included, and removes its temp dir. Servers the user pointed at through
    ``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_HOST`` (+ ``REDIS_PORT``) are used as they
    are (``kind="external"``). ``environ`` replaces ``os.environ`` for those lookups.

    With ``workdir`` the servers' directories (data, configs, logs) go there and are
    kept after stop for inspection; without it a temp dir is used and removed.
    """

    def __init__(
        self,
        *,
        kafka: bool = True,
        redis: bool = True,
        redis_maxmemory: str | None = None,
        redis_policy: str | None = None,
        kafka_partitions: int = 1,
        workdir: Path | None = None,
        environ: Mapping[str, str] | None = None,
        kafka_sasl_users: Mapping[str, str] | None = None,
        kafka_tls: bool = False,
    ) -> None:
        if kafka_partitions < 1:
            raise ValueError("kafka_partitions must be >= 1")
        if redis_policy is not None and redis_policy not in REDIS_POLICIES:
            raise ValueError(f"unknown maxmemory-policy {redis_policy!r}")
        if redis_maxmemory is not None:
            _check_maxmemory(redis_maxmemory)
        self.want_kafka = kafka
        self.want_redis = redis
        self.redis_maxmemory = redis_maxmemory
        self.redis_policy = redis_policy
        self.kafka_partitions = kafka_partitions
        self.kafka_sasl_users = kafka_sasl_users
        self.kafka_tls = kafka_tls
        self.workdir = workdir
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.kafka: KafkaServer | None = None
        self.redis: RedisServer | None = None
        self.extra_redis: list[RedisServer] = []
        self.clusters: list[RedisClusterServers] = []
        self._root: Path | None = None
        self._lock = threading.Lock()

    # -- lifecycle

    def _ensure_root(self) -> Path:
        if self._root is None:
            if self.workdir is not None:
                self.workdir.mkdir(parents=True, exist_ok=True)
                self._root = self.workdir
            else:
                _sweep_stale_roots()
                self._root = Path(tempfile.mkdtemp(prefix=_ROOT_PREFIX))
                (self._root / ".owner").write_text(f"{os.getpid()}\n")
                _owned_dirs.add(self._root)
        return self._root

    def start(self) -> DevStack:
        """Start (or adopt, when external) Redis then Kafka; return once both answer."""
        try:
            if self.want_redis and self.redis is None:
                self.redis = self._external_redis() or _launch_redis(
                    self._ensure_root(), maxmemory=self.redis_maxmemory, policy=self.redis_policy
                )
            if self.want_kafka and self.kafka is None:
                own = self.kafka_sasl_users or self.kafka_tls  # never the user's broker
                external = None if own else self._external_kafka()
                self.kafka = external or _launch_kafka(
                    self._ensure_root(),
                    partitions=self.kafka_partitions,
                    environ=self.environ,
                    sasl_users=self.kafka_sasl_users,
                    tls=self.kafka_tls,
                )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything this stack started; safe to call twice."""
        with self._lock:
            for cluster in self.clusters:
                cluster.stop()
            for server in self.extra_redis:
                server.stop()
            if self.kafka is not None:
                self.kafka.stop()
            if self.redis is not None:
                self.redis.stop()
            if self._root is not None and self._root in _owned_dirs:
                shutil.rmtree(self._root, ignore_errors=True)
                _owned_dirs.discard(self._root)
                self._root = None

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- external servers

    def _external_kafka(self) -> KafkaServer | None:
        bootstrap = self.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
        if not bootstrap:
            return None
        return KafkaServer(bootstrap_servers=bootstrap, kind="external")

    def _external_redis(self) -> RedisServer | None:
        host = self.environ.get("REDIS_HOST", "").strip()
        if not host:
            return None
        port_text = self.environ.get("REDIS_PORT", "").strip() or "6379"
        try:
            port = int(port_text)
        except ValueError as exc:
            raise DevStackError(f"REDIS_PORT must be a number, not {port_text!r}") from exc
        return RedisServer(host=host, port=port, kind="external")

    # -- extra servers

    def start_redis(
        self, *, maxmemory: str | None = None, policy: str | None = None, tls: bool = False
    ) -> RedisServer:
        """Start an extra, isolated Redis (e.g. to test eviction); stopped with the stack.

        ``tls``: its port speaks only TLS, with a self-signed certificate
        (``server.tls.cert``); needs a redis-server built with TLS
        (:func:`~pipeline.devstack.redis.find_tls_redis_binary`).
        """
        server = _launch_redis(self._ensure_root(), maxmemory=maxmemory, policy=policy, tls=tls)
        self.extra_redis.append(server)
        return server

    def start_redis_cluster(self, n: int = 3) -> RedisClusterServers:
        """Start ``n`` cluster-enabled Redis nodes and form a cluster; stopped with the stack."""
        if n < 1:
            raise ValueError("a cluster needs at least one node")
        started = time.monotonic()
        cluster = RedisClusterServers(nodes=[])
        self.clusters.append(cluster)
        root = Path(tempfile.mkdtemp(prefix="cluster-", dir=self._ensure_root()))
        try:
            for _ in range(n):
                cluster.nodes.append(_launch_redis(root, cluster_enabled=True))
            _form_cluster(cluster.nodes)
        except BaseException:
            cluster.stop()
            raise
        logger.info("Redis Cluster of %d nodes ready in %.2f s", n, time.monotonic() - started)
        return cluster

    # -- reporting

    def env(self) -> dict[str, str]:
        """The environment a cachecast process needs to use these servers."""
        env: dict[str, str] = {}
        if self.kafka is not None:
            env["KAFKA_BOOTSTRAP_SERVERS"] = self.kafka.bootstrap_servers
        if self.redis is not None:
            env["REDIS_HOST"] = self.redis.host
            env["REDIS_PORT"] = str(self.redis.port)
        return env

    def servers(self) -> Iterator[KafkaServer | RedisServer]:
        """The stack's main servers (not the extra ones)."""
        if self.kafka is not None:
            yield self.kafka
        if self.redis is not None:
            yield self.redis

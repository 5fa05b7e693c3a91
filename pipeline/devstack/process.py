"""Ports, processes and the base of every server the devstack runs.

Owns what all servers share: free loopback ports outside the kernel's ephemeral range
(:func:`free_port`), :class:`_Process`
(one server alone in its own session and process group, stopped by PID: SIGTERM, then
SIGKILL after a timeout), the clean-up at interpreter exit, the startup-failure errors
that carry the server's log tail, and :class:`ManagedServer`, the start/wait/stop/restart
skeleton that :class:`~pipeline.devstack.kafka.KafkaServer` and
:class:`~pipeline.devstack.redis.RedisServer` fill in.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, TypeVar

from pipeline.forking import die_with_parent

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

_ADDRESS_IN_USE = re.compile(r"Address already in use|Address in use|AddrInUse|EADDRINUSE")

T = TypeVar("T")


class DevStackError(RuntimeError):
    """A server could not be provided; the message says why and shows its log tail."""


class _AddressInUse(DevStackError):
    """The chosen port was taken between picking it and the server binding it."""


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
                preexec_fn=die_with_parent(),
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


def _warn(message: str) -> None:
    """Log a warning and make sure it reaches stderr, exactly once.

    With no logging configured, Python's last-resort handler already writes warnings
    to stderr; when handlers are configured they may send it anywhere (a file, a
    capture), so it is printed as well: a degraded devstack must never go unnoticed.
    """
    logger.warning("%s", message)
    if logger.hasHandlers():
        print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- servers


class ManagedServer(ABC):
    """What a Kafka broker and a Redis server of ours share: start, wait, stop, restart.

    Starting writes the server's configuration, spawns it as a :class:`_Process`, and
    waits (against a deadline, watching that the process did not exit) until a probe
    says *this* process serves; on any failure, Ctrl-C included, the half-started
    process is stopped before the error goes on. Stopping is SIGTERM, then SIGKILL
    after a timeout. A restart is a stop, then a start on the same port(s).

    The subclasses are dataclasses and own all the state (``kind``, ``pid``,
    ``directory``, ``_proc``): this base has no fields, so their field order, defaults
    and reprs are theirs alone. They set their default timeouts (``start_timeout``,
    ``stop_timeout``) and fill in the hooks below.
    """

    if TYPE_CHECKING:
        kind: str
        pid: int | None
        directory: Path | None
        _proc: _Process | None

    #: The server's log file in ``directory`` (its stdout and stderr).
    _log_name: ClassVar[str]
    #: What "cannot start the external ..." calls the server.
    _noun: ClassVar[str]
    #: Seconds between two readiness probes.
    _poll_interval: ClassVar[float]

    # -- hooks

    @property
    @abstractmethod
    def _label(self) -> str:
        """The server in messages, logs and the process name, e.g. ``Kafka (apache)``."""

    @property
    @abstractmethod
    def _address(self) -> str:
        """Where clients reach the server, e.g. ``127.0.0.1:9092``."""

    def _runnable(self) -> bool:
        """False when this object lacks what it needs to run its server (then it is external)."""
        return True

    @abstractmethod
    def _prepare(self, directory: Path) -> tuple[list[str], Mapping[str, str] | None]:
        """Write the configuration; return the server's argv and environment (None: ours)."""

    @abstractmethod
    def _ready(self, proc: _Process, remaining: float) -> bool:
        """One readiness probe, bounded by about ``remaining`` seconds.

        True once *this* process serves: an open port alone may be a half-started
        server, or somebody else's.
        """

    def _after_stop(self) -> None:  # noqa: B027 (optional: nothing to do by default)
        """Run once the process is gone: after ``stop()``, and after a failed start."""

    def _retry_start(self, error: BaseException, argv: Sequence[str]) -> bool:
        """True when a start that failed with ``error`` is worth one more try.

        Called after the failed process was stopped; a True answer means the hook
        changed what the next try runs.
        """
        return False

    # -- the public API (each server class sets its default timeouts)

    #: Default seconds ``start``/``restart`` wait for the server to serve, and
    #: ``stop`` waits before SIGKILL.
    start_timeout: ClassVar[float]
    stop_timeout: ClassVar[float]

    def start(self, timeout: float | None = None) -> None:
        """Start the server on its port(s) and return once it serves (see :meth:`_ready`)."""
        self._start(self.start_timeout if timeout is None else timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Stop the server (SIGTERM, SIGKILL after ``timeout``); no-op when external/stopped."""
        self._stop(self.stop_timeout if timeout is None else timeout)

    def restart(self, timeout: float | None = None) -> None:
        """Stop, then start on the same port(s)."""
        self._require_managed("restart")
        self.stop()
        self.start(timeout)

    @property
    def managed(self) -> bool:
        """True when this process started the server and may stop it."""
        return self.kind != "external"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.alive

    @property
    def log_path(self) -> Path | None:
        return None if self.directory is None else self.directory / self._log_name

    def log_tail(self, lines: int = 40) -> str:
        return "" if self.log_path is None else _tail(self.log_path, lines)

    def _require_managed(self, action: str) -> Path:
        if self.kind == "external" or self.directory is None or not self._runnable():
            raise DevStackError(f"cannot {action} the external {self._noun} at {self._address}")
        return self.directory

    # -- the shared lifecycle

    def _start(self, timeout: float) -> None:
        directory = self._require_managed("start")
        if self.running:
            return
        started = time.monotonic()
        argv, env = self._prepare(directory)
        proc = _Process(
            self._label, argv, cwd=directory, log_path=directory / self._log_name, env=env
        )
        self._proc, self.pid = proc, proc.pid
        try:
            self._wait_ready(proc, started + timeout)
        except BaseException as exc:  # including Ctrl-C: never leave a half-started server
            self._proc, self.pid = None, None
            proc.stop(timeout=5.0)
            self._after_stop()
            if self._retry_start(exc, argv):
                self.start(timeout=timeout)
                return
            raise
        logger.info(
            "%s serving at %s, pid %d, in %.3f s",
            self._label,
            self._address,
            proc.pid,
            time.monotonic() - started,
        )

    def _wait_ready(self, proc: _Process, deadline: float) -> None:
        while True:
            status = proc.exit_status()
            if status is not None:
                raise _startup_failure(self._label, proc, status)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DevStackError(
                    f"{self._label} did not answer at {self._address} in time; "
                    f"log {proc.log_path}:\n{proc.log_tail()}"
                )
            if self._ready(proc, remaining):
                return
            time.sleep(self._poll_interval)

    def _stop(self, timeout: float) -> None:
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        proc.stop(timeout=timeout)
        self.pid = None
        self._after_stop()


ServerT = TypeVar("ServerT", bound=ManagedServer)


def start_on_free_ports(make: Callable[[], ServerT], attempts: int, what: str) -> ServerT:
    """Start the server ``make()`` builds (on freshly picked ports) and return it.

    A port can be taken between picking it and the server binding it; then a new
    server is made, on other ports, up to ``attempts`` times.
    """
    for attempt in range(1, attempts + 1):
        server = make()
        try:
            server.start()
            return server
        except _AddressInUse:
            if attempt == attempts:
                raise
            logger.info("%s port taken before it could bind; retrying on other ports", what)
    raise AssertionError("unreachable")

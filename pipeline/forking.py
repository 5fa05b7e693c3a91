"""Compute blobs in a forked child, so the caller's event loop pauses only for the fork.

A checkpoint has to see the models as they are between two records, and
encoding them takes seconds once they are full (a predict engine filled to the
default bounds: about 3 s to build its state and 3 s to encode it). On the
event loop that stalls every agent, timer and page of the worker; in a thread
it still holds the GIL. ``fork()`` copies the process in milliseconds (the
pages are shared copy-on-write), so the child sees the models exactly as they
were, encodes them on its own core, and streams the blobs back through a pipe
while the parent goes on learning. This is how Redis writes its RDB snapshots.

Only the thread that forks lives on in the child; a lock another thread held at
that moment stays held there. So the child runs nothing but the given function
(pure computation: building state documents, MessagePack and zstd) and never
returns into the caller's code: it restores the default signal handling (the
parent's asyncio wakeup fd must not receive its signals), dies with its parent,
disables the garbage collector (finalizers of the parent's objects must not run
in it), writes framed results and leaves with ``os._exit``. Its only effects are
the bytes it writes to its pipe.

Frames are ``>iQ`` (tag, length) followed by the payload; tags from 0 up are
the caller's, :data:`_ERROR` carries the child's exception as text and
:data:`_END` says that every result was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import NoReturn

__all__ = ["ChildFailed", "ForkedChild", "die_with_parent", "fork_available", "fork_child"]

_HEADER = struct.Struct(">iQ")
_ERROR = -1
_END = -2
#: How long a child that closed its pipe gets to exit, or a killed one to be reaped.
_EXIT_GRACE_S = 5.0


class ChildFailed(RuntimeError):
    """The child raised, died, or did not finish in time; nothing it sent is used."""


def fork_available() -> bool:
    """Whether this platform can fork (POSIX)."""
    return hasattr(os, "fork")


def die_with_parent() -> Callable[[], None] | None:
    """A child-side hook that makes a child process die with us, or None where unsafe.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits, so it is
    only set from the main thread (which lives as long as the process); elsewhere the
    caller needs another safety net.
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


class ForkedChild:
    """A running child: :meth:`result` collects what it produced (once)."""

    def __init__(self, pid: int, read_fd: int) -> None:
        self.pid = pid
        self._read_fd: int | None = read_fd
        self._killed = False

    async def result(self, timeout: float) -> list[tuple[int, bytes]]:
        """The (tag, blob) pairs the child produced, in its order.

        Raises :class:`ChildFailed` if it raised, died before its end frame, or
        took longer than ``timeout`` seconds. A child that took too long, or
        whose result is no longer awaited (cancelled), is killed. The child is
        reaped and its pipe closed before this returns.
        """
        try:
            return await asyncio.wait_for(self._read(), timeout)
        except TimeoutError:
            self._kill()
            raise ChildFailed(f"snapshot child took longer than {timeout:g} s; killed") from None
        except asyncio.CancelledError:
            self._kill()
            raise
        finally:
            self._close_pipe()
            await self._reap()

    async def _read(self) -> list[tuple[int, bytes]]:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        assert self._read_fd is not None, "result() is collected once"
        pipe = os.fdopen(self._read_fd, "rb", buffering=0)
        self._read_fd = None  # the transport owns it now
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        results: list[tuple[int, bytes]] = []
        try:
            while True:
                try:
                    tag, length = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                    payload = await reader.readexactly(length)
                except asyncio.IncompleteReadError:
                    raise ChildFailed("snapshot child exited before finishing") from None
                if tag == _END:
                    return results
                if tag == _ERROR:
                    raise ChildFailed(payload.decode("utf-8", "replace"))
                results.append((tag, payload))
        finally:
            transport.close()

    def _close_pipe(self) -> None:
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None

    async def _reap(self) -> None:
        """Wait for the child to exit (it does as soon as it has written); kill it if not."""
        deadline = time.monotonic() + _EXIT_GRACE_S
        while not self._exited():
            if time.monotonic() >= deadline:
                if not self._killed:
                    self._kill()
                    deadline = time.monotonic() + _EXIT_GRACE_S
                    continue
                return  # killed and still not gone (stuck in the kernel): leave it
            await asyncio.sleep(0.005)

    def _exited(self) -> bool:
        """Reap the child if it has exited (never blocks)."""
        try:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped already (here, or SIGCHLD ignored)
            return True
        return pid != 0

    def _kill(self) -> None:
        """SIGKILL the child (reaped by :meth:`_reap`, never waited for here)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self._killed = True


def fork_child(produce: Callable[[], Iterable[tuple[int, bytes]]]) -> ForkedChild:
    """Fork now and run ``produce`` in the child; the parent gets a handle at once.

    ``produce`` sees memory as it is at this call. Raises ``OSError`` if the
    fork fails (for example out of memory): the caller can then run it in-line.
    """
    on_parent_death = die_with_parent()
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:  # pragma: no cover - runs in the child, which leaves with os._exit
        os.close(read_fd)
        _run_child(write_fd, produce, on_parent_death)
    os.close(write_fd)
    return ForkedChild(pid, read_fd)


def _run_child(  # pragma: no cover - runs in the child
    write_fd: int,
    produce: Callable[[], Iterable[tuple[int, bytes]]],
    on_parent_death: Callable[[], None] | None,
) -> NoReturn:
    code = 1
    try:
        _quiet_signals()
        if on_parent_death is not None:
            on_parent_death()
        gc.disable()
        for tag, blob in produce():
            _write_frame(write_fd, tag, blob)
        _write_frame(write_fd, _END, b"")
        code = 0
    except BaseException as exc:  # reported to the parent; the child must not unwind into it
        with contextlib.suppress(BaseException):  # the parent is gone: nothing to tell
            _write_frame(write_fd, _ERROR, repr(exc)[:1000].encode("utf-8", "replace"))
    finally:
        os._exit(code)


def _quiet_signals() -> None:  # pragma: no cover - runs in the child
    """Default signal handling, and no wakeup fd: the parent's loop must not hear the
    child's signals."""
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
    except ValueError:  # forked from a thread other than the main one
        pass


def _write_frame(fd: int, tag: int, payload: bytes) -> None:  # pragma: no cover - child
    for part in (_HEADER.pack(tag, len(payload)), payload):
        data = memoryview(part)
        while data:
            data = data[os.write(fd, data) :]

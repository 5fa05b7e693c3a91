"""A computation in a forked child: it sees memory as at the fork, and the parent's
loop keeps running while it works."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import pytest

from pipeline.forking import ChildFailed, fork_available, fork_child

pytestmark = pytest.mark.skipif(not fork_available(), reason="needs os.fork")


def _open_fds() -> int | None:
    """How many file descriptors this process has open (None where /proc is missing)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except FileNotFoundError:
        return None


async def test_the_child_sees_memory_as_it_was_at_the_fork() -> None:
    items = [b"a", b"bb"]

    def produce() -> Iterator[tuple[int, bytes]]:
        time.sleep(0.2)  # the parent changes its copy meanwhile
        for number, item in enumerate(items):
            yield number, item * 1000

    child = fork_child(produce)
    items.append(b"ccc")
    items[0] = b"z"
    assert await child.result(30.0) == [(0, b"a" * 1000), (1, b"bb" * 1000)]


async def test_the_loop_runs_while_the_child_works() -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    def produce() -> Iterator[tuple[int, bytes]]:
        time.sleep(1.0)
        yield 0, b"done"

    ticker = asyncio.create_task(tick())
    try:
        assert await fork_child(produce).result(30.0) == [(0, b"done")]
    finally:
        ticker.cancel()
    assert ticks >= 20  # an in-line computation would have allowed one


async def test_large_results_cross_the_pipe_whole() -> None:
    blob = os.urandom(3 << 20)

    def produce() -> Iterator[tuple[int, bytes]]:
        yield 7, blob
        yield 9, b""

    assert await fork_child(produce).result(30.0) == [(7, blob), (9, b"")]


async def test_an_exception_in_the_child_reaches_the_parent_as_its_text() -> None:
    def produce() -> Iterator[tuple[int, bytes]]:
        yield 0, b"first"
        raise ValueError("model broke")

    with pytest.raises(ChildFailed, match="model broke"):
        await fork_child(produce).result(30.0)


async def test_a_child_that_dies_is_a_failure_not_a_short_result() -> None:
    def produce() -> Iterator[tuple[int, bytes]]:
        yield 0, b"first"
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(ChildFailed, match="exited before finishing"):
        await fork_child(produce).result(30.0)


async def test_a_child_over_its_time_is_killed() -> None:
    def produce() -> Iterator[tuple[int, bytes]]:
        time.sleep(60)
        yield 0, b"late"

    child = fork_child(produce)
    with pytest.raises(ChildFailed, match=r"longer than 0\.3 s"):
        await child.result(0.3)
    with pytest.raises(ProcessLookupError):  # killed and reaped: no such process any more
        os.kill(child.pid, 0)


async def test_a_child_whose_result_is_cancelled_is_killed_and_leaves_no_fd() -> None:
    def produce() -> Iterator[tuple[int, bytes]]:
        time.sleep(60)
        yield 0, b"late"

    fds = _open_fds()
    child = fork_child(produce)
    waiting = asyncio.ensure_future(child.result(30.0))
    await asyncio.sleep(0.1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    with pytest.raises(ProcessLookupError):
        os.kill(child.pid, 0)
    assert _open_fds() == fds

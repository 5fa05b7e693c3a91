"""How a client runs its I/O-free procedures: one driver for both twins.

The cache operations are *plans* (:mod:`pipeline.client.core`): generators that
yield a batch of Redis commands and get the replies back. The clients' own
procedures (a get's slow path, an edge warm, the write of a loaded value) are
generators of the same kind that may also yield a :data:`Step`: one of the
twin's own I/O methods and its arguments (``value = yield self._flight_value,
(flight,)``). Each twin answers a request with its own I/O: the asyncio twin's
methods return awaitables, the blocking twin's return results. This module
runs a procedure for either, so that the procedures, and the loop that feeds
them, are written once.

A reply that is an exception is thrown into the procedure at its ``yield``, so
``try``/``except`` and ``with`` work in a procedure as they do in the code they
replace.

>>> def plan():
...     reply = yield [("GET", "k")]
...     return reply[0].upper()
>>> run_blocking(plan(), lambda commands: [b"v"])
b'V'
>>> import asyncio
>>> async def execute(commands):
...     return [b"v"]
>>> asyncio.run(run(plan(), execute))
b'V'
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeAlias, TypeVar

__all__ = ["Procedure", "Step", "run", "run_blocking"]

T = TypeVar("T")
#: One of a twin's I/O methods and its arguments, as a procedure yields it.
Step: TypeAlias = tuple[Callable[..., Any], tuple[Any, ...]]
#: A procedure yields command batches or steps, gets their replies, returns a result.
Procedure: TypeAlias = Generator[Any, Any, T]


async def run(procedure: Procedure[T], call: Callable[[Any], Awaitable[Any]]) -> T:
    """Run ``procedure``, each request answered by ``await call(request)``."""
    try:
        request = next(procedure)
        while True:
            try:
                reply = await call(request)
            except BaseException as exc:  # thrown in: the procedure's handlers run
                request = procedure.throw(exc)
            else:
                request = procedure.send(reply)
    except StopIteration as done:
        result: T = done.value
        return result


class _Ready:
    """An awaitable that is already done: a blocking call's result, for :func:`run`."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        return self.value
        yield  # a generator that never suspends


def run_blocking(procedure: Procedure[T], call: Callable[[Any], Any]) -> T:
    """Run ``procedure``, each request answered by the blocking ``call(request)``.

    The same loop as :func:`run`: its coroutine never suspends, because every
    reply is already there, so it finishes at its first step.
    """
    runner = run(procedure, lambda request: _Ready(call(request)))
    try:
        runner.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    runner.close()
    raise RuntimeError("a blocking procedure was suspended")  # pragma: no cover

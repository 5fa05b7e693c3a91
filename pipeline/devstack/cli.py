"""``cachecast devstack``: serve Kafka and Redis from the command line until a signal.

Owns the subcommand: :func:`register` adds it and its options to the CLI, and
:func:`run_devstack` starts a :class:`~pipeline.devstack.stack.DevStack`, prints the
environment that points a cachecast process at it, watches the servers, and stops
everything on SIGINT/SIGTERM (or when a server dies).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType

from pipeline.devstack.kafka import KafkaServer
from pipeline.devstack.process import DevStackError
from pipeline.devstack.redis import REDIS_POLICIES, RedisServer
from pipeline.devstack.stack import DevStack


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

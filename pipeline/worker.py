"""``cachecast worker``: create the topics, then run the Faust worker with every agent."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from pipeline.config import ConfigError, load_settings
from pipeline.topics import ensure_topics

__all__ = ["register", "run_worker"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run a pipeline worker (observe, predict, writer, stats agents + web)",
        description="Run a cachecast worker. Settings come from the environment "
        "(KAFKA_BOOTSTRAP_SERVERS, REDIS_HOST, ...); start several to share the partitions.",
    )
    parser.add_argument("--web-port", type=int, default=None, help="HTTP port (default 6066)")
    parser.add_argument("--web-host", default=None, help="HTTP bind address")
    parser.add_argument("--without-web", action="store_true", help="no HTTP server")
    parser.add_argument(
        "--loglevel", default="warn", choices=["crit", "error", "warn", "info", "debug"]
    )
    parser.set_defaults(func=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    if args.web_port is not None:
        os.environ["CACHECAST_WEB_PORT"] = str(args.web_port)
    if args.web_host is not None:
        os.environ["CACHECAST_WEB_HOST"] = args.web_host
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    created = asyncio.run(ensure_topics(settings))
    if created:
        print(f"created topics: {', '.join(created)}", file=sys.stderr)

    from agents.main import app  # the agents read the settings at import

    argv = ["cachecast worker", "worker", "--loglevel", args.loglevel]
    if args.without_web:
        argv.append("--without-web")
    else:
        argv += ["--web-port", str(settings.web_port), "--web-host", settings.web_host]
    sys.argv = argv
    app.main()
    return 0  # app.main() exits the process itself

"""``cachecast worker``: create the topics, then run the Faust worker with every agent."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from pipeline.config import ConfigError, load_settings
from pipeline.forking import die_with_parent
from pipeline.topics import ensure_topics

__all__ = ["WorkerProcess", "register", "run_worker"]


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


WORKER_GC_THRESHOLDS = (50_000, 20, 20)


def run_worker(args: argparse.Namespace) -> int:
    flags: dict[str, Any] = {}  # the command line wins over the environment
    if args.web_port is not None:
        flags["web_port"] = args.web_port
    if args.web_host is not None:
        flags["web_host"] = args.web_host
    try:
        settings = load_settings(**flags)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    # Every access record becomes hundreds of short-lived dicts: with the default
    # thresholds (700, 10, 10) the collector runs every few records and doubled the
    # cost of decoding. Young collections every 50k allocations cost little memory.
    gc.set_threshold(*WORKER_GC_THRESHOLDS)
    created = asyncio.run(ensure_topics(settings))
    if created:
        print(f"created topics: {', '.join(created)}", file=sys.stderr)

    from agents import create_app  # faust and the agents load only for a worker

    app = create_app(settings).app

    argv = ["cachecast worker", "worker", "--loglevel", args.loglevel]
    if args.without_web:
        argv.append("--without-web")
    else:
        argv += ["--web-port", str(settings.web_port), "--web-host", settings.web_host]
    sys.argv = argv
    app.main()
    return 0  # app.main() exits the process itself


class WorkerProcess:
    """A ``cachecast worker`` in a child process: for the demo, tests and benchmarks.

    The worker runs in its own session; :meth:`stop` sends SIGTERM (a clean
    shutdown) and :meth:`kill` SIGKILL (a crash). It dies with the process that
    started it, as the devstack's servers do: a demo or test run killed outright
    leaves no worker behind.
    """

    def __init__(self, env: Mapping[str, str], log_path: Path, *, web_port: int) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.web_port = web_port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout: float = 90.0) -> WorkerProcess:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "worker", "--web-port", str(self.web_port)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        self.wait_ready(ready_timeout)
        return self

    def monitor(self, timeout: float = 5.0) -> dict[str, Any]:
        """The worker's /api/cache/monitor document."""
        url = f"http://127.0.0.1:{self.web_port}/api/cache/monitor"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            doc: dict[str, Any] = orjson.loads(response.read())
        return doc

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Until the worker answers and holds partitions (no rebalance in progress)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"worker exited ({code}); see {self.log_path}")
            try:
                doc = self.monitor(timeout=2)
                if doc.get("assigned_partitions", 0) > 0 and not doc.get("rebalancing", True):
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"worker not ready after {timeout:.0f}s; see {self.log_path}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def kill(self) -> None:
        """SIGKILL: the worker dies without committing or checkpointing."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

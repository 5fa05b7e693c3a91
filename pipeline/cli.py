"""The `cachecast` command line."""

from __future__ import annotations

import argparse
import sys

from pipeline import admin, demo, devstack, replay, worker
from pipeline.sim import cli as simulate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cachecast")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    devstack.register(sub)
    worker.register(sub)
    replay.register(sub)
    demo.register(sub)
    simulate.register(sub)
    admin.register(sub)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())

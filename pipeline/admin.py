"""Operator commands: ``cachecast status``, ``warm``, ``clear`` and ``tags``.

They call a worker's monitor API (``/api/cache/monitor``), at ``--url`` or
``http://CACHECAST_WEB_HOST:CACHECAST_WEB_PORT``. The actions send the bearer
token from ``CACHECAST_API_TOKEN`` (the worker refuses actions without it)::

    cachecast status                      # a table of every namespace, and health
    cachecast warm users 42 43            # load and write these keys now
    cachecast clear users                 # delete the namespace's keys
    cachecast tags users team:7           # delete the keys tagged team:7

Exit status: 0 done, 1 refused by the worker (401, 403, 400...), 2 the worker
could not be reached.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from typing import Any, TextIO

import orjson
from rich.console import Console
from rich.table import Table

from pipeline.config import load_settings

__all__ = ["ApiCallError", "call", "register", "render_status"]

_TIMEOUT_S = 30.0


class ApiCallError(Exception):
    """The monitor API refused a call (``status`` is the HTTP status, 0: unreachable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def call(
    url: str, method: str = "GET", query: str = "", body: Any = None, token: str | None = None
) -> dict[str, Any]:
    """One call of the monitor API at ``url``; its JSON answer, or :class:`ApiCallError`."""
    data = None if body is None else orjson.dumps(body)
    request = urllib.request.Request(
        url.rstrip("/") + "/api/cache/monitor" + query, data=data, method=method
    )
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            doc: dict[str, Any] = orjson.loads(response.read())
            return doc
    except urllib.error.HTTPError as error:
        try:
            message = str(orjson.loads(error.read()).get("error", error.reason))
        except (orjson.JSONDecodeError, AttributeError):
            message = str(error.reason)
        raise ApiCallError(error.code, f"the worker answered {error.code}: {message}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ApiCallError(0, f"cannot reach the worker at {url}: {reason}") from None


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}%"


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:,.0f}"


def render_status(doc: dict[str, Any], out: TextIO) -> None:
    """The ``?type=all`` document as tables: namespaces, then health."""
    console = Console(file=out, width=160, highlight=False, soft_wrap=True)
    table = Table(title=f"cachecast: worker {doc.get('worker', '?')}", title_justify="left")
    for name, justify in (
        ("namespace", "left"),
        ("events", "right"),
        ("hit ratio", "right"),
        ("p50 µs", "right"),
        ("p99 µs", "right"),
        ("warms written", "right"),
        ("warm precision", "right"),
        ("edge warms", "right"),
        ("edge precision", "right"),
        ("prediction precision", "right"),
        ("recall", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    namespaces: dict[str, Any] = doc.get("namespaces", {})
    for namespace in sorted(namespaces):
        total = namespaces[namespace].get("total", {})
        table.add_row(
            namespace,
            _num(total.get("events")),
            _pct(total.get("hit_ratio")),
            _num(total.get("latency_p50_us")),
            _num(total.get("latency_p99_us")),
            _num(total.get("warms_written")),
            _pct(total.get("warm_precision")),
            _num(total.get("edge_warms_written")),
            _pct(total.get("edge_warm_precision")),
            _pct(total.get("prediction_precision")),
            _pct(total.get("prediction_recall")),
        )
    if not namespaces:
        table.add_row("(no events yet)", *[""] * 10)
    console.print(table)
    health = doc.get("redis_health") or {}
    memory = (doc.get("redis") or {}).get("memory") or {}
    counters = doc.get("counters", {})
    console.print(
        f"redis: {'up' if health.get('healthy') else 'DOWN'}"
        f" ({health.get('latency_ms', '-')} ms), memory {_num(memory.get('used_memory'))} B"
        f" of {_num(memory.get('maxmemory')) if memory.get('maxmemory') else 'unlimited'};"
        f" kafka: {doc.get('assigned_partitions', '-')} partitions assigned,"
        f" consume lag {doc.get('consume_lag', '-')};"
        f" events {_num(counters.get('events', 0))},"
        f" dead letters {_num(counters.get('dead_letters', 0))}"
    )


def _run(args: argparse.Namespace) -> int:
    settings = load_settings()
    url = str(args.url) if args.url else f"http://{settings.web_host}:{settings.web_port}"
    token = settings.api_token.get_secret_value() if settings.api_token else None
    try:
        if args.command == "status":
            render_status(call(url, query="?type=all"), sys.stdout)
            return 0
        if args.command == "warm":
            body: dict[str, Any] = {
                "action": "warmup",
                "params": {"namespace": args.namespace, "keys": args.keys},
            }
        elif args.command == "clear":
            body = {"action": "clear", "params": {"namespace": args.namespace}}
        else:
            body = {
                "action": "invalidate_tags",
                "params": {"namespace": args.namespace, "tags": args.tags},
            }
        result = call(url, "POST", body=body, token=token)
    except ApiCallError as error:
        print(f"cachecast {args.command}: {error.message}", file=sys.stderr)
        return 2 if error.status == 0 else 1
    if args.command == "warm":
        for key, outcome in result.get("keys", {}).items():
            detail = f" ({outcome['error']})" if outcome.get("error") else ""
            print(f"{args.namespace}:{key}: {outcome.get('status')}{detail}")
        failed = [k for k, o in result.get("keys", {}).items() if o.get("status") != "written"]
        return 1 if failed else 0
    print(f"{args.namespace}: {result.get('deleted', 0)} keys deleted")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``status``, ``warm``, ``clear`` and ``tags`` to the ``cachecast`` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=None,
        help="a worker's web address (default http://CACHECAST_WEB_HOST:CACHECAST_WEB_PORT)",
    )
    status = subparsers.add_parser(
        "status", parents=[common], help="a table of the monitor: namespaces and health"
    )
    status.set_defaults(func=_run)
    warm = subparsers.add_parser(
        "warm", parents=[common], help="load and write keys now (CACHECAST_API_TOKEN)"
    )
    warm.add_argument("namespace")
    warm.add_argument("keys", nargs="+", metavar="KEY")
    warm.set_defaults(func=_run)
    clear = subparsers.add_parser(
        "clear", parents=[common], help="delete a namespace's keys (CACHECAST_API_TOKEN)"
    )
    clear.add_argument("namespace")
    clear.set_defaults(func=_run)
    tags = subparsers.add_parser(
        "tags",
        parents=[common],
        help="delete the keys with any of these tags (CACHECAST_API_TOKEN)",
    )
    tags.add_argument("namespace")
    tags.add_argument("tags", nargs="+", metavar="TAG")
    tags.set_defaults(func=_run)

"""The monitor API's contract: which views GET serves, which actions POST takes, and who may.

Pure functions (no I/O), so the rules are tested without a worker; the worker's
web views (agents/web.py) carry them out.

>>> check_token("Bearer s3cret", "s3cret") is None
True
>>> check_token(None, "s3cret").status, check_token("Bearer nope", "s3cret").status
(401, 403)
>>> check_token("Bearer s3cret", None).status  # no token configured: POST is off
403
>>> parse_action(b'{"action": "clear", "params": {"namespace": "users"}}')
Action(name='clear', namespace='users', params={})
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from pipeline.client.keys import InvalidKeyError, validate_key, validate_namespace

__all__ = [
    "ACTIONS",
    "MAX_BODY_BYTES",
    "MAX_ITEMS",
    "VIEWS",
    "Action",
    "ApiError",
    "check_token",
    "parse_action",
    "parse_view",
]

VIEWS: Final = ("all", "basic", "performance", "memory", "intelligent", "health")
ACTIONS: Final = ("clear", "warmup", "invalidate_tags", "delete_pattern", "configure")
MAX_BODY_BYTES: Final = 64 * 1024
MAX_ITEMS: Final = 1000
_CONFIGURABLE: Final = ("maxmemory", "maxmemory-policy")


class ApiError(Exception):
    """A request the API refuses: the HTTP status and a message for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Action:
    """A validated POST: what to do, to which namespace, with which parameters."""

    name: str
    namespace: str | None
    params: dict[str, Any] = field(default_factory=dict)


def parse_view(value: str | None) -> str:
    """The ``?type=`` of a GET; ``all`` when absent, 400 when unknown."""
    view = value or "all"
    if view not in VIEWS:
        raise ApiError(400, f"unknown type {view!r}; one of {', '.join(VIEWS)}")
    return view


def check_token(header: str | None, token: str | None) -> ApiError | None:
    """None when ``header`` carries the bearer ``token``; the refusal otherwise.

    With no token configured every POST is refused (fail closed). The token is
    compared in constant time and never appears in a message.
    """
    if not token:
        return ApiError(403, "actions are disabled: set CACHECAST_API_TOKEN on the worker")
    if not header or not header.startswith("Bearer "):
        return ApiError(401, "missing bearer token (Authorization: Bearer <token>)")
    if not hmac.compare_digest(header[7:].encode(), token.encode()):
        return ApiError(403, "wrong token")
    return None


def parse_action(body: bytes) -> Action:
    """Validate a POST body ``{"action": ..., "params": {...}}``."""
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, f"body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "body must be a JSON object with 'action' and 'params'")
    name = doc.get("action")
    if name not in ACTIONS:
        raise ApiError(400, f"unknown action {name!r}; one of {', '.join(ACTIONS)}")
    params = doc.get("params", {})
    if not isinstance(params, dict):
        raise ApiError(400, "'params' must be an object")
    if name == "configure":
        unknown = sorted(set(params) - set(_CONFIGURABLE))
        if unknown or not params:
            raise ApiError(400, f"configure takes {', '.join(_CONFIGURABLE)}; got {unknown}")
        return Action(name, None, {k: params[k] for k in _CONFIGURABLE if k in params})
    namespace: Any = params.get("namespace")
    try:
        validate_namespace(namespace)
    except (InvalidKeyError, TypeError) as exc:
        raise ApiError(400, f"params.namespace: {exc}") from None
    if name == "clear":
        return Action(name, namespace)
    if name == "delete_pattern":
        pattern = params.get("pattern")
        if not isinstance(pattern, str) or not pattern or len(pattern) > 1024:
            raise ApiError(400, "params.pattern: a non-empty string of at most 1024 characters")
        return Action(name, namespace, {"pattern": pattern})
    list_name = "keys" if name == "warmup" else "tags"
    items = params.get(list_name)
    if not isinstance(items, list) or not items or len(items) > MAX_ITEMS:
        raise ApiError(400, f"params.{list_name}: a list of 1 to {MAX_ITEMS} strings")
    for item in items:
        try:
            validate_key(item)
        except (InvalidKeyError, TypeError) as exc:
            raise ApiError(400, f"params.{list_name}: {exc}") from None
    return Action(name, namespace, {list_name: list(dict.fromkeys(items))})

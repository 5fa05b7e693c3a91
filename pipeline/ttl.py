"""Where a TTL is decided: every rule for how long a cached value lives.

The smart TTL itself is learnt by a model (:class:`pipeline.models.ttl.SmartTTL`:
a key's inter-arrival quantile, clamped and jittered). This module holds the
rules around it, which the worker, its warm writer, and both clients apply:

1. **Publishing** (the worker's observe agent): a key's smart TTL is written to
   ``{prefix}#ttl:{namespace}`` (:func:`pipeline.client.keys.smart_ttl_hash`) once it
   has an inter-arrival, and again whenever it moves by more than
   :data:`REPUBLISH_CHANGE` (:func:`changed_ttls`).
2. **Reading** (clients and the warm writer alike): :func:`published_ttl` parses a
   value of that hash and clamps it to ``CACHECAST_SMART_TTL_MIN..MAX``.
3. **Choosing**, for a value written without an explicit TTL:

   * a write by the application (``IntelligentCache.set``): the published smart
     TTL, else the client's default TTL, times the priority's factor
     (:data:`PRIORITY_TTL_FACTOR`), within 1 s .. ten years (:func:`value_ttl`);
   * a value the client loads itself (a miss's loader, an edge warm): the
     namespace's fixed TTL if it has one (a ``cached`` function's ``ttl``), else
     the same as a normal-priority write (:func:`load_ttl`);
   * a worker warm: the published smart TTL, else the TTL its warmup command
     carries, which is the worker's ``REDIS_DEFAULT_TTL`` (:func:`warm_ttl`,
     :func:`command_ttl`).

An explicit ``ttl=`` argument always wins, validated by
:func:`pipeline.client.keys.validate_ttl`.

>>> published_ttl(b"50", 10, 1000), published_ttl(b"5", 10, 1000), published_ttl(b"x", 10, 1000)
(50, 10, None)
>>> value_ttl(None, 3600, "high"), value_ttl(100, 3600, "low")
(7200, 50)
>>> load_ttl(30, 100, 3600), load_ttl(None, 100, 3600), warm_ttl(None, 3600)
(30, 100, 3600)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from schemas.contracts import MAX_TTL_S

if TYPE_CHECKING:  # the clients import this module; they never load the models
    from pipeline.config import Settings
    from pipeline.models.ttl import SmartTTL

__all__ = [
    "PRIORITY_TTL_FACTOR",
    "REPUBLISH_CHANGE",
    "changed_ttls",
    "command_ttl",
    "load_ttl",
    "published_ttl",
    "value_ttl",
    "warm_ttl",
]

#: How a write's priority scales its TTL (docs/client.md says what else it does): a
#: high-priority entry lives longer, which also keeps it under ``volatile-ttl``.
PRIORITY_TTL_FACTOR: Final[Mapping[str, float]] = {"low": 0.5, "normal": 1.0, "high": 2.0}

#: A published smart TTL is written again when it moved by more than this fraction.
REPUBLISH_CHANGE: Final = 0.1


def published_ttl(raw: Any, low: int, high: int) -> int | None:
    """A value read from the smart-TTL hash, clamped to ``[low, high]`` seconds.

    The one reading of that hash: the clients (their writes and loads) and the
    worker's warm writer clamp alike. None when absent, not an integer, or not
    positive (the caller's default TTL applies).
    """
    if raw is None:
        return None
    try:
        seconds: int = int(raw)
    except (TypeError, ValueError):
        return None
    if seconds <= 0:
        return None
    return max(low, min(high, seconds))


def value_ttl(smart_ttl: int | None, default_ttl: int, priority: str = "normal") -> int:
    """The TTL of a value the application writes without one.

    Raises ``KeyError`` naming the allowed values for an unknown ``priority``.
    """
    factor = PRIORITY_TTL_FACTOR.get(priority)
    if factor is None:
        raise KeyError(f"priority must be one of {sorted(PRIORITY_TTL_FACTOR)}, not {priority!r}")
    base = smart_ttl if smart_ttl is not None else default_ttl
    return max(1, min(MAX_TTL_S, int(base * factor)))


def load_ttl(fixed_ttl: int | None, smart_ttl: int | None, default_ttl: int) -> int:
    """The TTL of a value a client loaded itself (on a miss, or as an edge warm)."""
    return fixed_ttl if fixed_ttl is not None else value_ttl(smart_ttl, default_ttl)


def command_ttl(settings: Settings) -> int:
    """The TTL a warmup command carries: what the writer uses when none is published."""
    return settings.redis_default_ttl


def warm_ttl(smart_ttl: int | None, command_ttl: int) -> int:
    """The TTL of a value the worker's writer warms: the published one, else the command's."""
    return smart_ttl if smart_ttl is not None else command_ttl


def changed_ttls(
    model: SmartTTL,
    keys: set[str],
    published: OrderedDict[str, int],
    change: float = REPUBLISH_CHANGE,
) -> list[tuple[str, int]]:
    """The smart TTLs of ``keys`` that moved by more than ``change`` (a fraction) since
    last published, for keys with at least one inter-arrival; ``published`` is updated.

    A key with no inter-arrival yet is not published: the client's default TTL is
    the answer for it.
    """
    writes: list[tuple[str, int]] = []
    default = model.default_ttl
    recency = model.recency
    for full in keys:
        rhythm = recency.rhythm(full)
        if rhythm is None:
            continue
        ttl = model.ttl_from(full, rhythm)
        before = published.get(full, default)
        if abs(ttl - before) > change * before:
            writes.append((full, ttl))
            published[full] = ttl
            published.move_to_end(full)
    return writes

"""The asyncio client and its blocking twin keep one public API.

They share their state and decisions (:mod:`pipeline.client.shared`) and differ
only in how they do I/O and wait; these checks catch a method, a parameter or a
default added to one twin and not the other.
"""

from __future__ import annotations

import inspect

import pytest

from pipeline.client import IntelligentCache, RedisCacheManager
from pipeline.client.sync import SyncIntelligentCache, SyncRedisCacheManager

TWINS = [(RedisCacheManager, SyncRedisCacheManager), (IntelligentCache, SyncIntelligentCache)]
#: Context-manager protocol names of the asyncio twin and the blocking one.
PROTOCOL = {"__aenter__": "__enter__", "__aexit__": "__exit__"}


def _public(cls: type) -> dict[str, object]:
    protocol = [*PROTOCOL, *PROTOCOL.values()]
    names = (
        {name for name in dir(cls) if not name.startswith("_")}
        | {
            name
            for name in protocol
            if name in vars(cls) or any(name in vars(b) for b in cls.__mro__)
        }
        | {"__init__"}
    )
    return {PROTOCOL.get(name, name): getattr(cls, name) for name in names}


def _parameters(member: object) -> list[tuple[str, object, object]]:
    if isinstance(member, property):
        return []
    signature = inspect.signature(member)  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


@pytest.mark.parametrize(("asynchronous", "blocking"), TWINS, ids=lambda cls: cls.__name__)
def test_the_twins_have_the_same_public_methods_and_constructor(
    asynchronous: type, blocking: type
) -> None:
    assert sorted(_public(asynchronous)) == sorted(_public(blocking))


@pytest.mark.parametrize(("asynchronous", "blocking"), TWINS, ids=lambda cls: cls.__name__)
def test_each_method_takes_the_same_parameters_with_the_same_defaults(
    asynchronous: type, blocking: type
) -> None:
    blocking_api = _public(blocking)
    for name, member in _public(asynchronous).items():
        assert _parameters(member) == _parameters(blocking_api[name]), name


@pytest.mark.parametrize(("asynchronous", "blocking"), TWINS, ids=lambda cls: cls.__name__)
def test_the_blocking_twin_awaits_nothing(asynchronous: type, blocking: type) -> None:
    blocking_api = _public(blocking)
    awaited = {
        name
        for name, member in _public(asynchronous).items()
        if inspect.iscoroutinefunction(member)
    }
    assert {"get", "set", "close", "health_check"} <= awaited
    assert not [
        name for name, member in blocking_api.items() if inspect.iscoroutinefunction(member)
    ]

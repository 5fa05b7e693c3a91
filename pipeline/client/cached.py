"""``@cache.cached(namespace, key=...)``: a function whose results are cached.

The decorated function's result is cached under a key built from its
arguments, read through :meth:`IntelligentCache.get` (so concurrent misses of a
key share one call: single-flight), and the function becomes the namespace's
loader: edge warms (prefetch rules) can then load any key of the namespace
with no further configuration. That needs the way back from a key to the
arguments, which a template key gives: ``key="{user_id}"`` formats the bound
arguments, and a key is parsed back with the template (each field converted to
the parameter's annotated type when that is ``int``, ``float``, ``bool`` or
``str``). A template must name every parameter the function requires for it to
become the loader; a ``key`` given as a function builds keys but loads nothing
at the edge.

>>> template = KeyTemplate("user-{user_id}/page-{page}")
>>> def profile(user_id: int, page: int = 1) -> dict[str, int]:
...     return {"user": user_id, "page": page}
>>> template.fields
('user_id', 'page')
>>> template.key_for(profile, (42,), {})
'user-42/page-1'
>>> template.arguments(profile, "user-42/page-3")
{'user_id': 42, 'page': 3}
>>> template.arguments(profile, "someone-else") is None
True
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
import string
import typing
from collections.abc import Callable, Mapping
from typing import Any, Final

from pipeline.client.keys import validate_ttl

__all__ = [
    "CachedFunction",
    "KeyBuilder",
    "KeyTemplate",
    "cached_decorator",
    "key_function",
    "namespace_loader",
]

KeyBuilder = Callable[..., str]
_COERCE: Final[dict[Any, Callable[[str], Any]]] = {
    int: int,
    float: float,
    str: str,
    bool: lambda text: text.lower() in ("1", "true", "yes"),
}


class KeyTemplate:
    """A cache key made from a function's arguments by ``str.format``, and parsed back."""

    def __init__(self, template: str) -> None:
        pattern = []
        fields: list[str] = []
        for literal, name, spec, conversion in string.Formatter().parse(template):
            pattern.append(re.escape(literal))
            if name is None:
                continue
            if not name.isidentifier():
                raise ValueError(
                    f"key template {template!r}: {{{name}}} must name a parameter "
                    "(no indexing or attributes)"
                )
            if name in fields:
                pattern.append(f"(?P={name})")
            else:
                fields.append(name)
                pattern.append(f"(?P<{name}>.+?)")
            del spec, conversion  # formatting may use them; parsing reads the text back
        if not fields:
            raise ValueError(f"key template {template!r} names no parameter")
        self.template = template
        self.fields = tuple(fields)
        self._pattern = re.compile("".join(pattern), re.DOTALL)

    def key_for(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> str:
        """The key of a call: the template formatted with the bound arguments."""
        bound = inspect.signature(func).bind(*args, **kwargs)
        bound.apply_defaults()
        return self.template.format(**bound.arguments)

    def covers(self, func: Callable[..., Any]) -> bool:
        """Whether the template names every parameter ``func`` needs (it can then load)."""
        for parameter in inspect.signature(func).parameters.values():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            if parameter.default is parameter.empty and parameter.name not in self.fields:
                return False
            if parameter.kind is parameter.POSITIONAL_ONLY and parameter.name in self.fields:
                return False  # cannot be passed by name
        return True

    def arguments(self, func: Callable[..., Any], key: str) -> dict[str, Any] | None:
        """The keyword arguments a key was made from, or None when it does not match."""
        match = self._pattern.fullmatch(key)
        if match is None:
            return None
        try:
            hints = typing.get_type_hints(func)
        except Exception:  # unresolvable annotations: pass the text as it is
            hints = {}
        out: dict[str, Any] = {}
        for name in self.fields:
            text = match.group(name)
            convert = _COERCE.get(hints.get(name))
            try:
                out[name] = convert(text) if convert is not None else text
            except ValueError:
                return None
        return out


def key_function(
    func: Callable[..., Any], key: str | KeyBuilder
) -> tuple[Callable[[tuple[Any, ...], dict[str, Any]], str], KeyTemplate | None]:
    """How a decorated call's key is built, and the template when ``key`` is one."""
    if callable(key):
        builder = key

        def build_with(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            made = builder(*args, **kwargs)
            if not isinstance(made, str):
                raise TypeError(f"the key function returned {type(made).__name__}, not str")
            return made

        return build_with, None
    if not isinstance(key, str):
        raise TypeError("key must be a template string or a function")
    template = KeyTemplate(key)
    signature = inspect.signature(func)
    unknown = [name for name in template.fields if name not in signature.parameters]
    if unknown:
        raise ValueError(f"key template {key!r} names {unknown}, not parameters of {func.__name__}")

    def build(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        return template.key_for(func, args, kwargs)

    return build, template


class _Cache(typing.Protocol):
    """What a cached function needs of its cache (either client)."""

    def get(self, namespace: str, key: str, *, fallback_data: Any = None) -> Any: ...

    def delete(self, namespace: str, key: str) -> Any: ...


class CachedFunction:
    """A function whose results are cached; made by ``cache.cached(...)``.

    Calling it returns the cached result, or calls the function on a miss
    (concurrent misses of one key share the call). ``key_for(...)`` is the key a
    call reads, ``invalidate(...)`` deletes it. With the asyncio client the
    call is awaited, and a blocking function runs in a worker thread.
    """

    def __init__(
        self,
        cache: _Cache,
        namespace: str,
        func: Callable[..., Any],
        build: Callable[[tuple[Any, ...], dict[str, Any]], str],
        *,
        asynchronous: bool,
    ) -> None:
        functools.update_wrapper(self, func)
        self.cache = cache
        self.namespace = namespace
        self.func = func
        self._build = build
        self._asynchronous = asynchronous
        self._coroutine = inspect.iscoroutinefunction(func)

    def key_for(self, *args: Any, **kwargs: Any) -> str:
        """The cache key of a call with these arguments."""
        return self._build(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = self._build(args, kwargs)
        func = self.func
        if not self._asynchronous:
            return self.cache.get(self.namespace, key, fallback_data=lambda: func(*args, **kwargs))
        if self._coroutine:
            fallback: Callable[[], Any] = lambda: func(*args, **kwargs)  # noqa: E731
        else:
            fallback = lambda: asyncio.to_thread(func, *args, **kwargs)  # noqa: E731
        return self.cache.get(self.namespace, key, fallback_data=fallback)

    def invalidate(self, *args: Any, **kwargs: Any) -> Any:
        """Delete the cached result of a call with these arguments."""
        return self.cache.delete(self.namespace, self._build(args, kwargs))

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        """Decorating a method: bind it like a function would be."""
        if instance is None:
            return self
        return functools.partial(self, instance)


def namespace_loader(
    func: Callable[..., Any], template: KeyTemplate, *, asynchronous: bool
) -> Callable[[str, str], Any]:
    """``loader(namespace, key)`` that calls ``func`` with the arguments ``key`` was made from."""

    def arguments(namespace: str, key: str) -> dict[str, Any]:
        found = template.arguments(func, key)
        if found is None:
            raise LookupError(
                f"{namespace}:{key} is not a key of {func.__name__} ({template.template})"
            )
        return found

    if asynchronous and inspect.iscoroutinefunction(func):

        async def load_async(namespace: str, key: str) -> Any:
            return await func(**arguments(namespace, key))

        return load_async

    def load(namespace: str, key: str) -> Any:
        return func(**arguments(namespace, key))

    return load


class _Client(_Cache, typing.Protocol):
    """What :func:`cached_decorator` needs of a client (either one)."""

    @property
    def core(self) -> Any: ...

    def has_loader(self, namespace: str) -> bool: ...

    def register_loader(self, namespace: str, loader: Any, config: Any = None) -> None: ...


def cached_decorator(
    client: _Client,
    namespace: str,
    key: str | KeyBuilder,
    ttl: int | None,
    loader_config: Any,
    *,
    asynchronous: bool,
) -> Callable[[Callable[..., Any]], CachedFunction]:
    """The decorator behind ``cache.cached(...)`` of both clients (see their docstrings)."""
    core = client.core
    core.base(namespace)  # validates the namespace
    fixed = None if ttl is None else validate_ttl(ttl)

    def decorate(func: Callable[..., Any]) -> CachedFunction:
        if not asynchronous and inspect.iscoroutinefunction(func):
            raise TypeError(f"{func.__name__} is a coroutine function: use IntelligentCache")
        build, template = key_function(func, key)
        if fixed is not None:
            if core.fixed_ttls.get(namespace, fixed) != fixed:
                raise ValueError(f"namespace {namespace!r} already has another fixed TTL")
            core.fixed_ttls[namespace] = fixed
        if template is not None and template.covers(func):
            if client.has_loader(namespace):
                raise ValueError(f"namespace {namespace!r} already has a loader")
            loader = namespace_loader(func, template, asynchronous=asynchronous)
            client.register_loader(namespace, loader, loader_config)
        return CachedFunction(client, namespace, func, build, asynchronous=asynchronous)

    return decorate

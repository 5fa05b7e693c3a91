"""How the warmer gets a value: loaders, and the guards that keep warming from hurting the origin.

A warm is a bet placed with the origin's capacity, so every loader runs behind
a :class:`GuardedLoader`: a timeout, a cap on concurrent loads, a token-bucket
rate limit and a circuit breaker. When a guard says no, the warm is refused at
once (:class:`LoadRefused`) instead of queueing: a late warm is worth nothing,
and a queue in front of a struggling origin is how stampedes start.

Loaders are configured per namespace, from the ``CACHECAST_LOADERS``
environment variable or a JSON file (see :func:`loaders_from_config`)::

    {"users":    {"url": "http://users-api:8080/users/{key}", "timeout": 1.0,
                  "concurrency": 8, "rate": 200},
     "products": {"callable": "shop.catalog:load_product", "rate": 50}}
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import aiohttp
import orjson

__all__ = [
    "DEFAULT_MAX_BYTES",
    "CallableLoader",
    "CircuitBreaker",
    "GuardedLoader",
    "HttpLoader",
    "LoadError",
    "LoadRefused",
    "Loader",
    "LoaderConfig",
    "TokenBucket",
    "load_callable",
    "loader_options",
    "loaders_from_config",
    "redact_url",
]

_DEFAULT_TIMEOUT: Final = 2.0


class LoadError(RuntimeError):
    """The origin was asked and did not deliver (error, timeout, bad status)."""


class LoadRefused(RuntimeError):
    """A guard refused the load without asking the origin (rate, concurrency, open circuit)."""


class Loader(Protocol):
    """Fetches the value of ``namespace:key`` from the origin."""

    async def load(self, namespace: str, key: str) -> Any: ...

    async def close(self) -> None: ...


DEFAULT_MAX_BYTES: Final = 1024 * 1024
_DOT_SEGMENTS: Final = frozenset({".", ".."})


class HttpLoader:
    """GET a URL built from a template; ``{namespace}`` and ``{key}`` are URL-quoted.

    JSON responses are decoded; anything else is stored as text. A status other
    than 2xx raises :class:`LoadError` (a 404 included: warming a key the origin
    does not know is a wasted warm, not a value).

    A key stays inside its path segment: ``/`` is quoted, and a key that is a
    dot segment (``.`` or ``..``, which URL normalisation would walk up) is
    refused. Redirects are not followed unless ``follow_redirects`` is set, and
    a response larger than ``max_bytes`` is refused. Errors name the URL
    without its query string or credentials, which often carry API keys.

    >>> HttpLoader("https://api/users/{key}").url_for("users", "a/b")
    'https://api/users/a%2Fb'
    >>> HttpLoader("https://api/users/{key}").url_for("users", "..")
    Traceback (most recent call last):
    ...
    pipeline.loaders.LoadError: key '..' is a dot segment; it cannot be part of a URL
    >>> redact_url("https://me:pw@api:8080/users/1?api_key=s3cret")
    'https://api:8080/users/1?…'
    """

    def __init__(
        self,
        url_template: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = _DEFAULT_TIMEOUT,
        max_bytes: int = DEFAULT_MAX_BYTES,
        follow_redirects: bool = False,
    ) -> None:
        if "{key}" not in url_template:
            raise ValueError(f"url template {redact_url(url_template)!r} must contain {{key}}")
        self.url_template = url_template
        self.max_bytes = max_bytes
        self.follow_redirects = follow_redirects
        self._headers = dict(headers or {})
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"HttpLoader({redact_url(self.url_template)!r})"

    def url_for(self, namespace: str, key: str) -> str:
        for name, value in (("namespace", namespace), ("key", key)):
            if value in _DOT_SEGMENTS:
                raise LoadError(f"{name} {value!r} is a dot segment; it cannot be part of a URL")
        quote = urllib.parse.quote
        return self.url_template.format(
            namespace=quote(namespace, safe=""), key=quote(key, safe="")
        )

    async def load(self, namespace: str, key: str) -> Any:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        url = self.url_for(namespace, key)
        shown = redact_url(url)
        try:
            async with self._session.get(url, allow_redirects=self.follow_redirects) as response:
                if 300 <= response.status < 400 and not self.follow_redirects:
                    raise LoadError(f"GET {shown} answered {response.status} (redirects are off)")
                if not 200 <= response.status < 300:
                    raise LoadError(f"GET {shown} answered {response.status}")
                length = response.content_length
                if length is not None and length > self.max_bytes:
                    raise LoadError(f"GET {shown}: {length} bytes, over {self.max_bytes} bytes")
                body = await response.content.read(self.max_bytes + 1)
                if len(body) > self.max_bytes:
                    raise LoadError(f"GET {shown}: response over {self.max_bytes} bytes")
                if response.content_type == "application/json":
                    return orjson.loads(body)
                return body.decode(response.charset or "utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            raise LoadError(f"GET {shown} failed: {type(exc).__name__}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def redact_url(url: str) -> str:
    """``url`` without credentials or query string, for logs and error messages."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "<unparseable url>"
    query = "?…" if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", "")) + query


def load_callable(path: str) -> Callable[..., Any]:
    """Import ``package.module:function`` (or ``package.module.function``)."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"{path!r} is not a dotted path such as 'shop.catalog:load_product'")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import loader {path!r}: {exc}") from None
    if not callable(target):
        raise ValueError(f"loader {path!r} is not callable")
    return target  # type: ignore[no-any-return]


class CallableLoader:
    """Calls ``func(namespace, key)``; sync functions run in a worker thread."""

    def __init__(self, func: Callable[[str, str], Any] | str) -> None:
        self.func = load_callable(func) if isinstance(func, str) else func
        self._is_async = inspect.iscoroutinefunction(self.func) or (
            inspect.iscoroutinefunction(getattr(self.func, "__call__", None))  # noqa: B004
        )

    async def load(self, namespace: str, key: str) -> Any:
        try:
            if self._is_async:
                return await self.func(namespace, key)
            return await asyncio.to_thread(self.func, namespace, key)
        except (LoadError, LoadRefused):
            raise
        except Exception as exc:
            raise LoadError(f"loader raised {exc!r}") from exc

    async def close(self) -> None:
        return None


class TokenBucket:
    """``rate`` tokens per second, bursts up to ``burst``.

    >>> clock = iter([0.0, 0.0, 0.0, 0.0, 0.5]).__next__
    >>> bucket = TokenBucket(rate=2, burst=2, clock=clock)
    >>> [bucket.try_take() for _ in range(4)]
    [True, True, False, True]
    """

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._tokens = self.burst
        self._clock = clock
        self._at = clock()

    def available(self) -> bool:
        """Whether :meth:`try_take` would succeed now (takes nothing)."""
        now = self._clock()
        return min(self.burst, self._tokens + (now - self._at) * self.rate) >= 1.0

    def try_take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


CircuitState = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    """Opens after ``failures`` consecutive failures; after ``reset_after`` seconds one
    trial call is let through (half-open): success closes it, failure re-opens it.

    >>> t = [0.0]
    >>> breaker = CircuitBreaker(failures=2, reset_after=10, clock=lambda: t[0])
    >>> breaker.record(False); breaker.record(False); breaker.state
    'open'
    >>> breaker.allow()
    False
    >>> t[0] = 11.0; breaker.allow(), breaker.state
    (True, 'half-open')
    >>> breaker.record(True); breaker.state
    'closed'
    """

    def __init__(
        self,
        failures: int = 5,
        reset_after: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.reset_after = reset_after
        self._clock = clock
        self._consecutive = 0
        self._opened_at = 0.0
        self._trial_out = False
        self.state: CircuitState = "closed"

    def allow(self) -> bool:
        if self.state == "closed":
            return True
        if self.state == "open" and self._clock() - self._opened_at >= self.reset_after:
            self.state = "half-open"
            self._trial_out = False
        if self.state == "half-open" and not self._trial_out:
            self._trial_out = True
            return True
        return False

    def closed_or_due(self) -> bool:
        """Whether :meth:`allow` could let a call through now (changes nothing)."""
        if self.state == "closed":
            return True
        if self.state == "open":
            return self._clock() - self._opened_at >= self.reset_after
        return not self._trial_out

    def record(self, ok: bool) -> None:
        if ok:
            self._consecutive = 0
            self.state = "closed"
            return
        self._consecutive += 1
        if self.state == "half-open" or self._consecutive >= self.failures:
            self.state = "open"
            self._opened_at = self._clock()


@dataclass(frozen=True, slots=True)
class LoaderConfig:
    """Guards for one namespace's loader."""

    timeout: float = _DEFAULT_TIMEOUT
    concurrency: int = 8
    rate: float = 100.0
    burst: float | None = None
    breaker_failures: int = 5
    breaker_reset_s: float = 10.0


class GuardedLoader:
    """A loader behind a timeout, a concurrency cap, a rate limit and a circuit breaker.

    ``load`` raises :class:`LoadRefused` when a guard says no (the origin was
    not asked) and :class:`LoadError` when the origin failed or timed out.
    """

    def __init__(self, loader: Loader, config: LoaderConfig | None = None) -> None:
        self.loader = loader
        self.config = config or LoaderConfig()
        self._slots = asyncio.Semaphore(self.config.concurrency)
        self._bucket = TokenBucket(self.config.rate, self.config.burst)
        self.breaker = CircuitBreaker(self.config.breaker_failures, self.config.breaker_reset_s)

    def available(self) -> bool:
        """Whether a load now would pass every guard (a cheap check; takes nothing)."""
        return (
            self.breaker.closed_or_due() and not self._slots.locked() and self._bucket.available()
        )

    async def load(self, namespace: str, key: str, *, wait: float = 0.0) -> Any:
        """Load, waiting at most ``wait`` seconds for a free concurrency slot."""
        if not self.breaker.allow():
            raise LoadRefused("circuit open: the origin failed repeatedly; warming paused")
        if self._slots.locked():
            if wait <= 0:
                self._give_back_trial()
                raise LoadRefused(f"{self.config.concurrency} loads already in flight")
            try:
                await asyncio.wait_for(self._slots.acquire(), wait)
            except TimeoutError:
                self._give_back_trial()
                raise LoadRefused(
                    f"{self.config.concurrency} loads already in flight for {wait:.3f}s"
                ) from None
        else:
            await self._slots.acquire()
        try:
            if not self._bucket.try_take():
                self._give_back_trial()
                raise LoadRefused(f"rate limit of {self.config.rate:g} loads/s reached")
            try:
                value = await asyncio.wait_for(
                    self.loader.load(namespace, key), self.config.timeout
                )
            except TimeoutError:
                self.breaker.record(False)
                raise LoadError(f"load timed out after {self.config.timeout:g}s") from None
            except BaseException:
                # Any error, and a cancelled call too: a half-open trial that ended
                # without a success must re-open the breaker, never leave it half-open.
                self.breaker.record(False)
                raise
            self.breaker.record(True)
            return value
        finally:
            self._slots.release()

    def _give_back_trial(self) -> None:
        # A refused half-open trial must not leave the breaker stuck half-open.
        if self.breaker.state == "half-open":
            self.breaker.state = "open"

    async def close(self) -> None:
        await self.loader.close()


def loader_options(namespace: str, options: Mapping[str, Any]) -> tuple[LoaderConfig, str, str]:
    """Check one namespace's loader options: ``(guards, "url" | "callable", target)``.

    Unknown options raise ``ValueError`` naming the namespace, so a typo fails at start.
    """
    known = {
        "url",
        "callable",
        "headers",
        "max_bytes",
        "follow_redirects",
        *LoaderConfig.__dataclass_fields__,
    }
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"loader for {namespace!r}: unknown option(s) {sorted(unknown)}")
    guards = LoaderConfig(
        **{k: options[k] for k in LoaderConfig.__dataclass_fields__ if k in options}
    )
    if "url" in options and "callable" in options:
        raise ValueError(f"loader for {namespace!r}: give 'url' or 'callable', not both")
    if "url" in options:
        return guards, "url", str(options["url"])
    if "callable" in options:
        return guards, "callable", str(options["callable"])
    raise ValueError(f"loader for {namespace!r}: needs 'url' or 'callable'")


def loaders_from_config(config: Mapping[str, Mapping[str, Any]]) -> dict[str, GuardedLoader]:
    """Build guarded loaders per namespace from a JSON-like mapping (see module doc)."""
    loaders: dict[str, GuardedLoader] = {}
    for namespace, options in config.items():
        guards, kind, target = loader_options(namespace, options)
        loader: Loader
        if kind == "url":
            loader = HttpLoader(
                target,
                headers=options.get("headers"),
                timeout=guards.timeout,
                max_bytes=int(options.get("max_bytes", DEFAULT_MAX_BYTES)),
                follow_redirects=bool(options.get("follow_redirects", False)),
            )
        else:
            loader = CallableLoader(target)
        loaders[namespace] = GuardedLoader(loader, guards)
    return loaders

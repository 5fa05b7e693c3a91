"""Blocking namespace loaders for the sync client's edge warms, behind the same guards.

The asyncio client runs edge loads through :class:`~pipeline.loaders.GuardedLoader`;
a blocking client runs them on its own small thread pool, through
:class:`SyncGuardedLoader`: the same budget per namespace (concurrent loads,
loads per second, circuit breaker) from the same configuration
(``CACHECAST_LOADERS``). A ``callable`` loader may be a plain function or a
coroutine function (run to completion on the pool's thread); a ``url`` loader
is fetched with the standard library.

A blocking call cannot be interrupted: a load slower than its timeout counts as
a failure for the breaker, and while it hangs it holds one of the namespace's
concurrency slots, so a hung origin stops edge warms, never the application.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from pipeline.loaders import (
    DEFAULT_MAX_BYTES,
    CircuitBreaker,
    HttpLoader,
    LoaderConfig,
    LoadError,
    LoadRefused,
    TokenBucket,
    load_callable,
    loader_options,
    redact_url,
)

__all__ = ["SyncGuardedLoader", "SyncLoaderFunc", "sync_loaders"]

SyncLoaderFunc = Callable[[str, str], Any]
"""``func(namespace, key)``: a blocking loader (a coroutine function is run to completion)."""


class SyncGuardedLoader:
    """A blocking loader behind a concurrency cap, a rate limit and a circuit breaker."""

    def __init__(self, func: SyncLoaderFunc, config: LoaderConfig | None = None) -> None:
        self.config = config or LoaderConfig()
        self._func = _blocking(func)
        self._slots = threading.BoundedSemaphore(self.config.concurrency)
        self._lock = threading.Lock()
        self._bucket = TokenBucket(self.config.rate, self.config.burst)
        self.breaker = CircuitBreaker(self.config.breaker_failures, self.config.breaker_reset_s)

    def available(self) -> bool:
        """Whether a load now would pass every guard (takes nothing)."""
        with self._lock:
            return self.breaker.closed_or_due() and self._bucket.available()

    def load(self, namespace: str, key: str) -> Any:
        """Load, or raise :class:`LoadRefused` (a guard said no) or :class:`LoadError`."""
        with self._lock:
            if not self.breaker.allow():
                raise LoadRefused("circuit open: the origin failed repeatedly; warming paused")
            if not self._bucket.try_take():
                self._give_back_trial()
                raise LoadRefused(f"rate limit of {self.config.rate:g} loads/s reached")
        if not self._slots.acquire(blocking=False):
            with self._lock:
                self._give_back_trial()
            raise LoadRefused(f"{self.config.concurrency} loads already in flight")
        started = time.monotonic()
        try:
            value = self._func(namespace, key)
        except BaseException as exc:  # any end but a value re-opens a half-open breaker
            with self._lock:
                self.breaker.record(False)
            if isinstance(exc, LoadError) or not isinstance(exc, Exception):
                raise
            raise LoadError(f"loader raised {exc!r}") from exc
        finally:
            self._slots.release()
        slow = time.monotonic() - started > self.config.timeout
        with self._lock:
            self.breaker.record(not slow)
        if slow:
            raise LoadError(f"load took longer than {self.config.timeout:g}s")
        return value

    def _give_back_trial(self) -> None:
        if self.breaker.state == "half-open":
            self.breaker.state = "open"


def _blocking(func: SyncLoaderFunc) -> SyncLoaderFunc:
    if inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004
    ):

        def run(namespace: str, key: str) -> Any:
            return asyncio.run(func(namespace, key))

        return run
    return func


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError for the 3xx


def _http(
    template: str,
    headers: Mapping[str, str] | None,
    timeout: float,
    *,
    max_bytes: int,
    follow_redirects: bool,
) -> SyncLoaderFunc:
    urls = HttpLoader(template, headers=headers, timeout=timeout, max_bytes=max_bytes)
    opener = (
        urllib.request.build_opener()
        if follow_redirects
        else urllib.request.build_opener(_NoRedirect)
    )

    def fetch(namespace: str, key: str) -> Any:
        url = urls.url_for(namespace, key)
        shown = redact_url(url)
        request = urllib.request.Request(url, headers=dict(headers or {}))
        try:
            with opener.open(request, timeout=timeout) as response:
                body = response.read(max_bytes + 1)
                kind = response.headers.get_content_type()
                charset = response.headers.get_content_charset() or "utf-8"
        except urllib.error.HTTPError as exc:
            raise LoadError(f"GET {shown} answered {exc.code}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise LoadError(f"GET {shown} failed: {type(exc).__name__}") from None
        if len(body) > max_bytes:
            raise LoadError(f"GET {shown}: response over {max_bytes} bytes")
        if kind == "application/json":
            try:
                return orjson.loads(body)
            except orjson.JSONDecodeError:
                raise LoadError(f"GET {shown}: invalid JSON") from None
        return body.decode(charset, "replace")

    return fetch


def sync_loaders(
    config: Mapping[str, Mapping[str, Any]], extra: Mapping[str, SyncLoaderFunc] | None = None
) -> dict[str, SyncGuardedLoader]:
    """Blocking loaders per namespace from ``CACHECAST_LOADERS``-style config, then ``extra``."""
    loaders: dict[str, SyncGuardedLoader] = {}
    for namespace, options in config.items():
        guards, kind, target = loader_options(namespace, options)
        if kind == "url":
            func = _http(
                target,
                options.get("headers"),
                guards.timeout,
                max_bytes=int(options.get("max_bytes", DEFAULT_MAX_BYTES)),
                follow_redirects=bool(options.get("follow_redirects", False)),
            )
        else:
            func = load_callable(target)
        loaders[namespace] = SyncGuardedLoader(func, guards)
    for namespace, loader in (extra or {}).items():
        loaders[namespace] = SyncGuardedLoader(loader)
    return loaders

"""Loaders fetch from the origin; guards refuse rather than stampede it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from pipeline.client.sync.edge import sync_loaders
from pipeline.loaders import (
    CallableLoader,
    GuardedLoader,
    HttpLoader,
    LoaderConfig,
    LoadError,
    LoadRefused,
    loaders_from_config,
)


def sync_origin(namespace: str, key: str) -> dict[str, str]:
    return {"ns": namespace, "key": key}


async def async_origin(namespace: str, key: str) -> str:
    return f"{namespace}/{key}"


@pytest.fixture
async def origin() -> AsyncIterator[str]:
    async def user(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        if key == "missing":
            return web.Response(status=404)
        if key == "slow":
            await asyncio.sleep(1.0)
        if key == "text":
            return web.Response(text="plain")
        if key == "moved":
            raise web.HTTPFound("/admin/secrets")
        if key == "huge":
            return web.Response(body=b"x" * 5000)
        seen.append(request.path)
        return web.json_response({"id": key, "ns": request.match_info["ns"]})

    async def admin(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(text="the admin page")

    seen: list[str] = []
    app = web.Application()
    app.router.add_get("/{ns}/users/{key}", user)
    app.router.add_get("/{ns}/{rest:.*}", admin)
    app.router.add_get("/admin/secrets", admin)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_http_loader_fills_the_template_and_decodes_json(origin: str) -> None:
    loader = HttpLoader(origin + "/{namespace}/users/{key}")
    try:
        assert await loader.load("shop", "a b/c") == {"id": "a b/c", "ns": "shop"}
        assert await loader.load("shop", "text") == "plain"
        with pytest.raises(LoadError, match="answered 404"):
            await loader.load("shop", "missing")
    finally:
        await loader.close()


async def test_http_loader_keeps_keys_in_their_segment_and_refuses_redirects_and_floods(
    origin: str,
) -> None:
    loader = HttpLoader(origin + "/{namespace}/users/{key}?api_key=s3cret", max_bytes=1000)
    try:
        assert await loader.load("shop", "../../admin") == {"id": "../../admin", "ns": "shop"}
        with pytest.raises(LoadError, match="dot segment"):
            await loader.load("shop", "..")
        with pytest.raises(LoadError, match="answered 302") as moved:
            await loader.load("shop", "moved")
        with pytest.raises(LoadError, match="over 1000 bytes") as huge:
            await loader.load("shop", "huge")
    finally:
        await loader.close()
    for error in (moved.value, huge.value):
        assert "s3cret" not in str(error)
        assert "/shop/users/" in str(error)  # still says which URL, without its query
    assert "s3cret" not in repr(loader)


async def test_sync_http_loader_refuses_dot_segments_redirects_and_floods(origin: str) -> None:
    template = origin + "/{namespace}/users/{key}?api_key=s3cret"
    fetch = sync_loaders({"shop": {"url": template, "max_bytes": 1000}})["shop"]
    assert await asyncio.to_thread(fetch.load, "shop", "a/b") == {"id": "a/b", "ns": "shop"}
    for key, words in (("..", "dot segment"), ("moved", "answered 302"), ("huge", "over 1000")):
        with pytest.raises(LoadError, match=words) as caught:
            await asyncio.to_thread(fetch.load, "shop", key)
        assert "s3cret" not in str(caught.value)


async def test_http_loader_times_out(origin: str) -> None:
    loader = GuardedLoader(
        HttpLoader(origin + "/{namespace}/users/{key}"), LoaderConfig(timeout=0.2)
    )
    try:
        with pytest.raises(LoadError, match="timed out"):
            await loader.load("shop", "slow")
    finally:
        await loader.close()


async def test_callable_loaders_by_dotted_path() -> None:
    assert await CallableLoader(f"{__name__}:sync_origin").load("n", "k") == {"ns": "n", "key": "k"}
    assert await CallableLoader(f"{__name__}.async_origin").load("n", "k") == "n/k"
    with pytest.raises(ValueError, match="cannot import loader"):
        CallableLoader("no.such.module:func")


class Origin:
    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls = 0
        self.in_flight = 0
        self.peak = 0
        self.delay = delay
        self.fail = fail

    async def load(self, namespace: str, key: str) -> Any:
        self.calls += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if self.fail:
                raise LoadError("origin down")
            return key
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        return None


async def test_concurrency_cap_refuses_instead_of_queueing() -> None:
    origin = Origin(delay=0.05)
    loader = GuardedLoader(origin, LoaderConfig(concurrency=3, rate=1000))
    results = await asyncio.gather(
        *(loader.load("n", str(i)) for i in range(10)), return_exceptions=True
    )
    assert origin.peak == 3
    assert sum(isinstance(r, LoadRefused) for r in results) == 7
    assert origin.calls == 3


async def test_rate_limit_refuses_beyond_the_burst() -> None:
    origin = Origin()
    loader = GuardedLoader(origin, LoaderConfig(rate=5, burst=5))
    results = [await _try(loader, str(i)) for i in range(20)]
    assert results.count("ok") == 5
    assert origin.calls == 5


async def _try(loader: GuardedLoader, key: str) -> str:
    try:
        await loader.load("n", key)
    except LoadRefused:
        return "refused"
    return "ok"


async def test_circuit_breaker_stops_calling_a_failing_origin() -> None:
    origin = Origin(fail=True)
    loader = GuardedLoader(origin, LoaderConfig(rate=1000, breaker_failures=3, breaker_reset_s=0.2))
    for _ in range(3):
        with pytest.raises(LoadError):
            await loader.load("n", "k")
    for _ in range(10):
        with pytest.raises(LoadRefused, match="circuit open"):
            await loader.load("n", "k")
    assert origin.calls == 3
    origin.fail = False
    await asyncio.sleep(0.25)
    assert await loader.load("n", "k") == "k"
    assert loader.breaker.state == "closed"


@pytest.mark.parametrize("ending", ["raises", "cancelled"])
async def test_a_half_open_trial_that_does_not_succeed_reopens_the_breaker(ending: str) -> None:
    calls = 0

    async def origin(namespace: str, key: str) -> str:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise LoadError("down")
        if ending == "raises":
            raise ValueError("a bug in the loader, not a LoadError")
        await asyncio.sleep(10)
        return key

    loader = GuardedLoader(
        CallableLoader(origin), LoaderConfig(rate=1000, breaker_failures=2, breaker_reset_s=0.1)
    )
    for _ in range(2):
        with pytest.raises(LoadError):
            await loader.load("n", "k")
    await asyncio.sleep(0.15)
    trial = asyncio.ensure_future(loader.load("n", "k"))
    await asyncio.sleep(0.01)
    if ending == "cancelled":
        trial.cancel()
    with pytest.raises((ValueError, LoadError, asyncio.CancelledError)):
        await trial
    assert loader.breaker.state == "open"  # never stuck half-open
    await asyncio.sleep(0.15)
    assert loader.breaker.allow()  # the next trial is let through after the cooldown


def test_config_builds_loaders_and_rejects_typos() -> None:
    loaders = loaders_from_config(
        {
            "users": {"url": "http://origin/users/{key}", "rate": 10, "concurrency": 2},
            "products": {"callable": f"{__name__}:sync_origin"},
        }
    )
    assert loaders["users"].config.rate == 10
    assert isinstance(loaders["products"].loader, CallableLoader)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['ratelimit'\]"):
        loaders_from_config({"users": {"url": "http://o/{key}", "ratelimit": 3}})
    with pytest.raises(ValueError, match="must contain"):
        loaders_from_config({"users": {"url": "http://o/users"}})

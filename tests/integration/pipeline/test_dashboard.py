"""The dashboard in headless Chromium, served by a live worker on real Kafka and Redis.

Application traffic goes through the real client; the page must show what the
monitor API says (which must match what the client did), run an action behind
the token, fit a phone's width, and leave screenshots as test artifacts
(``CACHECAST_TEST_ARTIFACTS``, default ``build/test-artifacts``).
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from pipeline.client import IntelligentCache
from pipeline.client.keys import data_key
from pipeline.config import Settings
from schemas.contracts import STRATEGIES
from tests.integration.browser import Browser, chromium_binary
from tests.integration.pipeline.conftest import StartWorker

TOKEN = "dashboard-t0ken"
ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = Path(os.environ.get("CACHECAST_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts"))
KEYS, READS = 60, 300


async def _traffic(settings: Settings, namespace: str) -> dict[str, Any]:
    cache = IntelligentCache(settings, early_refresh=False)
    try:
        for i in range(READS):
            await cache.get(namespace, f"k{i % KEYS}", fallback_data=lambda i=i: {"i": i % KEYS})
        assert cache.emitter is not None
        assert await cache.emitter.flush(20.0)
        stats: dict[str, Any] = (await cache.get_stats())["client"]
        return stats
    finally:
        await cache.close()


def _total(url: str, namespace: str) -> dict[str, Any] | None:
    with urllib.request.urlopen(url + "/api/cache/monitor?type=all", timeout=10) as response:
        doc = orjson.loads(response.read())
    found: dict[str, Any] | None = doc["namespaces"].get(namespace, {}).get("total")
    return found


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


async def _browse(binary: str, url: str, namespace: str, total: dict[str, Any]) -> list[str]:
    row = f'tr[data-namespace="{namespace}"]'
    async with Browser(binary) as browser:
        await browser.goto(url + "/dashboard")
        await browser.wait_for(f"!!document.querySelector('{row}')")
        cells = {
            name: await browser.text(f'{row} td[data-field="{name}"]')
            for name in ("events", "hits", "misses", "hit-ratio", "p50", "p99", "errors")
        }
        assert cells["events"] == f"{total['events']:,}"
        assert cells["hits"] == f"{total['hits']:,}"
        assert cells["misses"] == f"{total['misses']:,}"
        assert cells["hit-ratio"] == _pct(total["hit_ratio"])
        assert cells["errors"] == f"{total['errors']:,}"
        for field, name in (("p50", "latency_p50_us"), ("p99", "latency_p99_us")):
            assert abs(int(cells[field].replace(",", "")) - total[name]) <= 1, (cells, total)
        # Each strategy's labelled warms and precision, as the API has them.
        strategies = f'#strategies tr[data-namespace="{namespace}"]'
        for name in STRATEGIES:
            shown = await browser.text(f'{strategies} td[data-field="strategy-{name}"]')
            assert shown == f"{total[name + '_admitted']:,} · {_pct(total[name + '_precision'])}"
        health = await browser.text("#health")
        assert "redis up" in health
        assert "partitions" in health
        assert await browser.text('[data-testid="events"]') != "-"
        # The charts keep a history per namespace and draw it.
        await browser.wait_for(
            f"(samples.get({orjson.dumps(namespace).decode()}) || []).length >= 2"
        )
        await browser.screenshot(ARTIFACTS / "dashboard.png")

        # An action, as an operator runs it: a wrong token first, then the right one.
        await browser.type("#token", "not-the-token")
        await browser.type("#action-ns", namespace)
        await browser.type("#action-arg", "w1, w2")
        await browser.click("#run-action")
        refused = await browser.wait_for(
            "document.getElementById('action-result').innerText.startsWith('refused')"
            " && document.getElementById('action-result').innerText"
        )
        assert "403" in refused
        await browser.evaluate("document.getElementById('token').value = ''")
        await browser.type("#token", TOKEN)
        await browser.click("#run-action")
        result = await browser.wait_for(
            "document.getElementById('action-result').innerText.includes('written')"
            " && document.getElementById('action-result').innerText"
        )
        await browser.screenshot(ARTIFACTS / "dashboard-action.png")

        # A phone: the page fits its width (the table scrolls inside its box).
        await browser.send(
            "Emulation.setDeviceMetricsOverride",
            width=390,
            height=844,
            deviceScaleFactor=2,
            mobile=True,
        )
        await browser.goto(url + "/dashboard")
        await browser.wait_for(f"!!document.querySelector('{row}')")
        overflow = await browser.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"the page is {overflow} px wider than a phone"
        await browser.screenshot(ARTIFACTS / "dashboard-phone.png")
    return str(result).splitlines()


@pytest.mark.timeout(300)
def test_the_dashboard_shows_the_api_figures_and_runs_an_action(
    start_worker: StartWorker, settings: Settings
) -> None:
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium is not installed (CI installs Debian's chromium)")
    namespace = f"dash-{uuid.uuid4().hex[:8]}"
    loaders = {namespace: {"callable": "pipeline.replay:demo_origin", "rate": 5000}}
    worker = start_worker(
        CACHECAST_API_TOKEN=TOKEN, CACHECAST_LOADERS=orjson.dumps(loaders).decode()
    )
    worker.wait_ready()
    url = f"http://127.0.0.1:{worker.web_port}"

    client = asyncio.run(_traffic(settings, namespace))
    assert (client["hits"], client["misses"]) == (READS - KEYS, KEYS)
    deadline = time.monotonic() + 60
    while True:  # the worker has counted every read the client made
        total = _total(url, namespace)
        if total is not None and total["hits"] + total["misses"] == READS:
            break
        assert time.monotonic() < deadline, total
        time.sleep(0.5)
    assert (total["hits"], total["misses"]) == (client["hits"], client["misses"])

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    lines = asyncio.run(_browse(binary, url, namespace, total))

    assert lines == [f"{namespace}:w1 written", f"{namespace}:w2 written"]
    raw = redis.Redis(host=settings.redis_host, port=settings.redis_port, db=settings.redis_db)
    try:
        assert raw.exists(data_key(settings.redis_key_prefix, namespace, "w1"))
    finally:
        raw.close()
    for name in ("dashboard.png", "dashboard-action.png", "dashboard-phone.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000, name

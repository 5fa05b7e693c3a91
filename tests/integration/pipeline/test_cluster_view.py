"""Two workers share the partitions; either one's monitor answers for every namespace."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
import uuid

import pytest

from pipeline.client import IntelligentCache
from pipeline.config import Settings
from tests.integration.pipeline.conftest import StartWorker

NAMESPACES = 12


async def _traffic(settings: Settings, reads: dict[str, int]) -> None:
    cache = IntelligentCache(settings, early_refresh=False)
    try:
        for namespace, count in reads.items():
            for i in range(count):
                await cache.get(namespace, f"k{i % 7}", fallback_data=lambda i=i: i)
        assert cache.emitter is not None
        assert await cache.emitter.flush(20.0)
    finally:
        await cache.close()


def _events_in_metrics(port: int, namespace: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(
        rf'^cachecast_events_total\{{namespace="{re.escape(namespace)}"\}} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0


@pytest.mark.timeout(300)
def test_every_worker_answers_for_every_namespace(
    start_worker: StartWorker, settings: Settings
) -> None:
    workers = [start_worker(), start_worker()]
    for worker in workers:
        worker.wait_ready()
    tag = uuid.uuid4().hex[:6]
    reads = {f"cv{i}-{tag}": 5 * (i + 1) for i in range(NAMESPACES)}
    asyncio.run(_traffic(settings, reads))

    deadline = time.monotonic() + 90
    docs = []
    while True:
        docs = [worker.monitor() for worker in workers]
        answered = [
            {
                ns: view["total"]["hits"] + view["total"]["misses"]
                for ns, view in doc["namespaces"].items()
                if ns in reads
            }
            for doc in docs
        ]
        if all(seen == reads for seen in answered):
            break
        assert time.monotonic() < deadline, (reads, answered)
        time.sleep(0.5)
    names = {doc["worker"] for doc in docs}
    assert len(names) == 2
    for doc in docs:
        owners = {doc["namespaces"][ns]["owner"] for ns in reads}
        assert owners == names, "each worker shows namespaces the other one owns"
    # /metrics: each worker exports the namespaces it owns, so scraping both counts once.
    for namespace in reads:
        owner_counts = [_events_in_metrics(worker.web_port, namespace) for worker in workers]
        assert sorted(owner_counts)[0] == 0.0, (namespace, owner_counts)
        assert sum(owner_counts) == docs[0]["namespaces"][namespace]["total"]["events"]

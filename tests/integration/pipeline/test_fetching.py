"""The worker's Kafka consumer fetches in batches: its fetch requests carry the settings.

Faust leaves aiokafka's ``fetch_min_bytes`` at 1 (a fetch returns as soon as one
record is there) and has no setting for it; the worker's consumer asks for
``CACHECAST_WORKER_FETCH_MIN_BYTES`` or ``CACHECAST_WORKER_FETCH_WAIT_MS``. This
starts the consumer the worker would start, against the session's broker, and
reads what its fetcher puts in each fetch request.
"""

from __future__ import annotations

from typing import Any, cast

from agents import create_app
from pipeline.config import load_settings


async def test_the_workers_fetches_wait_for_the_configured_batch(kafka_bootstrap: str) -> None:
    settings = load_settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        worker_fetch_min_bytes=12_345,
        worker_fetch_wait_ms=7,
    )
    app = create_app(settings).app
    thread = cast(Any, app.consumer)._new_consumer_thread()
    consumer = thread._create_worker_consumer(app.transport)
    await consumer.start()
    try:
        fetcher = consumer._fetcher  # builds every FetchRequest from these two
        assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (12_345, 7)
    finally:
        await consumer.stop()


async def test_by_default_a_fetch_waits_for_64_kib_or_25_ms() -> None:
    settings = load_settings(kafka_bootstrap_servers="127.0.0.1:1")
    app = create_app(settings).app
    consumer = cast(Any, app.consumer)._new_consumer_thread()._create_worker_consumer(app.transport)
    try:
        assert (consumer._fetch_min_bytes, consumer._fetch_max_wait_ms) == (65_536, 25)
    finally:
        await consumer.stop()

"""Users through the whole pipeline on real Kafka and Redis: a returning user's session
opens, the worker warms the keys that user and similar users read, and the session
reads them as warmed hits (SYNTHETIC sessions: pipeline.sim.synthetic)."""

from __future__ import annotations

import asyncio

import pytest

import schemas
from pipeline.demo import session_gap_for
from pipeline.sim.synthetic import session_workload
from tests.integration.pipeline.conftest import (
    NAMESPACE,
    StartWorker,
    replay_through_worker,
    topic_records,
)

DAYS, PER_DAY = 2, 6_000
RATE = 400.0


@pytest.mark.timeout(600)
def test_a_returning_users_session_is_warmed_by_the_worker(start_worker: StartWorker) -> None:
    trace, _ = session_workload(days=DAYS, requests_per_day=PER_DAY, users=200)
    gap = session_gap_for(trace, RATE)
    assert gap is not None
    result, settings, monitor, stopped_at = replay_through_worker(
        start_worker,
        trace,
        prefix="users",
        rate=RATE,
        cache_fraction=0.1,
        # Two days replayed in 30 s: 30 minutes of silence are 0.3 s of them.
        CACHECAST_SESSION_GAP_S=repr(gap),
    )
    commands = [
        c
        for value in asyncio.run(topic_records(settings, settings.topic_warmup))
        for c in schemas.decode_warmup_commands(value).records
    ]
    by_user = [c for c in commands if c.reason == "user"]
    # Measured: 609 user warms in 12,000 requests, 488 written (the rest were cached
    # already), 433 read as warmed hits.
    assert len(by_user) > 200, (len(commands), stopped_at)
    assert result.warms_written > 200, result.as_dict()
    assert result.warmed_hits > 0.7 * result.warms_written, result.as_dict()
    # The monitor counts the user strategy's labelled warms and their precision.
    total = monitor["namespaces"][NAMESPACE]["total"]
    assert total["user_admitted"] > 0, total
    assert total["user_precision"] is not None
    assert total["user_precision"] > 0.8, total

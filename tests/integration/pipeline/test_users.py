"""Users through the whole pipeline on real Kafka and Redis: a returning user's session
opens, the client loads what the user's rule names and the worker warms the keys that
user and similar users read, and the session reads them as warmed hits (SYNTHETIC
sessions: pipeline.sim.synthetic)."""

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
def test_a_returning_users_session_is_warmed_at_the_edge_and_by_the_worker(
    start_worker: StartWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace, _ = session_workload(days=DAYS, requests_per_day=PER_DAY, users=200)
    gap = session_gap_for(trace, RATE)
    assert gap is not None
    monkeypatch.setenv("CACHECAST_SESSION_GAP_S", repr(gap))  # the client's sessions too
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
    # Measured in 12,000 requests: 253 sessions opened on a user rule (of 679 rule reads),
    # 767 edge warms written, 661 read (86 %); 650 user warms from the worker, 279
    # written (the rest were cached already); 890 warmed hits in all.
    # The edge: sessions opened on the rules the worker published for their users.
    assert result.user_rules_applied > 100, result.as_dict()
    assert result.edge_written > 200, result.as_dict()
    assert result.edge_precision is not None
    assert result.edge_precision > 0.7, result.as_dict()
    # The worker: it raised the keys of sessions under way.
    assert len(by_user) > 200, (len(commands), stopped_at)
    written = result.warms_written + result.edge_written
    assert result.warmed_hits > 0.7 * written, result.as_dict()
    # The monitor counts the user strategy's labelled warms and their precision.
    total = monitor["namespaces"][NAMESPACE]["total"]
    assert total["user_admitted"] > 0, total
    assert total["user_precision"] is not None
    assert total["user_precision"] > 0.8, total

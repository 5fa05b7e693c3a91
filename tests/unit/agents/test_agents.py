"""The agents in-process: ``create_app(settings)``, records put through Faust's test context.

No broker: each agent reads from a test channel, and the topics it sends to
record what they were given (what the broker would have received). Redis is
fakeredis. What a user of the pipeline would notice is asserted: bad records
reach the dead-letter topic with their reason, good events are counted and
re-partitioned, warms are written with their outcome, deltas become statistics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import fakeredis
import faust
import orjson
import pytest
from prometheus_client import generate_latest

from agents import CachecastApp, create_app
from agents.writer import CLAIMED_HEADER
from pipeline.client.keys import USER_RULES, data_key, rules_hash, rules_stream
from pipeline.codec import ValueCodec
from pipeline.config import load_settings
from pipeline.deadletter import reason_of
from pipeline.prefetch import decode_rule

NS = "shop"


class RecordingTopic:
    """Stands in for a topic: remembers each send; every send is delivered at once."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, **kwargs: Any) -> asyncio.Future[None]:
        self.sent.append(kwargs)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def values(self) -> list[Any]:
        return [orjson.loads(item["value"]) for item in self.sent]


#: The topics the agents send to (a RecordingTopic each in these tests).
TOPICS = (
    "sequence",
    "warmup",
    "outcomes",
    "stats",
    "metrics",
    "dead_letter",
    "state",
    "stats_view",
)


def topic(worker: CachecastApp, name: str) -> RecordingTopic:
    """What the agents sent to topic ``name``."""
    found = getattr(worker.context.topics, name)
    assert isinstance(found, RecordingTopic)
    return found


async def _no_snapshots(stages: tuple[str, ...], partition: int) -> dict[str, bytes | None]:
    return {stage: None for stage in stages}


async def _nothing() -> None:
    return None


@pytest.fixture
async def worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[CachecastApp]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # Faust's data directory
    settings = load_settings(
        topic_partitions=4,
        checkpoint_s=3600.0,  # no checkpoint during a test (it would ack and snapshot)
        loaders=orjson.dumps({NS: {"callable": "pipeline.replay:synthetic_value"}}).decode(),
        rules_publish=True,  # what these tests check, whatever the environment says
        warming_enabled=True,
        stats_window_s=3600.0,
    )
    built = create_app(settings, redis=fakeredis.FakeAsyncRedis())
    topics = built.context.topics
    for name in TOPICS:
        setattr(topics, name, RecordingTopic())
    built.context.flush = _nothing
    for checkpointer in built.context.checkpointers:
        checkpointer.load_blobs = _no_snapshots
    yield built
    await built.runtime.close()


def _raw_channel(app: faust.App) -> faust.ChannelT[bytes]:
    schema: Any = faust.Schema(
        key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    return app.channel(schema=schema)


async def _until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def _access(key: str, ts: float, outcome: str = "miss", **extra: Any) -> dict[str, Any]:
    return {
        "ts": ts,
        "namespace": NS,
        "key": key,
        "op": "get",
        "outcome": outcome,
        "session": "s-1",
        **extra,
    }


async def _put(agent: Any, value: bytes, *, partition: int = 0, **kwargs: Any) -> None:
    await agent.put(value, key=b"k", partition=partition, wait=False, **kwargs)


async def test_observe_dead_letters_bad_records_and_routes_the_good_ones(
    worker: CachecastApp,
) -> None:
    now = time.time()
    good = [_access("a", now), _access("b", now + 0.001, outcome="hit")]
    one_bad = [_access("c", now + 0.002), {"ts": now, "namespace": NS, "key": "d", "op": "get"}]
    async with worker.observe.agent.test_context(channel=_raw_channel(worker.app)) as agent:
        await _put(agent, orjson.dumps(good))
        await _put(agent, b"{not json")
        await _put(agent, orjson.dumps(one_bad))
        await _until(lambda: worker.runtime.counters["events"] == 3, "3 events counted")
        await _until(lambda: len(topic(worker, "dead_letter").sent) == 2, "2 dead letters")
    letters = topic(worker, "dead_letter").sent
    assert letters[0]["value"] == b"{not json"
    reasons = [reason_of(letter["headers"]) or "" for letter in letters]
    assert all(reasons), reasons
    assert "outcome" in reasons[1]  # the event without an outcome, named
    assert orjson.loads(letters[1]["value"])["key"] == "d"
    # The valid reads went to the sequence topic, in order, one session together.
    rows = [row for batch in topic(worker, "sequence").values() for row in batch]
    assert [row["key"] for row in rows] == ["a", "b", "c"]
    assert len({item["partition"] for item in topic(worker, "sequence").sent}) == 1

    assert await worker.observe.flush()
    deltas = [doc for doc in topic(worker, "stats").values() if doc["namespace"] == NS]
    assert sum(doc["stats"]["misses"] for doc in deltas) == 2
    assert sum(doc["stats"]["hits"] for doc in deltas) == 1
    progress = topic(worker, "state").sent
    assert progress, "a progress record says how far the deltas count"
    assert worker.runtime.counters["dead_letter_events"] == 2


async def test_writer_writes_unclaimed_warms_and_reports_each_outcome(
    worker: CachecastApp,
) -> None:
    now = time.time()

    def command(key: str) -> dict[str, Any]:
        return {
            "namespace": NS,
            "key": key,
            "score": 0.9,
            "reason": "ensemble",
            "ttl": 60,
            "deadline": now + 30,
            "issued_at": now,
        }

    async with worker.writer.agent.test_context(channel=_raw_channel(worker.app)) as agent:
        await _put(agent, orjson.dumps([command("w1"), command("w2")]))
        await _put(
            agent,
            orjson.dumps([command("claimed")]),
            headers=[(CLAIMED_HEADER, b"another-worker")],
        )
        await _put(agent, b"[1, 2]")  # two items that are not commands
        await _until(lambda: len(topic(worker, "outcomes").sent) >= 1, "outcomes")
        await _until(lambda: len(topic(worker, "dead_letter").sent) == 2, "two dead letters")
    letters = topic(worker, "dead_letter").sent
    assert [letter["value"] for letter in letters] == [b"1", b"2"]
    assert "warmup command" in (reason_of(letters[0]["headers"]) or "")
    outcomes = [o for batch in topic(worker, "outcomes").values() for o in batch]
    assert sorted((o["key"], o["status"]) for o in outcomes) == [
        ("w1", "written"),
        ("w2", "written"),
    ]
    redis = worker.runtime.redis
    prefix = worker.settings.redis_key_prefix
    stored = await redis.get(data_key(prefix, NS, "w1"))
    assert stored is not None
    decoded = ValueCodec().decode(stored)
    assert decoded.origin == "warm"
    assert await redis.exists(data_key(prefix, NS, "claimed")) == 0  # its worker wrote it
    assert worker.runtime.counters["warm_written"] == 2


async def test_predict_learns_a_sequence_and_publishes_its_rules(worker: CachecastApp) -> None:
    predict = worker.predict
    clock = [time.time() - 1000]

    def read(key: str) -> dict[str, Any]:
        clock[0] += 0.01
        return _access(key, clock[0], outcome="miss")

    sent = 0
    async with predict.agent.test_context(channel=_raw_channel(worker.app)) as agent:
        for round_ in range(3):  # t_i is followed by s_i, then keys read once (noise)
            batch = [read(f"{p}{i}") for i in range(30) for p in ("t", "s")]
            batch += [read(f"n{round_}-{j}") for j in range(200)]
            await _put(agent, orjson.dumps(batch))
            sent += len(batch)
        await _put(agent, b"garbage")
        await _until(
            lambda: sum(e.stats()["events"] for e in predict.engines.models.values()) >= sent,
            "every event learnt",
        )
        await _until(
            lambda: len(topic(worker, "dead_letter").sent) == 1,
            "the garbage dead-lettered",
        )
    await predict.publish_rules()
    assert worker.runtime.counters["rules_written"] >= 30
    published: dict[str, bytes] = {}
    redis: Any = worker.runtime.redis  # fakeredis
    for table in predict.rule_set.hashes():
        for field, value in (await redis.hgetall(table)).items():
            published[field.decode()] = value
    assert {f"t{i}" for i in range(30)} <= set(published)
    assert b"s7" in published["t7"]
    # Each strategy's labelled warms reach the statistics (and so the monitor, the metrics
    # topic and /metrics): the rules' successors came true.
    delta = worker.runtime.deltas[NS]
    assert delta.rules_true > 0
    assert delta.strategy("rules")[1] == pytest.approx(1.0, abs=0.2)


async def test_predict_publishes_a_users_rule_for_their_next_session(
    worker: CachecastApp,
) -> None:
    predict = worker.predict
    start = time.time() - 50_000
    # Five sessions of Ada's, 2,000 s apart (the session gap is 1,800 s): her inbox and
    # calendar every time, one key read once each time.
    batch = [
        _access(key, start + session * 2_000 + i, user="ada")
        for session in range(5)
        for i, key in enumerate(("inbox", "calendar", f"once-{session}"))
    ]
    async with predict.agent.test_context(channel=_raw_channel(worker.app)) as agent:
        await _put(agent, orjson.dumps(batch))
        await _until(
            lambda: sum(e.stats()["events"] for e in predict.engines.models.values()) >= 15,
            "every event learnt",
        )
    await predict.publish_rules()
    redis: Any = worker.runtime.redis  # fakeredis
    prefix = worker.settings.redis_key_prefix
    stored = await redis.hget(rules_hash(prefix, NS, "ada", USER_RULES), "ada")
    rule = decode_rule(stored)
    assert rule is not None
    assert [key for key, _ in rule.successors] == ["inbox", "calendar"]
    # User rules are read on demand, never followed: nothing of them in the rule stream.
    entries = await redis.xrange(rules_stream(prefix, NS))
    assert all(b"ada" not in value for _, fields in entries for value in fields.values())


async def test_stats_turns_deltas_into_namespace_statistics(worker: CachecastApp) -> None:
    stats = worker.stats
    delta = {
        "namespace": NS,
        "stats": {"hits": 7, "misses": 3, "events": 10, "rules_true": 3, "rules_false": 1},
    }
    async with stats.deltas_agent.test_context(channel=_raw_channel(worker.app)) as agent:
        await _put(agent, orjson.dumps(delta))
        await _put(agent, orjson.dumps(delta))
        await _put(agent, b'{"namespace": "shop"}')  # no stats
        await _until(lambda: NS in stats.namespace_stats(), "the namespace's entry")
        await _until(lambda: len(topic(worker, "dead_letter").sent) == 1, "a dead letter")
        await _until(lambda: stats.namespace_stats()[NS]["total"]["hits"] == 14, "both deltas")
    view = stats.namespace_stats()[NS]
    assert view["total"]["misses"] == 6
    assert view["total"]["hit_ratio"] == pytest.approx(0.7)
    document = worker.web.monitor_document()
    assert document["namespaces"][NS]["total"]["hits"] == 14
    intelligent = await worker.web.monitor_view("intelligent")
    rules = intelligent["namespaces"][NS]["strategies"]["rules"]
    assert rules == {"admitted": 8, "precision": pytest.approx(0.75)}
    exported = generate_latest(worker.web.registry).decode()
    assert (
        'cachecast_strategy_admitted_total{namespace="shop",outcome="useful",strategy="rules"} 6.0'
        in exported
    )
    assert 'cachecast_hits_total{namespace="shop"} 14.0' in exported


async def test_outcomes_become_deltas_on_the_stats_topic(worker: CachecastApp) -> None:
    now = time.time()
    outcome = {"namespace": NS, "key": "a", "status": "written", "ts": now, "latency_us": 900.0}
    stats = worker.stats
    async with stats.outcomes_agent.test_context(channel=_raw_channel(worker.app)) as agent:
        await _put(agent, orjson.dumps([outcome, {**outcome, "status": "load-failed"}]))
        await _put(agent, orjson.dumps([{**outcome, "status": "exploded"}]))
        await _until(lambda: len(topic(worker, "stats").sent) == 1, "a delta")
        await _until(lambda: len(topic(worker, "dead_letter").sent) == 1, "a dead letter")
    (doc,) = topic(worker, "stats").values()
    assert doc["namespace"] == NS
    assert (doc["stats"]["warms_written"], doc["stats"]["warms_failed"]) == (1, 1)
    assert "status" in (reason_of(topic(worker, "dead_letter").sent[0]["headers"]) or "")


def test_create_app_registers_every_agent_timer_task_and_page(worker: CachecastApp) -> None:
    app = worker.app
    assert sorted(app.agents) == [
        "cachecast.observe",
        "cachecast.predict",
        "cachecast.stats-deltas",
        "cachecast.stats-outcomes",
        "cachecast.writer",
    ]
    assert app.agents["cachecast.writer"].concurrency == 4
    tasks = {task.__name__ for task in app._app_tasks}
    assert tasks == {
        "start",  # the runtime (Redis cluster set-up)
        "flush_when_quiet",
        "release_held_events",
        "publish_rules",
        "checkpoint_when_quiet",
        "publish_quiet_windows",
        "follow_stats_view",
        "watch_event_loop",
        "refresh_redis_info",
    }
    router = app.web.web_app.router  # type: ignore[attr-defined]  # Faust's aiohttp driver
    pages = {resource.canonical for resource in router.resources()}
    assert {"/api/cache/monitor", "/dashboard", "/metrics"} <= pages
    assert [c.stage for c in worker.context.checkpointers] == ["ttl", "engine", "stats"]


async def test_two_apps_in_one_process_keep_their_own_settings_and_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = create_app(load_settings(web_port=7001), redis=fakeredis.FakeAsyncRedis())
    second = create_app(load_settings(web_port=7002), redis=fakeredis.FakeAsyncRedis())
    try:
        assert (first.app.conf.web_port, second.app.conf.web_port) == (7001, 7002)
        assert first.context.name != second.context.name
        first.runtime.counters["events"] += 5
        assert second.runtime.counters["events"] == 0
        assert first.web.registry is not second.web.registry
        assert len(first.context.checkpointers) == len(second.context.checkpointers) == 3
    finally:
        await first.runtime.close()
        await second.runtime.close()

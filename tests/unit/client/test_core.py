"""The client's I/O-free core: decoding, plans, statistics, events and the breaker.

Plans are driven here with hand-written Redis replies; the integration tests
drive the same plans against real servers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.exceptions import ConnectionError, MaxConnectionsError, ResponseError

from pipeline.client.core import (
    MISS,
    SLOW,
    TAG_ADD_SCRIPT,
    CacheCore,
    context_labels,
    xfetch_due,
)
from pipeline.client.edge import worth_loading
from pipeline.client.errors import CacheCommandError, CacheUnavailableError, RedisConfigError
from pipeline.client.keys import InvalidKeyError
from pipeline.codec import CodecError, ValueCodec
from pipeline.config import Settings
from schemas.decode import validate_access_event


class Events:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        names = (
            *("namespace", "key", "op", "outcome", "latency_us", "size_bytes", "ttl"),
            *("user", "session", "tags", "warmed", "ts", "raw_bytes"),
        )
        event = dict(zip(names, args, strict=False)) | kwargs
        event.setdefault("ts", 1.0)
        event["ts"] = event["ts"] or 1.0
        event["tags"] = list(event.get("tags") or [])
        self.events.append(validate_access_event(event))


def make_core(**overrides: Any) -> tuple[CacheCore, Events]:
    events = Events()
    return CacheCore(Settings(**overrides), events), events


def run(plan: Generator[list[tuple[Any, ...]], list[Any], Any], *replies: list[Any]) -> Any:
    """Drive a plan with canned replies; return (result, the command batches it sent)."""
    batches = []
    try:
        batch = next(plan)
        for reply in replies:
            batches.append(batch)
            assert len(reply) == len(batch), (batch, reply)
            batch = plan.send(reply)
        raise AssertionError(f"plan wanted another batch: {batch}")
    except StopIteration as done:
        return done.value, batches


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(
    value=json_values,
    origin=st.sampled_from(["app", "warm"]),
    threshold=st.sampled_from([0, 64, 10**6]),
)
def test_fast_decode_agrees_with_the_codec(value: Any, origin: str, threshold: int) -> None:
    core, _ = make_core(redis_compression_threshold=threshold)
    data = core.codec.encode(value, origin=origin).data  # type: ignore[arg-type]
    assert core.decode(data) == ValueCodec().decode(data).value
    hit = core.read_hit("ns", "k", data, 5, None, None, True)
    plain = origin == "app" and not ValueCodec().read_header(data).compressed
    assert (hit is SLOW) == (not plain)
    if plain:
        assert hit == value


def test_damaged_and_foreign_values() -> None:
    core, events = make_core()
    good = core.codec.encode({"a": 1}).data
    with pytest.raises(CodecError, match="checksum"):
        core.decode(good[:-1] + b"!")
    with pytest.raises(CodecError, match="not a cachecast value"):
        core.decode(b"hello")
    assert core.decode(b"-42") == -42  # counters written by increment
    assert core.record_hit("ns", "k", b"garbage!" * 3, 9, None, None, False, True) is MISS
    assert core.stats.decode_errors == 1
    assert [e["outcome"] for e in events.events] == ["miss"]


def test_hit_and_miss_statistics_and_events() -> None:
    core, events = make_core()
    data = core.codec.encode({"a": 1}).data
    assert core.read_hit("ns", "k", data, 40, "u", "s", True) == {"a": 1}
    assert core.read_hit("ns", "k", data, 40, None, None, False) == {"a": 1}  # no event
    core.record_miss("ns", "x", 30, None, None, True)
    assert (core.stats.hits, core.stats.misses, core.stats.bytes_read) == (2, 1, 2 * len(data))
    assert core.stats.latency["get"].count == 3
    hit, miss = events.events
    assert (hit["outcome"], hit["size_bytes"], hit["user"], hit["session"]) == (
        "hit",
        len(data),
        "u",
        "s",
    )
    assert (miss["outcome"], miss["size_bytes"]) == ("miss", 0)


def test_a_deferred_miss_is_counted_at_once_and_sent_once_with_its_start_time() -> None:
    # A read that loads its key learns whether it joined a load elsewhere only when its
    # claim answers: its event waits for that, stamped with when the read began.
    core, events = make_core()
    before = time.time()
    miss = core.defer_miss("ns", "k", 2_000, "u", "s")
    assert (core.stats.misses, core.stats.latency["get"].count) == (1, 1)
    assert events.events == []  # counted, not sent
    assert before - 0.002 - 0.01 < miss.ts <= time.time() - 0.002 + 0.01
    core.send_miss(miss, True)
    core.send_miss(miss, False)  # a later call (a guard on the way out) sends nothing
    core.send_miss(None, True)
    (event,) = events.events
    assert (event["outcome"], event["joined"], event["user"], event["latency_us"]) == (
        "miss",
        True,
        "u",
        2_000,
    )
    assert event["ts"] == miss.ts
    assert core.stats.misses == 1


def test_warm_check_happens_once_per_value() -> None:
    core, _ = make_core()
    warm = core.codec.encode(1, origin="warm", now=100.0).data
    again = core.codec.encode(1, origin="warm", now=200.0).data
    app = core.codec.encode(1).data
    assert core.warm_pending("k", warm) is True
    assert core.warm_pending("k", warm) is False
    assert core.warm_pending("k", again) is True  # a new warmed value
    assert core.warm_pending("k", app) is False
    assert core.warm_pending("k", b"12") is False


def test_set_plan_indexes_tags_with_covering_ttls() -> None:
    core, events = make_core(redis_key_prefix="p:")
    result, (batch,) = run(
        core.set_plan("ns", "k", {"v": 1}, ttl=60, tags=["a", "b"]), [True, 1, 2, True, 1, 1]
    )
    assert result == [True]
    assert [c[0] for c in batch] == ["SET", "DEL", "SADD", "EXPIRE", "EVAL", "EVAL"]
    assert batch[0][:2] == ("SET", "p:ns:k")
    assert batch[0][3:] == ("EX", 60)
    assert batch[1] == ("DEL", "p:#keytags:ns:k")
    assert batch[2] == ("SADD", "p:#keytags:ns:k", "a", "b")
    assert batch[4] == ("EVAL", TAG_ADD_SCRIPT, 1, "p:#tag:ns:a", "p:ns:k", 60)
    (event,) = events.events
    assert (event["op"], event["ttl"], event["tags"]) == ("set", 60, ["a", "b"])
    assert event["raw_bytes"] == len(b'{"v":1}')
    # untagged: the old tag index is dropped so a stale tag cannot delete the new value
    _, (untagged,) = run(core.set_plan("ns", "k", 1), [True, 1])
    assert [c[0] for c in untagged] == ["SET", "DEL"]
    assert untagged[0][-1] == core.default_ttl


def test_delete_plan_cleans_tag_sets_in_a_second_round_trip_only_when_tagged() -> None:
    core, events = make_core(redis_key_prefix="p:")
    deleted, batches = run(
        core.delete_plan("ns", ["a", "b"]),
        [{b"t1", b"t2"}, 1, 1, 0, set(), 0, 0, 0],
        [1, 1],
    )
    assert deleted == 1
    assert sorted(batches[1]) == [
        ("SREM", "p:#tag:ns:t1", "p:ns:a"),
        ("SREM", "p:#tag:ns:t2", "p:ns:a"),
    ]
    assert [e["key"] for e in events.events] == ["a", "b"]
    deleted, batches = run(core.delete_plan("ns", ["c"]), [set(), 0, 0, 0])
    assert (deleted, len(batches)) == (0, 1)


def test_delete_by_tags_skips_keys_whose_tag_index_moved_on() -> None:
    core, _ = make_core(redis_key_prefix="p:")
    plan = core.delete_by_tags_plan("ns", ["t"])
    deleted, batches = run(
        plan,
        [[b"p:ns:keep", b"p:ns:gone", b"p:other:x", b"p:ns:"]],  # SMEMBERS of the tag set
        [{b"u"}, {b"t"}],  # each candidate's current tags: only "gone" still has t
        [set(), 1, 1, 0],  # delete "gone"
        [3],  # SREM what was read from the tag set
    )
    assert deleted == 1
    assert [c[1] for c in batches[1]] == ["p:#keytags:ns:keep", "p:#keytags:ns:gone"]
    assert ("DEL", "p:ns:gone") in batches[2]
    assert batches[3][0][:2] == ("SREM", "p:#tag:ns:t")
    assert run(core.delete_by_tags_plan("ns", []))[0] == 0


def test_mget_groups_per_slot_on_a_cluster() -> None:
    core, events = make_core()
    core.slot_of = lambda key: len(key) % 2
    hit = core.codec.encode("v").data
    result, (batch,) = run(core.mget_plan("ns", ["a", "bb", "c", "dd"]), [[hit, None], [None, hit]])
    assert [c[0] for c in batch] == ["MGET", "MGET"]
    assert {c[1:] for c in batch} == {("cache:ns:a", "cache:ns:c"), ("cache:ns:bb", "cache:ns:dd")}
    assert result == ["v", None, None, "v"]
    assert [e["outcome"] for e in events.events] == ["hit", "miss", "miss", "hit"]
    with pytest.raises(InvalidKeyError):
        core.mget_plan("ns", "abc")


def test_increment_and_expire_plans() -> None:
    core, events = make_core()
    value, (batch,) = run(core.increment_plan("ns", "n", 5, ttl=30), [12])
    assert value == 12
    numkeys, dkey, receipt, *args = batch[0][2:]
    assert (numkeys, dkey, args) == (2, "cache:ns:n", [5, 30, core.default_ttl, 10_000])
    assert receipt.startswith("cache:#incr:{cache:ns:n}")  # the counter's cluster slot
    existed, batches = run(core.expire_plan("ns", "k", 90), [1, {b"t"}], [True, 1])
    assert existed is True
    assert batches[1][0] == ("EXPIRE", "cache:#keytags:ns:k", 90)
    missing, batches = run(core.expire_plan("ns", "zz", 90), [0, set()])
    assert (missing, len(batches)) == (False, 1)
    assert [e["op"] for e in events.events] == ["incr", "expire", "expire"]


def test_failures_open_the_breaker_only_for_outages() -> None:
    core, events = make_core(redis_retry_delay_ms=50, redis_max_retries=3)
    assert core.breaker_cooldown == pytest.approx(0.5)
    error = core.failure("get", "ns", ["k"], 0, ResponseError("WRONGTYPE"))
    assert isinstance(error, CacheCommandError)
    assert not core.breaker_open()
    error = core.failure("get", "ns", ["k"], 0, MaxConnectionsError("Too many connections"))
    assert not core.breaker_open()
    error = core.failure("get", "ns", ["k"], 0, ConnectionError("refused"))
    assert isinstance(error, CacheUnavailableError)
    assert core.breaker_open()
    rejected = core.rejected("get", "ns", ["k"])
    assert "not attempted" in str(rejected)
    assert core.stats.errors == 4
    assert core.stats.breaker_rejections == 1
    assert [e["outcome"] for e in events.events] == ["error"] * 4
    core.down_until = 1.0  # long past
    assert not core.breaker_open()


def test_memory_settings_validation() -> None:
    core, _ = make_core(redis_max_memory="100mb")
    assert core.memory_settings(None) == [("maxmemory", str(100 * 1024 * 1024))]
    assert core.memory_settings({"MAXMEMORY": 0}) == [("maxmemory", "0")]
    for bad in (
        {"maxmemory": -1},
        {"maxmemory": True},
        {"maxmemory": 1.5},
        {"maxmemory-policy": "lru"},
        {"maxmemory-samples": 0},
        {"save": ""},
        {},
    ):
        with pytest.raises(RedisConfigError):
            core.memory_settings(bad)
    with pytest.raises(RedisConfigError, match="REDIS_MAX_MEMORY"):
        make_core()[0].memory_settings(None)


def test_ttl_rules() -> None:
    core, _ = make_core(redis_default_ttl=100, smart_ttl_min=10, smart_ttl_max=1000)
    assert core.parse_smart_ttl(b"50") == 50
    assert core.parse_smart_ttl(b"5") == 10
    assert core.parse_smart_ttl(b"99999") == 1000
    assert core.parse_smart_ttl(b"soon") is None
    assert core.parse_smart_ttl(b"-3") is None
    assert core.parse_smart_ttl(None) is None
    assert core.ttl_for(None) == 100
    assert core.ttl_for(50, "high") == 100
    assert core.ttl_for(50, "low") == 25
    assert core.ttl_for(1, "low") == 1
    with pytest.raises(InvalidKeyError, match="priority"):
        core.ttl_for(50, "urgent")


def test_context_labels() -> None:
    assert context_labels(None, None) == (None, None)
    assert context_labels({"userId": "a", "sessionId": "b"}, None) == ("a", "b")
    assert context_labels({"id": 5}, "s") == ("5", "s")
    assert context_labels("", "") == (None, None)
    user, session = context_labels("u" * 300, "s")
    assert user is not None
    assert (len(user), session) == (256, "s")


@given(
    delta=st.floats(0.0, 10.0),
    before=st.floats(0.0, 100.0),
    draw=st.floats(1e-9, 1.0),
)
def test_xfetch_is_more_eager_closer_to_expiry(delta: float, before: float, draw: float) -> None:
    expires = 1000.0
    if xfetch_due(expires, delta, 1.0, expires - before, draw):
        assert xfetch_due(expires, delta, 1.0, expires - before / 2, draw)
    assert xfetch_due(expires, delta, 1.0, expires, draw)


async def test_write_warmed_refuses_application_values_before_any_io() -> None:
    from pipeline.client import write_warmed, write_warmed_sync

    app_value = ValueCodec().encode({"v": 1}).data
    not_a_client: Any = object()
    with pytest.raises(CodecError, match="origin='warm'"):
        await write_warmed(not_a_client, "p:", "ns", "k", app_value, 10)
    with pytest.raises(CodecError, match="origin='warm'"):
        write_warmed_sync(not_a_client, "p:", "ns", "k", app_value, 10)
    warm_value = ValueCodec().encode({"v": 1}, origin="warm").data
    with pytest.raises(InvalidKeyError):
        await write_warmed(not_a_client, "p:", "bad ns", "k", warm_value, 10)
    with pytest.raises(InvalidKeyError):
        await write_warmed(not_a_client, "p:", "ns", "k", warm_value, 0)


def test_a_half_open_breaker_lets_one_trial_through_while_the_others_fail_fast() -> None:
    core, _ = make_core(redis_socket_timeout=1.0, redis_max_retries=1)
    core.failure("get", "n", ("k",), time.perf_counter_ns(), ConnectionError("down"))
    assert core.breaker_open()  # cooling down
    core.down_until = time.monotonic() - 0.01  # the cooldown has passed
    assert core.breaker_open() is False  # this caller is the trial
    assert all(core.breaker_open() for _ in range(100))  # everyone else: fail fast
    core.redis_answered()  # the trial succeeded
    assert core.breaker_open() is False
    assert core.down_until == 0.0


def test_a_failed_trial_starts_a_new_cooldown() -> None:
    core, _ = make_core()
    core.failure("get", "n", ("k",), time.perf_counter_ns(), ConnectionError("down"))
    core.down_until = time.monotonic() - 0.01
    assert core.breaker_open() is False
    core.failure("get", "n", ("k",), time.perf_counter_ns(), ConnectionError("still down"))
    assert core.breaker_open()
    assert core.down_until > time.monotonic()


def test_the_stall_watchdog_opens_the_breaker_only_for_a_silent_redis() -> None:
    core, _ = make_core(redis_stall_ms=50)
    ms = 1_000_000
    core.reads_waiting, core.waiting_since_ns = 3, 0
    # A reply on any connection (a handshake, another command) is a sign of life.
    assert not core.watch(60 * ms, answered_ns=20 * ms)
    assert not core.watch(62 * ms, answered_ns=20 * ms)
    # Replies unread in the sockets: the loop is behind, not Redis.
    assert not core.watch(100 * ms, replies_pending=lambda: True)
    assert not core.watch(102 * ms, replies_pending=lambda: True)
    assert core.down_until == 0.0
    # Silent: suspected on one tick, confirmed on the next.
    assert not core.watch(110 * ms, replies_pending=lambda: False)
    assert core.stall_suspected
    assert core.watch(112 * ms, replies_pending=lambda: False)
    assert core.breaker_tripped()
    assert core.stats.redis_stalls == 1
    assert not core.watch(114 * ms)  # open already: nothing more to do
    # The cooldown passes; the half-open breaker's trial read hangs too: it opens again.
    core.down_until = time.monotonic() - 0.01
    assert not core.breaker_tripped()
    core.waiting_since_ns = 200 * ms
    assert not core.watch(300 * ms)
    assert core.watch(302 * ms)
    assert core.stats.redis_stalls == 2
    # A full pool is an outage only while the breaker is open.
    assert isinstance(
        core.failure("get", "n", ("k",), 0, MaxConnectionsError("full")), CacheUnavailableError
    )
    core.redis_answered()
    assert isinstance(
        core.failure("get", "n", ("k",), 0, MaxConnectionsError("full")), CacheCommandError
    )


def test_a_high_priority_write_touches_its_key_in_the_same_round_trip() -> None:
    core, _ = make_core()
    high = core.set_plan("n", "k", {"v": 1}, ttl=60, priority="high")
    (batch,) = [next(high)]
    assert batch[0][0] == "SET"
    assert ("TOUCH", core.data_key("n", "k")) in batch
    normal = core.set_plan("n", "j", {"v": 1}, ttl=60)
    assert all(command[0] != "TOUCH" for command in next(normal))
    with pytest.raises(InvalidKeyError, match="priority must be one of"):
        core.set_plan("n", "k", 1, ttl=60, priority="urgent")


def test_edge_warms_start_high_priority_keys_first_and_low_ones_last() -> None:
    core, _ = make_core()
    for key, priority in (("a", "low"), ("c", "high"), ("d", "normal")):
        next(core.set_plan("n", key, 1, ttl=60, priority=priority))
    rule = [("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6)]

    def budget(n: int) -> Callable[[], bool]:
        left = [n]

        def available() -> bool:
            left[0] -= 1
            return left[0] >= 0

        return available

    order = [key for key, _ in worth_loading(core, "n", rule, lambda _: False, budget(9))]
    assert order == ["c", "b", "d", "a"]  # high, then the rule's order, then low
    assert [k for k, _ in worth_loading(core, "n", rule, lambda _: False, budget(1))] == ["c"]
    assert core.stats.edge_refused == 3
    # Set again as normal: the key goes back to the rule's order.
    next(core.set_plan("n", "c", 1, ttl=60))
    assert [k for k, _ in worth_loading(core, "n", rule, lambda _: False, budget(9))] == [
        "b",
        "c",
        "d",
        "a",
    ]

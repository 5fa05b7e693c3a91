"""The prefetch rule format and what a worker publishes."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.client.keys import RULE_SHARDS, USER_RULES, rules_hash
from pipeline.prefetch import (
    MAX_SUCCESSORS,
    TOMBSTONE_S,
    RulePlan,
    RuleSet,
    decode_rule,
    encode_rule,
)


def test_a_rule_round_trips() -> None:
    raw = encode_rule([("b", 0.8123), ("c", 0.5)], compiled_at=12.5, ttl=60)
    rule = decode_rule(raw)
    assert rule is not None
    assert rule.successors == (("b", 0.812), ("c", 0.5))
    assert (rule.ttl, rule.compiled_at) == (60, 12.5)


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_anything_else_in_redis_is_no_rule_and_never_raises(raw: bytes) -> None:
    rule = decode_rule(raw)
    assert rule is None or all(0.0 <= p <= 1.0 and key for key, p in rule.successors)


@pytest.mark.parametrize(
    "doc",
    [
        [2, 0, 0, []],
        [1, 0, -1, []],
        [1, "x", 0, []],
        [1, 0, 0, [["b"]]],
        [1, 0, 0, [["b", 1.5]]],
        [1, 0, 0, [[7, 0.5]]],
        [1, 0, 0, [["k" * 1025, 0.5]]],
        {"successors": []},
    ],
)
def test_malformed_rules_are_ignored(doc: object) -> None:
    assert decode_rule(orjson.dumps(doc)) is None


def test_rules_spread_over_shards_and_stay_in_their_namespace() -> None:
    shards = {rules_hash("p:", "ns", str(i)) for i in range(1_000)}
    assert len(shards) == RULE_SHARDS
    assert all(s.startswith("p:#rules:ns:") for s in shards)


def test_a_rule_set_writes_changes_only_and_deletes_emptied_rules() -> None:
    rules = RuleSet("p:")
    plan = rules.plan([("ns:a", [("ns:b", 0.9), ("other:x", 0.99)])], now=1.0)
    ((where, fields),) = plan.writes.items()
    assert where == rules_hash("p:", "ns", "a")
    rule = decode_rule(fields["a"])
    assert rule is not None
    assert rule.successors == (("b", 0.9),)
    assert not rules.plan([("ns:a", [("ns:b", 0.92)])], now=2.0)  # same rule: nothing
    assert rules.plan([("ns:a", [("ns:b", 0.6)])], now=3.0).writes  # moved: rewritten
    plan = rules.plan([("ns:a", [])], now=4.0)
    # Deleted: an empty rule in the stream, and a tombstone in the hash for a client
    # that reads the table again after losing stream entries.
    assert plan.updates == {"ns": [("a", ())]}
    tombstone = decode_rule(plan.writes[where]["a"])
    assert tombstone is not None
    assert tombstone.successors == ()
    assert (plan.deleted, plan.tombstones, plan.rules_written) == (1, 1, 0)
    assert not plan.deletes
    assert len(rules) == 0
    # The tombstone goes with the first round after TOMBSTONE_S, if its field still holds it.
    assert not rules.plan([("ns:c", [("ns:d", 0.9)])], now=4.0 + TOMBSTONE_S - 1).purges
    purge = rules.plan([("ns:e", [("ns:f", 0.9)])], now=4.0 + TOMBSTONE_S).purges
    assert purge == {where: {"a": plan.writes[where]["a"]}}


def _apply(hashes: dict[str, dict[str, bytes]], plan: RulePlan) -> None:
    """What Redis holds after ``plan``, as the predict agent sends it: HSET, HDEL, then a
    purge deletes a field only if it still holds the tombstone."""
    for where, fields in plan.writes.items():
        hashes.setdefault(where, {}).update(fields)
    for where, keys in plan.deletes.items():
        for key in keys:
            hashes.get(where, {}).pop(key, None)
    for where, tombstones in plan.purges.items():
        table = hashes.get(where, {})
        for key, tombstone in tombstones.items():
            if table.get(key) == tombstone:
                del table[key]


def test_tombstones_are_counted_apart_from_rules_whatever_happens_in_a_round() -> None:
    rules = RuleSet("p:", max_rules=1)
    rules.plan([("ns:a", [("ns:b", 0.9)])], now=1.0)
    # Deleted, then published again in the same round: one rule written, no tombstone.
    plan = rules.plan([("ns:a", []), ("ns:a", [("ns:c", 0.8)])], now=2.0)
    assert (plan.rules_written, plan.tombstones, plan.deleted) == (1, 0, 1)
    # Three new triggers past a bound of one: each pushes the one before out, and the
    # tombstones past their own bound (a quarter of it, so one) go at once.
    plan = rules.plan([("ns:x", [("ns:y", 0.9)]), ("ns:z", [("ns:y", 0.9)])], now=3.0)
    assert plan.rules_written == 1
    assert plan.deleted == 2
    written = [key for fields in plan.writes.values() for key in fields]
    tombstones = [key for key in written if key != "z"]
    assert plan.tombstones == len(tombstones) == 1
    assert plan.rules_written + plan.tombstones == len(written)


def test_a_purge_leaves_a_rule_another_worker_published_since() -> None:
    """Workers share the hashes: the tombstone one of them wrote goes only if nobody wrote
    the trigger's field since."""
    first, second = RuleSet("p:"), RuleSet("p:")
    hashes: dict[str, dict[str, bytes]] = {}
    _apply(hashes, first.plan([("ns:a", [("ns:b", 0.9)])], now=1.0))
    _apply(hashes, first.plan([("ns:a", [])], now=2.0))
    _apply(hashes, second.plan([("ns:a", [("ns:c", 0.8)])], now=3.0))
    _apply(hashes, first.plan([("ns:x", [("ns:y", 0.9)])], now=2.0 + TOMBSTONE_S))
    rule = decode_rule(hashes[rules_hash("p:", "ns", "a")]["a"])
    assert rule is not None
    assert rule.successors == (("c", 0.8),)


def test_a_rule_set_stays_within_its_bound_per_namespace() -> None:
    rules = RuleSet("p:", max_rules=10)
    hashes: dict[str, dict[str, bytes]] = {}
    deleted = 0
    for i in range(50):
        plan = rules.plan([(f"ns:t{i}", [(f"ns:s{i}", 0.9)])], now=float(i))
        deleted += plan.deleted
        _apply(hashes, plan)
    assert len(rules) == 10
    assert deleted == 40
    stored = {key: decode_rule(raw) for fields in hashes.values() for key, raw in fields.items()}
    held = {key for key, rule in stored.items() if rule is not None and rule.successors}
    assert held == {f"t{i}" for i in range(40, 50)}
    # The newest deletions stay as tombstones, a quarter of the bound at most.
    assert set(stored) - held == {"t38", "t39"}
    assert all(
        rule is not None and not rule.successors for key, rule in stored.items() if key not in held
    )


def test_a_rule_published_again_keeps_its_field_when_its_tombstone_would_go() -> None:
    rules = RuleSet("p:")
    hashes: dict[str, dict[str, bytes]] = {}
    _apply(hashes, rules.plan([("ns:a", [("ns:b", 0.9)])], now=1.0))
    _apply(hashes, rules.plan([("ns:a", [])], now=2.0))
    _apply(hashes, rules.plan([("ns:a", [("ns:c", 0.8)])], now=3.0))
    _apply(hashes, rules.plan([("ns:x", [("ns:y", 0.9)])], now=3.0 + 2 * TOMBSTONE_S))
    rule = decode_rule(hashes[rules_hash("p:", "ns", "a")]["a"])
    assert rule is not None
    assert rule.successors == (("c", 0.8),)


def test_user_rules_are_deleted_outright() -> None:
    users = RuleSet("p:", kind="userrules")
    users.plan_users([("ada", [("ns:a", 0.9)])], now=1.0)
    plan = users.plan_users([("ada", [])], now=2.0)
    assert plan.deletes == {rules_hash("p:", "ns", "ada", USER_RULES): ["ada"]}
    assert not plan.writes
    assert (plan.deleted, plan.tombstones) == (1, 0)


def test_a_lost_hash_is_rewritten_and_its_rules_sent_to_followers_again() -> None:
    rules = RuleSet("p:")
    rules.plan([(f"ns:t{i}", [(f"ns:s{i}", 0.9)]) for i in range(100)], now=1.0)
    lost = rules_hash("p:", "ns", "t7")
    plan = rules.restore([lost], now=2.0)
    assert set(plan.writes) == {lost}
    rewritten = set(plan.writes[lost])
    assert "t7" in rewritten
    # A client following the rule stream gets the same rules, not only the table.
    assert {trigger for trigger, _ in plan.updates["ns"]} == rewritten
    assert dict(plan.updates["ns"])["t7"] == (("s7", 0.9),)


def test_a_lost_hash_gets_its_tombstones_back() -> None:
    rules = RuleSet("p:")
    rules.plan([("ns:a", [("ns:b", 0.9)]), ("ns:c", [("ns:d", 0.9)])], now=1.0)
    rules.plan([("ns:a", [])], now=2.0)
    lost = rules_hash("p:", "ns", "a")
    plan = rules.restore([lost], now=3.0)
    tombstone = decode_rule(plan.writes[lost]["a"])
    assert tombstone is not None
    assert tombstone.successors == ()
    assert plan.tombstones == 1
    # Once old enough to be purged, a tombstone is not put back.
    assert "a" not in rules.restore([lost], now=2.0 + TOMBSTONE_S).writes.get(lost, {})


def test_the_hashes_to_watch_include_namespaces_with_only_tombstones() -> None:
    rules = RuleSet("p:")
    rules.plan([("ns:a", [("ns:b", 0.9)])], now=1.0)
    rules.plan([("ns:a", [])], now=2.0)
    assert rules_hash("p:", "ns", "a") in rules.hashes()
    with pytest.raises(ValueError, match="tombstone_s"):
        RuleSet("p:", tombstone_s=-1.0)


def test_encode_refuses_what_a_client_would_not_read() -> None:
    with pytest.raises(ValueError, match="at most"):
        encode_rule([(str(i), 0.5) for i in range(MAX_SUCCESSORS + 1)], compiled_at=0.0)
    with pytest.raises(ValueError, match="ttl"):
        encode_rule([("a", 0.5)], compiled_at=0.0, ttl=-1)

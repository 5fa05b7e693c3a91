"""Behaviour of each predictor, as a user of its predictions would notice it."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys

import pytest

from pipeline.models import (
    CacheHorizon,
    CoAccess,
    DecayedFrequency,
    InterArrival,
    SequenceReplay,
    SmartTTL,
    TimeProfile,
    UserAffinity,
    deep_sizeof,
    is_wall_clock,
    stable_hash,
)


class TestDecayedFrequency:
    def test_counts_decay_by_half_after_half_life(self) -> None:
        freq = DecayedFrequency(max_keys=16, half_life=100.0)
        freq.learn_one("a")
        for _ in range(100):
            freq.learn_one("b")
        assert freq.predict_one("a") == pytest.approx(0.5, rel=1e-9)

    def test_follows_a_change_in_popularity(self) -> None:
        freq = DecayedFrequency(max_keys=16, half_life=200.0)
        for _ in range(2_000):
            freq.learn_one("old")
        for _ in range(2_000):
            freq.learn_one("new")
        assert [key for key, _ in freq.most_common(2)] == ["new", "old"]

    def test_heavy_hitters_survive_a_flood_of_unique_keys(self) -> None:
        freq = DecayedFrequency(max_keys=200, half_life=10_000.0)
        for i in range(20_000):
            freq.learn_one("hot" if i % 10 == 0 else f"once-{i}")
        assert freq.n_tracked <= 200
        assert freq.most_common(1)[0][0] == "hot"
        assert freq.predict_one("hot") > 1_000

    def test_rebase_keeps_counts(self) -> None:
        freq = DecayedFrequency(max_keys=16, half_life=1.0)
        for _ in range(1_500):  # 2**1500 would overflow without rebasing
            freq.learn_one("k")
        assert freq.predict_one("k") == pytest.approx(2.0, rel=1e-6)
        assert math.isfinite(freq.total())

    def test_rejects_bad_parameters(self) -> None:
        with pytest.raises(ValueError, match="max_keys"):
            DecayedFrequency(max_keys=1)
        with pytest.raises(ValueError, match="half_life"):
            DecayedFrequency(half_life=0.0)


class TestInterArrival:
    def test_predicts_next_access_of_a_periodic_key(self) -> None:
        rec = InterArrival()
        for i in range(10):
            rec.learn_one("cron", 60.0 * i)
        assert rec.predict_one("cron") == pytest.approx(600.0)
        rhythm = rec.rhythm("cron")
        assert rhythm is not None
        assert rhythm.sigma < 1e-6
        assert rhythm.typical_gap == pytest.approx(60.0)

    def test_probability_rises_as_the_next_access_nears(self) -> None:
        rec = InterArrival()
        rng = random.Random(1)
        ts = 0.0
        for _ in range(50):
            ts += rng.uniform(80.0, 120.0)
            rec.learn_one("k", ts)
        early = rec.prob_within("k", ts + 10.0, 20.0)
        due = rec.prob_within("k", ts + 90.0, 20.0)
        assert early < 0.05 < 0.5 < due

    def test_a_single_access_has_no_rhythm(self) -> None:
        rec = InterArrival()
        rec.learn_one("k", 5.0)
        assert rec.last_seen("k") == 5.0
        assert rec.rhythm("k") is None
        assert rec.predict_one("k") is None
        assert rec.prob_within("k", 6.0, 100.0) == 0.0

    def test_evicts_the_keys_idle_the_longest(self) -> None:
        rec = InterArrival(max_keys=8)
        for i in range(20):
            rec.learn_one(i, float(i))
        assert rec.n_tracked <= 8
        assert rec.last_seen(19) == 19.0
        assert rec.last_seen(0) is None


class TestCoAccess:
    def test_reference_thresholds(self) -> None:
        co = CoAccess(window=4, min_support=3, min_confidence=0.3, top_n=2)
        for _ in range(2):
            for key in ["A", "B", "C"]:
                co.learn_one(key)
        assert co.predict_one("A") == []  # seen twice: below min_support
        for key in ["A", "B", "C", "A", "X"]:
            co.learn_one(key)
        assert co.predict_one("A") == [("B", 0.75), ("C", 0.75)]

    def test_a_successor_counts_once_per_occurrence(self) -> None:
        co = CoAccess(window=4, min_support=1, min_confidence=0.0)
        for key in ["A", "B", "B", "C"]:
            co.learn_one(key)
        assert co.confidence("A", "B") == 1.0  # B twice in A's window: one follow
        assert co.confidence("B", "C") == 1.0  # C followed the second B: the first one's
        assert co.support("B") == 2  # window ended when B recurred

    def test_each_occurrence_of_the_antecedent_counts(self) -> None:
        co = CoAccess(window=4, min_support=1, min_confidence=0.0)
        for key in ["A", "A", "B"]:
            co.learn_one(key)
        assert co.confidence("A", "B") == 1.0

    def test_successor_lists_are_trimmed(self) -> None:
        co = CoAccess(window=1, max_successors=8, trim_to=4, min_support=1, min_confidence=0.0)
        for i in range(100):
            co.learn_one("hub")
            co.learn_one(f"leaf-{i}")
        assert len(co._successors["hub"]) <= 8


class TestSequenceReplay:
    def test_predicts_the_rest_of_a_repeated_sequence(self) -> None:
        replay = SequenceReplay(history=1_024, lookahead=3)
        session = [f"page-{i}" for i in range(10)]
        noise = random.Random(0)
        for key in session:
            replay.learn_one(key)
        for _ in range(50):
            replay.learn_one(f"noise-{noise.random()}")
        predicted: list[object] = []
        for key in session[:4]:
            predicted += [candidate for candidate, *_ in replay.advance(key)]
        assert predicted == session[2:7]

    def test_confidence_grows_with_matches(self) -> None:
        replay = SequenceReplay(history=256, lookahead=1)
        for key in "abcdefgh":
            replay.learn_one(key)
        matches = [m for key in "abcdefg" for _, m, _, _ in replay.advance(key)]
        assert matches == sorted(matches)
        assert matches[-1] == 6

    def test_forgets_beyond_its_history(self) -> None:
        replay = SequenceReplay(history=16)
        replay.learn_one("x")
        replay.learn_one("y")
        for i in range(20):
            replay.learn_one(i)
        assert replay.predict_one("x") == []
        assert replay.advance("x") == []
        assert replay.advance("y") == []

    def test_matches_across_the_ring_boundary(self) -> None:
        replay = SequenceReplay(history=8, lookahead=1, window=4)
        for i in range(10):  # positions 8 and 9 overwrote ring slots 0 and 1
            replay.learn_one(f"k{i}")
        assert replay.advance("k6") == []
        assert replay.advance("k7") == [("k8", 1, 1, 4)]
        assert replay._scan("k9", 7, 9) == 9  # a window that wraps the ring
        assert replay._scan("absent", 7, 9) == -1


class TestUserAffinity:
    def test_returning_users_get_their_favourites(self) -> None:
        aff = UserAffinity(session_gap=100.0, top_n=1)
        for ts in range(5):
            aff.learn_one("dashboard", float(ts), user=1)
        aff.learn_one("help", 10.0, user=1)
        assert aff.is_session_start(1, 500.0)
        assert aff.predict_one(1) == [("dashboard", 5.0)]

    def test_keys_per_user_are_bounded(self) -> None:
        aff = UserAffinity(keys_per_user=4)
        for i in range(100):
            aff.learn_one(f"k{i}", float(i), user="u")
        assert len(aff._users["u"][1]) == 4

    def test_events_without_user_are_ignored(self) -> None:
        aff = UserAffinity()
        assert aff.learn_one("k", 1.0, user=None) == 0
        assert aff.n_tracked == 0

    def test_reads_are_counted_per_session(self) -> None:
        aff = UserAffinity(session_gap=10.0)
        assert [aff.learn_one("k", float(ts), user="u") for ts in (0, 1, 2)] == [1, 2, 3]
        assert aff.learn_one("k", 50.0, user="u") == 1  # silence: a new session
        assert aff.learn_one("k", 51.0, user="u") == 2

    def test_a_returning_user_gets_the_keys_of_each_of_their_sessions(self) -> None:
        aff = UserAffinity(session_gap=10.0, top_n=8, peers=0)
        ts = 0.0
        for session in range(6):
            for key in ("profile", "settings", f"once-{session}"):
                aff.learn_one(key, ts, user="ada")
                ts += 1.0
            ts += 100.0
        aff.learn_one("profile", ts, user="ada")  # a seventh session opens
        shares = {key: share for key, share, _ in aff.recommend("ada")}
        assert shares["settings"] > 0.75  # read in every session
        assert max(v for k, v in shares.items() if str(k).startswith("once")) < 0.5

    def test_a_new_user_gets_what_their_team_reads(self) -> None:
        aff = UserAffinity(session_gap=10.0, top_n=4)
        ts = 0.0
        for member in range(5):  # a team: each member reads the board and the roadmap
            for key in ("board", "roadmap", f"own-{member}", "board"):
                aff.learn_one(key, ts, user=f"m{member}")
                ts += 1.0
        for stranger in range(30):  # everyone reads the news
            aff.learn_one("news", ts, user=f"s{stranger}")
            aff.learn_one(f"theirs-{stranger}", ts, user=f"s{stranger}")
            ts += 1.0
        aff.learn_one("news", ts, user="new")
        aff.learn_one("board", ts + 1.0, user="new")
        keys = [key for key, _, _ in aff.recommend("new")]
        assert keys[0] == "roadmap"  # the team's, not the news readers'
        assert not any(str(key).startswith("theirs") for key in keys)
        # Another member's own keys are read by one neighbour in five: left out.
        assert not any(str(key).startswith("own") for key in keys)

    def test_a_late_event_continues_its_session(self) -> None:
        aff = UserAffinity(session_gap=60.0)
        nths = [aff.learn_one(k, ts, user="u") for k, ts in (("a", 1000.0), ("b", 1001.0))]
        nths.append(aff.learn_one("c", 500.0, user="u"))  # arrives late, from before
        nths.append(aff.learn_one("d", 1002.0, user="u"))
        assert nths == [1, 2, 3, 4]
        assert aff._users["u"][0][0] == 1002.0

    def test_a_session_of_one_offs_keeps_the_users_habits(self) -> None:
        aff = UserAffinity(session_gap=10.0, keys_per_user=4, peers=0)
        ts = 0.0
        for _ in range(3):
            for key in ("profile", "inbox"):
                aff.learn_one(key, ts, user="u")
                ts += 1.0
            ts += 100.0
        for i in range(6):  # a session of six keys read once, never before
            aff.learn_one(f"once-{i}", ts + i, user="u")
        assert {"profile", "inbox"} <= set(aff._users["u"][1])

    def test_users_no_longer_tracked_are_not_neighbours(self) -> None:
        aff = UserAffinity(max_users=4, session_gap=10.0, top_n=4, peers=1)
        aff.learn_one("board", 0.0, user="gone")  # shares the most with the new user...
        aff.learn_one("wiki", 1.0, user="gone")
        for i in range(3):
            aff.learn_one(f"elsewhere-{i}", 20.0 + i, user=f"x{i}")
        aff.learn_one("board", 25.0, user="mate")  # ...but is forgotten when mate comes
        aff.learn_one("roadmap", 26.0, user="mate")
        aff.learn_one("board", 30.0, user="new")
        aff.learn_one("wiki", 31.0, user="new")
        assert "gone" not in aff._users
        assert "gone" in aff._readers["wiki"][0]  # still indexed, never a neighbour
        assert [key for key, _, _ in aff.recommend("new")] == ["roadmap"]

    def test_ahead_the_current_session_counts_as_an_earlier_one(self) -> None:
        aff = UserAffinity(session_gap=10.0, top_n=4, peers=0)
        ts = 0.0
        for session in range(3):
            for key in ("profile", f"once-{session}"):
                aff.learn_one(key, ts, user="ada")
                ts += 1.0
            ts += 100.0
        now = {key: share for key, share, _ in aff.recommend("ada")}
        ahead = {key: share for key, share, _ in aff.recommend("ada", ahead=True)}
        # In the session under way profile was read in 2 of 2 earlier sessions; ahead,
        # in 3 of 3, with one more session of evidence.
        assert ahead["profile"] > now["profile"] > 0.5
        assert ahead["once-2"] > now["once-2"]  # read in the last session: one of three

    def test_a_users_rule_changes_with_their_reads_and_their_co_readers(self) -> None:
        aff = UserAffinity(session_gap=10.0)
        aff.learn_one("board", 0.0, user="ada")
        aff.learn_one("inbox", 1.0, user="cy")
        assert aff.drain_changed() == ["ada", "cy"]
        assert aff.drain_changed() == []
        aff.learn_one("board", 2.0, user="bob")  # ada read board too: her neighbour moved
        assert aff.drain_changed(limit=1) == ["bob"]  # the oldest change first
        assert aff.drain_changed() == ["ada"]

    def test_the_reader_index_is_bounded(self) -> None:
        aff = UserAffinity(max_users=8, keys_per_user=2, readers_per_key=3)
        for i in range(400):
            aff.learn_one(f"k{i % 50}", float(i), user=f"u{i % 20}")
        assert aff.n_tracked <= 8
        assert len(aff._readers) <= 8 * 2
        assert all(len(readers) <= 3 for readers, _ in aff._readers.values())
        assert aff.exclusivity("never") == 0.0


class TestTimeProfile:
    def test_weekday_profile(self) -> None:
        tp = TimeProfile(bins_per_day=24, weekly=True)
        monday = 1_700_438_400.0
        for week in range(4):
            base = monday + week * 7 * 86_400
            tp.learn_one("payroll", base + 4 * 86_400 + 10 * 3_600)  # Fridays 10:00
            for hour in range(7 * 24):
                tp.learn_one("home", base + hour * 3_600)
        friday = monday + 4 * 86_400 + 10 * 3_600
        assert tp.time_bin(monday) == 0
        assert tp.predict_one("payroll", friday) > 2 * tp.predict_one("payroll", friday - 86_400)
        assert tp.top_keys(friday, 1)[0][0] == "payroll"

    def test_wall_clock_detection(self) -> None:
        assert is_wall_clock(1.7e9)
        assert not is_wall_clock(5e6)


class TestSmartTTL:
    def test_clamped(self) -> None:
        ttl = SmartTTL(min_ttl=10, max_ttl=100, default_ttl=50, jitter=0.0)
        for ts in (0.0, 1.0, 2.0, 3.0):
            ttl.learn_one("fast", ts)
        for ts in (0.0, 1e6, 2e6):
            ttl.learn_one("slow", ts)
        assert ttl.predict_one("fast") == 10
        assert ttl.predict_one("slow") == 100
        assert ttl.predict_one("new") == 50

    def test_jitter_spreads_keys_warmed_together(self) -> None:
        ttl = SmartTTL(default_ttl=1_000, jitter=0.1, seed=1)
        values = [ttl.predict_one(f"batch-{i}") for i in range(200)]
        assert min(values) >= 900
        assert max(values) <= 1_100
        assert len(set(values)) > 100

    def test_seed_changes_jitter_not_range(self) -> None:
        a = [SmartTTL(seed=1).predict_one(i) for i in range(20)]
        b = [SmartTTL(seed=2).predict_one(i) for i in range(20)]
        assert a != b

    def test_time_scale_converts_ts_units_to_seconds(self) -> None:
        ttl = SmartTTL(min_ttl=1, max_ttl=10**6, default_ttl=1, jitter=0.0, time_scale=0.5)
        for ts in (0.0, 100.0, 200.0):
            ttl.learn_one("k", ts)
        assert ttl.predict_one("k") == 50


class TestCacheHorizon:
    def test_finds_the_lru_characteristic_time(self) -> None:
        rng = random.Random(2)
        horizon = CacheHorizon(initial=5_000.0, rate=0.02)
        for _ in range(20_000):
            reuse = rng.expovariate(1 / 500.0)
            horizon.learn_one(reuse, hit=reuse < 800.0)
        assert 650.0 < horizon.predict_one() < 950.0

    def test_bounded(self) -> None:
        horizon = CacheHorizon(initial=10.0, min_value=5.0, max_value=20.0)
        for _ in range(1_000):
            horizon.learn_one(1e9, hit=True)
        assert horizon.predict_one() == 20.0


def test_stable_hash_is_process_independent() -> None:
    code = "from pipeline.models import stable_hash; print(stable_hash('users:42'))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert outputs == {str(stable_hash("users:42"))}
    assert stable_hash(b"x") == stable_hash(b"x")


def test_deep_sizeof_counts_shared_objects_once() -> None:
    shared = list(range(1_000))
    assert deep_sizeof([shared, shared]) < 1.2 * deep_sizeof([shared])

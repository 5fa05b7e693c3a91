"""A synthetic workload with users and wall-clock time, and its ground truth.

SYNTHETIC: no public cache trace found so far carries timestamps, user ids and a
licence that lets the project ship a slice, so the models that need them
(time-of-week profiles, user similarity) are measured on this generator. Every
figure obtained with it says so.

What it generates, over ``days`` days from a Monday 00:00 UTC:

* **Cohorts of similar users.** Users belong to ``cohorts``; each cohort reads
  its own set of keys (Zipf-popular within the set), plus keys popular with
  everyone.
* **A daily cycle.** ``daily_keys`` keys each have an hour of the day; in that
  hour, and only then, a share of the traffic reads them (a morning report, a
  nightly batch's results).
* **A weekly cycle.** ``weekly_keys`` keys each have a day of the week and an
  hour, read only then.
* **Sessions** (``session_requests`` > 1): a user arrives, reads a run of keys
  (on average ``session_requests``, from their cohort's keys and everyone's)
  interleaved with ``concurrent_sessions`` other users' sessions, and leaves
  (a session reads at least its opening, below).
  With sessions off (1, the default), each request has a user drawn anew.
* **Personal keys** (``personal_keys`` > 0): each user has keys only they read
  (a profile, their settings, their inbox). With sessions, a session opens by
  reading them all, in an order of its own (an application's start screen),
  and ``personal_share`` of its later reads are of them too.
* **Team keys** (``team_keys`` > 0, with sessions): a session also opens by
  reading its cohort's first ``team_keys`` keys (a team's board: what every
  member looks at first; drift replaces them like the cohort's other keys).
* **One-hit wonders.** A share of requests read a key never read before or
  again.
* **Drift.** Every day each cohort swaps a share of its keys for new ones.
* **Traffic that follows the day**: more requests in the afternoon than at night.

>>> trace, truth = synthetic_workload(days=2, requests_per_day=2_000, seed=1)
>>> len(trace), trace.name, bool(trace.ts[0] >= 1.7e9), bool((trace.ts[1:] >= trace.ts[:-1]).all())
(4000, 'synthetic', True, True)
>>> len(truth.daily), len(truth.cohort_of) == int(trace.users.max()) + 1
(480, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipeline.sim.traces import Trace

__all__ = ["MONDAY", "WorkloadTruth", "session_workload", "synthetic_workload"]

#: 2023-11-20 00:00 UTC, a Monday.
MONDAY = 1_700_438_400.0
_DAY = 86_400.0
_HOUR = 3_600.0

# Key id ranges, so that the kinds of key never collide.
_COHORT_BASE = 100_000_000  # + cohort * 100_000 + key number
_GLOBAL_BASE = 2_000_000
_DAILY_BASE = 3_000_000
_WEEKLY_BASE = 4_000_000
_ONE_HIT_BASE = 10_000_000_000  # above every other kind
_PERSONAL_BASE = 1_000_000_000  # + user * 100 + key number


@dataclass(frozen=True)
class WorkloadTruth:
    """What the generator put in: the answers the models should find."""

    #: Daily key -> the hour of the day (UTC) it is read in.
    daily: dict[int, int]
    #: Weekly key -> (day of the week, 0 = Monday; hour).
    weekly: dict[int, tuple[int, int]]
    #: User -> cohort.
    cohort_of: list[int]
    #: One-hit-wonder requests.
    one_hit_requests: int


def _zipf_weights(n: int, alpha: float) -> npt.NDArray[np.float64]:
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** alpha
    normalised: npt.NDArray[np.float64] = weights / weights.sum()
    return normalised


def synthetic_workload(
    *,
    days: int = 7,
    requests_per_day: int = 20_000,
    users: int = 200,
    cohorts: int = 8,
    keys_per_cohort: int = 60,
    global_keys: int = 200,
    daily_keys: int = 480,
    weekly_keys: int = 140,
    daily_share: float = 0.05,
    weekly_share: float = 0.02,
    one_hit_share: float = 0.1,
    global_share: float = 0.3,
    drift_per_day: float = 0.1,
    zipf: float = 0.9,
    session_requests: float = 1.0,
    concurrent_sessions: int = 16,
    personal_keys: int = 0,
    personal_share: float = 0.0,
    team_keys: int = 0,
    seed: int = 0,
) -> tuple[Trace, WorkloadTruth]:
    """A trace with users and Unix timestamps, and what it was built from (see the module)."""
    if min(days, requests_per_day, users, cohorts, keys_per_cohort, global_keys) < 1:
        raise ValueError(
            "days, requests_per_day, users, cohorts, keys_per_cohort and global_keys must be >= 1"
        )
    if cohorts > 1_000 or keys_per_cohort + days * keys_per_cohort > 100_000:
        raise ValueError("at most 1,000 cohorts of keys that fit their id range (see _COHORT_BASE)")
    if session_requests < 1.0 or concurrent_sessions < 1:
        raise ValueError("session_requests must be >= 1 and concurrent_sessions >= 1")
    if personal_keys and users > (_ONE_HIT_BASE - _PERSONAL_BASE) // 100:
        raise ValueError("too many users for the personal keys' id range (see _PERSONAL_BASE)")
    if not 0 <= personal_keys <= 100 or (personal_share > 0.0 and not personal_keys):
        raise ValueError("personal_keys must be in [0, 100], and > 0 with a personal_share")
    if not 0 <= team_keys <= keys_per_cohort:
        raise ValueError("team_keys must be in [0, keys_per_cohort]")
    rng = np.random.default_rng(seed)
    cohort_of = [int(c) for c in rng.integers(0, cohorts, size=users)]
    cohort_keys = [
        [_COHORT_BASE + c * 100_000 + i for i in range(keys_per_cohort)] for c in range(cohorts)
    ]
    fresh = [keys_per_cohort] * cohorts  # next new key number per cohort (drift)
    cohort_weights = _zipf_weights(keys_per_cohort, zipf)
    global_weights = _zipf_weights(global_keys, zipf)
    daily = {_DAILY_BASE + i: (i * 24) // max(daily_keys, 1) for i in range(daily_keys)}
    weekly = {_WEEKLY_BASE + i: (i % 7, 8 + (i // 7) % 10) for i in range(weekly_keys)}
    by_hour: dict[int, list[int]] = {}
    for key, hour in daily.items():
        by_hour.setdefault(hour, []).append(key)
    by_week_hour: dict[tuple[int, int], list[int]] = {}
    for key, slot in weekly.items():
        by_week_hour.setdefault(slot, []).append(key)

    keys: list[int] = []
    times: list[float] = []
    who: list[int] = []
    one_hit = 0
    # Sessions: who holds each of the concurrent slots, and how many reads they have left.
    sessions = session_requests > 1.0
    slot_user: list[int] = []
    slot_left: list[int] = []
    slot_opening: list[list[int]] = []  # the personal keys a session opens with, still to read

    def opening(user: int) -> list[int]:
        first = [_PERSONAL_BASE + user * 100 + i for i in range(personal_keys)]
        first += cohort_keys[cohort_of[user]][:team_keys]
        return [first[int(i)] for i in rng.permutation(len(first))]

    if sessions:
        slot_user = [int(u) for u in rng.integers(0, users, size=concurrent_sessions)]
        slot_opening = [opening(user) for user in slot_user]
        lengths = rng.geometric(1.0 / session_requests, size=concurrent_sessions).tolist()
        slot_left = [max(len(first), n) for first, n in zip(slot_opening, lengths, strict=True)]
    for day in range(days):
        if day:
            for c in range(cohorts):  # drift: swap a share of each cohort's keys
                for _ in range(round(drift_per_day * keys_per_cohort)):
                    index = int(rng.integers(0, keys_per_cohort))
                    cohort_keys[c][index] = _COHORT_BASE + c * 100_000 + fresh[c]
                    fresh[c] += 1
        # Traffic follows the day: density 1 + 0.8 sin(...), peaking mid-afternoon.
        u = np.sort(rng.random(requests_per_day * 2))
        density = 1.0 + 0.8 * np.sin(2 * math.pi * (u - 0.375))
        kept = u[rng.random(len(u)) * 1.8 < density][:requests_per_day]
        if len(kept) < requests_per_day:  # rare: top up uniformly
            extra = rng.random(requests_per_day - len(kept))
            kept = np.sort(np.concatenate([kept, extra]))
        day_start = MONDAY + day * _DAY
        weekday = day % 7
        for frac in kept.tolist():
            ts = day_start + frac * _DAY
            hour = int(frac * 24)
            if sessions:
                seat = int(rng.integers(0, concurrent_sessions))
                user = slot_user[seat]
                first = slot_opening[seat].pop() if slot_opening[seat] else -1
                slot_left[seat] -= 1
                if slot_left[seat] <= 0:  # the session ends; another user arrives
                    slot_user[seat] = int(rng.integers(0, users))
                    slot_opening[seat] = opening(slot_user[seat])
                    slot_left[seat] = max(
                        len(slot_opening[seat]), int(rng.geometric(1.0 / session_requests))
                    )
                if first >= 0:
                    keys.append(first)
                    times.append(ts)
                    who.append(user)
                    continue
            else:
                user = int(rng.integers(0, users))
            if personal_share > 0.0 and float(rng.random()) < personal_share:
                keys.append(_PERSONAL_BASE + user * 100 + int(rng.integers(0, personal_keys)))
                times.append(ts)
                who.append(user)
                continue
            draw = float(rng.random())
            due_weekly = by_week_hour.get((weekday, hour))
            if draw < daily_share and hour in by_hour:
                choices = by_hour[hour]
                key = choices[int(rng.integers(0, len(choices)))]
            elif due_weekly and draw < daily_share + weekly_share:
                key = due_weekly[int(rng.integers(0, len(due_weekly)))]
            elif draw < daily_share + weekly_share + one_hit_share:
                key = _ONE_HIT_BASE + one_hit
                one_hit += 1
            elif draw < daily_share + weekly_share + one_hit_share + global_share:
                key = _GLOBAL_BASE + int(rng.choice(global_keys, p=global_weights))
            else:
                own = cohort_keys[cohort_of[user]]
                key = own[int(rng.choice(keys_per_cohort, p=cohort_weights))]
            keys.append(key)
            times.append(ts)
            who.append(user)
    trace = Trace(
        keys=np.asarray(keys, dtype=np.int64),
        ts=np.asarray(times, dtype=np.float64),
        name="synthetic",
        users=np.asarray(who, dtype=np.int64),
    )
    return trace, WorkloadTruth(daily, weekly, cohort_of, one_hit)


def session_workload(
    *, days: int = 4, requests_per_day: int = 20_000, users: int = 1_000, seed: int = 0
) -> tuple[Trace, WorkloadTruth]:
    """The workload with sessions that the user models are measured on (SYNTHETIC).

    Users in teams of 5 (``users // 5`` cohorts of 40 keys), sessions of 15 reads on
    average, 16 at once, each opening on its user's 4 personal keys and its team's 3
    keys, then reading the team's keys (Zipf 1.2), everyone's keys (15 %), one-hit
    wonders (5 %) and the hourly and weekly keys.

    >>> trace, truth = session_workload(days=1, requests_per_day=3_000, users=50)
    >>> len(trace), len(set(truth.cohort_of))
    (3000, 10)
    """
    return synthetic_workload(
        days=days,
        requests_per_day=requests_per_day,
        users=users,
        cohorts=max(1, min(1_000, users // 5)),
        keys_per_cohort=40,
        zipf=1.2,
        session_requests=15,
        concurrent_sessions=16,
        personal_keys=4,
        personal_share=0.2,
        team_keys=3,
        global_share=0.15,
        one_hit_share=0.05,
        seed=seed,
    )

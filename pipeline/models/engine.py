"""The façade the Faust agents and the simulator share: events in, warm candidates out."""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, NamedTuple

from pipeline.models.base import Key, deep_sizeof
from pipeline.models.ensemble import FEATURES, WarmScorer
from pipeline.models.frequency import DecayedFrequency
from pipeline.models.horizon import CacheHorizon
from pipeline.models.recency import InterArrival
from pipeline.models.rules import PrefetchRules
from pipeline.models.similarity import CoAccess, SequenceReplay, UserAffinity
from pipeline.models.temporal import WALL_CLOCK_EPOCH, TimeProfile, is_wall_clock
from pipeline.models.ttl import NewKeyReuse, SmartTTL

Reason = Literal["frequency", "recency", "similarity", "user", "temporal", "ensemble"]
"""Which model raised a candidate (every candidate is then scored by the ensemble).

``"ensemble"`` is reserved for candidates that no single model raised; the engine
itself reports the raising model.
"""

_THIRD = 1.0 / 3.0
_HOT_EVERY_MASK = 15  # heavy hitters are re-checked every 16 events
_GATE_EVERY = 1_024  # events between two reads of the new-key TTL gate
_SRC_RECENCY = FEATURES.index("from_recency")
_SRC_FREQUENCY = FEATURES.index("from_frequency")
_SRC_TEMPORAL = FEATURES.index("from_temporal")
#: Learned reads a key needs before its time profile can raise it (with reads in its
#: hour on two days for a daily habit): one-hit wonders would otherwise top every hour.
_MIN_SEASON_READS = 2.0
#: How much likelier than the traffic as a whole a key must be in a time bin for
#: its time profile to raise it there.
_MIN_SEASON_LIFT = 2.0
#: Queued time-profile keys considered per access (see WarmEngine._observe_time).
_SEASON_PER_ACCESS = 2
_SRC_USER = FEATURES.index("from_user")


class Candidate(NamedTuple):
    """A key worth warming now.

    ``score`` is the ensemble's probability that the key is requested within
    ``horizon`` (ts units, counted from the event that raised it).
    """

    key: Key
    score: float
    reason: Reason
    horizon: float


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Knobs of :class:`WarmEngine`. Times are in the events' ``ts`` units.

    Counts (``max_keys``, ``history``, ``half_life``...) are in events, so they mean
    the same whether ``ts`` is wall-clock seconds or a request index.
    """

    max_keys: int = 100_000
    """Most keys any per-key model tracks; each evicts its least valuable quarter past it."""
    history: int = 1 << 17
    """Accesses remembered by the sequence-replay model."""
    replay_misses_only: bool = True
    """Replay only accesses the cache could not serve alone (misses, warmed hits)."""
    match_window: int = 8
    """How far ahead of a replayed stream's head an access may match it."""
    lookahead: int = 2
    """Positions past a stream's head that are predicted (raise it for a slow pipeline)."""
    replay_skip: int = 0
    """Positions next to a stream's head not predicted (a slow pipeline lands them late)."""
    max_streams: int = 4
    """Replayed streams followed at once."""
    patience: int = 16
    """Accesses without a match before a stream is dropped."""
    coaccess_window: int = 2
    """Co-access window: a key "follows" another within this many accesses."""
    max_successors: int = 32
    """Successors kept per key by the co-access model."""
    half_life: float = 100_000.0
    """Accesses after which a decayed frequency has halved."""
    lead: float = 0.0
    """Expected time between an event and its warm landing (Kafka, model, loader)."""
    horizon: float = 1_000.0
    """Initial estimate of how long an unread key survives in the cache."""
    adapt_horizon: bool = True
    """Learn the horizon from hit/miss outcomes (needs ``hit`` on events)."""
    cached_fraction: float = 0.5
    """A key idle for less than this fraction of the horizon is taken as still cached."""
    threshold: float = 0.9
    """Initial admission threshold of the ensemble."""
    waste_budget: float | None = 0.03
    """Wasted warms allowed per read the origin would serve with warming off (demand
    misses and first reads of warmed values; None: fixed ``threshold``)."""
    min_threshold: float = 0.5
    """Lowest admission threshold the waste-budget controller may reach."""
    learning_rate: float = 0.05
    """SGD step of the ensemble's logistic regression."""
    learn_every: int = 2
    """The ensemble learns from one delayed label in this many (all are counted)."""
    max_candidates: int = 8
    """Most candidates admitted per event."""
    regular_sigma: float = 0.15
    """Keys whose log-gap deviates less than this are scheduled by their rhythm."""
    hot_keys: int = 64
    """Heavy hitters re-checked for warming when idle."""
    hot_refresh: int = 65_536
    """Events between two refreshes of the heavy-hitter list."""
    wall_clock: bool | None = None
    """Whether ``ts`` is Unix time (enables time-of-week profiles); None: detect."""
    wall_time: bool = True
    """With ``ts`` counting requests, keep time-of-week profiles on the events' own
    wall-clock time (``observe(..., wall_ts=...)``) when they carry one."""
    bins_per_day: int = 24
    """Time-of-week profile resolution."""
    max_users: int = 0
    """Most users the similarity model keeps (0: a tenth of ``max_keys``, at least 4)."""
    session_gap: float = 1_800.0
    """User silence that opens a new session (user affinity and similar users): in
    seconds of the events' own time when ``observe`` gets it (``event_ts``, or a
    wall-clock ``ts``), else in ts units."""
    user_top_n: int = 8
    """Most keys a user's session raises (their own and similar users' keys)."""
    user_peers: int = 8
    """Nearest similar users whose keys a session raises (0: the user's own only)."""
    user_rule_share: float = 0.65
    """User rules: the lowest estimated share of a user's sessions that read a key for
    the user's rule to name it (:meth:`WarmEngine.user_rules`)."""
    new_key_ttl: float = 0.1
    """TTL of a key seen for the first time, as a fraction of the horizon (0: none).

    Applied only while new keys come back after that TTL less than ``ttl_gate``
    times as often as known keys come back at all (measured online)."""
    ttl_gate: float = 0.5
    """Relative late-return rate of new keys below which they get the short TTL."""
    min_ttl: int = 60
    max_ttl: int = 86_400
    default_ttl: int = 3_600
    ttl_jitter: float = 0.1
    time_scale: float = 1.0
    """Seconds per ts unit, for smart TTLs."""
    seed: int = 0
    """Seed of every random choice (the TTL jitter)."""
    rule_window: int = 1
    """Prefetch rules: a successor comes within this many accesses after its trigger."""
    rule_label_window: int = 512
    """Prefetch rules: a rule came true when its successor is read within this many reads."""
    rule_top_n: int = 2
    """Prefetch rules: most keys one trigger loads."""
    rule_waste_budget: float | None = 0.03
    """Prefetch rules: wasted edge warms allowed per read the origin would serve with
    warming off (None: no budget)."""
    rule_min_probability: float = 0.5
    """Prefetch rules: the lowest calibrated probability ever admitted."""


class WarmEngine:
    """Online models behind one call: observe accesses, get keys to warm.

    The engine runs, on every access event, the frequency, recency, similarity
    (sequence replay, co-access), user (own keys, similar users) and temporal
    models; collects the keys they expect soon and are probably not cached;
    scores each with the
    ensemble (:class:`WarmScorer`); and returns those admitted as
    :class:`Candidate`. Delayed labels are handled inside: a candidate is checked
    against later accesses (``lead`` to ``lead + horizon`` after it was raised).

    ``hit`` on events (the cache outcome) lets the engine learn the cache's
    horizon and steer its waste budget; without it the configured horizon and a
    fixed threshold are used. Keys may be ints (simulator) or ``"ns:key"``
    strings (agents). All state is bounded by :class:`EngineConfig` and
    snapshots with :meth:`state_dict`.

    Examples
    --------
    >>> from pipeline.models import EngineConfig, WarmEngine
    >>> engine = WarmEngine(
    ...     EngineConfig(horizon=30.0, adapt_horizon=False, threshold=0.6, waste_budget=None)
    ... )
    >>> session = ["home", "cart", "price", "stock", "checkout", "shipping"]
    >>> ts, warmed = 0.0, []
    >>> for visit in range(60):
    ...     for key in session + [f"noise-{visit}-{i}" for i in range(50)]:
    ...         warmed += engine.observe(key, ts, hit=False)
    ...         ts += 1.0
    >>> {"price", "stock", "checkout"} <= {c.key for c in warmed}
    True
    >>> warmed[-1]
    Candidate(key='shipping', score=0.9..., reason='recency', horizon=30.0)
    >>> engine.stats()["precision"] > 0.9
    True
    >>> 60 <= engine.smart_ttl("home") <= 86_400
    True
    """

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = cfg = config or EngineConfig()
        self.frequency = DecayedFrequency(max_keys=cfg.max_keys, half_life=cfg.half_life)
        self.recency = InterArrival(max_keys=cfg.max_keys)
        self.coaccess = CoAccess(
            window=cfg.coaccess_window,
            max_keys=cfg.max_keys,
            max_successors=cfg.max_successors,
            trim_to=max(1, cfg.max_successors // 2),
        )
        self.replay = SequenceReplay(
            history=cfg.history,
            window=cfg.match_window,
            lookahead=cfg.lookahead,
            max_streams=cfg.max_streams,
            patience=cfg.patience,
            max_keys=cfg.max_keys,
            skip=cfg.replay_skip,
        )
        self.affinity = UserAffinity(
            max_users=max(4, cfg.max_users if cfg.max_users > 0 else cfg.max_keys // 10),
            session_gap=cfg.session_gap,
            top_n=cfg.user_top_n,
            peers=cfg.user_peers,
        )
        self.temporal = TimeProfile(
            max_keys=max(4, cfg.max_keys // 10), bins_per_day=cfg.bins_per_day
        )
        self.horizon = CacheHorizon(initial=cfg.horizon)
        self.scorer = WarmScorer(
            learning_rate=cfg.learning_rate,
            threshold=cfg.threshold,
            waste_budget=cfg.waste_budget,
            min_threshold=min(cfg.min_threshold, cfg.threshold),
            max_pending=2 * cfg.max_keys,
            learn_every=cfg.learn_every,
            seed=cfg.seed,
        )
        self.reuse = NewKeyReuse(
            short_fraction=cfg.new_key_ttl,
            ratio=cfg.ttl_gate,
            max_pending=cfg.max_keys,
            seed=cfg.seed,
        )
        self.ttl = SmartTTL(
            min_ttl=cfg.min_ttl,
            max_ttl=cfg.max_ttl,
            default_ttl=cfg.default_ttl,
            jitter=cfg.ttl_jitter,
            time_scale=cfg.time_scale,
            seed=cfg.seed,
            max_keys=4,
        )
        self.rules = PrefetchRules(
            window=cfg.rule_window,
            label_window=cfg.rule_label_window,
            max_keys=cfg.max_keys,
            top_n=cfg.rule_top_n,
            waste_budget=cfg.rule_waste_budget,
            min_probability=cfg.rule_min_probability,
        )
        self._wall_clock: bool | None = cfg.wall_clock
        self._wall_time = cfg.wall_time
        #: Scales the log-lift feature: a key read only in one hour of the day has a
        #: lift near ``bins_per_day``, which maps to 1.
        self._inv_log_bins = 1.0 / math.log(max(2, cfg.bins_per_day))
        #: Wall-clock time of the newest access (-1: none), and the seconds one request
        #: lasts, when ``ts`` counts requests (see :meth:`_observe_wall`).
        self._wall_ts = -1.0
        self._seconds_per_request = 0.0
        #: Keys of the upcoming time bin still to consider, and when that bin is.
        self._season: list[Key] = []
        self._season_when = -1.0
        self._events = 0
        self._schedule: list[tuple[float, int, Key, float]] = []  # (due, seq, key, last ts)
        self._scheduled = 0
        self._hot: list[Key] = []
        self._hot_cursor = 0
        self._time_bin = -1
        self._raised = 0
        # Hot-path copies of the configuration and bound methods.
        self._log_distance_norm = 1.0 / math.log1p(cfg.history)
        self._inv_lookahead = 1.0 / cfg.lookahead
        self._lead = cfg.lead
        self._cached_fraction = cfg.cached_fraction
        self._max_candidates = cfg.max_candidates
        self._adapt_horizon = cfg.adapt_horizon
        self._misses_only = cfg.replay_misses_only
        self._regular_var = cfg.regular_sigma * cfg.regular_sigma
        self._frequency_learn = self.frequency.learn_one
        self._recency_learn = self.recency.learn_one
        self._coaccess_learn = self.coaccess.learn_one
        self._replay_advance = self.replay.advance
        self._reuse_learn = self.reuse.learn_one
        self._rules_learn = self.rules.learn_one
        self._cached = self._probably_cached
        self._last_key: Key | None = None
        self._events_ts = 0.0
        self._last_new_miss = False
        self._gate_open = False
        self._gate_checked = -_GATE_EVERY

    # -- observing ---------------------------------------------------------------------------

    def observe(
        self,
        key: Key,
        ts: float,
        *,
        user: Key | None = None,
        hit: bool | None = None,
        warmed: bool = False,
        wall_ts: float = -1.0,
        event_ts: float = -1.0,
    ) -> list[Candidate]:
        """Learn from one access and return the candidates it raises (admitted ones).

        Parameters
        ----------
        key
            The accessed key.
        ts
            Its time (wall-clock seconds or request index; never decreasing).
        user
            Who accessed it, when known.
        hit
            The cache outcome, when known.
        warmed
            Whether a hit was served by a warmed copy.
        wall_ts
            When ``ts`` counts requests: the access's wall-clock time (Unix seconds),
            for the time-of-week profiles; -1 when unknown or too far off the
            worker's clock.
        event_ts
            The access's own time (Unix seconds) whatever its skew, for user
            sessions (a late event continues its session); -1: ``ts``.
        """
        scorer = self.scorer
        deadlines = scorer._deadlines
        if deadlines and deadlines[0][0] < ts:
            scorer.expire(ts)
        if key in scorer._pending:
            scorer.resolve(key, ts)
        recency_keys = self.recency._keys
        known = recency_keys.get(key)
        if hit is not None and known is not None and not warmed and self._adapt_horizon:
            self.horizon.learn_one(ts - known[0], hit)
        missed = hit is False
        # The waste-budget controller's counters, as WarmScorer.observe_access counts them
        # (written out here: a call per event): a first read of a warmed value is a read
        # the origin would have served too.
        scorer._window_events += 1
        if missed or (warmed and hit):
            scorer._window_misses += 1
        if scorer._window_events >= scorer.control_every:
            scorer._steer()
        horizon = self.horizon._value
        if missed or key in self.reuse._pending:
            self._reuse_learn(key, ts, missed=missed, new=known is None, horizon=horizon)
        self._last_key = key
        self._events_ts = ts
        self._last_new_miss = known is None and missed
        self._events += 1
        self._frequency_learn(key)
        self._recency_learn(key, ts)

        out: list[Candidate] = []
        miss = 1.0 if hit is False else 0.0
        # Sequence models see what the cache could not serve alone (misses and warmed
        # hits): hot keys that always hit would only dilute streams and successor lists.
        if hit is None or not hit or warmed or not self._misses_only:
            self._coaccess_learn(key)
            raised = self._replay_advance(key)
            if raised:
                inv_lookahead = self._inv_lookahead
                consider = self._consider
                for candidate, matches, offset, distance in raised:
                    consider(
                        out,
                        candidate,
                        ts,
                        horizon,
                        "similarity",
                        -1,
                        key,
                        matches,
                        offset * inv_lookahead,
                        distance,
                        miss,
                    )
        self._rules_learn(key, hit, warmed, self._cached)
        state = recency_keys[key]
        if state[1] >= 3.0 and state[3] < self._regular_var:
            self._schedule_rhythm(key, ts, horizon, state)
        schedule = self._schedule
        while schedule and schedule[0][0] <= ts:
            _, _, due_key, last_ts = heapq.heappop(schedule)
            if self.recency.last_seen(due_key) == last_ts:
                self._consider(
                    out, due_key, ts, horizon, "recency", _SRC_RECENCY, key, 0, 0.0, 0, miss
                )
        if self._events & _HOT_EVERY_MASK == 0:
            self._check_hot(out, key, ts, horizon, miss)
        if self._wall_clock is None:
            self._wall_clock = is_wall_clock(ts)
        if self._wall_clock:
            self._observe_time(out, key, ts, ts, 1.0, horizon, miss, True)
        elif wall_ts >= WALL_CLOCK_EPOCH and self._wall_time:
            # What the cache could not serve alone, as the sequence models, and only
            # keys read before: a key that always hits needs no warming, a key read once
            # has no habit, and learning every read cost a quarter more per event.
            learn = known is not None and (hit is not True or warmed)
            self._observe_wall(out, key, ts, wall_ts, horizon, miss, learn)
        if user is not None:
            affinity = self.affinity
            returning = user in affinity._users
            # Sessions are a matter of wall-clock silence (30 minutes by default), at
            # any traffic rate: on the request clock, the events' own time when known.
            nth = affinity.learn_one(key, event_ts if event_ts >= WALL_CLOCK_EPOCH else ts, user)
            # After the time profiles, so that a session's keys never take the slots
            # of an hour's. A session raises what the user and similar users read when
            # it opens (a known user), and at its second and third reads, when it has
            # shown where it goes: a new user's first chance, and the reads that find
            # neighbours.
            if nth == 2 or nth == 3 or (nth == 1 and returning):
                for favourite, own, peers in affinity.recommend(user):
                    self._consider(
                        out,
                        favourite,
                        ts,
                        horizon,
                        "user",
                        _SRC_USER,
                        key,
                        0,
                        0.0,
                        0,
                        miss,
                        -1.0,
                        own if own < 1.0 else 1.0,
                        peers if peers < 1.0 else 1.0,
                    )
        return out

    def observe_batch(
        self,
        keys: Sequence[Key],
        ts: Sequence[float],
        users: Sequence[Key | None] | None = None,
        hits: Sequence[bool | None] | None = None,
        warmed: Sequence[bool] | None = None,
    ) -> list[Candidate]:
        """:meth:`observe` each event of a batch in order; all admitted candidates.

        A Faust agent maps an ``AccessEvent`` to ``key=f"{namespace}:{key}"``,
        ``ts``, ``user``, ``hit = outcome == "hit"`` and ``warmed``.
        """
        if len(ts) != len(keys):
            raise ValueError("keys and ts must have the same length")
        out: list[Candidate] = []
        for i, key in enumerate(keys):
            out.extend(
                self.observe(
                    key,
                    ts[i],
                    user=None if users is None else users[i],
                    hit=None if hits is None else hits[i],
                    warmed=False if warmed is None else warmed[i],
                )
            )
        return out

    def _probably_cached(self, key: Key) -> bool:
        """Whether ``key`` was read recently enough to be still cached (as :meth:`_consider`)."""
        state = self.recency._keys.get(key)
        if state is None:
            return False
        return self._events_ts - state[0] < self._cached_fraction * self.horizon._value

    # -- candidates --------------------------------------------------------------------------

    def user_rules(self, limit: int | None = None) -> list[tuple[Key, list[tuple[Key, float]]]]:
        """Users whose rule may have changed since the last call, with their rule now.

        A user rule is what a client loads when it sees the user's session open
        (the edge path's counterpart of the worker's ``user`` warms, which arrive a
        Kafka round trip after the session's first read): the keys
        :meth:`UserAffinity.recommend` ranks for the user's *next* session whose
        estimated share of the user's sessions that read them is at least
        ``user_rule_share``, with that share as their probability, best first. An
        empty rule means "nothing to load". At most ``limit`` users (the oldest
        changes first); the rest wait.
        """
        affinity = self.affinity
        floor = self.config.user_rule_share
        rules: list[tuple[Key, list[tuple[Key, float]]]] = []
        for user in affinity.drain_changed(limit):
            rule = [
                (key, share if share < 1.0 else 1.0)
                for key, share, _ in affinity.recommend(user, True)
                if share >= floor
            ]
            rules.append((user, rule))
        return rules

    def _consider(
        self,
        out: list[Candidate],
        candidate: Key,
        ts: float,
        horizon: float,
        reason: Reason,
        source: int,
        antecedent: Key,
        matches: int,
        offset: float,
        distance: int,
        miss: float,
        when: float = -1.0,
        affinity: float = -1.0,
        peers: float = 0.0,
    ) -> None:
        """Score one raised key; register it for a label; admit it if good enough.

        ``when``: the wall-clock time the candidate is expected to be read, for its
        time-of-week lift (-1: ``lead`` from now with a wall-clock ``ts``; none on
        the request clock). ``affinity`` and ``peers``: a user candidate's shares of
        the user's and of similar users' sessions that read it
        (:meth:`UserAffinity.recommend`), its ``own`` and ``peers`` features (-1 and
        0: not a user candidate).
        """
        scorer = self.scorer
        entry = scorer._pending.get(candidate)
        if entry is not None and entry[3]:
            return  # already warmed and not requested since
        state = self.recency._keys.get(candidate)
        if state is not None:
            idle = ts - state[0]
            if idle < self._cached_fraction * horizon:
                return  # probably still cached: warming it would be a no-op
            staleness = math.log1p(idle / horizon) * _THIRD
            if staleness > 1.0:
                staleness = 1.0
            rhythm = self.recency.prob_within(candidate, ts + self._lead, horizon)
        else:
            staleness = 1.0
            rhythm = 0.0
        coaccess = self.coaccess
        support = coaccess._seen.get(antecedent, 0)
        confidence = 0.0
        if support:
            successors = coaccess._successors.get(antecedent)
            if successors:
                confidence = successors.get(candidate, 0) / support
        vector = [
            (matches if matches < 16 else 16) * 0.0625,
            offset,
            confidence,
            math.log1p(support) * 0.125,
            self.frequency.log_count(candidate) * 0.125,
            staleness,
            rhythm,
            0.0,
            math.log1p(distance) * self._log_distance_norm if distance else 0.0,
            miss,
            affinity if affinity > 0.0 else 0.0,
            peers,
            self.affinity.exclusivity(candidate) if affinity >= 0.0 else 0.0,
            0.0,
            0.0,
            0.0,
            0.0,
        ]
        # On the request clock only time-profile candidates carry their lift: for every
        # candidate it cost a third more per event (2.2 µs of 7, compiled).
        if self._wall_clock or (when >= 0.0 and self._wall_time):
            at = when if when >= 0.0 else ts + self._lead
            lift = self.temporal.predict_one(candidate, at)
            vector[7] = max(-1.0, min(1.0, math.log(lift) * self._inv_log_bins))
        if source >= 0:
            vector[source] = 1.0
        p = scorer.score(vector)
        admitted = p >= scorer._threshold and len(out) < self._max_candidates and scorer.admits(p)
        lead = self._lead
        scorer.register(candidate, ts, vector, admitted, lead, ts + lead + horizon, p, reason)
        self._raised += 1
        if admitted:
            out.append(Candidate(candidate, p, reason, lead + horizon))

    def _schedule_rhythm(self, key: Key, ts: float, horizon: float, state: list[float]) -> None:
        """A key with a steady rhythm gets a warm scheduled just before its next access."""
        gap = math.exp(state[2])
        if gap < horizon:
            return  # the cache keeps it between accesses anyway
        cfg = self.config
        due = ts + gap * (1.0 - 2.0 * cfg.regular_sigma) - self._lead
        self._scheduled += 1
        heapq.heappush(self._schedule, (due, self._scheduled, key, ts))
        if len(self._schedule) > cfg.max_keys:
            self._schedule = heapq.nsmallest(cfg.max_keys // 2, self._schedule)
            heapq.heapify(self._schedule)

    def _check_hot(
        self, out: list[Candidate], key: Key, ts: float, horizon: float, miss: float
    ) -> None:
        """Round-robin over the heavy hitters: one that went idle is worth warming back."""
        events = self._events
        if events % self.config.hot_refresh < 16 or events in (1_024, 8_192):
            self._hot = [hot for hot, _ in self.frequency.most_common(self.config.hot_keys)]
        if self._hot:
            self._hot_cursor = (self._hot_cursor + 1) % len(self._hot)
            hot = self._hot[self._hot_cursor]
            if hot != key:
                self._consider(
                    out, hot, ts, horizon, "frequency", _SRC_FREQUENCY, key, 0, 0.0, 0, miss
                )

    def _observe_wall(
        self,
        out: list[Candidate],
        key: Key,
        ts: float,
        wall: float,
        horizon: float,
        miss: float,
        learn: bool,
    ) -> None:
        """Time-of-week profiles on wall-clock time while ``ts`` counts requests.

        Seconds per request (a slow moving average of the gaps, idle gaps over a
        minute left out) convert the lead, counted in requests, into the time the
        raised keys will be read.
        """
        last = self._wall_ts
        if last >= 0.0:
            gap = wall - last
            if 0.0 <= gap < 60.0:
                self._seconds_per_request += 0.01 * (gap - self._seconds_per_request)
        if wall > last:
            self._wall_ts = wall
        self._observe_time(out, key, ts, wall, self._seconds_per_request, horizon, miss, learn)

    def _observe_time(
        self,
        out: list[Candidate],
        key: Key,
        ts: float,
        wall: float,
        seconds_per_ts: float,
        horizon: float,
        miss: float,
        learn: bool,
    ) -> None:
        """Time-of-week profiles; as each time bin comes up, raise the keys that peak in it.

        ``wall`` is the access's wall-clock time (``ts`` itself with ``wall_clock``),
        ``seconds_per_ts`` what one unit of ``ts`` lasts. A bin comes up once the
        lead reaches into it, so its keys land as it begins: raised earlier (by half
        the cache horizon, as before), they were evicted before most of their reads
        (on the synthetic workload, 5 % cache: -2.5 % misses instead of +0.3 %).
        Only a later bin than the last raises. Its keys queue up and are considered
        a few per access: at once they would overflow one access's candidate limit.
        """
        temporal = self.temporal
        if learn:
            temporal.learn_one(key, wall)
        upcoming = wall + self.config.lead * seconds_per_ts
        current = temporal.bin_number(upcoming)
        if current > self._time_bin:
            first = self._time_bin < 0
            self._time_bin = current
            if not first:
                peaks = temporal.top_keys(
                    upcoming, self.config.hot_keys, _MIN_SEASON_READS, _MIN_SEASON_LIFT
                )
                self._season = [peak for peak, _ in reversed(peaks)]  # popped best first
                self._season_when = upcoming
        queue = self._season
        for _ in range(_SEASON_PER_ACCESS):
            if not queue:
                break
            self._consider(
                out,
                queue.pop(),
                ts,
                horizon,
                "temporal",
                _SRC_TEMPORAL,
                key,
                0,
                0.0,
                0,
                miss,
                self._season_when,
            )

    # -- TTL, stats, state ---------------------------------------------------------------------

    def smart_ttl(self, key: Key) -> int:
        """TTL in seconds for ``key``, from its inter-arrival distribution (jittered, clamped).

        A key without a rhythm gets ``default_ttl``, or the short new-key TTL when
        new keys rarely come back on this traffic (see :meth:`miss_ttl`).
        """
        rhythm = self.recency.rhythm(key)
        default = None
        if rhythm is None and self.config.new_key_ttl > 0.0 and self.reuse.predict_one():
            default = self.config.new_key_ttl * self.horizon.predict_one() * self.config.time_scale
        return self.ttl.ttl_from(key, rhythm, default)

    def miss_ttl(self, key: Key) -> float | None:
        """TTL (ts units) for a key whose last observed access was a miss on a new key.

        New keys that rarely come back (one-hit wonders) are worth expiring after a
        fraction ``new_key_ttl`` of the cache horizon: the space goes to keys that do
        come back. Answers None (no TTL: let the cache decide) unless ``key`` is the
        key just observed, it missed, it was new, and :class:`NewKeyReuse` says a
        short TTL pays on this traffic. The agent turns it into an ``EXPIRE``.
        """
        if not self._last_new_miss or key != self._last_key or self.config.new_key_ttl <= 0.0:
            return None
        if self._events >= self._gate_checked + _GATE_EVERY:
            self._gate_checked = self._events
            self._gate_open = self.reuse.predict_one()
        if not self._gate_open:
            return None
        return self.config.new_key_ttl * self.horizon._value

    def drain_outcomes(self) -> dict[str, list[int]]:
        """Labelled predictions per namespace since the last call, both paths summed:
        the ensemble's candidates (worker warms) and the prefetch rules' successors
        (edge warms). Each value is ``[true positives, false positives, false negatives]``.
        """
        merged = self.scorer.drain_outcomes()
        for namespace, tally in self.rules.drain_outcomes().items():
            into = merged.get(namespace)
            if into is None:
                merged[namespace] = tally
            else:
                for i in range(3):
                    into[i] += tally[i]
        return merged

    def drain_strategies(self) -> dict[str, dict[str, list[int]]]:
        """Admitted warms labelled since the last call, per namespace and strategy: the
        reason that raised a worker warm (frequency, recency, similarity, user, temporal) and
        ``"rules"`` for the prefetch rules' (edge) successors. Each value is
        ``[read in time, not read in time]``.
        """
        merged = self.scorer.drain_strategies()
        for namespace, by_strategy in self.rules.drain_strategies().items():
            merged.setdefault(namespace, {}).update(by_strategy)
        return merged

    @property
    def horizon_estimate(self) -> float:
        """How long an unread key is believed to survive in the cache (ts units)."""
        return self.horizon.predict_one()

    def stats(self) -> dict[str, float]:
        """Online quality and size: the scorer's precision/recall/log-loss and counters."""
        out = self.scorer.stats()
        out.update(
            events=self._events,
            raised=self._raised,
            horizon=self.horizon.predict_one(),
            tracked_keys=self.n_tracked,
            lead=self._lead,
            lookahead=self.replay.lookahead,
            rule_triggers=self.rules.n_tracked,
            rule_threshold=self.rules.threshold,
        )
        return out

    @property
    def n_tracked(self) -> int:
        """Keys with per-key state (the largest of the per-key models)."""
        return max(self.frequency.n_tracked, self.recency.n_tracked, self.replay.n_tracked)

    def retune(self, lead: float, lookahead: int) -> None:
        """Change how long warms take to land (``lead``) and how far sequences are predicted.

        Takes effect from the next event; learned state is kept. The pipeline calls it
        as the measured warm latency and request rate move (see pipeline.decide).
        """
        if lead < 0.0 or lookahead < 1:
            raise ValueError("need lead >= 0 and lookahead >= 1")
        skip = min(self.replay.skip, lookahead - 1)
        self.config = replace(self.config, lead=lead, lookahead=lookahead, replay_skip=skip)
        self._lead = lead
        self._inv_lookahead = 1.0 / lookahead
        self.replay.lookahead = lookahead
        self.replay.skip = skip

    def memory_bytes(self) -> int:
        """Bytes held by the learned state (all models, pending labels, schedule)."""
        return deep_sizeof(self.state_dict())

    def _components(self) -> dict[str, Any]:
        return {
            "frequency": self.frequency,
            "recency": self.recency,
            "coaccess": self.coaccess,
            "replay": self.replay,
            "affinity": self.affinity,
            "temporal": self.temporal,
            "horizon": self.horizon,
            "scorer": self.scorer,
            "reuse": self.reuse,
            "rules": self.rules,
        }

    def state_dict(self) -> dict[str, Any]:
        """A picklable snapshot of all learned state (bounded like the engine)."""
        state: dict[str, Any] = {name: c.state_dict() for name, c in self._components().items()}
        state["engine"] = {
            "config": asdict(self.config),
            "wall_clock": self._wall_clock,
            "events": self._events,
            "schedule": list(self._schedule),
            "scheduled": self._scheduled,
            "hot": list(self._hot),
            "hot_cursor": self._hot_cursor,
            "time_bin": self._time_bin,
            "wall_ts": self._wall_ts,
            "seconds_per_request": self._seconds_per_request,
            "season": list(self._season),
            "season_when": self._season_when,
            "raised": self._raised,
            "last_key": self._last_key,
            "last_new_miss": self._last_new_miss,
            "gate_open": self._gate_open,
            "gate_checked": self._gate_checked,
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a snapshot taken by :meth:`state_dict` of an engine with the same config."""
        engine = state["engine"]
        if EngineConfig(**engine["config"]) != self.config:
            raise ValueError("snapshot was taken with a different EngineConfig")
        for name, component in self._components().items():
            if name == "rules" and name not in state:
                continue  # a snapshot from before prefetch rules: they start fresh
            component.load_state_dict(state[name])
        self._wall_clock = engine["wall_clock"]
        self._events = engine["events"]
        self._schedule = list(engine["schedule"])
        heapq.heapify(self._schedule)
        self._scheduled = engine["scheduled"]
        self._hot = list(engine["hot"])
        self._hot_cursor = engine["hot_cursor"]
        self._time_bin = engine["time_bin"]
        self._wall_ts = float(engine.get("wall_ts", -1.0))  # absent before wall time
        self._seconds_per_request = float(engine.get("seconds_per_request", 0.0))
        self._season = list(engine.get("season", []))
        self._season_when = float(engine.get("season_when", -1.0))
        self._raised = engine["raised"]
        self._last_key = engine["last_key"]
        self._last_new_miss = engine["last_new_miss"]
        self._gate_open = engine["gate_open"]
        self._gate_checked = engine["gate_checked"]

    def clone(self, **changes: Any) -> WarmEngine:
        """A fresh engine with the same configuration (optionally changed), no state."""
        return WarmEngine(replace(self.config, **changes))

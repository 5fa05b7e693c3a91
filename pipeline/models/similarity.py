"""Keys that follow each other, keys a user keeps coming back to, and similar users.

Three predictors of "after K, expect K1..Kn":

- :class:`CoAccess`: successor counts within a short window (the signal Mithril
  mines), aggregated over every occurrence of a key;
- :class:`SequenceReplay`: temporal streams: when the recent accesses replay
  the order of an earlier stretch of history, the keys that came next then are
  expected next now;
- :class:`UserAffinity`: per-user decayed key counts, and a bounded index of
  who read each key lately, so a user's session also raises what similar users
  read (for events that carry users).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from operator import itemgetter
from typing import ClassVar, Final

from pipeline.models.base import Key, Predictor, take_oldest

_by_count = itemgetter(1)


def _exclusivity(readers: tuple[list[Key], list[float]]) -> float:
    """1 / sqrt(how many different users a key's reader entry has counted)."""
    return 1.0 / math.sqrt(readers[1][0])


def _earlier(kept: list[float], current: float) -> tuple[float, float]:
    """A profile key's (earlier sessions that read it, reads): what eviction spares."""
    return (kept[1] - 1.0 if kept[2] == current else kept[1], kept[0])


#: Sessions of no reads added to a user's own: one session that read a key is not
#: a certainty that the next one will.
_PRIOR_SESSIONS: Final = 1.0
#: Neighbours' keys read in fewer of their sessions than this are not raised.
MIN_SHARE: Final = 0.3
#: The prior share of a key no other user reads: most such keys are one-offs (a
#: one-hit wonder, a long-tail item), so a key a user read in their one earlier
#: session is given 0.6, and a key read in each of many, about 0.8 (sessions decay
#: by 0.8: the weight of the earlier ones tends to 4).
_LONE_PRIOR: Final = 0.2


class CoAccess(Predictor):
    """Successor counts: how often each key followed another within ``window`` accesses.

    After each access to ``A``, every key ``B`` seen among the next ``window``
    accesses adds 1 to ``count(A -> B)`` (once per occurrence of ``A``, and not
    when ``A`` itself recurs first). ``predict_one(A)`` returns the ``top_n``
    successors whose confidence ``count(A -> B) / count(A)`` reaches
    ``min_confidence``, once ``A`` was seen ``min_support`` times.

    Memory is bounded: a key keeps at most ``max_successors`` successors (past it,
    the list is trimmed to its ``trim_to`` most frequent), and at most ``max_keys``
    antecedents are tracked (past it, the quarter seen least often is evicted).

    Parameters
    ----------
    window
        How many following accesses count as "followed".
    max_keys
        Most antecedent keys tracked at once.
    max_successors
        Most successors kept per key before trimming.
    trim_to
        Successors kept per key after trimming.
    min_support
        Accesses of ``A`` needed before it predicts anything.
    min_confidence
        Smallest ``count(A -> B) / count(A)`` predicted.
    top_n
        Most successors predicted.

    Examples
    --------
    >>> from pipeline.models import CoAccess
    >>> co = CoAccess(window=2, min_support=2, min_confidence=0.5)
    >>> for key in ["cart", "price", "stock", "home", "cart", "price", "stock"]:
    ...     co.learn_one(key)
    >>> co.predict_one("cart")
    [('price', 1.0), ('stock', 1.0)]
    >>> co.confidence("cart", "home")
    0.0
    >>> co.predict_one("unseen")
    []
    """

    _state_attrs: tuple[str, ...] = ("_successors", "_seen", "_recent")

    #: The constructor's parameters (compiled classes have no signature to read).
    PARAMS: ClassVar[tuple[str, ...]] = (
        "window",
        "max_keys",
        "max_successors",
        "trim_to",
        "min_support",
        "min_confidence",
        "top_n",
    )

    def __init__(
        self,
        window: int = 4,
        max_keys: int = 100_000,
        max_successors: int = 64,
        trim_to: int = 32,
        min_support: int = 3,
        min_confidence: float = 0.3,
        top_n: int = 2,
    ) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        if not 1 <= trim_to <= max_successors:
            raise ValueError("need 1 <= trim_to <= max_successors")
        if max_keys < 4:
            raise ValueError("max_keys must be >= 4")
        self.window = window
        self.max_keys = max_keys
        self.max_successors = max_successors
        self.trim_to = trim_to
        self.min_support = min_support
        self.min_confidence = min_confidence
        self.top_n = top_n
        self._successors: dict[Key, dict[Key, int]] = {}
        self._seen: dict[Key, int] = {}
        self._recent: deque[Key] = deque(maxlen=window)

    def learn_one(self, key: Key) -> None:
        """Record an access to ``key``: it followed each key of the recent window."""
        successors = self._successors
        for antecedent in reversed(self._recent):
            if antecedent == key:
                break  # earlier occurrences are followed by this key's own recurrence
            counts = successors.get(antecedent)
            if counts is None:
                counts = successors[antecedent] = {}
            counts[key] = counts.get(key, 0) + 1
            if len(counts) > self.max_successors:
                ranked = sorted(counts.items(), key=_by_count, reverse=True)
                successors[antecedent] = dict(ranked[: self.trim_to])
        self._recent.append(key)
        seen = self._seen
        seen[key] = seen.get(key, 0) + 1
        if len(seen) > self.max_keys:
            self._evict()

    def predict_one(self, key: Key) -> list[tuple[Key, float]]:
        """The likely successors of ``key`` with their confidence, most confident first."""
        seen = self._seen.get(key, 0)
        counts = self._successors.get(key)
        if seen < self.min_support or not counts:
            return []
        floor = self.min_confidence * seen
        top = heapq.nlargest(self.top_n, counts.items(), key=lambda item: item[1])
        return [(successor, count / seen) for successor, count in top if count >= floor]

    def confidence(self, antecedent: Key, successor: Key) -> float:
        """``count(antecedent -> successor) / count(antecedent)``; 0.0 when unknown."""
        counts = self._successors.get(antecedent)
        if not counts:
            return 0.0
        count = counts.get(successor, 0)
        return count / self._seen[antecedent] if count else 0.0

    def support(self, key: Key) -> int:
        """How many accesses of ``key`` are counted."""
        return self._seen.get(key, 0)

    @property
    def n_tracked(self) -> int:
        return len(self._seen)

    def _evict(self) -> None:
        keep = (self.max_keys * 3) // 4
        survivors = heapq.nlargest(keep, self._seen.items(), key=lambda item: item[1])
        self._seen = dict(survivors)
        self._successors = {
            key: counts for key, counts in self._successors.items() if key in self._seen
        }


class SequenceReplay(Predictor):
    """Temporal streams: replay what followed the last time this sequence was seen.

    The model keeps a ring buffer of the last ``history`` accesses and the position
    of each key's last access. An access to ``K`` opens a *stream* at ``K``'s
    previous position; each later access that appears within the next ``window``
    positions of a stream's history advances the stream (a *match*). Once a stream
    has ``min_matches`` matches, the keys up to ``lookahead`` positions past its
    head are predicted, each once: the recent accesses repeat an old order, so what
    came next then is expected next now (the nearest ``skip`` excepted, and at
    most ``max_step`` new ones per access). Streams that do not match for
    ``patience`` accesses are dropped; at most ``max_streams`` are followed.

    This is the sequence counterpart of :class:`CoAccess`: it needs no counts and
    carries context (a stream with many matches is a confident one), and its
    ``lookahead`` lets a slow pipeline warm keys further ahead.

    Memory is bounded by ``history`` positions and ``max_keys`` last positions.

    Parameters
    ----------
    history
        Accesses remembered (rounded up to a power of two).
    window
        How far ahead of a stream's head an access may be found to match it.
    lookahead
        How many positions past a stream's head are predicted.
    max_streams
        Most streams followed at once.
    patience
        Accesses without a match before a stream is dropped.
    min_matches
        Matches before a stream predicts.
    max_keys
        Most last positions kept.
    skip
        Positions right after the head that are not predicted (a slow pipeline
        could not warm them in time).
    max_step
        Most new positions a stream predicts per access; a stream whose frontier
        is behind catches up over the next accesses.

    Examples
    --------
    >>> from pipeline.models import SequenceReplay
    >>> replay = SequenceReplay(history=64, lookahead=2)
    >>> for key in ["login", "profile", "feed", "ads", "logout"]:
    ...     replay.learn_one(key)

    The same session starts again: after two matching accesses, the stream
    predicts the keys that followed last time.

    >>> replay.advance("login")
    []
    >>> replay.advance("profile")
    [('feed', 1, 1, 5), ('ads', 1, 2, 5)]
    >>> replay.predict_one("feed")
    ['ads', 'logout']
    >>> replay.predict_one("unseen")
    []
    """

    _state_attrs: tuple[str, ...] = ("_ring", "_n", "_last", "_streams")

    #: The constructor's parameters (compiled classes have no signature to read).
    PARAMS: ClassVar[tuple[str, ...]] = (
        "history",
        "window",
        "lookahead",
        "max_streams",
        "patience",
        "min_matches",
        "max_keys",
        "skip",
        "max_step",
    )

    def __init__(
        self,
        history: int = 1 << 17,
        window: int = 8,
        lookahead: int = 2,
        max_streams: int = 8,
        patience: int = 16,
        min_matches: int = 1,
        max_keys: int = 100_000,
        skip: int = 0,
        max_step: int = 4,
    ) -> None:
        if history < 8:
            raise ValueError("history must be >= 8")
        if window < 1 or lookahead < 1 or max_streams < 1 or patience < 0:
            raise ValueError("window, lookahead and max_streams must be >= 1, patience >= 0")
        if max_keys < 4:
            raise ValueError("max_keys must be >= 4")
        if not 0 <= skip < lookahead or max_step < 1:
            raise ValueError("need 0 <= skip < lookahead and max_step >= 1")
        self.history = history
        self.window = window
        self.lookahead = lookahead
        self.max_streams = max_streams
        self.patience = patience
        self.min_matches = min_matches
        self.max_keys = max_keys
        self.skip = skip
        self.max_step = max_step
        self._size = 1 << (history - 1).bit_length()
        self._mask = self._size - 1
        self._ring: list[Key | None] = [None] * self._size
        self._n = 0  # absolute position of the next access
        self._last: dict[Key, int] = {}
        # Each stream: [head position, matches, accesses since last match, last predicted position]
        self._streams: list[list[int]] = []

    def learn_one(self, key: Key) -> None:
        """Record an access to ``key`` (the predictions it releases are dropped)."""
        self.advance(key)

    def advance(self, key: Key) -> list[tuple[Key, int, int, int]]:
        """Record an access and return the keys it newly predicts.

        Returns ``(key, matches, offset, distance)``: the stream's match count (its
        confidence), how many positions past the stream's head the key lies, and how
        many accesses ago the stream's head was recorded (how old the replayed history is).
        """
        ring = self._ring
        mask = self._mask
        n = self._n
        newest = n - 1
        oldest = n - self._size
        window = self.window
        patience = self.patience
        matched = False
        alive: list[list[int]] = []
        heads: set[int] = set()
        previous = self._last.get(key)
        for stream in self._streams:
            head = stream[0]
            if head <= oldest:
                continue
            # Is the key in the window after the head? Its last position answers without
            # a scan unless it recurred past the window (then scan the window itself).
            found = -1
            if previous is not None and previous > head:
                stop = head + window
                if previous <= stop:
                    found = previous
                else:
                    found = self._scan(key, head + 1, stop if stop < newest else newest)
            if found >= 0:
                stream[0] = found
                stream[1] += 1
                stream[2] = 0
                if stream[3] < found:
                    stream[3] = found
                matched = True
            else:
                stream[2] += 1
                if stream[2] > patience:
                    continue
            if stream[0] in heads:
                continue  # two streams converged on one head: keep the first
            heads.add(stream[0])
            alive.append(stream)
        if previous is not None and not matched and previous > oldest and previous not in heads:
            alive.insert(0, [previous, 0, 0, previous])
            if len(alive) > self.max_streams:
                alive.pop()
        self._streams = alive

        out: list[tuple[Key, int, int, int]] = []
        min_matches = self.min_matches
        lookahead = self.lookahead
        skip = self.skip
        max_step = self.max_step
        for stream in alive:
            if stream[2] == 0 and stream[1] >= min_matches:
                head = stream[0]
                start = stream[3] + 1
                if start <= head + skip:
                    start = head + skip + 1
                stop = head + lookahead
                if stop > newest:
                    stop = newest
                if stop >= start + max_step:
                    stop = start + max_step - 1
                for pos in range(start, stop + 1):
                    candidate = ring[pos & mask]
                    if candidate != key:
                        out.append((candidate, stream[1], pos - head, n - head))
                if stop > stream[3]:
                    stream[3] = stop

        ring[n & mask] = key
        self._last[key] = n
        self._n = n + 1
        if len(self._last) > self.max_keys:
            self._evict()
        return out

    def _scan(self, key: Key, start: int, stop: int) -> int:
        """Absolute position of ``key`` in positions ``[start, stop]`` of the ring, or -1."""
        if start > stop:
            return -1
        ring = self._ring
        mask = self._mask
        lo = start & mask
        hi = stop & mask
        try:
            if lo <= hi:
                return start + ring.index(key, lo, hi + 1) - lo
            try:
                return start + ring.index(key, lo) - lo
            except ValueError:
                return stop - hi + ring.index(key, 0, hi + 1)
        except ValueError:
            return -1

    def predict_one(self, key: Key) -> list[Key]:
        """The keys that followed ``key``'s last access (up to ``lookahead`` of them)."""
        previous = self._last.get(key)
        if previous is None or previous <= self._n - self._size:
            return []
        stop = min(previous + self.lookahead, self._n - 1)
        return [self._ring[pos & self._mask] for pos in range(previous + 1, stop + 1)]

    @property
    def n_tracked(self) -> int:
        return len(self._last)

    def _evict(self) -> None:
        oldest = self._n - self._size
        last = {key: pos for key, pos in self._last.items() if pos > oldest}
        if len(last) > (self.max_keys * 3) // 4:
            ordered = sorted(last.items(), key=lambda item: item[1])
            last = dict(ordered[len(ordered) - (self.max_keys * 3) // 4 :])
        self._last = last


class UserAffinity(Predictor):
    """Keys a user keeps coming back to, and keys similar users read.

    Per user, decayed counts of the keys they accessed and of the sessions that
    read each (at most ``keys_per_user``; past it the key read in the fewest
    earlier sessions is replaced), and per key its latest
    ``readers_per_key`` readers: a bounded nearest-neighbour index over users'
    recent keys. A user's neighbours are the users who read the most of the same
    keys lately (found through the index, never by scanning users).
    :meth:`recommend` ranks what the user is likely to read in a session: their
    own favourites, and what their ``peers`` nearest neighbours read, weighted by
    how much each neighbour shares with them. That is how a user's session raises
    what similar users read (a team's documents of the day, a cohort's new items)
    before the user has read it once.

    :meth:`learn_one` returns which read of its session an access is (1: it opens
    a session, after ``session_gap`` of silence or for a new user), so the engine
    can raise keys when a session opens and again once it has shown a little of
    where it goes.

    Memory is bounded by ``max_users`` users (past it, the quarter idle the longest
    is evicted) times ``keys_per_user``, plus ``readers_per_key`` users for each
    key held in a profile.

    Hand-written, not river's ``reco.FunkMF``: on the SYNTHETIC sessions of
    ``pipeline.sim.synthetic.session_workload`` (30,000 reads, 1,889 sessions),
    ``benchmarks/river_estimators.py`` measured, for the 5 keys ranked as each
    session opens: :meth:`recommend` 4,945 of 6,375 read in the session, at 4.5-5.6
    µs per update and 31-42 µs per query; FunkMF 1,056 of 9,430, at 32-34 µs and
    8-10 ms (a factorisation model must score every key to rank a user's); the
    user's own keys alone (:meth:`predict_one`) 4,476 of 5,103 (nothing for a new
    user).

    Parameters
    ----------
    max_users
        Most users tracked.
    keys_per_user
        Most keys kept per user.
    session_gap
        Silence (in ts units) after which a user's next access opens a new session.
    decay
        Factor applied to a user's counts at each new session.
    top_n
        Most keys predicted.
    peers
        Nearest neighbours whose keys :meth:`recommend` ranks (0: own keys only).
    readers_per_key
        Latest readers indexed per key.

    Examples
    --------
    >>> from pipeline.models import UserAffinity
    >>> aff = UserAffinity(session_gap=60.0, top_n=2)
    >>> for ts, key in [(0, "inbox"), (1, "contacts"), (2, "inbox"), (3, "settings")]:
    ...     _ = aff.learn_one(key, float(ts), user="ada")
    >>> aff.predict_one("ada")
    [('inbox', 2.0), ('contacts', 1.0)]
    >>> aff.is_session_start("ada", 10.0), aff.is_session_start("ada", 100.0)
    (False, True)
    >>> aff.predict_one("stranger")
    []

    Ada and Bob read the team's keys; Cy, new, opens a session on the team's board:

    >>> aff = UserAffinity(session_gap=60.0, top_n=3)
    >>> for user in ("ada", "bob"):
    ...     for ts, key in enumerate(["inbox", "board", "roadmap"]):
    ...         _ = aff.learn_one(key, float(ts), user=user)
    >>> _ = aff.learn_one("report", 5.0, user="bob")
    >>> aff.learn_one("board", 10.0, user="cy")  # the first read of a session
    1
    >>> [(key, round(peers, 2)) for key, _, peers in aff.recommend("cy")]
    [('inbox', 1.0), ('roadmap', 1.0), ('report', 0.5)]
    >>> UserAffinity().recommend("cy")  # a fresh model knows no one
    []
    """

    _state_attrs: tuple[str, ...] = ("_users", "_readers")

    #: The constructor's parameters (compiled classes have no signature to read).
    PARAMS: ClassVar[tuple[str, ...]] = (
        "max_users",
        "keys_per_user",
        "session_gap",
        "decay",
        "top_n",
        "peers",
        "readers_per_key",
    )

    def __init__(
        self,
        max_users: int = 10_000,
        keys_per_user: int = 16,
        session_gap: float = 1800.0,
        decay: float = 0.8,
        top_n: int = 4,
        peers: int = 8,
        readers_per_key: int = 16,
    ) -> None:
        if max_users < 4 or keys_per_user < 1 or peers < 0 or readers_per_key < 1:
            raise ValueError(
                "max_users must be >= 4, keys_per_user >= 1, peers >= 0, readers_per_key >= 1"
            )
        self.max_users = max_users
        self.keys_per_user = keys_per_user
        self.session_gap = session_gap
        self.decay = decay
        self.top_n = top_n
        self.peers = peers
        self.readers_per_key = readers_per_key
        # user -> ([last ts, reads in this session, sessions (decayed), session number],
        #          key -> [reads (decayed), sessions it was read in (decayed), last session])
        self._users: dict[Key, tuple[list[float], dict[Key, list[float]]]] = {}
        # key -> (its latest readers, oldest first; how many different readers it had)
        self._readers: dict[Key, tuple[list[Key], list[float]]] = {}
        # Users whose next-session recommendation may have changed since the last
        # drain_changed() (not state: a restored model publishes again as users read).
        self._changed: dict[Key, None] = {}

    def learn_one(self, key: Key, ts: float, user: Key | None = None) -> int:
        """Record that ``user`` accessed ``key`` at ``ts``; which read of its session it is.

        0 without a user (nothing is learnt); 1 when the access opens a session. A
        ``ts`` older than the user's last (a late event) continues their session.
        """
        if user is None:
            return 0
        entry = self._users.get(user)
        if entry is None:
            if len(self._users) >= self.max_users:
                self._evict()
            entry = ([ts, 0.0, 1.0, 1.0], {})
            self._users[user] = entry
        state, counts = entry
        if ts - state[0] > self.session_gap:
            decay = self.decay
            for held in counts.values():
                held[0] *= decay
                held[1] *= decay
            state[1] = 0.0
            state[2] = state[2] * decay + 1.0
            state[3] += 1.0
        if ts > state[0]:
            state[0] = ts
        state[1] += 1.0
        current = state[3]
        kept = counts.get(key)
        if kept is None:
            if len(counts) >= self.keys_per_user:
                # The key read in the fewest earlier sessions goes (this session's one-offs
                # before the habits of the last ones), then the least read.
                del counts[min(counts, key=lambda k: _earlier(counts[k], current))]
            counts[key] = [1.0, 1.0, current]
        else:
            kept[0] += 1.0
            if kept[2] != current:
                kept[1] += 1.0
                kept[2] = current
        changed = self._changed
        if len(changed) >= self.max_users:
            changed.clear()  # nobody drains them: publishing is off
        changed[user] = None
        found = self._readers.pop(key, None)  # re-inserted: the index's order is recency
        if found is None:
            if len(self._readers) >= self.max_users * self.keys_per_user:
                self._evict_readers()
            self._readers[key] = ([user], [1.0])
        else:
            # The key's other readers have a neighbour whose sessions just changed.
            for reader in found[0]:
                changed[reader] = None
            self._readers[key] = found
            readers = found[0]
            if readers[-1] != user:
                if user in readers:
                    readers.remove(user)
                else:
                    found[1][0] += 1.0
                readers.append(user)
                if len(readers) > self.readers_per_key:
                    del readers[0]
        return int(state[1])

    def is_session_start(self, user: Key, ts: float) -> bool:
        """Whether an access by ``user`` at ``ts`` opens a new session (a known user back)."""
        entry = self._users.get(user)
        return entry is not None and ts - entry[0][0] > self.session_gap

    def predict_one(self, user: Key) -> list[tuple[Key, float]]:
        """The user's most accessed keys with their decayed counts, highest first."""
        entry = self._users.get(user)
        if entry is None:
            return []
        reads = [(key, kept[0]) for key, kept in entry[1].items()]
        return heapq.nlargest(self.top_n, reads, key=_by_count)

    def recommend(self, user: Key, ahead: bool = False) -> list[tuple[Key, float, float]]:
        """What ``user`` is likely to read in this session: ``(key, share, peers)``, best first.

        ``ahead``: in the user's *next* session instead (the current one counts
        as an earlier session), what a published user rule names.

        ``peers`` estimates the probability that a session of the user reads the
        key from their neighbours: the share of each neighbour's sessions that read
        it, averaged with each neighbour weighted by its similarity (and shrunk
        when the neighbours are only faintly similar). A neighbour's similarity is
        the weight of the user's keys it read too over the weight of all the
        user's keys, where a key weighs less the more different readers it has had
        (a key everyone reads says nothing about taste).

        ``share``, for a key of the user's profile, is the share of their earlier
        sessions that read it, with ``peers`` as its prior worth one session (a key
        only this user reads has no neighbours' word: its prior is
        :data:`_LONE_PRIOR`); for a key they never read, ``peers`` too. Neighbours'
        keys under :data:`MIN_SHARE` are left out. Ranked by ``share``.
        """
        entry = self._users.get(user)
        if entry is None:
            return []
        state, mine = entry
        readers = self._readers
        users = self._users
        peer_scores: dict[Key, float] = {}
        if self.peers:
            shared: dict[Key, float] = {}
            total = 0.0
            for key in mine:
                found = readers.get(key)
                if found is None:
                    continue
                weight = _exclusivity(found)
                total += weight
                for reader in found[0]:
                    if reader != user and reader in users:
                        shared[reader] = shared.get(reader, 0.0) + weight
            if shared:
                nearest = heapq.nlargest(self.peers, shared.items(), key=_by_count)
                mass = sum(overlap for _, overlap in nearest) / total
                norm = 1.0 / (total * (mass if mass > 1.0 else 1.0))
                for peer, overlap in nearest:
                    found_peer = users[peer]
                    weight = overlap * norm / found_peer[0][2]
                    for key, kept in found_peer[1].items():
                        peer_scores[key] = peer_scores.get(key, 0.0) + kept[1] * weight
        # Ahead, no session is current: every session so far is an earlier one.
        current = -1.0 if ahead else state[3]
        previous = state[2] if ahead else state[2] - 1.0  # the sessions before, decayed
        shrunk = 1.0 / (previous + _PRIOR_SESSIONS)
        ranked: list[tuple[Key, float, float]] = []
        for key, kept in mine.items():
            peers = peer_scores.pop(key, 0.0)
            if previous <= 0.0:
                continue  # no earlier session to go by
            # Keys read in this session already stay ranked: the engine drops them as
            # cached, and giving their places to lower-ranked keys cost more origin
            # fetches than it saved misses (benchmarks/users_live.py: 0.4174 against
            # 0.4142 misses at 5 %).
            before = kept[1] - 1.0 if kept[2] == current else kept[1]
            found = readers.get(key)
            prior = peers if found is not None and found[1][0] > 1.0 else _LONE_PRIOR
            ranked.append((key, (before + _PRIOR_SESSIONS * prior) * shrunk, peers))
        for key, peers in peer_scores.items():
            if peers >= MIN_SHARE and key not in mine:
                ranked.append((key, peers, peers))
        return heapq.nlargest(self.top_n, ranked, key=_by_count)

    def drain_changed(self, limit: int | None = None) -> list[Key]:
        """Users whose :meth:`recommend` ahead may have changed since the last call.

        A user changes with their own reads, and with the reads of the users who
        share a key with them (the key's latest readers): a neighbour's new key
        is a candidate for them. At most ``limit`` (the oldest changes first);
        the rest wait for the next call.
        """
        return take_oldest(self._changed, limit)

    def exclusivity(self, key: Key) -> float:
        """1 / sqrt(the different users ``key`` has had): 1 for a key of one user.

        A user who fell out of the key's latest ``readers_per_key`` and came back
        counts again: for a key many users read, the count grows with its reads.

        0 for a key no profile holds.
        """
        found = self._readers.get(key)
        return 0.0 if found is None else _exclusivity(found)

    @property
    def n_tracked(self) -> int:
        return len(self._users)

    def _evict(self) -> None:
        keep = (self.max_users * 3) // 4
        ordered = sorted(self._users.items(), key=lambda item: item[1][0][0])
        self._users = dict(ordered[len(ordered) - keep :])

    def _evict_readers(self) -> None:
        """Forget the readers of keys no profile holds any more (then the oldest-indexed)."""
        held: set[Key] = set()
        for _, counts in self._users.values():
            held.update(counts)
        readers = {key: found for key, found in self._readers.items() if key in held}
        keep = (self.max_users * self.keys_per_user * 3) // 4
        if len(readers) > keep:
            readers = dict(list(readers.items())[len(readers) - keep :])
        self._readers = readers

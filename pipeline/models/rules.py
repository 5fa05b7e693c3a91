"""Prefetch rules: what a client should load the moment a trigger key misses.

A warm that crosses Kafka and a worker lands milliseconds after its trigger,
and on real traces the structure worth warming lives within a few requests of
it. So besides warmup commands the pipeline compiles what it learns into
compact *rules* that the cache client applies itself, with no round trip to the
pipeline: "when ``A`` misses, start loading ``B`` (and ``C``)".

:class:`PrefetchRules` learns them online from the same stream the sequence
models see (the accesses the cache could not serve alone: misses and first
reads of warmed values):

* a **successor table**: for each trigger ``A``, how often each key ``B``
  came right after it (``window`` accesses; :class:`~pipeline.models.CoAccess`),
  and how often ``A`` was seen;
* a **calibration table**: every time ``A`` recurs, each of its successors is
  a trial, labelled positive when that successor is accessed within the next
  ``label_window`` accesses. Trials are grouped by the evidence the rule had
  when it was asked, ``(count(A -> B), count(A))`` capped at ``cap``, so the
  probability a rule carries is the measured frequency with which rules
  holding that much evidence came true on this traffic, not a guess;
* a **waste budget**: rules are admitted from the most to the least likely
  evidence class for as long as the warms they would waste (trials times one
  minus their probability) stay within ``waste_budget`` per read the origin
  would serve with warming off (demand misses and first reads of warmed
  values), and never below ``min_probability``.

The rule for a trigger is what its *next* occurrence should load: it is asked
with the evidence gathered so far, exactly as the calibration trials were.
Triggers whose rule may have changed are remembered, so a publisher only
rewrites those (:meth:`PrefetchRules.changed`).

Examples
--------
>>> from pipeline.models import PrefetchRules
>>> rules = PrefetchRules(waste_budget=None, min_probability=0.5)
>>> for visit in range(30):  # "home" is followed by something new each time
...     for key in ["home", f"product-{visit}", "cart", "checkout"]:
...         rules.learn_one(key)
>>> [(key, round(p, 2)) for key, p in rules.predict_one("cart")]
[('checkout', 0.98)]
>>> rules.predict_one("home")
[]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

from pipeline.models.base import (
    FALSE_NEGATIVE,
    FALSE_POSITIVE,
    TRUE_POSITIVE,
    Key,
    Predictor,
    count_outcome,
    count_strategy,
    take_oldest,
)
from pipeline.models.similarity import CoAccess

__all__ = ["PrefetchRules"]

#: A calibration bucket index: count(A -> B) * (cap + 1) + count(A), both capped.
_Trial = list[Any]  # [expires at position, successor, bucket, resolved, admitted]


class PrefetchRules(Predictor):
    """Calibrated trigger -> successors rules, admitted under a waste budget.

    Parameters
    ----------
    window
        A key is a successor of ``A`` when it comes within this many accesses after it.
    label_window
        A rule came true when its successor is read within this many reads after
        the trigger (a warm lives that long at least).
    max_keys
        Most triggers tracked (past it, the quarter seen least often is evicted).
    max_successors
        Successors kept per trigger before trimming to the most frequent half.
    top_n
        Most successors a rule loads.
    cap
        Evidence counts above this share a calibration bucket.
    waste_budget
        Wasted warms allowed per read the origin would serve with warming off (demand
        misses and first reads of warmed values; None: only ``min_probability``).
    min_probability
        Rules less likely than this are never admitted.
    decay_every
        Calibration trials after which all calibration counts are halved (drift).
    """

    _state_attrs: tuple[str, ...] = (
        "_hits",
        "_trials",
        "_open",
        "_waiting",
        "_position",
        "_accesses",
        "_since_decay",
        "_threshold",
        "_changed",
    )

    #: The constructor's parameters (compiled classes have no signature to read).
    PARAMS: ClassVar[tuple[str, ...]] = (
        "window",
        "label_window",
        "max_keys",
        "max_successors",
        "top_n",
        "cap",
        "waste_budget",
        "min_probability",
        "decay_every",
    )

    def __init__(
        self,
        window: int = 1,
        label_window: int = 32,
        max_keys: int = 100_000,
        max_successors: int = 8,
        top_n: int = 2,
        cap: int = 6,
        waste_budget: float | None = 0.03,
        min_probability: float = 0.5,
        decay_every: int = 50_000,
    ) -> None:
        if label_window < window:
            raise ValueError("label_window must be >= window")
        if cap < 1 or top_n < 1:
            raise ValueError("cap and top_n must be >= 1")
        if not 0.0 < min_probability < 1.0:
            raise ValueError("min_probability must be in (0, 1)")
        if waste_budget is not None and waste_budget < 0.0:
            raise ValueError("waste_budget must be >= 0")
        self.window = window
        self.label_window = label_window
        self.max_keys = max_keys
        self.max_successors = max_successors
        self.top_n = top_n
        self.cap = cap
        self.waste_budget = waste_budget
        self.min_probability = min_probability
        self.decay_every = decay_every
        self.table = CoAccess(
            window=window,
            max_keys=max_keys,
            max_successors=max_successors,
            trim_to=max(1, max_successors // 2),
            min_support=1,
            min_confidence=0.0,
            top_n=max_successors,
        )
        buckets = (cap + 1) * (cap + 1)
        self._hits: list[float] = [0.0] * buckets
        self._trials: list[float] = [0.0] * buckets
        self._open: deque[_Trial] = deque()
        self._waiting: dict[Key, list[_Trial]] = {}
        self._position = 0
        self._accesses = 0.0  # decayed like the trials: the budget's "per origin read"
        self._since_decay = 0
        self._threshold = min_probability
        self._changed: dict[Key, None] = {}  # insertion-ordered set of triggers
        self._version = 0  # bumped whenever the calibration counts move
        self._rows: dict[int, tuple[int, list[float]]] = {}
        # Labelled trials per namespace since drain_outcomes() ([tp, fp, fn], as the
        # scorer's): a successor its rule names now that followed, that did not,
        # and one that followed without being named. Not state.
        self._outcomes: dict[str, list[int]] = {}
        # Admitted trials labelled since drain_strategies(), as strategy "rules". Not state.
        self._strategies: dict[str, dict[str, list[int]]] = {}

    # -- learning ------------------------------------------------------------------------

    def learn_one(
        self,
        key: Key,
        hit: bool | None = None,
        warmed: bool = False,
        cached: Callable[[Key], bool] | None = None,
    ) -> None:
        """One read: ``hit`` is its cache outcome, ``warmed`` whether a warm served it.

        Every read can make a rule come true (a successor already cached would
        have cost nothing to warm); only reads the cache could not serve alone
        (misses, first reads of warmed values, unknown outcomes) trigger rules, so
        only they teach the successor table and put rules to the test.
        ``cached(successor)`` says whether a successor is probably still cached:
        loading it would be skipped at no cost, so it is no trial of the rule.
        """
        self._position += 1
        position = self._position
        waiting = self._waiting.pop(key, None)
        if waiting is not None:
            hits = self._hits
            for trial in waiting:
                if not trial[3] and trial[0] >= position:
                    trial[3] = True
                    hits[trial[2]] += 1.0
                    self._version += 1
                    if len(trial) > 4:  # (trials restored from older snapshots have no label)
                        count_outcome(
                            self._outcomes, key, TRUE_POSITIVE if trial[4] else FALSE_NEGATIVE
                        )
                        if trial[4]:
                            count_strategy(self._strategies, key, "rules", True)
        opened = self._open
        while opened and opened[0][0] < position:
            expired = opened.popleft()
            if not expired[3]:
                if len(expired) > 4 and expired[4]:
                    count_outcome(self._outcomes, expired[1], FALSE_POSITIVE)
                    count_strategy(self._strategies, expired[1], "rules", False)
                pending = self._waiting.get(expired[1])
                if pending is not None:
                    pending.remove(expired)
                    if not pending:
                        del self._waiting[expired[1]]
        if hit is True and not warmed:
            return
        if hit is not None:  # a miss, or a read a warm saved: the origin's load warming off
            self._accesses += 1.0
        self._open_trials(key, position, cached)
        table = self.table
        for antecedent in table._recent:
            if antecedent != key:
                self._changed[antecedent] = None
        self._changed[key] = None
        if len(self._changed) > self.max_keys:
            for stale in list(self._changed)[: len(self._changed) // 4]:
                del self._changed[stale]
        table.learn_one(key)

    def _open_trials(self, key: Key, position: int, cached: Callable[[Key], bool] | None) -> None:
        """The rule ``key`` has now is put to the test: does each successor follow?"""
        table = self.table
        seen = table._seen.get(key, 0)
        counts = table._successors.get(key)
        if not seen or not counts:
            return
        cap = self.cap
        width = cap + 1
        trials = self._trials
        expires = position + self.label_window
        ranked = sorted(counts.items(), key=_by_count, reverse=True)[: self.top_n]
        threshold = self._threshold
        opened = 0
        for successor, count in ranked:
            if cached is not None and cached(successor):
                continue
            opened += 1
            bucket = min(count, cap) * width + min(seen, cap)
            trials[bucket] += 1.0
            admitted = self.probability(count, seen) >= threshold  # the rule names it now
            trial: _Trial = [expires, successor, bucket, False, admitted]
            self._open.append(trial)
            pending = self._waiting.get(successor)
            if pending is None:
                self._waiting[successor] = [trial]
            else:
                pending.append(trial)
        self._since_decay += opened
        self._version += opened
        if self._since_decay >= self.decay_every:
            self._decay()

    def _decay(self) -> None:
        self._since_decay = 0
        self._hits = [h * 0.5 for h in self._hits]
        self._trials = [t * 0.5 for t in self._trials]
        self._version += 1
        self._accesses *= 0.5
        self._threshold = self._budget_threshold()

    # -- answering -----------------------------------------------------------------------

    def probability(self, count: int, seen: int) -> float:
        """Calibrated probability that a rule with this evidence comes true.

        ``count`` times the successor followed, out of ``seen`` occurrences of the
        trigger. The measured rate of the rule's class is shrunk towards that of
        the class with one follow and one occurrence less (more evidence of the
        same kind should do at least as well), and, for a first follow, towards
        an even chance; the prior weighs as much as two trials. A class nobody
        has measured yet is therefore never taken for a sure thing.
        """
        cap = self.cap
        count = min(count, cap)
        seen = min(seen, cap)
        if count > seen:
            count = seen
        prior = self.probability(count - 1, seen - 1) if count > 1 else 0.5
        bucket = count * (cap + 1) + seen
        return (self._hits[bucket] + 2.0 * prior) / (self._trials[bucket] + 2.0)

    def predict_one(self, key: Key) -> list[tuple[Key, float]]:
        """What to load when ``key`` is next requested and misses: [(successor, p)], best first."""
        table = self.table
        seen = table._seen.get(key, 0)
        counts = table._successors.get(key)
        if not seen or not counts:
            return []
        threshold = self._threshold
        cap = self.cap
        row = self._calibrated(min(seen, cap))
        out: list[tuple[Key, float]] = []
        for successor, count in counts.items():
            p = row[min(count, cap, seen)]
            if p >= threshold:
                out.append((successor, p))
        out.sort(key=_by_probability, reverse=True)
        return out[: self.top_n]

    def _calibrated(self, seen: int) -> list[float]:
        """Probabilities by follow count for triggers seen ``seen`` times (capped).

        Cached until the calibration counts move (they move with every trial, so
        the cache lives for one batch of questions, e.g. one :meth:`changed` call).
        """
        version = self._version
        cached = self._rows.get(seen)
        if cached is not None and cached[0] == version:
            return cached[1]
        row = [0.0] + [self.probability(count, seen) for count in range(1, self.cap + 1)]
        self._rows[seen] = (version, row)
        return row

    def drain_strategies(self) -> dict[str, dict[str, list[int]]]:
        """Admitted trials labelled since the last call, as strategy ``"rules"`` (see
        ``WarmScorer.drain_strategies``)."""
        strategies, self._strategies = self._strategies, {}
        return strategies

    def drain_outcomes(self) -> dict[str, list[int]]:
        """Labelled trials per namespace since the last call (see ``WarmScorer.drain_outcomes``)."""
        outcomes, self._outcomes = self._outcomes, {}
        return outcomes

    @property
    def threshold(self) -> float:
        """The probability a rule needs now (set by the waste budget)."""
        return self._threshold

    def changed(self, limit: int | None = None) -> list[tuple[Key, list[tuple[Key, float]]]]:
        """Triggers whose rule may have changed since the last call, with their rule now.

        An empty rule means "nothing to load" (a publisher deletes it). At most
        ``limit`` triggers are returned (the oldest changes first); the rest wait.
        """
        self._threshold = self._budget_threshold()
        return [(key, self.predict_one(key)) for key in take_oldest(self._changed, limit)]

    def _budget_threshold(self) -> float:
        """The lowest probability at which the rules' expected waste fits the budget."""
        floor = self.min_probability
        if self.waste_budget is None:
            return floor
        allowed = self.waste_budget * self._accesses
        width = self.cap + 1
        classes = [
            (self.probability(bucket // width, bucket % width), trials)
            for bucket, trials in enumerate(self._trials)
            if trials
        ]
        classes.sort(reverse=True)
        wasted = 0.0
        threshold = 1.0
        for p, trials in classes:
            if p < floor:
                break
            wasted += trials * (1.0 - p)
            if wasted > allowed:
                break
            threshold = p
        return max(floor, threshold)

    def stats(self) -> dict[str, float]:
        """Triggers tracked, the admission threshold, trials and their hit rate."""
        trials = sum(self._trials)
        return {
            "triggers": float(self.table.n_tracked),
            "threshold": self._threshold,
            "trials": trials,
            "hit_rate": sum(self._hits) / trials if trials else 0.0,
        }

    # -- state ---------------------------------------------------------------------------

    @property
    def n_tracked(self) -> int:
        return self.table.n_tracked

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["table"] = self.table.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        table = state.get("table")
        if table is None:
            raise ValueError("state is missing ['table']")
        rest = {name: value for name, value in state.items() if name != "table"}
        super().load_state_dict(rest)
        self.table.load_state_dict(table)
        self._version += 1
        self._rows.clear()
        # Trials pending for a successor are the very lists held by the open trials.
        self._waiting = {}
        for trial in self._open:
            if not trial[3]:
                self._waiting.setdefault(trial[1], []).append(trial)


def _by_count(item: tuple[Key, int]) -> int:
    return item[1]


def _by_probability(item: tuple[Key, float]) -> float:
    return item[1]

"""The ensemble: score a warm candidate from the models' features, learn from delayed labels."""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Sequence
from typing import Any, ClassVar

from river import linear_model, optim

from pipeline.models.base import (
    FALSE_NEGATIVE,
    FALSE_POSITIVE,
    TRUE_POSITIVE,
    Key,
    Predictor,
    count_outcome,
    count_strategy,
)

FEATURES: tuple[str, ...] = (
    "matches",  # sequence-replay stream confidence, min(matches, 16) / 16
    "offset",  # how far past the stream head the candidate lies, / lookahead
    "confidence",  # co-access confidence antecedent -> candidate
    "support",  # log1p(accesses of the antecedent) / 8
    "popularity",  # log1p(decayed access count of the candidate) / 8
    "staleness",  # log1p(candidate idle time / horizon) / 3, at most 1
    "rhythm",  # P(candidate accessed within the horizon) from its inter-arrival fit
    "season",  # log(time-of-week lift) / log(bins per day), clipped to [-1, 1]
    "replay_age",  # log1p(age of the replayed history / horizon) / 3, at most 1
    "miss",  # 1.0 when the access that raised the candidate missed
    "own",  # user candidates: estimated share of the user's sessions that read it
    "peers",  # user candidates: share of similar users' sessions that read it
    "exclusive",  # user candidates: 1 / sqrt(different users who read it lately)
    "from_recency",  # one-hot of the candidate's source (sequence replay: all zero)
    "from_frequency",
    "from_temporal",
    "from_user",
)
"""Names of the candidate features, in the order of the vectors given to :class:`WarmScorer`."""

_LOGIT_CLAMP = 30.0
# A pending candidate: [issue ts, lead, vector, admitted, deadline, probability, state]
_STATE = 6
_OPEN, _POSITIVE, _DROPPED = 0, 1, 2
_FLOW_DECAY = 0.9  # per control window: admitted warms and misses over ~10 windows
_RECENT_DECAY = 0.98  # per control window: the observed waste rate remembers ~50 windows
_MIN_FRACTION = 0.01  # thinning never shuts warming off entirely: labels must keep coming
_REFRESH_MASK = 3  # copy the model's weights to the scoring tuple every 4 labels


_P_CLAMP = 1e-15  # log loss of a probability of exactly 0 or 1 would be infinite


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class WarmScorer(Predictor):
    """Online logistic model of "will this candidate be requested within its horizon?".

    Each candidate ``(key, horizon)`` raised by the other models is described by the
    features in :data:`FEATURES` and scored with a river
    :class:`~river.linear_model.LogisticRegression`. The scorer then learns from
    *delayed labels*: :meth:`register` remembers the candidate, :meth:`resolve`
    (called on every access) marks it positive when its key is requested between
    ``ts + lead`` and the deadline, and :meth:`expire` learns every label whose
    deadline passed (unmarked ones are negatives). A key requested before
    ``ts + lead`` is dropped without a label: a warm landing then finds it cached
    and costs nothing.
    Every candidate is labelled, admitted or not, so the model also learns where
    it does not warm.

    A candidate is *admitted* (warmed) when its probability reaches ``threshold``.
    With ``waste_budget`` set, the threshold is steered online so that wasted warms
    (admitted, never requested in time: each costs the origin a fetch) stay near
    ``waste_budget`` times the reads the origin would serve without warming (demand
    misses and first reads of warmed values, so that origin fetches stay within
    about ``1 + waste_budget`` times what they would be with warming off, however
    many misses the warms already saved): the warms admitted in each
    window of ``control_every`` accesses, times the waste rate recently observed
    among admitted warms, are compared with the budget. With no exploitable
    structure the threshold rises and the scorer stops warming.

    Online precision, recall (over labelled candidates, "positive" = requested in
    time, "predicted" = admitted) and log-loss are kept as running counters.

    Parameters
    ----------
    learning_rate
        SGD step of the logistic regression.
    threshold
        Initial admission threshold on the predicted probability.
    waste_budget
        Target wasted warms per read the origin would serve with warming off (see
        :meth:`observe_access`); None keeps ``threshold`` fixed.
    min_threshold, max_threshold
        Bounds of the steered threshold.
    control_every
        Accesses between two threshold corrections.
    control_gain
        Largest change of the threshold's log-odds per correction.
    max_pending
        Most candidates awaiting a label (oldest dropped first past it).
    learn_every
        Learn from one label in ``learn_every`` (all are counted in the metrics):
        a cheaper update when candidates are plentiful.
    seed
        Seed of the admission thinning.

    Examples
    --------
    >>> from pipeline.models import WarmScorer
    >>> scorer = WarmScorer(threshold=0.6, waste_budget=None)
    >>> good = {"matches": 1.0, "confidence": 0.9}
    >>> bad = {"matches": 0.0, "confidence": 0.1}
    >>> for _ in range(300):
    ...     scorer.learn_one(good, True)
    ...     scorer.learn_one(bad, False)
    >>> scorer.predict_proba_one(good) > 0.8 > 0.2 > scorer.predict_proba_one(bad)
    True
    >>> scorer.predict_one(good), scorer.predict_one(bad)
    (True, False)

    Delayed labels: a candidate registered at ``ts=0`` for key 7 with a deadline of
    100 becomes a positive when key 7 is requested at ``ts=40``.

    >>> vec = [good.get(name, 0.0) for name in FEATURES]
    >>> scorer.register(7, ts=0.0, vector=vec, admitted=True, lead=0.0, deadline=100.0)
    >>> scorer.resolve(7, ts=40.0)
    >>> scorer.expire(ts=101.0)
    >>> scorer.stats()["labels"], scorer.stats()["precision"]
    (1, 1.0)
    """

    _state_attrs: tuple[str, ...] = (
        "_model",
        "_weights",
        "_bias",
        "_threshold",
        "_pending",
        "_deadlines",
        "_true_positives",
        "_admitted_labels",
        "_log_loss_sum",
        "_labels",
        "_positives",
        "_window_events",
        "_window_misses",
        "_window_admitted",
        "_flow_admitted",
        "_flow_misses",
        "_recent_waste",
        "_recent_admitted",
        "_admit_fraction",
        "_rng",
        "_admitted",
        "_wasted",
        "_registered",
    )

    #: The constructor's parameters (compiled classes have no signature to read).
    PARAMS: ClassVar[tuple[str, ...]] = (
        "learning_rate",
        "threshold",
        "waste_budget",
        "min_threshold",
        "max_threshold",
        "control_every",
        "control_gain",
        "max_pending",
        "learn_every",
        "seed",
    )

    def __init__(
        self,
        learning_rate: float = 0.05,
        threshold: float = 0.9,
        waste_budget: float | None = 0.03,
        min_threshold: float = 0.5,
        max_threshold: float = 0.999,
        control_every: int = 1024,
        control_gain: float = 0.1,
        max_pending: int = 200_000,
        learn_every: int = 1,
        seed: int = 0,
    ) -> None:
        if not 0.0 < min_threshold <= threshold <= max_threshold < 1.0:
            raise ValueError("need 0 < min_threshold <= threshold <= max_threshold < 1")
        if waste_budget is not None and waste_budget < 0.0:
            raise ValueError("waste_budget must be >= 0")
        self.learning_rate = learning_rate
        self.threshold = threshold
        self.waste_budget = waste_budget
        self.min_threshold = min_threshold
        self.max_threshold = max_threshold
        self.control_every = control_every
        self.control_gain = control_gain
        self.max_pending = max_pending
        if learn_every < 1:
            raise ValueError("learn_every must be >= 1")
        self.learn_every = learn_every
        self.seed = seed
        self._model = self._new_model()
        self._weights: tuple[float, ...] = (0.0,) * len(FEATURES)
        self._bias = 0.0
        self._threshold = threshold
        self._pending: dict[Key, list[Any]] = {}  # unresolved candidates by key
        self._deadlines: deque[tuple[float, Key, list[Any]]] = deque()  # all, by deadline
        # Label quality, as plain counters: river's metric objects cost ~4 µs per label.
        self._true_positives = 0  # admitted and requested in time
        self._admitted_labels = 0  # admitted and labelled
        self._log_loss_sum = 0.0
        self._labels = 0
        self._positives = 0
        self._window_events = 0
        self._window_misses = 0  # reads the origin served or would have (see observe_access)
        self._window_admitted = 0
        self._flow_admitted = 0.0
        self._flow_misses = 0.0
        self._recent_waste = 0.0
        self._recent_admitted = 0.0
        self._admit_fraction = 1.0
        self._rng = random.Random(seed)
        self._admitted = 0
        self._wasted = 0
        # Labels per namespace since the last drain_outcomes(): [admitted and requested,
        # admitted and not requested, requested but not admitted]. Not state: the
        # worker drains it after every batch into its statistics.
        self._outcomes: dict[str, list[int]] = {}
        # Admitted candidates labelled since the last drain_strategies(), per namespace
        # and reason (the strategy that raised them): [requested in time, not]. Not state.
        self._strategies: dict[str, dict[str, list[int]]] = {}
        self._registered = 0

    # -- the model ------------------------------------------------------------------------

    def score(self, vector: Sequence[float]) -> float:
        """Probability for a feature vector ordered as :data:`FEATURES` (the fast path)."""
        z = self._bias
        for w, v in zip(self._weights, vector, strict=False):
            z += w * v
        if z < -_LOGIT_CLAMP:
            return 0.0
        if z > _LOGIT_CLAMP:
            return 1.0
        return 1.0 / (1.0 + math.exp(-z))

    def predict_proba_one(self, x: dict[str, float]) -> float:
        """Probability that a candidate described by ``x`` is requested within its horizon."""
        return self.score([x.get(name, 0.0) for name in FEATURES])

    def predict_one(self, x: dict[str, float]) -> bool:
        """Whether a candidate described by ``x`` is admitted at the current threshold."""
        return self.admits(self.predict_proba_one(x))

    def admits(self, p: float) -> bool:
        """Whether a candidate of probability ``p`` is admitted now.

        Above the threshold; and when even the highest threshold lets too many
        warms through (an over-confident model), only a steered fraction of them.
        """
        if p < self._threshold:
            return False
        return self._admit_fraction >= 1.0 or self._rng.random() < self._admit_fraction

    def _new_model(self) -> linear_model.LogisticRegression:
        return linear_model.LogisticRegression(
            optimizer=optim.SGD(self.learning_rate), intercept_lr=self.learning_rate
        )

    def state_dict(self) -> dict[str, Any]:
        """Learned state as plain data: river's model becomes its weights and intercept."""
        state = super().state_dict()
        model = self._model
        state["_model"] = {
            "weights": {str(name): float(value) for name, value in model._weights.items()},
            "intercept": float(model.intercept),
            "iterations": int(model.optimizer.n_iterations),
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        document = state.get("_model")
        if not isinstance(document, dict):
            raise ValueError("state is missing the scorer's model")
        model = self._new_model()
        weights = document["weights"]
        if not isinstance(weights, dict):
            raise ValueError("the scorer's weights are not a mapping")
        for name, value in weights.items():
            if name not in FEATURES:
                raise ValueError(f"unknown feature {name!r} in the scorer's weights")
            model._weights[name] = float(value)
        model.intercept = float(document["intercept"])
        model.optimizer.n_iterations = int(document["iterations"])
        super().load_state_dict({**state, "_model": model})

    def learn_one(self, x: dict[str, float], y: bool) -> None:
        """Update the logistic regression with one labelled candidate."""
        self._model.learn_one({name: x.get(name, 0.0) for name in FEATURES}, y)
        weights = self._model.weights
        self._weights = tuple(float(weights.get(name, 0.0)) for name in FEATURES)
        self._bias = float(self._model.intercept)

    @property
    def current_threshold(self) -> float:
        """The admission threshold now (steered when ``waste_budget`` is set)."""
        return self._threshold

    # -- delayed labels ---------------------------------------------------------------------

    def is_pending(self, key: Key) -> bool:
        """Whether ``key`` was raised as a candidate and awaits its label."""
        return key in self._pending

    def is_admitted(self, key: Key) -> bool:
        """Whether ``key`` was admitted (warmed) and has not been requested since."""
        entry = self._pending.get(key)
        return entry is not None and bool(entry[3])

    def register(
        self,
        key: Key,
        ts: float,
        vector: Sequence[float],
        admitted: bool,
        lead: float,
        deadline: float,
        probability: float | None = None,
        reason: str = "",
    ) -> None:
        """Remember a scored candidate until it is requested or its deadline passes.

        Registering a key again replaces its pending candidate (the earlier one gets
        no label). ``probability`` is the score the candidate was admitted on
        (computed from ``vector`` when not given); ``reason`` the strategy that
        raised it (its admitted labels are counted by :meth:`drain_strategies`).
        """
        p = self.score(vector) if probability is None else probability
        previous = self._pending.get(key)
        if previous is not None:
            previous[_STATE] = _DROPPED
        entry: list[Any] = [ts, lead, vector, admitted, deadline, p, _OPEN, reason]
        self._pending[key] = entry
        self._deadlines.append((deadline, key, entry))
        self._registered += 1
        if admitted:
            self._admitted += 1
            self._window_admitted += 1
        if len(self._deadlines) > self.max_pending:
            _, old_key, old = self._deadlines.popleft()
            old[_STATE] = _DROPPED
            if self._pending.get(old_key) is old:
                del self._pending[old_key]

    def resolve(self, key: Key, ts: float) -> None:
        """An access to ``key`` at ``ts``: its pending candidate, if any, was right.

        The label is learned at the candidate's deadline, like a negative would be:
        learning positives early and negatives a horizon later would teach the model
        how features drift over time instead of what makes a good candidate.
        """
        entry = self._pending.pop(key, None)
        if entry is None:
            return
        if ts < entry[0] + entry[1]:
            entry[_STATE] = _DROPPED  # requested before a warm could land: no cost, no gain
        else:
            entry[_STATE] = _POSITIVE

    def expire(self, ts: float) -> None:
        """Learn the labels of the candidates whose deadline is before ``ts``."""
        deadlines = self._deadlines
        pending = self._pending
        while deadlines and deadlines[0][0] < ts:
            _, key, entry = deadlines.popleft()
            state = entry[_STATE]
            if state == _DROPPED:
                continue
            if state == _OPEN and pending.get(key) is entry:
                del pending[key]
            y = state == _POSITIVE
            self._label(entry, y)
            if entry[3]:
                count_outcome(self._outcomes, key, TRUE_POSITIVE if y else FALSE_POSITIVE)
                # (entries restored from snapshots before reasons were kept have none)
                reason = entry[7] if len(entry) > 7 else ""
                if reason:
                    count_strategy(self._strategies, key, reason, y)
            elif y:
                count_outcome(self._outcomes, key, FALSE_NEGATIVE)

    def _label(self, entry: list[Any], y: bool) -> None:
        vector, admitted, p = entry[2], entry[3], entry[5]
        self._labels += 1
        self._positives += y
        q = p if y else 1.0 - p
        self._log_loss_sum -= math.log(q if q > _P_CLAMP else _P_CLAMP)
        if admitted:
            self._admitted_labels += 1
            self._true_positives += y
            self._recent_admitted += 1.0
            if not y:
                self._recent_waste += 1.0
                self._wasted += 1
        if self._labels % self.learn_every:
            return
        model = self._model
        model.learn_one(dict(zip(FEATURES, vector, strict=False)), y)
        if (self._labels // self.learn_every) & _REFRESH_MASK == 0:
            weights = model.weights
            self._weights = tuple([float(weights.get(name, 0.0)) for name in FEATURES])
            self._bias = float(model.intercept)

    def top_admitted(self, n: int) -> list[tuple[Key, float]]:
        """The ``n`` admitted candidates still awaiting their label, most probable first:
        what the models currently expect to be read."""
        if n <= 0:
            return []
        admitted = [(key, float(entry[5])) for key, entry in self._pending.items() if entry[3]]
        return heapq.nlargest(n, admitted, key=_by_probability)

    def drain_strategies(self) -> dict[str, dict[str, list[int]]]:
        """Admitted candidates labelled since the last call, per namespace and strategy
        (the reason that raised them): ``[read in time, not read in time]``.

        >>> scorer = WarmScorer(threshold=0.5, waste_budget=None)
        >>> scorer.register("users:a", 0.0, [0.0] * len(FEATURES), True, 0.0, 10.0, 0.9,
        ...                 reason="recency")
        >>> scorer.register("users:b", 0.0, [0.0] * len(FEATURES), True, 0.0, 10.0, 0.9,
        ...                 reason="recency")
        >>> scorer.resolve("users:a", 5.0); scorer.expire(11.0)
        >>> scorer.drain_strategies(), scorer.drain_strategies()
        ({'users': {'recency': [1, 1]}}, {})
        """
        strategies, self._strategies = self._strategies, {}
        return strategies

    def drain_outcomes(self) -> dict[str, list[int]]:
        """Labels per namespace (the part of a key before ``:``) since the last call.

        Each value is ``[true positives, false positives, false negatives]``: a
        candidate admitted and requested in time, admitted and not requested, and
        requested in time but not admitted. Prediction precision is tp / (tp + fp),
        recall tp / (tp + fn).

        >>> scorer = WarmScorer(threshold=0.5, waste_budget=None)
        >>> scorer.register("users:a", 0.0, [0.0] * len(FEATURES), True, 0.0, 10.0, 0.9)
        >>> scorer.register("users:b", 0.0, [0.0] * len(FEATURES), True, 0.0, 10.0, 0.9)
        >>> scorer.register("users:c", 0.0, [0.0] * len(FEATURES), False, 0.0, 10.0, 0.2)
        >>> scorer.resolve("users:a", 5.0); scorer.resolve("users:c", 6.0)
        >>> scorer.expire(11.0)
        >>> scorer.drain_outcomes(), scorer.drain_outcomes()
        ({'users': [1, 1, 1]}, {})
        """
        outcomes, self._outcomes = self._outcomes, {}
        return outcomes

    # -- the waste budget -------------------------------------------------------------------

    def observe_access(self, miss: bool | None, warmed: bool = False) -> None:
        """Count one access for the waste-budget controller: whether the origin served it,
        or would have without warming (``warmed``: a hit on the first read of a warmed
        value; an access with an unknown outcome counts for neither).

        :meth:`WarmEngine.observe` counts the same way, without the call.
        """
        self._window_events += 1
        if miss or (warmed and miss is False):
            self._window_misses += 1
        if self._window_events >= self.control_every:
            self._steer()

    def _steer(self) -> None:
        # Labels arrive a whole horizon after the decision: steering on wasted warms
        # as they are observed would oscillate. Steer instead on the warms admitted
        # lately times the waste rate observed among admitted warms, against the
        # budget on the misses of the same period (both smoothed over ~10 windows,
        # as candidates come in bursts).
        budget = self.waste_budget
        self._flow_admitted = _FLOW_DECAY * self._flow_admitted + self._window_admitted
        self._flow_misses = _FLOW_DECAY * self._flow_misses + self._window_misses
        if budget is not None and self._flow_misses > 0.0:
            waste_rate = (self._recent_waste + 1.0) / (self._recent_admitted + 2.0)
            expected = waste_rate * self._flow_admitted
            target = budget * self._flow_misses
            error = (expected - target) / max(target, 1.0)
            step = self.control_gain * max(-1.0, min(1.0, error))
            logit = _logit(self._threshold) + step
            lo, hi = _logit(self.min_threshold), _logit(self.max_threshold)
            # Past the highest threshold (an over-confident model), thin admissions.
            if logit > hi and error > 0.0:
                self._admit_fraction = max(_MIN_FRACTION, self._admit_fraction * 0.8)
            elif error < 0.0:
                self._admit_fraction = min(1.0, self._admit_fraction * 1.25)
            self._threshold = 1.0 / (1.0 + math.exp(-max(lo, min(hi, logit))))
        self._recent_waste *= _RECENT_DECAY
        self._recent_admitted *= _RECENT_DECAY
        self._window_events = 0
        self._window_misses = 0
        self._window_admitted = 0

    # -- reporting --------------------------------------------------------------------------

    def stats(self) -> dict[str, float]:
        """Online quality of the scorer.

        ``precision``/``recall`` are over labelled candidates (admitted vs requested in
        time), ``log_loss`` of the predicted probabilities, ``labels`` and
        ``positive_rate`` count them, ``admitted``/``wasted`` count warms decided and
        warms that were not requested in time, and ``threshold`` is the current one.
        """
        return {
            "labels": self._labels,
            "positive_rate": self._positives / self._labels if self._labels else 0.0,
            "precision": (
                self._true_positives / self._admitted_labels if self._admitted_labels else 0.0
            ),
            "recall": self._true_positives / self._positives if self._positives else 0.0,
            "log_loss": self._log_loss_sum / self._labels if self._labels else 0.0,
            "admitted": self._admitted,
            "wasted": self._wasted,
            "pending": len(self._pending),
            "threshold": self._threshold,
            "admit_fraction": self._admit_fraction,
        }

    @property
    def n_tracked(self) -> int:
        return len(self._pending)


def _by_probability(item: tuple[Key, float]) -> float:
    return item[1]

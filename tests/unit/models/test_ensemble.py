"""WarmScorer: delayed labels and the waste budget."""

from __future__ import annotations

import pytest

from pipeline.models import FEATURES, WarmScorer

GOOD = [1.0 if name == "confidence" else 0.0 for name in FEATURES]


def test_labels_are_learned_at_the_deadline() -> None:
    scorer = WarmScorer(waste_budget=None)
    scorer.register("a", ts=0.0, vector=GOOD, admitted=True, lead=0.0, deadline=10.0)
    scorer.register("b", ts=0.0, vector=GOOD, admitted=True, lead=0.0, deadline=10.0)
    scorer.resolve("a", ts=3.0)
    assert scorer.stats()["labels"] == 0  # the positive waits for its deadline
    assert not scorer.is_pending("a")
    assert scorer.is_admitted("b")
    scorer.expire(ts=11.0)
    stats = scorer.stats()
    assert stats["labels"] == 2
    assert stats["precision"] == 0.5
    assert stats["wasted"] == 1


def test_requests_before_the_lead_give_no_label() -> None:
    scorer = WarmScorer(waste_budget=None)
    scorer.register("a", ts=0.0, vector=GOOD, admitted=True, lead=5.0, deadline=20.0)
    scorer.resolve("a", ts=2.0)  # before a warm could land
    scorer.expire(ts=21.0)
    assert scorer.stats()["labels"] == 0


def test_registering_again_replaces_the_pending_candidate() -> None:
    scorer = WarmScorer(waste_budget=None)
    scorer.register("a", ts=0.0, vector=GOOD, admitted=False, lead=0.0, deadline=10.0)
    scorer.register("a", ts=5.0, vector=GOOD, admitted=True, lead=0.0, deadline=15.0)
    scorer.expire(ts=12.0)
    assert scorer.stats()["labels"] == 0  # the first one was replaced
    scorer.expire(ts=16.0)
    assert scorer.stats()["labels"] == 1


def _waste(scorer: WarmScorer, windows: int, p: float) -> None:
    """Every admitted candidate is wasted; one access in two misses."""
    ts = 0.0
    for _ in range(windows):
        for i in range(scorer.control_every):
            if scorer.admits(p):
                scorer.register(("k", ts), ts, GOOD, True, 0.0, ts + 5.0, p)
            scorer.expire(ts)
            scorer.observe_access(miss=i % 2 == 0)
            ts += 1.0


def test_waste_over_budget_raises_the_threshold() -> None:
    scorer = WarmScorer(threshold=0.6, waste_budget=0.01, control_every=256)
    _waste(scorer, windows=40, p=0.8)
    assert scorer.current_threshold > 0.8


def test_an_over_confident_model_is_thinned() -> None:
    scorer = WarmScorer(threshold=0.6, waste_budget=0.01, control_every=256)
    _waste(scorer, windows=120, p=1.0)  # the model swears by candidates that all fail
    stats = scorer.stats()
    assert stats["threshold"] > 0.99
    assert stats["admit_fraction"] < 0.2


def test_fixed_threshold_without_budget() -> None:
    scorer = WarmScorer(threshold=0.7, waste_budget=None, control_every=64)
    _waste(scorer, windows=10, p=0.8)
    assert scorer.current_threshold == 0.7


def _steered(access: dict[str, bool | None]) -> float:
    """The threshold after wasted admissions, every access reported as ``access``."""
    scorer = WarmScorer(threshold=0.6, waste_budget=0.05, control_every=256)
    ts = 0.0
    for _ in range(40):
        for i in range(scorer.control_every):
            if i % 8 == 0 and scorer.admits(0.8):
                scorer.register(("k", ts), ts, GOOD, True, 0.0, ts + 5.0, 0.8)
            scorer.expire(ts)
            scorer.observe_access(**access)  # type: ignore[arg-type]
            ts += 1.0
    return scorer.current_threshold


def test_reads_a_warm_saved_count_in_the_budget_like_misses() -> None:
    """The budget is per read the origin would serve with warming off: reads served by
    warms count like the misses they replaced; reads of unknown outcome count for neither."""
    missed = _steered({"miss": True})
    assert _steered({"miss": False, "warmed": True}) == pytest.approx(missed)
    assert missed > 0.6  # the waste was over budget: the threshold rose
    # No origin read seen: nothing to steer on, the threshold stays where it started.
    assert _steered({"miss": None, "warmed": True}) == pytest.approx(0.6)


def test_pending_candidates_from_before_reasons_were_kept_still_label() -> None:
    scorer = WarmScorer(threshold=0.5, waste_budget=None)
    scorer.register("shop:a", 0.0, GOOD, True, 0.0, 10.0, 0.9, reason="recency")
    state = scorer.state_dict()
    for entry in state["_pending"].values():
        del entry[7:]  # as an older worker wrote them
    restored = WarmScorer(threshold=0.5, waste_budget=None)
    restored.load_state_dict(state)
    restored.resolve("shop:a", 5.0)
    restored.expire(11.0)
    assert restored.drain_outcomes() == {"shop": [1, 0, 0]}
    assert restored.drain_strategies() == {}  # no reason recorded: no strategy counted

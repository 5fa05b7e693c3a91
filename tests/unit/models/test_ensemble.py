"""WarmScorer: delayed labels and the waste budget."""

from __future__ import annotations

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

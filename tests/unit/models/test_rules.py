"""PrefetchRules: calibrated trigger -> successor rules under a waste budget."""

from __future__ import annotations

import random

import pytest

from pipeline.models import EngineConfig, PrefetchRules, WarmEngine


def _sessions(rules: PrefetchRules, visits: int, seed: int = 0) -> None:
    """ "cart" is always followed by "checkout"; "home" by a new product every visit."""
    rng = random.Random(seed)
    for visit in range(visits):
        for key in ["home", f"product-{visit}", "cart", "checkout"]:
            rules.learn_one(key, hit=False)
        for _ in range(rng.randrange(3)):
            rules.learn_one(f"noise-{rng.random()}", hit=False)


def test_a_steady_successor_becomes_a_rule_and_an_unsteady_one_does_not() -> None:
    rules = PrefetchRules(waste_budget=None)
    _sessions(rules, 40)
    (successor, p), *rest = rules.predict_one("cart")
    assert successor == "checkout"
    assert p > 0.9
    assert not rest
    assert rules.predict_one("home") == []
    assert rules.predict_one("never-seen") == []


def test_probabilities_are_measured_frequencies_of_rules_coming_true() -> None:
    flip = random.Random(1)  # "a" is followed by "b" half of the time
    calibrated = PrefetchRules(waste_budget=None, label_window=2)
    for _ in range(2_000):
        calibrated.learn_one("a", hit=False)
        calibrated.learn_one("b" if flip.random() < 0.5 else f"z{flip.random()}", hit=False)
        calibrated.learn_one(f"gap{flip.random()}", hit=False)
        calibrated.learn_one(f"gap{flip.random()}", hit=False)
    seen = calibrated.table.support("a")
    count = calibrated.table._successors["a"]["b"]
    assert 0.4 < calibrated.probability(count, seen) < 0.6


def test_a_successor_still_cached_is_no_trial() -> None:
    counted = PrefetchRules(waste_budget=None)
    skipped = PrefetchRules(waste_budget=None)
    for model, cached in ((counted, None), (skipped, lambda key: key == "b")):
        for _ in range(50):
            model.learn_one("a", hit=False, cached=cached)
            model.learn_one("b", hit=False, cached=cached)
    assert sum(counted._trials) > 0
    assert sum(skipped._trials) < sum(counted._trials)


def test_hits_resolve_trials_but_do_not_trigger_or_teach() -> None:
    rules = PrefetchRules(waste_budget=None)
    for _ in range(20):
        rules.learn_one("a", hit=False)
        rules.learn_one("b", hit=True)  # b was cached: the rule would have cost nothing
    assert rules.table.support("b") == 0
    assert rules.predict_one("a") == []  # a hit is never learnt as a successor


def test_the_budget_raises_the_threshold_when_rules_would_waste_too_much() -> None:
    def trained(budget: float | None) -> PrefetchRules:
        rules = PrefetchRules(waste_budget=budget, label_window=4)
        rng = random.Random(3)
        for i in range(5_000):
            key = f"k{rng.randrange(60)}"
            rules.learn_one(key, hit=rng.random() < 0.2)
            if i % 7 == 0:
                rules.changed()
        rules.changed()
        return rules

    generous, strict = trained(None), trained(0.0)
    assert generous.threshold == pytest.approx(0.5)
    assert strict.threshold > generous.threshold
    assert sum(map(len, (strict.predict_one(f"k{i}") for i in range(60)))) <= sum(
        map(len, (generous.predict_one(f"k{i}") for i in range(60)))
    )


def test_reads_a_warm_saved_count_in_the_budget_like_the_misses_they_replaced() -> None:
    """The budget is per read the origin would serve with warming off: once warms serve
    the reads, the rules must not turn stricter than when those reads missed."""

    def threshold(served_by_warms: bool) -> float:
        rules = PrefetchRules(waste_budget=0.03, label_window=4)
        rng = random.Random(5)
        for i in range(5_000):  # t_i, then s_i nine times in ten
            follower = f"s{i % 50}" if rng.random() < 0.9 else f"x{rng.randrange(1000)}"
            for key in (f"t{i % 50}", follower):
                if served_by_warms:
                    rules.learn_one(key, hit=True, warmed=True)
                else:
                    rules.learn_one(key, hit=False)
            if i % 7 == 0:
                rules.changed()
        rules.changed()
        return rules.threshold

    missed = threshold(served_by_warms=False)
    assert missed < 1.0
    assert threshold(served_by_warms=True) == pytest.approx(missed)


def test_changed_reports_each_trigger_once_and_respects_its_limit() -> None:
    rules = PrefetchRules(waste_budget=None)
    for key in ["a", "b", "c", "a", "b", "c"]:
        rules.learn_one(key, hit=False)
    first = rules.changed(limit=2)
    rest = rules.changed()
    assert [k for k, _ in first] + [k for k, _ in rest] == ["a", "b", "c"]
    assert rules.changed() == []
    rules.learn_one("a", hit=False)
    assert {k for k, _ in rules.changed()} == {"a", "c"}  # a recurred; c precedes it


def test_the_engine_learns_rules_from_what_it_observes() -> None:
    engine = WarmEngine(EngineConfig(rule_waste_budget=None))
    ts = 0.0
    for visit in range(30):
        for key in ["home", "cart", f"noise-{visit}"]:
            engine.observe(key, ts, hit=False)
            ts += 1.0
    assert [key for key, _ in engine.rules.predict_one("home")] == ["cart"]
    assert engine.stats()["rule_triggers"] >= 3
    restored = engine.clone()
    restored.load_state_dict(engine.state_dict())
    assert restored.rules.predict_one("home") == engine.rules.predict_one("home")

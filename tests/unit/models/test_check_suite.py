"""The check suite every predictor must pass (like river's ``check_estimator``).

Each predictor is driven through a small adapter: how to feed it one access and
how to ask it something about a key. The checks: ``clone`` gives the same
parameters and no state; the same stream gives the same answers (determinism);
a stream of unique keys cannot grow it past its cap; unseen keys never crash;
``state_dict`` round-trips through a snapshot (plain data, no pickle).
"""

from __future__ import annotations

import ast
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from pipeline import models
from pipeline.build_native import source_path
from pipeline.checkpoint import decode_snapshot, encode_snapshot
from pipeline.models import (
    FEATURES,
    CacheHorizon,
    CoAccess,
    DecayedFrequency,
    InterArrival,
    NewKeyReuse,
    Predictor,
    PrefetchRules,
    SequenceReplay,
    SmartTTL,
    TimeProfile,
    UserAffinity,
    WarmScorer,
    stable_hash,
)
from pipeline.models.base import init_params

MONDAY = 1_700_438_400.0


@dataclass(frozen=True)
class Adapter:
    """How the suite drives one predictor class."""

    make: Callable[[int], Predictor]  # build with a cap of tracked keys
    feed: Callable[[Any, Any, float], None]  # (predictor, key, ts)
    ask: Callable[[Any, Any, float], object]  # (predictor, key, ts) -> answer


def _feed_scorer(scorer: WarmScorer, key: Any, ts: float) -> None:
    """An access: labels what it resolves, then scores ``key`` as a new candidate."""
    scorer.resolve(key, ts)
    scorer.expire(ts)
    h = stable_hash(key)
    vector = [((h >> (3 * i)) & 7) / 8.0 for i in range(len(FEATURES))]
    scorer.register(key, ts, vector, h % 2 == 0, 0.0, ts + 20.0)


ADAPTERS: dict[str, Adapter] = {
    "scorer": Adapter(
        make=lambda cap: WarmScorer(max_pending=cap, threshold=0.5, control_every=64, seed=1),
        feed=_feed_scorer,
        ask=lambda p, k, ts: (p.is_pending(k), p.is_admitted(k), p.stats()),
    ),
    "new_key_reuse": Adapter(
        make=lambda cap: NewKeyReuse(max_pending=cap, sample_every=1, min_samples=5, seed=2),
        feed=lambda p, k, ts: p.learn_one(
            k, ts, missed=stable_hash(k) % 3 != 0, new=stable_hash(k) % 2 == 0, horizon=50.0
        ),
        ask=lambda p, k, ts: p.predict_one(),
    ),
    "frequency": Adapter(
        make=lambda cap: DecayedFrequency(max_keys=cap, half_life=500.0),
        feed=lambda p, k, ts: p.learn_one(k),
        ask=lambda p, k, ts: (p.predict_one(k), p.most_common(3)),
    ),
    "recency": Adapter(
        make=lambda cap: InterArrival(max_keys=cap),
        feed=lambda p, k, ts: p.learn_one(k, ts),
        ask=lambda p, k, ts: (p.predict_one(k), p.prob_within(k, ts, 10.0)),
    ),
    "coaccess": Adapter(
        make=lambda cap: CoAccess(max_keys=cap, min_support=2),
        feed=lambda p, k, ts: p.learn_one(k),
        ask=lambda p, k, ts: p.predict_one(k),
    ),
    "replay": Adapter(
        make=lambda cap: SequenceReplay(history=256, max_keys=cap),
        feed=lambda p, k, ts: p.learn_one(k),
        ask=lambda p, k, ts: p.predict_one(k),
    ),
    "affinity": Adapter(
        make=lambda cap: UserAffinity(max_users=cap, session_gap=5.0),
        feed=lambda p, k, ts: p.learn_one(k, ts, user=f"u{stable_hash(k) % 997}"),
        ask=lambda p, k, ts: (
            p.predict_one(k),
            p.predict_one(f"u{stable_hash(k) % 997}"),
            p.recommend(f"u{stable_hash(k) % 997}"),
            p.exclusivity(k),
            len(p._readers) <= p.max_users * p.keys_per_user,
        ),
    ),
    "temporal": Adapter(
        make=lambda cap: TimeProfile(max_keys=cap),
        feed=lambda p, k, ts: p.learn_one(k, MONDAY + ts * 60.0),
        ask=lambda p, k, ts: (p.predict_one(k, MONDAY + ts * 60.0), p.top_keys(MONDAY, 2)),
    ),
    "rules": Adapter(
        make=lambda cap: PrefetchRules(max_keys=cap, waste_budget=0.05, label_window=16),
        feed=lambda p, k, ts: p.learn_one(k, hit=stable_hash(k) % 3 != 0),
        ask=lambda p, k, ts: (p.predict_one(k), p.threshold, p.changed(4)),
    ),
    "smart_ttl": Adapter(
        make=lambda cap: SmartTTL(max_keys=cap, seed=3),
        feed=lambda p, k, ts: p.learn_one(k, ts),
        ask=lambda p, k, ts: p.predict_one(k),
    ),
}


def _stream(seed: int, n: int = 3_000) -> list[tuple[int, float]]:
    """A skewed stream with repeated sequences: enough structure for every model."""
    rng = random.Random(seed)
    out: list[tuple[int, float]] = []
    ts = 0.0
    while len(out) < n:
        if rng.random() < 0.3:
            start = rng.randrange(50)
            out.extend((start * 10 + j, ts + j) for j in range(5))
            ts += 5.0
        else:
            out.append((int(rng.paretovariate(1.2)) % 400, ts))
            ts += 1.0
    return out[:n]


@pytest.fixture(params=sorted(ADAPTERS))
def adapter(request: pytest.FixtureRequest) -> Adapter:
    return ADAPTERS[request.param]


def test_clone_has_same_params_and_no_state(adapter: Adapter) -> None:
    model = adapter.make(64)
    for key, ts in _stream(1, 500):
        adapter.feed(model, key, ts)
    clone = model.clone()
    assert type(clone) is type(model)
    assert clone._get_params() == model._get_params()
    assert clone.n_tracked == 0 < model.n_tracked
    fresh = adapter.make(64)
    assert [adapter.ask(clone, k, 0.0) for k in range(20)] == [
        adapter.ask(fresh, k, 0.0) for k in range(20)
    ]


def test_same_stream_same_answers(adapter: Adapter) -> None:
    first, second = adapter.make(128), adapter.make(128)
    answers: list[list[object]] = [[], []]
    for key, ts in _stream(7):
        for i, model in enumerate((first, second)):
            adapter.feed(model, key, ts)
            answers[i].append(adapter.ask(model, key, ts))
    assert answers[0] == answers[1]


def test_unique_keys_cannot_grow_it_past_its_cap(adapter: Adapter) -> None:
    model = adapter.make(100)
    for i in range(5_000):
        adapter.feed(model, f"unique-{i}", float(i))
        assert model.n_tracked <= 100
    assert model.n_tracked > 10


def test_unseen_keys_never_crash(adapter: Adapter) -> None:
    empty = adapter.make(32)
    trained = adapter.make(32)
    for key, ts in _stream(3, 500):
        adapter.feed(trained, key, ts)
    unseen: tuple[object, ...] = ("never-seen", 10**12, ("tuple", 1), b"bytes")
    for model in (empty, trained):
        for other in unseen:
            adapter.ask(model, other, 123.0)


def test_state_dict_round_trips_through_a_snapshot(adapter: Adapter) -> None:
    model = adapter.make(64)
    stream = _stream(5, 1_000)
    for key, ts in stream[:600]:
        adapter.feed(model, key, ts)
    restored = model.clone()
    blob = encode_snapshot(model.state_dict(), stage="check", partition=0)
    restored.load_state_dict(decode_snapshot(blob))
    for key, ts in stream[600:]:
        adapter.feed(model, key, ts)
        adapter.feed(restored, key, ts)
        assert adapter.ask(model, key, ts) == adapter.ask(restored, key, ts)


def test_load_state_dict_rejects_incomplete_state(adapter: Adapter) -> None:
    with pytest.raises(ValueError, match="missing"):
        adapter.make(32).load_state_dict({})


def _params_from_source(cls: type) -> tuple[str, ...]:
    """The parameters of ``cls.__init__`` as written (a compiled class has no signature)."""
    tree = ast.parse(source_path(cls.__module__).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    args = item.args
                    every = [*args.posonlyargs, *args.args, *args.kwonlyargs]
                    return tuple(a.arg for a in every if a.arg != "self")
    raise AssertionError(f"no __init__ in the source of {cls.__qualname__}")


def _subclasses(cls: type) -> set[type[Predictor]]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


#: Every predictor class there is, exported or not: one that forgot ``PARAMS`` would
#: clone with its parent's parameters (or none), silently.
_PREDICTORS = sorted(
    {c for c in vars(models).values() if isinstance(c, type) and issubclass(c, Predictor)}
    | _subclasses(Predictor),
    key=lambda c: c.__name__,
)


@pytest.mark.parametrize("cls", [c for c in _PREDICTORS if c is not Predictor], ids=repr)
def test_every_predictor_lists_its_constructor_parameters(cls: type[Predictor]) -> None:
    """``PARAMS`` is what clone and repr rely on: it must match ``__init__`` as written."""
    owner = next(c for c in cls.__mro__ if "__init__" in vars(c))
    assert init_params(cls) == _params_from_source(owner)
    assert init_params(cls)  # every predictor takes parameters
    model = cls()
    assert repr(model.clone()) == repr(model)


#: Predictors outside the suite, and why.
EXEMPT: dict[type[Predictor], str] = {
    CacheHorizon: "one estimate, no per-key state (its doctest and test_models check it)",
}


def test_every_predictor_is_in_the_suite() -> None:
    exported = {
        cls
        for name in models.__all__
        if isinstance(cls := getattr(models, name), type)
        and issubclass(cls, Predictor)
        and cls is not Predictor
    }
    covered = {type(adapter.make(8)) for adapter in ADAPTERS.values()}
    assert exported - covered == set(EXEMPT), "add an adapter (or an exemption with its reason)"

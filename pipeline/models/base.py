"""What every online predictor in :mod:`pipeline.models` shares.

A predictor follows river's verbs: ``learn_one`` updates it with one observation,
``predict_one`` answers without changing it, ``clone`` returns a fresh copy with
the same parameters and no state. Every predictor is bounded: it tracks at most
``max_keys`` keys and evicts with a documented rule when full, so a stream of
unique keys cannot grow it without limit.

Keys are any hashable id: the simulator uses ints, the Faust agents use
``"namespace:key"`` strings.
"""

from __future__ import annotations

import abc
import copy
import sys
import zlib
from collections.abc import Hashable, Iterable
from typing import Any, ClassVar, Self

Key = Hashable

#: Where a labelled prediction lands in an outcome tally ([tp, fp, fn]).
TRUE_POSITIVE, FALSE_POSITIVE, FALSE_NEGATIVE = 0, 1, 2


def count_strategy(
    strategies: dict[str, dict[str, list[int]]], key: Key, strategy: str, useful: bool
) -> None:
    """Count one labelled admitted warm of ``strategy`` under the key's namespace.

    >>> tally: dict[str, dict[str, list[int]]] = {}
    >>> count_strategy(tally, "users:42", "recency", True)
    >>> count_strategy(tally, "users:43", "recency", False)
    >>> tally
    {'users': {'recency': [1, 1]}}
    """
    namespace = key.partition(":")[0] if isinstance(key, str) else ""
    by_strategy = strategies.get(namespace)
    if by_strategy is None:
        by_strategy = strategies[namespace] = {}
    tally = by_strategy.get(strategy)
    if tally is None:
        tally = by_strategy[strategy] = [0, 0]
    tally[0 if useful else 1] += 1


def count_outcome(outcomes: dict[str, list[int]], key: Key, index: int) -> None:
    """Count one labelled prediction of ``key`` under its namespace (before ``:``).

    >>> tally: dict[str, list[int]] = {}
    >>> count_outcome(tally, "users:42", TRUE_POSITIVE)
    >>> count_outcome(tally, "users:43", FALSE_NEGATIVE)
    >>> tally
    {'users': [1, 0, 1]}
    """
    namespace = key.partition(":")[0] if isinstance(key, str) else ""
    tally = outcomes.get(namespace)
    if tally is None:
        tally = outcomes[namespace] = [0, 0, 0]
    tally[index] += 1


"""A cache key as the models see it: an int in the simulator, ``"ns:key"`` in the agents."""


def take_oldest(pending: dict[Key, None], limit: int | None = None) -> list[Key]:
    """Remove and return the ``limit`` oldest entries of an insertion-ordered set (all
    with None): how a model hands out what changed since it was last asked.

    >>> pending = dict.fromkeys(["a", "b", "c"])
    >>> take_oldest(pending, 2), take_oldest(pending)
    (['a', 'b'], ['c'])
    """
    if limit is None or limit >= len(pending):
        keys = list(pending)
        pending.clear()
        return keys
    keys = []
    for key in pending:
        keys.append(key)
        if len(keys) >= limit:
            break
    for key in keys:
        del pending[key]
    return keys


def init_params(cls: type[Predictor]) -> tuple[str, ...]:
    """Names of the parameters of ``cls.__init__`` (``self`` excluded): its ``PARAMS``.

    Each predictor lists them itself: a class compiled with mypyc has no signature
    to read (``*args, **kwargs``). The check suite compares every predictor's list
    with its source.
    """
    return cls.PARAMS


class Predictor(abc.ABC):
    """Base class: parameter introspection, ``clone`` and state snapshots.

    Subclasses list their constructor's parameters in ``PARAMS`` and store the
    arguments under the same attribute names,
    keep all learned state in attributes whose names start with ``_``, and list
    them in ``_state_attrs`` so that :meth:`state_dict` can snapshot them.
    """

    _state_attrs: tuple[str, ...] = ()
    #: The constructor's parameters, in order; every subclass lists its own.
    PARAMS: ClassVar[tuple[str, ...]] = ()

    def _get_params(self) -> dict[str, Any]:
        """The constructor arguments this predictor was built with."""
        return {
            name: getattr(self, name) for name in init_params(type(self)) if hasattr(self, name)
        }

    def clone(self) -> Self:
        """A new predictor with the same parameters and no learned state."""
        return type(self)(**copy.deepcopy(self._get_params()))

    def state_dict(self) -> dict[str, Any]:
        """A deep copy of the learned state: picklable, and bounded like the model.

        Copied in one pass, so objects shared between attributes stay shared.
        """
        return copy.deepcopy({name: getattr(self, name) for name in self._state_attrs})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore state produced by :meth:`state_dict` of a predictor with the same parameters."""
        missing = set(self._state_attrs) - set(state)
        if missing:
            raise ValueError(f"state is missing {sorted(missing)}")
        for name in self._state_attrs:
            _check_type(name, getattr(self, name), state[name])
        restored = copy.deepcopy({name: state[name] for name in self._state_attrs})
        for name, value in restored.items():
            setattr(self, name, value)

    @property
    @abc.abstractmethod
    def n_tracked(self) -> int:
        """How many keys this predictor holds state for (never more than ``max_keys``)."""

    def __repr__(self) -> str:
        params = ", ".join(f"{name}={value!r}" for name, value in self._get_params().items())
        return f"{type(self).__name__}({params})"


_NUMBERS = (int, float)


def _check_type(name: str, current: object, restored: object) -> None:
    """Refuse restored state whose top-level type differs from a fresh model's.

    A snapshot is data from a topic: a list where the model keeps a dict would
    fail at the next event, far from its cause.
    """
    if current is None or restored is None or type(current) is type(restored):
        return
    if isinstance(current, _NUMBERS) and isinstance(restored, _NUMBERS):
        return
    raise ValueError(
        f"state {name!r} is a {type(restored).__name__}, expected a {type(current).__name__}"
    )


def stable_hash(key: Key) -> int:
    """A hash of ``key`` that is the same in every process (``hash(str)`` is salted).

    >>> stable_hash("users:42") == stable_hash("users:42")
    True
    >>> stable_hash(7)
    7
    """
    if isinstance(key, int):
        return key & 0xFFFFFFFFFFFFFFFF
    if isinstance(key, bytes):
        return zlib.crc32(key)
    return zlib.crc32(str(key).encode())


def deep_sizeof(obj: object) -> int:
    """Bytes held by ``obj`` and everything it references, each object counted once.

    Used to report memory per tracked key; shared singletons (small ints, None,
    interned strings) count once like everything else.

    >>> deep_sizeof([]) < deep_sizeof([1.5, 2.5])
    True
    """
    seen: set[int] = set()
    total = 0
    stack: list[object] = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        children: Iterable[object]
        if isinstance(item, dict):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple | set | frozenset):
            children = item
        elif hasattr(item, "__dict__"):
            children = [vars(item)]
        elif hasattr(item, "__slots__"):
            children = [getattr(item, s) for s in item.__slots__ if hasattr(item, s)]
        else:
            children = ()
        stack.extend(children)
    return total

"""The reorder buffer: in time order, held no longer than the sources require."""

from __future__ import annotations

import random

from pipeline.reorder import SOURCE_IDLE_S, Reorderer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _ts(events: list[dict[str, float]]) -> list[float]:
    return [e["ts"] for e in events]


def test_one_in_order_source_is_never_held() -> None:
    r = Reorderer(delay=0.010, clock=Clock())
    for i in range(100):
        assert _ts(r.push([{"ts": i * 0.001}], source=0)) == [i * 0.001]
    assert len(r) == 0


def test_interleaved_sources_come_out_sorted_and_complete() -> None:
    clock = Clock()
    r = Reorderer(delay=10.0, clock=clock)  # only the watermarks release
    rng = random.Random(7)
    streams = {s: sorted(rng.uniform(0, 100) for _ in range(200)) for s in range(4)}
    out: list[dict[str, float]] = []
    cursors = dict.fromkeys(streams, 0)
    for s in streams:  # every source has shown up once (an empty record is enough)
        assert r.push([], source=s) == []
    while any(cursors[s] < len(streams[s]) for s in streams):
        s = rng.choice([s for s in streams if cursors[s] < len(streams[s])])
        n = rng.randint(1, 10)
        batch = streams[s][cursors[s] : cursors[s] + n]
        cursors[s] += n
        out += r.push([{"ts": t} for t in batch], source=s)
        clock.now += 0.001
    out += r.drain()
    assert _ts(out) == sorted(t for ts in streams.values() for t in ts)
    assert r.late == 0


def test_a_quiet_source_holds_the_others_at_most_delay() -> None:
    clock = Clock()
    r = Reorderer(delay=0.010, clock=clock)
    r.push([{"ts": 5.0}], source="quiet")
    assert r.push([{"ts": 6.0}], source="busy") == []  # 6.0 might still be preceded
    clock.now += 0.009
    assert r.release() == []
    clock.now = 0.0101
    assert _ts(r.release()) == [6.0]


def test_a_source_silent_for_long_no_longer_holds_anything() -> None:
    clock = Clock()
    r = Reorderer(delay=0.010, clock=clock)
    r.push([{"ts": 5.0}], source="gone")
    clock.now += SOURCE_IDLE_S
    assert _ts(r.push([{"ts": 6.0}], source="busy")) == [6.0]


def test_a_disordered_source_is_given_slack_and_sorted() -> None:
    clock = Clock()
    r = Reorderer(delay=0.050, clock=clock)
    out = r.push([{"ts": 1.000}, {"ts": 1.010}, {"ts": 1.004}], source=0)
    # 1.004 arrived after 1.010: the source is out of order by 6 ms, so from now on
    # events within 6 ms of its newest are held back.
    assert _ts(out) == [1.000, 1.004]
    out = r.push([{"ts": 1.008}, {"ts": 1.020}], source=0)
    assert _ts(out) == [1.008, 1.010]
    assert len(r) == 1
    assert r.late == 0


def test_late_events_are_passed_on_not_dropped() -> None:
    r = Reorderer(delay=0.0, clock=Clock())
    assert _ts(r.push([{"ts": 2.0}], source=0)) == [2.0]
    assert _ts(r.push([{"ts": 1.0}], source=1)) == [1.0]
    assert r.late == 1


def _two_skewed_sources(r: Reorderer, clock: Clock, skew: float, n: int) -> list[float]:
    """Source 1 sends each event ``skew`` seconds after source 0 sent the next one; the
    buffer is also polled every 5 ms, as the predict agent's timer does."""
    out: list[float] = []
    arrivals = sorted(
        [(i * 0.020, 0, i * 0.020 + 0.010) for i in range(n)]
        + [(i * 0.020 + skew, 1, i * 0.020) for i in range(n)]
        + [(k * 0.005, 2, 0.0) for k in range(int(n * 0.020 / 0.005) + 20)]
    )
    for at, source, ts in arrivals:
        clock.now = at
        if source == 2:
            out += _ts(r.release(at))
        else:
            out += _ts(r.push([{"ts": ts}], source=source))
    clock.now += 1.0
    return out + _ts(r.release(clock.now))


def test_the_hold_grows_to_what_late_sources_need_then_keeps_them_in_order() -> None:
    clock = Clock()
    r = Reorderer(delay=0.010, clock=clock)
    out = _two_skewed_sources(r, clock, skew=0.045, n=200)
    assert 0.045 <= r.delay <= 0.5  # raised from 10 ms by the first late events
    assert len(out) == 400  # late ones included
    assert r.late <= 3
    assert _ts_sorted_after_first_late(out, r.late)


def _ts_sorted_after_first_late(out: list[float], late: int) -> bool:
    """In time order once the first few late events have raised the hold."""
    tail = out[4 * late + 4 :]
    return tail == sorted(tail)


def test_a_raised_hold_falls_back_when_the_sources_are_in_step_again() -> None:
    clock = Clock()
    r = Reorderer(delay=0.010, clock=clock)
    assert _ts(r.push([{"ts": 2.0}], source=0)) == [2.0]
    clock.now = 0.1
    assert _ts(r.push([{"ts": 1.9}], source=1)) == [1.9]  # came 100 ms after 2.0 went
    assert abs(r.delay - 0.2) < 1e-9
    for minute in range(1, 11):
        clock.now = 60.0 * minute
        r.push([{"ts": 2.0 + minute}], source=0)
    assert r.delay == 0.010  # a few half-lives later, back to the configured hold


def test_a_zero_delay_never_holds_even_after_late_events() -> None:
    r = Reorderer(delay=0.0, clock=Clock())
    r.push([{"ts": 2.0}], source=0)
    r.push([{"ts": 1.0}], source=1)
    assert r.delay == 0.0

"""A device handed over to another tracker (a tracker joining `greentrack run`, a second tracker
of one run waiting for the device's owner) is counted once, and nothing falls between the two
counts: the wrapper leaves out exactly the span the other tracker measured, whatever its own
polls, the other's start-up, or how late it notices the end.

Found under load: a tracker joining `greentrack run` for 1 s lost 0.87 s of the host's energy
(194.6 J for 242.4 J); the wrapper left out whole poll intervals from its scan of the join to its
next poll after noticing the end, while the joined tracker measured from its first reading (after
its start-up) to its last."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from greentrack.engine import channelstate
from greentrack.engine.channelstate import ChannelState
from greentrack.exporters._joined import measured_spans


def _counter(times: list[float], watts: list[float]) -> list[tuple[float, float]]:
    """Cumulative joules at ``times`` of a device drawing ``watts[i]`` over each interval."""
    points, e = [(times[0], 0.0)], 0.0
    for (t0, t1), w in zip(zip(times, times[1:]), watts):
        e += w * (t1 - t0)
        points.append((t1, e))
    return points


def _energy_at(points: list[tuple[float, float]], t: float) -> float:
    """The counter's energy at ``t``: linear between its points (the oracle's model of power
    inside one poll interval, as the engine's)."""
    for (t0, e0), (t1, e1) in zip(points, points[1:]):
        if t0 <= t <= t1:
            return e0 + (e1 - e0) * (t - t0) / (t1 - t0) if t1 > t0 else e1
    return points[-1][1] if t > points[-1][0] else 0.0


def _state() -> ChannelState:
    st = ChannelState(0, SimpleNamespace(info=SimpleNamespace(kind="cpu")),  # type: ignore[arg-type]
                      origin=0.0)
    st.take([(0.0, 0.0)])
    return st


@settings(max_examples=300, deadline=None)
@given(gaps=hst.lists(hst.floats(0.001, 1.0), min_size=6, max_size=120),
       watts=hst.lists(hst.floats(0.0, 700.0), min_size=120, max_size=120),
       joins=hst.lists(hst.tuples(hst.integers(0, 8), hst.floats(0.0, 1.0), hst.floats(0.0, 1.0),
                                  hst.integers(0, 3)), min_size=1, max_size=4),
       feed=hst.integers(1, 5))
def test_the_wrapper_leaves_out_exactly_what_the_joined_tracker_measured(
        gaps: list[float], watts: list[float], joins: list[tuple[int, float, float, int]],
        feed: int) -> None:
    """Random polls of the wrapper (taken one to five points at a time), random power, joins in
    turn: each opens at a poll, the joined tracker measures a span starting after it (its
    start-up), the wrapper notices its end zero to three polls after that span. Wrapper + joined
    trackers = the device's energy, to rounding."""
    times = [0.0]
    for g in gaps:
        times.append(times[-1] + g)
    points = _counter(times, watts)
    end = times[-1]
    st = _state()
    plan = list(joins)
    wait = plan[0][0] if plan else 0
    opened: list[float] | None = None  # [m0, m1, polls to notice after m1]
    others = 0.0
    k = 1
    while k < len(points):
        batch = points[k:k + feed]
        k += len(batch)
        st.take(batch)
        now = batch[-1][0]
        if opened is not None and now >= opened[1]:
            if opened[2] <= 0:
                st.end_hand_over(now, (opened[0], opened[1]))
                others += _energy_at(points, opened[1]) - _energy_at(points, opened[0])
                opened = None
                wait = plan[0][0] if plan else 0
            else:
                opened[2] -= 1
        elif opened is None and plan:
            if wait > 0:
                wait -= 1
                continue
            _, u0, u1, late = plan.pop(0)
            assert st.start_hand_over(now)
            m0 = now + u0 * (end - now) * 0.5
            opened = [m0, m0 + u1 * (end - m0), late]
    if opened is not None:  # still joined at the last poll: its span ends by then
        m1 = min(opened[1], end)
        st.end_hand_over(end, (opened[0], m1))
        others += _energy_at(points, m1) - _energy_at(points, opened[0])
    st.take([(end + 1.0, points[-1][1])])  # no more energy: what is given back lands here
    assert st.timeline.e[-1] + others == pytest.approx(points[-1][1], rel=1e-9, abs=1e-6)


def test_a_late_notice_of_the_end_gives_back_what_was_left_out_after_it() -> None:
    """The wrapper notices the joined tracker's end a whole second late (a loaded host, the slow
    cadence): the energy of that second is counted after all, at its next point."""
    st = _state()
    st.take([(1.0, 100.0)])  # 100 W
    assert st.start_hand_over(1.0)
    st.take([(2.0, 200.0), (3.0, 300.0), (4.0, 400.0)])
    assert st.timeline.e[-1] == pytest.approx(100.0)
    st.end_hand_over(4.0, (1.2, 3.0))  # it measured 1.2 .. 3.0
    st.take([(5.0, 500.0)])
    # 100 J before, 20 J (1.0-1.2) and 100 J (3.0-4.0) given back, 100 J after
    assert st.timeline.e[-1] == pytest.approx(320.0)
    assert not st.handed_over  # its end has passed: the cheap path again


def test_a_hand_over_between_two_polls_splits_the_interval() -> None:
    """Before, a point inside the span left out its whole interval back to the previous poll."""
    st = _state()
    st.take([(1.0, 10.0)])
    assert st.start_hand_over(1.5)
    st.take([(2.0, 20.0)])
    assert st.timeline.e[-1] == pytest.approx(15.0)
    st.end_hand_over(2.5, (1.5, 2.5))
    st.take([(3.0, 30.0)])
    assert st.timeline.e[-1] == pytest.approx(20.0)


def test_a_joined_tracker_that_died_leaves_no_span_and_the_notice_time_holds() -> None:
    st = _state()
    st.take([(1.0, 10.0)])
    assert st.start_hand_over(1.0)
    assert not st.start_hand_over(1.1)  # one open hand-over at a time
    st.take([(2.0, 20.0)])
    st.end_hand_over(2.0, None)
    st.take([(3.0, 30.0)])
    assert st.timeline.e[-1] == pytest.approx(20.0)


def test_a_span_outside_the_hand_over_is_clamped_into_it() -> None:
    """A joined tracker's span is read from a file in the run directory: times before the
    hand-over or after the notice (a foreign writer, another clock) never add energy twice."""
    st = _state()
    st.take([(1.0, 10.0)])
    assert st.start_hand_over(1.0)
    st.take([(2.0, 20.0), (3.0, 30.0)])
    st.end_hand_over(3.0, (-50.0, 99.0))
    st.take([(4.0, 40.0)])
    assert st.timeline.e[-1] == pytest.approx(20.0)  # as if it measured the whole hand-over


def test_the_kept_pieces_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A day-long join keeps the first and the latest pieces only; what falls outside the span
    at either end is still given back."""
    monkeypatch.setattr(channelstate, "HAND_OVER_PIECES", 8)
    st = _state()
    st.take([(1.0, 1.0)])
    assert st.start_hand_over(1.0)
    for i in range(2, 10_002):
        st.take([(float(i), float(i))])
    assert len(st._head) + len(st._tail) <= 16
    st.end_hand_over(10_001.0, (3.0, 9_999.0))
    st.take([(10_002.0, 10_002.0)])
    # 1 J before, 2 J (1-3) and 2 J (9999-10001) given back, 1 J after
    assert st.timeline.e[-1] == pytest.approx(6.0)


def test_the_spans_read_from_a_joined_trackers_file_are_checked(tmp_path: Path) -> None:
    """The file sits in the run directory, where anything may write: another run's token, a
    file that is not final (the tracker died), spans that are not two finite numbers in order
    are left out, and the wrapper then counts from its own notice."""
    lease = tmp_path / "123-abcd.lease"
    live = tmp_path / "123-abcd.live.json"

    def channel(key: str, span: object) -> dict[str, object]:
        return {"key": key, "kind": "cpu", "device": key, "energy_j": 1.0, "gap_s": 0.0,
                "span": span}
    spans = {"a": [1.0, 2.0], "b": [2.0, 1.0], "c": ["1", 2.0], "d": [1.0], "e": None,
             "f": [float("nan"), 2.0], "g": [True, 2.0], "h": [0.5, 0.5, 9.0], "i": "1,2"}
    doc = {"token": "T", "final": True, "channels": [channel(k, v) for k, v in spans.items()]}
    live.write_text(json.dumps(doc))
    assert measured_spans(lease, "T") == {"a": (1.0, 2.0), "h": (0.5, 0.5)}
    # channels sharing a key (two RAPL packages are both host:cpu): the widest span, so that
    # nothing one of them still measured is given back
    doc2 = {**doc, "channels": [channel("a", [1.2, 99.0]), channel("a", [1.0, 10.0])]}
    live.write_text(json.dumps(doc2))
    assert measured_spans(lease, "T") == {"a": (1.0, 99.0)}
    assert measured_spans(lease, "other") == {}
    live.write_text(json.dumps({**doc, "final": False}))
    assert measured_spans(lease, "T") == {}
    live.write_text("{not json")
    assert measured_spans(lease, "T") == {}


def test_an_owner_that_released_before_the_wait_began_gives_back_nothing_twice() -> None:
    """A second tracker of a run waits from 2.5 s for a device whose owner stamped its lock with
    its last point at 2.0 s (it stopped before the wait began): counted from 2.5 s, not from
    2.0 s again (a review found 550 J of a true 500 J)."""
    st = _state()
    assert st.start_hand_over(2.5)
    st.take([(1.0, 100.0), (2.0, 200.0), (3.0, 300.0), (4.0, 400.0)])
    st.end_hand_over(min(4.0, 2.0))
    st.take([(5.0, 500.0)])
    assert st.timeline.e[-1] == pytest.approx(500.0)


def test_an_owner_killed_before_it_wrote_its_end_is_counted_from_the_notice() -> None:
    """A lock file with no end time (the owner was killed): its store holds up to its last
    commit, an unknown time, so the waiting tracker counts from its notice, never the whole wait
    again (a review found the first polls of the wait given back: 10,150 J of a true 10,100)."""
    st = _state()
    assert st.start_hand_over(0.5)
    for i in range(1, 101):
        st.take([(float(i), 100.0 * i)])
    st.end_hand_over(float("-inf"))
    st.take([(101.0, 10_100.0)])
    assert st.timeline.e[-1] == pytest.approx(150.0)  # 0-0.5 s and 100-101 s


def test_a_jump_at_one_instant_outside_the_measured_span_is_given_back() -> None:
    st = _state()
    st.take([(1.0, 100.0)])
    assert st.start_hand_over(1.0)
    st.take([(2.0, 200.0), (2.0, 250.0), (3.0, 350.0)])
    st.end_hand_over(3.0, (2.5, 3.0))
    st.take([(4.0, 450.0)])
    assert st.timeline.e[-1] + 50.0 == pytest.approx(450.0)  # the other measured 2.5-3.0 s

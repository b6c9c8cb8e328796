"""A channel's cumulative energy never decreases, but its interpolation and the sums behind it
(a process's share of a host zone, a shared GPU's split) are floating point: a difference a few
ulps below zero was stored as a -7e-15 J sample by a process joined to `greentrack run`, and the
report then called the store damaged. Rounding is zero; a real decrease is still seen."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greentrack.engine.channelstate import Timeline
from greentrack.store import StoreReader
from tests.helpers import engine_on_a_fake_gpu


def test_rounding_below_zero_is_zero_and_a_real_decrease_is_not() -> None:
    tl = Timeline()
    tl.extend([(0.0, 0.0), (1.0, 5.0), (2.0, 5.0 - 7e-15), (3.0, 4.0)])
    assert tl.at(2.0) - tl.at(1.0) < 0.0  # what the old code stored
    assert tl.between(1.0, 2.0) == 0.0
    assert tl.between(0.0, 1.0) == 5.0 and tl.between(0.5, 1.0) == 2.5
    assert tl.between(2.0, 3.0) < -0.99  # a counter that really went back: left for the checks


def test_the_engine_stores_no_sample_below_zero(tmp_path: Path) -> None:
    engine, writer = engine_on_a_fake_gpu(tmp_path / "run")
    st = engine.states[0]
    st.timeline.extend([(0.0, 0.3), (1.0, 0.1 + 0.2 + 1.0), (2.0, 1.3 - 7e-15), (3.0, 1.3 - 7e-15)])
    st.next_bucket = 0.0
    engine._attribute(final=True)
    engine._flush()
    writer.close()
    store = StoreReader(writer.path)
    rows = sorted((r["t"], r["energy_j"]) for r in store.samples())
    assert [round(t) for t, _ in rows] == [0, 1, 2], rows
    assert all(e >= 0.0 for _, e in rows), rows
    assert rows[0][1] > 0.99 and rows[1][1] == 0.0
    assert store.invalid_rows("samples") == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.floats(0.0, 0.9), res=st.sampled_from([0.1, 0.25, 1.0]),
       until=st.floats(0.0, 2.5), watts=st.floats(1.0, 700.0))
def test_sample_buckets_hold_only_what_was_read(tmp_path: Path, first: float, res: float,
                                                until: float, watts: float) -> None:
    """A channel's first value comes after the run's origin by the store's setup (0.1-0.2 s on a
    loaded host). Buckets lie on the origin's grid but start at that value: a first bucket that
    claimed the unread setup time (the old code) made every span read from the samples too long
    and the first bucket's power too low (a CI run: 61.6 J for 60 W x a 1.09 s span)."""
    engine, writer = engine_on_a_fake_gpu(tmp_path / f"run-{first}-{res}-{until}", res)
    ts = [first + i * 0.01 for i in range(int(max(0.0, until - first) / 0.01) + 1)]
    mid = ts[len(ts) // 2]  # a pass that cannot close every bucket, then the final one
    tl = engine.states[0].timeline
    tl.extend([(t, watts * (t - first)) for t in ts if t <= mid])
    engine._attribute(final=False)
    tl.extend([(t, watts * (t - first)) for t in ts if t > mid])
    engine._attribute(final=True)
    engine._flush()
    writer.close()
    rows = sorted((r["t"], r["dt"], r["energy_j"]) for r in StoreReader(writer.path).samples())
    if len(ts) < 2:
        assert sum(e for *_, e in rows) == 0.0
        return
    assert rows[0][0] == pytest.approx(first, abs=1e-9)
    assert sum(dt for _, dt, _ in rows) == pytest.approx(ts[-1] - first, abs=1e-9)
    for (t, dt, e), nxt in zip(rows, rows[1:] + [None]):
        assert e == pytest.approx(watts * dt, rel=1e-6, abs=1e-9), rows
        if nxt is not None:
            assert nxt[0] == pytest.approx(t + dt, abs=1e-9)  # contiguous
            assert (t + dt) / res == pytest.approx(round((t + dt) / res), abs=1e-6)  # on the grid


class _Span:
    def __init__(self, t0: float, t1: float) -> None:
        self.t0, self.t1 = t0, t1


_STEPS = st.lists(st.tuples(st.floats(1e-4, 2.0), st.floats(0.0, 500.0)), min_size=0, max_size=40)
_TIMES = st.floats(-1.0, 30.0)


@settings(max_examples=300, deadline=None)
@given(steps=_STEPS, spans=st.lists(st.tuples(_TIMES, _TIMES), max_size=60),
       decrease=st.booleans())
def test_steps_between_gives_each_spans_clamped_between(steps: list[tuple[float, float]],
                                                        spans: list[tuple[float, float]],
                                                        decrease: bool) -> None:
    """The engine resolves every step of a channel in one pass (issue 25); each figure is the
    exact float ``max(0, between(t0, t1))`` gives: inside, across and outside the timeline,
    reversed spans, and a counter that went back (zero for a step, as before)."""
    tl, t, e = Timeline(), 0.0, 0.0
    points = []
    for dt, de in steps:
        t, e = t + dt, e + de
        points.append((t, e))
    if decrease and points:
        points.append((t + 1.0, e - 3.0))
    tl.extend(points)
    got = tl.steps_between([_Span(a, b) for a, b in spans])
    assert got == [max(0.0, tl.between(a, b)) for a, b in spans]

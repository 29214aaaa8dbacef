"""The drive's pace: load shapes parsed as people write them, the virtual ↔ wall mapping exact and inverse of
itself, and the paced environment processing each event no earlier than its wall time."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from citytwin.twin.drive.pace import CONSTANT, Pace, PacedEnvironment, Shape, parse_shape


# -- parsing ----------------------------------------------------------------------------------------------------
def test_each_form_parses_to_its_stages():
    assert parse_shape("constant") == CONSTANT and CONSTANT.duration_s == 0
    assert parse_shape("ramp:2m:0.1-2") == Shape("ramp:2m:0.1-2", 0.1, ((120.0, 2.0),))
    assert parse_shape("ramp:30s:5").start == 0.0 and parse_shape("ramp:30s:5").stages == ((30.0, 5.0),)
    step = parse_shape("step:1m:1,2,4")
    assert step.start == 1.0 and step.stages == ((60.0, 1.0), (0.0, 2.0), (60.0, 2.0), (0.0, 4.0), (60.0, 4.0))
    assert step.duration_s == 180.0
    spike = parse_shape("spike:1m:30s:10")
    assert spike.duration_s == 150.0
    assert [spike.multiplier(w) for w in (0, 59.9, 60, 89.9, 90, 149)] == [1, 1, 10, 10, 1, 1]
    assert parse_shape("soak:2h").stages == ((7200.0, 1.0),)
    assert parse_shape("stages:30s:1,1m:5,30s:0").stages == ((30.0, 1.0), (60.0, 5.0), (30.0, 0.0))
    assert parse_shape("ramp:1m:0-4").multiplier(15) == pytest.approx(1.0)


@pytest.mark.parametrize("text, says", [
    ("wave:1m", "unknown shape 'wave'"), ("ramp:2m", "ramp:DURATION:FROM-TO"), ("ramp:soon:1-2", "'soon'"),
    ("step:1m:1,x", "'x'"), ("spike:1m:30s", "spike:AT:DURATION:M"), ("soak:-5m", "'-5m'"),
    ("stages:30s", "stages:"), ("stages:30s:1,1m", "'1m'"), ("ramp:1m:0-0", "never move"),
    ("ramp:1m:1-5000", "between 0.001 and 1000"), ("step:1m:1,1e-9", "0 or between"), ("step:1m:nan", "'nan'")])
def test_bad_shapes_say_what_was_expected(text, says):
    with pytest.raises(ValueError, match=None) as err:
        parse_shape(text)
    assert says in str(err.value)


# -- the mapping ------------------------------------------------------------------------------------------------
def test_constant_pace_is_the_plain_speedup():
    pace = Pace(60.0)
    for t in (0.0, 1.0, 59.5, 3600.0, 86400.0):
        assert pace.wall(t) == t / 60.0
        assert pace.virtual(t / 60.0) == pytest.approx(t)


def test_a_ramp_integrates_in_closed_form_and_from_t_offsets_it():
    pace = Pace(10.0, parse_shape("ramp:60s:0-2"), from_t=1000.0)
    assert pace.virtual(60.0) == pytest.approx(1000.0 + 10.0 * 60.0 * 1.0)  # mean multiplier 1
    assert pace.virtual(30.0) == pytest.approx(1000.0 + 10.0 * 30.0 * 0.5 / 2 * 2)  # ∫0..30 w/30 dw = 15
    assert pace.wall(1600.0) == pytest.approx(60.0)
    assert pace.wall(500.0) == 0.0  # before from_t: due at once (fast-forward)
    assert pace.virtual(100.0) == pytest.approx(1000.0 + 600.0 + 10.0 * 2.0 * 40.0)  # the last level holds


def test_time_never_reaches_past_a_shape_that_ends_at_zero():
    pace = Pace(10.0, parse_shape("stages:10s:1,10s:0"))
    assert pace.virtual(1e6) == pytest.approx(10.0 * (10.0 + 5.0))
    assert pace.wall(10.0 * 15.0 + 1.0) == float("inf")


multiplier = st.one_of(st.just(0.0), st.floats(min_value=0.001, max_value=20.0))  # what parse_shape accepts
stage = st.tuples(st.sampled_from([0.0, 0.5, 3.0, 30.0, 90.0]), multiplier)


@settings(max_examples=300, deadline=None)
@given(start=multiplier, stages=st.lists(stage, max_size=6),
       speedup=st.floats(min_value=0.5, max_value=5000.0), from_t=st.sampled_from([0.0, 3600.0]),
       w=st.floats(min_value=0.0, max_value=400.0))
def test_wall_and_virtual_are_inverse_and_monotone(start, stages, speedup, from_t, w):
    shape = Shape("test", start, tuple(stages))
    assume(shape.start > 0 or any(t > 0 for _, t in stages))
    pace = Pace(speedup, shape, from_t)
    v = pace.virtual(w)
    assert v >= from_t and pace.virtual(w + 1.0) >= v
    back = pace.wall(v)
    assert back <= w + 1e-6 * max(1.0, w)  # the first wall time with V ≥ v: never after w
    if pace.multiplier(w) > 0 and (w == 0 or pace.multiplier(max(w - 1e-3, 0.0)) > 0):
        assert back == pytest.approx(w, rel=1e-6, abs=1e-6)  # strictly increasing around w: exactly w
    assert pace.virtual(back) == pytest.approx(v, rel=1e-9, abs=1e-6 * speedup)


# -- the paced environment ----------------------------------------------------------------------------------------
def test_events_are_processed_no_earlier_than_their_wall_time():
    pace = Pace(1000.0, parse_shape("ramp:1s:0.5-2"))
    env = PacedEnvironment(pace)
    seen = []

    def ticker():
        for _ in range(10):
            yield env.timeout(100.0)
            seen.append((env.now, time.monotonic() - env.wall0))

    env.sync()
    env.process(ticker())
    env.run()
    for t, at in seen:
        assert at >= pace.wall(t) - 1e-3  # never early
        assert at <= pace.wall(t) + 0.5  # and not far late (a shared machine: a generous bound)
    assert seen[-1][0] == 1000.0


def test_sync_offsets_wall_zero_and_before_from_t_nothing_waits():
    env = PacedEnvironment(Pace(10.0, from_t=3600.0))
    started = time.monotonic()
    env.run(until=3599.0)  # an hour of virtual time before from_t: at once
    assert time.monotonic() - started < 0.15
    env.sync(0.2)  # the drive's switch: from_t is due 0.2 s from now
    started = time.monotonic()
    env.run(until=3601.0)  # from_t at wall0, then 0.1 s more
    assert time.monotonic() - started >= 0.29


def test_ctrl_c_during_the_sleep_stops_the_run():
    env = PacedEnvironment(Pace(1.0))
    env.process((env.timeout(1000.0) for _ in range(1)))
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))  # a real signal, as Ctrl-C sends
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        env.run(until=2000.0)
    timer.cancel()
    assert time.monotonic() - started < 5.0

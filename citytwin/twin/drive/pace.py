"""The pace of a drive: how virtual time maps to wall time, and so how much load the twin makes when.

The twin's interactions come from its world, so the load it sends is proportional to how fast virtual time
runs: twice the speedup, twice the reports and readings per wall second, each still a real interaction of
a consistent world (the closed loop holds). A load shape (k6's ramp, step, spike, soak) is therefore a
*speedup multiplier* m(w) over the wall seconds w of the drive, piecewise linear: virtual time runs at
speedup × m(w), so V(w) = from_t + speedup × ∫₀ʷ m. The scenario's own day (the morning peak, a typhoon's
surge of reports and alerts, a festival night) rides on top of it, as it would for real.

`from_t` starts the drive later in the scenario's day: the world before it is simulated as fast as the
computer goes and nothing of it is sent (the typhoon's peak, without its quiet night in wall time).

`PacedEnvironment` is simpy's RealtimeEnvironment (strict=False: a late step is never an error) on this
mapping instead of a constant factor.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from time import monotonic, sleep

import simpy
from simpy.core import EmptySchedule

from ..scenario.units import parse_duration

MAX_MULTIPLIER = 1000.0
MIN_MULTIPLIER = 0.001  # or exactly 0: below it time would all but stop, and the arithmetic with it
KINDS = ("constant", "ramp", "step", "spike", "soak", "stages")


@dataclass(frozen=True)
class Shape:
    """Piecewise-linear multiplier: `start`, then each stage (duration_s, target) moves linearly to its target
    over its duration (a zero duration is a jump); after the last stage the last target holds."""

    text: str
    start: float
    stages: tuple[tuple[float, float], ...]

    @property
    def duration_s(self) -> float:
        """The stages' total: how long the shape asks the drive to run (0: no length of its own)."""
        return sum(d for d, _ in self.stages)

    def multiplier(self, wall_s: float) -> float:
        """m(w); at a jump, the value after it."""
        level, at = self.start, 0.0
        for duration, target in self.stages:
            if wall_s < at + duration:
                return level + (target - level) * (wall_s - at) / duration
            level, at = target, at + duration
        return level


CONSTANT = Shape("constant", 1.0, ())


def parse_shape(text: str) -> Shape:
    """`constant`, `ramp:D:A-B` (or `ramp:D:B`, from 0), `step:D:M1,M2,…`, `spike:AT:D:M`, `soak:D`,
    `stages:D1:M1,D2:M2,…` (k6 stages from 1×). Multipliers are of --speedup. Raises ValueError."""
    kind, _, rest = text.strip().partition(":")
    kind = kind.lower()
    if kind not in KINDS:
        raise ValueError(f"unknown shape {kind!r}; expected one of {', '.join(KINDS)}")
    parts = rest.split(":") if rest else []
    build = {"constant": _constant, "ramp": _ramp, "step": _step, "spike": _spike, "soak": _soak,
             "stages": _stages}[kind]
    start, stages = build(parts)
    shape = Shape(text.strip(), start, tuple(stages))
    if shape.start == 0 and all(target == 0 for _, target in shape.stages):
        raise ValueError(f"{text!r}: the multiplier is 0 throughout, so time would never move")
    return shape


def _want(parts: list[str], n: int, form: str) -> None:
    if len(parts) != n or not all(p.strip() for p in parts):
        raise ValueError(f"expected {form}")


def _duration(text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError:
        raise ValueError(f"{text!r}: expected a duration such as 30s, 2m or 1h") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text!r}: expected a duration such as 30s, 2m or 1h")
    return value


def _multiplier(text: str) -> float:
    try:
        value = float(text.strip().rstrip("xX"))
    except ValueError:
        raise ValueError(f"{text!r}: expected a multiplier of --speedup such as 0.5 or 2") from None
    if not (math.isfinite(value) and (value == 0 or MIN_MULTIPLIER <= value <= MAX_MULTIPLIER)):
        raise ValueError(f"{text!r}: a multiplier must be 0 or between {MIN_MULTIPLIER:g} and {MAX_MULTIPLIER:g}")
    return value


def _constant(parts: list[str]):
    _want(parts, 0, "constant (no parts)")
    return 1.0, []


def _ramp(parts: list[str]):
    _want(parts, 2, "ramp:DURATION:FROM-TO, e.g. ramp:2m:0.1-2")
    span = _duration(parts[0])
    ends = re.fullmatch(r"\s*([^-]+)-([^-]+)\s*", parts[1])
    start, end = (_multiplier(ends[1]), _multiplier(ends[2])) if ends else (0.0, _multiplier(parts[1]))
    return start, [(span, end)]


def _step(parts: list[str]):
    _want(parts, 2, "step:DURATION:M1,M2,…, e.g. step:1m:1,2,4")
    hold = _duration(parts[0])
    levels = [_multiplier(m) for m in parts[1].split(",")]
    stages = []
    for level in levels[1:]:
        stages += [(hold, stages[-1][1] if stages else levels[0]), (0.0, level)]
    return levels[0], stages + [(hold, levels[-1])]


def _spike(parts: list[str]):
    _want(parts, 3, "spike:AT:DURATION:M, e.g. spike:1m:30s:10")
    at, span, peak = _duration(parts[0]), _duration(parts[1]), _multiplier(parts[2])
    return 1.0, [(at, 1.0), (0.0, peak), (span, peak), (0.0, 1.0), (at, 1.0)]


def _soak(parts: list[str]):
    _want(parts, 1, "soak:DURATION, e.g. soak:2h")
    return 1.0, [(_duration(parts[0]), 1.0)]


def _stages(parts: list[str]):
    form = "stages:D1:M1,D2:M2,…, e.g. stages:30s:1,1m:5,30s:0"
    if len(parts) < 2:
        raise ValueError(f"expected {form}")
    # "30s:1,1m:5" splits on ":" into ["30s", "1,1m", "5"]: rejoin and split on commas instead.
    stages = []
    for item in ":".join(parts).split(","):
        duration, _, target = item.partition(":")
        if not target:
            raise ValueError(f"{item!r}: expected DURATION:MULTIPLIER ({form})")
        stages.append((_duration(duration), _multiplier(target)))
    return 1.0, stages


class Pace:
    """Virtual ↔ wall for a drive at `speedup` × the shape's multiplier, starting at virtual `from_t`."""

    def __init__(self, speedup: float, shape: Shape = CONSTANT, from_t: float = 0.0):
        if not speedup > 0:
            raise ValueError("speedup must be positive")
        self.speedup, self.shape, self.from_t = float(speedup), shape, float(from_t)
        # Knots of m: wall time, the value just after the knot, and virtual seconds run by then (from from_t).
        self._w, self._m, self._v = [0.0], [shape.start], [0.0]
        level = shape.start
        for duration, target in shape.stages:
            w0, v0 = self._w[-1], self._v[-1]
            self._w.append(w0 + duration)
            self._v.append(v0 + self.speedup * duration * (level + target) / 2.0)
            self._m.append(target)
            level = target

    def multiplier(self, wall_s: float) -> float:
        return self.shape.multiplier(wall_s)

    def speedup_at(self, wall_s: float) -> float:
        return self.speedup * self.shape.multiplier(wall_s)

    def virtual(self, wall_s: float) -> float:
        """V(w): the virtual time due at wall second w of the drive (exact: m is linear between knots)."""
        if wall_s <= 0:
            return self.from_t
        k = bisect_right(self._w, wall_s) - 1
        u = wall_s - self._w[k]
        a = self._m[k]
        slope = self._slope(k)
        return self.from_t + self._v[k] + self.speedup * (a * u + slope * u * u / 2.0)

    def wall(self, virtual_t: float) -> float:
        """W(t): the first wall second of the drive at which virtual t is due (0 before `from_t`; inf for a
        time the shape never reaches)."""
        target = virtual_t - self.from_t
        if target <= 0:
            return 0.0
        # virtual_t - from_t is off by a few ulps: a target that close to a knot's value is that knot's (it
        # matters where time stands still after it).
        eps = 8.0 * math.ulp(max(abs(virtual_t), abs(self.from_t), 1.0))
        k = bisect_left(self._v, target - eps)  # the first knot by which the target is run
        k = len(self._v) - 1 if k == len(self._v) else max(k - 1, 0)  # the segment the answer lies in
        run = target - self._v[k]
        if run <= eps:
            return self._w[k]
        need = run / self.speedup
        a, slope = self._m[k], self._slope(k)
        if slope == 0.0:
            u = need / a if a > 0 else math.inf
        else:
            # Solve slope/2·u² + a·u = need; this form is stable for either sign of the slope and for a = 0.
            u = 2.0 * need / (a + math.sqrt(max(a * a + 2.0 * slope * need, 0.0)))
        if k + 1 < len(self._w):
            u = min(u, self._w[k + 1] - self._w[k])
        return self._w[k] + u

    def _slope(self, k: int) -> float:
        """dm/dw on the segment after knot k (0 after the last knot, and across a jump)."""
        if k + 1 >= len(self._w):
            return 0.0
        span = self._w[k + 1] - self._w[k]
        return (self._m[k + 1] - self._m[k]) / span if span > 0 else 0.0


class PacedEnvironment(simpy.Environment):
    """simpy.rt.RealtimeEnvironment(strict=False) on a `Pace`: the event at virtual t is processed no earlier
    than `wall0 + pace.wall(t)` (time.monotonic()), and never raises for being late."""

    def __init__(self, pace: Pace, initial_time: float = 0.0):
        super().__init__(initial_time)
        self.pace = pace
        self.wall0 = monotonic()

    def sync(self, offset_s: float = 0.0) -> None:
        """Wall second 0 of the pace is `offset_s` from now."""
        self.wall0 = monotonic() + offset_s

    def step(self) -> None:
        due_t = self.peek()
        if due_t == math.inf:
            raise EmptySchedule()
        due = self.wall0 + self.pace.wall(due_t)
        while True:  # a signal (Ctrl-C) interrupts the sleep and its KeyboardInterrupt goes up through run()
            delta = due - monotonic()
            if delta <= 0:
                break
            sleep(delta)
        super().step()

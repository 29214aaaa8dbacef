"""The twin's clock: SimPy environments in virtual time, or in wall-clock time scaled by a speedup.

Everything in a run is a SimPy process on one environment, so the order of events at equal times is
the order they were scheduled: that is what makes a run repeatable to the byte.
"""

from __future__ import annotations

import simpy
import simpy.rt


def virtual_clock() -> simpy.Environment:
    """As fast as the computer goes: for planners and evaluators."""
    return simpy.Environment()


def wall_clock(speedup: float) -> simpy.rt.RealtimeEnvironment:
    """One virtual second every 1/speedup wall seconds, never waiting for a late step (live drive)."""
    return simpy.rt.RealtimeEnvironment(factor=1.0 / speedup, strict=False)


def clock_hour_slots(start_s: float, duration_s: float) -> list[tuple[float, float, int]]:
    """The run cut at clock-hour boundaries: (offset from the run start, length, clock hour) for each
    piece, so that an hourly profile applies to the hour it names even when the run starts at 06:30."""
    slots = []
    t = 0.0
    while t < duration_s:
        clock = start_s + t
        span = min(3600.0 - clock % 3600.0, duration_s - t)
        slots.append((t, span, int(clock // 3600) % 24))
        t += span
    return slots

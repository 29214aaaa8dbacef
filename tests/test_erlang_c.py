"""The intake desk is an M/M/c queue when it should be: Poisson calls, exponential talk times, c operators on
one all-day shift and callers who never hang up reproduce the Erlang-C probability of waiting and mean wait.

The tolerance comes from the simulation itself: after a warm-up the answered calls' waits are cut into
batches (in arrival order) long against the queue's relaxation time, so the batch means are close to
independent, and the Student-t interval of their mean is the test's tolerance. Fixed seeds: the same
numbers every run.
"""

from __future__ import annotations

import math

import mesa
import numpy as np
import pytest
import simpy
from scipy import stats

from citytwin.agents.organisation import IntakeDesk
from citytwin.twin.scenario.schema import OperatorShift

BATCHES = 20
CONFIDENCE = 0.998  # two-sided; a correct desk fails for about one seed in 500
TALK_S = 300.0  # mean call time, the scenario default


def erlang_c(lam: float, mu: float, c: int) -> tuple[float, float]:
    """(probability a caller waits, mean wait in queue) of M/M/c with arrival rate lam and service rate mu."""
    a = lam / mu
    rho = a / c
    assert rho < 1
    last = a ** c / math.factorial(c) / (1 - rho)
    p_wait = last / (sum(a ** k / math.factorial(k) for k in range(c)) + last)
    return p_wait, p_wait / (c * mu - lam)


def simulate_waits(lam: float, mu: float, c: int, calls: int, seed: int) -> np.ndarray:
    """Each caller's wait (s), in arrival order, through the real IntakeDesk."""
    env = simpy.Environment()
    arrivals, desk_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    desk = IntakeDesk(env, mesa.Model(), [OperatorShift(start="00:00", end="00:00", operators=c)], 0.0,
                      desk_rng, patience_mean=None)
    waits = np.full(calls, np.nan)

    def record(i):
        return lambda _operator, wait_s: waits.__setitem__(i, wait_s)

    def callers():
        for i in range(calls):
            yield env.timeout(arrivals.exponential(1.0 / lam))
            desk.call(arrivals.exponential(1.0 / mu), None, on_answer=record(i))

    env.process(callers())
    env.run()
    assert not np.isnan(waits).any()  # every caller answered: no patience, all-day shift
    assert len(desk.operators) == c and desk.answered == calls
    return waits


def batch_interval(values: np.ndarray, batches: int = BATCHES) -> tuple[float, float]:
    """(mean, half-width of the CONFIDENCE interval) from batch means."""
    usable = len(values) // batches * batches
    means = values[:usable].reshape(batches, -1).mean(axis=1)
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, batches - 1) * means.std(ddof=1) / math.sqrt(batches)
    return float(means.mean()), float(half)


@pytest.mark.parametrize("c, rho, calls, seed", [
    (5, 0.85, 200_000, 2026),  # busy: five operators at 85 %
    (2, 0.50, 60_000, 2027),  # light: two operators at half load
])
def test_intake_desk_reproduces_erlang_c(c, rho, calls, seed):
    mu = 1.0 / TALK_S
    lam = rho * c * mu
    p_wait, mean_wait = erlang_c(lam, mu, c)
    waits = simulate_waits(lam, mu, c, calls, seed)[calls // 20:]  # drop the warm-up from an empty desk

    sim_wait, tol_wait = batch_interval(waits)
    sim_p, tol_p = batch_interval((waits > 0).astype(float))
    print(f"c={c} rho={rho}: mean wait {sim_wait:.1f} s vs Erlang-C {mean_wait:.1f} s (±{tol_wait:.1f}); "
          f"P(wait) {sim_p:.4f} vs {p_wait:.4f} (±{tol_p:.4f})")
    assert abs(sim_wait - mean_wait) <= tol_wait
    assert abs(sim_p - p_wait) <= tol_p
    # The test has teeth: the interval is tight enough to tell c operators from a desk 10 % busier.
    assert tol_wait < abs(erlang_c(lam * 1.1, mu, c)[1] - mean_wait)
    assert tol_wait < 0.2 * mean_wait


def test_erlang_c_formula_known_values():
    # M/M/1: P(wait) = rho, Wq = rho / (mu - lam); M/M/2 at rho 0.5: P(wait) = 1/3.
    assert erlang_c(0.7, 1.0, 1) == pytest.approx((0.7, 0.7 / 0.3))
    assert erlang_c(1.0, 1.0, 2)[0] == pytest.approx(1 / 3)

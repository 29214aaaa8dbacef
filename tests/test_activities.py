"""A day of activities: Vietnamese timing, trip chains, shares, platoons unbiased in PCU, hourly counts."""

from __future__ import annotations

import numpy as np
import pytest

from citytwin.agents.activities import (HOME, OTHER, PURPOSES, SCHOOL, WORK, PersonTrips, day_trips,
                                        hourly_mode_counts, vehicle_platoons)
from citytwin.agents.population import ADULT, CHILD, STUDENT, WALK, Population, synthesize_population
from citytwin.twin.city.synthetic import SyntheticParams, generate
from citytwin.twin.scenario.schema import MODES, PopulationSpec, TrafficSpec

N = 100_000
SPEC = PopulationSpec(residents=N)
H = 3600.0
DAY = 86400.0
MIX = TrafficSpec().vehicle_mix
MODE_PCU = {m: MIX[m].pcu for m in MODES if m in MIX}  # what the model passes: bus included, walk not
MOTORBIKE, CAR = MODES.index("motorbike"), MODES.index("car")


@pytest.fixture(scope="module")
def city():
    return generate(SyntheticParams())


@pytest.fixture(scope="module")
def pop(city):
    return synthesize_population(city, SPEC, np.random.default_rng(3))


@pytest.fixture(scope="module")
def day(pop):
    return day_trips(pop, SPEC, day_start_t=0.0, rng=np.random.default_rng(4))


def clock_h(trips: PersonTrips, day_start_t: float = 0.0) -> np.ndarray:
    return (trips.depart_t - day_start_t) / H


def test_trips_are_sorted_within_the_clock_day_and_typed(day):
    assert np.all(np.diff(day.depart_t) >= 0)
    assert day.depart_t.min() >= 0.0 and day.depart_t.max() < DAY
    for name, dtype in (("resident", np.int32), ("origin", np.int32), ("dest", np.int32), ("depart_t", np.float64),
                        ("mode", np.int8), ("purpose", np.int8)):
        assert getattr(day, name).dtype == dtype, name
        assert len(getattr(day, name)) == len(day), name
    assert set(np.unique(day.purpose)) == set(range(len(PURPOSES)))


def test_the_day_can_start_before_the_run(pop):
    """A run starting at 06:30: the day's midnight is at virtual -23400 s; same draws, shifted."""
    a = day_trips(pop, SPEC, day_start_t=0.0, rng=np.random.default_rng(9))
    b = day_trips(pop, SPEC, day_start_t=-23_400.0, rng=np.random.default_rng(9))
    assert np.allclose(b.depart_t, a.depart_t - 23_400.0)
    assert np.array_equal(a.resident, b.resident)


def test_morning_peak_is_the_start_of_school_and_office(day):
    t = clock_h(day)
    outbound = np.isin(day.purpose, [WORK, SCHOOL]) & (t < 10.5)
    assert ((t[outbound] >= 6.0) & (t[outbound] < 8.5)).mean() > 0.8
    morning = np.bincount(t[(t >= 4) & (t < 11)].astype(int), minlength=11)
    assert morning.argmax() in (6, 7)
    # pupils leave for 07:00 classes, office workers later
    school = t[(day.purpose == SCHOOL) & (t < 10)]
    work = t[(day.purpose == WORK) & (t < 10)]
    assert (school < 7.0).mean() > 0.95
    assert np.median(school) < np.median(work) < 8.0


def test_evening_peak_is_the_way_home(day):
    t = clock_h(day)
    hours = np.bincount(t.astype(int), minlength=24)
    assert 16 <= 14 + hours[14:21].argmax() <= 18
    evening_home = (day.purpose == HOME) & (t >= 15) & (t < 21)
    assert ((t[evening_home] >= 16.5) & (t[evening_home] < 18.5)).mean() > 0.6
    # the two peaks stand far above the night
    assert hours[7] > 20 * hours[1:4].sum() and hours[17] > 20 * hours[1:4].sum()


def test_some_go_home_for_lunch(day):
    t = clock_h(day)
    midday = (t >= 10.5) & (t < 14.5) & np.isin(day.purpose, [HOME, WORK, SCHOOL])
    assert ((day.purpose == HOME) & midday & (t < 12.5)).sum() > 0
    assert ((np.isin(day.purpose, [WORK, SCHOOL])) & midday & (t >= 12.0)).sum() > 0


def test_each_day_is_a_chain_from_home_back_home(pop, day):
    order = np.lexsort((day.depart_t, day.resident))
    r, o, d = day.resident[order], day.origin[order], day.dest[order]
    first = np.flatnonzero(np.diff(r, prepend=-1))
    last = np.append(first[1:], len(r)) - 1
    same = r[1:] == r[:-1]
    linked = np.ones(len(r), bool)
    linked[1:][same] = d[:-1][same] == o[1:][same]  # each trip starts where the last one ended
    chained = np.logical_and.reduceat(linked, first) & (o[first] == pop.home[r[first]]) & (d[last] == pop.home[r[last]])
    # only a late return wrapped past midnight (a steady-state day) breaks a chain
    assert chained.mean() > 0.995


def test_who_travels_and_how_often(pop, day):
    trips_per = np.bincount(day.resident, minlength=N)
    assert trips_per[pop.age_group == CHILD].sum() == 0  # small children ride along with their parents
    assert np.all(trips_per[pop.work >= 0] >= 2)
    assert np.all(trips_per % 2 == 0)  # everyone comes back home
    # shares of the spec: of commuters going home for lunch, of residents running an errand
    commuters = pop.work >= 0
    to_work = np.bincount(day.resident[np.isin(day.purpose, [WORK, SCHOOL])], minlength=N)
    assert set(np.unique(to_work[commuters]).tolist()) == {1, 2}  # twice: back after lunch at home
    assert (to_work[commuters] == 2).mean() == pytest.approx(SPEC.midday_home_share, abs=0.01)
    errands = np.bincount(day.resident[day.purpose == OTHER], minlength=N)
    assert errands.mean() == pytest.approx(SPEC.other_trip_share, abs=0.01)
    assert len(day) / N == pytest.approx(2 * (commuters.mean() * (1 + SPEC.midday_home_share)
                                              + SPEC.other_trip_share), rel=0.02)


def test_purposes_match_who_travels(pop, day):
    assert np.all(pop.age_group[day.resident[day.purpose == SCHOOL]] == STUDENT)
    assert np.all(pop.age_group[day.resident[day.purpose == WORK]] == ADULT)
    assert np.all(day.dest[day.purpose == HOME] == pop.home[day.resident[day.purpose == HOME]])


def test_trip_modes_are_the_usual_modes_and_shares_hold(pop, day):
    assert np.array_equal(day.mode, pop.mode[day.resident])
    shares = np.bincount(day.mode, minlength=len(MODES)) / len(day)
    for m, name in enumerate(MODES):
        assert shares[m] == pytest.approx(SPEC.mode_share[name], abs=0.01), name


def test_walk_trips_are_short(city, pop, day):
    km = np.hypot(city.nodes.x[day.origin] - city.nodes.x[day.dest],
                  city.nodes.y[day.origin] - city.nodes.y[day.dest]) / 1000.0
    walks = day.mode == WALK
    assert km[walks].mean() < 0.75 and km[walks].mean() < 0.7 * km[~walks].mean()


def test_same_seed_same_day_other_seed_another(pop):
    a, b, c = (day_trips(pop, SPEC, day_start_t=0.0, rng=np.random.default_rng(s)) for s in (5, 5, 6))
    for name in ("resident", "origin", "dest", "depart_t", "mode", "purpose"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert len(a) != len(c) or not np.array_equal(a.depart_t, c.depart_t)


def test_a_population_built_by_hand_has_days_too():
    n = 6
    pop = Population(home=np.array([0, 0, 1, 2, 2, 3], np.int32), work=np.array([3, -1, 2, -1, 0, -1], np.int32),
                     age_group=np.array([ADULT, CHILD, STUDENT, ADULT, ADULT, ADULT], np.int8),
                     household=np.array([0, 0, 1, 2, 2, 3], np.int32), smartphone=np.ones(n, bool),
                     propensity=np.zeros(n, np.float32), mode=np.zeros(n, np.int8))
    trips = day_trips(pop, PopulationSpec(residents=n, other_trip_share=1.0), day_start_t=0.0,
                      rng=np.random.default_rng(0))
    assert set(trips.resident.tolist()) == {0, 2, 3, 4, 5}
    assert np.all(np.diff(trips.depart_t) >= 0)


# --- platoons ---------------------------------------------------------------------------------------------

def test_platoons_are_the_vehicle_trips_in_pcu(day):
    batch, per_platoon = vehicle_platoons(day, mode_pcu=MODE_PCU, platoon_pcu=5, network_share=1.0,
                                          rng=np.random.default_rng(1), id_prefix="d0-")
    vehicle = np.isin(day.mode, [MOTORBIKE, CAR]) & (day.origin != day.dest)
    pcu = np.where(day.mode[vehicle] == CAR, MIX["car"].pcu, MIX["motorbike"].pcu)
    assert per_platoon == pytest.approx(5 / pcu.mean())
    p = pcu / 5
    expected, sd = p.sum(), np.sqrt((p * (1 - p)).sum())
    assert abs(len(batch) - expected) < 5 * sd
    assert batch.ids[0] == "d0-0" and batch.ids[-1] == f"d0-{len(batch) - 1}"
    assert len(set(batch.ids.tolist())) == len(batch)
    assert np.all(np.diff(batch.depart_t) >= 0) and np.all(batch.origin != batch.dest)
    assert batch.origin.dtype == np.int64 and batch.dest.dtype == np.int64
    # every platoon is one of the day's vehicle trips
    trips = set(zip(day.origin[vehicle].tolist(), day.dest[vehicle].tolist(), day.depart_t[vehicle].tolist()))
    assert set(zip(batch.origin.tolist(), batch.dest.tolist(), batch.depart_t.tolist())) <= trips


def test_platoon_pcu_is_unbiased_across_seeds_and_shares(day):
    vehicle = np.isin(day.mode, [MOTORBIKE, CAR]) & (day.origin != day.dest)
    for share, platoon, mode_pcu in ((1.0, 5, MODE_PCU), (0.25, 5, MODE_PCU),
                                     (1.0, 1, {"motorbike": 0.3, "car": 2.4})):  # a car is 2.4 platoons
        pcu = np.where(day.mode[vehicle] == CAR, mode_pcu["car"], mode_pcu["motorbike"])
        target = (pcu * share).sum()
        totals = [len(vehicle_platoons(day, mode_pcu=mode_pcu, platoon_pcu=platoon, network_share=share,
                                       rng=np.random.default_rng(s), id_prefix="x")[0]) * platoon
                  for s in range(8)]
        frac = pcu * share / platoon % 1.0  # only the fractional platoon of each trip is random
        sd = platoon * np.sqrt((frac * (1 - frac)).sum())
        assert abs(np.mean(totals) - target) < 5 * sd / np.sqrt(len(totals)), (share, platoon)


def test_a_mix_without_cars_takes_the_vietnamese_pcu(day):
    a, va = vehicle_platoons(day, mode_pcu={"motorbike": 0.3}, platoon_pcu=5, network_share=1.0,
                             rng=np.random.default_rng(2), id_prefix="p")
    b, vb = vehicle_platoons(day, mode_pcu={"motorbike": 0.3, "car": MIX["car"].pcu}, platoon_pcu=5,
                             network_share=1.0, rng=np.random.default_rng(2), id_prefix="p")
    assert va == vb and np.array_equal(a.depart_t, b.depart_t)


def test_no_vehicle_trips_no_platoons():
    e = np.empty(0, np.int32)
    empty = PersonTrips(e, e, e, np.empty(0), np.empty(0, np.int8), np.empty(0, np.int8))
    batch, per = vehicle_platoons(empty, mode_pcu=MODE_PCU, platoon_pcu=5, network_share=1.0,
                                  rng=np.random.default_rng(0), id_prefix="p")
    assert len(batch) == 0 and per == 0.0
    assert hourly_mode_counts(empty, 0.0) == []


# --- hourly counts for the ledger -------------------------------------------------------------------------

def test_hourly_mode_counts_add_up_on_clock_hours(pop):
    start = 6.5 * H  # the run starts at 06:30: the day's midnight is virtual -23400
    trips = day_trips(pop, SPEC, day_start_t=-start, rng=np.random.default_rng(8))
    rows = hourly_mode_counts(trips, start)
    assert sum(c for _, _, c in rows) == len(trips)
    t = np.array([r[0] for r in rows])
    assert np.all(np.mod(t + start, H) == 0)  # each t is a clock-hour start in virtual time
    assert t.min() == -start and t.max() == -start + 23 * H
    assert np.all(np.diff(t) >= 0)
    for m, name in enumerate(MODES):
        assert sum(c for _, mode, c in rows if mode == name) == int((trips.mode == m).sum())
    seven = sum(c for tt, _, c in rows if tt == 0.5 * H)  # 07:00-08:00 is virtual 1800-5400
    assert seven == int(((trips.depart_t >= 0.5 * H) & (trips.depart_t < 1.5 * H)).sum())


def test_a_million_residents_one_day(city):
    spec = PopulationSpec(residents=1_000_000)
    pop = synthesize_population(city, spec, np.random.default_rng(1))
    trips = day_trips(pop, spec, day_start_t=0.0, rng=np.random.default_rng(2))
    assert 2.0 < len(trips) / 1_000_000 < 3.0
    batch, _ = vehicle_platoons(trips, mode_pcu=MODE_PCU, platoon_pcu=5, network_share=1.0,
                                rng=np.random.default_rng(3), id_prefix="d0-")
    assert len(batch) > 0

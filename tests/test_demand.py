"""Demand: the time-dependent OD model (profile, peak direction, Poisson totals) and TNTP OD flows."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from conftest import shared_file
from hypothesis import given, settings
from hypothesis import strategies as st

from citytwin.twin.city.model import City, make_links, make_nodes
from citytwin.twin.city.synthetic import SyntheticParams, generate
from citytwin.twin.city.tntp import load_tntp_network
from citytwin.twin.errors import UserInputError
from citytwin.twin.scenario.schema import VN_WEEKDAY_PROFILE, OdDemand, TntpDemand, TrafficSpec
from citytwin.twin.traffic.demand import od_demand, tntp_demand

HOUR = 3600.0
DAY = 86400.0
MEAN_PCU = TrafficSpec().mean_pcu  # the Vietnamese mix: 0.53 PCU a vehicle
PLATOON = 5
SIOUX = "tntp/SiouxFalls/SiouxFalls_{}.tntp"
SIOUX_TOTAL = 360_600.0


@pytest.fixture(scope="module")
def city():
    return generate(SyntheticParams())


def demand(city, spec: OdDemand, *, start=0.0, duration=DAY, seed=0, mean_pcu=MEAN_PCU, platoon=PLATOON):
    return od_demand(city, spec, mean_pcu=mean_pcu, platoon_pcu=platoon, start_s=start, duration_s=duration,
                     rng=np.random.default_rng(seed))


def clock_hours(batch, start: float) -> np.ndarray:
    return ((start + batch.depart_t) // HOUR).astype(int) % 24


@pytest.fixture(scope="module")
def day(city):
    return demand(city, OdDemand(kind="od"), seed=1)


# --- OD demand --------------------------------------------------------------------------------------


def test_peaks_outnumber_the_night(day):
    counts = np.bincount(clock_hours(day, 0.0), minlength=24)
    assert counts[3] > 0
    assert counts[7] > 10 * counts[3]
    assert counts[17] > 10 * counts[3]
    # and the shape is the profile's: each hour within 5 sigma of its Poisson mean
    expected = len(day) * np.asarray(VN_WEEKDAY_PROFILE) / sum(VN_WEEKDAY_PROFILE)
    assert np.all(np.abs(counts - expected) <= 5 * np.sqrt(expected) + 1)


def test_morning_goes_to_jobs_and_evening_goes_home(city, day):
    pop = city.zone_weights["population"]
    hours = clock_hours(day, 0.0)
    am = (hours >= 6) & (hours < 9)
    pm = (hours >= 16) & (hours < 19)
    assert am.sum() > 500 and pm.sum() > 500
    # Morning trips leave homes (high population) for jobs; the evening mirrors it.
    assert pop[day.origin[am]].mean() > 1.3 * pop[day.dest[am]].mean()
    assert pop[day.dest[pm]].mean() > 1.3 * pop[day.origin[pm]].mean()
    # Off-peak is balanced: neither direction dominates by as much.
    night = (hours >= 21) | (hours < 5)
    ratio = pop[day.origin[night]].mean() / pop[day.dest[night]].mean()
    assert 0.75 < ratio < 1.33


def test_platoon_count_is_poisson_around_the_pcu_total(city, day):
    spec = OdDemand(kind="od")
    mean = spec.trips_per_day * MEAN_PCU / PLATOON
    assert abs(len(day) - mean) <= 4 * np.sqrt(mean)
    # Other platoon sizes and mixes scale the count the same way.
    big = demand(city, OdDemand(kind="od", trips_per_day=40_000), mean_pcu=1.0, platoon=10, seed=2)
    assert abs(len(big) - 4_000) <= 4 * np.sqrt(4_000)


def test_trips_are_well_formed(city, day):
    assert len(day) > 0
    assert not np.any(day.origin == day.dest)
    assert np.all(np.diff(day.depart_t) >= 0)
    assert day.depart_t.min() >= 0 and day.depart_t.max() < DAY
    assert len(set(day.ids.tolist())) == len(day)
    n = len(city.nodes)
    assert day.origin.min() >= 0 and day.origin.max() < n and day.dest.max() < n


def test_a_window_uses_only_its_hours_of_the_profile(city):
    start, duration = 6 * HOUR, 3 * HOUR
    spec = OdDemand(kind="od")
    batch = demand(city, spec, start=start, duration=duration, seed=3)
    assert batch.depart_t.min() >= 0 and batch.depart_t.max() < duration
    assert set(np.unique(clock_hours(batch, start)).tolist()) == {6, 7, 8}
    w = np.asarray(VN_WEEKDAY_PROFILE)
    mean = spec.trips_per_day * MEAN_PCU / PLATOON * w[6:9].sum() / w.sum()
    assert abs(len(batch) - mean) <= 4 * np.sqrt(mean)
    # ... in the profile's proportions within the window
    counts = np.bincount(clock_hours(batch, start), minlength=24)[6:9]
    expected = mean * w[6:9] / w[6:9].sum()
    assert np.all(np.abs(counts - expected) <= 5 * np.sqrt(expected))


def test_a_window_that_ends_mid_hour_gets_that_hour_pro_rata(city):
    spec = OdDemand(kind="od", profile="flat", trips_per_day=240_000)
    batch = demand(city, spec, start=10 * HOUR, duration=1.5 * HOUR, mean_pcu=1.0, seed=4)
    per_hour = 240_000 / 24 / PLATOON
    assert abs(len(batch) - 1.5 * per_hour) <= 4 * np.sqrt(1.5 * per_hour)
    assert batch.depart_t.max() < 1.5 * HOUR
    late = (batch.depart_t >= HOUR).sum()
    assert abs(late - 0.5 * per_hour) <= 4 * np.sqrt(0.5 * per_hour)


def test_same_seed_same_trips_other_seed_other_trips(city):
    spec = OdDemand(kind="od", trips_per_day=20_000)
    a, b = demand(city, spec, seed=11), demand(city, spec, seed=11)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.origin, b.origin)
    np.testing.assert_array_equal(a.dest, b.dest)
    np.testing.assert_array_equal(a.depart_t, b.depart_t)
    c = demand(city, spec, seed=12)
    assert len(c) != len(a) or not np.array_equal(c.depart_t, a.depart_t)
    assert len(c) != len(a) or not np.array_equal(c.origin, a.origin)


def test_no_trips_per_day_no_trips(city):
    batch = demand(city, OdDemand(kind="od", trips_per_day=0))
    assert len(batch) == 0 and batch.depart_t.shape == (0,)


weights = st.lists(st.one_of(st.just(0.0), st.floats(0.05, 20.0)), min_size=24, max_size=24).filter(
    lambda w: sum(w) > 0)


@settings(max_examples=25, deadline=None)
@given(profile=weights, start_hour=st.integers(0, 23), hours=st.integers(1, 30), seed=st.integers(0, 2**16))
def test_no_departures_in_hours_of_zero_weight(city, profile, start_hour, hours, seed):
    spec = OdDemand(kind="od", profile=profile, trips_per_day=30_000)
    start = start_hour * HOUR
    batch = demand(city, spec, start=start, duration=hours * HOUR, mean_pcu=1.0, seed=seed)
    assert np.all((batch.depart_t >= 0) & (batch.depart_t < hours * HOUR))
    counts = np.bincount(clock_hours(batch, start), minlength=24)
    zero = np.asarray(profile) == 0
    assert not counts[zero].any(), f"departures in zero-weight hours {np.flatnonzero(zero & (counts > 0))}"


def test_a_start_off_the_hour_still_follows_clock_hours(city):
    profile = [0.0] * 24
    profile[6] = 1.0  # trips only between 06:00 and 07:00
    spec = OdDemand(kind="od", profile=profile, trips_per_day=10_000)
    start = 6.5 * HOUR
    batch = demand(city, spec, start=start, duration=2 * HOUR, mean_pcu=1.0, platoon=1)
    if len(batch) < 1000:
        pytest.fail("precondition: expected the 06:30-07:00 half hour to hold ~5,000 trips")
    counts = np.bincount(clock_hours(batch, start), minlength=24)
    assert counts[7] == 0, f"{counts[7]} of {len(batch)} trips depart in hour 7, whose weight is 0"


# --- TNTP demand ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sioux():
    return load_tntp_network(shared_file(SIOUX.format("net")), node_path=shared_file(SIOUX.format("node")))


def sioux_demand(city, *, scale=1.0, start=0.0, period=HOUR, duration=3 * HOUR, seed=0, mean_pcu=1.0):
    spec = TntpDemand(kind="tntp", trips=str(shared_file(SIOUX.format("trips"))), start=start, period=period,
                      scale=scale)
    return tntp_demand(city, spec, mean_pcu=mean_pcu, platoon_pcu=PLATOON, duration_s=duration,
                       rng=np.random.default_rng(seed))


@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_sioux_falls_total_is_the_file_total(sioux, scale):
    batch = sioux_demand(sioux, scale=scale)
    assert len(batch) * PLATOON == pytest.approx(SIOUX_TOTAL * scale, rel=0.005)
    assert not np.any(batch.origin == batch.dest)
    assert batch.origin.max() < 24 and batch.dest.max() < 24  # zones 1..24 are nodes 0..23


def test_sioux_falls_od_pairs_follow_the_matrix(sioux):
    from citytwin.twin.city.tntp import read_tntp_trips

    _, matrix = read_tntp_trips(shared_file(SIOUX.format("trips")))
    batch = sioux_demand(sioux, seed=5)
    counts = np.zeros((24, 24))
    np.add.at(counts, (batch.origin, batch.dest), 1)
    expected = matrix / PLATOON
    np.fill_diagonal(expected, 0)
    assert np.all(np.abs(counts - expected) < 1.0)  # each pair rounds its fraction up or down, never more


def test_sioux_falls_departures_inside_the_period(sioux):
    start, period = 600.0, 1800.0
    batch = sioux_demand(sioux, start=start, period=period, duration=3 * HOUR, scale=0.5)
    assert len(batch) * PLATOON == pytest.approx(SIOUX_TOTAL * 0.5 * period / HOUR, rel=0.005)
    assert batch.depart_t.min() >= start and batch.depart_t.max() < start + period
    assert np.all(np.diff(batch.depart_t) >= 0)
    # evenly over the period: each tenth of it holds about a tenth of the platoons
    tenths = np.bincount(((batch.depart_t - start) // (period / 10)).astype(int), minlength=10)
    assert tenths.min() > 0.9 * len(batch) / 10 and tenths.max() < 1.1 * len(batch) / 10


def test_sioux_falls_mean_pcu_scales_the_platoons(sioux):
    cars = sioux_demand(sioux, scale=0.5)
    mix = sioux_demand(sioux, scale=0.5, mean_pcu=MEAN_PCU)
    assert len(mix) == pytest.approx(len(cars) * MEAN_PCU, rel=0.01)


def test_sioux_falls_period_clipped_to_the_run_keeps_the_rate(sioux):
    batch = sioux_demand(sioux, period=HOUR, duration=0.5 * HOUR)
    if not len(batch) or batch.depart_t.max() >= 0.5 * HOUR:
        pytest.fail("precondition: departures inside the 30 min run")
    assert len(batch) * PLATOON == pytest.approx(SIOUX_TOTAL * 0.5, rel=0.005)


def test_sioux_falls_demand_starting_after_the_run_departs_nothing_inside_it(sioux):
    batch = sioux_demand(sioux, start=2 * HOUR, duration=HOUR)
    assert len(batch) == 0 or batch.depart_t.max() < HOUR


TINY_TRIPS = """\
<NUMBER OF ZONES> 3
<TOTAL OD FLOW> 15.0
<END OF METADATA>


Origin  1
    2 :       5.0;    3 :      10.0;

Origin  3
    1 :       0.0;
"""


def tiny_city() -> City:
    """Zones 1 and 2 both ways; zone 3 can leave (3 -> 1) but nothing enters it."""
    nodes = make_nodes(["1", "2", "3"], [0.0, 500.0, 0.0], [0.0, 0.0, 500.0])
    links = make_links(["1-2", "2-1", "3-1"], [0, 1, 2], [1, 0, 0], [500.0] * 3, [1] * 3, [10.0] * 3,
                       [1800.0] * 3, [0.2] * 3, ["local"] * 3)
    return City(name="tiny", source="tntp", nodes=nodes, links=links)


def test_od_pair_without_a_path_is_a_user_error(tmp_path):
    trips = tmp_path / "tiny_trips.tntp"
    trips.write_text(TINY_TRIPS, encoding="utf-8")
    spec = TntpDemand(kind="tntp", trips=str(trips))
    with pytest.raises(UserInputError) as err:
        tntp_demand(tiny_city(), spec, mean_pcu=1.0, platoon_pcu=1, duration_s=HOUR, rng=np.random.default_rng(0))
    assert len(err.value.problems) == 1
    line = err.value.problems[0]
    assert line.startswith(f"{trips}: ")
    assert "no path" in line and "1 -> 3" in line and "1 OD pair(s)" in line


def test_od_pairs_with_paths_are_fine(tmp_path):
    trips = tmp_path / "tiny_trips.tntp"
    trips.write_text(TINY_TRIPS.replace("3 :      10.0;", "").replace("15.0", "5.0"), encoding="utf-8")
    spec = TntpDemand(kind="tntp", trips=str(trips))
    batch = tntp_demand(tiny_city(), spec, mean_pcu=1.0, platoon_pcu=1, duration_s=HOUR,
                        rng=np.random.default_rng(0))
    assert len(batch) == 5
    assert set(zip(batch.origin.tolist(), batch.dest.tolist())) == {(0, 1)}


def test_trips_zone_missing_from_the_network_is_a_user_error(tmp_path):
    trips = tmp_path / "four_trips.tntp"
    trips.write_text(textwrap.dedent("""\
        <NUMBER OF ZONES> 4
        <TOTAL OD FLOW> 5.0
        <END OF METADATA>
        Origin 1
            4 : 5.0;
        """), encoding="utf-8")
    with pytest.raises(UserInputError) as err:
        tntp_demand(tiny_city(), TntpDemand(kind="tntp", trips=str(trips)), mean_pcu=1.0, platoon_pcu=1,
                    duration_s=HOUR, rng=np.random.default_rng(0))
    assert err.value.problems[0].startswith(f"{trips}: ") and "4" in err.value.problems[0]

"""The UXsim adapter: chunked time, trips added while running, restrictions, and parity with UXsim."""

from __future__ import annotations

import numpy as np
import pytest
from uxsim import World

from citytwin.twin.city.synthetic import SyntheticParams, generate
from citytwin.twin.traffic.engine import Restriction, TripBatch
from citytwin.twin.traffic.uxsim_engine import UXsimEngine, add_city


@pytest.fixture(scope="module")
def city():
    return generate(SyntheticParams(width_m=1500, height_m=1000, block_m=250, bridges=2))


def random_trips(city, n, t_end, seed=0, prefix="p"):
    rng = np.random.default_rng(seed)
    o = rng.integers(len(city.nodes), size=n)
    d = (o + rng.integers(1, len(city.nodes), size=n)) % len(city.nodes)
    t = np.sort(rng.uniform(0, t_end, size=n))
    return TripBatch(ids=np.array([f"{prefix}{i}" for i in range(n)], dtype=object), origin=o, dest=d, depart_t=t)


def test_time_advances_in_steps_and_never_back(city):
    engine = UXsimEngine(city, horizon_s=600)
    engine.advance_to(123)
    assert engine.time == 120
    engine.advance_to(60)
    assert engine.time == 120
    engine.advance_to(10_000)  # clamped to the horizon
    assert engine.time == 600


def test_trips_added_while_running_complete(city):
    engine = UXsimEngine(city, horizon_s=3600)
    engine.add_trips(random_trips(city, 100, 600))
    engine.advance_to(900)
    first = engine.finished_trips()
    engine.add_trips(random_trips(city, 50, 300, seed=1, prefix="late"))  # depart 'in the past': clamped to now
    engine.advance_to(3600)
    second = engine.finished_trips()
    ids = set(first.ids) | set(second.ids)
    assert len(ids) == len(first) + len(second)  # each trip reported once
    assert sum(i.startswith("late") for i in ids) == 50
    late = second.depart_t[[i.startswith("late") for i in second.ids]]
    assert late.min() >= 900
    assert np.all(second.arrive_t > second.depart_t)
    assert len(engine.unfinished_trips()) == 150 - len(ids)


def test_closed_link_takes_no_traffic_and_reopens(city):
    engine = UXsimEngine(city, horizon_s=3600)
    trips = random_trips(city, 600, 3000)
    engine.add_trips(trips)
    engine.advance_to(600)
    busiest = int(np.argmax(engine.counts_at(np.array([600.0]))[0][0]))
    entries_600 = engine.link_state([busiest]).entries[0]
    engine.restrict("flood", Restriction(busiest, capacity_factor=0.0))
    engine.advance_to(1800)
    assert engine.link_state([busiest]).entries[0] == entries_600
    engine.lift("flood")
    engine.advance_to(3600)
    assert engine.link_state([busiest]).entries[0] > entries_600


def test_restrictions_compose_and_lift_independently(city):
    engine = UXsimEngine(city, horizon_s=600)
    engine.restrict("a", Restriction(3, capacity_factor=0.5))
    engine.restrict("b", Restriction(3, capacity_factor=0.5, speed_factor=0.5))
    base = city.links.capacity_pcu_h[3] / 3600
    assert engine._links[3].capacity_out == pytest.approx(base * 0.25)
    engine.lift("a")
    assert engine._links[3].capacity_out == pytest.approx(base * 0.5)
    engine.lift("b")
    assert engine._links[3].capacity_out == pytest.approx(base)
    assert engine._links[3].vmax == pytest.approx(city.links.free_flow_mps[3])


def test_snapshot_counts_match_the_state(city):
    engine = UXsimEngine(city, horizon_s=1800)
    engine.add_trips(random_trips(city, 300, 1200))
    engine.advance_to(900)
    state = engine.link_state()
    snap = engine.link_snapshot()
    np.testing.assert_allclose(state.entries - state.exits, state.on_link)
    np.testing.assert_allclose(snap.on_link, state.on_link)
    assert np.isnan(snap.entries).all()
    entries, _ = engine.counts_at(np.array([300.0, 900.0]))
    assert np.all(entries[1] >= entries[0]) and entries[1].sum() == state.entries.sum()


def test_adapter_reproduces_bare_uxsim(city):
    """Same network, same demand, same seed: the chunked adapter gives UXsim's own travel times."""
    trips = random_trips(city, 800, 1800, seed=3)
    engine = UXsimEngine(city, horizon_s=3600, seed=11)
    engine.add_trips(trips)
    for t in range(300, 3601, 300):
        engine.advance_to(t)
    ours = engine.finished_trips()

    W = World(deltan=5, tmax=engine._tsize * 5, print_mode=0, random_seed=11, cpp=True,
              vehicle_logging_timestep_interval=0)
    add_city(W, city)
    for o, d, t in zip(trips.origin, trips.dest, trips.depart_t):
        W.addVehicle(city.nodes.ids[o], city.nodes.ids[d], t)
    W.exec_simulation(until_t=3595)
    bare = [v.travel_time for v in W.VEHICLES.values() if v.state == "end"]
    assert len(bare) == len(ours)
    assert np.mean(ours.arrive_t - ours.depart_t) == pytest.approx(np.mean(bare), rel=1e-9)

"""Bus fleet: lines on the network, headways, service hours, and GPS fixes that move along the links."""

from __future__ import annotations

import json

import numpy as np
import pytest

from citytwin.devices_sim import encoders as enc
from citytwin.devices_sim.batch import Encoder
from citytwin.devices_sim.buses import BusFleet, link_headings, node_lonlat
from citytwin.devices_sim.encoders import BusPosition
from citytwin.devices_sim.world import StaticWorld
from citytwin.twin.city.paths import free_flow_times
from citytwin.twin.city.synthetic import SyntheticParams, generate
from citytwin.twin.ports.inprocess import EPOCH_DATE
from citytwin.twin.scenario.schema import BusFleet as BusSpec

GPS = 30.0
ALL_DAY = {"start": "00:00", "end": "00:00"}
VIA = ["g0_0", "g6_4", "g12_8"]


@pytest.fixture(scope="module")
def city():
    return generate(SyntheticParams())


def bus_fleet(city, *, routes=None, seed=1, start_s=8 * 3600.0, **kw) -> BusFleet:
    spec = BusSpec(name="bus", interval=GPS, routes=[{"name": "L1", "via": VIA}] if routes is None else routes,
                   **{"service": ALL_DAY, **kw})
    return BusFleet(spec, city, np.random.default_rng(seed), start_s=start_s)


def round_trip_s(fleet, travel: np.ndarray) -> float:
    line = fleet.lines[0]
    return float(travel[line.links].sum()) + fleet.dwell_s * len(line.stops_m)


def fixes(fleet, world, t0: float, t1: float):
    return [(t, fleet.sample(t, world)) for t in np.arange(t0, t1, GPS)]


# -- lines ----------------------------------------------------------------------------------------------------

def test_an_explicit_line_takes_the_shortest_path_through_its_junctions_and_back(city):
    fleet = bus_fleet(city)
    line = fleet.lines[0]
    links = city.links
    assert (links.dst[line.links[:-1]] == links.src[line.links[1:]]).all()  # one connected path
    index = city.node_index()
    via = [index[v] for v in VIA]
    ends = links.dst[line.links]
    ff = links.free_flow_s[line.links]
    turn = line.turn
    assert links.src[line.links[0]] == via[0] and ends[turn - 1] == via[-1] and ends[-1] == via[0]
    # each leg between consecutive via junctions costs exactly the shortest free-flow time
    legs = via + via[-2::-1]
    k = 0
    for a, b in zip(legs[:-1], legs[1:]):
        j = next(i for i in range(k, len(ends)) if ends[i] == b)
        assert ff[k:j + 1].sum() == pytest.approx(free_flow_times(city, [a])[0, b])
        k = j + 1
    assert k == len(line.links)
    assert line.stops_m[-1] == pytest.approx(line.length_m) and np.any(np.isclose(line.stops_m, line.start_m[turn]))
    gaps = np.diff(np.concatenate([[0.0], line.stops_m]))
    assert gaps.max() <= 1.5 * fleet.spec.stop_spacing_m


def test_generated_lines_run_between_distant_junctions_on_major_roads(city):
    fleet = bus_fleet(city, routes=3, seed=4)
    again = bus_fleet(city, routes=3, seed=4)
    assert [ln.name for ln in fleet.lines] == ["R01", "R02", "R03"]
    assert all((a.links == b.links).all() for a, b in zip(fleet.lines, again.lines))
    major = np.isin(city.links.road_class, ("arterial", "bridge"))
    on_major = set(city.links.src[major]) | set(city.links.dst[major])
    for line in fleet.lines:
        a, b = city.links.src[line.links[0]], city.links.dst[line.links[line.turn - 1]]
        assert a in on_major and b in on_major
        assert np.hypot(city.nodes.x[a] - city.nodes.x[b], city.nodes.y[a] - city.nodes.y[b]) > 1000
        assert major[line.links].mean() > 0.5  # mostly on major roads


def test_vehicles_sites_and_ids(city):
    fleet = bus_fleet(city, routes=2, headway=600)
    for ident, line_index in zip(fleet.device_ids, fleet._line_of):
        name = fleet.lines[line_index].name
        assert ident.startswith(f"bus-{name}-") and len(ident.rsplit("-", 1)[1]) == 3
    assert len(set(fleet.device_ids)) == len(fleet.device_ids)
    sites = fleet.sites
    assert (sites.nodes == -1).all() and (sites.links == -1).all()
    lon, lat = node_lonlat(city)
    for k, line_index in enumerate(fleet._line_of):
        line = fleet.lines[line_index]
        depot = city.links.src[line.links[0]]
        assert (sites.lon[k], sites.lat[k]) == (lon[depot], lat[depot])
        assert set(sites.covers[k].tolist()) == set(line.links.tolist())


# -- running ---------------------------------------------------------------------------------------------------

def test_buses_in_service_match_round_trip_time_over_headway(city):
    world = StaticWorld.from_density(city, 0.0)
    for headway in (300.0, 600.0):
        fleet = bus_fleet(city, headway=headway, dwell=20.0)
        trip = round_trip_s(fleet, world.travel_times())
        counts = [len(b) for _, b in fixes(fleet, world, GPS, 3 * 3600.0)]
        assert np.mean(counts) == pytest.approx(trip / headway, abs=0.15)
        assert max(counts) <= np.ceil(trip / headway) and min(counts) >= np.floor(trip / headway)
        assert fleet.cancelled == 0


def test_a_bus_moves_along_its_line_monotonically(city):
    fleet = bus_fleet(city, headway=900.0, dwell=20.0)
    world = StaticWorld.from_density(city, 0.0)
    line = fleet.lines[0]
    order = {int(link): k for k, link in enumerate(line.links)}
    lon, lat = node_lonlat(city)
    trips: list[list] = []  # a trip: the consecutive fixes of one bus
    running: dict[int, list] = {}
    for t, batch in fixes(fleet, world, GPS, 2 * 3600.0):
        for d in set(running) - set(batch.devices.tolist()):
            trips.append(running.pop(d))  # back at the depot
        for d, link, x, y, v in zip(batch.devices, batch.meta["link"], batch.values["lon"], batch.values["lat"],
                                    batch.values["speed"]):
            s, e = city.links.src[link], city.links.dst[link]
            along = np.hypot(x - lon[s], y - lat[s]) / np.hypot(lon[e] - lon[s], lat[e] - lat[s])
            k = order[int(link)]
            running.setdefault(int(d), []).append((t, line.start_m[k] + along * city.links.length_m[link], v))
    complete = [trip for trip in trips if trip[0][0] > GPS]
    assert complete, "some bus runs a whole trip in the window"
    for trip in trips + list(running.values()):
        progress = np.array([p for _, p, _ in trip])
        moving = np.array([v > 0 for *_, v in trip])
        assert np.all(np.diff(progress) >= -1e-6)
        assert np.all(np.diff(progress)[moving[1:]] > 0)
    for trip in complete:  # from the depot to the far end and back, in about the round trip time
        assert trip[0][1] <= GPS * 15.0 and trip[-1][1] >= line.length_m - GPS * 15.0
        assert trip[-1][0] - trip[0][0] == pytest.approx(round_trip_s(fleet, world.travel_times()), abs=2 * GPS)


def test_slower_links_slow_the_buses(city):
    fast = StaticWorld.from_density(city, 0.0)
    slow = StaticWorld.from_density(city, 0.0, travel=2.0 * fast.travel_times())
    counts = {}
    for name, world in (("fast", fast), ("slow", slow)):
        fleet = bus_fleet(city, headway=600.0)
        batches = [b for _, b in fixes(fleet, world, GPS, 3 * 3600.0)]
        counts[name] = np.mean([len(b) for b in batches])
        speed = np.concatenate([b.values["speed"] for b in batches])
        link = np.concatenate([b.meta["link"] for b in batches])
        moving = speed > 0
        expected = city.links.length_m[link] / world.travel_times()[link] * 3.6
        assert np.allclose(speed[moving], expected[moving])
        assert counts[name] == pytest.approx(round_trip_s(fleet, world.travel_times()) / 600.0, abs=0.2)
    assert counts["slow"] > 1.5 * counts["fast"]


def test_a_closed_link_holds_the_buses_on_it(city):
    fleet = bus_fleet(city, headway=600.0)
    travel = StaticWorld.from_density(city, 0.0).travel_times().copy()
    travel[fleet.lines[0].links[3]] = np.inf
    world = StaticWorld.from_density(city, 0.0, travel=travel)
    batches = [b for _, b in fixes(fleet, world, GPS, 2 * 3600.0)]
    last = batches[-1]
    stuck = last.meta["link"] == fleet.lines[0].links[3]
    assert stuck.sum() >= 1 and (last.values["speed"][stuck] == 0).all()
    assert fleet.cancelled > 0  # the line ran out of buses: they all queue behind the closure


def test_positions_are_wgs84_points_on_the_line_links_with_their_heading(city):
    fleet = bus_fleet(city, routes=3, headway=600.0)
    world = StaticWorld.from_density(city, 0.0)
    lon, lat = node_lonlat(city)
    heading = link_headings(city, lon, lat)
    line_links = set(np.concatenate([ln.links for ln in fleet.lines]).tolist())
    for _, batch in fixes(fleet, world, GPS, 1800.0):
        link = batch.meta["link"]
        assert set(link.tolist()) <= line_links
        s, e = city.links.src[link], city.links.dst[link]
        x, y = batch.values["lon"], batch.values["lat"]
        assert ((np.minimum(lon[s], lon[e]) - 1e-12 <= x) & (x <= np.maximum(lon[s], lon[e]) + 1e-12)).all()
        assert ((np.minimum(lat[s], lat[e]) - 1e-12 <= y) & (y <= np.maximum(lat[s], lat[e]) + 1e-12)).all()
        cross = (lon[e] - lon[s]) * (y - lat[s]) - (lat[e] - lat[s]) * (x - lon[s])
        assert np.allclose(cross, 0.0, atol=1e-14)
        assert np.allclose(batch.values["heading"], heading[link])
        assert ((batch.values["heading"] >= 0) & (batch.values["heading"] < 360)).all()
        assert (batch.meta["value"] == batch.values["speed"]).all()
    # an eastbound link heads ~90°, a northbound one ~0°
    index = city.node_index()
    east = np.flatnonzero((city.links.src == index["g0_0"]) & (city.links.dst == index["h0_0"]))[0]
    north = np.flatnonzero((city.links.src == index["g0_0"]) & (city.links.dst == index["g0_1"]))[0]
    assert heading[east] == pytest.approx(90.0, abs=5.0)
    assert min(heading[north], 360 - heading[north]) == pytest.approx(0.0, abs=5.0)


def test_no_buses_outside_service_hours(city):
    # t = 0 is 05:00; service 06:00-09:00
    fleet = bus_fleet(city, start_s=5 * 3600.0, service={"start": "06:00", "end": "09:00"}, headway=600.0)
    world = StaticWorld.from_density(city, 0.0)
    trip = round_trip_s(fleet, world.travel_times())
    seen = {t: len(b) for t, b in fixes(fleet, world, GPS, 30 * 3600.0)}
    assert all(n == 0 for t, n in seen.items() if t < 3600.0)
    assert all(n > 0 for t, n in seen.items() if 3600.0 + trip < t < 4 * 3600.0)
    assert all(n == 0 for t, n in seen.items() if 4 * 3600.0 + trip + GPS < t < 25 * 3600.0)
    assert any(n > 0 for t, n in seen.items() if 25 * 3600.0 < t)  # and the next morning again
    departures = fleet.departures_between(0.0, 86400.0)
    assert departures[0] == 3600.0 and np.allclose(np.diff(departures), 600.0) and departures[-1] < 4 * 3600.0


def test_a_run_starting_in_service_hours_finds_buses_out_already(city):
    fleet = bus_fleet(city, headway=300.0)
    world = StaticWorld.from_density(city, 0.0)
    first = fleet.sample(GPS, world)
    assert len(first) >= np.floor(round_trip_s(fleet, world.travel_times()) / 300.0)
    assert len(set(first.meta["link"].tolist())) == len(first)  # spread along the line, not all at the depot


def test_fixes_encode_as_valid_vehicles(city):
    fleet = bus_fleet(city, routes=2, headway=600.0)
    world = StaticWorld.from_density(city, 5.0)
    batch = fleet.sample(GPS, world)
    assert len(batch)
    encoder = Encoder(BusPosition, fleet.device_ids, fleet.sites.lon, fleet.sites.lat, EPOCH_DATE)
    for obs, payload in zip(encoder.observations(batch), encoder.iota(batch)):
        assert json.loads(payload) == enc.to_iota_json(obs)[0]
        doc = enc.to_ngsi_ld(obs)
        assert all(attr in doc for attr in enc.REQUIRED["Vehicle"])
        assert enc.from_ngsi_ld(doc) == obs and obs.route_id in ("R01", "R02")


def test_no_lines_no_buses(city):
    fleet = bus_fleet(city, routes=0)
    assert len(fleet.device_ids) == 0 and len(fleet.sample(GPS, StaticWorld.from_density(city, 0.0))) == 0

"""Device placement: explicit sites, budgets and strategies, what each device covers, and site checks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citytwin.devices_sim.placement import (
    Sites, _greedy, _incidence, check_sites, flood_prone, incident_history, link_weights, place)
from citytwin.twin.city import build_city
from citytwin.twin.city.model import City, Links, Nodes
from citytwin.twin.city.synthetic import georeference
from citytwin.twin.errors import UserInputError
from citytwin.twin.scenario.schema import (
    CameraFleet, CitySpec, DetectorFleet, DevicesSpec, HazardsSpec, IncidentsSpec, Placement)

STRATEGIES = ("random", "major_roads", "max_coverage", "hotspots")
PLACED = ("detector", "camera", "air", "noise", "water_level", "rain_gauge")


@pytest.fixture(scope="module")
def city() -> City:
    return build_city(CitySpec())


@pytest.fixture(scope="module")
def history(city) -> np.ndarray:
    return incident_history(city, HazardsSpec(), np.random.default_rng(99))


def fleet(kind: str, **placement):
    extra = {}
    if "range_m" in placement:
        extra["range_m"] = placement.pop("range_m")
    spec = {"type": kind, "name": kind.replace("_", "-"), "placement": placement, **extra}
    return DevicesSpec.model_validate({"fleets": [spec]}).fleets[0]


def midpoints(city: City) -> np.ndarray:
    x, y = city.nodes.x, city.nodes.y
    src, dst = city.links.src, city.links.dst
    return np.column_stack([(x[src] + x[dst]) / 2, (y[src] + y[dst]) / 2])


def covered_weight(sites: Sites, weights: np.ndarray) -> float:
    seen = np.zeros(len(weights), bool)
    for c in sites.covers:
        seen[c] = True
    return float(weights[seen].sum())


# --- budgets and strategies ---------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("kind", PLACED)
def test_placement_is_deterministic_for_a_seed(city, history, kind, strategy):
    spec = fleet(kind, budget=25, strategy=strategy)
    a = place(spec, city, np.random.default_rng(5), incident_history=history)
    b = place(spec, city, np.random.default_rng(5), incident_history=history)
    assert np.array_equal(a.nodes, b.nodes) and np.array_equal(a.links, b.links)
    assert np.array_equal(a.lon, b.lon) and all(np.array_equal(x, y) for x, y in zip(a.covers, b.covers))
    assert len(a) == 25


def test_random_placement_changes_with_the_seed(city):
    spec = fleet("camera", budget=25, strategy="random")
    a, b = (place(spec, city, np.random.default_rng(s)) for s in (1, 2))
    assert not np.array_equal(a.nodes, b.nodes)


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(PLACED), strategy=st.sampled_from(STRATEGIES), budget=st.integers(0, 1200),
       seed=st.integers(0, 2**32))
def test_placement_never_exceeds_the_budget_nor_repeats_a_site(city, history, kind, strategy, budget, seed):
    sites = place(fleet(kind, budget=budget, strategy=strategy), city, np.random.default_rng(seed),
                  incident_history=history)
    site = sites.links if kind == "detector" else sites.nodes
    candidates = len(city.links) if kind == "detector" else len(city.nodes)
    assert len(sites) == min(budget, candidates)  # a budget beyond the candidates places one on each
    assert len(np.unique(site)) == len(site) and (site >= 0).all() and (site < candidates).all()
    assert len(sites.covers) == len(sites.lon) == len(sites.lat) == len(sites.links) == len(sites.nodes)


def test_a_budget_of_zero_places_nothing(city):
    sites = place(fleet("camera", budget=0), city, np.random.default_rng(0))
    assert len(sites) == 0 and sites.covers == []


def test_explicit_sites_are_honoured_in_order(city):
    links = [str(city.links.ids[k]) for k in (40, 3, 500)]
    det = place(fleet("detector", links=links), city, np.random.default_rng(0))
    assert det.links.tolist() == [40, 3, 500] and (det.nodes == -1).all()
    assert [c.tolist() for c in det.covers] == [[40], [3], [500]]
    nodes = [str(city.nodes.ids[k]) for k in (7, 100, 2)]
    air = place(fleet("air", nodes=nodes), city, np.random.default_rng(0))
    assert air.nodes.tolist() == [7, 100, 2] and (air.links == -1).all()
    assert np.array_equal(air.lon, city.nodes.lon[[7, 100, 2]]) and np.array_equal(air.lat, city.nodes.lat[[7, 100, 2]])


def test_a_detector_sits_at_its_links_midpoint(city):
    sites = place(fleet("detector", budget=10, strategy="random"), city, np.random.default_rng(3))
    src, dst = city.links.src[sites.links], city.links.dst[sites.links]
    assert np.allclose(sites.lon, (city.nodes.lon[src] + city.nodes.lon[dst]) / 2)
    assert np.allclose(sites.lat, (city.nodes.lat[src] + city.nodes.lat[dst]) / 2)


@pytest.mark.parametrize("range_m", [40.0, 150.0, 400.0])
def test_a_camera_covers_the_links_whose_midpoint_is_in_range(city, range_m):
    sites = place(fleet("camera", budget=30, strategy="random", range_m=range_m), city, np.random.default_rng(2))
    mid = midpoints(city)
    for node, covers, busiest in zip(sites.nodes, sites.covers, sites.links):
        d = np.hypot(mid[:, 0] - city.nodes.x[node], mid[:, 1] - city.nodes.y[node])
        assert covers.tolist() == np.flatnonzero(d <= range_m).tolist()
        if len(covers):
            assert busiest in covers and city.links.capacity_pcu_h[busiest] == city.links.capacity_pcu_h[covers].max()
        else:
            assert busiest == -1


@pytest.mark.parametrize("kind, radius", [("air", 1000.0), ("noise", 300.0), ("water_level", 300.0),
                                          ("rain_gauge", 2000.0)])
def test_environmental_sensors_cover_the_junctions_within_their_radius(city, kind, radius):
    sites = place(fleet(kind, budget=8, strategy="random"), city, np.random.default_rng(4))
    x, y = city.nodes.x, city.nodes.y
    for node, covers in zip(sites.nodes, sites.covers):
        assert covers.tolist() == np.flatnonzero(np.hypot(x - x[node], y - y[node]) <= radius).tolist()


@pytest.mark.parametrize("budget", [5, 20, 60])
def test_max_coverage_covers_at_least_as_much_traffic_as_random_and_major_roads(city, budget):
    weights = link_weights(city)
    best = covered_weight(place(fleet("camera", budget=budget), city, np.random.default_rng(0)), weights)
    for strategy in ("random", "major_roads"):
        for seed in range(3):
            other = place(fleet("camera", budget=budget, strategy=strategy), city, np.random.default_rng(seed))
            assert best >= covered_weight(other, weights)


def test_max_coverage_of_environmental_sensors_beats_random_on_population(city):
    people = city.zone_weights["population"]
    best = covered_weight(place(fleet("noise", budget=15), city, np.random.default_rng(0)), people)
    for seed in range(3):
        rand = place(fleet("noise", budget=15, strategy="random"), city, np.random.default_rng(seed))
        assert best >= covered_weight(rand, people)


def test_max_coverage_places_water_gauges_over_flood_prone_junctions(city):
    prone = flood_prone(city, 0.1)
    best = place(fleet("water_level", budget=6), city, np.random.default_rng(0), flood_prone=prone)
    rand = place(fleet("water_level", budget=6, strategy="random"), city, np.random.default_rng(0), flood_prone=prone)
    assert covered_weight(best, prone.astype(float)) >= covered_weight(rand, prone.astype(float))
    assert covered_weight(best, prone.astype(float)) > 0


def test_major_roads_starts_on_arterials(city):
    det = place(fleet("detector", budget=20, strategy="major_roads"), city, np.random.default_rng(0))
    assert set(city.links.road_class[det.links]) == {"arterial"}
    cams = place(fleet("camera", budget=20, strategy="major_roads"), city, np.random.default_rng(0))
    for node in cams.nodes:
        touching = (city.links.src == node) | (city.links.dst == node)
        assert "arterial" in set(city.links.road_class[touching])


def test_hotspots_follow_the_incident_history(city):
    history = np.zeros(len(city.links))
    history[[10, 300, 700]] = [5, 9, 2]
    det = place(fleet("detector", budget=3, strategy="hotspots"), city, np.random.default_rng(0),
                incident_history=history)
    assert det.links.tolist() == [300, 10, 700]
    cams = place(fleet("camera", budget=3, strategy="hotspots"), city, np.random.default_rng(0),
                 incident_history=history)
    assert covered_weight(cams, history) == history.sum()  # every incident link is in some camera's view


def test_water_level_hotspots_are_the_lowest_junctions(city):
    sites = place(fleet("water_level", budget=10, strategy="hotspots"), city, np.random.default_rng(0))
    assert sorted(sites.nodes.tolist()) == sorted(np.argsort(city.nodes.elevation_m, kind="stable")[:10].tolist())


def test_hotspots_draw_a_history_when_none_is_given(city):
    a = place(fleet("camera", budget=10, strategy="hotspots"), city, np.random.default_rng(8))
    b = place(fleet("camera", budget=10, strategy="hotspots"), city, np.random.default_rng(8))
    assert np.array_equal(a.nodes, b.nodes) and len(a) == 10


def test_buses_are_not_placed(city):
    bus = DevicesSpec.model_validate({"fleets": [{"type": "bus", "name": "b"}]}).fleets[0]
    with pytest.raises(ValueError, match="routes"):
        place(bus, city, np.random.default_rng(0))


def test_a_city_without_geography_gets_wgs84_positions_around_the_anchor(city):
    plain = replace(city, nodes=replace(city.nodes, lon=np.full(len(city.nodes), np.nan),
                                        lat=np.full(len(city.nodes), np.nan)))
    sites = place(fleet("air", budget=5, strategy="random"), plain, np.random.default_rng(0))
    lon, lat = georeference(city.nodes.x, city.nodes.y)
    assert np.allclose(sites.lon, lon[sites.nodes]) and np.allclose(sites.lat, lat[sites.nodes])
    assert np.isfinite(sites.lon).all() and (abs(sites.lon - 108.2) < 0.1).all()


# --- the greedy ---------------------------------------------------------------------------------------

def naive_greedy(covers: list[set[int]], weights: np.ndarray, budget: int) -> list[int]:
    chosen, covered = [], set()
    for _ in range(min(budget, len(covers))):
        gains = [-1.0 if s in chosen else float(sum(weights[e] for e in c - covered)) for s, c in enumerate(covers)]
        best = int(np.argmax(gains))
        if gains[best] <= 0:
            break
        chosen.append(best)
        covered |= covers[best]
    return chosen


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n_sites=st.integers(1, 15), n_elements=st.integers(1, 25), budget=st.integers(0, 20))
def test_greedy_picks_the_largest_marginal_gain_each_time(data, n_sites, n_elements, budget):
    covers = [data.draw(st.sets(st.integers(0, n_elements - 1), max_size=n_elements)) for _ in range(n_sites)]
    # Integer weights keep the naive sums exact, so the two agree on ties too.
    weights = np.array(data.draw(st.lists(st.integers(0, 50), min_size=n_elements, max_size=n_elements)), float)
    picks = _greedy(_incidence([np.array(sorted(c), np.int64) for c in covers], n_elements), [weights], budget)
    expected = naive_greedy(covers, weights, budget)
    assert picks[:len(expected)].tolist() == expected
    assert len(picks) == min(budget, n_sites) and len(set(picks.tolist())) == len(picks)


def test_greedy_starts_a_second_layer_of_coverage_when_all_is_covered():
    covers = [np.array([0, 1]), np.array([0]), np.array([1]), np.array([2])]
    picks = _greedy(_incidence(covers, 3), [np.array([1.0, 1.0, 0.0])], 4)
    # 0 covers all the weight; coverage starts again from nothing: 1, then 2; 3 covers no weight, so last.
    assert picks.tolist() == [0, 1, 2, 3]


# --- the hazard-derived inputs --------------------------------------------------------------------------

def test_incident_history_is_a_year_of_the_hazard_model(city, history):
    assert history.shape == (len(city.links),) and (history >= 0).all() and (history == np.round(history)).all()
    spec = IncidentsSpec()
    expected = spec.rate_per_lane_km_day * (city.links.lanes * city.links.length_m / 1000).sum() * 365
    assert abs(history.sum() - expected) < 5 * np.sqrt(expected)
    assert np.array_equal(history, incident_history(city, HazardsSpec(), np.random.default_rng(99)))
    busy = link_weights(city) > np.median(link_weights(city))
    assert history[busy].mean() > history[~busy].mean()  # incidents happen where traffic can be


def test_flood_prone_junctions_are_the_lowest_share(city):
    prone = flood_prone(city, 0.05)
    assert prone.dtype == bool and prone.sum() == round(0.05 * len(city.nodes))
    assert city.nodes.elevation_m[prone].max() <= city.nodes.elevation_m[~prone].min()
    assert not flood_prone(city, 0.0).any()


# --- check_sites ----------------------------------------------------------------------------------------

def test_check_sites_accepts_sites_the_city_has(city):
    spec = DevicesSpec.model_validate({"fleets": [
        {"type": "detector", "name": "d", "placement": {"links": [str(city.links.ids[0])]}},
        {"type": "camera", "name": "c", "placement": {"nodes": [str(city.nodes.ids[5])]}},
        {"type": "air", "name": "a", "placement": {"budget": 4}},
        {"type": "bus", "name": "b", "routes": [{"name": "1", "via": [str(city.nodes.ids[0]), str(city.nodes.ids[-1])]}]},
    ]})
    check_sites(spec, city, "s.yaml")


def test_check_sites_names_each_unknown_site_with_its_path(city):
    spec = DevicesSpec.model_validate({"fleets": [
        {"type": "air", "name": "a", "placement": {"budget": 4}},
        {"type": "detector", "name": "d", "placement": {"links": ["g0_0-h0_0", "nope", "g0_0-h0_O"]}},
        {"type": "camera", "name": "c", "placement": {"nodes": ["zz", "g0_0"]}},
        {"type": "bus", "name": "b", "routes": [{"name": "1", "via": ["g0_0", "g1_0"]},
                                                {"name": "2", "via": ["g0_0", "nowhere"]}]},
    ]})
    with pytest.raises(UserInputError) as err:
        check_sites(spec, city, "s.yaml")
    assert err.value.problems == [
        "s.yaml: devices.fleets[1].placement.links[1]: unknown link 'nope' (the city's link ids look like 'g0_0-h0_0')",
        "s.yaml: devices.fleets[1].placement.links[2]: unknown link 'g0_0-h0_O'; did you mean 'g0_0-h0_0'?",
        "s.yaml: devices.fleets[2].placement.nodes[0]: unknown node 'zz' (the city's node ids look like 'g0_0')",
        "s.yaml: devices.fleets[3].routes[1].via[1]: unknown node 'nowhere' (the city's node ids look like 'g0_0')",
    ]


def test_check_sites_rejects_sites_of_the_wrong_kind(city):
    # The schema refuses these already; check_sites also guards specs built without validation.
    placement = Placement.model_construct(nodes=["g0_0"], links=None, budget=None, strategy="max_coverage")
    detector = DetectorFleet.model_construct(type="detector", name="d", placement=placement)
    placement = Placement.model_construct(nodes=None, links=["g0_0-h0_0"], budget=None, strategy="max_coverage")
    camera = CameraFleet.model_construct(type="camera", name="c", placement=placement)
    with pytest.raises(UserInputError) as err:
        check_sites(DevicesSpec.model_construct(fleets=[detector, camera]), city, "s.yaml")
    assert err.value.problems == [
        "s.yaml: devices.fleets[0].placement.nodes: expected links (link ids) for a detector; got nodes",
        "s.yaml: devices.fleets[1].placement.links: expected nodes (junction ids) for a camera; got links",
    ]


def tiny_city() -> City:
    """a <-> b -> c, and d alone: c cannot be left, d cannot be reached."""
    ids = np.array(["a", "b", "c", "d"])
    n = len(ids)
    nodes = Nodes(ids=ids, x=np.array([0.0, 100, 200, 300]), y=np.zeros(n), lon=np.full(n, np.nan),
                  lat=np.full(n, np.nan), signalised=np.zeros(n, bool), elevation_m=np.array([3.0, 1, 2, 0]))
    src, dst = np.array([0, 1, 1]), np.array([1, 0, 2])
    m = len(src)
    links = Links(ids=np.array(["a-b", "b-a", "b-c"]), src=src, dst=dst, length_m=np.full(m, 100.0),
                  lanes=np.ones(m, int), free_flow_mps=np.full(m, 10.0), capacity_pcu_h=np.array([900.0, 900, 1800]),
                  jam_density_pcu_m=np.full(m, 0.15), road_class=np.array(["local", "local", "arterial"]),
                  name=np.array(["", "", ""]))
    return City(name="tiny", source="test", nodes=nodes, links=links)


def test_check_sites_wants_route_junctions_joined_both_ways():
    spec = DevicesSpec.model_validate({"fleets": [{"type": "bus", "name": "b", "routes": [
        {"name": "ok", "via": ["a", "b", "a"]}, {"name": "oneway", "via": ["a", "b", "c"]}]}]})
    with pytest.raises(UserInputError) as err:
        check_sites(spec, tiny_city(), "s.yaml")
    assert err.value.problems == [
        "s.yaml: devices.fleets[0].routes[1].via[2]: expected a junction reachable by road from 'b' and back "
        "(the line runs out and back); got 'c'"]


def test_a_tiny_city_places_on_the_junctions_links_touch():
    city = tiny_city()
    cams = place(fleet("camera", budget=10, strategy="major_roads"), city, np.random.default_rng(0))
    assert sorted(cams.nodes.tolist()) == [0, 1, 2]  # d has no link
    assert cams.nodes[0] in (1, 2)  # on the arterial b -> c
    sites = place(fleet("camera", budget=1, range_m=60.0), city, np.random.default_rng(0))
    assert sites.nodes.tolist() == [1] and sites.covers[0].tolist() == [0, 1, 2] and sites.links.tolist() == [2]

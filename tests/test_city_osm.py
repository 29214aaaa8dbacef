"""OpenStreetMap networks: the Hải Châu extract becomes a City that UXsim runs without gridlock."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import osmnx as ox
import pytest
import requests
import uxsim
from conftest import shared_file
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from shapely import LineString

from citytwin.twin.city.model import ROAD_CLASSES, City
from citytwin.twin.city.osm import ATTRIBUTION, load_osm_file, load_osm_place
from citytwin.twin.city.roads import ROAD_DEFAULTS
from citytwin.twin.errors import UserInputError

EXTRACT = "osm/danang_haichau.osm"
LAT, LON = (16.0469, 16.0652), (108.2047, 108.2244)  # the extract's <bounds>
MARGIN = 0.01  # ways that cross the bounds are exported whole
RIVERFRONT_LON = 108.222  # east of this lies Bạch Đằng street along the Hàn


@pytest.fixture(scope="module")
def extract():
    return shared_file(EXTRACT)


@pytest.fixture(scope="module")
def danang(extract) -> City:
    return load_osm_file(extract)


def _components(city: City) -> int:
    n = len(city.nodes)
    adjacency = coo_matrix((np.ones(len(city.links)), (city.links.src, city.links.dst)), shape=(n, n))
    return connected_components(adjacency, directed=True, connection="strong")[0]


# --- the Đà Nẵng extract ---------------------------------------------------------------------------


def test_extract_is_one_strongly_connected_network(danang):
    assert danang.source == "osm_file"
    assert danang.attribution == ATTRIBUTION
    assert len(danang.links) > 200
    assert _components(danang) == 1
    pairs = set(zip(danang.links.src.tolist(), danang.links.dst.tolist()))
    assert len(pairs) == len(danang.links), "parallel links must be collapsed"
    assert np.all(danang.links.src != danang.links.dst)
    assert len(set(danang.nodes.ids)) == len(danang.nodes)


def test_few_links_shorter_than_min_link(danang):
    assert np.mean(danang.links.length_m < 25.0) < 0.02


def test_short_links_are_contracted_without_consolidation(extract):
    raw = load_osm_file(extract, consolidate_m=0.0, min_link_m=0.0)
    city = load_osm_file(extract, consolidate_m=0.0, min_link_m=25.0)
    assert np.mean(raw.links.length_m < 25.0) > 0.1  # what OSM gives: many short links
    assert np.mean(city.links.length_m < 25.0) < 0.02
    assert _components(city) == 1
    # contraction lengthens neighbours by what it removes, so the road length survives
    assert city.total_road_km == pytest.approx(raw.total_road_km, rel=0.03)


def test_classes_signals_and_link_parameters(danang):
    links = danang.links
    assert {"arterial", "local"} <= set(links.road_class)
    assert set(links.road_class) <= set(ROAD_CLASSES)
    assert danang.nodes.signalised.sum() >= 5
    defaults = {c: ROAD_DEFAULTS[c] for c in links.road_class}
    per_lane = np.array([defaults[c].capacity_pcu_h_lane for c in links.road_class])
    np.testing.assert_allclose(links.capacity_pcu_h, links.lanes * per_lane)
    cap = np.array([defaults[c].free_flow_kmh * 1.2 / 3.6 for c in links.road_class])
    assert np.all(links.free_flow_mps <= cap + 1e-9)
    assert np.all(links.free_flow_mps > 0) and np.all(links.lanes >= 1)


def test_coordinates_lie_within_the_extract(danang):
    lat, lon = danang.nodes.lat, danang.nodes.lon
    assert np.all((lat > LAT[0] - MARGIN) & (lat < LAT[1] + MARGIN))
    assert np.all((lon > LON[0] - MARGIN) & (lon < LON[1] + MARGIN))
    # x/y are metres: the extract is about 2 km across
    assert 1500 < np.ptp(danang.nodes.x) < 4000 and 1500 < np.ptp(danang.nodes.y) < 4000


def test_elevation_is_lowest_along_the_river(danang):
    elevation = danang.nodes.elevation_m
    riverfront = danang.nodes.lon > RIVERFRONT_LON
    assert riverfront.sum() > 10
    assert elevation[riverfront].mean() < elevation[~riverfront].mean() - 1.0
    assert np.all((elevation >= 0) & (elevation <= 10))


def test_zone_weights_follow_the_street_fabric(danang):
    population, jobs = danang.zone_weights["population"], danang.zone_weights["jobs"]
    assert np.all(population >= 0) and np.all(jobs >= 0)
    assert population.sum() > 0 and jobs.sum() > 0
    signalised = danang.nodes.signalised
    assert jobs[signalised].mean() > jobs[~signalised].mean()


def test_simulates_in_uxsim_without_gridlock(danang):
    W = uxsim.World(cpp=True, deltan=5, tmax=3600, print_mode=0, random_seed=0)
    nodes, links = danang.nodes, danang.links
    names = [str(n) for n in nodes.ids]
    for i, node in enumerate(names):
        W.addNode(node, float(nodes.x[i]), float(nodes.y[i]))
    for k, link in enumerate(links.ids):
        W.addLink(str(link), names[links.src[k]], names[links.dst[k]], length=float(links.length_m[k]),
                  free_flow_speed=float(links.free_flow_mps[k]), number_of_lanes=int(links.lanes[k]),
                  jam_density_per_lane=float(links.jam_density_pcu_m[k]),
                  capacity_out=float(links.capacity_pcu_h[k] / 3600.0))
    rng = np.random.default_rng(0)
    origin, dest = rng.integers(0, len(names), (2, 2000))
    depart = rng.uniform(0, 1800, 2000)
    for o, d, t in zip(origin, dest, depart):
        if o != d:
            W.addVehicle(names[o], names[d], float(t))
    W.exec_simulation()
    vehicles = list(W.VEHICLES.values())
    assert len(vehicles) > 1900
    assert np.mean([v.state == "end" for v in vehicles]) >= 0.95


# --- tag mapping on a small hand-made file ---------------------------------------------------------

_STEP = 0.0018  # about 200 m


def _osm_xml(nodes: dict[int, tuple[float, float, dict]], ways: list[tuple[list[int], dict]]) -> str:
    def tags(t: dict) -> str:
        return "".join(f'<tag k="{k}" v="{v}"/>' for k, v in t.items())

    def nds(refs: list[int]) -> str:
        return "".join(f'<nd ref="{r}"/>' for r in refs)

    body = [f'<node id="{i}" lat="{lat}" lon="{lon}">{tags(t)}</node>' for i, (lat, lon, t) in nodes.items()]
    body += [f'<way id="{100 + k}">{nds(refs)}{tags(t)}</way>' for k, (refs, t) in enumerate(ways)]
    return '<?xml version="1.0" encoding="UTF-8"?>\n<osm version="0.6">' + "".join(body) + "</osm>"


def _grid_file(tmp_path):
    """3 × 3 junctions 200 m apart: a primary south, a bridge mid-way, an alley north, a canal east."""
    nodes = {1 + i + 3 * j: (16.05 + j * _STEP, 108.21 + i * _STEP, {}) for i in range(3) for j in range(3)}
    nodes[5][2]["highway"] = "traffic_signals"
    nodes[9][2]["ele"] = "12"
    nodes.update({20: (16.05, 108.2142, {}), 21: (16.0536, 108.2142, {}), 22: (16.06, 108.23, {})})
    # a dead-end stub off each corner keeps the corner a junction when the graph is simplified;
    # consolidation then drops the stubs
    corners = {1: (-1, -1), 3: (1, -1), 7: (-1, 1), 9: (1, 1)}
    nodes.update({30 + c: (nodes[c][0] + dj * _STEP / 2, nodes[c][1] + di * _STEP / 2, {})
                  for c, (di, dj) in corners.items()})
    ways = [([1, 2, 3], {"highway": "primary", "lanes": "4", "maxspeed": "80", "name": "Đường 2 Tháng 9"}),
            ([4, 5], {"highway": "residential"}),
            ([5, 6], {"highway": "residential", "bridge": "yes", "name": "Cầu Nhỏ"}),
            ([7, 8, 9], {"highway": "service", "service": "alley"}),
            ([1, 5], {"highway": "footway"}),
            ([9, 22], {"highway": "service", "service": "parking_aisle"}),
            ([20, 21], {"waterway": "canal"})]
    ways += [([i, i + 3, i + 6], {"highway": "residential"}) for i in (1, 2, 3)]
    ways += [([c, 30 + c], {"highway": "residential"}) for c in corners]
    path = tmp_path / "grid.osm"
    path.write_text(_osm_xml(nodes, ways), encoding="utf-8")
    return path


def test_tags_map_to_classes_lanes_speeds_signals_and_elevation(tmp_path):
    city = load_osm_file(_grid_file(tmp_path))
    nodes, links = city.nodes, city.links
    assert len(nodes) == 9 and len(links) == 24  # the footway and the parking aisle are gone

    def at(i: int, j: int) -> int:
        return int(np.argmin(np.hypot(nodes.lat - (16.05 + j * _STEP), nodes.lon - (108.21 + i * _STEP))))

    def link(a: int, b: int) -> int:
        return int(np.flatnonzero((links.src == a) & (links.dst == b))[0])

    primary = link(at(0, 0), at(1, 0))
    assert links.road_class[primary] == "arterial"
    assert links.lanes[primary] == 2  # 4 lanes on a two-way road
    assert links.free_flow_mps[primary] * 3.6 == pytest.approx(45.0 * 1.2)  # 80 km/h tagged, capped
    assert links.capacity_pcu_h[primary] == 2 * 1800.0
    assert links.name[primary] == "Đường 2 Tháng 9"
    bridge = link(at(2, 1), at(1, 1))
    assert links.road_class[bridge] == "bridge"
    assert links.free_flow_mps[bridge] * 3.6 == pytest.approx(25.0)  # a residential bridge stays residential
    assert links.road_class[link(at(0, 2), at(1, 2))] == "alley"
    assert links.road_class[link(at(0, 0), at(0, 1))] == "local"
    assert list(np.flatnonzero(nodes.signalised)) == [at(1, 1)]
    assert nodes.elevation_m[at(2, 2)] == 12.0  # tagged
    assert nodes.elevation_m[at(2, 0)] < 1.0 < 4.0 < nodes.elevation_m[at(0, 0)]  # canal to the east
    assert links.length_m[primary] == pytest.approx(192, rel=0.02)


# --- bad input -------------------------------------------------------------------------------------

_BAD_FILES = {
    "empty.osm": ("", "empty file"),
    "text.osm": ("this is not xml", "expected OSM XML"),
    "page.osm": ("<html><body>Not found</body></html>", "root element: expected <osm>"),
    "footways.osm": (_osm_xml({1: (16.05, 108.21, {}), 2: (16.051, 108.21, {})}, [([1, 2], {"highway": "footway"})]),
                     "no drivable road in the file"),
    "nothing.osm": ('<osm version="0.6"></osm>', "no drivable road in the file"),
    "clipped.osm": (_osm_xml({1: (16.05, 108.21, {})}, [([1, 2], {"highway": "primary"})]),
                    "way.nd: expected every node a way uses"),
}


@pytest.mark.parametrize("filename", sorted(_BAD_FILES))
def test_bad_files_are_user_errors(tmp_path, filename):
    text, expected = _BAD_FILES[filename]
    path = tmp_path / filename
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserInputError) as err:
        load_osm_file(path)
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith(f"{path}: ")
    assert expected in err.value.problems[0]


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserInputError, match=r"nowhere\.osm: file not found"):
        load_osm_file(tmp_path / "nowhere.osm")


def test_negative_distances_are_user_errors(tmp_path):
    with pytest.raises(UserInputError, match="consolidate_m: expected a distance >= 0 m; got -1"):
        load_osm_file(tmp_path / "nowhere.osm", consolidate_m=-1)


# --- places: the cache, and no internet ------------------------------------------------------------


def _no_download(*args, **kwargs):
    raise AssertionError("the cache should have been used")


def test_place_is_read_from_the_cache_without_download(extract, danang, tmp_path, monkeypatch):
    ox.save_graphml(ox.graph_from_xml(extract, simplify=False, retain_all=True), tmp_path / "hai-chau-da-nang.graphml")
    monkeypatch.setattr(ox, "graph_from_place", _no_download)
    monkeypatch.setattr(ox, "features_from_place", _no_download)
    city = load_osm_place("Hải Châu, Đà Nẵng", cache_dir=tmp_path)
    assert city.source == "osm_place" and city.name == "Hải Châu, Đà Nẵng"
    # the same pipeline as the file: the same network
    assert city.summary()["links_by_class"] == danang.summary()["links_by_class"]
    assert np.all(city.nodes.elevation_m == 5.0)  # no water outlines were cached


def test_place_download_is_cached_with_its_water(tmp_path, monkeypatch):
    raw = ox.graph_from_xml(_grid_file(tmp_path), simplify=False, retain_all=True)
    canal = gpd.GeoDataFrame(geometry=[LineString([(108.2142, 16.05), (108.2142, 16.0536)])], crs="EPSG:4326")
    calls = []

    def download(place, **kwargs):
        calls.append(kwargs)
        return raw

    monkeypatch.setattr(ox, "graph_from_place", download)
    monkeypatch.setattr(ox, "features_from_place", lambda place, tags: canal)
    first = load_osm_place("Hai Chau", cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache" / "hai-chau.graphml").exists() and calls[0]["network_type"] == "drive"
    monkeypatch.setattr(ox, "graph_from_place", _no_download)
    monkeypatch.setattr(ox, "features_from_place", _no_download)
    second = load_osm_place("Hai Chau", cache_dir=tmp_path / "cache")
    assert len(calls) == 1 and len(second.links) == len(first.links) == 24
    np.testing.assert_allclose(second.nodes.elevation_m, first.nodes.elevation_m)
    assert second.nodes.elevation_m.min() < 1.0  # the canal came back from the cache


def test_place_without_internet_is_a_user_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Max retries exceeded with url: /search (Name resolution)")

    monkeypatch.setattr(ox, "graph_from_place", offline)
    with pytest.raises(UserInputError) as err:
        load_osm_place("Hải Châu, Đà Nẵng, Vietnam", cache_dir=tmp_path)
    message = str(err.value)
    assert "Hải Châu, Đà Nẵng, Vietnam" in message
    assert "could not reach OpenStreetMap" in message and "osm_file" in message
    assert not list(tmp_path.glob("*.graphml"))


def test_unknown_place_is_a_user_error(tmp_path, monkeypatch):
    def unknown(*args, **kwargs):
        raise ox._errors.InsufficientResponseError("Nominatim geocoder returned 0 results")

    monkeypatch.setattr(ox, "graph_from_place", unknown)
    with pytest.raises(UserInputError, match="Atlantis.*expected a place OpenStreetMap knows"):
        load_osm_place("Atlantis", cache_dir=tmp_path)

"""The synthetic district: deterministic, connected, and shaped like a Vietnamese river district."""

from __future__ import annotations

import numpy as np
import pytest

from citytwin.twin.city.paths import zone_nodes
from citytwin.twin.city.synthetic import SyntheticParams, generate


@pytest.fixture(scope="module")
def city():
    return generate(SyntheticParams())


def test_same_parameters_same_city():
    a, b = generate(SyntheticParams()), generate(SyntheticParams())
    for name in ("x", "y", "elevation_m", "signalised"):
        assert np.array_equal(getattr(a.nodes, name), getattr(b.nodes, name))
    assert np.array_equal(a.links.ids, b.links.ids)
    assert not np.array_equal(a.nodes.x, generate(SyntheticParams(layout_seed=1)).nodes.x)


def test_every_node_reaches_every_other(city):
    assert len(zone_nodes(city)) == len(city.nodes)


def test_river_is_crossed_only_by_the_bridges(city):
    p = SyntheticParams()
    river_x = (int(round(p.width_m / p.block_m)) // 2 - 0.5) * p.block_m
    x0, x1 = city.nodes.x[city.links.src], city.nodes.x[city.links.dst]
    crossing = (x0 - river_x) * (x1 - river_x) < 0
    assert set(city.links.road_class[crossing]) == {"bridge"}
    assert crossing.sum() == 2 * p.bridges  # two directions each


def test_alleys_signals_and_low_ground(city):
    classes = set(city.links.road_class)
    assert {"arterial", "collector", "local", "alley", "bridge"} <= classes
    alleys = city.links.road_class == "alley"
    assert city.links.free_flow_mps[alleys].max() < city.links.free_flow_mps[~alleys].min()
    assert city.nodes.signalised.sum() >= 4
    # Land is lowest along the river: the lowest tenth of junctions lies nearer to it than the rest.
    river_x = city.nodes.x.mean()
    low = city.nodes.elevation_m <= np.quantile(city.nodes.elevation_m, 0.1)
    assert np.abs(city.nodes.x[low] - river_x).mean() < np.abs(city.nodes.x[~low] - river_x).mean()


def test_size_follows_parameters():
    small = generate(SyntheticParams(width_m=1000, height_m=1000, alleys_per_block=0))
    big = generate(SyntheticParams(width_m=5000, height_m=4000, alleys_per_block=2))
    assert len(small.links) < 200 < 5000 <= len(big.links)
    assert "alley" not in set(small.links.road_class)


def test_synthetic_city_is_georeferenced_around_its_anchor():
    from citytwin.twin.city.geojson import city_geojson

    params = SyntheticParams(width_m=2000, height_m=1000, anchor_lon=108.2, anchor_lat=16.05)
    city = generate(params)
    lon, lat = city.nodes.lon, city.nodes.lat
    assert abs((lon.min() + lon.max()) / 2 - 108.2) < 1e-9 and abs((lat.min() + lat.max()) / 2 - 16.05) < 1e-9
    # one metre north is 1 / 111,195 degrees of latitude
    y = city.nodes.y
    assert np.allclose(lat - lat.min(), (y - y.min()) / 111_195.08, atol=1e-8)
    features = city_geojson(city)["features"]
    pairs = {tuple(sorted((int(s), int(d)))) for s, d in zip(city.links.src, city.links.dst)}
    assert len(features) == len(pairs)
    assert all(f["geometry"]["type"] == "LineString" and len(f["geometry"]["coordinates"]) == 2 for f in features)

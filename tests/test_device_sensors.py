"""Stationary sensor fleets against worlds with known traffic, rain and water: detectors, air, noise, water level,
rain gauges; the world the run gives them; and that every reading encodes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import simpy

from citytwin.devices_sim import sensors
from citytwin.devices_sim.batch import Batch, Encoder
from citytwin.devices_sim.encoders import FLOOD_RISK, from_iota_json, to_iota_json
from citytwin.devices_sim.placement import Sites, place
from citytwin.devices_sim.sensors import (AirFleet, DetectorFleet, NoiseFleet, RainGaugeFleet, WaterLevelFleet,
                                          detector_readings, links_near, warning_states)
from citytwin.devices_sim.world import StaticWorld, TwinWorld, rain_between
from citytwin.twin.city.synthetic import SyntheticParams, generate, georeference
from citytwin.twin.hazards import Hazards, Rain
from citytwin.twin.ledger import Ledger
from citytwin.twin.ports.inprocess import EPOCH_DATE
from citytwin.twin.scenario import schema
from citytwin.twin.traffic.engine import TripBatch
from citytwin.twin.traffic.uxsim_engine import UXsimEngine

HOUR = 3600.0
VPP = 2.5  # vehicles per PCU


@pytest.fixture(scope="module")
def city():
    return generate(SyntheticParams(width_m=1500, height_m=1000))


def spec(kind: str, **fields):
    """A validated fleet spec of the scenario schema (placement is not used: sites are given directly)."""
    cls = {"detector": schema.DetectorFleet, "air": schema.AirFleet, "noise": schema.NoiseFleet,
           "water_level": schema.WaterLevelFleet, "rain_gauge": schema.RainGaugeFleet}[kind]
    return cls(name=fields.pop("name", kind.replace("_", "-")), placement={"budget": 1}, **fields)


def node_sites(city, nodes) -> Sites:
    nodes = np.asarray(nodes, np.int64)
    lon, lat = georeference(city.nodes.x, city.nodes.y)
    return Sites(nodes=nodes, links=np.full(len(nodes), -1, np.int64), lon=lon[nodes], lat=lat[nodes],
                 covers=[np.array([k]) for k in nodes])


def link_sites(city, links) -> Sites:
    links = np.asarray(links, np.int64)
    lon, lat = georeference(city.nodes.x, city.nodes.y)
    src, dst = city.links.src[links], city.links.dst[links]
    return Sites(nodes=np.full(len(links), -1, np.int64), links=links, lon=(lon[src] + lon[dst]) / 2,
                 lat=(lat[src] + lat[dst]) / 2, covers=[np.array([k]) for k in links])


def busy(city, share_of_capacity=0.4, speed_ratio=0.6) -> StaticWorld:
    """Every link carrying a share of its capacity at a share of its free-flow speed (q = k·v)."""
    speed = city.links.free_flow_mps * speed_ratio
    density = city.links.capacity_pcu_h * share_of_capacity / (speed * 3.6)
    return StaticWorld.from_density(city, density, speed, vehicles_per_pcu=VPP)


# -- detectors ------------------------------------------------------------------------------------------------

def test_detector_counts_average_q_times_interval_and_occupancy_and_speed_follow_the_link(city):
    links = np.resize(np.arange(len(city.links)), 2000)
    density, speed = 30.0, 8.0  # PCU/km over all lanes, m/s
    world = StaticWorld.from_density(city, density, speed, vehicles_per_pcu=VPP)
    fleet = DetectorFleet(spec("detector"), city, link_sites(city, links), np.random.default_rng(1))
    batch = fleet.sample(900.0, world)
    expected = density * speed * 3.6 * VPP * 300 / 3600  # vehicles in 300 s: 180
    counts = batch.values["intensity"]
    assert counts.dtype.kind == "i" and (counts >= 0).all()
    assert abs(counts.mean() - expected) < 4 * np.sqrt(expected / len(counts))
    assert counts.var() == pytest.approx(expected, rel=0.15)  # Poisson
    occupancy = density / 1000 / (city.links.lanes[links] * city.links.jam_density_pcu_m[links])
    np.testing.assert_allclose(batch.values["occupancy"], occupancy, atol=1e-4)
    kmh = batch.values["average_vehicle_speed"]
    assert kmh.mean() == pytest.approx(speed * 3.6, rel=0.01)
    assert kmh.std() == pytest.approx(0.05 * speed * 3.6, rel=0.15)
    np.testing.assert_array_equal(batch.values["date_observed_from"], 600.0)
    np.testing.assert_array_equal(batch.values["date_observed_to"], 900.0)
    np.testing.assert_array_equal(batch.meta["link"], links)
    np.testing.assert_array_equal(batch.meta["value"], kmh)
    np.testing.assert_array_equal(batch.observed_t, 900.0)


def test_an_empty_link_reads_zero_vehicles_at_free_flow_speed(city):
    links = np.arange(len(city.links))
    world = StaticWorld.from_density(city, 0.0)
    values = detector_readings(links, 120.0, 300.0, world, np.random.default_rng(2))
    assert (values["intensity"] == 0).all() and (values["occupancy"] == 0).all()
    ratio = values["average_vehicle_speed"] / (city.links.free_flow_mps * 3.6)
    assert abs(ratio.mean() - 1) < 0.01 and (np.abs(ratio - 1) < 0.25).all()
    # the first interval starts at the run's start, not before
    np.testing.assert_array_equal(values["date_observed_from"], 0.0)


def test_occupancy_stays_within_0_and_1_in_a_jam(city):
    jam = city.links.jam_density_pcu_m * city.links.lanes * 1000 * 1.5  # beyond jam density
    world = StaticWorld.from_density(city, jam, 0.5)
    fleet = DetectorFleet(spec("detector"), city, link_sites(city, np.arange(len(city.links))),
                          np.random.default_rng(3))
    occupancy = fleet.sample(300.0, world).values["occupancy"]
    assert (occupancy == 1.0).all()


def test_a_detector_needs_a_link(city):
    with pytest.raises(ValueError, match="expected links for a detector"):
        DetectorFleet(spec("detector"), city, node_sites(city, [0, 1]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="junction"):
        AirFleet(spec("air"), city, link_sites(city, [0, 1]), np.random.default_rng(0))


# -- what a station sees ----------------------------------------------------------------------------------------

def test_links_near_finds_every_link_within_the_radius(city):
    nodes = np.arange(0, len(city.nodes), 7)
    device, link, dist = links_near(city, nodes, 300.0)
    links = city.links
    ax, ay = city.nodes.x[links.src], city.nodes.y[links.src]
    bx, by = city.nodes.x[links.dst], city.nodes.y[links.dst]
    for k, node in enumerate(nodes):
        # brute force: the segment sampled every metre
        s = np.linspace(0, 1, 2001)[:, None]
        px, py = ax + s * (bx - ax), ay + s * (by - ay)
        d = np.hypot(px - city.nodes.x[node], py - city.nodes.y[node]).min(axis=0)
        want = set(np.flatnonzero(d <= 300.0 - 1.0))
        got = set(link[device == k])
        assert want <= got <= set(np.flatnonzero(d <= 300.0 + 1.0))
    assert (dist <= 300.0).all()


# -- air quality ------------------------------------------------------------------------------------------------

def far_apart(city, min_m: float) -> tuple[int, int]:
    """Two junctions at least min_m apart."""
    x, y = city.nodes.x, city.nodes.y
    a = int(np.argmin(x + y))
    b = int(np.argmax(np.hypot(x - x[a], y - y[a])))
    assert np.hypot(x[b] - x[a], y[b] - y[a]) > min_m
    return a, b


def test_air_rises_with_traffic_near_the_station_only(city):
    a, b = far_apart(city, 1000.0)
    nodes = np.repeat([a, b], 300)
    near_a = city.links_at_node(a)
    density = np.zeros(len(city.links))
    density[near_a] = 60.0
    quiet, traffic = StaticWorld.from_density(city, 0.0), StaticWorld.from_density(city, density, 6.0)
    readings = []
    for world in (quiet, traffic):
        fleet = AirFleet(spec("air"), city, node_sites(city, nodes), np.random.default_rng(4), start_s=10 * HOUR)
        readings.append(fleet.sample(900.0, world).values)
    at_a, at_b = nodes == a, nodes == b
    for field in ("pm25", "pm10", "no2", "co"):
        before, after = readings[0][field], readings[1][field]
        assert after[at_a].mean() > 1.15 * before[at_a].mean(), field
        # same generator, same draws: far from the traffic nothing changes
        np.testing.assert_allclose(after[at_b], before[at_b])
    ratio = readings[1]["pm10"].mean() / readings[1]["pm25"].mean()
    assert ratio == pytest.approx(1.6, rel=0.05)


def test_air_washes_out_in_rain_and_builds_back_up(city):
    nodes = np.arange(len(city.nodes))
    dry, wet = StaticWorld.from_density(city, 0.0), StaticWorld.from_density(city, 0.0, rain=20.0)
    fleets = [AirFleet(spec("air"), city, node_sites(city, nodes), np.random.default_rng(5)) for _ in range(2)]
    first = [fleets[0].sample(900.0, dry), fleets[1].sample(900.0, wet)]
    recent = 5.0 * np.exp(-450 / sensors.RAIN_MEMORY_S)  # 20 mm/h for 900 s, counted at mid-interval
    factor = sensors.WASHOUT_FLOOR + (1 - sensors.WASHOUT_FLOOR) * np.exp(-0.08 * recent)
    ratio = first[1].values["pm25"].sum() / first[0].values["pm25"].sum()
    assert ratio == pytest.approx(factor, rel=0.01)
    np.testing.assert_allclose(first[1].values["co"], first[0].values["co"])  # CO does not dissolve
    assert first[0].values["no2"].sum() > first[1].values["no2"].sum() > ratio * first[0].values["no2"].sum()
    ratios = []
    for k in range(2, 50):  # the rain stops: both fleets in the dry for 12 h
        t = 900.0 * k
        ratios.append(fleets[1].sample(t, dry).values["pm25"].sum() / fleets[0].sample(t, dry).values["pm25"].sum())
    assert all(later >= earlier - 0.005 for earlier, later in zip(ratios, ratios[1:]))
    assert ratios[0] < 0.8 and ratios[-1] > 0.9


def test_air_background_follows_the_clock_and_stays_in_realistic_ranges(city):
    nodes = np.arange(len(city.nodes))
    quiet = StaticWorld.from_density(city, 0.0)
    fleet = AirFleet(spec("air"), city, node_sites(city, nodes), np.random.default_rng(6), start_s=6 * HOUR)
    morning = fleet.sample(2 * HOUR, quiet).values["pm25"].mean()  # 08:00
    afternoon = fleet.sample(8 * HOUR, quiet).values["pm25"].mean()  # 14:00
    assert morning > 1.4 * afternoon
    assert 15 < afternoon < morning < 40
    rush = fleet.sample(2 * HOUR + 900, busy(city)).values
    assert 15 < np.median(rush["pm25"]) < 60 and rush["pm25"].max() < 120
    assert 0.5 < np.median(rush["co"]) < 3.0
    assert 15 < np.median(rush["no2"]) < 100


# -- noise ------------------------------------------------------------------------------------------------------

def test_noise_rises_3_db_per_doubling_of_flow(city):
    nodes = np.repeat(np.arange(len(city.nodes)), 3)
    levels = []
    for share in (0.2, 0.4):
        fleet = NoiseFleet(spec("noise"), city, node_sites(city, nodes), np.random.default_rng(7),
                           start_s=2 * HOUR)  # a quiet hour, so only traffic matters
        levels.append(fleet.sample(300.0, busy(city, share, 0.6)).values["laeq"])
    loud = levels[0] > 60
    assert loud.mean() > 0.9
    assert (levels[1] - levels[0])[loud].mean() == pytest.approx(10 * np.log10(2), abs=0.3)


def test_noise_levels_are_plausible_by_day_and_night(city):
    nodes = np.arange(len(city.nodes))
    fleet = NoiseFleet(spec("noise"), city, node_sites(city, nodes), np.random.default_rng(8), start_s=8 * HOUR)
    day = fleet.sample(300.0, busy(city, 0.4, 0.6)).values
    arterial = np.isin(nodes, city.links.src[city.links.road_class == "arterial"])
    assert 68 < np.median(day["laeq"][arterial]) < 80
    excess = day["lamax"] - day["laeq"]
    assert ((excess >= 8 - 1e-9) & (excess <= 15 + 1e-9)).all()
    fleet.start_s = 2 * HOUR
    night = fleet.sample(600.0, busy(city, 0.005, 1.0)).values  # a few dozen vehicles an hour
    assert 55 < np.median(night["laeq"][arterial]) < 65
    assert 48 < np.median(night["laeq"][~arterial]) < 58  # quiet streets at night
    assert np.median(night["lamax"] - night["laeq"]) > np.median(excess) + 2  # single pass-bys stand out
    silent = fleet.sample(900.0, StaticWorld.from_density(city, 0.0)).values["laeq"]
    assert abs(np.median(silent) - sensors._AMBIENT_DBA[2]) < 1.5


# -- water level ------------------------------------------------------------------------------------------------

def test_warning_states_flip_at_the_thresholds():
    warning = 0.10
    ratios = np.array([0.0, 0.499, 0.5, 0.999, 1.0, 1.499, 1.5, 2.499, 2.5, 9.0])
    states = warning_states(ratios * warning + 1e-12, warning)
    assert list(states) == ["none", "none", "low", "low", "moderate", "moderate", "high", "high", "severe",
                            "severe"]


def test_water_level_follows_the_depth_at_the_gauge(city):
    depths = np.array([0.0, 0.03, 0.07, 0.12, 0.20, 0.30])
    nodes = np.repeat(np.arange(len(depths)), 100)
    depth = np.zeros(len(city.nodes))
    depth[: len(depths)] = depths
    fleet = WaterLevelFleet(spec("water_level", warning_level_m=0.10), city, node_sites(city, nodes),
                            np.random.default_rng(9))
    batch = fleet.sample(300.0, StaticWorld.from_density(city, 0.0, depth=depth))
    level = batch.values["level_m"]
    assert (level >= 0).all()
    for k, d in enumerate(depths[1:], start=1):
        assert abs(level[nodes == k].mean() - d) < 0.002
        assert level[nodes == k].std() == pytest.approx(0.005, rel=0.25)
    assert level[nodes == 0].max() < 0.02
    expected = ["none", "none", "low", "moderate", "high", "severe"]
    for k, state in enumerate(expected):
        assert set(batch.values["warning_state"][nodes == k]) == {state}
    np.testing.assert_array_equal(batch.values["warning_level_m"], 0.10)
    np.testing.assert_array_equal(batch.meta["value"], level)
    np.testing.assert_array_equal(batch.meta["node"], nodes)


# -- rain gauges ------------------------------------------------------------------------------------------------

def test_rain_gauge_integrates_a_known_intensity_in_whole_tips(city):
    nodes = np.arange(len(city.nodes))
    fleet = RainGaugeFleet(spec("rain_gauge"), city, node_sites(city, nodes), np.random.default_rng(10))
    world = StaticWorld.from_density(city, 0.0, rain=12.0)
    readings = [fleet.sample(300.0 * k, world) for k in range(1, 13)]  # an hour of 12 mm/h
    mm = np.array([b.values["precipitation"] for b in readings])
    tips = mm / 0.2
    np.testing.assert_allclose(tips, np.round(tips), atol=1e-9)
    total = mm.sum(axis=0)
    assert (total <= 12.0 + 1e-9).all() and (total >= 12.0 * 0.8 - 0.2).all()
    assert total.mean() == pytest.approx(12.0 * 0.96, abs=0.25)
    np.testing.assert_allclose(readings[3].meta["value"], mm[3] * 12)  # mm/h over 5 minutes
    dry = fleet.sample(300.0 * 13, StaticWorld.from_density(city, 0.0)).values["precipitation"]
    assert dry.max() <= 0.2 + 1e-9  # at most the last tip of water already in the bucket


def test_rain_between_adds_overlapping_episodes():
    episodes = [Rain(start=100.0, duration=200.0, intensity_mm_h=36.0), Rain(start=250.0, duration=100.0,
                                                                         intensity_mm_h=72.0)]
    assert rain_between(episodes, 0.0, 400.0) == pytest.approx(2.0 + 2.0)
    assert rain_between(episodes, 200.0, 260.0) == pytest.approx(36 * 60 / 3600 + 72 * 10 / 3600)
    assert rain_between(episodes, 400.0, 500.0) == 0.0


# -- the run's world ------------------------------------------------------------------------------------------

def test_twin_world_reads_the_engine_at_the_clock_and_the_hazards_schedule(city):
    engine = UXsimEngine(city, horizon_s=1200)
    rng = np.random.default_rng(11)
    n = 300
    o = rng.integers(len(city.nodes), size=n)
    engine.add_trips(TripBatch(ids=np.array([f"p{i}" for i in range(n)], dtype=object), origin=o,
                               dest=(o + rng.integers(1, len(city.nodes), size=n)) % len(city.nodes),
                               depart_t=np.sort(rng.uniform(0, 600, size=n))))
    env = simpy.Environment()
    spec_h = schema.HazardsSpec.model_validate({"rain": {"episodes_per_day": 0}})
    shower = Rain(start=400.0, duration=240.0, intensity_mm_h=30.0)  # between two readings: 2 mm
    hazards = Hazards(env, city, engine, Ledger(), spec_h, [], [shower])
    hazards.start()
    advanced = []

    def now() -> float:
        engine.advance_to(env.now)
        advanced.append(env.now)
        return env.now

    world = TwinWorld(city, engine, hazards, vehicles_per_pcu=VPP, now=now)
    gauges = RainGaugeFleet(spec("rain_gauge"), city, node_sites(city, [0, 1, 2]), np.random.default_rng(12))
    detectors = DetectorFleet(spec("detector"), city, link_sites(city, np.arange(len(city.links))),
                              np.random.default_rng(13))
    out: dict[float, tuple] = {}

    def sampling():
        for t in (300.0, 600.0, 900.0):
            yield env.timeout(t - env.now)
            snapshot = world.traffic()
            assert world.traffic() is snapshot  # one snapshot per engine time
            assert engine.time == t and snapshot.t == t
            out[t] = (gauges.sample(t, world), detectors.sample(t, world), world.rain_mm_h())

    env.process(sampling())
    env.run(until=1000)
    assert advanced and set(advanced) <= {300.0, 600.0, 900.0}
    assert out[600.0][2] == 30.0 and out[900.0][2] == 0.0
    rain = np.array([out[t][0].values["precipitation"] for t in (300.0, 600.0, 900.0)])
    assert (rain[0] == 0).all() and (rain[1] >= 1.4).all()
    assert (rain.sum(axis=0) >= 2.0 * 0.8 - 0.2).all() and (rain.sum(axis=0) <= 2.0).all()
    assert sum(out[t][1].values["intensity"].sum() for t in out) > 0  # the trips were counted
    np.testing.assert_array_equal(world.water_depth_m(), hazards.water_depth_m())
    assert world.active_incidents() == [] and not world.flooded_nodes().any()
    np.testing.assert_allclose(world.travel_times(), engine.link_travel_times())


# -- every fleet's readings encode ------------------------------------------------------------------------------

FLEETS = {"detector": DetectorFleet, "air": AirFleet, "noise": NoiseFleet, "water_level": WaterLevelFleet,
          "rain_gauge": RainGaugeFleet}


@pytest.mark.parametrize("kind", sorted(FLEETS))
def test_every_reading_encodes_and_round_trips(city, kind):
    fleet_spec = spec(kind).model_copy(update={"placement": schema.Placement(budget=25, strategy="random")})
    sites = place(fleet_spec, city, np.random.default_rng(14))
    fleet = sensors.SENSOR_FLEETS[kind](fleet_spec, city, sites, np.random.default_rng(15), start_s=7 * HOUR)
    assert fleet.device_type == kind and fleet.interval_s == float(fleet_spec.interval)
    assert all(re.fullmatch(rf"{fleet_spec.name}-\d{{4}}", d) for d in fleet.device_ids)
    depth = np.linspace(0, 0.4, len(city.nodes))
    world = busy(city)
    world.rain, world.depth = 25.0, depth
    encoder = Encoder(fleet.kind, fleet.device_ids, sites.lon, sites.lat, EPOCH_DATE)
    batches = [fleet.sample(fleet.interval_s * k, world) for k in (1, 2)]
    for batch in batches:
        assert isinstance(batch, Batch) and len(batch) == len(fleet.device_ids)
        assert np.isfinite(batch.meta["value"]).all()
        assert (batch.meta["link" if kind == "detector" else "node"] >= 0).all()
        observations = encoder.observations(batch)
        payloads = encoder.iota(batch)
        for obs, payload in zip(observations, payloads):
            assert json.loads(payload) == to_iota_json(obs)[0]
            assert from_iota_json(json.loads(payload), obs.device_id, fleet.kind.ENTITY_TYPE) == obs


def test_same_generator_same_readings(city):
    world = busy(city)
    world.rain = 5.0
    sites = node_sites(city, np.arange(len(city.nodes)))
    for cls, kind in ((AirFleet, "air"), (NoiseFleet, "noise"), (RainGaugeFleet, "rain_gauge")):
        a, b = (cls(spec(kind), city, sites, np.random.default_rng(16)) for _ in range(2))
        for t in (300.0, 600.0):
            ba, bb = a.sample(t, world), b.sample(t, world)
            for name in ba.values:
                np.testing.assert_array_equal(ba.values[name], bb.values[name])


def test_flood_risk_names_are_the_encoders():
    assert tuple(warning_states(np.array([0.0, 0.06, 0.1, 0.2, 0.3]), 0.1)) == FLOOD_RISK

"""Camera fleet: what the video analytics recognise in view, how often, once per event, and the alerts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from citytwin.devices_sim import encoders as enc
from citytwin.devices_sim.batch import Batch, Encoder
from citytwin.devices_sim.cameras import CameraFleet
from citytwin.devices_sim.encoders import CameraAlert, TrafficFlow
from citytwin.devices_sim.placement import place
from citytwin.devices_sim.world import StaticWorld
from citytwin.twin.city.synthetic import SyntheticParams, generate
from citytwin.twin.hazards import Incident
from citytwin.twin.ports.inprocess import EPOCH_DATE
from citytwin.twin.scenario.schema import CameraFleet as CameraSpec

INTERVAL = 60.0
NONE = {"incident": 0.0, "congestion": 0.0, "violation": 0.0, "flood": 0.0}


@pytest.fixture(scope="module")
def city():
    return generate(SyntheticParams())


def camera_fleet(city, nodes=("g4_4", "g8_4", "g2_6"), seed=1, detect=None, **kw) -> CameraFleet:
    spec = CameraSpec(name="cam", placement={"nodes": list(nodes)}, interval=INTERVAL,
                      detect={**NONE, **(detect or {})}, **kw)
    sites = place(spec, city, np.random.default_rng(0))
    return CameraFleet(spec, city, sites, np.random.default_rng(seed), start_s=8 * 3600.0)


def run(fleet, world, evaluations: int, first: int = 1) -> list[Batch]:
    return [fleet.sample(k * INTERVAL, world) for k in range(first, first + evaluations)]


def rows(batches: list[Batch]) -> Batch:
    return Batch.concat(batches)


def crash(link: int, start: float = 0.0, cause: str = "crash") -> Incident:
    return Incident(link=int(link), start=start, duration=1e6, cause=cause, capacity_factor=0.3)


def covering(fleet, link: int) -> set[int]:
    return {k for k, c in enumerate(fleet.sites.covers) if link in set(np.asarray(c).tolist())}


def covered_links(fleet) -> np.ndarray:
    return np.unique(np.concatenate(fleet.sites.covers))


# -- incidents ----------------------------------------------------------------------------------------------

def test_incident_on_a_covered_link_is_recognised_once_by_each_camera_that_sees_it(city):
    fleet = camera_fleet(city, detect={"incident": 0.5})
    link = int(fleet.sites.links[0])
    world = StaticWorld.from_density(city, 10.0, incidents=[(7, crash(link, start=12.0))])
    got = rows(run(fleet, world, 60))
    assert set(got.meta["event"]) == {"incident"}
    assert sorted(got.devices.tolist()) == sorted(covering(fleet, link))  # one alert per camera, no repeats
    assert (got.meta["link"] == link).all() and (got.meta["truth_t"] == 12.0).all()
    assert (got.meta["node"] == fleet.sites.nodes[got.devices]).all()
    assert set(got.values["sub_category"]) == {"carAccident"} and set(got.values["severity"]) == {"high"}
    street = city.links.name[link]
    assert all(d == f"Tai nạn giao thông trên {street}" for d in got.values["description"])


def test_an_incident_no_camera_sees_is_never_reported(city):
    fleet = camera_fleet(city, detect={"incident": 1.0})
    unseen = np.setdiff1d(np.arange(len(city.links)), covered_links(fleet))[:5]
    world = StaticWorld.from_density(city, 10.0, incidents=[(k, crash(l)) for k, l in enumerate(unseen)])
    assert sum(len(b) for b in run(fleet, world, 30)) == 0


def test_certain_recognition_comes_at_the_first_evaluation(city):
    fleet = camera_fleet(city, detect={"incident": 1.0})
    link = int(fleet.sites.links[1])
    world = StaticWorld.from_density(city, 10.0, incidents=[(0, crash(link, cause="breakdown"))])
    first, *later = run(fleet, world, 5)
    assert set(first.devices.tolist()) == covering(fleet, link)
    assert set(first.values["sub_category"]) == {"carStopped"} and set(first.values["severity"]) == {"medium"}
    assert sum(len(b) for b in later) == 0


def test_recognition_time_is_geometric_and_the_delay_exponential(city):
    p = 0.2
    fleet = camera_fleet(city, detect={"incident": p}, delay=30.0)
    links = covered_links(fleet)
    incidents = [(k, crash(l)) for k, l in enumerate(np.resize(links, 3 * len(links)))]
    world = StaticWorld.from_density(city, 10.0, incidents=incidents)
    batches = run(fleet, world, 120)
    pairs = sum(len(covering(fleet, inc.link)) for _, inc in incidents)
    evaluation = np.concatenate([np.full(len(b), k + 1) for k, b in enumerate(batches)])
    assert len(evaluation) == pairs  # every (camera, incident) pair recognised, exactly once
    se = np.sqrt(1 - p) / p / np.sqrt(pairs)
    assert evaluation.mean() == pytest.approx(1 / p, abs=4 * se)
    delay = rows(batches).meta["delay"]
    assert delay.min() >= 0 and delay.mean() == pytest.approx(30.0, abs=4 * 30.0 / np.sqrt(pairs))
    got = rows(batches)
    assert np.allclose(got.values["date_issued"], got.observed_t + delay)


def test_an_incident_that_ends_is_forgotten(city):
    fleet = camera_fleet(city, detect={"incident": 0.0})
    link = int(fleet.sites.links[0])
    world = StaticWorld.from_density(city, 10.0, incidents=[(3, crash(link))])
    run(fleet, world, 3)
    world.incidents = []
    run(fleet, world, 1, first=4)
    assert fleet._incident_seen == {}


# -- congestion ---------------------------------------------------------------------------------------------

def test_congestion_is_one_event_from_when_it_starts_until_it_recovers(city):
    fleet = camera_fleet(city, detect={"congestion": 1.0})
    link = int(fleet.sites.links[0])
    free = city.links.free_flow_mps
    jammed = free.copy()
    jammed[link] *= 0.1
    unseen = np.setdiff1d(np.arange(len(city.links)), covered_links(fleet))
    jammed[unseen] *= 0.1  # congestion out of view is not reported
    world = StaticWorld.from_density(city, 10.0)
    speeds = [free, jammed, jammed, jammed, free, free, jammed]
    batches = []
    for k, speed in enumerate(speeds, start=1):
        world.set_traffic(10.0, speed)
        batches.append(fleet.sample(k * INTERVAL, world))
    cams = covering(fleet, link)
    assert [len(b) for b in batches] == [0, len(cams), 0, 0, 0, 0, len(cams)]
    for b, start in ((batches[1], 2 * INTERVAL), (batches[6], 7 * INTERVAL)):
        assert set(b.devices.tolist()) == cams and (b.meta["link"] == link).all()
        assert (b.meta["truth_t"] == start).all() and set(b.meta["event"]) == {"congestion"}
        assert set(b.values["sub_category"]) == {"trafficJam"} and set(b.values["severity"]) == {"medium"}
        assert b.values["description"][0].startswith("Ùn tắc giao thông trên ")


def test_a_link_just_at_the_threshold_is_congested_and_recovers_only_clearly_above_it(city):
    fleet = camera_fleet(city, detect={"congestion": 1.0}, congestion_speed_ratio=0.3)
    link = int(fleet.sites.links[0])
    free = city.links.free_flow_mps
    world = StaticWorld.from_density(city, 10.0)
    counts = []
    for k, ratio in enumerate([0.29, 0.31, 0.29, 0.31, 0.5, 0.29], start=1):
        speed = free.copy()
        speed[link] = ratio * free[link]
        world.set_traffic(10.0, speed)
        counts.append(len(fleet.sample(k * INTERVAL, world)))
    n = len(covering(fleet, link))
    assert counts == [n, 0, 0, 0, 0, n]  # hovering at the threshold is one jam


# -- floods -------------------------------------------------------------------------------------------------

def test_a_flood_within_range_is_reported_once_and_one_out_of_range_never(city):
    fleet = camera_fleet(city, detect={"flood": 1.0}, range_m=150.0)
    index = city.node_index()
    here, far = index["g4_4"], index["g12_0"]
    world = StaticWorld.from_density(city, 10.0, flooded=np.zeros(len(city.nodes), bool))
    run(fleet, world, 2)
    world.flooded[[here, far]] = True
    got = rows(run(fleet, world, 5, first=3))
    assert len(got) == 1 and got.devices[0] == 0  # the camera at g4_4; no camera near g12_0
    assert got.meta["event"][0] == "flood" and got.meta["node"][0] == here and got.meta["link"][0] == -1
    assert got.meta["truth_t"][0] == 3 * INTERVAL
    assert (got.values["category"][0], got.values["sub_category"][0], got.values["severity"][0]) == \
        ("weather", "flood", "high")
    assert "g4_4" in got.values["description"][0]


# -- violations ---------------------------------------------------------------------------------------------

def test_violations_follow_the_traffic_through_the_view(city):
    counts = {}
    for density in (0.0, 10.0, 20.0):
        fleet = camera_fleet(city, detect={"violation": 1.0}, violations_per_1000_vehicles=100.0)
        world = StaticWorld.from_density(city, density)
        got = rows(run(fleet, world, 100))
        counts[density] = len(got)
        if density == 10.0:
            # every (camera, link in view) pair sees rate x vehicles through the link
            seen = np.concatenate(fleet.sites.covers)
            veh_h = density * city.links.free_flow_mps[seen] * 3.6 * world.vehicles_per_pcu
            expected = (100.0 / 1000.0 * veh_h * INTERVAL / 3600.0).sum() * 100
            assert counts[density] == pytest.approx(expected, rel=4 / np.sqrt(expected))
            assert set(got.meta["event"]) == {"violation"} and set(got.values["sub_category"]) == {"carWrongDirection"}
            assert ((got.observed_t - INTERVAL < got.meta["truth_t"]) & (got.meta["truth_t"] <= got.observed_t)).all()
            for cam, link in zip(got.devices, got.meta["link"]):
                assert link in fleet.sites.covers[cam]
    assert counts[0.0] == 0
    assert counts[20.0] / counts[10.0] == pytest.approx(2.0, rel=0.1)


# -- the alerts as messages, and the counting companion -----------------------------------------------------

def test_alerts_encode_as_valid_smart_data_models_alerts(city):
    fleet = camera_fleet(city, detect={"incident": 1.0, "congestion": 1.0, "flood": 1.0, "violation": 1.0},
                         violations_per_1000_vehicles=5.0)
    link = int(fleet.sites.links[2])
    speed = city.links.free_flow_mps.copy()
    speed[int(fleet.sites.links[0])] *= 0.1
    flooded = np.zeros(len(city.nodes), bool)
    flooded[fleet.sites.nodes[1]] = True
    world = StaticWorld.from_density(city, 20.0, speed, flooded=flooded, incidents=[(0, crash(link))])
    batch = rows(run(fleet, world, 3))
    assert set(batch.meta["event"]) == {"incident", "congestion", "flood", "violation"}
    encoder = Encoder(CameraAlert, fleet.device_ids, fleet.sites.lon, fleet.sites.lat, EPOCH_DATE)
    observations = encoder.observations(batch)
    for obs, payload in zip(observations, encoder.iota(batch)):
        assert obs.category in enc.ALERT_CATEGORIES and obs.severity in enc.ALERT_SEVERITIES
        assert json.loads(payload) == enc.to_iota_json(obs)[0]
        doc = enc.to_ngsi_ld(obs)
        assert all(attr in doc for attr in enc.REQUIRED["Alert"])
        assert enc.from_ngsi_ld(doc) == obs
        assert obs.date_issued >= obs.observed_at


def test_cameras_count_the_busiest_link_in_view(city):
    fleet = camera_fleet(city, count_interval=300.0)
    counting = fleet.counting_fleet()
    assert counting.device_type == "detector" and counting.kind is TrafficFlow and counting.interval_s == 300.0
    assert counting.device_ids.tolist() == [f"{d}-flow" for d in fleet.device_ids]
    assert counting.spec.faults == fleet.spec.faults
    world = StaticWorld.from_density(city, 30.0)
    batch = counting.sample(300.0, world)
    assert (batch.meta["link"] == fleet.sites.links).all() and (batch.values["intensity"] > 0).all()
    assert np.allclose(counting.sites.lon, fleet.sites.lon)
    Encoder(TrafficFlow, counting.device_ids, counting.sites.lon, counting.sites.lat, EPOCH_DATE).iota(batch)
    assert camera_fleet(city, counts=False).counting_fleet() is None


def test_same_seed_same_alerts_whether_or_not_the_cameras_count(city):
    def alerts(seed, counting=False):
        fleet = camera_fleet(city, seed=seed, detect={"incident": 0.3, "violation": 0.3})
        if counting:
            fleet.counting_fleet().sample(300.0, StaticWorld.from_density(city, 10.0))
        world = StaticWorld.from_density(city, 10.0, incidents=[(0, crash(fleet.sites.links[0]))])
        b = rows(run(fleet, world, 20))
        return b.devices.tolist(), b.meta["truth_t"].tolist(), b.meta["delay"].tolist()

    assert alerts(5) == alerts(5) == alerts(5, counting=True)
    assert alerts(5) != alerts(6)

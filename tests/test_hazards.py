"""Hazards: the drawn schedule of incidents and rain, and how it plays out on the engine and the ledger."""

from __future__ import annotations

import numpy as np
import pytest
import simpy

from citytwin.twin.city.synthetic import SyntheticParams, generate
from citytwin.twin.hazards import Hazards, Incident, Rain, draw_incidents, low_nodes, draw_rain
from citytwin.twin.kpi.traffic import hazard_kpis
from citytwin.twin.ledger import Ledger, events
from citytwin.twin.scenario.schema import VN_WEEKDAY_PROFILE, HazardsSpec
from citytwin.twin.traffic.uxsim_engine import UXsimEngine

HOUR = 3600.0
DAY = 86400.0
STEP = 5.0  # the engine step with the default platoon (5 PCU) and reaction time (1 s)


@pytest.fixture(scope="module")
def city():
    return generate(SyntheticParams(width_m=1500, height_m=1000))


def lane_km(city) -> float:
    return float((city.links.lanes * city.links.length_m).sum() / 1000.0)


def hazards(incidents: dict | None = None, rain: dict | None = None) -> HazardsSpec:
    return HazardsSpec.model_validate({"incidents": incidents or {}, "rain": {"episodes_per_day": 0, **(rain or {})}})


def incidents_over_seeds(city, spec, seeds, *, start=0.0, duration=DAY, weights=VN_WEEKDAY_PROFILE):
    return [draw_incidents(city, spec, start_s=start, duration_s=duration, hourly_weights=np.asarray(weights, float),
                           rng=np.random.default_rng(s)) for s in seeds]


# --- drawing incidents ------------------------------------------------------------------------------


@pytest.mark.parametrize("start, duration", [(0.0, DAY), (6 * HOUR, 12 * HOUR)])
def test_incident_count_averages_rate_times_lane_km_times_days(city, start, duration):
    rate = 0.5
    n = 200
    draws = incidents_over_seeds(city, hazards({"rate_per_lane_km_day": rate}), range(n), start=start,
                                 duration=duration)
    counts = np.array([len(d) for d in draws])
    expected = rate * lane_km(city) * duration / DAY
    assert expected > 5
    assert abs(counts.mean() - expected) <= 4 * np.sqrt(expected / n)
    assert counts.var() == pytest.approx(expected, rel=0.4)  # Poisson: variance = mean


def test_incident_starts_follow_the_hourly_weights(city):
    weights = np.zeros(24)
    weights[6:22] = np.arange(1, 17)  # none at night, more and more through the day
    draws = incidents_over_seeds(city, hazards({"rate_per_lane_km_day": 5.0}), range(20), weights=weights)
    starts = np.concatenate([[i.start for i in d] for d in draws])
    assert len(starts) > 2000
    assert starts.min() >= 0 and starts.max() < DAY
    counts = np.bincount((starts // HOUR).astype(int), minlength=24)
    assert not counts[weights == 0].any()
    expected = len(starts) * weights / weights.sum()
    assert np.all(np.abs(counts - expected) <= 5 * np.sqrt(expected) + 1)


def test_incident_starts_are_sorted_and_inside_a_window(city):
    for d in incidents_over_seeds(city, hazards({"rate_per_lane_km_day": 2.0}), range(10), start=6 * HOUR,
                                  duration=3 * HOUR):
        starts = [i.start for i in d]
        assert starts == sorted(starts)
        assert all(0 <= t < 3 * HOUR for t in starts)
        assert all(0 <= i.link < len(city.links) for i in d)


def test_incident_durations_and_kinds(city):
    spec = hazards({"rate_per_lane_km_day": 5.0})
    draws = [i for d in incidents_over_seeds(city, spec, range(20)) for i in d]
    kinds = spec.incidents.kinds
    assert {i.cause for i in draws} == set(kinds)
    for name, kind in kinds.items():
        mine = [i for i in draws if i.cause == name]
        p = kind.share
        assert abs(len(mine) / len(draws) - p) <= 4 * np.sqrt(p * (1 - p) / len(draws))
        durations = np.array([i.duration for i in mine])
        assert durations.min() > 0
        # lognormal with a coefficient of variation of 0.6 about the kind's mean
        assert abs(durations.mean() - kind.mean_duration) <= 4 * 0.6 * kind.mean_duration / np.sqrt(len(mine))
        assert durations.std() / durations.mean() == pytest.approx(0.6, abs=0.1)
        assert all(i.capacity_factor == kind.capacity_factor for i in mine)


def test_incidents_prefer_long_high_capacity_links(city):
    draws = [i for d in incidents_over_seeds(city, hazards({"rate_per_lane_km_day": 5.0}), range(20)) for i in d]
    weight = city.links.capacity_pcu_h * city.links.length_m
    hit = np.bincount([i.link for i in draws], minlength=len(city.links))
    heavy = weight >= np.quantile(weight, 0.75)
    light = weight <= np.quantile(weight, 0.25)
    assert hit[heavy].sum() / weight[heavy].sum() == pytest.approx(hit[light].sum() / weight[light].sum(), rel=0.3)
    assert hit[heavy].sum() > 2 * hit[light].sum()


def test_rate_zero_no_incidents(city):
    spec = hazards({"rate_per_lane_km_day": 0.0})
    assert all(d == [] for d in incidents_over_seeds(city, spec, range(20)))
    no_kinds = hazards({"rate_per_lane_km_day": 5.0, "kinds": {}})
    assert all(d == [] for d in incidents_over_seeds(city, no_kinds, range(5)))


def test_incident_starts_in_a_partial_last_hour_are_spread_out(city):
    draws = incidents_over_seeds(city, hazards({"rate_per_lane_km_day": 5.0}), range(10), duration=1.5 * HOUR,
                                 weights=[1.0] * 24)
    starts = np.concatenate([[i.start for i in d] for d in draws])
    last = starts[starts >= HOUR]
    if len(last) < 50:
        pytest.fail("precondition: expected starts in the last half hour")
    _, ties = np.unique(last, return_counts=True)
    assert ties.max() == 1, f"{ties.max()} of {len(last)} starts at the same instant {last.max()}"


def test_incident_starts_off_the_hour_follow_clock_hours(city):
    weights = np.zeros(24)
    weights[6] = 1.0
    draws = incidents_over_seeds(city, hazards({"rate_per_lane_km_day": 5.0}), range(5), start=6.5 * HOUR,
                                 duration=2 * HOUR, weights=weights)
    starts = np.concatenate([[i.start for i in d] for d in draws])
    if len(starts) < 50:
        pytest.fail("precondition: expected incidents in 06:30-07:00")
    clock = (6.5 * HOUR + starts) // HOUR
    assert (clock == 7).sum() == 0


# --- drawing rain -----------------------------------------------------------------------------------


def test_fixed_rain_episodes_at_their_clock_time():
    spec = hazards(rain={"episodes": [{"start": "07:30", "duration": "45min", "intensity_mm_h": 80},
                                      {"start": "05:00", "duration": "1h", "intensity_mm_h": 20}]})
    rain = draw_rain(spec, start_s=6 * HOUR, duration_s=3 * HOUR, rng=np.random.default_rng(0))
    assert rain == [Rain(start=5400.0, duration=2700.0, intensity_mm_h=80.0)]  # 05:00 is tomorrow, past the end
    day = draw_rain(spec, start_s=6 * HOUR, duration_s=DAY, rng=np.random.default_rng(0))
    assert [r.start for r in day] == [5400.0, 23 * HOUR]


def test_fixed_episodes_do_not_consume_the_random_draws():
    fixed = hazards(rain={"episodes_per_day": 3, "episodes": [{"start": "12:00", "duration": "1h",
                                                              "intensity_mm_h": 50}]})
    random_only = hazards(rain={"episodes_per_day": 3})
    a = draw_rain(fixed, start_s=0.0, duration_s=DAY, rng=np.random.default_rng(4))
    b = draw_rain(random_only, start_s=0.0, duration_s=DAY, rng=np.random.default_rng(4))
    assert sorted(a, key=lambda r: r.start) == a
    assert [r for r in a if r.start != 12 * HOUR] == b


def test_random_rain_episodes_per_day():
    spec = hazards(rain={"episodes_per_day": 2.0})
    n = 300
    draws = [draw_rain(spec, start_s=0.0, duration_s=DAY, rng=np.random.default_rng(s)) for s in range(n)]
    counts = np.array([len(d) for d in draws])
    assert abs(counts.mean() - 2.0) <= 4 * np.sqrt(2.0 / n)
    episodes = [r for d in draws for r in d]
    assert all(0 <= r.start < DAY and r.duration > 0 and 0 < r.intensity_mm_h <= 300 for r in episodes)
    afternoon = sum(12 * HOUR <= r.start < 18 * HOUR for r in episodes)
    night = sum(r.start < 6 * HOUR for r in episodes)
    assert afternoon > 2 * night  # convective storms come in the afternoon


def test_no_rain_without_episodes():
    spec = hazards(rain={"episodes_per_day": 0})
    for s in range(20):
        assert draw_rain(spec, start_s=0.0, duration_s=7 * DAY, rng=np.random.default_rng(s)) == []


# --- playing hazards on the engine ------------------------------------------------------------------


def play(city, spec: HazardsSpec, incidents, rain, *, horizon=2 * HOUR, probe_every=60.0, probe_offset=30.0):
    """Run the hazards on a SimPy clock over a real engine, probing link parameters as it goes."""
    engine = UXsimEngine(city, horizon_s=horizon)
    ledger = Ledger()
    env = simpy.Environment()
    probes = []

    def probe():
        yield env.timeout(probe_offset)
        while True:
            engine.advance_to(env.now)
            probes.append((env.now, np.array([cl.capacity_in for cl in engine._links]),
                           np.array([cl.capacity_out for cl in engine._links]),
                           engine.link_snapshot().speed_mps))
            yield env.timeout(probe_every)

    Hazards(env, city, engine, ledger, spec, incidents, rain).start()
    env.process(probe())
    env.run(until=horizon)
    engine.advance_to(horizon)
    return ledger.table(), probes, engine


def at(probes, t0, t1):
    return [p for p in probes if t0 < p[0] < t1]


def test_incident_cuts_capacity_while_it_lasts(city):
    k = int(np.argmax(city.links.capacity_pcu_h))
    base = city.links.capacity_pcu_h[k] / 3600.0
    incident = Incident(link=k, start=1003.0, duration=1200.0, cause="crash", capacity_factor=0.35)
    table, probes, engine = play(city, hazards(), [incident], [])
    starts, ends = events(table, "incident.start"), events(table, "incident.end")
    assert list(starts["subject"]) == [city.links.ids[k]] and list(ends["subject"]) == [city.links.ids[k]]
    assert starts["t"].iloc[0] == pytest.approx(1003.0, abs=STEP)
    assert ends["t"].iloc[0] == pytest.approx(2203.0, abs=STEP)
    assert starts["cause"].iloc[0] == "crash" and starts["capacity_factor"].iloc[0] == 0.35
    assert starts["duration_s"].iloc[0] == 1200.0
    assert engine._links[k].capacity_out == pytest.approx(base)
    before, during, after = at(probes, 0, 1003), at(probes, 1003, 2203), at(probes, 2203, 2 * HOUR)
    assert before and during and after
    assert all(p[2][k] == pytest.approx(base) for p in before + after)
    assert all(p[2][k] == pytest.approx(base * 0.35) for p in during)
    assert all(p[1][k] > 0 for p in probes)  # an incident narrows the link, it does not close it
    others = np.arange(len(city.links)) != k
    np.testing.assert_allclose(during[0][2][others], city.links.capacity_pcu_h[others] / 3600.0)


def test_overlapping_incidents_on_one_link_compose(city):
    k = 3
    base = city.links.capacity_pcu_h[k] / 3600.0
    incidents = [Incident(link=k, start=600.0, duration=1800.0, cause="crash", capacity_factor=0.35),
                 Incident(link=k, start=1200.0, duration=2400.0, cause="breakdown", capacity_factor=0.6)]
    table, probes, _ = play(city, hazards(), incidents, [])
    assert len(events(table, "incident.start")) == 2 and len(events(table, "incident.end")) == 2
    for t0, t1, factor in [(600, 1200, 0.35), (1200, 2400, 0.35 * 0.6), (2400, 3600, 0.6), (3600, 7200, 1.0)]:
        window = at(probes, t0, t1)
        assert window and all(p[2][k] == pytest.approx(base * factor) for p in window), (t0, t1)


FLOOD = {"low_node_share": 0.1, "drainage_mm_h": 60}  # drains fast enough to recede inside 2 h
DOWNPOUR = Rain(start=600.0, duration=HOUR, intensity_mm_h=120.0)


@pytest.fixture(scope="module")
def downpour(city):
    return play(city, hazards(rain=FLOOD), [], [DOWNPOUR])


def test_downpour_floods_low_junctions_and_closes_their_links(city, downpour):
    table, probes, engine = downpour
    df = table.to_pandas()
    floods = df[df["kind"] == "flood.start"]
    assert len(floods) >= 1
    low, _ = low_nodes(city, 0.1)
    index = city.node_index()
    assert set(floods["subject"]) <= {city.nodes.ids[i] for i in low}
    assert floods["t"].min() > DOWNPOUR.start
    closed: set[str] = set()
    for _, row in floods.iterrows():
        closed -= set(df[(df["kind"] == "link.reopened") & (df["seq"] < row["seq"])]["subject"])
        links = {city.links.ids[k] for k in city.links_at_node(index[row["subject"]])}
        newly = links - closed  # a link already closed by a flooded junction at its other end is not closed again
        after = df[df["seq"] > row["seq"]].head(len(newly))
        # the flood comes first, then one link.closed per link at the junction not closed yet, at the same instant
        assert list(after["kind"]) == ["link.closed"] * len(newly)
        assert set(after["subject"]) == newly
        assert (after["t"] == row["t"]).all() and (after["cause"] == "flood").all()
        assert row["depth_m"] >= 0.2
        closed |= newly


def test_flooded_links_take_no_inflow_until_the_water_recedes(city, downpour):
    table, probes, engine = downpour
    starts, ends = events(table, "flood.start"), events(table, "flood.end")
    assert sorted(starts["subject"]) == sorted(ends["subject"])  # every flood receded within the 2 h
    index = city.node_index()
    base_in = engine._base_capacity_in
    base_out = city.links.capacity_pcu_h / 3600.0
    for node, t0 in zip(starts["subject"], starts["t"]):
        t1 = float(ends.loc[ends["subject"] == node, "t"].iloc[0])
        assert t1 > DOWNPOUR.start + DOWNPOUR.duration  # it only recedes once the rain has stopped
        links = city.links_at_node(index[node])
        window = at(probes, t0, t1)
        assert window
        for p in window:
            assert np.all(p[1][links] == 0.0)
            assert np.all(p[2][links] < base_out[links])  # what is on the link drains out slowly
    reopened = events(table, "link.reopened")
    assert len(reopened) == len(events(table, "link.closed"))
    last = probes[-1]
    assert last[0] > ends["t"].max()
    np.testing.assert_allclose(last[1], base_in)
    np.testing.assert_allclose(last[2], base_out)


def test_rain_slows_free_flow_and_then_lifts(city, downpour):
    table, probes, _ = downpour
    rain_start, rain_end = events(table, "rain.start"), events(table, "rain.end")
    assert list(rain_start["t"]) == [DOWNPOUR.start] and list(rain_end["t"]) == [DOWNPOUR.start + DOWNPOUR.duration]
    assert rain_start["intensity_mm_h"].iloc[0] == 120.0
    free = city.links.free_flow_mps
    for p in at(probes, 0, DOWNPOUR.start) + at(probes, DOWNPOUR.start + DOWNPOUR.duration, 2 * HOUR):
        np.testing.assert_allclose(p[3], free)
    for p in at(probes, DOWNPOUR.start, DOWNPOUR.start + DOWNPOUR.duration):
        np.testing.assert_allclose(p[3], free * 0.85)


def test_no_flood_when_drainage_keeps_up(city):
    table, probes, engine = play(city, hazards(rain={**FLOOD, "drainage_mm_h": 120}), [], [DOWNPOUR])
    kinds = set(table["kind"].to_pylist())
    assert {"rain.start", "rain.end"} <= kinds
    assert not kinds & {"flood.start", "flood.end", "link.closed", "link.reopened"}
    assert all(np.array_equal(p[1], engine._base_capacity_in) for p in probes)


def test_no_low_nodes_no_flood(city):
    table, _, _ = play(city, hazards(rain={**FLOOD, "low_node_share": 0.0}), [], [DOWNPOUR])
    assert "flood.start" not in set(table["kind"].to_pylist())


def test_ledger_link_closures_match_the_engine(city, downpour):
    table, probes, engine = downpour
    starts = events(table, "flood.start")
    index = city.node_index()
    per_link = np.zeros(len(city.links), int)
    for node in starts["subject"]:
        per_link[city.links_at_node(index[node])] += 1
    if not (per_link >= 2).any():
        pytest.fail("precondition: a link between two flooded junctions")
    changes = table.to_pandas()
    changes = changes[changes["kind"].isin(["link.closed", "link.reopened"])]
    for link, rows in changes.groupby("subject"):
        kinds = list(rows.sort_values("seq")["kind"])
        assert kinds == ["link.closed", "link.reopened"] * (len(kinds) // 2), (link, kinds)
    # and the KPI: link-hours closed, from the engine's own state at each probe
    closed_s = sum(60.0 * (p[1] == 0).sum() for p in probes)
    kpi = hazard_kpis(table, end_t=2 * HOUR)["closed_link_hours"]["value"]
    assert kpi == pytest.approx(closed_s / 3600.0, rel=0.05)

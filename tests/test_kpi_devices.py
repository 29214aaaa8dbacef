"""Device KPIs from small hand-built ledgers on the synthetic city, checked against values worked out by hand.

Rows are written the way the device network writes them: `device.installed` at t = 0 for every device,
`device.reading` when a message reaches the IOC (t) with the device's own sampling time (observed_t),
`camera.alert` when a camera's alert reaches it, `ioc.alert` for what the IOC's rules raised and cleared.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from citytwin.twin.city import build_city
from citytwin.twin.kpi.devices import (AIR_KPI, CAMERA_KPI, DRAINAGE_KPI, NOISE_KPI, REALTIME_KPI, WATER_KPI,
                                       device_kpis, due_readings, flood_warnings, incident_detections, km_curve)
from citytwin.twin.ledger import Ledger
from citytwin.twin.scenario.schema import CitySpec

CITY = build_city(CitySpec())
L = [str(i) for i in CITY.links.ids]
N = [str(i) for i in CITY.nodes.ids]
ROAD_M = float(CITY.links.length_m.sum())  # the synthetic city has no connectors: every link is road


def install(led: Ledger, device: str, device_type: str, *, interval: float = 300.0, node: str | None = None,
            link: str | None = None, covers: list[str] = (), fleet: str | None = None) -> None:
    led.append("device.installed", 0.0, device, device_type=device_type, fleet=fleet or device.split("-")[0],
               node=node, link=link, lon=None, lat=None, interval_s=interval, covers=" ".join(covers))


def reading(led: Ledger, t: float, device: str, device_type: str, observed_t: float, *, link: str | None = None,
            node: str | None = None, fault: str = "", value: float = 1.0) -> None:
    led.append("device.reading", t, device, device_type=device_type, fleet=device.split("-")[0],
               observed_t=observed_t, fault=fault, link=link, node=node, value=value)


def kpis_of(led: Ledger, *, duration_s: float = 7200.0, freshness_s: float = 600.0, flood_prone=None,
            city=CITY) -> dict:
    return device_kpis(led.table(), city, duration_s=duration_s, freshness_s=freshness_s, flood_prone=flood_prone)


def value(out: dict, key: str):
    return out["kpis"][key]["value"]


def pct(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 2)


def row(out: dict, device_type: str) -> dict:
    return next(r for r in out["tables"]["by_type"] if r["device_type"] == device_type)


def test_no_devices_no_kpis():
    led = Ledger(None)
    led.append("incident.start", 100.0, L[0], cause="crash", capacity_factor=0.3, duration_s=600.0)
    assert kpis_of(led) is None


def test_camera_coverage_of_road_and_incidents():
    led = Ledger(None)
    install(led, "cam-0000", "camera", interval=60.0, node=N[0], link=L[0], covers=[L[0], L[1], L[2]])
    install(led, "cam-0001", "camera", interval=60.0, node=N[1], link=L[2], covers=[L[2], L[3], "no-such-link"])
    install(led, "det-0000", "detector", link=L[10], covers=[L[10]])  # a detector is not a camera
    for t, link in ((100.0, L[1]), (200.0, L[3]), (300.0, L[20]), (400.0, L[21])):
        led.append("incident.start", t, link, cause="crash", capacity_factor=0.3, duration_s=600.0)
    out = kpis_of(led)
    seen = CITY.links.length_m[:4].sum()  # L0..L3, L2 seen twice but counted once
    entry = out["kpis"]["camera_road_coverage"]
    assert entry["value"] == pct(seen, ROAD_M)
    assert entry["indicator"] == CAMERA_KPI and entry["target"] == 50.0
    assert value(out, "camera_incident_coverage") == 50.0  # two of four incidents on links in view
    assert value(out, "devices") == 3
    json.dumps(out)  # kpis.json takes it as it is


def test_environmental_coverage_population_weighted_and_water_of_flood_prone():
    led = Ledger(None)
    install(led, "air-0000", "air", interval=900.0, node=N[1], covers=[N[1], N[2]])
    install(led, "air-0001", "air", interval=900.0, node=N[2], covers=[N[2], N[4]])
    install(led, "wl-0000", "water_level", node=N[0], covers=[N[0], N[1], N[2], N[50]])
    pop = CITY.zone_weights["population"]
    prone = np.arange(10)  # junctions 0..9 flood; the gauge covers 0, 1, 2 of them (and 50, which does not)
    out = kpis_of(led, flood_prone=prone)
    assert value(out, "air_coverage") == pct(pop[[1, 2, 4]].sum(), pop.sum())
    assert out["kpis"]["air_coverage"]["indicator"] == AIR_KPI
    # no noise sensors in this scenario: not measured (None), which is not the same as 0 % covered
    assert value(out, "noise_coverage") is None and out["kpis"]["noise_coverage"]["indicator"] == NOISE_KPI
    assert value(out, "camera_road_coverage") is None
    for key, code in (("water_coverage", WATER_KPI), ("drainage_coverage", DRAINAGE_KPI)):
        assert value(out, key) == 30.0
        assert out["kpis"][key]["indicator"] == code and out["kpis"][key]["target"] == 30.0
        assert "flood" in out["kpis"][key]["label"]
    mask = np.zeros(len(N), bool)
    mask[prone] = True
    assert value(kpis_of(led, flood_prone=mask), "water_coverage") == 30.0  # a mask says the same
    assert value(kpis_of(led, flood_prone=None), "water_coverage") is None  # nothing floods: nothing to cover
    # without population the junctions weigh alike
    uniform = dataclasses.replace(CITY, zone_weights={})
    assert value(kpis_of(led, city=uniform, flood_prone=prone), "air_coverage") == pct(3, len(N))


def test_realtime_share_on_a_five_minute_grid():
    """Freshness 600 s, run 1800 s: grid points 300, 600, ..., 1800. A reading arriving at t keeps its link
    fresh at the grid points in [t, t + 600)."""
    led = Ledger(None)
    install(led, "det-0000", "detector", link=L[0], covers=[L[0]])
    install(led, "bus-r1-000", "bus", interval=30.0, covers=[L[5], L[6]])
    install(led, "air-0000", "air", interval=900.0, node=N[3], covers=[N[3]])
    reading(led, 301.0, "det-0000", "detector", 300.0, link=L[0])  # fresh at 600, 900
    reading(led, 901.0, "det-0000", "detector", 900.0, link=L[0])  # fresh at 1200, 1500
    reading(led, 950.0, "det-0000", "detector", 900.0, link=L[0])  # overlaps: the link counts once
    reading(led, 1700.0, "bus-r1-000", "bus", 1699.0, link=L[5])  # fresh at 1800
    reading(led, 1000.0, "air-0000", "air", 999.0, link=L[7], node=N[3])  # not traffic information
    reading(led, 1000.0, "det-0000", "detector", 999.0, link="no-such-link")  # not on this network
    out = kpis_of(led, duration_s=1800.0, freshness_s=600.0)
    series = out["series"]["realtime_share"]
    one = 100.0 / len(L)
    assert series["x"] == [300.0, 600.0, 900.0, 1200.0, 1500.0, 1800.0]
    assert series["values"] == [0.0] + [round(one, 2)] * 5
    entry = out["kpis"]["realtime_traffic_info"]
    assert entry["value"] == round(5 * one / 6, 2)
    assert entry["indicator"] == REALTIME_KPI and entry["target"] == 30.0
    # the age is strict: a reading exactly `freshness_s` old no longer counts
    assert kpis_of(led, duration_s=1800.0, freshness_s=599.0)["series"]["realtime_share"]["values"][1] == round(one, 2)


def test_due_readings_from_install_to_the_end():
    # instants install + k·interval for k >= 1 strictly before the end
    assert due_readings(np.array([0.0, 0.0, 100.0, 0.0]), np.array([300.0, 300.0, 300.0, np.nan]), 3000.0).tolist() \
        == [9, 9, 9, 0]
    assert due_readings(np.array([0.0]), np.array([300.0]), 3001.0).tolist() == [10]


def completeness_ledger() -> Ledger:
    """Detector det-0000 (300 s) over 3000 s: due slots 1..9. Its clock runs 20 s behind. Slot 4 never
    arrives; slot 2 arrives twice; slot 6 is held back 420 s and arrives after slot 7 (late and out of
    order); slot 8 is stuck. Slot 0 (sampled at installation) and slot 10 (at the end) are not due.
    Gauge wl-0000 delivers nothing. Bus bus-r1-000 (30 s GPS) sends four messages, one a duplicate.
    One camera alert."""
    led = Ledger(None)
    install(led, "det-0000", "detector", link=L[0], covers=[L[0]])
    install(led, "wl-0000", "water_level", node=N[0], covers=[N[0]])
    install(led, "bus-r1-000", "bus", interval=30.0, covers=[L[5]])
    install(led, "cam-0000", "camera", interval=60.0, node=N[1], link=L[1], covers=[L[1]])
    skew = -20.0

    def det(slot: int, arrive: float | None = None, fault: str = "") -> None:
        observed = slot * 300.0 + skew
        reading(led, arrive if arrive is not None else slot * 300.0 + 1.0, "det-0000", "detector", observed,
                link=L[0], fault=fault)

    det(0)
    det(1)
    det(2)
    det(2, arrive=602.0, fault="duplicate")
    det(3)
    det(5)
    det(7)
    det(6, arrive=6 * 300.0 + skew + 420.0, fault="late")  # 2200: after slot 7 arrived at 2101
    det(8, fault="stuck")
    det(9)
    det(10, arrive=2999.0)
    for t, observed in ((101.0, 100.0), (131.0, 130.0), (132.0, 130.0), (161.0, 160.0)):
        reading(led, t, "bus-r1-000", "bus", observed, link=L[5])
    led.append("camera.alert", 500.0, "cam-0000", fleet="cam", cause="violation", link=L[1], node=N[1],
               truth_t=450.0, observed_t=480.0)
    return led


def test_completeness_and_data_quality_by_type():
    out = kpis_of(completeness_ledger(), duration_s=3000.0)
    det = row(out, "detector")
    assert (det["devices"], det["messages"], det["due"], det["delivered"]) == (1, 11, 9, 8)
    assert det["completeness"] == pct(8, 9)
    assert det["late"] == det["duplicate"] == det["out_of_order"] == det["faulty"] == pct(1, 11)
    gauge = row(out, "water_level")
    assert (gauge["messages"], gauge["due"], gauge["delivered"], gauge["completeness"]) == (0, 9, 0, 0.0)
    bus = row(out, "bus")
    assert (bus["messages"], bus["due"], bus["delivered"], bus["completeness"]) == (4, None, 3, None)
    assert bus["duplicate"] == 25.0 and bus["late"] == 0.0
    cam = row(out, "camera")
    assert (cam["messages"], cam["due"], cam["completeness"]) == (1, None, None)  # its alert
    assert [r["device_type"] for r in out["tables"]["by_type"]] == ["detector", "camera", "water_level", "bus"]

    assert value(out, "completeness_detector") == pct(8, 9)
    assert value(out, "completeness_water_level") == 0.0
    assert "completeness_bus" not in out["kpis"] and "completeness_camera" not in out["kpis"]
    assert value(out, "messages") == 15
    assert value(out, "readings_late") == pct(1, 15)
    assert value(out, "readings_duplicate") == pct(2, 15)
    assert value(out, "readings_out_of_order") == pct(1, 15)
    assert value(out, "readings_faulty") == pct(1, 15)
    assert (value(out, "bus_vehicles"), value(out, "bus_messages"), value(out, "bus_fixes")) == (1, 4, 3)


def test_incident_detection_with_censoring():
    """I1 (L1, 1000 s, 30 min) seen after 200 s (the earlier of two cameras' alerts); I2 (L2, 2000 s, 10 min)
    never seen: censored at 600 s; I3 (L3, 3000 s, lasts past the end at 7200 s) never seen: censored at
    4200 s; I4 (L1 again, 4000 s) seen after 900 s. A late alert about I1 does not count for I4.
    Kaplan–Meier: 200 (event, 4 at risk) -> 25 %; 900 (event, 2 at risk) -> 62.5 %; p90 not reached."""
    led = Ledger(None)
    install(led, "cam-0000", "camera", interval=60.0, node=N[0], covers=[L[1], L[2]])
    install(led, "cam-0001", "camera", interval=60.0, node=N[1], covers=[L[1]])
    for t, link, duration in ((1000.0, L[1], 1800.0), (2000.0, L[2], 600.0), (3000.0, L[3], 1e6),
                              (4000.0, L[1], 600.0)):
        led.append("incident.start", t, link, cause="crash", capacity_factor=0.3, duration_s=duration)

    def alert(t: float, camera: str, link: str, truth_t: float, cause: str = "incident") -> None:
        led.append("camera.alert", t, camera, fleet="cam", cause=cause, link=link, node=None, truth_t=truth_t,
                   observed_t=t - 30.0)

    alert(1300.0, "cam-0000", L[1], 1000.0)
    alert(1200.0, "cam-0001", L[1], 1000.0)
    alert(4900.0, "cam-0000", L[1], 4000.0)
    alert(5000.0, "cam-0001", L[1], 1000.0)  # about I1, arriving during I4
    alert(160.0, "cam-0000", L[5], 100.0, "congestion")  # one congestion event seen by two cameras: 60 s
    alert(220.0, "cam-0001", L[5], 100.0, "congestion")
    alert(800.0, "cam-0000", L[6], 500.0, "congestion")  # 300 s
    out = kpis_of(led, duration_s=7200.0)

    inc = incident_detections(led.table(), 7200.0)
    assert inc["time_s"].tolist() == [200.0, 600.0, 4200.0, 900.0]
    assert inc["detected"].tolist() == [True, False, False, True]
    assert value(out, "incidents_detected") == 50.0
    assert value(out, "incident_detection_p50") == 15.0
    assert value(out, "incident_detection_p90") is None
    assert value(out, "camera_incident_coverage") == 75.0
    t, cdf = km_curve(inc["time_s"], inc["detected"])
    assert t.tolist() == [200.0, 900.0] and cdf.tolist() == pytest.approx([0.25, 0.625])

    assert value(out, "congestion_events_detected") == 2
    assert value(out, "congestion_detection_p50") == 1.0
    assert value(out, "congestion_detection_p90") == 5.0
    causes = {r["cause"]: r for r in out["tables"]["camera_alerts"]}
    assert (causes["incident"]["alerts"], causes["incident"]["events"]) == (4, 2)
    assert (causes["congestion"]["alerts"], causes["congestion"]["events"]) == (3, 2)


def test_flood_warning_lead_times():
    """Gauge wl-0000 at N1 raises at 9000 and 38000; its junction floods at 10000 (lead 1000 s) and 38500
    (lead 500 s). Gauge wl-0001 at N2: its junction floods at 30000; it raised at 5000 (more than 6 h
    before) and at 30100 (after), and another rule fired at 29000: not warned. N3 has no gauge."""
    led = Ledger(None)
    install(led, "wl-0000", "water_level", node=N[1], covers=[N[1]])
    install(led, "wl-0001", "water_level", node=N[2], covers=[N[2]])

    def ioc(t: float, gauge: str, status: str = "raised", rule: str = "flood-gauge-level") -> None:
        led.append("ioc.alert", t, f"urn:ngsi-ld:FloodMonitoring:{gauge}", rule=rule, category="weather",
                   status=status, value=0.12)

    ioc(9000.0, "wl-0000")
    ioc(9500.0, "wl-0000", "cleared")
    ioc(38000.0, "wl-0000")
    ioc(5000.0, "wl-0001")
    ioc(29000.0, "wl-0001", rule="flood-gauge-rise")
    ioc(30100.0, "wl-0001")
    led.append("ioc.alert", 100.0, "urn:ngsi-ld:TrafficFlowObserved:det-0000", rule="traffic-speed",
               category="traffic", status="raised", value=5.0)
    for t, node in ((10000.0, N[1]), (12000.0, N[3]), (30000.0, N[2]), (38500.0, N[1])):
        led.append("flood.start", t, node, depth_m=0.3)
    out = kpis_of(led, duration_s=86400.0)

    floods = flood_warnings(led.table())
    assert floods["node"].tolist() == [N[1], N[2], N[1]]
    assert floods["lead_s"].fillna(-1).tolist() == [1000.0, -1, 500.0]
    assert value(out, "floods_gauged") == 3
    assert value(out, "floods_warned") == pct(2, 3)
    assert value(out, "floods_warned_15min") == pct(1, 3)
    assert value(out, "flood_lead_p50") == round(500 / 60, 2)
    alerts = {r["category"]: r for r in out["tables"]["ioc_alerts"]}
    assert (alerts["weather"]["raised"], alerts["weather"]["cleared"], alerts["weather"]["entities"]) == (5, 1, 2)
    assert alerts["weather"]["rules"] == "flood-gauge-level, flood-gauge-rise"
    assert alerts["traffic"]["raised"] == 1
    assert value(out, "ioc_alerts_raised") == 6


def test_device_faults_table():
    led = Ledger(None)
    install(led, "det-0000", "detector", link=L[0], covers=[L[0]])
    install(led, "air-0000", "air", interval=900.0, node=N[0], covers=[N[0]])
    led.append("device.fault", 100.0, "det-0000", device_type="detector", fleet="det", cause="dropout",
               duration_s=1200.0)
    led.append("device.fault", 2000.0, "det-0000", device_type="detector", fleet="det", cause="dropout",
               duration_s=600.0)
    led.append("device.fault", 300.0, "air-0000", device_type="air", fleet="air", cause="battery",
               duration_s=float("nan"))
    faults = kpis_of(led)["tables"]["faults"]
    assert faults == [
        {"device_type": "detector", "cause": "dropout", "faults": 2, "devices": 1, "mean_duration_min": 15.0,
         "for_good": 0},
        {"device_type": "air", "cause": "battery", "faults": 1, "devices": 1, "mean_duration_min": None,
         "for_good": 1},
    ]


def test_camera_duplicates_are_repeats_of_one_alert():
    """A camera reports each event it recognises, several in one evaluation: two violations on one link at
    one evaluation are two messages; the same alert delivered twice is one message and a duplicate. Every
    delivered alert is a reading and a `camera.alert` row at the same time, as the network writes them."""
    led = Ledger(None)
    install(led, "cam-0000", "camera", interval=60.0, node=N[0], covers=[L[0]])

    def alert(t: float, truth_t: float) -> None:
        reading(led, t, "cam-0000", "camera", 120.0, link=L[0], node=N[0], value=float("nan"))
        led.append("camera.alert", t, "cam-0000", fleet="cam", cause="violation", link=L[0], node=N[0],
                   truth_t=truth_t, observed_t=120.0)

    alert(130.0, 95.0)
    alert(131.0, 110.0)  # another violation seen in the same evaluation
    alert(131.0, 95.0)  # the first one again
    cam = row(kpis_of(led), "camera")
    assert (cam["messages"], cam["duplicate"], cam["completeness"]) == (3, pct(1, 3), None)

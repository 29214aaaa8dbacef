"""Whole runs with a device fleet on a small synthetic district: what the devices deliver reaches the IOC in
memory and its rules raise alerts, the KPIs agree with the ledger, the same seed gives the same ledger,
and the fleet feeds the reference IOC over a real MQTT broker."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from citytwin.twin.cli import main
from citytwin.twin.ledger import events, read_ledger
from citytwin.twin.run import run_scenario
from citytwin.twin.scenario.loader import load_scenario

from conftest import mqtt_address

# Six hours from 06:00: a downpour at 07:00 floods the lowest junctions, incidents on the roads, and one
# fleet of each kind; detectors with every delivery fault.
TYPHOON = """\
name: devices-typhoon
seed: 7
start: "06:00"
duration: 6h
city: {network: {source: synthetic, width_m: 2000, height_m: 1500}}
demand: {kind: od, trips_per_day: 60000}
traffic: {chunk: 5min, snapshot: 5min}
hazards:
  incidents: {rate_per_lane_km_day: 0.3}
  rain:
    episodes_per_day: 0
    low_node_share: 0.1
    drainage_mm_h: 20
    episodes: [{start: "07:00", duration: 3h, intensity_mm_h: 80}]
devices:
  freshness: 10min
  fleets:
    - {type: camera, name: cam, interval: 1min, placement: {budget: 15, strategy: max_coverage},
       detect: {incident: 0.5, congestion: 0.4, violation: 0.3, flood: 0.5}}
    - {type: detector, name: det, interval: 5min, placement: {budget: 12, strategy: major_roads},
       faults: {dropout: 0.05, duplicate: 0.1, late: 0.1, stuck: 0.05}}
    - {type: water_level, name: wl, interval: 5min, placement: {budget: 10, strategy: hotspots}}
    - {type: rain_gauge, name: rain, interval: 5min, placement: {budget: 2, strategy: random}}
    - {type: air, name: air, interval: 15min, placement: {budget: 3, strategy: max_coverage}}
    - {type: noise, name: noise, interval: 5min, placement: {budget: 3, strategy: random}}
    - {type: bus, name: bus, interval: 30s, routes: 2, headway: 20min}
"""


def _scenario(tmp_path, text: str, name: str = "typhoon.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_scenario(path)


@pytest.fixture(scope="module")
def typhoon_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("typhoon")
    result = run_scenario(_scenario(tmp, TYPHOON), tmp / "out", write_report=True)
    return result, read_ledger(result.ledger_path)


def test_every_fleet_is_installed_and_delivers(typhoon_run):
    _, ledger = typhoon_run
    installed = events(ledger, "device.installed")
    readings = events(ledger, "device.reading")
    assert set(installed.device_type) >= {"camera", "detector", "water_level", "rain_gauge", "air", "noise", "bus"}
    assert set(readings.device_type) >= {"detector", "water_level", "rain_gauge", "air", "noise", "bus"}
    # what arrives was sampled before it arrived (devices have no clock skew here)
    assert (readings.t >= readings.observed_t).all()
    # the detectors' faults show: duplicates and late arrivals are in the record
    det = readings[readings.fleet == "det"]
    assert {"duplicate", "late"} <= set(det.fault)


def test_gauges_raise_flood_alerts_before_junctions_flood(typhoon_run):
    result, ledger = typhoon_run
    alerts = events(ledger, "ioc.alert")
    floods = events(ledger, "flood.start")
    assert len(floods) > 0
    gauge_alerts = alerts[alerts.rule == "flood-gauge-level"]
    assert (gauge_alerts.status == "raised").any()
    kpis = result.kpis["devices"]["kpis"]
    lead = next(v for k, v in kpis.items() if "lead" in k and "p50" in k)
    assert lead["value"] is not None and lead["value"] > 0


def test_cameras_recognise_incidents(typhoon_run):
    result, ledger = typhoon_run
    alerts = events(ledger, "camera.alert")
    incidents = events(ledger, "incident.start")
    assert len(incidents) > 0 and len(alerts) > 0
    # an alert about an incident comes after the incident began, at a camera that has its link in view
    installed = events(ledger, "device.installed").set_index("subject")
    about = alerts[alerts.cause == "incident"]
    assert (about.t >= about.truth_t).all()
    for row in about.itertuples():
        assert row.link in installed.loc[row.subject, "covers"].split()
    # the camera-event rule of the IOC raised an alert for each delivered camera alert
    ioc = events(ledger, "ioc.alert")
    assert (ioc.rule == "camera-event").sum() >= len(alerts)


def test_kpis_name_their_indicators_and_the_report_shows_them(typhoon_run):
    result, _ = typhoon_run
    kpis = result.kpis["devices"]["kpis"]
    indicators = {v.get("indicator") for v in kpis.values()}
    assert {"L2.N2.PN2.01", "L2.N1.PN2.01", "L2.N3.PN1.03", "L2.N3.PN1.04"} <= indicators
    for item in kpis.values():
        if item.get("indicator") and item["value"] is not None:
            assert 0.0 <= item["value"] <= 100.0
    html = result.report_path.read_text(encoding="utf-8")
    assert "Devices" in html and "L2.N2.PN2.01" in html


def test_same_seed_same_ledger(tmp_path):
    short = TYPHOON.replace("duration: 6h", "duration: 2h")
    digests = []
    for k in range(2):
        result = run_scenario(_scenario(tmp_path, short), tmp_path / f"out{k}", write_report=False)
        digests.append(hashlib.sha256(result.ledger_path.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_a_device_on_a_missing_link_is_bad_input(tmp_path, capsys):
    bad = TYPHOON.replace("placement: {budget: 12, strategy: major_roads}", "placement: {links: [no-such-link]}")
    path = tmp_path / "bad.yaml"
    path.write_text(bad, encoding="utf-8")
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "devices.fleets[1].placement.links[0]" in err and "no-such-link" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_the_fleet_feeds_the_reference_ioc_over_mqtt(tmp_path, broker):
    url = "embedded"
    if broker == "mosquitto":
        host, port = mqtt_address()
        url = f"mqtt://{host}:{port}"
    text = (TYPHOON.replace("duration: 6h", "duration: 3h")
            .replace("  freshness: 10min\n", f"  freshness: 10min\n  transport: mqtt\n  mqtt_url: {url}\n"))
    result = run_scenario(_scenario(tmp_path, text), tmp_path / "out", write_report=False)
    ledger = read_ledger(result.ledger_path)
    readings = events(ledger, "device.reading")
    alerts = events(ledger, "ioc.alert")
    assert len(readings) > 0
    assert (alerts.rule == "flood-gauge-level").any()
    assert (alerts.rule == "camera-event").any()
    assert np.isfinite(readings.t).all()


def test_the_fleet_feeds_a_reference_ioc_server_over_http(tmp_path, monkeypatch):
    """`transport: http`: NGSI-LD batch upserts to `citytwin ioc serve`, whose flood rules raise the alert."""
    import httpx

    from citytwin.ioc.server.process import ServerProcess, provision_key

    db_url = f"sqlite:///{tmp_path}/ioc.db"
    operator = provision_key(db_url, "operator", rate_per_s=1e6)
    monkeypatch.setenv("CITYTWIN_IOC_KEY", operator)
    with ServerProcess(db_url, tmp_path / "server.log") as server:
        text = (TYPHOON.replace("duration: 6h", "duration: 3h")
                .replace("  freshness: 10min\n", f"  freshness: 10min\n  transport: http\n  http_url: {server.url}\n"))
        result = run_scenario(_scenario(tmp_path, text), tmp_path / "out", write_report=False)
        installed = events(read_ledger(result.ledger_path), "device.installed")
        gauge = installed[installed.device_type == "water_level"].subject.iloc[0]
        entity = httpx.get(f"{server.url}/ngsi-ld/v1/entities/urn:ngsi-ld:FloodMonitoring:{gauge}",
                           headers={"X-API-Key": operator}, timeout=5.0)
        assert entity.status_code == 200
        alerts = httpx.get(f"{server.url}/operator/v1/alerts", headers={"X-API-Key": operator}, timeout=5.0)
    assert alerts.status_code == 200
    assert any(a["rule_id"] == "flood-gauge-level" for a in alerts.json())

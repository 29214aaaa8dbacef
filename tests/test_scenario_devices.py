"""The scenario's devices section: what it accepts, its defaults, and bad input as `file: field.path: message`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from citytwin.twin.cli import main
from citytwin.twin.errors import UserInputError
from citytwin.twin.scenario import load_scenario
from citytwin.twin.scenario.schema import (
    DEVICE_TYPES, AirFleet, BusFleet, BusRoute, CameraFleet, DetectorFleet, DevicesSpec, FaultSpec, NoiseFleet,
    Placement, RainGaugeFleet, WaterLevelFleet)

BASE = "name: devices\nduration: 1h\ndemand: {kind: od, trips_per_day: 0}\n"
TYPES = "detector, camera, air, noise, water_level, rain_gauge, bus"


def _write(tmp_path: Path, devices: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(BASE + "devices:\n" + textwrap.indent(textwrap.dedent(devices), "  "), encoding="utf-8")
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(UserInputError) as err:
        load_scenario(path)
    return err.value.problems


def test_a_full_devices_section_loads_with_units_and_defaults(tmp_path):
    path = _write(tmp_path, """\
        transport: mqtt
        mqtt_url: mqtt://127.0.0.1:1883
        qos: 0
        freshness: 10min
        fleets:
          - {type: detector, name: loops, placement: {links: [g0_0-h0_0]}, faults: {dropout: 0.01, late: 0.02}}
          - type: camera
            name: cams
            interval: 30s
            range_m: 200
            detect: {incident: 0.9}
            placement: {budget: 300, strategy: max_coverage}
          - {type: air, name: air, placement: {budget: 10, strategy: hotspots}}
          - {type: noise, name: noise, placement: {nodes: [g0_0, g1_0]}}
          - {type: water_level, name: gauges, warning_level_m: 0.15, placement: {budget: 5}}
          - {type: rain_gauge, name: rain, interval: 15min, placement: {budget: 2, strategy: random}}
          - type: bus
            name: bus
            headway: 12min
            service: {start: "06:00", end: "22:00"}
            routes: [{name: "01", via: [g0_0, g5_3]}]
        """)
    devices = load_scenario(path).devices
    assert devices.transport == "mqtt" and devices.qos == 0 and devices.freshness == 600.0
    assert [f.type for f in devices.fleets] == ["detector", "camera", "air", "noise", "water_level", "rain_gauge", "bus"]
    loops, cams, air, noise, gauges, rain, bus = devices.fleets
    assert loops.placement.links == ["g0_0-h0_0"] and loops.faults.dropout == 0.01 and loops.interval == 300.0
    assert cams.interval == 30.0 and cams.range_m == 200.0 and cams.placement.budget == 300
    assert cams.detect.incident == 0.9 and cams.detect.congestion == 0.4  # the others keep their defaults
    assert air.placement.strategy == "hotspots" and air.interval == 900.0
    assert noise.placement.nodes == ["g0_0", "g1_0"] and noise.placement.strategy == "max_coverage"
    assert gauges.warning_level_m == 0.15 and rain.interval == 900.0
    assert bus.headway == 720.0 and bus.service.start == 6 * 3600.0 and bus.service.end == 22 * 3600.0
    assert bus.routes == [BusRoute(name="01", via=["g0_0", "g5_3"])]


def test_defaults_are_the_contracts():
    assert DevicesSpec() == DevicesSpec(fleets=[], transport="inprocess", mqtt_url="embedded", http_url=None, qos=1,
                                        freshness=600.0)
    budget = Placement(budget=3)
    intervals = {cls: cls(name="x", placement=budget).interval
                 for cls in (DetectorFleet, CameraFleet, AirFleet, NoiseFleet, WaterLevelFleet, RainGaugeFleet)}
    assert intervals == {DetectorFleet: 300.0, CameraFleet: 60.0, AirFleet: 900.0, NoiseFleet: 300.0,
                         WaterLevelFleet: 300.0, RainGaugeFleet: 300.0}
    bus = BusFleet(name="bus")
    assert (bus.interval, bus.routes, bus.headway, bus.dwell, bus.stop_spacing_m) == (30.0, 4, 900.0, 20.0, 400.0)
    assert (bus.service.start, bus.service.end) == (5.5 * 3600, 21 * 3600)
    assert "placement" not in BusFleet.model_fields
    faults = FaultSpec()
    assert faults.battery_life == 5 * 86400.0 and faults.network_delay == 1.0 and faults.dropout == 0.0
    assert Placement(budget=3).strategy == "max_coverage"
    assert DEVICE_TYPES == tuple(TYPES.split(", "))


def test_a_scenario_without_devices_has_none(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(BASE, encoding="utf-8")
    assert load_scenario(path).devices is None


def test_an_unknown_device_type_lists_the_known_ones(tmp_path):
    path = _write(tmp_path, "fleets: [{type: lidar, name: x, placement: {budget: 1}}]\n")
    assert _problems(path) == [f"{path}: devices.fleets[0].type: expected one of {TYPES}; got 'lidar'"]


def test_a_fleet_without_a_type_lists_the_known_ones(tmp_path):
    path = _write(tmp_path, "fleets: [{name: x, placement: {budget: 1}}]\n")
    assert _problems(path) == [f"{path}: devices.fleets[0].type: required; expected one of {TYPES}"]


@pytest.mark.parametrize("devices, where, expected", [
    ("fleets: [{type: detector, name: d, placement: {budget: 5}, faults: {dropout: 1.5}}]",
     "devices.fleets[0].faults.dropout", "less than or equal to 1; got 1.5"),
    ("fleets: [{type: camera, name: c, placement: {budget: 5}, faults: {late: -0.1}}]",
     "devices.fleets[0].faults.late", "greater than or equal to 0"),
    ("fleets: [{type: detector, name: d, interval: 0, placement: {budget: 5}}]",
     "devices.fleets[0].interval", "greater than 0; got 0"),
    ("fleets: [{type: air, name: a, interval: 0s, placement: {budget: 5}}]",
     "devices.fleets[0].interval", "greater than 0"),
    ("fleets: [{type: bus, name: b, interval: -5min}]",
     "devices.fleets[0].interval", "not a negative one"),
    ("fleets: [{type: air, name: a, placement: {budget: 1}}, {type: noise, name: a, placement: {budget: 1}}]",
     "devices.fleets[1].name", "expected unique fleet names (they prefix the device ids); got 'a' again"),
    ("transport: http", "devices.http_url", "required when transport is http"),
    ("{transport: http, http_url: 'ftp://x'}", "devices.http_url", "expected an http:// or https:// base URL"),
    ("mqtt_url: 'tcp://127.0.0.1:1883'", "devices.mqtt_url", "expected 'embedded' or mqtt://host:port"),
    ("mqtt_url: 'mqtt://127.0.0.1'", "devices.mqtt_url", "expected 'embedded' or mqtt://host:port"),
    ("mqtt_url: 'mqtt://127.0.0.1:99999'", "devices.mqtt_url", "expected 'embedded' or mqtt://host:port"),
    ("transport: amqp", "devices.transport", "expected one of inprocess, mqtt, http; got 'amqp'"),
    ("qos: 2", "devices.qos", "expected one of 0, 1; got 2"),
    ("fleets: [{type: bus, name: b, placement: {budget: 3}}]", "devices.fleets[0].placement", "unknown key"),
    ("fleets: [{type: bus, name: b, routes: 201}]", "devices.fleets[0].routes", "less than or equal to 200"),
    ("fleets: [{type: bus, name: b, routes: [{name: r, via: [g0_0]}]}]",
     "devices.fleets[0].routes[0].via", "expected at least 2 junction ids"),
    ("fleets: [{type: bus, name: b, routes: [{name: r, via: [a, b]}, {name: r, via: [b, a]}]}]",
     "devices.fleets[0].routes[1].name", "expected unique route names; got 'r' again"),
    ("fleets: [{type: bus, name: b, service: {start: '05:30', end: '25:00'}}]",
     "devices.fleets[0].service.end", "expected a clock time HH:MM"),
    ("fleets: [{type: detector, name: d, placement: {nodes: [g0_0]}}]",
     "devices.fleets[0].placement.nodes", "expected links (link ids) for a detector; got nodes"),
    ("fleets: [{type: water_level, name: w, placement: {links: [g0_0-h0_0]}}]",
     "devices.fleets[0].placement.links", "expected nodes (junction ids) for a water level; got links"),
    ("fleets: [{type: camera, name: c, placement: {budget: 3, nodes: [g0_0]}}]",
     "devices.fleets[0].placement", "expected exactly one of nodes, links or budget; got nodes and budget"),
    ("fleets: [{type: camera, name: c, placement: {strategy: random}}]",
     "devices.fleets[0].placement", "expected exactly one of nodes, links or budget; got none"),
    ("fleets: [{type: camera, name: c, placement: {budget: -1}}]",
     "devices.fleets[0].placement.budget", "greater than or equal to 0"),
    ("fleets: [{type: camera, name: c, placement: {budget: 3, strategy: best}}]",
     "devices.fleets[0].placement.strategy", "expected one of random, major_roads, max_coverage, hotspots"),
    ("fleets: [{type: camera, name: c, placement: {nodes: [g0_0, g1_0, g0_0]}}]",
     "devices.fleets[0].placement.nodes[2]", "expected each node once; got 'g0_0' again (also at [0])"),
    ("fleets: [{type: camera, name: c, range_m: 0, placement: {budget: 3}}]",
     "devices.fleets[0].range_m", "greater than 0"),
    ("fleets: [{type: camera, name: c, detect: {flood: 2}, placement: {budget: 3}}]",
     "devices.fleets[0].detect.flood", "less than or equal to 1"),
    ("fleets: [{type: camera, name: 'my cams', placement: {budget: 3}}]",
     "devices.fleets[0].name", "expected 1 to 40 letters, digits, '_' or '-'"),
    ("fleets: [{type: noise, name: n, colour: red, placement: {budget: 3}}]",
     "devices.fleets[0].colour", "unknown key"),
    ("fleets: [{type: air, name: a, placement: {budget: 3}, faults: {drift_per_day: 2}}]",
     "devices.fleets[0].faults.drift_per_day", "less than or equal to 1"),
    ("fleets: [{type: air, name: a, placement: {budget: 3}, faults: {battery_life: 0}}]",
     "devices.fleets[0].faults.battery_life", "greater than 0"),
])
def test_bad_devices_input_exits_2_with_the_field_path(tmp_path, capsys, devices, where, expected):
    path = _write(tmp_path, devices + "\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {where}: " in err and expected in err, err
    assert "Traceback" not in err


def test_every_bad_fleet_is_reported_with_its_own_index(tmp_path):
    path = _write(tmp_path, """\
        fleets:
          - {type: detector, name: d, interval: 0, placement: {budget: 1}}
          - {type: camera, name: c, placement: {budget: 1}}
          - {type: air, name: a, placement: {budget: 1}, faults: {dropout: 1.5, stuck: 2}}
        """)
    found = _problems(path)
    assert [line.split(": ")[1] for line in found] == [
        "devices.fleets[0].interval", "devices.fleets[2].faults.dropout", "devices.fleets[2].faults.stuck"]


def test_valid_urls_are_accepted():
    assert DevicesSpec(transport="mqtt", mqtt_url="mqtt://broker.example.org:8883").mqtt_url.endswith(":8883")
    assert DevicesSpec(transport="http", http_url="https://orion.example.org:1026/").http_url
    assert DevicesSpec(transport="http", http_url="http://127.0.0.1:1026").transport == "http"


def test_fleets_build_from_python_without_naming_their_type():
    cams = CameraFleet(name="cams", placement=Placement(budget=300))
    assert cams.type == "camera" and DevicesSpec(fleets=[cams]).fleets[0] is not None
    with pytest.raises(ValidationError):
        DetectorFleet(name="d", placement=Placement(nodes=["a"]))


@settings(max_examples=60, deadline=None)
@given(rate=st.floats(allow_nan=False, allow_infinity=False, min_value=-10, max_value=10),
       field=st.sampled_from(["dropout", "stuck", "drift", "burst", "duplicate", "late", "battery"]))
def test_fault_rates_are_shares(rate, field):
    if 0.0 <= rate <= 1.0:
        assert getattr(FaultSpec(**{field: rate}), field) == rate
    else:
        with pytest.raises(ValidationError) as err:
            FaultSpec(**{field: rate})
        assert err.value.errors()[0]["loc"] == (field,)

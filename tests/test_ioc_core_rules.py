"""The IOC core's rules and alerts: thresholds with hysteresis, rate of change, missing data, camera
events, the alert lifecycle."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citytwin.ioc.core import (
    DEFAULT_RULES,
    IOC,
    AlertStatus,
    CameraEventRule,
    Conflict,
    MemoryStore,
    MissingDataRule,
    NotFound,
    RateRule,
    ThresholdRule,
)
from citytwin.ioc.core.ldcontext import DISPLAY, NGSI_LD

T0 = datetime(2024, 10, 14, 7, 30, tzinfo=timezone.utc)
X = DISPLAY.expand
LEVEL = X("waterLevel")
FLOOD = X("FloodMonitoring")
SPEED = X("averageVehicleSpeed")
LOCATION = NGSI_LD + "location"
SENSOR = "urn:ngsi-ld:FloodMonitoring:f1"


def rules_by_id(*ids):
    wanted = [rule for rule in DEFAULT_RULES if rule.rule_id in ids]
    assert len(wanted) == len(ids)
    return wanted


def flood(level: float, at: datetime, entity_id: str = SENSOR) -> dict:
    return {"id": entity_id, "type": FLOOD,
            LEVEL: {"type": "Property", "value": level, "observedAt": at.isoformat()},
            LOCATION: {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [108.21, 16.06]}}}


def active(ioc: IOC, rule_id: str | None = None):
    return [a for a in ioc.alerts((AlertStatus.RAISED, AlertStatus.ACKNOWLEDGED))
            if rule_id is None or a.rule_id == rule_id]


def test_threshold_raises_once_and_clears_only_below_the_clear_level():
    ioc = IOC(MemoryStore(), rules=rules_by_id("flood-water-level"))
    levels = [0.10, 0.31, 0.40, 0.25, 0.29, 0.35, 0.21, 0.19, 0.25, 0.32]
    raised_after = []
    for minute, level in enumerate(levels):
        ioc.upsert([flood(level, T0 + timedelta(minutes=minute))], T0 + timedelta(minutes=minute))
        raised_after.append(len(active(ioc)))
    assert raised_after == [0, 1, 1, 1, 1, 1, 1, 0, 0, 1]
    alerts = ioc.alerts()
    assert len(alerts) == 2
    second, first = alerts  # newest first
    assert first.status == AlertStatus.CLEARED and first.actor == "rule"
    assert first.raised_at == T0 + timedelta(minutes=1) and first.cleared_at == T0 + timedelta(minutes=7)
    assert (first.value, first.attribute, first.severity, first.category, first.kind) == (
        0.31, LEVEL, "high", "weather", "threshold")
    assert (first.lon, first.lat) == (108.21, 16.06)
    assert first.entity_type == FLOOD and first.entity_id == SENSOR
    assert second.status == AlertStatus.RAISED and second.value == 0.32


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.2, 0.3), min_size=1, max_size=30))
def test_no_flapping_between_the_clear_and_raise_levels(levels):
    ioc = IOC(MemoryStore(), rules=rules_by_id("flood-water-level"))
    ioc.upsert([flood(0.5, T0)], T0)
    for minute, level in enumerate(levels, start=1):
        ioc.upsert([flood(level, T0 + timedelta(minutes=minute))], T0 + timedelta(minutes=minute))
    assert len(ioc.alerts()) == 1 and len(active(ioc)) == 1


def test_threshold_below_for_traffic_speed():
    ioc = IOC(MemoryStore(), rules=rules_by_id("traffic-speed"))
    link = "urn:ngsi-ld:TrafficFlowObserved:l1"

    def speed(value, minute):
        now = T0 + timedelta(minutes=minute)
        return ioc.upsert([{"id": link, "type": X("TrafficFlowObserved"),
                            SPEED: {"type": "Property", "value": value}}], now)

    assert speed(30, 0).alerts == []
    [alert] = speed(8, 1).alerts
    assert alert.status == AlertStatus.RAISED and alert.category == "traffic" and alert.lon is None
    assert speed(12, 2).alerts == [] and speed(9, 3).alerts == []
    [cleared] = speed(16, 4).alerts
    assert cleared.id == alert.id and cleared.status == AlertStatus.CLEARED
    assert speed("fast", 5).alerts == []  # not a number: no opinion


def test_rate_rule_needs_a_fast_rise_and_clears_when_the_level_stops_rising():
    ioc = IOC(MemoryStore(), rules=rules_by_id("flood-rise-rate"))
    ioc.upsert([flood(0.10, T0)], T0)
    assert ioc.upsert([flood(0.14, T0 + timedelta(minutes=1))], T0).alerts == []  # 0.04 m/min
    [raised] = ioc.upsert([flood(0.30, T0 + timedelta(minutes=3))], T0).alerts  # 0.08 m/min
    assert raised.kind == "rate" and raised.status == AlertStatus.RAISED
    # The same reading again (a retry) says nothing about the trend.
    assert ioc.upsert([flood(0.30, T0 + timedelta(minutes=3))], T0).alerts == []
    assert ioc.upsert([flood(0.33, T0 + timedelta(minutes=4))], T0).alerts == []  # still rising, slower
    [cleared] = ioc.upsert([flood(0.33, T0 + timedelta(minutes=5))], T0 + timedelta(minutes=5)).alerts
    assert cleared.id == raised.id and cleared.status == AlertStatus.CLEARED
    assert cleared.cleared_at == T0 + timedelta(minutes=5)


def test_missing_data_raised_in_tick_and_cleared_when_data_arrives():
    ioc = IOC(MemoryStore(), rules=rules_by_id("missing-FloodMonitoring"))
    ioc.upsert([flood(0.1, T0), flood(0.1, T0, "urn:ngsi-ld:FloodMonitoring:f2")], T0)
    ioc.upsert([flood(0.1, T0 + timedelta(minutes=20), "urn:ngsi-ld:FloodMonitoring:f2")], T0 + timedelta(minutes=20))
    assert ioc.tick(T0 + timedelta(minutes=30)) == []  # exactly max_age: not yet
    [alert] = ioc.tick(T0 + timedelta(minutes=31))
    assert (alert.entity_id, alert.kind, alert.status) == (SENSOR, "missing", AlertStatus.RAISED)
    assert (alert.lon, alert.lat) == (108.21, 16.06)
    assert ioc.tick(T0 + timedelta(minutes=40)) == []  # not raised twice
    result = ioc.upsert([flood(0.1, T0 + timedelta(minutes=45))], T0 + timedelta(minutes=45))
    [cleared] = result.alerts
    assert cleared.id == alert.id and cleared.status == AlertStatus.CLEARED and cleared.actor == "rule"
    [other] = ioc.tick(T0 + timedelta(minutes=51))
    assert other.entity_id == "urn:ngsi-ld:FloodMonitoring:f2"


def camera_alert(entity_id: str, issued: datetime, severity="high", sub="trafficJam", **extra) -> dict:
    def p(value):
        return {"type": "Property", "value": value}

    return {"id": entity_id, "type": X("Alert"), X("category"): p("traffic"), X("subCategory"): p(sub),
            X("severity"): p(severity), X("dateIssued"): p(issued.isoformat()),
            LOCATION: {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [108.22, 16.07]}}, **extra}


def test_camera_events_raise_per_event_and_clear_themselves():
    ioc = IOC(MemoryStore(), rules=rules_by_id("camera-event"))
    cam = "urn:ngsi-ld:Alert:cam-01"
    [first] = ioc.upsert([camera_alert(cam, T0)], T0).alerts
    assert (first.kind, first.severity, first.category, first.value) == ("camera", "high", "traffic", "trafficJam")
    assert (first.lon, first.lat) == (108.22, 16.07)
    assert ioc.upsert([camera_alert(cam, T0)], T0 + timedelta(minutes=1)).alerts == []  # same event again
    later = T0 + timedelta(minutes=10)
    [second] = ioc.upsert([camera_alert(cam, later, severity="nonsense", sub="fight")], later).alerts
    assert second.severity == "medium" and second.value == "fight"  # the rule's default severity
    assert ioc.tick(T0 + timedelta(minutes=29)) == []
    [expired] = ioc.tick(T0 + timedelta(minutes=30))
    assert expired.id == first.id and expired.status == AlertStatus.CLEARED and expired.actor == "rule"
    ioc.acknowledge_alert(second.id, "op", T0 + timedelta(minutes=35))
    [expired] = ioc.tick(T0 + timedelta(minutes=45))  # acknowledged ones clear themselves too
    assert expired.id == second.id and expired.acknowledged_at == T0 + timedelta(minutes=35)
    assert active(ioc) == []


def test_alert_lifecycle_and_conflicts():
    ioc = IOC(MemoryStore(), rules=rules_by_id("flood-water-level"))
    [alert] = ioc.upsert([flood(0.5, T0)], T0).alerts
    acked = ioc.acknowledge_alert(alert.id, "op-an", T0 + timedelta(minutes=1))
    assert acked.status == AlertStatus.ACKNOWLEDGED and acked.actor == "op-an"
    assert acked.acknowledged_at == T0 + timedelta(minutes=1)
    # Acknowledged is still active: the rule does not raise a second one.
    assert ioc.upsert([flood(0.6, T0 + timedelta(minutes=2))], T0).alerts == []
    done = ioc.clear_alert(alert.id, "op-an", T0 + timedelta(minutes=3))
    assert done.status == AlertStatus.CLEARED and done.cleared_at == T0 + timedelta(minutes=3)
    with pytest.raises(Conflict):
        ioc.clear_alert(alert.id, "op-an", T0)
    with pytest.raises(Conflict):
        ioc.acknowledge_alert(alert.id, "op-an", T0)
    with pytest.raises(NotFound):
        ioc.clear_alert(999, "op", T0)
    assert ioc.alerts((AlertStatus.CLEARED,))[0].id == alert.id
    # Cleared by hand while still high: the next high reading raises again.
    [again] = ioc.upsert([flood(0.6, T0 + timedelta(minutes=4))], T0).alerts
    assert again.id != alert.id


def test_deleting_an_entity_clears_its_alerts():
    ioc = IOC(MemoryStore(), rules=rules_by_id("flood-water-level"))
    [alert] = ioc.upsert([flood(0.5, T0)], T0).alerts
    ioc.delete_entity(SENSOR, now=T0 + timedelta(minutes=1))
    assert active(ioc) == [] and ioc.alerts()[0].cleared_at == T0 + timedelta(minutes=1)


def test_a_batch_writing_one_entity_twice_is_judged_reading_by_reading():
    ioc = IOC(MemoryStore(), rules=rules_by_id("flood-water-level"))
    result = ioc.upsert([flood(0.5, T0), flood(0.1, T0 + timedelta(minutes=1))], T0)
    [alert] = result.alerts
    assert alert.status == AlertStatus.CLEARED and alert.id is not None
    assert active(ioc) == [] and len(ioc.alerts()) == 1
    assert ioc.get_entity(SENSOR).attrs[LEVEL]["value"] == 0.1


def test_default_rules_cover_the_pilot_limits():
    by_id = {rule.rule_id: rule for rule in DEFAULT_RULES}
    assert (by_id["flood-water-level"].raise_above, by_id["flood-water-level"].clear_below) == (0.30, 0.20)
    assert (by_id["air-pm25"].raise_above, by_id["air-pm25"].clear_below) == (50.0, 40.0)
    assert (by_id["noise-laeq"].raise_above, by_id["noise-laeq"].clear_below) == (70.0, 65.0)
    assert (by_id["traffic-speed"].raise_below, by_id["traffic-speed"].clear_above) == (10.0, 15.0)
    assert by_id["flood-rise-rate"].max_per_min == 0.05
    missing = {rule.entity_type: rule.max_age for rule in DEFAULT_RULES if isinstance(rule, MissingDataRule)}
    assert missing == {X("TrafficFlowObserved"): timedelta(minutes=15), X("AirQualityObserved"): timedelta(hours=2),
                       X("NoiseLevelObserved"): timedelta(hours=1), FLOOD: timedelta(minutes=30),
                       X("Vehicle"): timedelta(minutes=10)}
    [camera] = [rule for rule in DEFAULT_RULES if isinstance(rule, CameraEventRule)]
    assert camera.entity_type == X("Alert") and camera.auto_clear_after == timedelta(minutes=30)


def test_default_rules_on_air_and_noise():
    ioc = IOC(MemoryStore())
    station = "urn:ngsi-ld:AirQualityObserved:aq1"

    def reading(pm25, laeq, minute):
        now = T0 + timedelta(minutes=minute)
        return ioc.upsert([{"id": station, "type": X("AirQualityObserved"),
                            X("pm25"): {"type": "Property", "value": pm25},
                            X("LAeq"): {"type": "Property", "value": laeq}}], now).alerts

    assert reading(35, 60, 0) == []
    assert sorted(a.rule_id for a in reading(55, 72, 1)) == ["air-pm25", "noise-laeq"]
    assert reading(45, 68, 2) == []
    assert sorted((a.rule_id, a.status) for a in reading(39, 64, 3)) == [
        ("air-pm25", AlertStatus.CLEARED), ("noise-laeq", AlertStatus.CLEARED)]


@pytest.mark.parametrize("make", [
    lambda: ThresholdRule("r", "a"),
    lambda: ThresholdRule("r", "a", raise_above=1, raise_below=0),
    lambda: ThresholdRule("r", "a", raise_above=1, clear_below=2),
    lambda: ThresholdRule("r", "a", raise_below=1, clear_above=0),
    lambda: ThresholdRule("r", "a", raise_above=1, severity="dire"),
    lambda: RateRule("r", "a", max_per_min=1, clear_per_min=2),
    lambda: MissingDataRule("r", "T", timedelta(0)),
    lambda: IOC(MemoryStore(), rules=[ThresholdRule("r", "a", raise_above=1), ThresholdRule("r", "b", raise_above=1)]),
])
def test_rule_definitions_are_checked(make):
    with pytest.raises(ValueError):
        make()


# -- street flood gauges (FloodMonitoring.currentLevel, what the twin's water-level devices report) ------------
CURRENT = X("currentLevel")
GAUGE = "urn:ngsi-ld:FloodMonitoring:wl-0001"


def gauge(level: float, at: datetime, entity_id: str = GAUGE, entity_type: str = FLOOD) -> dict:
    return {"id": entity_id, "type": entity_type,
            CURRENT: {"type": "Property", "value": level, "observedAt": at.isoformat()},
            LOCATION: {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [108.2, 16.05]}}}


def test_flood_gauge_level_raises_above_10_cm_and_clears_below_5_cm():
    ioc = IOC(MemoryStore(), rules=rules_by_id("flood-gauge-level"))
    levels = [0.0, 0.04, 0.10, 0.11, 0.30, 0.06, 0.09, 0.12, 0.049, 0.02, 0.101]
    changes = []
    for step, level in enumerate(levels):
        at = T0 + timedelta(minutes=5 * step)
        changes.append([(a.status, a.value) for a in ioc.upsert([gauge(level, at)], at).alerts])
    assert changes == [[], [], [], [(AlertStatus.RAISED, 0.11)], [], [], [], [], [(AlertStatus.CLEARED, 0.11)], [],
                       [(AlertStatus.RAISED, 0.101)]]
    first = ioc.alerts()[-1]
    assert (first.rule_id, first.severity, first.category, first.kind, first.attribute, first.entity_id) == (
        "flood-gauge-level", "high", "weather", "threshold", CURRENT, GAUGE)
    assert first.cleared_at == T0 + timedelta(minutes=40) and (first.lon, first.lat) == (108.2, 16.05)


def test_flood_gauge_rules_are_for_flood_monitoring_only():
    ioc = IOC(MemoryStore(), rules=rules_by_id("flood-gauge-level", "flood-gauge-rise"))
    other = "urn:ngsi-ld:WaterQualityObserved:w1"
    ioc.upsert([gauge(0.0, T0, other, X("WaterQualityObserved"))], T0)
    assert ioc.upsert([gauge(0.5, T0 + timedelta(minutes=1), other, X("WaterQualityObserved"))], T0).alerts == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.05, 0.10), min_size=1, max_size=30))
def test_flood_gauge_level_does_not_flap_between_its_levels(levels):
    ioc = IOC(MemoryStore(), rules=rules_by_id("flood-gauge-level"))
    ioc.upsert([gauge(0.2, T0)], T0)
    for step, level in enumerate(levels, start=1):
        at = T0 + timedelta(minutes=5 * step)
        ioc.upsert([gauge(level, at)], at)
    assert len(ioc.alerts()) == 1 and len(active(ioc)) == 1


def test_flood_gauge_rise_is_a_rate_over_observation_times():
    ioc = IOC(MemoryStore(), rules=rules_by_id("flood-gauge-rise"))
    ioc.upsert([gauge(0.00, T0)], T0)
    # 4 cm in 5 min = 0.008 m/min: under the limit
    assert ioc.upsert([gauge(0.04, T0 + timedelta(minutes=5))], T0).alerts == []
    # 8 cm in 5 min = 0.016 m/min
    [raised] = ioc.upsert([gauge(0.12, T0 + timedelta(minutes=10))], T0).alerts
    assert (raised.rule_id, raised.kind, raised.category, raised.value) == ("flood-gauge-rise", "rate", "weather", 0.12)
    # a late reading from before (out of order) says nothing about the trend
    assert ioc.upsert([gauge(0.05, T0 + timedelta(minutes=7))], T0).alerts == []
    assert ioc.upsert([gauge(0.16, T0 + timedelta(minutes=15))], T0).alerts == []  # still rising
    [cleared] = ioc.upsert([gauge(0.15, T0 + timedelta(minutes=20))], T0 + timedelta(minutes=20)).alerts
    assert cleared.id == raised.id and cleared.status == AlertStatus.CLEARED


def test_default_flood_gauge_limits():
    by_id = {rule.rule_id: rule for rule in DEFAULT_RULES}
    level, rise = by_id["flood-gauge-level"], by_id["flood-gauge-rise"]
    assert (level.attribute, level.entity_type, level.raise_above, level.clear_below) == (CURRENT, FLOOD, 0.10, 0.05)
    assert (level.severity, level.category) == ("high", "weather")
    assert (rise.attribute, rise.entity_type, rise.max_per_min, rise.category) == (CURRENT, FLOOD, 0.01, "weather")

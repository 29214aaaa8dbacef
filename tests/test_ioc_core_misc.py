"""The IOC core's dashboard figures, API keys and subscriptions."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone

import pytest

from citytwin.ioc.core import (
    IOC,
    AlertStatus,
    Invalid,
    MemoryStore,
    NotFound,
    Conflict,
    RequestDraft,
    Role,
    Subscription,
)
from citytwin.ioc.core.ldcontext import DISPLAY, NGSI_LD

T0 = datetime(2024, 10, 14, 7, 30, tzinfo=timezone.utc)
X = DISPLAY.expand
LAT, LON = 16.0544, 108.2022


def test_dashboard_figures_on_a_small_known_scenario():
    ioc = IOC(MemoryStore())
    now = T0 + timedelta(days=2)
    # Two handled: one within its 4 h SLA (2 h), one after it (6 h); both traffic signals.
    fast = ioc.submit(RequestDraft("traffic-signal", lat=LAT, lon=LON), T0)
    ioc.acknowledge(fast.id, "op", T0)
    ioc.close(fast.id, "op", T0 + timedelta(hours=2))
    slow = ioc.submit(RequestDraft("traffic-signal", lat=LAT + 0.01, lon=LON), T0)
    ioc.close(slow.id, "op", T0 + timedelta(hours=6))
    # Open: one breached (flooding, 6 h SLA, 2 days old), one at risk, one on track; plus a duplicate.
    ioc.submit(RequestDraft("flooding", lat=LAT + 0.02, lon=LON), T0)
    ioc.submit(RequestDraft("waste", lat=LAT + 0.03, lon=LON), now - timedelta(hours=20))  # 20 of 24 h
    fresh = ioc.submit(RequestDraft("waste", lat=LAT + 0.04, lon=LON), now - timedelta(hours=1))
    dup = ioc.submit(RequestDraft("waste", lat=LAT + 0.04, lon=LON), now)
    assert dup.duplicate_of == fresh.id
    ioc.mark_duplicate(dup.id, fresh.id, "op", now)
    # Entities: two traffic links, one stale; one flood sensor over its threshold.
    ioc.upsert([{"id": "urn:ngsi-ld:TrafficFlowObserved:l1", "type": X("TrafficFlowObserved"),
                 X("averageVehicleSpeed"): {"type": "Property", "value": 40}}], now - timedelta(hours=1))
    ioc.upsert([{"id": "urn:ngsi-ld:TrafficFlowObserved:l2", "type": X("TrafficFlowObserved"),
                 X("averageVehicleSpeed"): {"type": "Property", "value": 40}}], now - timedelta(minutes=5))
    ioc.upsert([{"id": "urn:ngsi-ld:FloodMonitoring:f1", "type": X("FloodMonitoring"),
                 X("waterLevel"): {"type": "Property", "value": 0.5}}], now)
    ioc.tick(now)  # l1 has been silent for an hour: a missing-data alert

    figures = ioc.dashboard(now)
    json.dumps(figures)  # JSON-ready
    assert figures["generated_at"] == "2024-10-16T07:30:00Z"
    requests = figures["requests"]
    assert requests["open"] == 3
    assert requests["by_risk"] == {"on_track": 1, "at_risk": 1, "breached": 1}
    assert requests["by_status"]["closed"] == 3 and requests["by_status"]["received"] == 3
    assert requests["by_service"] == {"flooding": 1, "waste": 2}
    assert requests["received_24h"] == 3
    assert requests["resolved_within_sla_pct"] == 50.0
    assert requests["median_resolution_h"] == 4.0
    alerts = figures["alerts"]
    assert alerts["active"] == 2
    assert alerts["by_kind"] == {"missing": 1, "threshold": 1}
    assert alerts["by_category"] == {"device": 1, "weather": 1}
    assert alerts["by_severity"] == {"high": 1, "low": 1}
    freshness = {row["type"]: row for row in figures["freshness"]}
    assert freshness["TrafficFlowObserved"] == {"type": "TrafficFlowObserved", "count": 2, "fresh": 1,
                                                "oldest_age_s": 3600.0}
    assert freshness["FloodMonitoring"]["fresh"] == 1


def test_dashboard_when_empty():
    figures = IOC(MemoryStore()).dashboard(T0)
    assert figures["requests"]["open"] == 0
    assert figures["requests"]["resolved_within_sla_pct"] is None
    assert figures["requests"]["median_resolution_h"] is None
    assert figures["alerts"]["active"] == 0 and figures["freshness"] == []


def test_api_keys_store_only_the_digest_and_revoked_keys_fail():
    store = MemoryStore()
    ioc = IOC(store)
    plain, key = ioc.create_key(Role.OPERATOR, T0, label="IOC desk")
    assert key.digest == hashlib.sha256(plain.encode()).hexdigest()
    assert plain not in repr(store.keys) and plain not in repr(ioc.keys())
    assert ioc.authenticate(plain) == key
    assert ioc.authenticate(plain + "x") is None and ioc.authenticate("") is None
    other, _ = ioc.create_key("citizen", T0)
    assert other != plain
    revoked = ioc.revoke_key(key.digest)
    assert revoked.revoked and ioc.authenticate(plain) is None
    assert ioc.authenticate(other).role == Role.CITIZEN
    assert len(ioc.keys()) == 2
    with pytest.raises(NotFound):
        ioc.revoke_key("0" * 64)


def test_key_definitions_are_checked():
    ioc = IOC(MemoryStore())
    with pytest.raises(Invalid) as error:
        ioc.create_key("mayor", T0)
    assert error.value.field == "role"
    with pytest.raises(Invalid) as error:
        ioc.create_key(Role.DEVICE, T0)
    assert error.value.field == "device_id"
    with pytest.raises(Invalid):
        ioc.create_key(Role.ADMIN, T0, rate_per_s=0)
    plain, key = ioc.create_key(Role.DEVICE, T0, device_id="aq-07", entity_type="AirQualityObserved",
                                rate_per_s=2.0)
    assert ioc.authenticate(plain).device_id == "aq-07" and key.entity_type == "AirQualityObserved"


def test_subscriptions_match_type_watched_attributes_and_q():
    ioc = IOC(MemoryStore(), rules=())
    pm25, no2, aq = X("pm25"), X("no2"), X("AirQualityObserved")
    ioc.subscribe(Subscription("urn:s:all", (aq,), "http://127.0.0.1:9/all"))
    ioc.subscribe(Subscription("urn:s:pm", (aq,), "http://127.0.0.1:9/pm", watched_attrs=(pm25,)))
    ioc.subscribe(Subscription("urn:s:high", (aq,), "http://127.0.0.1:9/high", q=f"{pm25}>50"))
    ioc.subscribe(Subscription("urn:s:off", (aq,), "http://127.0.0.1:9/off", active=False))
    ioc.subscribe(Subscription("urn:s:bus", (X("Vehicle"),), "http://127.0.0.1:9/bus"))
    with pytest.raises(Conflict):
        ioc.subscribe(Subscription("urn:s:all", (aq,), "http://127.0.0.1:9/all"))
    for bad in (Subscription("urn:s:x", (), "http://h/"), Subscription("urn:s:x", (aq,), "ftp://h/"),
                Subscription("urn:s:x", (aq,), "http://h/", q="pm25>>")):
        with pytest.raises(Invalid):
            ioc.subscribe(bad)
    result = ioc.upsert([{"id": "urn:ngsi-ld:AirQualityObserved:a1", "type": aq,
                          no2: {"type": "Property", "value": 10}, pm25: {"type": "Property", "value": 60}},
                         {"id": "urn:ngsi-ld:AirQualityObserved:a2", "type": aq,
                          no2: {"type": "Property", "value": 10}}], T0)
    matched = {sub.id: [e.id for e in entities] for sub, entities in ioc.notifications_for(result.changed)}
    assert matched == {"urn:s:all": ["urn:ngsi-ld:AirQualityObserved:a1", "urn:ngsi-ld:AirQualityObserved:a2"],
                       "urn:s:pm": ["urn:ngsi-ld:AirQualityObserved:a1"],
                       "urn:s:high": ["urn:ngsi-ld:AirQualityObserved:a1"]}
    only_no2 = ioc.upsert([{"id": "urn:ngsi-ld:AirQualityObserved:a1", "type": aq,
                            no2: {"type": "Property", "value": 11}}], T0)
    assert {sub.id for sub, _ in ioc.notifications_for(only_no2.changed)} == {"urn:s:all", "urn:s:high"}
    assert ioc.notifications_for([]) == []

    ioc.record_notification("urn:s:all", True, T0)
    ioc.record_notification("urn:s:all", False, T0 + timedelta(seconds=5))
    ioc.record_notification("urn:s:gone", True, T0)  # deleted meanwhile: nothing to record
    sub = ioc.subscription("urn:s:all")
    assert (sub.times_sent, sub.last_notification, sub.last_failure) == (2, T0 + timedelta(seconds=5),
                                                                         T0 + timedelta(seconds=5))
    sub.active = False
    ioc.update_subscription(sub)
    assert not ioc.subscription("urn:s:all").active
    ioc.unsubscribe("urn:s:all")
    with pytest.raises(NotFound):
        ioc.subscription("urn:s:all")
    with pytest.raises(NotFound):
        ioc.unsubscribe("urn:s:all")
    with pytest.raises(NotFound):
        ioc.update_subscription(sub)
    assert [s.id for s in ioc.subscriptions()] == ["urn:s:bus", "urn:s:high", "urn:s:off", "urn:s:pm"]


def test_alerts_listing_newest_first_and_by_status():
    ioc = IOC(MemoryStore())
    level = X("waterLevel")
    for minute, sensor in enumerate(["f1", "f2", "f3"]):
        ioc.upsert([{"id": f"urn:ngsi-ld:FloodMonitoring:{sensor}", "type": X("FloodMonitoring"),
                     level: {"type": "Property", "value": 0.5},
                     NGSI_LD + "location": {"type": "GeoProperty",
                                            "value": {"type": "Point", "coordinates": [LON, LAT]}}}],
                   T0 + timedelta(minutes=minute))
    alerts = ioc.alerts()
    assert [a.entity_id[-2:] for a in alerts] == ["f3", "f2", "f1"]
    ioc.acknowledge_alert(alerts[0].id, "op", T0)
    ioc.clear_alert(alerts[1].id, "op", T0)
    assert [a.entity_id[-2:] for a in ioc.alerts((AlertStatus.RAISED,))] == ["f1"]
    assert [a.entity_id[-2:] for a in ioc.alerts((AlertStatus.RAISED, AlertStatus.ACKNOWLEDGED))] == ["f3", "f1"]
    assert len(ioc.alerts(limit=1)) == 1

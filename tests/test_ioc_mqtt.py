"""MQTT ingestion: IoT Agent JSON topics on the real Mosquitto become entities and alerts; wrong keys are
rejected without ever reaching a log. The message-to-document conversion is checked without a broker."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from citytwin.ioc.core import ldcontext
from citytwin.ioc.core.model import Role
from citytwin.ioc.server import Settings, create_app
from citytwin.ioc.server.mqtt_ingest import Rejected, measures_of, parse_address, split_topic, to_document
from conftest import mqtt_address, wait_for

WATER_LEVEL = ldcontext.DISPLAY.expand("waterLevel")
LOCATION = ldcontext.NGSI_LD + "location"


# -- without a broker ------------------------------------------------------------------------------------------
def test_topics_payloads_and_documents():
    assert split_topic("/json/k3y/dev-1/attrs") == ("k3y", "dev-1", None)
    assert split_topic("/json/k3y/dev-1/attrs/waterLevel") == ("k3y", "dev-1", "waterLevel")
    for topic in ("/json/k/d/cmd", "json/k/d/attrs", "/json//d/attrs", "/json/k/d/attrs/"):
        with pytest.raises(Rejected):
            split_topic(topic)
    assert measures_of(b'[{"a": 1}, {"a": 2}]', None) == [{"a": 1}, {"a": 2}]
    assert measures_of(b"0.42", "waterLevel") == [{"waterLevel": 0.42}]
    assert measures_of(b"open", "state") == [{"state": "open"}]
    for payload in (b"{not json", b"[]", b"3", b"[1]"):
        with pytest.raises(Rejected):
            measures_of(payload, None)

    doc = to_document("g7", "FloodMonitoring", {"waterLevel": 0.3, "location": "10.77,106.7",
                                               "TimeInstant": "2024-05-01T08:00:00Z",
                                               "refDevice": "urn:ngsi-ld:Device:x"})
    assert doc["id"] == "urn:ngsi-ld:FloodMonitoring:g7"
    assert doc["type"] == ldcontext.DISPLAY.expand("FloodMonitoring")
    assert doc[WATER_LEVEL] == {"type": "Property", "value": 0.3, "observedAt": "2024-05-01T08:00:00Z"}
    assert doc[LOCATION] == {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [106.7, 10.77]}}
    assert doc[ldcontext.DISPLAY.expand("refDevice")] == {"type": "Relationship", "object": "urn:ngsi-ld:Device:x",
                                                          "observedAt": "2024-05-01T08:00:00Z"}
    assert to_document("d", None, {"x": 1})["id"] == "urn:ngsi-ld:Device:d"
    for bad in ({"location": "north"}, {"TimeInstant": 5}, {"type": "x"}):
        with pytest.raises(Rejected):
            to_document("d", None, bad)

    assert parse_address("mqtt://127.0.0.1:1883") == ("127.0.0.1", 1883, None, None, False)
    assert parse_address("mqtts://u:p%40ss@broker") == ("broker", 8883, "u", "p@ss", True)
    with pytest.raises(ValueError):
        parse_address("http://broker:1883")


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z][A-Za-z0-9]{0,10}", fullmatch=True).filter(
    lambda n: n not in ldcontext.CORE_KEYWORDS and n != "location" and not n.startswith("ref")),
    st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8), st.booleans()),
    min_size=1, max_size=6))
def test_every_measure_becomes_a_property_named_by_its_display_iri(measures):
    payload = json.dumps(measures).encode()
    [group] = measures_of(payload, None)
    doc = to_document("dev", "Device", group)
    assert {ldcontext.DISPLAY.compact(k): v["value"] for k, v in doc.items() if k not in ("id", "type")} == measures


# -- against the broker ----------------------------------------------------------------------------------------
@pytest.fixture
def server(tmp_path):
    host, port = mqtt_address()
    app = create_app(Settings(db_url=f"sqlite:///{tmp_path}/ioc.db", mqtt_url=f"mqtt://{host}:{port}",
                              tick_s=3600))
    with TestClient(app) as client:
        ingest = app.state.mqtt
        assert ingest.wait_connected(10), "the IOC did not connect to the broker"
        yield client, app.state.ioc, ingest


@pytest.fixture
def publisher():
    host, port = mqtt_address()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{uuid.uuid4().hex[:8]}")
    client.connect(host, port)
    client.loop_start()
    yield client
    client.loop_stop()
    client.disconnect()


def publish(client: mqtt.Client, topic: str, payload) -> None:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    client.publish(topic, data, qos=1).wait_for_publish(5)


def entity_or_none(ioc, entity_id):
    try:
        return ioc.get_entity(entity_id)
    except Exception:
        return None


def device(ioc, entity_type: str) -> tuple[str, str]:
    """A fresh device (unique per test, so parallel runs on one broker do not clash) and its key."""
    device_id = f"dev-{uuid.uuid4().hex[:10]}"
    key, _ = ioc.create_key(Role.DEVICE, datetime.now(UTC), device_id=device_id, entity_type=entity_type)
    return device_id, key


def test_measures_become_an_entity_and_a_flood_alert(server, publisher):
    client, ioc, ingest = server
    device_id, key = device(ioc, "FloodMonitoring")
    entity_id = f"urn:ngsi-ld:FloodMonitoring:{device_id}"

    publish(publisher, f"/json/{key}/{device_id}/attrs", {"waterLevel": 0.1, "location": "10.77,106.70"})
    entity = wait_for(lambda: entity_or_none(ioc, entity_id))
    assert entity.attrs[WATER_LEVEL]["value"] == 0.1 and entity.owner == device_id
    assert entity.location == pytest.approx((106.70, 10.77))
    assert not [a for a in ioc.alerts() if a.entity_id == entity_id]

    publish(publisher, f"/json/{key}/{device_id}/attrs/waterLevel", b"0.5")
    alert = wait_for(lambda: [a for a in ioc.alerts() if a.entity_id == entity_id and a.rule_id ==
                              "flood-water-level"])
    assert alert[0].value == 0.5 and alert[0].attribute == WATER_LEVEL
    assert ioc.get_entity(entity_id).attrs[WATER_LEVEL]["value"] == 0.5
    # paho's thread counts a message once the upsert (and the alert it raised) returns: wait, not race
    wait_for(lambda: ingest.accepted >= 2)


def test_multi_measure_keeps_each_time_instant(server, publisher):
    client, ioc, ingest = server
    device_id, key = device(ioc, "FloodMonitoring")
    entity_id = f"urn:ngsi-ld:FloodMonitoring:{device_id}"
    payload = [{"waterLevel": 0.11, "TimeInstant": "2024-05-01T08:00:00Z"},
               {"waterLevel": 0.12, "TimeInstant": "2024-05-01T08:05:00Z"}]
    publish(publisher, f"/json/{key}/{device_id}/attrs", payload)
    publish(publisher, f"/json/{key}/{device_id}/attrs", payload)  # a retry: history does not grow
    wait_for(lambda: entity_or_none(ioc, entity_id) and len(ioc.entity_history(entity_id, WATER_LEVEL)) >= 2)
    wait_for(lambda: ingest.accepted >= 2)
    assert [o.value for o in ioc.entity_history(entity_id, WATER_LEVEL)] == [0.11, 0.12]


def test_wrong_keys_are_rejected_and_never_logged(server, publisher, caplog):
    client, ioc, ingest = server
    caplog.set_level(logging.DEBUG)
    device_id, key = device(ioc, "FloodMonitoring")
    other_id, other_key = device(ioc, "FloodMonitoring")
    operator_plain, _ = ioc.create_key(Role.OPERATOR, datetime.now(UTC))
    unknown = "ioc_" + uuid.uuid4().hex
    attempts = [(f"/json/{unknown}/{device_id}/attrs", {"waterLevel": 0.9}),      # unknown key
                (f"/json/{other_key}/{device_id}/attrs", {"waterLevel": 0.9}),    # another device's key
                (f"/json/{operator_plain}/{device_id}/attrs", {"waterLevel": 0.9}),  # not a device key
                (f"/json/{key}/{device_id}/attrs", b"{broken")]                   # bad JSON
    before = ingest.rejected
    for topic, payload in attempts:
        publish(publisher, topic, payload)
    wait_for(lambda: ingest.rejected >= before + len(attempts))
    assert entity_or_none(ioc, f"urn:ngsi-ld:FloodMonitoring:{device_id}") is None
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "rejected" in logged
    for secret in (unknown, other_key, operator_plain, key):
        assert secret not in logged
    # The right key still works afterwards.
    publish(publisher, f"/json/{key}/{device_id}/attrs", {"waterLevel": 0.05})
    wait_for(lambda: entity_or_none(ioc, f"urn:ngsi-ld:FloodMonitoring:{device_id}"))
    assert entity_or_none(ioc, f"urn:ngsi-ld:FloodMonitoring:{other_id}") is None


def test_health_reports_the_broker(server):
    client, _, _ = server
    assert client.get("/health").json()["mqtt"] == "connected"

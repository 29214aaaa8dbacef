"""The reference IOC publishes every alert it raises or clears on MQTT (`citytwin/alerts/{category}`, QoS 1):
from NGSI-LD writes over HTTP, from MQTT ingestion, from the rule tick and from an operator's clear. Without
--mqtt nothing is published; a broker that goes away never holds up a write."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from citytwin.devices_sim.transports import EmbeddedBroker
from citytwin.ioc.core import ldcontext
from citytwin.ioc.core.model import Alert, AlertStatus, Role
from citytwin.ioc.server import Settings, create_app, deps
from citytwin.ioc.server.alert_publish import AlertPublisher, alert_message, alert_topic
from citytwin.ioc.server.process import free_port
from citytwin.twin.drive.listener import AlertListener
from conftest import mqtt_address, wait_for

WEATHER = ldcontext.sdm_context_url("Weather")
RAISED_AT = datetime(2026, 6, 1, 1, 0, tzinfo=UTC)
LEVEL = "flood-gauge-level"


def gauge(level: float, device_id: str) -> dict:
    return {"id": f"urn:ngsi-ld:FloodMonitoring:{device_id}", "type": "FloodMonitoring",
            "currentLevel": {"type": "Property", "value": level}, "@context": WEATHER}


def upsert(client: TestClient, key: str, *entities: dict) -> int:
    return client.post("/ngsi-ld/v1/entityOperations/upsert?options=update", content=json.dumps(list(entities)),
                       headers={"X-API-Key": key, "Content-Type": "application/ld+json"}).status_code


class Inbox:
    """The alerts an AlertListener got, by entity id: tests sharing one broker see only their own."""

    def __init__(self) -> None:
        self.alerts: list[tuple[dict, float]] = []
        self._lock = threading.Lock()

    def __call__(self, alert: dict, at: float) -> None:
        with self._lock:
            self.alerts.append((alert, at))

    def of(self, entity_id: str, status: str | None = None, rule: str | None = None) -> list[dict]:
        with self._lock:
            return [a for a, _ in self.alerts if a.get("entity_id") == entity_id
                    and (status is None or a.get("status") == status) and (rule is None or a["rule_id"] == rule)]


# -- without a broker ------------------------------------------------------------------------------------------
def test_message_and_topic():
    alert = Alert(id=7, rule_id="flood-gauge-level", kind="threshold",
                  entity_id="urn:ngsi-ld:FloodMonitoring:g1", entity_type=ldcontext.DISPLAY.expand("FloodMonitoring"),
                  severity="high", category="weather", status=AlertStatus.RAISED, raised_at=RAISED_AT,
                  message="water level 0.15 m above 0.1 m", attribute=ldcontext.DISPLAY.expand("currentLevel"),
                  value=0.15, lon=108.2, lat=16.05)
    assert alert_message(alert) == {
        "id": 7, "rule_id": "flood-gauge-level", "kind": "threshold", "entity_id": "urn:ngsi-ld:FloodMonitoring:g1",
        "entity_type": "FloodMonitoring", "severity": "high", "category": "weather", "status": "raised",
        "raised_at": "2026-06-01T01:00:00Z", "cleared_at": None, "message": "water level 0.15 m above 0.1 m",
        "value": 0.15}
    assert alert_topic("weather") == "citytwin/alerts/weather"
    assert alert_topic("a/b+#") == "citytwin/alerts/a_b__" and alert_topic("") == "citytwin/alerts/other"
    unknown_type = Alert(**{**alert.__dict__, "entity_type": "https://example.org/Thing"})
    assert alert_message(unknown_type)["entity_type"] == "https://example.org/Thing"  # no short name: the IRI


def test_a_full_queue_drops_and_counts_and_never_waits(caplog):
    caplog.set_level(logging.WARNING)
    publisher = AlertPublisher(f"mqtt://127.0.0.1:{free_port()}", max_queue=3)  # nothing listens there
    alert = Alert(1, "r", "threshold", "urn:x:1", "T", "low", "weather", AlertStatus.RAISED, RAISED_AT, "m")
    acknowledged = Alert(**{**alert.__dict__, "status": AlertStatus.ACKNOWLEDGED})
    # Not started: nothing takes from the queue, so what it holds is exact.
    publisher.submit([alert] * 10 + [acknowledged])  # acknowledging is neither raising nor clearing
    assert (publisher.submitted, publisher.dropped, publisher.pending) == (3, 7, 3)
    publisher.start()
    try:
        publisher.submit([alert])
        assert publisher.submitted + publisher.dropped == 11 and publisher.published == 0
        assert not publisher.connected
    finally:
        publisher.stop(timeout_s=0.5)
    assert publisher.dropped == 11 and publisher.published == 0  # never sent: counted too
    assert len([r for r in caplog.records if "dropped" in r.getMessage()]) == 2  # once, and a summary at stop
    with pytest.raises(ValueError):
        AlertPublisher("mqtt://127.0.0.1:1883", max_queue=0)
    with pytest.raises(ValueError):
        AlertPublisher("http://127.0.0.1:1883")


# -- with Mosquitto --------------------------------------------------------------------------------------------
@pytest.fixture
def broker_url() -> str:
    host, port = mqtt_address()
    return f"mqtt://{host}:{port}"


@pytest.fixture
def inbox(broker_url):
    box = Inbox()
    listener = AlertListener(broker_url, box)
    assert listener.wait_connected(10), "the alert listener did not subscribe"
    yield box
    listener.stop()


@pytest.fixture
def server(tmp_path, broker_url):
    app = create_app(Settings(db_url=f"sqlite:///{tmp_path}/ioc.db", mqtt_url=broker_url, tick_s=0.2))
    with TestClient(app) as client:
        assert app.state.mqtt.wait_connected(10) and app.state.alerts.wait_connected(10)
        ioc = app.state.ioc
        operator, _ = ioc.create_key(Role.OPERATOR, datetime.now(UTC), rate_per_s=1e6)
        yield app, client, operator


def test_http_writes_raise_and_clear_on_mqtt(server, inbox):
    app, client, operator = server
    device_id = f"g-{uuid.uuid4().hex[:10]}"
    entity_id = f"urn:ngsi-ld:FloodMonitoring:{device_id}"
    assert upsert(client, operator, gauge(0.02, device_id)) == 201
    assert upsert(client, operator, gauge(0.15, device_id)) == 204
    [raised] = wait_for(lambda: inbox.of(entity_id, "raised", LEVEL))
    stored = next(a for a in app.state.ioc.alerts() if a.entity_id == entity_id and a.rule_id == "flood-gauge-level")
    assert raised == {**alert_message(stored), "status": "raised", "cleared_at": None}
    assert raised["rule_id"] == "flood-gauge-level" and raised["entity_type"] == "FloodMonitoring"
    assert raised["category"] == "weather" and raised["value"] == 0.15 and raised["id"] == stored.id

    assert upsert(client, operator, gauge(0.01, device_id)) == 204
    [cleared] = wait_for(lambda: inbox.of(entity_id, "cleared", LEVEL))
    assert cleared["id"] == raised["id"] and cleared["cleared_at"] is not None
    assert cleared["raised_at"] == raised["raised_at"]


def test_mqtt_ingestion_and_an_operator_clear_are_published(server, inbox, broker_url):
    app, client, operator = server
    device_id = f"g-{uuid.uuid4().hex[:10]}"
    entity_id = f"urn:ngsi-ld:FloodMonitoring:{device_id}"
    key, _ = app.state.ioc.create_key(Role.DEVICE, datetime.now(UTC), device_id=device_id,
                                      entity_type="FloodMonitoring")
    host, port = mqtt_address()
    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-dev-{uuid.uuid4().hex[:8]}")
    device.connect(host, port)
    device.loop_start()
    try:
        device.publish(f"/json/{key}/{device_id}/attrs", json.dumps({"currentLevel": 0.2}), qos=1) \
            .wait_for_publish(5)
        [raised] = wait_for(lambda: inbox.of(entity_id, "raised", LEVEL))
    finally:
        device.loop_stop()
        device.disconnect()
    assert raised["rule_id"] == "flood-gauge-level" and raised["value"] == 0.2

    for action in ("acknowledge", "clear"):  # acknowledging neither raises nor clears: not published
        answer = client.post(f"/operator/v1/alerts/{raised['id']}/{action}", headers={"X-API-Key": operator})
        assert answer.status_code == 200
    [cleared] = wait_for(lambda: inbox.of(entity_id, "cleared"))
    assert cleared["id"] == raised["id"] and len(inbox.of(entity_id)) == 2


def test_the_tick_publishes_missing_data(server, inbox):
    app, client, operator = server
    device_id = f"g-{uuid.uuid4().hex[:10]}"
    entity_id = f"urn:ngsi-ld:FloodMonitoring:{device_id}"
    app.dependency_overrides[deps.now] = lambda: datetime.now(UTC) - timedelta(hours=1)  # written long ago
    try:
        assert upsert(client, operator, gauge(0.0, device_id)) == 201
    finally:
        app.dependency_overrides.pop(deps.now)
    [missing] = wait_for(lambda: inbox.of(entity_id, "raised"))  # the tick runs every 0.2 s here
    assert missing["rule_id"] == "missing-FloodMonitoring" and missing["kind"] == "missing"
    assert missing["category"] == "device" and missing["entity_type"] == "FloodMonitoring"


def test_without_mqtt_nothing_is_published_and_writes_work(tmp_path, inbox):
    app = create_app(Settings(db_url=f"sqlite:///{tmp_path}/ioc.db", mqtt_url=None, tick_s=0.2))
    with TestClient(app) as client:
        assert app.state.alerts is None and client.get("/health").json()["mqtt"] == "off"
        operator, _ = app.state.ioc.create_key(Role.OPERATOR, datetime.now(UTC))
        device_id = f"g-{uuid.uuid4().hex[:10]}"
        entity_id = f"urn:ngsi-ld:FloodMonitoring:{device_id}"
        assert upsert(client, operator, gauge(0.3, device_id)) == 201
        assert [a.rule_id for a in app.state.ioc.alerts() if a.entity_id == entity_id] == ["flood-gauge-level"]
    with pytest.raises(AssertionError):
        wait_for(lambda: inbox.of(entity_id), timeout_s=0.5)


def test_a_broker_that_goes_away_does_not_hold_up_writes(tmp_path):
    broker = EmbeddedBroker().start()
    try:
        app = create_app(Settings(db_url=f"sqlite:///{tmp_path}/ioc.db", mqtt_url=broker.url, tick_s=3600))
        with TestClient(app) as client:
            publisher = app.state.alerts
            assert publisher.wait_connected(10)
            operator, _ = app.state.ioc.create_key(Role.OPERATOR, datetime.now(UTC), rate_per_s=1e6)
            broker.stop()
            wait_for(lambda: not publisher.connected)
            device_id = f"g-{uuid.uuid4().hex[:10]}"
            for k in range(20):  # each write raises or clears the gauge's alerts
                assert upsert(client, operator, gauge(0.2 if k % 2 == 0 else 0.0, device_id)) in (201, 204)
            changes = len([a for a in app.state.ioc.alerts() if a.rule_id == LEVEL])
            assert changes == 10 and publisher.submitted >= 20 and publisher.acked == 0
            assert client.get("/health").json()["status"] == "ok"
        # shutting down with the broker away is bounded, and what could not go out is counted
        assert (publisher.published, publisher.dropped) == (0, publisher.submitted) and not publisher.connected
    finally:
        broker.stop()

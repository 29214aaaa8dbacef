"""The driver's listeners and provisioning: NGSI-LD notifications over HTTP, IOC alerts over MQTT, keys and a
subscription made through a live IOC's API; and end to end against `citytwin ioc serve --mqtt` with
Mosquitto: a gauge reading over MQTT comes back as an entity notification and as the flood alert."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from citytwin.devices_sim.encoders import WaterLevel, iota_topic, to_iota_json
from citytwin.ioc.server.process import ServerProcess, free_port, provision_key
from citytwin.twin.drive.listener import AlertListener, NotificationListener
from citytwin.twin.drive.provision import create_device_keys, create_key, subscribe, unsubscribe
from conftest import mqtt_address, wait_for


class Recorder:
    """What a listener called back with: (payload, monotonic time), thread-safe."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict, float]] = []
        self._lock = threading.Lock()

    def __call__(self, payload: dict, at: float) -> None:
        with self._lock:
            self.calls.append((payload, at))

    def matching(self, predicate) -> list[tuple[dict, float]]:
        with self._lock:
            return [(p, at) for p, at in self.calls if predicate(p)]


def notification(entities: list[dict]) -> dict:
    return {"id": f"urn:ngsi-ld:Notification:{uuid.uuid4().hex}", "type": "Notification",
            "subscriptionId": "urn:ngsi-ld:Subscription:s1", "notifiedAt": "2026-06-01T01:00:00Z", "data": entities}


# -- the notification listener ---------------------------------------------------------------------------------
def test_notifications_are_acknowledged_and_called_back_with_their_arrival_time():
    got = Recorder()
    with NotificationListener(on_notification=got) as listener, httpx.Client(timeout=5.0) as client:
        assert listener.url == f"http://127.0.0.1:{listener.port}/notify" and listener.port > 0
        body = notification([{"id": "urn:ngsi-ld:FloodMonitoring:g1", "type": "FloodMonitoring"}])
        before = time.monotonic()
        for _ in range(3):  # over one keep-alive connection
            answer = client.post(listener.url, content=json.dumps(body), headers={"Content-Type": "application/json"})
            assert answer.status_code == 204
        after = time.monotonic()
        wait_for(lambda: len(got.calls) == 3)
        assert all(payload == body and before <= at <= after for payload, at in got.calls)

        for bad in (b"{not json", b"[]", json.dumps({"type": "Subscription", "data": []}).encode(),
                    json.dumps({"type": "Notification", "data": {}}).encode()):
            assert client.post(listener.url, content=bad).status_code == 400
        assert client.post(listener.url.replace("/notify", "/other"), content=b"{}").status_code == 404
        assert client.get(listener.url).status_code == 501  # notifications are POSTed
        assert (listener.received, listener.malformed) == (3, 4) and len(got.calls) == 3
        url = listener.url
        listener.stop()
        with pytest.raises(httpx.TransportError):  # the keep-alive connection was closed too
            client.post(url, content=json.dumps(body))
    listener.stop()  # twice is harmless
    assert len(got.calls) == 3
    with pytest.raises(RuntimeError):
        listener.url  # noqa: B018 (stopped: no URL)


def test_a_failing_callback_is_counted_and_the_ioc_still_gets_204():
    def boom(body, at):
        raise RuntimeError("the driver's bug")

    with NotificationListener(on_notification=boom) as listener:
        answer = httpx.post(listener.url, content=json.dumps(notification([])), timeout=5.0)
        assert answer.status_code == 204
        wait_for(lambda: listener.callback_errors == 1)


# -- the alert listener ----------------------------------------------------------------------------------------
def test_alert_listener_gets_json_alerts_and_counts_garbage():
    host, port = mqtt_address()
    root = f"citytwin-test/{uuid.uuid4().hex[:10]}"  # a topic tree of this test's own
    got = Recorder()
    listener = AlertListener(f"mqtt://{host}:{port}", got, topic=f"{root}/#")
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{uuid.uuid4().hex[:8]}")
    try:
        assert listener.wait_connected(10) and listener.connected
        publisher.connect(host, port)
        publisher.loop_start()
        before = time.monotonic()
        for payload in (json.dumps({"id": 1, "status": "raised"}), b"{broken", b"[1, 2]"):
            publisher.publish(f"{root}/weather", payload, qos=1).wait_for_publish(5)
        [(alert, at)] = wait_for(lambda: got.calls)
        wait_for(lambda: listener.malformed == 2)
        assert alert == {"id": 1, "status": "raised"} and at >= before and listener.received == 1
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        listener.stop()
    assert not listener.connected
    listener.stop()  # twice is harmless


def test_alert_listener_on_an_absent_broker_times_out_and_stops():
    listener = AlertListener(f"mqtt://127.0.0.1:{free_port()}", lambda alert, at: None)
    assert listener.wait_connected(0.3) is False
    listener.stop()
    with pytest.raises(ValueError):
        AlertListener("http://127.0.0.1:1883", lambda alert, at: None)


# -- provisioning and end to end, against `citytwin ioc serve --mqtt` ------------------------------------------
@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One server for the module (it takes a second or two to start), ingesting from Mosquitto."""
    host, port = mqtt_address()
    tmp = tmp_path_factory.mktemp("ioc")
    db_url = f"sqlite:///{tmp}/ioc.db"
    admin = provision_key(db_url, "admin")
    broker = f"mqtt://{host}:{port}"
    with ServerProcess(db_url, tmp / "server.log", ("--mqtt", broker)) as server:
        wait_for(lambda: httpx.get(f"{server.url}/health", timeout=2.0).json()["mqtt"] == "connected")
        yield server, admin, broker


def test_provisioned_keys_have_their_roles_and_devices(live):
    server, admin, _ = live
    tag = uuid.uuid4().hex[:8]
    devices = [(f"wl{tag}-{k:03d}", "FloodMonitoring") for k in range(12)]
    keys = create_device_keys(server.url, admin, devices)
    assert sorted(keys) == sorted(d for d, _ in devices) and len(set(keys.values())) == 12
    operator = create_key(server.url, admin, "operator", label=f"drive {tag}")
    listed = httpx.get(f"{server.url}/admin/v1/keys", headers={"X-API-Key": admin}, timeout=5.0).json()
    ours = {k["device_id"]: k for k in listed if k["device_id"] in keys}
    assert len(ours) == 12 and {(k["role"], k["entity_type"]) for k in ours.values()} == {("device", "FloodMonitoring")}
    assert all(k["rate_per_s"] >= 1e5 for k in ours.values())
    assert [k["role"] for k in listed if k["label"] == f"drive {tag}"] == ["operator"]
    # a device key writes its own entity; the operator key reads it
    device_id, key = next(iter(keys.items()))
    entity = {"id": f"urn:ngsi-ld:FloodMonitoring:{device_id}", "type": "FloodMonitoring",
              "currentLevel": {"type": "Property", "value": 0.01},
              "@context": "https://raw.githubusercontent.com/smart-data-models/dataModel.Weather/master/context.jsonld"}
    written = httpx.post(f"{server.url}/ngsi-ld/v1/entityOperations/upsert", content=json.dumps([entity]),
                         headers={"X-API-Key": key, "Content-Type": "application/ld+json"}, timeout=5.0)
    assert written.status_code == 201
    assert httpx.get(f"{server.url}/ngsi-ld/v1/entities/{entity['id']}", headers={"X-API-Key": operator},
                     timeout=5.0).status_code == 200
    assert create_device_keys(server.url, admin, []) == {}


def test_provisioning_errors_name_the_url_never_the_key(live):
    server, admin, _ = live
    wrong = "ioc_" + uuid.uuid4().hex
    with pytest.raises(ValueError) as caught:
        create_device_keys(server.url, wrong, [("d1", "FloodMonitoring"), ("d2", "FloodMonitoring")])
    assert "401" in str(caught.value) and f"{server.url}/admin/v1/keys" in str(caught.value)
    assert wrong not in str(caught.value)
    with pytest.raises(ValueError) as caught:
        create_key(server.url, admin, "superuser")
    assert "400" in str(caught.value) and admin not in str(caught.value)
    citizen = create_key(server.url, admin, "citizen")
    with pytest.raises(ValueError) as caught:  # subscribing takes an operator key
        subscribe(server.url, citizen, ["FloodMonitoring"], "http://127.0.0.1:9/notify")
    assert "403" in str(caught.value) and citizen not in str(caught.value)
    down = f"http://user:pw@127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ConnectionError) as caught:
        create_key(down, admin, "operator", timeout_s=2.0)
    assert f"127.0.0.1:{down.rsplit(':', 1)[1]}/admin/v1/keys" in str(caught.value)
    assert "pw" not in str(caught.value) and admin not in str(caught.value)
    for bad in (lambda: create_device_keys(server.url, admin, [("d", "FloodMonitoring")] * 2),
                lambda: create_device_keys(server.url, admin, [("d", "")]),
                lambda: create_key("ftp://127.0.0.1", admin, "operator"),
                lambda: subscribe(server.url, admin, [], "http://127.0.0.1:9/notify"),
                lambda: subscribe(server.url, admin, ["FloodMonitoring"], "mqtt://127.0.0.1:1883")):
        with pytest.raises(ValueError):
            bad()


def test_a_gauge_reading_comes_back_as_notification_and_alert(live):
    server, admin, broker = live
    device_id = f"wl{uuid.uuid4().hex[:8]}"
    entity_id = f"urn:ngsi-ld:FloodMonitoring:{device_id}"
    keys = create_device_keys(server.url, admin, [(device_id, "FloodMonitoring")])
    operator = create_key(server.url, admin, "operator")
    notified, alerted = Recorder(), Recorder()
    host, port = mqtt_address()
    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-dev-{uuid.uuid4().hex[:8]}")
    with NotificationListener(on_notification=notified) as listener, AlertListener(broker, alerted) as alerts:
        sub_id = subscribe(server.url, operator, ["FloodMonitoring"], listener.url)
        assert sub_id.startswith("urn:ngsi-ld:Subscription:")
        assert alerts.wait_connected(10)
        reading = WaterLevel(device_id, 108.22, 16.06, datetime.now(UTC), 0.15, 0.10, "moderate")
        measures, _ = to_iota_json(reading)
        device.connect(host, port)
        device.loop_start()
        try:
            sent = time.monotonic()
            device.publish(iota_topic(keys[device_id], device_id), json.dumps(measures), qos=1).wait_for_publish(5)
        finally:
            device.loop_stop()
            device.disconnect()

        [(body, notified_at)] = wait_for(lambda: notified.matching(
            lambda b: any(e["id"] == entity_id for e in b["data"])))
        [entity] = [e for e in body["data"] if e["id"] == entity_id]
        assert body["subscriptionId"] == sub_id and entity["type"] == "FloodMonitoring"
        assert entity["currentLevel"]["value"] == 0.15 and notified_at > sent

        [(alert, alerted_at)] = wait_for(lambda: alerted.matching(
            lambda a: a["entity_id"] == entity_id and a["rule_id"] == "flood-gauge-level"))
        assert alert["status"] == "raised" and alert["entity_type"] == "FloodMonitoring"
        assert alert["category"] == "weather" and alert["severity"] == "high" and alert["value"] == 0.15
        assert isinstance(alert["id"], int) and alert["raised_at"].endswith("Z") and alert["cleared_at"] is None
        assert alerted_at > sent
        assert unsubscribe(server.url, operator, sub_id) is True
        assert unsubscribe(server.url, operator, sub_id) is False

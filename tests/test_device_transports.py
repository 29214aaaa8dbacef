"""Device transports: readings into the IOC core in virtual time, over MQTT to the real Mosquitto and to the
embedded broker (the reference IOC's MqttIngest on the other side), and as NGSI-LD upserts to the reference
IOC server. A fleet of street flood gauges crossing 10 cm must raise the IOC's flood alert whichever way its
readings travel."""

from __future__ import annotations

import json
import math
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pytest

from citytwin.devices_sim.encoders import (
    CameraAlert,
    TrafficFlow,
    WaterLevel,
    from_ngsi_ld,
    iota_topic,
    to_iota_json,
    to_ngsi_ld,
)
from citytwin.devices_sim.transports import (
    BrokerStalled,
    BrokerUnreachable,
    EmbeddedBroker,
    HttpTransport,
    InProcessTransport,
    MqttTransport,
    alert_fields,
    provision,
)
from citytwin.ioc.core import AlertStatus, Role
from citytwin.ioc.core.ldcontext import DISPLAY
from citytwin.ioc.server.mqtt_ingest import MqttIngest
from citytwin.ioc.server.process import ServerProcess, free_port, provision_key
from citytwin.twin.ports.inprocess import EPOCH_DATE, new_ioc
from conftest import mqtt_address, wait_for

CURRENT = DISPLAY.expand("currentLevel")
EPOCH = EPOCH_DATE + timedelta(hours=6)


def gauge_ids(n: int, prefix: str = "wl") -> list[str]:
    """Fresh ids per test, so runs sharing one broker (xdist, another checkout) never see each other's."""
    tag = uuid.uuid4().hex[:6]
    return [f"{prefix}{tag}-{k:04d}" for k in range(n)]


def readings(device_ids: list[str], levels: list[float], at: datetime) -> tuple[list[WaterLevel], list[bytes]]:
    observations = [WaterLevel(device, 108.2 + k * 1e-3, 16.05, at, level, 0.10,
                               "none" if level < 0.05 else "moderate")
                    for k, (device, level) in enumerate(zip(device_ids, levels, strict=True))]
    return observations, [json.dumps(to_iota_json(obs)[0]).encode() for obs in observations]


def entity_id(device_id: str) -> str:
    return f"urn:ngsi-ld:FloodMonitoring:{device_id}"


# -- in-process ------------------------------------------------------------------------------------------------
def test_in_process_writes_entities_and_returns_the_flood_alerts_as_ledger_rows():
    ioc = new_ioc(np.random.default_rng(1))
    transport = InProcessTransport(ioc, EPOCH)
    ids = gauge_ids(4)
    # gauge 0 floods and drains, gauge 1 hovers between the clear and raise levels, 2 and 3 stay dry
    series = [[0.00, 0.06, 0.00, 0.0], [0.04, 0.08, 0.01, 0.0], [0.12, 0.09, 0.0, 0.0], [0.13, 0.07, 0.0, 0.0],
              [0.03, 0.06, 0.0, 0.0]]
    changes = []
    for step, levels in enumerate(series):
        t = 300.0 * step
        _, payloads = readings(ids, levels, transport.at(t))
        changes.append([(a.entity_id, a.rule_id, a.status, a.raised_at) for a in
                        transport.send(WaterLevel, ids, payloads, None, None, t)])
    gauge = entity_id(ids[0])
    assert changes[0] == changes[1] == changes[3] == []
    # 0.04 → 0.12 m in 5 min: above 10 cm, and rising 1.6 cm/min
    assert sorted(changes[2]) == [(gauge, "flood-gauge-level", AlertStatus.RAISED, transport.at(600)),
                                  (gauge, "flood-gauge-rise", AlertStatus.RAISED, transport.at(600))]
    assert sorted((c[1], c[2]) for c in changes[4]) == [("flood-gauge-level", AlertStatus.CLEARED),
                                                          ("flood-gauge-rise", AlertStatus.CLEARED)]
    assert transport.delivered == 20 and transport.rejected == 0

    entity = ioc.get_entity(gauge)
    assert entity.attrs[CURRENT]["value"] == 0.03 and entity.owner == ids[0]
    assert entity.modified_at == transport.at(1200) and entity.location == (108.2, 16.05)
    assert [o.value for o in ioc.entity_history(gauge, CURRENT)] == [0.0, 0.04, 0.12, 0.13, 0.03]

    [level] = [a for a in ioc.alerts() if a.rule_id == "flood-gauge-level"]
    assert alert_fields(level) == {"subject": gauge, "rule": "flood-gauge-level", "category": "weather",
                                   "status": "cleared", "value": 0.12}


def test_in_process_tick_raises_missing_data_and_bad_messages_are_counted_not_raised():
    ioc = new_ioc(np.random.default_rng(2))
    transport = InProcessTransport(ioc, EPOCH)
    ids = gauge_ids(2)
    _, payloads = readings(ids, [0.0, 0.0], transport.at(0))
    assert transport.send(WaterLevel, ids, payloads, None, None, 0.0) == []
    assert transport.tick(1800.0) == []  # FloodMonitoring gauges may be silent for 30 min
    missing = transport.tick(1801.0)
    assert sorted(a.entity_id for a in missing) == sorted(entity_id(d) for d in ids)
    assert {(a.rule_id, a.status) for a in missing} == {("missing-FloodMonitoring", AlertStatus.RAISED)}

    bad = [b"{not json", json.dumps({"type": "x"}).encode()]
    assert transport.send(WaterLevel, ids, bad, None, None, 1900.0) == []
    assert (transport.rejected, transport.delivered) == (2, 2)
    assert "reserved" in transport.last_rejection
    with pytest.raises(ValueError):
        transport.send(WaterLevel, ids[:1], payloads, None, None, 0.0)
    with pytest.raises(ValueError):
        transport.send(WaterLevel, ids, None, None, None, 0.0)


def test_alert_fields_of_a_camera_event_have_no_number():
    ioc = new_ioc(np.random.default_rng(3))
    transport = InProcessTransport(ioc, EPOCH)
    at = transport.at(60)
    event = CameraAlert("cam-0001", 108.2, 16.05, at, "traffic", "carAccident", "high", "crash on link 12", at)
    [alert] = transport.send(CameraAlert, ["cam-0001"], [json.dumps(to_iota_json(event)[0]).encode()], None, None,
                             60.0)
    row = alert_fields(alert)
    assert (row["subject"], row["rule"], row["category"], row["status"]) == (
        "urn:ngsi-ld:Alert:cam-0001", "camera-event", "traffic", "raised")
    assert math.isnan(row["value"])


def test_provisioned_keys_are_device_keys_bound_to_each_device():
    ioc = new_ioc(np.random.default_rng(4))
    ids = gauge_ids(3)
    keys = provision(ioc, ids, "FloodMonitoring")
    assert set(keys) == set(ids) and len(set(keys.values())) == 3
    for device_id, plain in keys.items():
        key = ioc.authenticate(plain)
        assert (key.role, key.device_id, key.entity_type) == (Role.DEVICE, device_id, "FloodMonitoring")


# -- MQTT ------------------------------------------------------------------------------------------------------
def mqtt_fleet_raises_the_flood_alert(url: str, qos: int, n: int = 30, private: bool = False) -> None:
    """A gauge fleet publishes over `url`; the reference IOC's MqttIngest, on the same broker, ingests it.
    On a shared broker the ingest also sees (and rejects) other tests' devices: only a private one is quiet."""
    ioc = new_ioc(np.random.default_rng(5))
    ids = gauge_ids(n)
    keys = provision(ioc, ids, "FloodMonitoring")
    ingest = MqttIngest(ioc, url)
    ingest.start()
    try:
        assert ingest.wait_connected(10), "the IOC did not connect to the broker"
        with MqttTransport(url, keys.__getitem__, qos=qos) as transport:
            start = datetime.now(UTC)
            for step, flooded in enumerate((0.02, 0.15)):
                levels = [flooded if k == 0 else 0.01 for k in range(n)]
                _, payloads = readings(ids, levels, start + timedelta(minutes=5 * step))
                assert transport.send(WaterLevel, ids, payloads, None, None, 300.0 * step) == []
            assert transport.flush(10.0)
            assert (transport.published, transport.completed, transport.dropped) == (2 * n, 2 * n, 0)
        wait_for(lambda: ingest.accepted >= 2 * n)
        assert ingest.accepted == 2 * n and (ingest.rejected == 0 or not private)
        alerts = wait_for(lambda: [a for a in ioc.alerts() if a.rule_id == "flood-gauge-level"])
        assert [(a.entity_id, a.value, a.status) for a in alerts] == [(entity_id(ids[0]), 0.15, AlertStatus.RAISED)]
        assert ioc.get_entity(entity_id(ids[-1])).attrs[CURRENT]["value"] == 0.01
        assert ioc.get_entity(entity_id(ids[0])).owner == ids[0]
    finally:
        ingest.stop()


@pytest.mark.parametrize("qos", [0, 1])
def test_mqtt_to_mosquitto_feeds_the_reference_ioc(qos):
    host, port = mqtt_address()
    mqtt_fleet_raises_the_flood_alert(f"mqtt://{host}:{port}", qos)


def test_mqtt_to_the_embedded_broker_feeds_the_reference_ioc():
    with EmbeddedBroker() as broker:
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}" and broker.port > 0
        mqtt_fleet_raises_the_flood_alert(broker.url, 1, private=True)
    assert not broker.running


def test_topics_come_from_each_devices_apikey():
    with EmbeddedBroker() as broker, MqttTransport(broker.url, lambda d: f"key-{d}", qos=0) as transport:
        assert transport.topic("g1") == iota_topic("key-g1", "g1") == "/json/key-g1/g1/attrs"
        with pytest.raises(ValueError):
            transport.topic("a/b")  # a device id that is no topic level


def test_flush_and_backpressure_are_bounded_when_the_broker_goes_away():
    broker = EmbeddedBroker().start()
    transport = MqttTransport(broker.url, lambda d: "k", qos=1, max_pending=50, stall_timeout_s=0.5)
    try:
        broker.stop()
        wait_for(lambda: not transport.connected, 5.0)
        transport.send(None, ["d"] * 10, [b"{}"] * 10)  # QoS 1: kept for after a reconnect
        began = time.monotonic()
        assert transport.flush(0.3) is False
        assert time.monotonic() - began < 2.0
        assert transport.pending == 10 and transport.dropped == 0
        with pytest.raises(BrokerStalled):
            transport.send(None, ["d"] * 100, [b"{}"] * 100)
    finally:
        transport.close(timeout_s=0.1)


def test_qos0_while_disconnected_is_dropped_and_counted():
    broker = EmbeddedBroker().start()
    transport = MqttTransport(broker.url, lambda d: "k", qos=0)
    try:
        broker.stop()
        wait_for(lambda: not transport.connected, 5.0)
        transport.send(None, ["d"] * 5, [b"{}"] * 5)
        assert (transport.published, transport.dropped) == (0, 5)
        assert transport.flush(0.1)
    finally:
        transport.close(timeout_s=0.1)


def test_an_unreachable_broker_is_a_clear_error_fast():
    port = free_port()  # nothing listens there
    began = time.monotonic()
    with pytest.raises(BrokerUnreachable) as caught:
        MqttTransport(f"mqtt://user:s3cret@127.0.0.1:{port}", lambda d: "k", connect_timeout_s=2.0)
    assert time.monotonic() - began < 3.0
    assert isinstance(caught.value, ConnectionError)
    assert f"127.0.0.1:{port}" in str(caught.value) and "s3cret" not in str(caught.value)
    with pytest.raises(ValueError):
        MqttTransport("http://127.0.0.1:1883", lambda d: "k")
    with pytest.raises(ValueError):
        MqttTransport(f"mqtt://127.0.0.1:{port}", lambda d: "k", qos=2)


def test_the_embedded_broker_stays_on_loopback():
    with pytest.raises(ValueError):
        EmbeddedBroker("0.0.0.0")
    broker = EmbeddedBroker()
    with pytest.raises(RuntimeError):
        broker.url  # noqa: B018  (not started: no URL to give)
    broker.stop()  # stopping a broker that never ran is harmless


# -- HTTP (NGSI-LD) --------------------------------------------------------------------------------------------
def read_back(server: ServerProcess, key: str, entity: str) -> httpx.Response:
    return httpx.get(f"{server.url}/ngsi-ld/v1/entities/{entity}", headers={"X-API-Key": key}, timeout=5.0)


def test_http_upserts_to_the_reference_ioc_server(tmp_path):
    """One server (`citytwin ioc serve` on SQLite) for all the HTTP cases: it takes a second or two to start."""
    db_url = f"sqlite:///{tmp_path}/ioc.db"
    operator = provision_key(db_url, "operator", rate_per_s=1e6)
    with ServerProcess(db_url, tmp_path / "server.log") as server:
        http_batches_can_be_read_back(server, operator)
        http_sends_the_encoders_entities_when_given_a_batch(server, operator)
        http_errors_are_counted(server, db_url, operator)


def http_batches_can_be_read_back(server: ServerProcess, operator: str) -> None:
    ids = gauge_ids(150)
    observations, payloads = readings(ids, [0.2 if k % 7 == 0 else 0.0 for k in range(150)],
                                      datetime(2026, 6, 1, 1, 0, tzinfo=UTC))
    with HttpTransport(server.url, api_key=operator, batch_size=100) as transport:
        assert transport.send(WaterLevel, ids, payloads, None, None, 0.0) == []
        assert (transport.sent, transport.errors, transport.requests) == (150, 0, 2)
        # again, later: the entities are updated, not duplicated
        later, payloads = readings(ids, [0.05] * 150, datetime(2026, 6, 1, 1, 5, tzinfo=UTC))
        transport.send(WaterLevel, ids, payloads, None, None, 300.0)
        assert (transport.sent, transport.errors) == (300, 0)
    for k in (0, 77, 149):
        response = read_back(server, operator, entity_id(ids[k]))
        assert response.status_code == 200
        assert from_ngsi_ld(response.json()) == later[k]


def http_sends_the_encoders_entities_when_given_a_batch(server: ServerProcess, operator: str) -> None:
    at = datetime(2026, 6, 1, 1, 0, tzinfo=UTC)
    flow = TrafficFlow(gauge_ids(1, "det")[0], 108.21, 16.06, at, 42, 0.31, 27.5, at - timedelta(minutes=5), at)

    class Encoder:  # the one method of devices_sim.batch.Encoder that HttpTransport uses
        def ngsi_ld(self, batch):
            return [to_ngsi_ld(obs) for obs in batch]

    later = TrafficFlow(flow.device_id, 108.21, 16.06, at + timedelta(minutes=5), 40, 0.3, 28.0, at,
                        at + timedelta(minutes=5))
    with HttpTransport(server.url, api_key=operator) as transport:
        transport.send(TrafficFlow, [flow.device_id], None, [flow], Encoder(), 0.0)
        assert (transport.sent, transport.errors) == (1, 0)
        response = read_back(server, operator, f"urn:ngsi-ld:TrafficFlowObserved:{flow.device_id}")
        assert from_ngsi_ld(response.json()) == flow
        # entities already encoded may come as the payloads
        transport.send(TrafficFlow, [flow.device_id], [to_ngsi_ld(later)], None, None, 300.0)
        assert (transport.sent, transport.errors) == (2, 0) and transport.tick(300.0) == []
    response = read_back(server, operator, f"urn:ngsi-ld:TrafficFlowObserved:{flow.device_id}")
    assert from_ngsi_ld(response.json()) == later


def http_errors_are_counted(server: ServerProcess, db_url: str, operator: str) -> None:
    ids = gauge_ids(3)
    _, payloads = readings(ids, [0.0] * 3, datetime(2026, 6, 1, 1, 0, tzinfo=UTC))
    # a device key may write its own entity only: the batch answers 207 and names the two others
    device = provision_key(db_url, "device", device_id=ids[0], entity_type="FloodMonitoring", rate_per_s=1e6)
    with HttpTransport(server.url, api_key=device) as own, HttpTransport(server.url, api_key=operator) as others:
        own.send(WaterLevel, ids[:1], payloads[:1], None, None, 0.0)
        others.send(WaterLevel, ids[1:], payloads[1:], None, None, 0.0)
        own.send(WaterLevel, ids, payloads, None, None, 0.0)
        assert (own.sent, own.errors, own.requests) == (2, 2, 2)
        assert ids[1] in own.last_error and "belongs to another device" in own.last_error
    with HttpTransport(server.url, api_key="ioc_unknown") as transport:
        transport.send(WaterLevel, ids, payloads, None, None, 0.0)
        assert (transport.sent, transport.errors) == (0, 3) and "401" in transport.last_error
    with HttpTransport(f"http://127.0.0.1:{free_port()}", timeout_s=1.0) as transport:
        transport.send(WaterLevel, ids, payloads, None, None, 0.0)
        assert (transport.sent, transport.errors) == (0, 3) and "Connect" in transport.last_error
    with pytest.raises(ValueError):
        HttpTransport(server.url, batch_size=0)
    with pytest.raises(ValueError):
        HttpTransport("mqtt://127.0.0.1:1883")

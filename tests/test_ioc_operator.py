"""The operator and admin APIs, /health, and the `citytwin ioc` commands."""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import timedelta

import pytest

from citytwin.ioc.core import ldcontext
from citytwin.ioc.core.model import Role
from citytwin.ioc.server import deps

from conftest import IOC_T0, REPO

T0 = IOC_T0
X = ldcontext.DISPLAY.expand


@pytest.fixture
def app(ioc_app):
    return ioc_app


@pytest.fixture
def client(ioc_client):
    return ioc_client


@pytest.fixture
def operator(app, client) -> dict[str, str]:
    return {"X-API-Key": app.state.ioc.create_key(Role.OPERATOR, T0, label="Trực ban IOC")[0]}


def report(app, client, service_code="road-damage", lat=16.0678) -> int:
    key = app.state.ioc.create_key(Role.CITIZEN, T0)[0]
    answer = client.post("/requests", data={"api_key": key, "service_code": service_code, "lat": str(lat),
                                            "long": "108.2208", "email": "binh@example.vn"})
    assert answer.status_code == 201, answer.text
    return int(answer.json()[0]["service_request_id"])


def test_workflow_with_history_and_reporter(app, client, operator):
    rid = report(app, client)
    base = f"/operator/v1/requests/{rid}"
    assert client.post(f"{base}/acknowledge", json={"note": "Đã tiếp nhận"}, headers=operator).json()["status"] \
        == "acknowledged"
    assigned = client.post(f"{base}/assign", json={"crew": "Đội 3", "note": ""}, headers=operator).json()
    assert assigned["status"] == "assigned" and assigned["assignee"] == "Đội 3"
    assert client.post(f"{base}/start", headers=operator).json()["status"] == "in_progress"  # no body at all
    resolved = client.post(f"{base}/resolve", json={"note": "Đã vá"}, headers=operator).json()
    assert resolved["status"] == "resolved" and resolved["closed_at"] is not None
    assert client.post(f"{base}/close", json={}, headers=operator).json()["status"] == "closed"

    detail = client.get(base, headers=operator).json()
    assert detail["reporter"]["email"] == "binh@example.vn"  # operators see the reporter
    assert [step["status"] for step in detail["history"]] == [
        "received", "acknowledged", "assigned", "in_progress", "resolved", "closed"]
    assert detail["history"][1]["actor"] == "Trực ban IOC" and detail["history"][1]["note"] == "Đã tiếp nhận"
    assert detail["requested_at"].endswith("+07:00")
    [public] = client.get(f"/requests/{rid}.json").json()
    assert public["status"] == "closed"


def test_illegal_steps_and_bad_bodies(app, client, operator):
    rid = report(app, client)
    base = f"/operator/v1/requests/{rid}"
    answer = client.post(f"{base}/resolve", json={}, headers=operator)
    assert answer.status_code == 409 and "detail" in answer.json()
    answer = client.post(f"{base}/assign", json={"note": "x"}, headers=operator)
    assert answer.status_code == 400 and "crew" in answer.json()["detail"]
    answer = client.post(f"{base}/explode", json={}, headers=operator)
    assert answer.status_code == 400 and "action" in answer.json()["detail"]
    answer = client.post(f"{base}/acknowledge", json={"nope": 1}, headers=operator)
    assert answer.status_code == 400 and "nope" in answer.json()["detail"]
    assert client.post("/operator/v1/requests/424242/acknowledge", json={}, headers=operator).status_code == 404
    assert client.get("/operator/v1/requests/424242", headers=operator).status_code == 404
    assert client.get("/operator/v1/requests/abc", headers=operator).status_code == 400


def test_duplicate(app, client, operator):
    first = report(app, client)
    second = report(app, client, service_code="flooding")
    answer = client.post(f"/operator/v1/requests/{second}/duplicate", json={"of": first}, headers=operator)
    assert answer.status_code == 200, answer.text
    assert answer.json()["duplicate_of"] == first
    missing = client.post(f"/operator/v1/requests/{second}/duplicate", json={"of": 999999}, headers=operator)
    assert missing.status_code in (404, 409)
    assert client.post(f"/operator/v1/requests/{second}/duplicate", json={}, headers=operator).status_code == 400


def test_list_by_sla_risk(app, client, operator):
    signal = report(app, client, service_code="traffic-signal")  # 4 h deadline
    road = report(app, client, service_code="road-damage", lat=16.01)  # 72 h
    done = report(app, client, service_code="waste", lat=16.02)
    client.post(f"/operator/v1/requests/{done}/close", json={}, headers=operator)
    app.state.clock = T0 + timedelta(hours=5)

    listed = client.get("/operator/v1/requests", headers=operator).json()
    assert [(item["id"], item["sla_risk"]) for item in listed] == [(signal, "breached"), (road, "on_track")]
    assert [item["id"] for item in client.get("/operator/v1/requests?risk=breached", headers=operator).json()] \
        == [signal]
    assert [item["id"] for item in client.get("/operator/v1/requests?status=closed", headers=operator).json()] \
        == [done]
    assert len(client.get("/operator/v1/requests?limit=1", headers=operator).json()) == 1
    for bad in ("risk=doomed", "status=lost", "limit=0", "limit=x"):
        answer = client.get(f"/operator/v1/requests?{bad}", headers=operator)
        assert answer.status_code == 400, bad


def test_alerts_acknowledge_and_clear(app, client, operator):
    flood = {"id": "urn:ngsi-ld:FloodMonitoring:hd-01", "type": X("FloodMonitoring"),
             X("waterLevel"): {"type": "Property", "value": 0.45}}
    result = app.state.ioc.upsert([flood], T0)
    assert result.alerts
    alerts = client.get("/operator/v1/alerts?status=raised", headers=operator).json()
    alert = next(item for item in alerts if item["rule_id"] == "flood-water-level")
    assert alert["entity_id"] == flood["id"] and alert["status"] == "raised"

    acked = client.post(f"/operator/v1/alerts/{alert['id']}/acknowledge", headers=operator).json()
    assert acked["status"] == "acknowledged" and acked["actor"] == "Trực ban IOC"
    assert client.post(f"/operator/v1/alerts/{alert['id']}/clear", headers=operator).json()["status"] == "cleared"
    assert client.post(f"/operator/v1/alerts/{alert['id']}/clear", headers=operator).status_code == 409
    assert client.post("/operator/v1/alerts/999999/clear", headers=operator).status_code == 404
    assert client.get("/operator/v1/alerts?status=loud", headers=operator).status_code == 400
    cleared = client.get("/operator/v1/alerts?status=cleared", headers=operator).json()
    assert alert["id"] in [item["id"] for item in cleared]


def test_dashboard_figures(app, client, operator):
    report(app, client, service_code="traffic-signal")
    figures = client.get("/operator/v1/dashboard", headers=operator).json()
    assert figures["requests"]["open"] == 1 and figures["requests"]["by_service"] == {"traffic-signal": 1}


def test_admin_keys(app, client):
    admin = {"X-API-Key": app.state.ioc.create_key(Role.ADMIN, T0)[0]}
    made = client.post("/admin/v1/keys", json={"role": "device", "device_id": "wl-01",
                                              "entity_type": "FloodMonitoring", "label": "cảm biến"},
                       headers=admin)
    assert made.status_code == 201, made.text
    new = made.json()
    assert new["key"] and new["role"] == "device" and new["device_id"] == "wl-01"
    listed = client.get("/admin/v1/keys", headers=admin)
    assert new["digest"] in [item["digest"] for item in listed.json()]
    assert new["key"] not in listed.text  # the key itself is shown once, when it is made

    # The new key works at once; revoked, it stops at once (the lookup cache is dropped).
    operator = client.post("/admin/v1/keys", json={"role": "operator"}, headers=admin).json()
    assert client.get("/operator/v1/alerts", headers={"X-API-Key": operator["key"]}).status_code == 200
    assert client.delete(f"/admin/v1/keys/{operator['digest']}", headers=admin).status_code == 204
    assert client.get("/operator/v1/alerts", headers={"X-API-Key": operator["key"]}).status_code == 401
    assert client.delete("/admin/v1/keys/0000", headers=admin).status_code == 404
    own = deps.digest(admin["X-API-Key"])
    assert client.delete(f"/admin/v1/keys/{own}", headers=admin).status_code == 409

    for body in ({"role": "device"}, {"role": "root"}, {"role": "citizen", "device_id": "x"},
                 {"role": "citizen", "rate_per_s": 0}, {"role": "citizen", "extra": 1}):
        answer = client.post("/admin/v1/keys", json=body, headers=admin)
        assert answer.status_code == 400, body


def test_health_and_405(client):
    assert client.get("/health").json() == {"status": "ok", "db": "sqlite", "mqtt": "off"}
    answer = client.put("/requests.json")
    assert answer.status_code == 405 and answer.headers["Allow"] == "GET, POST"


# -- the CLI --------------------------------------------------------------------------------------------------
def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "citytwin.twin.cli", "ioc", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def test_cli_keys_and_migrate(tmp_path):
    db = f"sqlite:///{tmp_path}/ioc.db"
    assert "revision" in cli("migrate", "--db", db).stdout
    made = cli("keys", "add", "--role", "device", "--device", "aq-07", "--entity-type", "AirQualityObserved",
               "--label", "PM2.5 Hải Châu", "--rate", "2", "--db", db)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert len(key.splitlines()) == 1 and len(key) >= 20
    listed = cli("keys", "list", "--db", db)
    assert "aq-07" in listed.stdout and "AirQualityObserved" in listed.stdout and key not in listed.stdout


@pytest.mark.parametrize("args, words", [
    (("keys", "add", "--role", "mayor"), "--role"),
    (("keys", "add", "--role", "device"), "--device"),
    (("keys", "add", "--role", "citizen", "--rate", "-1"), "--rate"),
    (("migrate", "--db", "mysql://root@localhost/ioc"), "--db"),
    (("migrate", "--db", "sqlite:///no/such/dir/ioc.db"), "does not exist"),
    (("serve", "--db", "oracle://x"), "--db"),
    (("serve", "--mqtt", "http://broker"), "--mqtt"),
    (("serve", "--port", "70000"), "--port"),
    (("serve", "--scenario", "no-such-scenario.yaml"), "no-such-scenario.yaml"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, args, words):
    if "--db" not in args:
        args = (*args, "--db", f"sqlite:///{tmp_path}/ioc.db")
    done = cli(*args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_cli_serve_port_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = cli("serve", "--db", f"sqlite:///{tmp_path}/ioc.db", "--port", str(port))
    assert done.returncode == 2 and "--port" in done.stderr and "in use" in done.stderr

"""Security of the server: keys and roles, a device's own entities, the public view, input checks,
body size and content type, per-key rate limits, and keys kept out of logs."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from citytwin.ioc.core.model import Role
from citytwin.ioc.server import Settings, create_app, deps

T0 = datetime(2025, 6, 1, 1, 0, tzinfo=UTC)
MAX_BODY = 8000


@pytest.fixture
def app(tmp_path):
    app = create_app(Settings(db_url=f"sqlite:///{tmp_path}/ioc.db", mqtt_url=None, notify=False,
                              max_body_bytes=MAX_BODY))
    app.dependency_overrides[deps.now] = lambda: T0
    return app


@pytest.fixture
def client(app):
    with TestClient(app) as client:
        yield client


@pytest.fixture
def keys(app, client) -> dict[str, str]:
    make = app.state.ioc.create_key
    return {"citizen": make(Role.CITIZEN, T0)[0], "operator": make(Role.OPERATOR, T0)[0],
            "admin": make(Role.ADMIN, T0)[0], "device": make(Role.DEVICE, T0, device_id="wl-01")[0],
            "other_device": make(Role.DEVICE, T0, device_id="wl-02")[0]}


def h(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


REPORT = {"service_code": "road-damage", "lat": "16.0678", "long": "108.2208", "description": "ổ gà"}
PROTECTED = [("GET", "/operator/v1/requests"), ("GET", "/operator/v1/alerts"), ("GET", "/operator/v1/dashboard"),
             ("POST", "/operator/v1/alerts/1/clear"), ("GET", "/admin/v1/keys"),
             ("GET", "/ngsi-ld/v1/entities?type=Device")]


@pytest.mark.parametrize("method, path", PROTECTED)
def test_401_without_or_with_a_bad_key(client, keys, method, path):
    assert client.request(method, path).status_code == 401
    assert client.request(method, path, headers=h("not-a-key")).status_code == 401
    assert client.request(method, path, headers={"Authorization": "Bearer not-a-key"}).status_code == 401


def test_401_on_open311_post_and_bad_optional_key(client, keys):
    answer = client.post("/requests.json", data=REPORT)
    assert answer.status_code == 401 and answer.json()[0]["code"] == 401
    assert client.post("/requests.json", data={**REPORT, "api_key": "forged"}).status_code == 401
    answer = client.post("/requests.xml", data=REPORT)
    assert answer.status_code == 401 and ET.fromstring(answer.content).findtext("error/code") == "401"
    # Public reads need no key, but a wrong one is still refused.
    assert client.get("/requests.json").status_code == 200
    assert client.get("/requests.json?api_key=forged").status_code == 401


def test_403_for_the_wrong_role(client, keys):
    assert client.get("/operator/v1/requests", headers=h(keys["citizen"])).status_code == 403
    assert client.get("/admin/v1/keys", headers=h(keys["operator"])).status_code == 403
    assert client.post("/admin/v1/keys", json={"role": "admin"}, headers=h(keys["operator"])).status_code == 403
    answer = client.post("/requests.json", data={**REPORT, "api_key": keys["device"]})
    assert answer.status_code == 403 and answer.json()[0]["code"] == 403
    # Admin may do everything.
    assert client.get("/operator/v1/requests", headers=h(keys["admin"])).status_code == 200
    assert client.post("/requests.json", data={**REPORT, "api_key": keys["admin"]}).status_code == 201


def test_a_device_writes_only_its_own_entities(app, client, keys):
    entity = {"id": "urn:ngsi-ld:Device:wl-01", "type": "Device",
              "batteryLevel": {"type": "Property", "value": 0.9}}
    created = client.post("/ngsi-ld/v1/entityOperations/upsert", json=[entity], headers=h(keys["device"]))
    assert created.status_code in (201, 204), created.text
    patch = {"batteryLevel": {"type": "Property", "value": 0.1}}
    answer = client.patch("/ngsi-ld/v1/entities/urn:ngsi-ld:Device:wl-01/attrs", json=patch,
                          headers=h(keys["other_device"]))
    assert answer.status_code == 403
    assert answer.json()["type"].startswith("https://uri.etsi.org/ngsi-ld/errors/")
    stored = app.state.ioc.get_entity("urn:ngsi-ld:Device:wl-01")
    assert [attr["value"] for name, attr in stored.attrs.items() if name.endswith("batteryLevel")] == [0.9]


def test_the_public_view_hides_the_reporter(client, keys):
    private = {"email": "chi@example.vn", "first_name": "Chi", "last_name": "Trần Thị", "phone": "0912345678",
               "device_id": "phone-abc", "account_id": "acct-42"}
    posted = client.post("/requests.json", data={**REPORT, **private, "api_key": keys["citizen"]}).json()[0]
    for path in (f"/requests/{posted['service_request_id']}.json", f"/requests/{posted['service_request_id']}.xml",
                 "/requests.json", "/requests.xml", f"/tokens/{posted['token']}.json"):
        text = client.get(path).text
        for value in private.values():
            assert value not in text, (path, value)
    operator_view = client.get(f"/operator/v1/requests/{posted['service_request_id']}", headers=h(keys["operator"]))
    assert operator_view.json()["reporter"]["phone"] == "0912345678"


@pytest.mark.parametrize("fields, words", [
    ({"lat": "95"}, "lat"),
    ({"long": "200"}, "lon"),
    ({"lat": "abc"}, "lat"),
    ({"lat": "nan"}, "lat"),
    ({"lat": "16.0", "long": ""}, "lon"),
    ({"lat": "", "long": "", "address_string": ""}, "address"),
    ({"service_code": "unicorn-sighting"}, "unicorn-sighting"),
    ({"service_code": ""}, "service_code"),
    ({"description": "x" * 4001}, "description"),
])
def test_400_on_bad_reports(client, keys, fields, words):
    answer = client.post("/requests.json", data={**REPORT, **fields, "api_key": keys["citizen"]})
    assert answer.status_code == 400, answer.text
    [error] = answer.json()
    assert error["code"] == 400 and words in error["description"]


def test_400_on_bad_json_bodies(client, keys):
    for body in (b"{not json", b"[1, 2]", b'"text"'):
        answer = client.post("/requests.json", content=body,
                             headers={"Content-Type": "application/json", **h(keys["citizen"])})
        assert answer.status_code == 400 and "body" in answer.json()[0]["description"]
    answer = client.post("/operator/v1/requests/1/acknowledge", content=b"{nope",
                         headers={"Content-Type": "application/json", **h(keys["operator"])})
    assert answer.status_code == 400


def test_400_on_bad_dates(client):
    assert client.get("/requests.json?start_date=31/12/2024").status_code == 400
    assert client.get("/requests.json?start_date=2024-01-01&end_date=2024-12-31").status_code == 400


def test_413_for_oversized_bodies_with_length_or_chunked(client, keys):
    big = {**REPORT, "description": "x" * (MAX_BODY + 10), "api_key": keys["citizen"]}
    answer = client.post("/requests.json", data=big)
    assert answer.status_code == 413 and answer.json()[0]["code"] == 413
    answer = client.post("/requests.xml", data=big)
    assert answer.status_code == 413 and ET.fromstring(answer.content).findtext("error/code") == "413"

    def chunks():  # no Content-Length: the limit must hold while reading
        for _ in range(10):
            yield b"description=" + b"y" * (MAX_BODY // 4) + b"&"

    answer = client.post("/requests.json", content=chunks(), headers={
        "Content-Type": "application/x-www-form-urlencoded", **h(keys["citizen"])})
    assert answer.status_code == 413
    answer = client.post("/operator/v1/requests/1/acknowledge", json={"note": "z" * MAX_BODY},
                         headers=h(keys["operator"]))
    assert answer.status_code == 413 and "detail" in answer.json()
    answer = client.post("/ngsi-ld/v1/entityOperations/upsert", content=chunks(),
                         headers={"Content-Type": "application/json", **h(keys["device"])})
    assert answer.status_code == 413 and answer.json()["type"].startswith("https://uri.etsi.org/ngsi-ld/errors/")


def test_415_for_the_wrong_content_type(client, keys):
    answer = client.post("/requests.json", content=b"service_code=waste",
                         headers={"Content-Type": "text/plain", **h(keys["citizen"])})
    assert answer.status_code == 415 and answer.json()[0]["code"] == 415
    answer = client.post("/operator/v1/requests/1/acknowledge", data={"note": "x"}, headers=h(keys["operator"]))
    assert answer.status_code == 415
    answer = client.post("/admin/v1/keys", content=b"<key/>", headers={"Content-Type": "application/xml",
                                                                     **h(keys["admin"])})
    assert answer.status_code == 415


def test_429_past_the_rate_with_retry_after(app, client):
    slow = app.state.ioc.create_key(Role.CITIZEN, T0, rate_per_s=0.01)[0]  # a burst of 1, then 100 s a token
    assert client.get("/services.json", headers=h(slow)).status_code == 200
    answer = client.get("/services.json", headers=h(slow))
    assert answer.status_code == 429 and int(answer.headers["Retry-After"]) >= 1
    assert answer.json()[0]["code"] == 429
    answer = client.post("/requests.json", data={**REPORT, "api_key": slow})
    assert answer.status_code == 429 and "Retry-After" in answer.headers
    # Other keys have their own bucket; anonymous public reads are not slowed by it.
    other = app.state.ioc.create_key(Role.CITIZEN, T0, rate_per_s=0.01)[0]
    assert client.get("/services.json", headers=h(other)).status_code == 200
    assert client.get("/services.json").status_code == 200


def test_keys_never_reach_the_logs(client, keys, caplog):
    caplog.set_level(logging.DEBUG)
    citizen, operator = keys["citizen"], keys["operator"]
    client.post(f"/requests.json?api_key={citizen}", data=REPORT)
    client.post("/requests.json", data={**REPORT, "api_key": citizen})
    client.get("/operator/v1/requests", headers=h(operator))
    client.get("/operator/v1/requests", headers={"Authorization": f"Bearer {operator}"})
    client.get(f"/operator/v1/alerts?api_key={operator}&status=raised")
    client.get("/admin/v1/keys", headers=h(operator))  # a refused key
    client.get("/services.json?api_key=forged-secret-key")
    access = [record.getMessage() for record in caplog.records if record.name == "citytwin.ioc.access"]
    assert any("POST /requests.json?api_key=%2A%2A%2A 201" in line for line in access), access
    assert any("GET /operator/v1/alerts?api_key=%2A%2A%2A&status=raised 200" in line for line in access), access
    assert any("GET /admin/v1/keys 403" in line for line in access)
    # Everything the server side logged (the test's own HTTP client logs its URLs: not the server's doing).
    server_side = "\n".join(record.getMessage() for record in caplog.records
                            if not record.name.startswith(("httpx", "httpcore")))
    assert "citytwin.ioc.access" in {record.name for record in caplog.records}
    for secret in (citizen, operator, "forged-secret-key"):
        assert secret not in server_side


def test_openapi_declares_errors_and_xml(client):
    spec = client.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert {"400", "401", "403", "413", "415", "429"} <= codes, (method, path)
            # FastAPI's 422 is answered as 400; only NGSI-LD's OperationNotSupported is a 422
            assert "HTTPValidationError" not in str(operation["responses"].get("422", ""))
            assert "422" not in codes or path.startswith("/ngsi-ld/")
            if path.endswith(".xml"):
                for code, response in operation["responses"].items():
                    assert set(response.get("content", {})) == {"application/xml"}, (path, code)
    assert {"ApiKeyHeader", "Bearer", "ApiKeyQuery"} <= set(spec["components"]["securitySchemes"])
    assert {} in spec["paths"]["/requests.json"]["get"]["security"]  # public: the key is optional
    assert {} not in spec["paths"]["/operator/v1/requests"]["get"]["security"]
    post = spec["paths"]["/requests.json"]["post"]
    assert {"application/x-www-form-urlencoded", "application/json"} <= set(post["requestBody"]["content"])

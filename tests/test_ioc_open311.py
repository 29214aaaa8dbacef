"""Open311 GeoReport v2 over the real app (TestClient) and over `citytwin ioc serve` as a process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from datetime import timedelta
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from citytwin.ioc.core.model import Role
from citytwin.ioc.server import open311_xml

from conftest import IOC_T0, REPO

T0 = IOC_T0
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def app(ioc_app):
    return ioc_app


@pytest.fixture
def client(ioc_client):
    return ioc_client


def make_key(app, role: Role, **options) -> str:
    return app.state.ioc.create_key(role, T0, **options)[0]


def post_report(client, key: str, **fields) -> dict:
    body = {"service_code": "road-damage", "lat": "16.0678", "long": "108.2208",
            "description": "Ổ gà lớn trước số 12 Bạch Đằng", "email": "an@example.vn", "first_name": "An",
            "last_name": "Nguyễn", "phone": "0905123456", **fields}
    answer = client.post("/requests.json", data={"api_key": key, **body})
    assert answer.status_code == 201, answer.text
    return answer.json()[0]


def test_services_list_json_and_xml(client):
    services = client.get("/services.json").json()
    codes = {service["service_code"] for service in services}
    assert {"road-damage", "flooding", "streetlight"} <= codes
    road = next(service for service in services if service["service_code"] == "road-damage")
    assert road["service_name"] == "Hư hỏng mặt đường, ổ gà" and road["type"] == "realtime"
    assert road["metadata"] is False
    assert client.get("/services").json() == services

    answer = client.get("/services.xml")
    assert answer.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(answer.content)
    assert root.tag == "services"
    assert {el.findtext("service_code") for el in root.findall("service")} == codes
    assert any(el.findtext("service_name") == "Hư hỏng mặt đường, ổ gà" for el in root.findall("service"))


def test_service_definition_and_unknown_code(client):
    assert client.get("/services/flooding.json").json() == {"service_code": "flooding", "attributes": []}
    root = ET.fromstring(client.get("/services/flooding.xml").content)
    assert root.tag == "service_definition" and root.findtext("service_code") == "flooding"

    answer = client.get("/services/no-such-thing.json")
    assert answer.status_code == 400
    assert answer.json()[0]["code"] == 400 and "no-such-thing" in answer.json()[0]["description"]
    answer = client.get("/services/no-such-thing.xml")
    assert answer.status_code == 400
    error = ET.fromstring(answer.content).find("error")
    assert error.findtext("code") == "400" and "no-such-thing" in error.findtext("description")


def test_post_form_then_get_public_view(app, client):
    key = make_key(app, Role.CITIZEN)
    posted = post_report(client, key)
    assert set(posted) == {"service_request_id", "token", "service_notice", "account_id"}
    assert posted["account_id"] is None and posted["token"] and "72" in posted["service_notice"]

    [request] = client.get(f"/requests/{posted['service_request_id']}.json").json()
    assert request["service_request_id"] == posted["service_request_id"]
    assert request["status"] == "open" and request["service_code"] == "road-damage"
    assert request["description"] == "Ổ gà lớn trước số 12 Bạch Đằng"
    assert request["requested_datetime"] == "2025-06-01T08:00:00+07:00"
    assert request["expected_datetime"] == "2025-06-04T08:00:00+07:00"  # the 72 h deadline
    assert (request["lat"], request["long"]) == (16.0678, 108.2208)
    assert request["status_notes"] is not None
    text = client.get(f"/requests/{posted['service_request_id']}").text
    for private in ("an@example.vn", "0905123456", "Nguyễn", "token", posted["token"]):
        assert private not in text

    root = ET.fromstring(client.get(f"/requests/{posted['service_request_id']}.xml").content)
    assert root.tag == "service_requests"
    [element] = root.findall("request")
    assert element.findtext("service_request_id") == posted["service_request_id"]
    assert element.findtext("description") == "Ổ gà lớn trước số 12 Bạch Đằng"
    assert element.find("email") is None and element.find("token") is None


def test_post_raw_utf8_form_json_and_xml_answer(app, client):
    key = make_key(app, Role.CITIZEN)
    # curl -d sends UTF-8 unescaped: still UTF-8 here, not Latin-1 mojibake.
    raw = "service_code=flooding&address_string=Ngã tư Hùng Vương – Lê Duẩn&description=Nước ngập 40cm"
    answer = client.post("/requests.json", content=raw.encode(), headers={**FORM, "X-API-Key": key})
    assert answer.status_code == 201, answer.text
    [request] = client.get(f"/requests/{answer.json()[0]['service_request_id']}.json").json()
    assert request["address"] == "Ngã tư Hùng Vương – Lê Duẩn" and request["lat"] is None

    answer = client.post("/requests.json", json={"service_code": "waste", "lat": 16.06, "long": 108.22},
                         headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 201, answer.text

    answer = client.post(f"/requests.xml?api_key={quote(key)}", data={"service_code": "waste", "lat": "16.06",
                                                                     "long": "108.22"})
    assert answer.status_code == 201 and answer.headers["content-type"].startswith("application/xml")
    element = ET.fromstring(answer.content).find("request")
    assert element.findtext("service_request_id").isdigit() and element.findtext("token")


def test_idempotency_key_returns_the_first_answer(app, client):
    key = make_key(app, Role.CITIZEN)
    headers = {"X-API-Key": key, "Idempotency-Key": "report-17"}
    body = {"service_code": "streetlight", "lat": "16.07", "long": "108.22"}
    first = client.post("/requests", data=body, headers=headers).json()[0]
    again = client.post("/requests", data=body, headers=headers).json()[0]
    assert again["service_request_id"] == first["service_request_id"]
    other = client.post("/requests", data=body, headers={"X-API-Key": key}).json()[0]
    assert other["service_request_id"] != first["service_request_id"]


def test_get_requests_filters(app, client):
    key, operator = make_key(app, Role.CITIZEN), make_key(app, Role.OPERATOR)
    road = post_report(client, key)["service_request_id"]
    flood = post_report(client, key, service_code="flooding", lat="16.05")["service_request_id"]
    app.state.clock = T0 + timedelta(hours=1)
    light = post_report(client, key, service_code="streetlight", lat="16.04")["service_request_id"]
    client.post(f"/operator/v1/requests/{light}/close", json={"note": "đã sửa"}, headers={"X-API-Key": operator})

    def ids(**params) -> list[str]:
        answer = client.get("/requests.json", params=params)
        assert answer.status_code == 200, answer.text
        return [item["service_request_id"] for item in answer.json()]

    assert ids() == [light, flood, road]  # newest first
    assert ids(service_code="flooding") == [flood]
    assert ids(service_code="flooding,road-damage") == [flood, road]
    assert ids(status="open") == [flood, road]
    assert ids(status="closed") == [light]
    assert ids(service_request_id=f"{road},{light},nonsense") == [light, road]
    assert ids(start_date="2025-06-01T08:30:00+07:00") == [light]
    assert ids(end_date="2025-06-01T08:30:00") == [flood, road]  # naive: the city's local time
    [closed] = client.get(f"/requests/{light}.json").json()
    assert closed["status"] == "closed" and "đã sửa" in closed["status_notes"]

    # Default window: the last 90 days.
    app.state.clock = T0 + timedelta(days=91)
    assert ids() == []
    assert ids(start_date="2025-05-30") == [light, flood, road]


@pytest.mark.parametrize("params, field", [
    ({"start_date": "yesterday"}, "start_date"),
    ({"end_date": "2025-13-01"}, "end_date"),
    ({"start_date": "2025-01-01", "end_date": "2025-06-01"}, "90 days"),
    ({"start_date": "2025-06-02", "end_date": "2025-06-01"}, "start_date"),
    ({"status": "pending"}, "status"),
    ({"service_code": "unicorns"}, "unicorns"),
])
def test_get_requests_bad_filters_are_400(client, params, field):
    for suffix in (".json", ""):
        answer = client.get(f"/requests{suffix}", params=params)
        assert answer.status_code == 400
        assert field in answer.json()[0]["description"]
    answer = client.get("/requests.xml", params=params)
    assert answer.status_code == 400 and field in ET.fromstring(answer.content).findtext("error/description")


def test_tokens_and_unknown_ids(app, client):
    posted = post_report(client, make_key(app, Role.CITIZEN))
    assert client.get(f"/tokens/{posted['token']}.json").json() == [
        {"service_request_id": posted["service_request_id"], "token": posted["token"]}]
    element = ET.fromstring(client.get(f"/tokens/{posted['token']}.xml").content).find("request")
    assert element.findtext("service_request_id") == posted["service_request_id"]
    for path in ("/tokens/nope.json", "/requests/999999.json", "/requests/abc", "/requests/99999999999999999999"):
        answer = client.get(path)
        assert answer.status_code == 404 and answer.json()[0]["code"] == 404
    assert ET.fromstring(client.get("/requests/999999.xml").content).findtext("error/code") == "404"


def test_jurisdiction_id_is_accepted(app, client):
    assert client.get("/services.json", params={"jurisdiction_id": "danang.gov.vn"}).status_code == 200
    posted = post_report(client, make_key(app, Role.CITIZEN), jurisdiction_id="danang.gov.vn")
    assert posted["service_request_id"]


# -- the XML encoder ------------------------------------------------------------------------------------------
VIETNAMESE = "ăâđêôơưàảãáạằẳẵắặầẩẫấậèẻẽéẹềểễếệìỉĩíịòỏõóọồổỗốộờởỡớợùủũúụừửữứựỳỷỹýỵĐƯƠ"
texts = st.text(alphabet=st.one_of(st.characters(), st.sampled_from(list(VIETNAMESE + "<>&'\"\r\n\t]]>"))))


def xml_safe(text: str) -> str:
    return open311_xml._NOT_XML.sub("", text)


@given(description=texts, address=texts, code=st.text(min_size=1))
def test_xml_round_trips_any_text(description, address, code):
    items = [{"service_request_id": "7", "description": description, "address": address, "lat": 16.5,
              "media_url": None, "flag": True}, {"service_code": code}]
    root = ET.fromstring(open311_xml.document("service_requests", "request", items))
    first, second = root.findall("request")
    assert (first.findtext("description") or "") == xml_safe(description)
    assert (first.findtext("address") or "") == xml_safe(address)
    assert first.findtext("lat") == "16.5" and first.findtext("media_url") == "" and first.findtext("flag") == "true"
    assert (second.findtext("service_code") or "") == xml_safe(code)


@given(message=texts)
def test_xml_errors_round_trip(message):
    root = ET.fromstring(open311_xml.errors([{"code": 400, "description": message}]))
    assert root.tag == "errors"
    assert root.findtext("error/code") == "400"
    assert (root.findtext("error/description") or "") == xml_safe(message)


# -- the real server ----------------------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


CLI = [sys.executable, "-m", "citytwin.twin.cli", "ioc"]


def serve_and_report(db_url: str, tmp_path) -> None:
    made = subprocess.run([*CLI, "keys", "add", "--role", "citizen", "--label", "app", "--db", db_url],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    port = free_port()
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen([*CLI, "serve", "--db", db_url, "--port", str(port)], stdout=log,
                              stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                health = httpx.get(f"{base}/health", timeout=1.0)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
                time.sleep(0.1)
        assert health.json()["db"] == ("sqlite" if db_url.startswith("sqlite") else "postgresql")
        answer = httpx.post(f"{base}/requests.json", data={
            "api_key": key, "service_code": "flooding", "lat": "16.0544", "long": "108.2022",
            "description": "Ngập sâu đoạn Hoàng Diệu"}, timeout=10)
        assert answer.status_code == 201, answer.text
        request_id = answer.json()[0]["service_request_id"]
        [request] = httpx.get(f"{base}/requests/{request_id}.json", timeout=10).json()
        assert request["description"] == "Ngập sâu đoạn Hoàng Diệu"
        assert request["requested_datetime"].endswith("+07:00")
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    text = (tmp_path / "server.log").read_text()
    assert "POST /requests.json" in text and " 201 " in text  # the access log is there …
    assert key not in text  # … and the key is not


def test_cli_serve_on_sqlite(tmp_path):
    serve_and_report(f"sqlite:///{tmp_path}/ioc.db", tmp_path)


def test_cli_serve_on_postgresql(tmp_path, pg_schema_url):
    serve_and_report(pg_schema_url, tmp_path)

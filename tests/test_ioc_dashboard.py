"""The operator dashboard: its JSON API over the real app, and the page itself in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from citytwin.ioc.core import RequestDraft
from citytwin.ioc.core.ldcontext import DISPLAY, NGSI_LD
from citytwin.ioc.core.model import Alert, AlertStatus, Role, ServiceRequest, SlaRisk, Status
from citytwin.ioc.server import Settings, create_app, deps
from citytwin.ioc.server import dashboard

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LEAD_COPY = Path("/work/dashboard-screenshot.png")
FIXED = datetime(2025, 6, 2, 8, 0, tzinfo=UTC)


def _link(i: int, coords: list[list[float]], road_class: str, lanes: int) -> dict:
    return {"type": "Feature", "id": f"l{i}", "geometry": {"type": "LineString", "coordinates": coords},
            "properties": {"road_class": road_class, "lanes": lanes}}


# A small grid in Hà Nội: two arterials crossing and a few side streets.
NETWORK = {
    "type": "FeatureCollection", "name": "Hà Nội (thử nghiệm)",
    "features": [
        _link(1, [[105.80, 21.02], [105.83, 21.02], [105.86, 21.02]], "primary", 4),
        _link(2, [[105.83, 21.00], [105.83, 21.02], [105.83, 21.05]], "trunk", 6),
        _link(3, [[105.80, 21.00], [105.86, 21.00]], "residential", 1),
        _link(4, [[105.80, 21.05], [105.86, 21.05]], "secondary", 2),
        _link(5, [[105.80, 21.00], [105.80, 21.05]], "tertiary", 2),
        _link(6, [[105.86, 21.00], [105.86, 21.05]], "residential", 1),
    ],
}


def _settings(tmp_path: Path, network: dict | None = NETWORK) -> Settings:
    return Settings(db_url=f"sqlite:///{tmp_path}/ioc.db", mqtt_url=None, notify=False, network=network)


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(_settings(tmp_path))) as test_client:
        yield test_client


def _key(client: TestClient, role: Role) -> str:
    device = "sensor-1" if role is Role.DEVICE else None
    plain, _ = client.app.state.ioc.create_key(role, FIXED, label=f"test {role.value}", device_id=device)
    return plain


def _submit(ioc, code: str, at: datetime, lon: float, lat: float, text: str = "") -> ServiceRequest:
    return ioc.submit(RequestDraft(service_code=code, lon=lon, lat=lat, description=text), at)


# -- the page and its assets ---------------------------------------------------------------------------


def test_page_is_public_names_the_city_and_loads_only_its_own_assets(client):
    page = client.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "<h1 id=\"city\">Hà Nội (thử nghiệm)</h1>" in page.text
    assets = re.findall(r'(?:href|src)="([^"]+)"', page.text)
    assert sorted(assets) == ["/dashboard/static/dashboard.css", "/dashboard/static/dashboard.js", "data:,"]
    kinds = {"/dashboard/static/dashboard.css": "text/css", "/dashboard/static/dashboard.js": "text/javascript"}
    for path, kind in kinds.items():
        response = client.get(path)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(kind)
    # Offline machines: nothing may come from elsewhere (the SVG namespace is a name, not a fetch).
    for text in [page.text] + [client.get(path).text for path in kinds]:
        assert re.findall(r"https?://[^\s\"')]+", text.replace("http://www.w3.org/2000/svg", "")) == []
        assert "@import" not in text and "@font-face" not in text


def test_the_city_name_is_escaped_and_defaults_when_there_is_no_network(tmp_path):
    network = dict(NETWORK, name="<script>alert(1)</script>")
    with TestClient(create_app(_settings(tmp_path, network))) as c:
        assert "<script>alert(1)" not in c.get("/dashboard").text
        assert "&lt;script&gt;" in c.get("/dashboard").text
    assert dashboard.city_name(None) == dashboard.DEFAULT_TITLE
    assert dashboard.city_name({"type": "FeatureCollection", "features": [], "properties": {"name": "Huế"}}) == "Huế"


@pytest.mark.parametrize("name", ["dashboard.py", "dashboard.html", "..%2Fdashboard.py", "nope.js", "%2e%2e"])
def test_only_the_listed_assets_are_served(client, name):
    assert client.get(f"/dashboard/static/{name}").status_code == 404


# -- the data API --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/dashboard/api/state", "/dashboard/api/network"])
def test_data_needs_an_operator_key(client, path):
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"X-API-Key": "not-a-key"}).status_code == 401
    for role in (Role.CITIZEN, Role.DEVICE):
        denied = client.get(path, headers={"X-API-Key": _key(client, role)})
        assert denied.status_code == 403, role
    for role in (Role.OPERATOR, Role.ADMIN):
        assert client.get(path, headers={"X-API-Key": _key(client, role)}).status_code == 200, role


def test_network_is_the_configured_one_or_empty(client, tmp_path):
    key = _key(client, Role.OPERATOR)
    assert client.get("/dashboard/api/network", headers={"X-API-Key": key}).json() == NETWORK
    (tmp_path / "other").mkdir()
    with TestClient(create_app(_settings(tmp_path / "other", None))) as bare:
        body = bare.get("/dashboard/api/network", headers={"X-API-Key": _key(bare, Role.OPERATOR)}).json()
    assert body == {"type": "FeatureCollection", "features": []}


def test_state_lists_open_requests_most_urgent_first(client):
    ioc = client.app.state.ioc
    client.app.dependency_overrides[deps.now] = lambda: FIXED
    code = ioc.services()[0].code
    late = _submit(ioc, code, FIXED - timedelta(days=60), 105.81, 21.01, "Ổ gà lớn")
    fresh = _submit(ioc, code, FIXED - timedelta(minutes=1), 105.85, 21.04, "Đèn đường hỏng")
    done = _submit(ioc, code, FIXED - timedelta(hours=2), 105.82, 21.03)
    ioc.close(done.id, "operator", FIXED - timedelta(hours=1), note="đã xử lý")

    body = client.get("/dashboard/api/state", headers={"X-API-Key": _key(client, Role.OPERATOR)}).json()

    assert [r["id"] for r in body["requests"]] == [late.id, fresh.id]
    first, second = body["requests"]
    assert (first["risk"], second["risk"]) == (SlaRisk.BREACHED, SlaRisk.ON_TRACK)
    assert first["service_name"] == ioc.service(code).name and first["service_code"] == code
    assert (first["lon"], first["lat"], first["status"]) == (105.81, 21.01, Status.RECEIVED)
    assert datetime.fromisoformat(first["requested_at"]) == late.requested_at
    assert datetime.fromisoformat(first["deadline"]) == late.deadline
    assert body["summary"]["requests"]["open"] == 2
    assert body["summary"]["requests"]["by_risk"]["breached"] == 1
    assert body["alerts"] == [] and body["timezone"] == "Asia/Ho_Chi_Minh"


def _flood(ioc, sensor: str, level: float, at: datetime, lon: float = 105.825, lat: float = 21.005) -> list[Alert]:
    """A flood sensor's reading: over 0.30 m the default rules raise a high weather alert."""
    document = {
        "id": f"urn:ngsi-ld:FloodMonitoring:{sensor}", "type": DISPLAY.expand("FloodMonitoring"),
        DISPLAY.expand("waterLevel"): {"type": "Property", "value": level, "observedAt": at.isoformat()},
        NGSI_LD + "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}},
    }
    return ioc.upsert([document], at).alerts


def test_state_lists_active_alerts_latest_first(client):
    ioc = client.app.state.ioc
    client.app.dependency_overrides[deps.now] = lambda: FIXED
    [older] = _flood(ioc, "f1", 0.45, FIXED - timedelta(minutes=30))
    [newer] = _flood(ioc, "f2", 0.52, FIXED - timedelta(minutes=5), lon=105.85)
    [gone] = _flood(ioc, "f3", 0.40, FIXED - timedelta(minutes=1))
    ioc.acknowledge_alert(older.id, "operator", FIXED - timedelta(minutes=20))
    ioc.clear_alert(gone.id, "operator", FIXED)

    body = client.get("/dashboard/api/state", headers={"X-API-Key": _key(client, Role.OPERATOR)}).json()

    assert [a["id"] for a in body["alerts"]] == [newer.id, older.id]
    top = body["alerts"][0]
    assert (top["severity"], top["category"], top["status"]) == ("high", "weather", "raised")
    assert (top["lon"], top["lat"], top["entity_id"]) == (105.85, 21.005, "urn:ngsi-ld:FloodMonitoring:f2")
    assert datetime.fromisoformat(top["raised_at"]) == newer.raised_at and top["message"]
    assert body["alerts"][1]["status"] == "acknowledged"
    assert body["summary"]["alerts"]["active"] == 2


# -- the encoders --------------------------------------------------------------------------------------

aware = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
coordinate = st.one_of(st.none(), st.floats(-180, 180, allow_nan=False))


@given(text=st.text(), lon=coordinate, lat=coordinate, at=aware, sla_h=st.integers(1, 10_000),
       risk=st.sampled_from(SlaRisk), status=st.sampled_from(Status))
def test_request_items_are_json_and_keep_their_times(text, lon, lat, at, sla_h, risk, status):
    request = ServiceRequest(id=7, token="t", service_code=text or "x", status=status, requested_at=at,
                             updated_at=at, deadline=at + timedelta(hours=sla_h), agency="a", lat=lat, lon=lon)
    item = json.loads(json.dumps(dashboard.request_item(request, risk, text)))
    assert dashboard.RequestItem(**item).service_name == text
    assert datetime.fromisoformat(item["deadline"]) == request.deadline
    assert (item["lon"], item["lat"], item["risk"], item["status"]) == (lon, lat, risk.value, status.value)


@given(message=st.text(), lon=coordinate, at=aware, status=st.sampled_from(AlertStatus),
       severity=st.sampled_from(["informational", "low", "medium", "high", "critical"]))
def test_alert_items_are_json_and_keep_their_times(message, lon, at, status, severity):
    alert = Alert(id=3, rule_id="r", kind="threshold", entity_id="urn:ngsi-ld:X:1", entity_type="X",
                  severity=severity, category="environment", status=status, raised_at=at, message=message,
                  lon=lon, lat=None)
    item = json.loads(json.dumps(dashboard.alert_item(alert)))
    assert dashboard.AlertItem(**item).message == message
    assert datetime.fromisoformat(item["raised_at"]) == at
    assert (item["lon"], item["status"], item["severity"]) == (lon, status.value, severity)


# -- the page in Chromium ------------------------------------------------------------------------------


class LiveServer:
    """The app on uvicorn in a thread, on a socket bound before start (no free-port race)."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the IOC server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


def _report(base: str, key: str, code: str, lon: float, lat: float, text: str) -> str:
    answer = httpx.post(f"{base}/requests", data={"api_key": key, "service_code": code, "long": lon,
                                                  "lat": lat, "description": text}, timeout=10)
    assert answer.status_code in (200, 201), answer.text
    return str(answer.json()[0]["service_request_id"])


def _tile(page, kpi: str) -> str:
    return page.locator(f'[data-kpi="{kpi}"] .value').inner_text()


def _wait_tile(page, kpi: str, value: str) -> None:
    page.wait_for_function(
        "([kpi, value]) => document.querySelector(`[data-kpi=\"${kpi}\"] .value`).textContent === value",
        arg=[kpi, value], timeout=15_000)


def _check_png(path: Path, size: tuple[int, int]) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.size == size
        rgb = image.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20)
    # A blank or unstyled page has a handful of colours; tiles, roads, markers and text have hundreds.
    assert len(colours) > 50, f"only {len(colours)} colours: the page did not render"
    on_track = (0x3C, 0xC2, 0x74)  # the marker fill of a fresh report
    assert any(rgb_ == on_track for _, rgb_ in colours), "no on-track request marker in the screenshot"


def _browser_or_skip():
    """Playwright's sync API, driving Debian's chromium (never a downloaded browser), or a skip."""
    required = os.environ.get("CITYTWIN_REQUIRE_SERVICES") == "1"
    if not CHROMIUM.exists():
        if required:
            pytest.fail(f"{CHROMIUM} is required here (CITYTWIN_REQUIRE_SERVICES=1) but is missing")
        pytest.skip(f"{CHROMIUM} (Debian's chromium package) is not installed; the browser test needs it")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            pytest.fail("the playwright package is required here (CITYTWIN_REQUIRE_SERVICES=1)")
        pytest.skip("the playwright package (dev extra) is not installed")
    return sync_playwright


@pytest.mark.slow
def test_dashboard_shows_reports_live_in_chromium(tmp_path):
    sync_playwright = _browser_or_skip()

    app = create_app(_settings(tmp_path))
    with LiveServer(app) as server, sync_playwright() as pw:
        now = datetime.now(UTC)
        operator, _ = app.state.ioc.create_key(Role.OPERATOR, now, label="dashboard test")
        citizen, _ = app.state.ioc.create_key(Role.CITIZEN, now, label="citizen app")
        code = httpx.get(f"{server.url}/services", timeout=10).json()[0]["service_code"]
        first = _report(server.url, citizen, code, 105.815, 21.012, "Ổ gà sâu trước số 12")
        [flood] = _flood(app.state.ioc, "f1", 0.45, now)

        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{server.url}/dashboard?key={operator}&refresh=1")
            page.wait_for_selector(f'circle.marker[data-request-id="{first}"]', timeout=15_000)
            _wait_tile(page, "open", "1")
            _wait_tile(page, "alerts", "1")
            page.wait_for_selector(f'polygon.marker.sev-high[data-alert-id="{flood.id}"]')
            assert "key=" not in page.url and "refresh=1" in page.url  # the key left the address bar
            assert page.evaluate("sessionStorage.getItem('citytwin.ioc.key')") == operator
            marker = page.locator(f'circle.marker[data-request-id="{first}"]')
            assert "on_track" in marker.get_attribute("class")
            assert f"#{first}" in marker.locator("title").text_content()
            assert page.locator(".road").count() == 3  # minor, middle and major classes
            assert page.locator("#updated").inner_text() != "—"

            second = _report(server.url, citizen, code, 105.845, 21.041, "Cây đổ chắn đường")
            page.wait_for_selector(f'circle.marker[data-request-id="{second}"]', timeout=15_000)
            _wait_tile(page, "open", "2")
            assert page.locator("#urgent li").count() == 2
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot))
            _check_png(shot, (1280, 800))
            shutil.copyfile(shot, LEAD_COPY)
            assert errors == []

            for key, status in (("wrong-key", "401"), (citizen, "403")):
                other = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
                other.goto(f"{server.url}/dashboard?key={key}&refresh=1")
                other.wait_for_selector("#message:not([hidden])", timeout=15_000)
                assert f"({status})" in other.locator("#message").inner_text()
                assert _tile(other, "open") == "—"
            keyless = browser.new_context().new_page()
            keyless.goto(f"{server.url}/dashboard")
            keyless.wait_for_selector("#message:not([hidden])", timeout=15_000)
            assert "?key=" in keyless.locator("#message").inner_text()
        finally:
            browser.close()

"""The NGSI-LD API of the reference IOC: entities, batch upsert, @context rules, queries, temporal history,
subscriptions with real HTTP notifications, device rights, and the @context round trip as a property."""

from __future__ import annotations

import json
import queue
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import wait_for
from citytwin.ioc.core import ldcontext
from citytwin.ioc.core.model import Role
from citytwin.ioc.server import Settings, create_app
from citytwin.ioc.server import ngsi_render as render

V1 = "/ngsi-ld/v1"
CORE = ldcontext.CORE_CONTEXT
ENV = ldcontext.sdm_context_url("Environment")
WEATHER = ldcontext.sdm_context_url("Weather")
WATER = ldcontext.sdm_context_url("WaterQuality")
LINK_REL = "http://www.w3.org/ns/json-ld#context"
ERR = "https://uri.etsi.org/ngsi-ld/errors/"
PM25 = ldcontext.DISPLAY.expand("pm25")
AIR = ldcontext.DISPLAY.expand("AirQualityObserved")


def link(url: str) -> str:
    return f'<{url}>; rel="{LINK_REL}"; type="application/ld+json"'


class Api:
    """A TestClient with the IOC behind it and one key per role."""

    def __init__(self, client: TestClient):
        self.client = client
        self.ioc = client.app.state.ioc
        at = datetime.now(UTC)
        self.operator, _ = self.ioc.create_key(Role.OPERATOR, at, label="op")
        self.device, _ = self.ioc.create_key(Role.DEVICE, at, device_id="sensor-1",
                                             entity_type="AirQualityObserved")

    def call(self, method: str, path: str, key: str | None = "operator", body=None, ctype="application/json",
             headers: dict | None = None, **kwargs):
        sent = dict(headers or {})
        if key:
            sent["X-API-Key"] = getattr(self, key)
        if body is not None:
            sent["Content-Type"] = ctype
            kwargs["content"] = body if isinstance(body, (str, bytes)) else json.dumps(body)
        return self.client.request(method, V1 + path, headers=sent, **kwargs)


@pytest.fixture
def api(tmp_path):
    app = create_app(Settings(db_url=f"sqlite:///{tmp_path}/ioc.db", mqtt_url=None, tick_s=3600))
    with TestClient(app) as client:
        yield Api(client)


def air(n: int, pm25: float, lon: float = 106.70, lat: float = 10.77, observed: str | None = None) -> dict:
    """An AirQualityObserved entity in SDM compact form (application/json with the Environment Link)."""
    value = {"type": "Property", "value": pm25}
    if observed:
        value["observedAt"] = observed
    return {"id": f"urn:ngsi-ld:AirQualityObserved:{n}", "type": "AirQualityObserved", "pm25": value,
            "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}}}


def assert_problem(response, status: int, kind: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == ERR + kind, body
    assert body["title"] and body["detail"]


# -- batch upsert ----------------------------------------------------------------------------------------------
def test_upsert_creates_then_updates_and_is_idempotent(api):
    env = {"Link": link(ENV)}
    first = api.call("POST", "/entityOperations/upsert", body=[air(1, 12.0, observed="2024-05-01T08:00:00Z"),
                                                             air(2, 20.0)], headers=env)
    assert first.status_code == 201, first.text
    assert sorted(first.json()) == ["urn:ngsi-ld:AirQualityObserved:1", "urn:ngsi-ld:AirQualityObserved:2"]

    again = api.call("POST", "/entityOperations/upsert", body=[air(1, 12.0, observed="2024-05-01T08:00:00Z")],
                     headers=env)
    assert again.status_code == 204
    assert len(api.ioc.entity_history("urn:ngsi-ld:AirQualityObserved:1", PM25)) == 1  # same observedAt

    # options=update merges: the new attribute is added, pm25 stays.
    extra = {"id": "urn:ngsi-ld:AirQualityObserved:1", "type": "AirQualityObserved",
             "no2": {"type": "Property", "value": 40}}
    merged = api.call("POST", "/entityOperations/upsert?options=update", body=[extra], headers=env)
    assert merged.status_code == 204
    got = api.call("GET", "/entities/urn:ngsi-ld:AirQualityObserved:1", headers=env).json()
    assert got["pm25"]["value"] == 12.0 and got["no2"]["value"] == 40

    # The default (replace) drops what is not sent again.
    replaced = api.call("POST", "/entityOperations/upsert", body=[extra], headers=env)
    assert replaced.status_code == 204
    got = api.call("GET", "/entities/urn:ngsi-ld:AirQualityObserved:1", headers=env).json()
    assert "pm25" not in got and got["no2"]["value"] == 40


def test_batch_errors_are_a_batch_operation_result(api):
    bad = {"id": "urn:ngsi-ld:AirQualityObserved:9", "type": "AirQualityObserved", "pm25": 5}
    response = api.call("POST", "/entityOperations/upsert", body=[air(3, 1.0), bad], headers={"Link": link(ENV)})
    assert response.status_code == 207, response.text
    result = response.json()
    assert result["success"] == ["urn:ngsi-ld:AirQualityObserved:3"]
    assert result["errors"][0]["entityId"] == "urn:ngsi-ld:AirQualityObserved:9"
    assert result["errors"][0]["error"]["type"] == ERR + "BadRequestData"
    assert "pm25" in result["errors"][0]["error"]["detail"]

    created = api.call("POST", "/entityOperations/create", body=[air(3, 1.0), air(4, 1.0)],
                       headers={"Link": link(ENV)})
    assert created.status_code == 207
    assert created.json()["success"] == ["urn:ngsi-ld:AirQualityObserved:4"]
    assert created.json()["errors"][0]["error"]["type"] == ERR + "AlreadyExists"

    for body in ([], {"id": "urn:x:1"}):
        assert_problem(api.call("POST", "/entityOperations/upsert", body=body), 400, "BadRequestData")
    assert_problem(api.call("POST", "/entityOperations/upsert?options=sideways", body=[air(5, 1.0)]),
                   400, "BadRequestData")


def test_create_entity_location_and_conflict(api):
    response = api.call("POST", "/entities", body=air(7, 3.0), headers={"Link": link(ENV)})
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"{V1}/entities/urn:ngsi-ld:AirQualityObserved:7"
    assert_problem(api.call("POST", "/entities", body=air(7, 3.0), headers={"Link": link(ENV)}),
                   409, "AlreadyExists")
    assert_problem(api.call("GET", "/entities/urn:ngsi-ld:AirQualityObserved:404"), 404, "ResourceNotFound")
    assert_problem(api.call("GET", "/entities/not-a-uri"), 400, "BadRequestData")

    patched = api.call("PATCH", "/entities/urn:ngsi-ld:AirQualityObserved:7/attrs",
                       body={"pm25": {"type": "Property", "value": 9.5}}, headers={"Link": link(ENV)})
    assert patched.status_code == 204
    got = api.call("GET", "/entities/urn:ngsi-ld:AirQualityObserved:7?options=keyValues",
                   headers={"Link": link(ENV)}).json()
    assert got["pm25"] == 9.5 and got["location"] == {"type": "Point", "coordinates": [106.70, 10.77]}
    assert_problem(api.call("PATCH", "/entities/urn:ngsi-ld:AirQualityObserved:8/attrs",
                            body={"pm25": {"type": "Property", "value": 1}}), 404, "ResourceNotFound")

    assert api.call("DELETE", "/entities/urn:ngsi-ld:AirQualityObserved:7").status_code == 204
    assert_problem(api.call("DELETE", "/entities/urn:ngsi-ld:AirQualityObserved:7"), 404, "ResourceNotFound")


# -- @context rules ------------------------------------------------------------------------------------------
ENTITY = {"id": "urn:ngsi-ld:Thing:1", "type": "Thing", "size": {"type": "Property", "value": 1}}


@pytest.mark.parametrize("body, ctype, headers, status, kind", [
    ({**ENTITY, "@context": CORE}, "application/json", {}, 400, "BadRequestData"),  # JSON carries no @context
    (ENTITY, "application/ld+json", {}, 400, "BadRequestData"),  # JSON-LD must carry it
    ({**ENTITY, "@context": CORE}, "application/ld+json", {"Link": link(CORE)}, 400, "BadRequestData"),
    (ENTITY, "text/plain", {}, 415, None),
    (ENTITY, "application/xml", {}, 415, None),
    ({**ENTITY, "@context": "https://example.org/unknown.jsonld"}, "application/ld+json", {}, 503,
     "LdContextNotAvailable"),
    (ENTITY, "application/json", {"Link": link("https://example.org/unknown.jsonld")}, 503,
     "LdContextNotAvailable"),
    ({**ENTITY, "@context": 42}, "application/ld+json", {}, 400, "BadRequestData"),  # malformed
    ({**ENTITY, "@context": {"size": 7}}, "application/ld+json", {}, 400, "BadRequestData"),
    ({**ENTITY, "@context": ["AAA"]}, "application/ld+json", {}, 400, "BadRequestData"),  # not a URL
    (ENTITY, "application/json", {"Link": link("urn:x:context")}, 400, "BadRequestData"),
    (ENTITY, "application/json", {"Link": "not a link header"}, 400, "BadRequestData"),
    ('{"id": ', "application/json", {}, 400, "BadRequestData"),
])
def test_context_rules_on_write(api, body, ctype, headers, status, kind):
    response = api.call("POST", "/entities", body=body, ctype=ctype, headers=headers)
    assert response.status_code == status, response.text
    if kind:
        assert response.json()["type"] == ERR + kind
    assert api.call("GET", "/entities/urn:ngsi-ld:Thing:1").status_code == 404  # nothing written


def test_context_rules_on_read(api):
    assert api.call("POST", "/entities", body=ENTITY).status_code == 201
    assert_problem(api.call("GET", "/entities/urn:ngsi-ld:Thing:1",
                            headers={"Link": link("https://example.org/nowhere.jsonld")}),
                   503, "LdContextNotAvailable")
    assert_problem(api.call("GET", "/entities/urn:ngsi-ld:Thing:1", headers={"Link": "<nope"}),
                   400, "BadRequestData")
    assert_problem(api.call("GET", "/entities/urn:ngsi-ld:Thing:1", headers={"Accept": "text/html"}),
                   406, "NotAcceptable")
    plain = api.call("GET", "/entities/urn:ngsi-ld:Thing:1")
    assert plain.headers["content-type"].startswith("application/json")
    assert "@context" not in plain.json()
    assert plain.headers["link"] == link(CORE)
    ld = api.call("GET", "/entities/urn:ngsi-ld:Thing:1", headers={"Accept": "application/ld+json"})
    assert ld.headers["content-type"].startswith("application/ld+json")
    assert ld.json()["@context"] == CORE and "link" not in ld.headers
    assert ld.json()["size"]["value"] == 1 and ld.json()["type"] == "Thing"  # default vocabulary


def test_compaction_with_inline_and_smart_data_models_contexts(api):
    inline = {"temp": "http://example.org/def/temperature", "Probe": "http://example.org/def/Probe"}
    probe = {"id": "urn:ngsi-ld:Probe:1", "type": "Probe", "temp": {"type": "Property", "value": 31.5},
             "@context": [inline, CORE]}
    assert api.call("POST", "/entities", body=probe, ctype="application/ld+json").status_code == 201
    entity = api.ioc.get_entity("urn:ngsi-ld:Probe:1")
    assert entity.type == "http://example.org/def/Probe"
    assert "http://example.org/def/temperature" in entity.attrs
    # Without that context, a client sees the IRIs.
    got = api.call("GET", "/entities/urn:ngsi-ld:Probe:1").json()
    assert got["type"] == "http://example.org/def/Probe"
    assert got["http://example.org/def/temperature"]["value"] == 31.5

    # Smart Data Models: written with one domain context, read back with it, and as IRIs without it.
    sdm = {**air(1, 42.0), "@context": [ENV, CORE]}
    assert api.call("POST", "/entityOperations/upsert", body=[sdm], ctype="application/ld+json").status_code == 201
    with_env = api.call("GET", "/entities/urn:ngsi-ld:AirQualityObserved:1", headers={"Link": link(ENV)})
    assert with_env.json()["type"] == "AirQualityObserved" and with_env.json()["pm25"]["value"] == 42.0
    assert with_env.headers["link"] == link(ENV)
    as_ld = api.call("GET", "/entities/urn:ngsi-ld:AirQualityObserved:1",
                     headers={"Link": link(ENV), "Accept": "application/ld+json"}).json()
    assert as_ld["@context"] == ENV and "pm25" in as_ld
    bare = api.call("GET", "/entities/urn:ngsi-ld:AirQualityObserved:1").json()
    assert bare["type"] == AIR and PM25 in bare and "pm25" not in bare
    assert "location" in bare  # a core term whatever the context
    # A type query names the type in the caller's context.
    assert len(api.call("GET", "/entities?type=AirQualityObserved", headers={"Link": link(ENV)}).json()) == 1
    assert api.call("GET", "/entities?type=AirQualityObserved").json() == []  # another IRI without it


# -- queries -------------------------------------------------------------------------------------------------
def seed_air(api) -> None:
    # Five stations eastwards from (106.70, 10.77), about 1.09 km apart.
    body = [air(n, 10.0 * n, lon=106.70 + 0.01 * n) for n in range(5)]
    assert api.call("POST", "/entityOperations/upsert", body=body,
                    headers={"Link": link(ENV)}).status_code == 201


def test_q_near_count_and_paging(api):
    seed_air(api)
    env = {"Link": link(ENV)}

    def ids(response):
        assert response.status_code == 200, response.text
        return [e["id"].rsplit(":", 1)[1] for e in response.json()]

    assert ids(api.call("GET", "/entities?type=AirQualityObserved&q=pm25>25", headers=env)) == ["3", "4"]
    assert ids(api.call("GET", "/entities?q=pm25==10|pm25==40", headers=env)) == ["1", "4"]
    assert ids(api.call("GET", "/entities?type=AirQualityObserved&q=pm25>=10;pm25<30", headers=env)) == ["1", "2"]
    near = ("/entities?type=AirQualityObserved&georel=near;maxDistance==1500&geometry=Point"
            "&coordinates=[106.70,10.77]")
    assert ids(api.call("GET", near, headers=env)) == ["0", "1"]
    counted = api.call("GET", "/entities?type=AirQualityObserved&limit=2&offset=1&count=true", headers=env)
    assert ids(counted) == ["1", "2"] and counted.headers["NGSILD-Results-Count"] == "5"
    only_count = api.call("GET", "/entities?type=AirQualityObserved&limit=0&count=true", headers=env)
    assert only_count.json() == [] and only_count.headers["NGSILD-Results-Count"] == "5"
    assert "NGSILD-Results-Count" not in api.call("GET", "/entities?type=AirQualityObserved",
                                                  headers=env).headers

    simple = api.call("GET", "/entities?id=urn:ngsi-ld:AirQualityObserved:2&options=keyValues,sysAttrs",
                      headers=env).json()
    assert simple == [{"id": "urn:ngsi-ld:AirQualityObserved:2", "type": "AirQualityObserved", "pm25": 20.0,
                       "location": {"type": "Point", "coordinates": [106.72, 10.77]},
                       "createdAt": simple[0]["createdAt"], "modifiedAt": simple[0]["modifiedAt"]}]
    assert simple[0]["createdAt"].endswith("Z")
    projected = api.call("GET", "/entities?type=AirQualityObserved&attrs=pm25&limit=1", headers=env).json()
    assert set(projected[0]) == {"id", "type", "pm25"}
    assert api.call("GET", "/entities?attrs=no2", headers=env).json() == []  # attrs also selects


@pytest.mark.parametrize("query, status, kind", [
    ("", 400, "BadRequestData"),  # no filter at all
    ("?type=X&q=pm25>>1", 400, "BadRequestData"),
    ("?type=X&q=(pm25>1", 400, "BadRequestData"),
    ("?type=X&georel=near;maxDistance==-5&geometry=Point&coordinates=[1,2]", 400, "BadRequestData"),
    ("?type=X&georel=near;maxDistance==5&geometry=Point&coordinates=[200,2]", 400, "BadRequestData"),
    ("?type=X&georel=near;maxDistance==5&geometry=Point&coordinates=oops", 400, "BadRequestData"),
    ("?type=X&georel=near;maxDistance==5&geometry=Point", 400, "BadRequestData"),
    ("?type=X&georel=within&geometry=Polygon&coordinates=[1,2]", 422, "OperationNotSupported"),
    ("?type=X&georel=near;maxDistance==5&geometry=Polygon&coordinates=[1,2]", 422, "OperationNotSupported"),
    ("?type=X&geometry=Point&coordinates=[1,2]", 400, "BadRequestData"),  # no georel
    ("?type=X&format=fancy", 400, "BadRequestData"),
    ("?type=X&limit=1001", 400, "BadRequestData"),
    ("?type=X&limit=0", 400, "BadRequestData"),
    ("?type=X&limit=abc", 400, "BadRequestData"),
    ("?type=X&options=fancy", 400, "BadRequestData"),
])
def test_query_errors(api, query, status, kind):
    assert_problem(api.call("GET", "/entities" + query), status, kind)


# -- temporal ----------------------------------------------------------------------------------------------
def test_temporal_history(api):
    env = {"Link": link(ENV)}
    for hour, value in ((8, 11.0), (9, 22.0), (10, 33.0)):
        body = [air(1, value, observed=f"2024-05-01T{hour:02d}:00:00Z")]
        assert api.call("POST", "/entityOperations/upsert?options=update", body=body,
                        headers=env).status_code in (201, 204)
    history = api.call("GET", "/temporal/entities/urn:ngsi-ld:AirQualityObserved:1", headers=env)
    assert history.status_code == 200, history.text
    instances = history.json()["pm25"]
    assert [i["value"] for i in instances] == [11.0, 22.0, 33.0]
    assert instances[0] == {"type": "Property", "value": 11.0, "observedAt": "2024-05-01T08:00:00Z"}

    after = api.call("GET", "/temporal/entities/urn:ngsi-ld:AirQualityObserved:1?timerel=after"
                            "&timeAt=2024-05-01T08:30:00Z&attrs=pm25&options=temporalValues", headers=env).json()
    assert after["pm25"] == {"type": "Property", "values": [[22.0, "2024-05-01T09:00:00Z"],
                                                            [33.0, "2024-05-01T10:00:00Z"]]}
    last = api.call("GET", "/temporal/entities/urn:ngsi-ld:AirQualityObserved:1?lastN=1", headers=env).json()
    assert [i["value"] for i in last["pm25"]] == [33.0]
    assert_problem(api.call("GET", "/temporal/entities/urn:ngsi-ld:AirQualityObserved:1?timerel=between"
                                   "&timeAt=2024-05-01T08:30:00Z"), 400, "BadRequestData")
    assert_problem(api.call("GET", "/temporal/entities/urn:ngsi-ld:AirQualityObserved:77"), 404,
                   "ResourceNotFound")


# -- subscriptions and notifications ---------------------------------------------------------------------------
@pytest.fixture
def receiver():
    """A tiny HTTP server on 127.0.0.1 that records every POST it gets."""
    received: queue.Queue = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.put((self.path, dict(self.headers), json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_subscription_sends_a_real_notification(api, receiver):
    url, received = receiver
    inline = {"level": ldcontext.DISPLAY.expand("waterLevel"), "Gauge": ldcontext.DISPLAY.expand("FloodMonitoring")}
    subscription = {"type": "Subscription", "entities": [{"type": "Gauge"}], "watchedAttributes": ["level"],
                    "q": "level>0.2", "notification": {"attributes": ["level"],
                                                       "endpoint": {"uri": url + "/notify"}},
                    "@context": [inline, CORE]}
    created = api.call("POST", "/subscriptions", body=subscription, ctype="application/ld+json")
    assert created.status_code == 201, created.text
    sub_path = created.headers["location"].removeprefix(V1)

    gauge = {"id": "urn:ngsi-ld:FloodMonitoring:g1", "type": "FloodMonitoring",
             "waterLevel": {"type": "Property", "value": 0.1}, "name": {"type": "Property", "value": "G1"}}
    water = {"Link": link(WATER)}
    # The type and waterLevel live in two SDM domains: write with both (JSON-LD carries a list).
    assert api.call("POST", "/entityOperations/upsert", ctype="application/ld+json",
                    body=[{**gauge, "@context": [WEATHER, WATER]}]).status_code == 201
    gauge["waterLevel"]["value"] = 0.35
    assert api.call("POST", "/entityOperations/upsert", ctype="application/ld+json",
                    body=[{**gauge, "@context": [WEATHER, WATER]}]).status_code == 204

    path, headers, body = received.get(timeout=10)  # only the second write matches q
    assert path == "/notify"
    assert body["type"] == "Notification" and body["subscriptionId"] == sub_path.rsplit("/", 1)[1]
    assert body["id"].startswith("urn:ngsi-ld:Notification:")
    assert body["data"] == [{"id": "urn:ngsi-ld:FloodMonitoring:g1", "type": "Gauge",
                             "level": {"type": "Property", "value": 0.35}}]
    assert headers["Content-Type"] == "application/json"
    assert received.empty()

    shown = wait_for(lambda: (s := api.call("GET", sub_path).json())["notification"]["timesSent"] >= 1 and s)
    assert shown["notification"]["status"] == "ok"
    assert shown["watchedAttributes"] == [ldcontext.DISPLAY.expand("waterLevel")]  # no Link: IRIs
    with_water = api.call("GET", sub_path, headers=water).json()
    assert with_water["watchedAttributes"] == ["waterLevel"] and with_water["q"] == "waterLevel>0.2"
    listed = api.call("GET", "/subscriptions?count=true")
    assert listed.headers["NGSILD-Results-Count"] == "1" and listed.json()[0]["id"] == shown["id"]

    # Paused: no notification; then deleted.
    assert api.call("PATCH", sub_path, body={"isActive": False}).status_code == 204
    assert api.call("GET", sub_path).json()["isActive"] is False
    gauge["waterLevel"]["value"] = 0.5
    api.call("POST", "/entityOperations/upsert", ctype="application/ld+json",
             body=[{**gauge, "@context": [WEATHER, WATER]}])
    assert api.call("DELETE", sub_path).status_code == 204
    assert_problem(api.call("GET", sub_path), 404, "ResourceNotFound")
    assert_problem(api.call("DELETE", sub_path), 404, "ResourceNotFound")
    with pytest.raises(queue.Empty):
        received.get(timeout=0.3)


def test_subscription_validation(api):
    good = {"type": "Subscription", "entities": [{"type": "Thing"}],
            "notification": {"endpoint": {"uri": "http://127.0.0.1:9/x"}}}
    assert api.call("POST", "/subscriptions", body={**good, "id": "urn:ngsi-ld:Subscription:a"}).status_code == 201
    assert_problem(api.call("POST", "/subscriptions", body={**good, "id": "urn:ngsi-ld:Subscription:a"}),
                   409, "AlreadyExists")
    for bad in ({**good, "type": "Thing"}, {**good, "entities": []},
                {**good, "notification": {"endpoint": {"uri": "ftp://x/"}}},
                {**good, "throttling": -1}, {**good, "q": "a>>"}):
        assert_problem(api.call("POST", "/subscriptions", body=bad), 400, "BadRequestData")
    assert_problem(api.call("POST", "/subscriptions", body={**good, "geoQ": {}}), 422, "OperationNotSupported")
    assert_problem(api.call("POST", "/subscriptions", body=good, key="device"), 403, "PermissionDenied")


# -- who may do what ------------------------------------------------------------------------------------------
def test_device_key_writes_and_reads_only_its_own_entities(api):
    own = {"id": "urn:ngsi-ld:AirQualityObserved:sensor-1", "type": "AirQualityObserved",
           "pm25": {"type": "Property", "value": 5.0}}
    other = {**own, "id": "urn:ngsi-ld:AirQualityObserved:other"}
    env = {"Link": link(ENV)}
    assert api.call("POST", "/entities", body=other, headers=env).status_code == 201  # the operator's
    assert api.call("POST", "/entities", body=own, key="device", headers=env).status_code == 201
    assert api.ioc.get_entity(own["id"]).owner == "sensor-1"
    assert api.call("POST", "/entityOperations/upsert", body=[own], key="device", headers=env).status_code == 204

    assert_problem(api.call("PATCH", f"/entities/{other['id']}/attrs", key="device", headers=env,
                            body={"pm25": {"type": "Property", "value": 1}}), 403, "PermissionDenied")
    mixed = api.call("POST", "/entityOperations/upsert", body=[own, other], key="device", headers=env)
    assert mixed.status_code == 207
    assert mixed.json()["errors"][0]["entityId"] == other["id"]
    assert mixed.json()["errors"][0]["error"]["status"] == 403
    assert api.ioc.get_entity(other["id"]).attrs[PM25]["value"] == 5.0  # untouched

    assert api.call("GET", f"/entities/{own['id']}", key="device").status_code == 200
    assert_problem(api.call("GET", f"/entities/{other['id']}", key="device"), 403, "PermissionDenied")
    assert_problem(api.call("GET", "/entities?type=X", key="device"), 403, "PermissionDenied")
    assert_problem(api.call("DELETE", f"/entities/{other['id']}", key="device"), 403, "PermissionDenied")
    assert_problem(api.call("GET", "/entities?type=X", key=None), 401, "Unauthorized")


def test_wrong_method_lists_every_allowed_one(api):
    response = api.call("PUT", "/entities", body=ENTITY)
    assert_problem(response, 405, "InvalidRequest")
    assert response.headers["allow"] == "GET, POST"
    assert api.call("OPTIONS", "/subscriptions/urn:ngsi-ld:Subscription:x").headers["allow"] == "DELETE, GET, PATCH"


def test_openapi_declares_the_ngsi_ld_answers(api):
    spec = api.client.get("/openapi.json").json()
    upsert = spec["paths"][f"{V1}/entityOperations/upsert"]["post"]
    assert {"201", "204", "207", "400", "415", "503"} <= set(upsert["responses"])
    assert set(upsert["requestBody"]["content"]) == {"application/json", "application/ld+json"}
    query = spec["paths"][f"{V1}/entities"]["get"]
    assert "NGSILD-Results-Count" in query["responses"]["200"]["headers"]
    assert {"application/json", "application/ld+json"} <= set(query["responses"]["200"]["content"])


# -- properties -------------------------------------------------------------------------------------------------
_reserved = ldcontext.CORE_KEYWORDS | set(ldcontext.CORE_TERMS) | {"id", "type"}
terms = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,12}", fullmatch=True).filter(lambda t: t not in _reserved)


@settings(max_examples=150, deadline=None)
@given(defined=st.lists(terms, max_size=6, unique=True), undefined=st.lists(terms, max_size=4, unique=True),
       base=st.sampled_from(["http://example.org/a/", "https://w3id.org/x#", "urn:test:"]),
       vocab=st.one_of(st.none(), st.just("http://vocab.example/")))
def test_expand_then_compact_gives_back_the_attribute_names(defined, undefined, base, vocab):
    undefined = [t for t in undefined if t not in defined]
    inline = {term: base + term for term in defined}
    if vocab:
        inline["@vocab"] = vocab
    context = ldcontext.resolve([inline, CORE])
    names = defined + undefined
    compact = {"id": "urn:ngsi-ld:T:1", "type": "T", **{n: {"type": "Property", "value": i}
                                                         for i, n in enumerate(names)}}
    expanded = ldcontext.expand_entity(compact, context)
    assert all(expanded[base + t]["type"] == "Property" for t in defined)
    assert render.render_entity(expanded, context) == compact


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(terms, st.sampled_from(["==", "!=", ">", ">=", "<", "<="]),
                          st.integers(-1000, 1000)), min_size=1, max_size=4),
       st.lists(st.sampled_from([";", "|"]), min_size=3, max_size=3))
def test_q_names_round_trip_through_a_context(clauses, joins):
    context = ldcontext.resolve([{name: f"http://example.org/{name}" for name, _, _ in clauses}, CORE])
    q = "".join(f"{joins[i - 1] if i else ''}{name}{op}{value}" for i, (name, op, value) in enumerate(clauses))
    expanded = render.expand_q(q, context)
    assert all(f"http://example.org/{name}{op}{value}" in expanded for name, op, value in clauses)
    assert render.compact_q(expanded, context) == q


# -- the notifier on its own ------------------------------------------------------------------------------------
def test_notifier_throttles_and_records_failures(receiver):
    import asyncio
    import socket

    from citytwin.ioc.core import IOC, MemoryStore, Subscription
    from citytwin.ioc.server.notify import Notifier

    url, received = receiver
    with socket.socket() as probe:  # a port nobody listens on: the connection is refused
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/"
    ioc = IOC(MemoryStore())
    gauge_type = ldcontext.DISPLAY.expand("FloodMonitoring")
    level = ldcontext.DISPLAY.expand("waterLevel")
    ioc.subscribe(Subscription(id="urn:ngsi-ld:Subscription:slow", entity_types=(gauge_type,),
                               endpoint=url + "/slow", throttling_s=0.8, context=WATER))
    ioc.subscribe(Subscription(id="urn:ngsi-ld:Subscription:dead", entity_types=(gauge_type,), endpoint=dead))

    def write(value: float):
        doc = {"id": "urn:ngsi-ld:FloodMonitoring:t", "type": gauge_type, level: {"type": "Property", "value": value}}
        return ioc.upsert([doc], datetime.now(UTC))

    async def scenario():
        notifier = Notifier(ioc)
        notifier.start()
        try:
            for value in (0.1, 0.2, 0.3):  # from another thread, as the MQTT worker does
                await asyncio.to_thread(notifier.submit, await asyncio.to_thread(write, value))
            first = await asyncio.to_thread(received.get, True, 10)
            second = await asyncio.to_thread(received.get, True, 10)
            await asyncio.to_thread(wait_for, lambda: ioc.subscription("urn:ngsi-ld:Subscription:dead").last_failure)
            await asyncio.to_thread(wait_for, lambda: ioc.subscription("urn:ngsi-ld:Subscription:slow").times_sent == 2)
            return first, second
        finally:
            await notifier.stop()

    first, second = asyncio.run(scenario())
    assert first[2]["data"][0]["waterLevel"]["value"] == 0.1
    assert first[1]["Link"] == link(WATER)
    # What changed during the throttling period goes out once, in its newest state.
    assert [e["waterLevel"]["value"] for e in second[2]["data"]] == [0.3]
    assert received.empty()
    assert ioc.subscription("urn:ngsi-ld:Subscription:slow").last_failure is None

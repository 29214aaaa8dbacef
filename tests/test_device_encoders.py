"""Device encoders: NGSI-LD (Smart Data Models) and IoT Agent JSON round trips, model fields, IOC acceptance."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citytwin.devices_sim import encoders as enc
from citytwin.devices_sim.encoders import (
    AirQuality,
    BusPosition,
    CameraAlert,
    Noise,
    RainGauge,
    TrafficFlow,
    WaterLevel,
)
from citytwin.ioc.core import IOC, MemoryStore
from citytwin.ioc.core import entities as ent
from citytwin.ioc.core import ldcontext
from citytwin.ioc.server import mqtt_ingest

NOW = datetime(2024, 10, 14, 12, 0, tzinfo=timezone.utc)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies -------------------------------------------------------------------------------------------

zones = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=zones)
devices = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]{0,30}\Z")
lons = st.floats(-180, 180, allow_nan=False)
lats = st.floats(-90, 90, allow_nan=False)
nonneg = st.floats(0, 1e9, allow_nan=False, allow_infinity=False)
text = st.text(max_size=40)
base = dict(device_id=devices, lon=lons, lat=lats, observed_at=moments)


@st.composite
def traffic(draw):
    start = draw(moments)
    return TrafficFlow(**{k: draw(v) for k, v in base.items()}, intensity=draw(st.integers(0, 10**6)),
                       occupancy=draw(st.floats(0, 1)), average_vehicle_speed=draw(nonneg),
                       date_observed_from=start,
                       date_observed_to=start + draw(st.timedeltas(timedelta(0), timedelta(hours=2))))


OBSERVATIONS = {
    "TrafficFlowObserved": traffic(),
    "AirQualityObserved": st.builds(AirQuality, **base, pm25=nonneg, pm10=nonneg, no2=nonneg, co=nonneg),
    "NoiseLevelObserved": st.builds(Noise, **base, laeq=st.floats(0, 250), lamax=st.floats(0, 250)),
    "FloodMonitoring": st.builds(WaterLevel, **base, level_m=st.floats(-1000, 10000),
                                 warning_level_m=st.floats(-1000, 10000),
                                 warning_state=st.sampled_from(enc.FLOOD_RISK)),
    "WeatherObserved": st.builds(RainGauge, **base, precipitation=nonneg),
    "Vehicle": st.builds(BusPosition, **base, speed=st.floats(0, 200), heading=st.floats(0, 360),
                         route_id=st.text(min_size=1, max_size=12)),
    "Alert": st.builds(CameraAlert, **base, category=st.sampled_from(enc.ALERT_CATEGORIES),
                       sub_category=st.sampled_from(["trafficJam", "carAccident", "carWrongDirection", "flood"]),
                       severity=st.sampled_from(enc.ALERT_SEVERITIES), description=text, date_issued=moments),
}
KIND_NAMES = sorted(OBSERVATIONS)
assert set(KIND_NAMES) == set(enc.BY_TYPE)


def expanded(doc: dict) -> dict:
    return ldcontext.expand_entity(doc, ldcontext.resolve(doc["@context"]))


def same(a, b) -> bool:
    """Exact equality, with datetimes equal as instants to the microsecond."""
    return type(a) is type(b) and a == b and repr(a.lon) == repr(b.lon) and repr(a.lat) == repr(b.lat)


# -- (1) NGSI-LD round trip ---------------------------------------------------------------------------------

@pytest.mark.parametrize("type_name", KIND_NAMES)
@FAST
@given(data=st.data())
def test_ngsi_ld_round_trip(type_name, data):
    obs = data.draw(OBSERVATIONS[type_name])
    doc = to_json_and_back(enc.to_ngsi_ld(obs))
    back = enc.from_ngsi_ld(doc)
    assert same(back, obs)
    for spec in type(obs).FIELDS:
        assert getattr(back, spec.name) == getattr(obs, spec.name)
    # also from the expanded form the IOC stores
    assert same(enc.from_ngsi_ld(expanded(doc)), obs)


def to_json_and_back(doc):
    text = json.dumps(doc, allow_nan=False)
    return json.loads(text)


# -- (2) the model's required fields, with valid types ------------------------------------------------------

@pytest.mark.parametrize("type_name", KIND_NAMES)
@FAST
@given(data=st.data())
def test_entity_has_required_fields(type_name, data):
    obs = data.draw(OBSERVATIONS[type_name])
    doc = enc.to_ngsi_ld(obs)
    kind = type(obs)
    assert doc["type"] == type_name
    assert doc["id"] == f"urn:ngsi-ld:{type_name}:{obs.device_id}"
    assert doc["@context"] == [ldcontext.sdm_context_url(kind.DOMAIN), ldcontext.CORE_CONTEXT]
    ctx = ldcontext.resolve(doc["@context"])
    assert ctx.expand(type_name).startswith(f"{ldcontext.SDM}dataModel.{kind.DOMAIN}/")  # a term of the domain
    for name in enc.REQUIRED[type_name]:
        assert name in doc, name
        assert doc[name]["type"] in ("Property", "GeoProperty")
        # every attribute is a term of the context (not the default vocabulary)
        assert not ctx.expand(name).startswith(ldcontext.DEFAULT_VOCAB), name
    loc = doc["location"]
    assert loc["type"] == "GeoProperty" and loc["value"]["type"] == "Point"
    lon, lat = loc["value"]["coordinates"]
    assert -180 <= lon <= 180 and -90 <= lat <= 90
    at = ent.parse_time(loc["observedAt"], "observedAt")
    assert at == obs.observed_at and loc["observedAt"].endswith("Z")
    for spec in kind.FIELDS:
        attr = doc[spec.attr]
        value = attr["value"]
        if spec.kind in ("float", "count"):
            assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            assert spec.lo <= value <= spec.hi
            if spec.kind == "count":
                assert isinstance(value, int) and value >= 0
        elif spec.kind == "time":
            assert value["@type"] == "DateTime"
            ent.parse_time(value["@value"], spec.attr)
        else:
            assert isinstance(value, str)
            if spec.choices:
                assert value in spec.choices
        if spec.measured:
            assert attr["observedAt"] == loc["observedAt"]
        assert attr.get("unitCode") == spec.unit
    if type_name == "TrafficFlowObserved":
        start, _, end = doc["dateObserved"]["value"].partition("/")
        assert ent.parse_time(start, "s") <= ent.parse_time(end, "e")


# -- (3) the reference IOC accepts it ---------------------------------------------------------------------------

@pytest.mark.parametrize("type_name", KIND_NAMES)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_reference_ioc_accepts(type_name, data):
    obs = data.draw(OBSERVATIONS[type_name])
    doc = expanded(enc.to_ngsi_ld(obs))
    checked = ent.validate(doc)
    assert checked.location == (obs.lon, obs.lat)
    ioc = IOC(MemoryStore())
    ioc.upsert([doc], NOW)
    stored = ioc.get_entity(doc["id"])
    ctx = ldcontext.resolve(enc.context_of(type(obs)))
    for spec in type(obs).FIELDS:
        assert ent.attr_value(stored, ctx.expand(spec.attr)) == doc[ctx.expand(spec.attr)]["value"]
    assert same(enc.from_ngsi_ld(ent.to_document(stored)), obs)


# -- (4) IoT Agent JSON ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("type_name", KIND_NAMES)
@FAST
@given(data=st.data())
def test_iota_json_round_trip(type_name, data):
    obs = data.draw(OBSERVATIONS[type_name])
    attrs, suffix = enc.to_iota_json(obs)
    payload = json.dumps(attrs, allow_nan=False)  # raises on NaN/inf
    decoded = json.loads(payload)
    assert suffix == f"/{obs.device_id}/attrs"
    topic = enc.iota_topic("key123", obs.device_id)
    assert topic == "/json/key123" + suffix
    assert mqtt_ingest.split_topic(topic) == ("key123", obs.device_id, None)
    assert isinstance(decoded["TimeInstant"], str)
    for value in decoded.values():
        if isinstance(value, float):
            assert math.isfinite(value)
    assert same(enc.from_iota_json(decoded, obs.device_id, type_name), obs)
    assert same(enc.from_iota_json(decoded, topic, type_name), obs)
    # the IOC's MQTT ingest makes the same attributes (expanded names, values, observedAt) as NGSI-LD
    groups = mqtt_ingest.measures_of(payload.encode(), None)
    via_mqtt = mqtt_ingest.to_document(obs.device_id, type_name, groups[0])
    ent.validate(via_mqtt)
    via_ld = expanded(enc.to_ngsi_ld(obs))
    assert via_mqtt["id"] == via_ld["id"] and via_mqtt["type"] == via_ld["type"]
    for spec in type(obs).FIELDS:
        iri = ldcontext.resolve(enc.context_of(type(obs))).expand(spec.attr)
        assert iri in via_mqtt
        if spec.kind != "time":
            assert via_mqtt[iri]["value"] == via_ld[iri]["value"]
    assert via_mqtt[ldcontext.NGSI_LD + "location"]["value"] == via_ld[ldcontext.NGSI_LD + "location"]["value"]


# -- bad observations -------------------------------------------------------------------------------------------

GOOD = dict(device_id="det-1", lon=108.22, lat=16.07, observed_at=NOW)


def good_traffic(**over):
    args = dict(GOOD, intensity=12, occupancy=0.3, average_vehicle_speed=32.5,
                date_observed_from=NOW - timedelta(minutes=5), date_observed_to=NOW)
    args.update(over)
    return TrafficFlow(**args)


@pytest.mark.parametrize("over, field", [
    (dict(intensity=-1), "intensity"),
    (dict(intensity=2.5), "intensity"),
    (dict(occupancy=1.01), "occupancy"),
    (dict(occupancy=-0.1), "occupancy"),
    (dict(occupancy=math.nan), "occupancy"),
    (dict(average_vehicle_speed=math.inf), "average_vehicle_speed"),
    (dict(average_vehicle_speed=-3.0), "average_vehicle_speed"),
    (dict(observed_at=datetime(2024, 1, 1)), "observed_at"),
    (dict(date_observed_from=datetime(2024, 1, 1)), "date_observed_from"),
    (dict(date_observed_to=NOW - timedelta(hours=1)), "date_observed_to"),
    (dict(lon=181.0), "lon"),
    (dict(lat=math.nan), "lat"),
    (dict(device_id="a/b"), "device_id"),
    (dict(device_id=""), "device_id"),
])
def test_bad_traffic_rejected(over, field):
    with pytest.raises(ValueError, match=field):
        good_traffic(**over)


@pytest.mark.parametrize("make, field", [
    (lambda: AirQuality(**GOOD, pm25=math.nan, pm10=1, no2=1, co=1), "pm25"),
    (lambda: AirQuality(**GOOD, pm25=1, pm10=-1, no2=1, co=1), "pm10"),
    (lambda: Noise(**GOOD, laeq=60, lamax=math.inf), "lamax"),
    (lambda: WaterLevel(**GOOD, level_m=1.2, warning_level_m=1.0, warning_state="panic"), "warning_state"),
    (lambda: WaterLevel(**GOOD, level_m=math.nan, warning_level_m=1.0, warning_state="high"), "level_m"),
    (lambda: RainGauge(**GOOD, precipitation=-0.5), "precipitation"),
    (lambda: RainGauge(**GOOD, precipitation=math.nan), "precipitation"),
    (lambda: BusPosition(**GOOD, speed=-1, heading=0, route_id="R1"), "speed"),
    (lambda: BusPosition(**GOOD, speed=10, heading=400, route_id="R1"), "heading"),
    (lambda: BusPosition(**GOOD, speed=10, heading=10, route_id=""), "route_id"),
    (lambda: CameraAlert(**GOOD, category="traffic", sub_category="carAccident", severity="apocalyptic",
                         description="", date_issued=NOW), "severity"),
    (lambda: CameraAlert(**GOOD, category="traffic", sub_category="carAccident", severity="high",
                         description="", date_issued=datetime(2024, 1, 1)), "date_issued"),
])
def test_bad_observations_rejected(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_decoders_reject_bad_documents():
    doc = enc.to_ngsi_ld(good_traffic())
    with pytest.raises(ValueError, match="occupancy"):
        enc.from_ngsi_ld({**doc, "occupancy": {"type": "Property", "value": 1.5}})
    with pytest.raises(ValueError, match="type"):
        enc.from_ngsi_ld({**doc, "type": "Parking"})
    with pytest.raises(ValueError, match="id"):
        enc.from_ngsi_ld({**doc, "id": "urn:ngsi-ld:Vehicle:x"})
    naive = dict(doc["location"], observedAt="2024-01-01T00:00:00")
    with pytest.raises(ValueError, match="observedAt"):
        enc.from_ngsi_ld({**doc, "location": naive})
    attrs, _ = enc.to_iota_json(good_traffic())
    with pytest.raises(ValueError, match="intensity"):
        enc.from_iota_json({**attrs, "intensity": -4}, "det-1", "TrafficFlowObserved")
    with pytest.raises(ValueError, match="TimeInstant"):
        enc.from_iota_json({k: v for k, v in attrs.items() if k != "TimeInstant"}, "det-1",
                           "TrafficFlowObserved")
    with pytest.raises(ValueError, match="apikey"):
        enc.iota_topic("a/b", "det-1")


def test_rain_gauge_is_weather_observed():
    obs = RainGauge(**GOOD, precipitation=12.5)
    doc = enc.to_ngsi_ld(obs)
    assert doc["type"] == "WeatherObserved" and doc["@context"][0].endswith("dataModel.Weather/master/context.jsonld")
    assert doc["precipitation"] == {"type": "Property", "value": 12.5, "observedAt": enc.iso(NOW), "unitCode": "MMT"}
    assert doc["dateObserved"]["value"] == enc.iso(NOW)
    weather = ldcontext.SDM + "dataModel.Weather/"
    assert expanded(doc)[weather + "precipitation"]["value"] == 12.5
    # the IOC names it the same whichever way it arrives (the Environment term stays for air stations)
    assert ldcontext.DISPLAY.expand("precipitation") == weather + "precipitation"
    assert "precipitation" in ldcontext.SDM_DOMAIN_TERMS["Environment"]
    attrs, _ = enc.to_iota_json(obs)
    assert attrs["precipitation"] == 12.5
    assert enc.from_iota_json(json.loads(json.dumps(attrs)), "det-1", "WeatherObserved") == obs

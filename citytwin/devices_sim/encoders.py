"""Device encoders: observations as NGSI-LD entities (Smart Data Models) and FIWARE IoT Agent JSON measures.

Every observation kind is a small frozen dataclass with a device id, a WGS84 position (lon, lat) and a
timezone-aware `observed_at`. Each maps to one Smart Data Models entity type:

==================  ======================  =====================================================
observation         entity type             @context (SDM domain + NGSI-LD core)
==================  ======================  =====================================================
TrafficFlow         TrafficFlowObserved     dataModel.Transportation
AirQuality          AirQualityObserved      dataModel.Environment
Noise               NoiseLevelObserved      dataModel.Environment
WaterLevel          FloodMonitoring         dataModel.Weather (as the IOC's `ldcontext` knows it)
RainGauge           WeatherObserved         dataModel.Weather
BusPosition         Vehicle                 dataModel.Transportation
CameraAlert         Alert                   dataModel.Alert
==================  ======================  =====================================================

Water level uses `FloodMonitoring` (currentLevel / referenceLevel / floodRisk), not `WaterQualityObserved`:
the latter is about water chemistry (its `waterLevel` is incidental) and has no warning threshold or state,
while FloodMonitoring is the SDM model for river/drain levels against a reference level with a flood risk.

`to_ngsi_ld` gives a compact, normalised entity whose terms resolve with `citytwin.ioc.core.ldcontext`
(offline): measured Properties carry `observedAt` and UN/CEFACT `unitCode`s, `location` is a GeoJSON Point
GeoProperty, `id` is `urn:ngsi-ld:<Type>:<device>`. `to_iota_json` gives the IoT Agent JSON measures for
`/json/{apikey}/{device}/attrs` with the same short names, which the IOC's `mqtt_ingest` maps to the same
expanded attributes. Both have decoders that give the observation back exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, ClassVar, NamedTuple

from citytwin.ioc.core import ldcontext

CORE_CONTEXT = ldcontext.CORE_CONTEXT
DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")

# UN/CEFACT common codes
KMH = "KMH"   # kilometre per hour
C62 = "C62"   # one (dimensionless ratio)
GQ = "GQ"     # microgram per cubic metre
GP = "GP"     # milligram per cubic metre
DB = "2N"     # decibel
MTR = "MTR"   # metre
DD = "DD"     # degree (angle)
MMT = "MMT"   # millimetre

FLOOD_RISK = ("none", "low", "moderate", "high", "severe")
ALERT_CATEGORIES = ("traffic", "naturalDisaster", "weather", "environment", "health", "security",
                    "agriculture")
ALERT_SEVERITIES = ("informational", "low", "medium", "high", "critical")


class Field(NamedTuple):
    """One observation field and the attribute it becomes."""

    name: str            # dataclass field
    attr: str            # SDM short attribute name
    kind: str            # "float" | "count" | "str" | "enum" | "time"
    unit: str | None = None
    lo: float = -math.inf
    hi: float = math.inf
    choices: tuple[str, ...] = ()
    measured: bool = True  # carries observedAt


# -- observations ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Observation:
    device_id: str
    lon: float
    lat: float
    observed_at: datetime

    ENTITY_TYPE: ClassVar[str] = ""
    DOMAIN: ClassVar[str] = ""
    FIELDS: ClassVar[tuple[Field, ...]] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.device_id, str) or not DEVICE_ID.match(self.device_id):
            raise ValueError(f"device_id: {self.device_id!r} must be 1-128 characters of letters, digits, "
                             "'_', '.', '-' (it goes into a URN and an MQTT topic)")
        _set(self, "lon", _number("lon", self.lon, -180.0, 180.0))
        _set(self, "lat", _number("lat", self.lat, -90.0, 90.0))
        _check_time("observed_at", self.observed_at)
        for spec in self.FIELDS:
            value = getattr(self, spec.name)
            if spec.kind == "float":
                _set(self, spec.name, _number(spec.name, value, spec.lo, spec.hi))
            elif spec.kind == "count":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"{spec.name}: must be an integer count, got {value!r}")
                if value < 0:
                    raise ValueError(f"{spec.name}: a count cannot be negative, got {value}")
            elif spec.kind == "time":
                _check_time(spec.name, value)
            elif not isinstance(value, str):
                raise ValueError(f"{spec.name}: must be a string, got {value!r}")
            elif spec.kind == "enum" and value not in spec.choices:
                raise ValueError(f"{spec.name}: {value!r} is not one of {', '.join(spec.choices)}")
            elif spec.kind == "str" and spec.lo > 0 and not value:
                raise ValueError(f"{spec.name}: must not be empty")

    def constants(self) -> dict[str, Any]:
        """Attributes the model wants that follow from the observation (not decoded back)."""
        return {"dateObserved": iso(self.observed_at)}


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


def _number(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value}")
    if not lo <= value <= hi:
        raise ValueError(f"{name}: {value} is outside [{lo}, {hi}]")
    return value


def _check_time(name: str, value: Any) -> None:
    if not isinstance(value, datetime):
        raise ValueError(f"{name}: must be a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name}: must be timezone-aware (a naive datetime is ambiguous)")
    try:
        value.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        raise ValueError(f"{name}: {value!r} is out of range in UTC") from None


@dataclass(frozen=True)
class TrafficFlow(Observation):
    """Traffic on a link over [date_observed_from, date_observed_to]."""

    intensity: int                    # vehicles in the interval
    occupancy: float                  # 0..1
    average_vehicle_speed: float      # km/h
    date_observed_from: datetime
    date_observed_to: datetime

    ENTITY_TYPE: ClassVar[str] = "TrafficFlowObserved"
    DOMAIN: ClassVar[str] = "Transportation"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("intensity", "intensity", "count"),
        Field("occupancy", "occupancy", "float", C62, 0.0, 1.0),
        Field("average_vehicle_speed", "averageVehicleSpeed", "float", KMH, 0.0),
        Field("date_observed_from", "dateObservedFrom", "time", measured=False),
        Field("date_observed_to", "dateObservedTo", "time", measured=False),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.date_observed_to < self.date_observed_from:
            raise ValueError("date_observed_to: the interval ends before it starts")

    def constants(self) -> dict[str, Any]:
        return {"dateObserved": f"{iso(self.date_observed_from)}/{iso(self.date_observed_to)}"}


@dataclass(frozen=True)
class AirQuality(Observation):
    pm25: float   # µg/m³
    pm10: float   # µg/m³
    no2: float    # µg/m³
    co: float     # mg/m³

    ENTITY_TYPE: ClassVar[str] = "AirQualityObserved"
    DOMAIN: ClassVar[str] = "Environment"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("pm25", "pm25", "float", GQ, 0.0),
        Field("pm10", "pm10", "float", GQ, 0.0),
        Field("no2", "no2", "float", GQ, 0.0),
        Field("co", "co", "float", GP, 0.0),
    )


@dataclass(frozen=True)
class Noise(Observation):
    laeq: float   # dB(A)
    lamax: float  # dB(A)

    ENTITY_TYPE: ClassVar[str] = "NoiseLevelObserved"
    DOMAIN: ClassVar[str] = "Environment"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("laeq", "LAeq", "float", DB, 0.0, 250.0),
        Field("lamax", "LAmax", "float", DB, 0.0, 250.0),
    )


@dataclass(frozen=True)
class WaterLevel(Observation):
    """Water level at a gauge (m above the local datum) against its warning level, with a warning state."""

    level_m: float
    warning_level_m: float
    warning_state: str  # one of FLOOD_RISK

    ENTITY_TYPE: ClassVar[str] = "FloodMonitoring"
    DOMAIN: ClassVar[str] = "Weather"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("level_m", "currentLevel", "float", MTR, -1000.0, 10000.0),
        Field("warning_level_m", "referenceLevel", "float", MTR, -1000.0, 10000.0, measured=False),
        Field("warning_state", "floodRisk", "enum", choices=FLOOD_RISK),
    )


@dataclass(frozen=True)
class RainGauge(Observation):
    """Rain at a gauge: the precipitation over the sampling interval ending at `observed_at`."""

    precipitation: float  # mm over the interval

    ENTITY_TYPE: ClassVar[str] = "WeatherObserved"
    DOMAIN: ClassVar[str] = "Weather"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("precipitation", "precipitation", "float", MMT, 0.0),
    )


@dataclass(frozen=True)
class BusPosition(Observation):
    speed: float    # km/h
    heading: float  # degrees clockwise from north, [0, 360]
    route_id: str   # the line

    ENTITY_TYPE: ClassVar[str] = "Vehicle"
    DOMAIN: ClassVar[str] = "Transportation"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("speed", "speed", "float", KMH, 0.0),
        Field("heading", "heading", "float", DD, 0.0, 360.0),
        Field("route_id", "routeId", "str", lo=1, measured=False),
    )

    def constants(self) -> dict[str, Any]:
        return {"vehicleType": "bus"}


@dataclass(frozen=True)
class CameraAlert(Observation):
    category: str       # one of ALERT_CATEGORIES
    sub_category: str   # e.g. trafficJam, carAccident, flood
    severity: str       # one of ALERT_SEVERITIES
    description: str
    date_issued: datetime

    ENTITY_TYPE: ClassVar[str] = "Alert"
    DOMAIN: ClassVar[str] = "Alert"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("category", "category", "enum", choices=ALERT_CATEGORIES),
        Field("sub_category", "subCategory", "str", lo=1),
        Field("severity", "severity", "enum", choices=ALERT_SEVERITIES),
        Field("description", "description", "str", measured=False),
        Field("date_issued", "dateIssued", "time", measured=False),
    )

    def constants(self) -> dict[str, Any]:
        return {"alertSource": f"urn:ngsi-ld:Device:{self.device_id}"}


KINDS: tuple[type[Observation], ...] = (TrafficFlow, AirQuality, Noise, WaterLevel, RainGauge, BusPosition,
                                        CameraAlert)
BY_TYPE: dict[str, type[Observation]] = {kind.ENTITY_TYPE: kind for kind in KINDS}
# What each model's entities always carry (besides id, type, @context).
_CONSTANTS = {"TrafficFlowObserved": ("dateObserved",), "AirQualityObserved": ("dateObserved",),
              "NoiseLevelObserved": ("dateObserved",), "FloodMonitoring": ("dateObserved",),
              "WeatherObserved": ("dateObserved",),
              "Vehicle": ("vehicleType",), "Alert": ("alertSource",)}
REQUIRED: dict[str, tuple[str, ...]] = {
    kind.ENTITY_TYPE: ("location",) + tuple(spec.attr for spec in kind.FIELDS) + _CONSTANTS[kind.ENTITY_TYPE]
    for kind in KINDS}


def context_of(kind: type[Observation]) -> list[str]:
    """The entity's @context: its SDM domain context, then the NGSI-LD core context (last, as required)."""
    return [ldcontext.sdm_context_url(kind.DOMAIN), CORE_CONTEXT]


_CONTEXTS = {kind: ldcontext.resolve(context_of(kind)) for kind in KINDS}


# -- times ------------------------------------------------------------------------------------------------

def iso(moment: datetime) -> str:
    """An NGSI-LD DateTime: UTC, always with microseconds, and a Z."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_iso(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"{name}: must be an ISO 8601 date-time string, got {value!r}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name}: {value[:40]!r} is not an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        raise ValueError(f"{name}: {value[:40]!r} has no time zone")
    return moment


# -- NGSI-LD ----------------------------------------------------------------------------------------------

def entity_id(kind: type[Observation], device_id: str) -> str:
    return f"urn:ngsi-ld:{kind.ENTITY_TYPE}:{device_id}"


def to_ngsi_ld(obs: Observation) -> dict[str, Any]:
    """The observation as a compact, normalised NGSI-LD entity with its @context."""
    kind = type(obs)
    if kind not in BY_TYPE.values():
        raise TypeError(f"not an observation: {obs!r}")
    at = iso(obs.observed_at)
    doc: dict[str, Any] = {
        "id": entity_id(kind, obs.device_id),
        "type": kind.ENTITY_TYPE,
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [obs.lon, obs.lat]},
                     "observedAt": at},
    }
    for spec in kind.FIELDS:
        value = getattr(obs, spec.name)
        if spec.kind == "time":
            attr: dict[str, Any] = {"type": "Property", "value": {"@type": "DateTime", "@value": iso(value)}}
        else:
            attr = {"type": "Property", "value": value}
        if spec.measured:
            attr["observedAt"] = at
        if spec.unit:
            attr["unitCode"] = spec.unit
        doc[spec.attr] = attr
    for name, value in obs.constants().items():
        doc[name] = {"type": "Property", "value": value}
    doc["@context"] = context_of(kind)
    return doc


def from_ngsi_ld(doc: Mapping[str, Any]) -> Observation:
    """An observation back from its entity: compact with an @context (any the IOC knows), or expanded."""
    if not isinstance(doc, Mapping):
        raise ValueError(f"entity: must be a JSON object, got {type(doc).__name__}")
    given = ldcontext.resolve(doc["@context"]) if "@context" in doc else None
    type_name = doc.get("type")
    if isinstance(type_name, list) and len(type_name) == 1:
        type_name = type_name[0]
    if not isinstance(type_name, str):
        raise ValueError(f"type: missing or not a single type name: {type_name!r}")
    kind = _kind_of(type_name, given)
    ctx = _CONTEXTS[kind]
    expanded = ldcontext.expand_entity(doc, given) if given is not None else \
        {key if ("://" in key or key in ldcontext.CORE_KEYWORDS) else ctx.expand(key): value
         for key, value in doc.items()}
    device = _device_of(doc.get("id"), kind)
    location = _attr(expanded, ctx, "location")
    if location.get("type") != "GeoProperty":
        raise ValueError("location: must be a GeoProperty")
    geometry = location.get("value")
    if not isinstance(geometry, Mapping) or geometry.get("type") != "Point" \
            or not isinstance(geometry.get("coordinates"), (list, tuple)) or len(geometry["coordinates"]) < 2:
        raise ValueError("location: must be a GeoJSON Point")
    lon, lat = geometry["coordinates"][:2]
    observed = parse_iso(location.get("observedAt"), "location.observedAt")
    values: dict[str, Any] = {}
    for spec in kind.FIELDS:
        attr = _attr(expanded, ctx, spec.attr)
        value = attr.get("value")
        if spec.kind == "time":
            if isinstance(value, Mapping):
                value = value.get("@value")
            value = parse_iso(value, spec.attr)
        values[spec.name] = value
    return kind(device_id=device, lon=lon, lat=lat, observed_at=observed, **values)


def _kind_of(type_name: str, given: ldcontext.Context | None) -> type[Observation]:
    for kind in KINDS:
        iri = _CONTEXTS[kind].expand(kind.ENTITY_TYPE)
        name = given.expand(type_name) if given is not None else type_name
        if name in (kind.ENTITY_TYPE, iri) and (given is None or name == iri):
            return kind
    raise ValueError(f"type: {type_name!r} is not one of {', '.join(BY_TYPE)}")


def _device_of(value: Any, kind: type[Observation]) -> str:
    prefix = f"urn:ngsi-ld:{kind.ENTITY_TYPE}:"
    if not isinstance(value, str) or not value.startswith(prefix):
        raise ValueError(f"id: {value!r} is not {prefix}<device>")
    return value[len(prefix):]


def _attr(expanded: Mapping[str, Any], ctx: ldcontext.Context, name: str) -> Mapping[str, Any]:
    attr = expanded.get(ctx.expand(name))
    if not isinstance(attr, Mapping):
        raise ValueError(f"{name}: missing (or not an NGSI-LD attribute object)")
    return attr


# -- FIWARE IoT Agent JSON ----------------------------------------------------------------------------------

def iota_topic(apikey: str, device: str) -> str:
    """The IoT Agent JSON measures topic."""
    for name, part in (("apikey", apikey), ("device", device)):
        if not isinstance(part, str) or not part or any(c in part for c in "/+#"):
            raise ValueError(f"{name}: {part!r} cannot be an MQTT topic level")
    return f"/json/{apikey}/{device}/attrs"


def to_iota_json(obs: Observation) -> tuple[dict[str, Any], str]:
    """(measures, topic suffix): the payload for `/json/{apikey}` + suffix, i.e. `/json/{apikey}/{device}/attrs`.

    Short names as the IOC's mqtt_ingest expands them; `TimeInstant` is the observation time; location is a
    GeoJSON Point (exact, unlike the "lat,lon" text form)."""
    kind = type(obs)
    if kind not in BY_TYPE.values():
        raise TypeError(f"not an observation: {obs!r}")
    attrs: dict[str, Any] = {"TimeInstant": iso(obs.observed_at),
                             "location": {"type": "Point", "coordinates": [obs.lon, obs.lat]}}
    for spec in kind.FIELDS:
        value = getattr(obs, spec.name)
        attrs[spec.attr] = iso(value) if spec.kind == "time" else value
    attrs.update(obs.constants())
    return attrs, f"/{obs.device_id}/attrs"


def from_iota_json(attrs: Mapping[str, Any], device: str, entity_type: str) -> Observation:
    """An observation back from IoT Agent JSON measures. `device` is the device id or its topic (suffix);
    `entity_type` is what the device is provisioned as (the payload does not say)."""
    if not isinstance(attrs, Mapping):
        raise ValueError(f"measures: must be a JSON object, got {type(attrs).__name__}")
    kind = BY_TYPE.get(entity_type)
    if kind is None:
        raise ValueError(f"entity_type: {entity_type!r} is not one of {', '.join(BY_TYPE)}")
    if "/" in device:
        parts = [p for p in device.split("/") if p]
        if len(parts) < 2 or parts[-1] != "attrs":
            raise ValueError(f"device: {device!r} is not a device id or an .../<device>/attrs topic")
        device = parts[-2]
    observed = parse_iso(attrs.get("TimeInstant"), "TimeInstant")
    location = attrs.get("location")
    if isinstance(location, str):
        try:
            lat, lon = (float(part) for part in location.split(","))
        except ValueError:
            raise ValueError('location: must be GeoJSON or "lat,lon"') from None
    elif isinstance(location, Mapping) and location.get("type") == "Point" \
            and isinstance(location.get("coordinates"), (list, tuple)) and len(location["coordinates"]) >= 2:
        lon, lat = location["coordinates"][:2]
    else:
        raise ValueError("location: must be a GeoJSON Point or \"lat,lon\"")
    values: dict[str, Any] = {}
    for spec in kind.FIELDS:
        if spec.attr not in attrs:
            raise ValueError(f"{spec.attr}: missing")
        value = attrs[spec.attr]
        values[spec.name] = parse_iso(value, spec.attr) if spec.kind == "time" else value
    return kind(device_id=device, lon=lon, lat=lat, observed_at=observed, **values)


__all__ = [
    "Observation", "TrafficFlow", "AirQuality", "Noise", "WaterLevel", "RainGauge", "BusPosition", "CameraAlert",
    "KINDS", "BY_TYPE", "REQUIRED", "FLOOD_RISK", "ALERT_CATEGORIES", "ALERT_SEVERITIES",
    "context_of", "entity_id", "iso", "parse_iso", "to_ngsi_ld", "from_ngsi_ld",
    "iota_topic", "to_iota_json", "from_iota_json",
]

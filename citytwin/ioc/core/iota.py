"""FIWARE IoT Agent JSON, the IOC side: measure topics and payloads become expanded NGSI-LD documents.

Devices publish measures to `/json/<apikey>/<device id>/attrs` (a JSON object of measures, or a list of
them) or one measure to `/json/<apikey>/<device id>/attrs/<name>`. Pure functions, no store (and one
helper that opens a paho client for a broker URL, which every MQTT user of the project shares): the server's MQTT worker (`ioc.server.mqtt_ingest`) and the twin's in-process device transport
(`devices_sim.transports`) both turn a message into the same document here, so a reading means the same
thing to the IOC whichever way it came.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlsplit

from . import ldcontext

DEFAULT_TYPE = "Device"  # what a device provisioned without an entity type becomes
MAX_PAYLOAD = 256 * 1024
_LOCATION = ldcontext.NGSI_LD + "location"


class Rejected(ValueError):
    """A message the IOC will not take; the text is safe to log (it never holds the key)."""


def parse_address(url: str) -> tuple[str, int, str | None, str | None, bool]:
    """(host, port, username, password, tls) from `mqtt://[user:pass@]host[:port]` (mqtts for TLS)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
        raise ValueError(f"MQTT URL must look like mqtt://host:1883, got {url!r}")
    tls = parts.scheme in ("mqtts", "ssl")
    port = parts.port or (8883 if tls else 1883)
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port, user, password, tls


def mqtt_client(url: str, name: str, client_id: str | None = None):
    """(paho client, host, port) for `url`: callback API v2, `client_id` or `citytwin-<name>-<random>`, the
    URL's credentials and TLS set. Connecting, callbacks and windows are the caller's."""
    import paho.mqtt.client as mqtt  # only the parts of the project that speak MQTT need paho
    import uuid
    from paho.mqtt.enums import CallbackAPIVersion

    host, port, user, password, tls = parse_address(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"citytwin-{name}-{uuid.uuid4().hex[:12]}")
    if user is not None:
        client.username_pw_set(user, password)
    if tls:
        client.tls_set()
    return client, host, port


def split_topic(topic: str) -> tuple[str, str, str | None]:
    """(apikey, device id, single attribute or None) of an IoT Agent JSON measure topic."""
    parts = topic.split("/")
    if len(parts) in (5, 6) and parts[0] == "" and parts[1] == "json" and parts[4] == "attrs" \
            and parts[2] and parts[3] and (len(parts) == 5 or parts[5]):
        return parts[2], parts[3], parts[5] if len(parts) == 6 else None
    raise Rejected("not an IoT Agent JSON measure topic")


def measures_of(payload: bytes, single: str | None) -> list[dict[str, Any]]:
    """The measure groups a payload holds (a list payload is a multi-measure)."""
    if len(payload) > MAX_PAYLOAD:
        raise Rejected(f"payload larger than {MAX_PAYLOAD} bytes")
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        if single is None:
            raise Rejected("payload is not JSON") from None
        value = payload.decode("utf-8", "replace")  # a single measure may be sent as bare text
    if single is not None:
        return [{single: value}]
    groups = value if isinstance(value, list) else [value]
    if not groups or not all(isinstance(g, dict) and g for g in groups):
        raise Rejected("payload must be a JSON object of measures or a list of them")
    return groups


def to_document(device_id: str, entity_type: str | None, measures: dict[str, Any]) -> dict[str, Any]:
    """An expanded, normalised NGSI-LD document for one group of measures."""
    short_type = entity_type or DEFAULT_TYPE
    observed = measures.get("TimeInstant")
    if observed is not None and not isinstance(observed, str):
        raise Rejected("TimeInstant must be an ISO 8601 string")
    document: dict[str, Any] = {"id": f"urn:ngsi-ld:{short_type}:{device_id}", "type": _iri(short_type)}
    for name, value in measures.items():
        if name == "TimeInstant":
            continue
        if name in ldcontext.CORE_KEYWORDS:
            raise Rejected(f"measure name {name!r} is reserved by NGSI-LD")
        if name == "location":
            document[_LOCATION] = {"type": "GeoProperty", "value": _geometry(value)}
            continue
        attribute = _attribute(name, value)
        if observed is not None:
            attribute["observedAt"] = observed
        document[_iri(name)] = attribute
    return document


@lru_cache(maxsize=4096)
def _iri(name: str) -> str:
    # Devices send the same few names millions of times; the context lookup is worth remembering.
    return ldcontext.DISPLAY.expand(name)


def _attribute(name: str, value: Any) -> dict[str, Any]:
    # Smart Data Models name relationships ref<Thing>; a URN there points at another entity.
    if name.startswith("ref") and isinstance(value, str) and value.startswith("urn:"):
        return {"type": "Relationship", "object": value}
    return {"type": "Property", "value": value}


def _geometry(value: Any) -> Any:
    """GeoJSON as sent, or the IoT Agent's "lat,lon" text as a GeoJSON Point."""
    if isinstance(value, str):
        try:
            lat, lon = (float(part) for part in value.split(","))
        except ValueError:
            raise Rejected('location must be GeoJSON or "lat,lon"') from None
        return {"type": "Point", "coordinates": [lon, lat]}
    return value


__all__ = ["DEFAULT_TYPE", "MAX_PAYLOAD", "Rejected", "parse_address", "mqtt_client", "split_topic", "measures_of",
           "to_document"]

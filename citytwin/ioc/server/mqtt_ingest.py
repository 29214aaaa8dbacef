"""MQTT ingestion: device telemetry on FIWARE IoT Agent JSON topics becomes NGSI-LD entities.

Devices publish measures to `/json/<apikey>/<device id>/attrs` (a JSON object of measures, or a list of
them) or one measure to `/json/<apikey>/<device id>/attrs/<name>`. The apikey is the device's own IOC key:
it must be a device key bound to that device id, so a device can only ever write its own entity. The key
is a secret that travels in the topic, so nothing here ever logs a topic.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from citytwin.ioc.core import ldcontext
from citytwin.ioc.core.errors import IocError
from citytwin.ioc.core.model import ApiKey, Role

log = logging.getLogger(__name__)

TOPICS = ("/json/+/+/attrs", "/json/+/+/attrs/+")
DEFAULT_TYPE = "Device"
MAX_PAYLOAD = 256 * 1024


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
    document: dict[str, Any] = {"id": f"urn:ngsi-ld:{short_type}:{device_id}",
                                "type": ldcontext.DISPLAY.expand(short_type)}
    for name, value in measures.items():
        if name == "TimeInstant":
            continue
        if name in ldcontext.CORE_KEYWORDS:
            raise Rejected(f"measure name {name!r} is reserved by NGSI-LD")
        if name == "location":
            document[ldcontext.NGSI_LD + "location"] = {"type": "GeoProperty", "value": _geometry(value)}
            continue
        attribute = _attribute(name, value)
        if observed is not None:
            attribute["observedAt"] = observed
        document[ldcontext.DISPLAY.expand(name)] = attribute
    return document


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


class MqttIngest:
    """The MQTT worker: paho's network thread receives, validates and upserts each message."""

    def __init__(self, ioc: Any, url: str, on_result: Callable[[Any], None] | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.ioc = ioc
        self.host, self.port, user, password, tls = parse_address(url)
        self.on_result = on_result
        self.clock = clock
        self.received = 0
        self.accepted = 0
        self.rejected = 0
        self._connected = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"citytwin-ioc-{uuid.uuid4().hex[:12]}")
        if user is not None:
            self._client.username_pw_set(user, password)
        if tls:
            self._client.tls_set()
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)  # exponential backoff between
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        """Connect in the background (a broker that is down now is retried with backoff)."""
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()

    def stop(self) -> None:
        self._connected.clear()  # first, so the disconnect below is not reported as a lost connection
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    # -- paho callbacks (its network thread) ---------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT broker %s:%d refused the connection: %s", self.host, self.port, reason)
            return
        # Subscribing on every connect restores the subscriptions after a reconnect.
        client.subscribe([(topic, 1) for topic in TOPICS])
        self._connected.set()
        log.info("MQTT connected to %s:%d", self.host, self.port)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        if self._connected.is_set():
            log.warning("MQTT disconnected from %s:%d (%s); reconnecting", self.host, self.port, reason)
        self._connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.received += 1
        try:
            result = self.ingest(message.topic, message.payload)
        except Rejected as exc:
            self.rejected += 1
            log.warning("MQTT message rejected: %s", exc)
            return
        except Exception:  # a store failure must not kill paho's thread
            self.rejected += 1
            log.exception("MQTT message could not be stored")
            return
        self.accepted += 1
        if self.on_result is not None:
            for item in result:
                self.on_result(item)

    # -- the work ------------------------------------------------------------------------------------------
    def ingest(self, topic: str, payload: bytes) -> list[Any]:
        """Check and store one message; the UpsertResults (one per measure group). Raises Rejected."""
        apikey, device_id, single = split_topic(topic)
        key = self._device_key(apikey, device_id)
        groups = measures_of(payload, single)
        documents = [to_document(device_id, key.entity_type, group) for group in groups]
        results = []
        at = self.clock()
        try:
            # One upsert per group: each carries its own TimeInstant and is its own history row.
            for document in documents:
                results.append(self.ioc.upsert([document], at, owner=device_id, replace=False))
        except IocError as exc:
            raise Rejected(f"device {device_id}: {exc.message}") from None
        return results

    def _device_key(self, apikey: str, device_id: str) -> ApiKey:
        key = self.ioc.authenticate(apikey)
        if key is None or key.role is not Role.DEVICE:
            raise Rejected(f"device {device_id}: the topic's apikey is not a device key")
        if key.device_id != device_id:
            raise Rejected(f"device {device_id}: the topic's apikey belongs to another device")
        return key

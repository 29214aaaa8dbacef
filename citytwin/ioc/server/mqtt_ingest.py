"""MQTT ingestion: device telemetry on FIWARE IoT Agent JSON topics becomes NGSI-LD entities.

Devices publish measures to `/json/<apikey>/<device id>/attrs` (a JSON object of measures, or a list of
them) or one measure to `/json/<apikey>/<device id>/attrs/<name>`. The topic and payload rules live in
`citytwin.ioc.core.iota` (the twin's in-process device transport applies the same ones); their names are
re-exported here. The apikey is the device's own IOC key: it must be a device key bound to that device id,
so a device can only ever write its own entity. The key is a secret that travels in the topic, so nothing
here ever logs a topic.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt

from citytwin.ioc.core.errors import IocError
from citytwin.ioc.core.iota import (  # noqa: F401  (re-exported: the names callers know this module by)
    DEFAULT_TYPE,
    MAX_PAYLOAD,
    Rejected,
    measures_of,
    mqtt_client,
    parse_address,
    split_topic,
    to_document,
)
from citytwin.ioc.core.model import ApiKey, Role

log = logging.getLogger(__name__)

TOPICS = ("/json/+/+/attrs", "/json/+/+/attrs/+")


class MqttIngest:
    """The MQTT worker: paho's network thread receives, validates and upserts each message."""

    def __init__(self, ioc: Any, url: str, on_result: Callable[[Any], None] | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.ioc = ioc
        self._client, self.host, self.port = mqtt_client(url, "ioc")
        self.on_result = on_result
        self.clock = clock
        self.received = 0
        self.accepted = 0
        self.rejected = 0
        self._connected = threading.Event()
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

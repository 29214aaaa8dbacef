"""Alerts out on MQTT: every alert the IOC raises or clears, as JSON on `citytwin/alerts/{category}` (QoS 1).

Writes (NGSI-LD over HTTP, MQTT ingestion, the rule tick, an operator clearing an alert) hand their alerts
to `AlertPublisher.submit` from whatever thread they run on; it serialises them and puts them on a bounded
queue without ever waiting, so a slow or absent broker never holds up a write. When the queue is full the
alert is dropped and counted (and logged once). One thread takes from the queue and hands each message to
its own paho client, whose network thread does the socket work and reconnects with backoff.

The publisher has its own MQTT connection rather than sharing MqttIngest's: ingestion stores each message
on paho's network thread, so under load that thread is busy with the database and alerts published through
it would queue behind the very telemetry that raised them. A second connection keeps alert latency apart
from ingestion backlog, and lets the server publish alerts with the same code whether or not it ingests.

Message: {id, rule_id, kind, entity_id, entity_type, severity, category, status, raised_at, cleared_at,
message, value}; entity_type is the Smart Data Models short name when it has one, times are ISO 8601 UTC.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from citytwin.ioc.core.iota import mqtt_client
from citytwin.ioc.core.ldcontext import DISPLAY
from citytwin.ioc.core.model import Alert, AlertStatus

from .ngsi_render import iso

log = logging.getLogger(__name__)

TOPIC_ROOT = "citytwin/alerts"
QOS = 1
MAX_QUEUE = 10_000
POLL_S = 0.2  # how often the sending thread looks up from an empty queue or a lost connection
PUBLISHED = (AlertStatus.RAISED, AlertStatus.CLEARED)


def alert_topic(category: str, root: str = TOPIC_ROOT) -> str:
    """`citytwin/alerts/{category}`. A category is one topic level: wildcards and slashes become `_`."""
    level = "".join("_" if c in "/+#\0" else c for c in (category or "")).strip() or "other"
    return f"{root}/{level}"


def alert_message(alert: Alert) -> dict[str, Any]:
    """The JSON object published for an alert."""
    return {"id": alert.id, "rule_id": alert.rule_id, "kind": alert.kind, "entity_id": alert.entity_id,
            "entity_type": DISPLAY.compact(alert.entity_type), "severity": alert.severity,
            "category": alert.category, "status": AlertStatus(alert.status).value,
            "raised_at": iso(alert.raised_at), "cleared_at": iso(alert.cleared_at), "message": alert.message,
            "value": alert.value}


class AlertPublisher:
    """`start()` once, `submit(alerts)` from any thread, `stop()` at shutdown (bounded)."""

    def __init__(self, url: str, *, max_queue: int = MAX_QUEUE, topic_root: str = TOPIC_ROOT):
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self._client, self.host, self.port = mqtt_client(url, "ioc-alerts")
        self.topic_root = topic_root
        self.submitted = 0  # alerts put on the queue
        self.published = 0  # handed to the MQTT client
        self.acked = 0  # PUBACK received
        self.dropped = 0  # queue full, or still unsent at shutdown
        self._queue: queue.Queue[tuple[str, bytes]] = queue.Queue(max_queue)
        self._lock = threading.Lock()  # the counters, from many writer threads
        self._warned = False
        self._closing = threading.Event()
        self._flush_until = 0.0
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        # paho's own queue is bounded too: what it cannot take is dropped and counted like a full queue.
        self._client.max_queued_messages_set(max_queue)
        self._client.max_inflight_messages_set(100)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def start(self) -> None:
        """Connect in the background: a broker that is down now is retried with backoff."""
        if self._thread is not None:
            return
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="ioc-alert-publisher", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 3.0) -> None:
        """Send what is queued if the broker is there, for at most `timeout_s`; then disconnect."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout_s
        self._flush_until = deadline
        self._closing.set()
        self._thread.join(max(0.0, deadline - time.monotonic()) + POLL_S)
        while self.connected and self.acked < self.published and time.monotonic() < deadline:
            time.sleep(0.01)  # the last PUBACKs
        self._connected.clear()  # first, so the disconnect is not logged as a lost connection
        self._client.disconnect()
        self._client.loop_stop()
        self._thread = None
        if self.dropped:
            log.warning("MQTT alert publisher dropped %d alerts (queue full or broker away)", self.dropped)

    # -- from writers (any thread): never waits -------------------------------------------------------------
    def submit(self, alerts: Iterable[Alert]) -> None:
        for alert in alerts:
            if alert.status not in PUBLISHED:
                continue
            item = (alert_topic(alert.category, self.topic_root),
                    json.dumps(alert_message(alert), default=str, ensure_ascii=False).encode())
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self._drop(1, "the queue is full")
                continue
            with self._lock:
                self.submitted += 1

    def submit_result(self, result: Any) -> None:
        """The alerts of an UpsertResult."""
        alerts = getattr(result, "alerts", None)
        if alerts:
            self.submit(alerts)

    def _drop(self, count: int, why: str) -> None:
        with self._lock:
            self.dropped += count
            warn, self._warned = not self._warned, True
        if warn:  # once: a broker away under load would otherwise log a line per alert
            log.warning("MQTT alerts dropped (%s; queue of %d); counting them, logged once", why,
                        self._queue.maxsize)

    # -- the sending thread --------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                topic, payload = self._queue.get(timeout=POLL_S)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            if not self._await_broker():
                self._drop(1 + self._queue.qsize(), "shutting down with the broker away")
                return
            info = self._client.publish(topic, payload, qos=QOS)
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                self._drop(1, "the MQTT client's queue is full")
            else:  # success, or NO_CONN: paho keeps a QoS 1 message and sends it after the reconnect
                with self._lock:
                    self.published += 1

    def _await_broker(self) -> bool:
        """True once connected; False when shutting down and there is no more time to wait."""
        while not self._connected.wait(POLL_S):
            if self._closing.is_set():
                return False
        return not (self._closing.is_set() and time.monotonic() > self._flush_until)

    # -- paho callbacks (its network thread) ---------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT broker %s:%d refused the alert publisher: %s", self.host, self.port, reason)
            return
        self._connected.set()
        log.info("MQTT alert publisher connected to %s:%d", self.host, self.port)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        if self._connected.is_set():
            log.warning("MQTT alert publisher lost %s:%d (%s); reconnecting", self.host, self.port, reason)
        self._connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._lock:
            self.acked += 1

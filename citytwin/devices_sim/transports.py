"""Device transports: how the simulated devices' readings reach an IOC.

- `InProcessTransport`: into `ioc.core` in memory at virtual time, through the same IoT Agent JSON
  conversion the reference IOC's MQTT worker applies (`ioc.core.iota`), so the IOC's rules raise their
  alerts at once and the transport hands them back for the ledger. The fast path of simulated runs.
- `MqttTransport`: paho-mqtt to a real broker, one message per reading on `/json/{apikey}/{device}/attrs`,
  QoS 0 or 1 (FIWARE IoT Agent JSON). Any IoT Agent or the reference IOC's `MqttIngest` on the broker
  takes them from there.
- `HttpTransport`: NGSI-LD batch upserts (`POST /ngsi-ld/v1/entityOperations/upsert`) to an IOC or a
  context broker (Orion-LD), in batches.
- `EmbeddedBroker`: an MQTT broker (amqtt) in a background thread on loopback, for runs that want MQTT
  without a Mosquitto.

Every transport has `send(kind, device_ids, payloads, batch, encoder, t)`: `payloads[i]` is the IoT Agent
JSON payload of row i of `batch` and `device_ids[i]` its device id. The MQTT and in-process transports
send the payloads as they are (and need neither batch nor encoder: pass None); the HTTP transport sends
NGSI-LD entities, `encoder.ngsi_ld(batch)` when an encoder is given, otherwise decoded from the payloads.
`payloads` None means "encode them here" (`encoder.iota(batch)`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from citytwin.ioc.core.errors import IocError
from citytwin.ioc.core.iota import Rejected, measures_of, mqtt_client, to_document
from citytwin.ioc.core.model import Alert, Role

from .encoders import Observation, from_iota_json, iota_topic, to_ngsi_ld

if TYPE_CHECKING:
    from citytwin.ioc.core.service import IOC

    from .batch import Batch, Encoder

log = logging.getLogger(__name__)

UPSERT_PATH = "/ngsi-ld/v1/entityOperations/upsert"


class Transport(Protocol):
    def send(self, kind: type[Observation], device_ids: Sequence[str], payloads: list[bytes] | None,
             batch: Batch | None, encoder: Encoder | None, t: float) -> list[Alert]: ...

    def tick(self, t: float) -> list[Alert]: ...  # the IOC's missing-data alerts (in-process), else []

    def close(self) -> None: ...


def _payloads(payloads: list[bytes] | None, batch: Batch | None, encoder: Encoder | None) -> list[bytes]:
    if payloads is not None:
        return payloads
    if batch is None or encoder is None:
        raise ValueError("send needs the payloads, or a batch and its encoder to make them")
    return encoder.iota(batch)


def alert_fields(alert: Alert) -> dict[str, Any]:
    """An IOC alert as the ledger's `ioc.alert` row fields (subject: the entity). `value` is the reading
    that raised it, NaN when the rule's value is not a number (a camera event's sub-category)."""
    value = alert.value
    number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    return {"subject": alert.entity_id, "rule": alert.rule_id, "category": alert.category,
            "status": str(alert.status), "value": number}


# -- in-process --------------------------------------------------------------------------------------------
class InProcessTransport:
    """Readings straight into an `IOC` at virtual time `epoch + t`.

    Each payload is one IoT Agent JSON message, written as its device would write it over MQTT: an upsert
    owned by the device (it may only write its own entity), merged into the entity. A message the IOC
    refuses is counted in `rejected` (with the reason of the last one), as the MQTT worker would log it."""

    def __init__(self, ioc: IOC, epoch: datetime):
        if epoch.tzinfo is None:
            raise ValueError("epoch must be timezone-aware")
        self.ioc = ioc
        self.epoch = epoch
        self.delivered = 0
        self.rejected = 0
        self.last_rejection = ""

    def at(self, t: float) -> datetime:
        return self.epoch + timedelta(seconds=float(t))

    def send(self, kind: type[Observation], device_ids: Sequence[str], payloads: list[bytes] | None,
             batch: Batch | None = None, encoder: Encoder | None = None, t: float = 0.0) -> list[Alert]:
        """Deliver the readings at virtual time t; the alerts the IOC raised or cleared, in order."""
        payloads = _payloads(payloads, batch, encoder)
        if len(device_ids) != len(payloads):
            raise ValueError(f"{len(device_ids)} device ids for {len(payloads)} payloads")
        now = self.at(t)
        entity_type = kind.ENTITY_TYPE
        upsert = self.ioc.upsert
        alerts: list[Alert] = []
        for device_id, payload in zip(device_ids, payloads):
            try:
                for group in measures_of(payload, None):
                    alerts.extend(upsert([to_document(device_id, entity_type, group)], now, owner=device_id,
                                         replace=False).alerts)
            except (Rejected, IocError) as exc:
                self._reject(device_id, exc)
                continue
            self.delivered += 1
        return alerts

    def tick(self, t: float) -> list[Alert]:
        """Time passing with nothing written: the IOC's missing-data alerts and camera-alert auto-clears."""
        return self.ioc.tick(self.at(t))

    def close(self) -> None:
        pass

    def _reject(self, device_id: str, exc: Exception) -> None:
        self.rejected += 1
        self.last_rejection = f"device {device_id}: {exc}"
        if self.rejected == 1:  # one line, not one per reading of a broken fleet
            log.warning("the IOC rejected a reading (more are only counted): %s", self.last_rejection)


def provision(ioc: IOC, device_ids: Iterable[str], entity_type: str,
              now: datetime | None = None) -> dict[str, str]:
    """A device key in `ioc` for each device, bound to it and its entity type (short name, e.g.
    "FloodMonitoring"): {device id: plain key}, the apikey of its IoT Agent JSON topic."""
    at = now or datetime.now(UTC)
    keys = {}
    for device_id in device_ids:
        plain, _ = ioc.create_key(Role.DEVICE, at, label=f"device {device_id}", device_id=device_id,
                                  entity_type=entity_type)
        keys[device_id] = plain
    return keys


# -- MQTT ------------------------------------------------------------------------------------------------
class BrokerUnreachable(ConnectionError):
    """The MQTT broker did not accept a connection in time."""

    def __init__(self, url: str, reason: str):
        self.url = _redacted(url)
        super().__init__(f"MQTT broker {self.url} is not reachable: {reason}")


class BrokerStalled(TimeoutError):
    """The broker stopped taking messages: the transport's queue stayed full for too long."""


def _redacted(url: str) -> str:
    """The URL without its password (it goes into error messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class MqttTransport:
    """IoT Agent JSON over MQTT: each reading a message on `/json/{apikey}/{device}/attrs`.

    `apikey_for(device id)` gives each device's apikey (for the reference IOC: its device key, see
    `provision`). Counters: `published` messages handed to the broker connection, `completed` of them
    acknowledged (QoS 1: PUBACK) or written to the socket (QoS 0), `dropped` refused by the client
    (QoS 0 while disconnected). At most `max_pending` messages wait for completion: `send` blocks beyond
    that (a bounded wait, `stall_timeout_s`), so a slow broker slows the sender instead of filling memory.
    """

    def __init__(self, url: str, apikey_for: Callable[[str], str], qos: int = 1, client_id: str | None = None,
                 *, connect_timeout_s: float = 5.0, max_inflight: int = 100, max_pending: int = 20_000,
                 stall_timeout_s: float = 30.0, keepalive_s: int = 60):
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, got {qos!r}")
        if not 0 < max_pending < 65_000:  # MQTT packet ids are 16-bit: more cannot be outstanding
            raise ValueError("max_pending must be in 1..64999")
        self.url = url
        self.qos = qos
        self.apikey_for = apikey_for
        self.max_pending = max_pending
        self.stall_timeout_s = stall_timeout_s
        self.published = 0
        self.completed = 0  # written by paho's network thread only
        self.dropped = 0
        self._topics: dict[str, str] = {}
        self._connected = threading.Event()
        self._refused: str | None = None
        client, host, port = mqtt_client(url, "devices", client_id)
        # QoS 1 messages beyond the in-flight window wait in paho's queue. paho's default window (20) holds
        # the rate to 20 per round trip, which is little beyond loopback; but paho scans the window on every
        # PUBACK, so a wide one costs CPU (on loopback 1000 in flight halves the rate that 20 or 100 reach).
        # Our own max_pending bounds the queue, so paho's is left unbounded.
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(0)
        client.connect_timeout = connect_timeout_s
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        self._connect(host, port, keepalive_s, connect_timeout_s)

    def _connect(self, host: str, port: int, keepalive_s: int, timeout_s: float) -> None:
        try:
            self._client.connect(host, port, keepalive=keepalive_s)  # the TCP connect waits connect_timeout
        except (OSError, ValueError) as exc:
            raise BrokerUnreachable(self.url, f"{type(exc).__name__}: {exc}") from None
        self._client.loop_start()
        if not self._connected.wait(timeout_s) or self._refused:
            self._client.disconnect()  # also ends paho's reconnect attempts
            self._client.loop_stop()
            reason = f"refused: {self._refused}" if self._refused else f"no CONNACK within {timeout_s:g} s"
            raise BrokerUnreachable(self.url, reason)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def pending(self) -> int:
        return self.published - self.completed

    def topic(self, device_id: str) -> str:
        topic = self._topics.get(device_id)
        if topic is None:
            topic = self._topics[device_id] = iota_topic(self.apikey_for(device_id), device_id)
        return topic

    def send(self, kind: type[Observation] | None, device_ids: Sequence[str], payloads: list[bytes] | None,
             batch: Batch | None = None, encoder: Encoder | None = None, t: float = 0.0) -> list[Alert]:
        """Publish each payload on its device's topic. The IOC's alerts come from the IOC, not from here: []."""
        payloads = _payloads(payloads, batch, encoder)
        if len(device_ids) != len(payloads):
            raise ValueError(f"{len(device_ids)} device ids for {len(payloads)} payloads")
        publish, qos, topics, topic_of = self._client.publish, self.qos, self._topics, self.topic
        no_conn = MQTTErrorCode.MQTT_ERR_NO_CONN
        start, total = 0, len(payloads)
        while start < total:
            room = self.max_pending - (self.published - self.completed)
            if room <= 0:
                self._wait_room()
                continue
            end = min(total, start + room)
            accepted = offered = 0
            try:  # counted in bulk: per-message attribute updates cost a tenth of the publish rate
                for device_id, payload in zip(device_ids[start:end], payloads[start:end]):
                    rc = publish(topics.get(device_id) or topic_of(device_id), payload, qos).rc
                    offered += 1
                    # rc 0 is success. QoS 1 while disconnected: paho keeps it and sends it on reconnect.
                    if not rc or (qos and rc == no_conn):
                        accepted += 1
            finally:
                self.published += accepted
                self.dropped += offered - accepted
            start = end
        return []

    def tick(self, t: float) -> list[Alert]:
        """Time passing is the receiving IOC's own business: []."""
        return []

    def _wait_room(self) -> None:
        if not self._wait_until(self.max_pending // 2, self.stall_timeout_s):
            raise BrokerStalled(f"MQTT broker {_redacted(self.url)} took no message for {self.stall_timeout_s:g} s "
                                f"({self.pending} waiting)")

    def flush(self, timeout_s: float) -> bool:
        """Wait (at most timeout_s) until every message published is acknowledged (QoS 1) or written (QoS 0)."""
        return self._wait_until(0, timeout_s)

    def _wait_until(self, pending: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.published - self.completed > pending:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.0005)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush (bounded), then disconnect."""
        self.flush(timeout_s)
        self._connected.clear()
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> MqttTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paho callbacks (its network thread) ---------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
        self._connected.set()  # wakes the constructor either way; _refused tells which

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        if self._connected.is_set():
            log.warning("MQTT disconnected from %s (%s); reconnecting", _redacted(self.url), reason)
        self._connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self.completed += 1


# -- HTTP (NGSI-LD) -----------------------------------------------------------------------------------------
class HttpTransport:
    """NGSI-LD batch upserts with httpx: compact entities with their @context (`application/ld+json`),
    `batch_size` per request, merged into existing entities (`options=update`, as an IoT Agent does).

    `api_key` goes in `X-API-Key` (the reference IOC's header; an operator key may write any device's
    entity, a device key only its own). Counters: `sent` entities accepted, `errors` refused or lost (a
    207 names each), `requests`; `last_error` the last reason."""

    def __init__(self, base_url: str, *, api_key: str | None = None, batch_size: int = 100,
                 timeout_s: float = 5.0):
        if not 1 <= batch_size <= 1000:  # the reference IOC takes at most 1000 entities per batch
            raise ValueError(f"batch_size must be in 1..1000, got {batch_size}")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"NGSI-LD base URL must look like http://host:port, got {base_url!r}")
        headers = {"Content-Type": "application/ld+json", "Accept": "application/json"}
        if api_key:
            headers["X-API-Key"] = api_key
        self.base_url = base_url.rstrip("/")
        self.batch_size = batch_size
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)
        self.sent = 0
        self.errors = 0
        self.requests = 0
        self.last_error = ""

    def send(self, kind: type[Observation], device_ids: Sequence[str], payloads: list[bytes] | None,
             batch: Batch | None = None, encoder: Encoder | None = None, t: float = 0.0) -> list[Alert]:
        """Upsert the readings' entities; the IOC's alerts stay in the IOC: []. Payloads that are already
        NGSI-LD entities (dicts, from `encoder.ngsi_ld`) go as they are; IoT Agent JSON bytes are decoded."""
        if encoder is not None and batch is not None:
            entities = encoder.ngsi_ld(batch)
        else:
            if payloads is None:
                raise ValueError("send needs the payloads, or a batch and its encoder")
            entities = [p if isinstance(p, dict) else to_ngsi_ld(from_iota_json(json.loads(p), d, kind.ENTITY_TYPE))
                        for d, p in zip(device_ids, payloads, strict=True)]
        for start in range(0, len(entities), self.batch_size):
            self._post(entities[start:start + self.batch_size])
        return []

    def tick(self, t: float) -> list[Alert]:
        """Time passing is the remote IOC's own business: []."""
        return []

    def _post(self, entities: list[dict]) -> None:
        body = json.dumps(entities, separators=(",", ":")).encode()
        self.requests += 1
        try:
            response = self._client.post(UPSERT_PATH, params={"options": "update"}, content=body)
        except httpx.HTTPError as exc:
            self._failed(len(entities), f"{type(exc).__name__}: {exc}")
            return
        if response.status_code in (201, 204):
            self.sent += len(entities)
        elif response.status_code == 207:
            errors = response.json().get("errors", [])
            self.sent += len(entities) - len(errors)
            if errors:
                first = errors[0]
                self._failed(len(errors), f"{first.get('entityId')}: {first.get('error', {}).get('detail')}")
        else:
            self._failed(len(entities), f"HTTP {response.status_code}: {response.text[:300]}")

    def _failed(self, count: int, reason: str) -> None:
        self.errors += count
        if self.last_error == "":
            log.warning("NGSI-LD upsert to %s failed (more are only counted): %s", self.base_url, reason)
        self.last_error = reason

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- embedded broker -------------------------------------------------------------------------------------
class EmbeddedBroker:
    """An MQTT 3.1.1 broker (amqtt) on its own asyncio loop in a daemon thread, on loopback only,
    anonymous. Port 0 picks a free port. For runs that want MQTT without a broker on the machine; it is
    far slower than Mosquitto (about a thousand QoS 1 messages a second), which a simulated day's fleet
    does not notice."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, start_timeout_s: float = 10.0):
        if not _is_loopback(host):
            raise ValueError(f"the embedded broker listens on loopback only, not {host!r}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        self.host = host
        self.port = port
        self.start_timeout_s = start_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None

    @property
    def url(self) -> str:
        if self._broker is None:
            raise RuntimeError("the embedded broker is not running: start() it first")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._broker is not None

    def start(self) -> EmbeddedBroker:
        if self._broker is not None:
            return self
        wanted = self.port
        for attempt in range(3):  # a free port may be taken between picking and binding it
            self.port = wanted or _free_port(self.host)
            try:
                self._start_once()
                return self
            except OSError:
                if wanted or attempt == 2:
                    raise
        return self

    def _start_once(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._broker = loop.run_until_complete(self._open())
            except BaseException as exc:  # handed to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        thread = threading.Thread(target=run, name=f"mqtt-broker-{self.port}", daemon=True)
        thread.start()
        if not ready.wait(self.start_timeout_s):
            raise RuntimeError(f"the embedded MQTT broker did not start within {self.start_timeout_s:g} s")
        if failure:
            thread.join(1.0)
            cause = failure[0].__cause__ or failure[0]
            if isinstance(cause, OSError):
                raise cause
            raise RuntimeError(f"the embedded MQTT broker could not start: {failure[0]}") from failure[0]
        self._loop, self._thread = loop, thread

    async def _open(self) -> Any:
        from amqtt.broker import Broker  # imported here: only runs that use the embedded broker need it

        config = {"listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
                  # only the auth plugin: amqtt's default packet and event loggers cost throughput
                  "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}
        broker = Broker(config)
        await broker.start()
        return broker

    def stop(self, timeout_s: float = 5.0) -> None:
        """Shut the broker down (bounded: its loop is stopped after timeout_s whatever it was doing)."""
        if self._broker is None or self._loop is None:
            return
        loop, broker = self._loop, self._broker
        try:
            asyncio.run_coroutine_threadsafe(broker.shutdown(), loop).result(timeout_s)
        except Exception as exc:  # a shutdown that hangs or fails still ends with the loop stopped
            log.warning("the embedded MQTT broker did not shut down cleanly: %r", exc)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._broker = self._loop = self._thread = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


__all__ = ["Transport", "InProcessTransport", "MqttTransport", "HttpTransport", "EmbeddedBroker",
           "BrokerUnreachable", "BrokerStalled", "provision", "alert_fields", "UPSERT_PATH"]

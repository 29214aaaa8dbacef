"""What the driver listens on for end-to-end times: NGSI-LD notifications over HTTP and IOC alerts over MQTT.

Each listener calls back with what arrived and `time.monotonic()` at its arrival, on its own thread (the
HTTP server's request thread, paho's network thread), so the callback must be quick and thread-safe.
Both stop within a bounded time.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import paho.mqtt.client as mqtt

from citytwin.ioc.core.iota import mqtt_client

log = logging.getLogger(__name__)

NOTIFY_PATH = "/notify"
MAX_BODY = 16 * 1024 * 1024  # a notification of many entities is large, but not this large
SOCKET_TIMEOUT_S = 30.0  # an idle keep-alive connection's thread ends after this
ALERT_TOPIC = "citytwin/alerts/#"

OnNotification = Callable[[dict[str, Any], float], None]
OnAlert = Callable[[dict[str, Any], float], None]


def _check_notification(body: Any) -> str | None:
    """Why `body` is not an NGSI-LD Notification, or None when it is one."""
    if not isinstance(body, dict):
        return "not a JSON object"
    if body.get("type") != "Notification":
        return 'type is not "Notification"'
    if not isinstance(body.get("data"), list):
        return "data is not an array of entities"
    return None


class NotificationListener:
    """NGSI-LD notifications: `POST {url}` with a Notification body answers 204 and calls
    `on_notification(body, time.monotonic())`; a body that is no Notification answers 400 and is counted."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, on_notification: OnNotification | None = None):
        self.host = host
        self.port = port
        self.on_notification = on_notification
        self.received = 0
        self.malformed = 0
        self.callback_errors = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the notification listener is not running: start() it first")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{NOTIFY_PATH}"

    def start(self) -> NotificationListener:
        if self._server is not None:
            return self
        self._server = _Server((self.host, self.port), _handler_for(self))
        self.port = self._server.server_address[1]
        self._stopped.clear()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="notification-listener", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting and close open connections; nothing reaches the callback afterwards."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopped.set()
        server.shutdown()  # returns once serve_forever's loop has seen it: within its poll interval
        server.close_connections()
        server.server_close()
        thread.join(timeout_s)
        self._server = self._thread = None

    def __enter__(self) -> NotificationListener:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- from the request threads ---------------------------------------------------------------------------
    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def _deliver(self, body: dict[str, Any], at: float) -> None:
        self._count("received")
        if self.on_notification is None:
            return
        try:
            self.on_notification(body, at)
        except Exception:  # the driver's bug, not the IOC's: the notification did arrive
            self._count("callback_errors")
            log.exception("the notification callback failed")


class _Server(ThreadingHTTPServer):
    """Remembers its open connections, so stopping can close the keep-alive ones too (their threads would
    otherwise wait for the next request until the socket timeout)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.discard(request)

    def close_connections(self) -> None:
        with self._open_lock:
            connections = list(self._open)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)  # the handler's read returns at once; it then closes
            except OSError:
                pass


def _handler_for(listener: NotificationListener) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the IOC's notifier reuses its connections
        timeout = SOCKET_TIMEOUT_S

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            if listener._stopped.is_set():
                self._answer(503, close=True)
                return
            if self.path.split("?", 1)[0] != NOTIFY_PATH:
                self._discard_body()
                self._answer(404)
                return
            length = self.headers.get("Content-Length", "")
            if not length.isdigit() or int(length) > MAX_BODY:
                listener._count("malformed")
                self._answer(400 if not length.isdigit() else 413, close=True)
                return
            raw = self.rfile.read(int(length))
            at = time.monotonic()  # arrival: the whole body is in
            try:
                body = json.loads(raw)
            except (UnicodeDecodeError, ValueError):
                body = None
            if _check_notification(body) is not None:
                listener._count("malformed")
                self._answer(400)
                return
            self._answer(204)  # first: a slow callback must not hold up the IOC's notifier
            if not listener._stopped.is_set():
                listener._deliver(body, at)

        def _discard_body(self) -> None:
            length = self.headers.get("Content-Length", "")
            if length.isdigit() and int(length) <= MAX_BODY:
                self.rfile.read(int(length))
            else:
                self.close_connection = True

        def _answer(self, status: int, close: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's naming)
            pass  # one line per notification would drown the driver's output

    return Handler


class AlertListener:
    """IOC alerts on MQTT (`citytwin/alerts/{category}`, JSON): `on_alert(alert, time.monotonic())` for each.
    A message that is no JSON object is counted in `malformed` and skipped."""

    def __init__(self, mqtt_url: str, on_alert: OnAlert, topic: str = ALERT_TOPIC, *, qos: int = 1):
        self._client, self.host, self.port = mqtt_client(mqtt_url, "drive-alerts")
        self.on_alert = on_alert
        self.topic = topic
        self.qos = qos
        self.received = 0
        self.malformed = 0
        self.callback_errors = 0
        self._subscribed = threading.Event()
        self._started = False
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    @property
    def connected(self) -> bool:
        return self._subscribed.is_set()

    def start(self) -> AlertListener:
        """Connect in the background (retried with backoff); `wait_connected` says when alerts can arrive."""
        if not self._started:
            self._client.connect_async(self.host, self.port, keepalive=30)
            self._client.loop_start()
            self._started = True
        return self

    def wait_connected(self, timeout_s: float) -> bool:
        """True once connected and subscribed (the broker's SUBACK): no alert published after this is missed."""
        self.start()
        return self._subscribed.wait(timeout_s)

    def stop(self) -> None:
        """Bounded: paho's thread ends as soon as it leaves its select (or its connect attempt times out)."""
        if not self._started:
            return
        self._subscribed.clear()
        self._client.disconnect()
        self._client.loop_stop()
        self._started = False

    def __enter__(self) -> AlertListener:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- paho callbacks (its network thread) ---------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT broker %s:%d refused the alert listener: %s", self.host, self.port, reason)
            return
        client.subscribe(self.topic, qos=self.qos)  # on every connect: a reconnect subscribes again

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        if reasons and not any(getattr(r, "is_failure", False) for r in reasons):
            self._subscribed.set()
        else:
            log.warning("MQTT broker %s:%d refused the subscription to %s", self.host, self.port, self.topic)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self._subscribed.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        at = time.monotonic()
        try:
            alert = json.loads(message.payload)
        except (UnicodeDecodeError, ValueError):
            alert = None
        if not isinstance(alert, dict):
            self.malformed += 1
            return
        self.received += 1
        try:
            self.on_alert(alert, at)
        except Exception:  # must not kill paho's thread
            self.callback_errors += 1
            log.exception("the alert callback failed")

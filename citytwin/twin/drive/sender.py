"""Open-model senders: every interaction goes out at its intended wall time, whatever the server does.

A `Sender` owns one asyncio loop in a daemon thread. `http(...)` and `mqtt(...)` may be called from any
thread; each hands its interaction over to the loop, which fires it at its intended `time.monotonic()` time.
Latency is `completion - intended` and lag is `actual start - intended`, so a server that stalls makes
every interaction scheduled during the stall late, as it would for real users (no coordinated omission,
as in wrk2 and k6). A slow server never slows the schedule: each HTTP request is its own task, and past
`max_in_flight` unfinished interactions a new one is recorded as `overload` at once instead of waiting.

HTTP goes out as HTTP/1.1 on keep-alive connections of the sender's own (`Http1Pool`: asyncio transports,
httptools parsing the answers, a connection taken and given back in O(1)); see that section for why not
httpx's client. `check` and `on_done` are handed an `httpx.Response` all the same.

MQTT goes through one paho-mqtt client (`MqttLink`) with its own network thread: the loop publishes at the
intended time, and paho's thread records each completion itself (PUBACK for QoS 1, the write to the socket
for QoS 0): handing every acknowledgement back to the loop cost a thread wake-up a message, a third of the
QoS 1 rate. The messages awaiting completion sit in one lock-guarded table the two threads share; a
periodic sweep on the loop records a message never acknowledged within `timeout_s` as `timeout`.

Error kinds (the strings of `Stats.record`): `timeout` (no complete answer within `timeout_s` of the
send, or no PUBACK), `connection` (refused, reset, closed before the answer was complete, TLS failure, no
MQTT link), `http_4xx`, `http_5xx`, `invalid_body` (bytes that are no HTTP response, a broken content
encoding, or a 2xx/3xx answer the `check` callback rejected) and `overload`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import httptools
import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from citytwin.ioc.core.iota import mqtt_client

if TYPE_CHECKING:
    from .stats import Stats

log = logging.getLogger(__name__)

TIMEOUT = "timeout"
CONNECTION = "connection"
HTTP_4XX = "http_4xx"
HTTP_5XX = "http_5xx"
INVALID_BODY = "invalid_body"
OVERLOAD = "overload"

# What a `check` callback raises for a body it does not accept: ValueError is the contract (json.loads
# raises one); a missing field (KeyError, IndexError) or a wrong type met while digging is the same verdict.
CHECK_REJECTIONS = (ValueError, LookupError, TypeError)
SWEEP_EVERY_S = 0.1  # how often unacknowledged MQTT messages are checked against their timeout
CLOSE_TIMEOUT_S = 2.0  # closing the HTTP client and the MQTT link, after the drain
START_TIMEOUT_S = 5.0
USER_AGENT = "User-Agent: citytwin-drive"

OnDone = Callable[[Any, "str | None"], None]


class Sender:
    """Sends HTTP requests and MQTT messages at their intended times and records them into `stats`.

    - `timeout_s` bounds each interaction from its actual send: the whole HTTP exchange (waiting for a
      connection, connecting, the complete answer), or an MQTT message's PUBACK.
    - `max_in_flight` caps HTTP requests and MQTT messages awaiting completion together; past it an
      interaction is recorded as `overload` at once.
    - `http_limits`: `max_connections`, `max_keepalive_connections` and `keepalive_expiry` of the HTTP
      connections (default: as many as `max_in_flight`, idle ones dropped after 4 s).
    - `ssl_context` for https (default: httpx's, i.e. certifi's trust store); `loop_factory` makes the
      event loop (default: uvloop where installed, else asyncio's).

    `on_done(result, error)` callbacks run in the sender's loop thread: they must not block (no sleeps, no
    synchronous I/O, no `stop`); scheduling further interactions from them with `http`/`mqtt` is fine.
    After `stop`, `cancelled` counts what was in flight and cut off and `unsent` what was handed over for
    later; neither is recorded in `stats`. Interactions handed over after `stop` are ignored.
    """

    def __init__(self, stats: Stats, *, timeout_s: float = 5.0, max_in_flight: int = 2000,
                 http_limits: httpx.Limits | None = None, ssl_context: ssl.SSLContext | None = None,
                 loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        if not 0 < max_in_flight < 65_000:  # MQTT packet ids are 16-bit: no more can await a PUBACK
            raise ValueError(f"max_in_flight must be in 1..64999, got {max_in_flight!r}")
        self.stats = stats
        self.timeout_s = float(timeout_s)
        self.max_in_flight = max_in_flight
        # Idle connections are dropped after 4 s, before uvicorn's (the reference IOC's) 5 s keep-alive ends.
        self.http_limits = http_limits or httpx.Limits(max_connections=max_in_flight,
                                                       max_keepalive_connections=max_in_flight,
                                                       keepalive_expiry=4.0)
        self.cancelled = 0  # in flight when `stop` gave up on them: not recorded
        self.unsent = 0  # still scheduled for later when `stop` came: not recorded
        self._in_flight = 0  # HTTP requests under way (loop thread only)
        self._scheduled = 0  # handed over, not yet due (loop thread only)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.ssl_context = ssl_context  # None: the system's (httpx's) trust store for https
        self.loop_factory = loop_factory or new_loop
        self._timer_pad = 0.0
        self._pool: Http1Pool | None = None
        self._mqtt: MqttLink | None = None
        # MQTT messages awaiting completion, shared by the loop (publish, sweep) and paho's thread (acks):
        self._mqtt_lock = threading.Lock()
        self._pending: dict[int, tuple[str, float, float]] = {}  # mid -> (key, intended, started)
        self._early: dict[int, float] = {}  # mid -> completion that came before publish() stored its entry
        self._swept: set[int] = set()  # mids recorded as timeouts: their late acks change nothing
        self._tasks: set[asyncio.Task] = set()
        self._inbox: list[tuple[Callable[..., None], tuple]] = []
        self._inbox_lock = threading.Lock()
        self._wake_pending = False
        self._state = "new"  # new -> running -> stopping -> stopped
        self._state_lock = threading.Lock()

    # -- life cycle (any thread but the loop's) -------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread (bounded wait until it runs)."""
        with self._state_lock:
            if self._state != "new":
                raise RuntimeError(f"Sender already {self._state}")
            self._state = "running"
        loop = self.loop_factory()
        # asyncio's own loop runs on time.monotonic() and never fires a timer early. uvloop's clock counts
        # whole milliseconds and rounds delays, so its timers fire up to ~1 ms early; set half a millisecond
        # later, most fire on time and the few early ones are set again (a request never goes out early).
        self._timer_pad = 0.0 if isinstance(loop, asyncio.BaseEventLoop) else 0.0005
        self._loop = loop
        running = threading.Event()
        loop.call_soon(running.set)
        self._thread = threading.Thread(target=self._run_loop, name="citytwin-sender", daemon=True)
        self._thread.start()
        if not running.wait(START_TIMEOUT_S):
            raise RuntimeError(f"the sender's loop did not start within {START_TIMEOUT_S:g} s")
        loop.call_soon_threadsafe(self._sweep_later)

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._pool = Http1Pool(self._loop, self.http_limits, self.ssl_context)
        self._loop.run_forever()

    def stop(self, drain_s: float = 5.0) -> None:
        """Wait at most `drain_s` for what is in flight, cancel what is left (counted in `cancelled`, not
        recorded), drop what was scheduled for later (`unsent`), close the clients. Idempotent; bounded."""
        if self._thread is not None and threading.current_thread() is self._thread:
            raise RuntimeError("Sender.stop called from its own loop thread (an on_done callback?)")
        with self._state_lock:
            if self._state in ("new", "stopped"):
                self._state = "stopped"
                return
            if self._state == "stopping":
                return  # another thread is stopping it
            self._state = "stopping"
        loop = self._loop
        try:
            future = asyncio.run_coroutine_threadsafe(self._shutdown(drain_s), loop)
            try:
                future.result(timeout=max(0.0, drain_s) + 2 * CLOSE_TIMEOUT_S + 1.0)
            except Exception:  # a shutdown overrunning its bound must still end the thread
                log.warning("the sender did not shut down cleanly in time", exc_info=True)
                future.cancel()
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=CLOSE_TIMEOUT_S)
            if not self._thread.is_alive():
                loop.close()
        finally:
            with self._state_lock:
                self._state = "stopped"

    async def _shutdown(self, drain_s: float) -> None:
        deadline = time.monotonic() + max(0.0, drain_s)
        while self.in_flight and time.monotonic() < deadline:
            self._sweep()
            await asyncio.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
        tasks = [task for task in self._tasks if not task.done()]
        with self._mqtt_lock:
            self.cancelled += len(self._pending) + len(tasks)
            self._pending.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)
        self._in_flight = 0
        self.unsent += self._scheduled  # timers that will never fire now
        self._scheduled = 0
        self._pool.close()
        if self._mqtt is not None:
            link, self._mqtt = self._mqtt, None
            try:
                await asyncio.wait_for(asyncio.to_thread(link.close), CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning("closing the MQTT link to %s took longer than %g s", _safe(link.url), CLOSE_TIMEOUT_S)

    # -- scheduling (any thread) ---------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Interactions sent and not yet complete (HTTP requests and MQTT messages awaiting their ack)."""
        return self._in_flight + len(self._pending)

    @property
    def pending(self) -> int:
        """In flight plus handed over and not yet due: zero once everything given has completed."""
        return self.in_flight + self._scheduled + len(self._inbox)

    @property
    def mqtt_connected(self) -> bool:
        """Whether the MQTT link is up now (paho reconnects on its own after a loss)."""
        link = self._mqtt
        return link is not None and link.connected

    def http(self, intended: float, key: str, method: str, url: str, *, content: bytes | None = None,
             headers: dict | None = None, check: Callable[[httpx.Response], Any] | None = None,
             on_done: OnDone | None = None) -> None:
        """Send a request at `intended` (monotonic seconds) and record it under `key`. `check(response)` turns
        a 2xx/3xx answer into the result passed to `on_done` (raising ValueError: `invalid_body`); without
        it the result is the response. `on_done(result, error)` runs in the loop thread; result is None
        when error is set. HTTP/1.1 with keep-alive; HEAD is not supported (its answer has no body to read)."""
        method = method.upper()
        if method == "HEAD":
            raise ValueError("HEAD requests are not supported")
        if self._accepting():
            self._post(self._schedule, (self._start_http, intended, key, method, url, content, headers, check,
                                        on_done))

    def mqtt(self, intended: float, key: str, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish at `intended` through the link `connect_mqtt` opened, and record it under `key`."""
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, got {qos!r}")
        if not topic or "+" in topic or "#" in topic:
            raise ValueError(f"cannot publish to the topic {topic!r}")
        if self._accepting():
            self._post(self._schedule, (self._publish, intended, key, topic, payload, qos))

    def connect_mqtt(self, url: str, *, client_id: str | None = None, timeout_s: float = 5.0,
                     max_window: int = 100) -> None:
        """Open the MQTT link (bounded by `timeout_s`); raises ConnectionError naming the broker when it
        cannot. `max_window` is paho's own in-flight window of QoS 1 messages: beyond it paho queues them,
        and that wait counts in their latency."""
        if self._state != "running":
            raise RuntimeError("start the Sender before connecting MQTT")
        link = MqttLink(url, self._on_mqtt_complete, client_id=client_id, timeout_s=timeout_s,
                        max_window=max_window, max_queued=min(64_000, 4 * self.max_in_flight + 1000))
        old = self._mqtt
        self._mqtt = link
        if old is not None:
            old.close()

    def _accepting(self) -> bool:
        state = self._state
        if state == "new":
            raise RuntimeError("Sender not started")
        return state == "running"  # stopping or stopped: the run is over, late interactions are not sent

    def _post(self, function: Callable[..., None], args: tuple) -> None:
        """Run `function(*args)` on the loop soon. Many posts between two loop turns cost one wake-up."""
        with self._inbox_lock:
            self._inbox.append((function, args))
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._drain_inbox)
        except RuntimeError:  # the loop closed under us (stop raced this call): nothing to deliver to
            pass

    # -- the loop thread ---------------------------------------------------------------------------------------

    def _drain_inbox(self) -> None:
        with self._inbox_lock:
            inbox, self._inbox = self._inbox, []
            self._wake_pending = False
        for function, args in inbox:
            try:
                function(*args)
            except Exception:  # one bad interaction must not lose the others handed over with it
                log.exception("the sender could not schedule an interaction")

    def _schedule(self, start: Callable[..., None], intended: float, *args: Any) -> None:
        self._scheduled += 1
        self._fire(start, intended, *args)

    def _fire(self, start: Callable[..., None], intended: float, *args: Any) -> None:
        # The delay is taken from the monotonic clock each time, whatever clock the loop keeps.
        delay = intended - time.monotonic()
        if delay > 0 and self._state == "running":
            self._loop.call_later(delay + self._timer_pad, self._fire, start, intended, *args)
            return
        self._scheduled -= 1
        if self._state == "running":
            start(intended, *args)
        else:
            self.unsent += 1

    def _start_http(self, intended: float, key: str, method: str, url: str, content: bytes | None,
                    headers: dict | None, check: Callable | None, on_done: OnDone | None) -> None:
        if self.in_flight >= self.max_in_flight:
            self._finish(key, intended, time.monotonic(), None, OVERLOAD, None, 0, on_done)
            return
        self._in_flight += 1
        task = self._loop.create_task(self._send_http(intended, key, method, url, content, headers, check,
                                                      on_done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_http(self, intended: float, key: str, method: str, url: str, content: bytes | None,
                         headers: dict | None, check: Callable | None, on_done: OnDone | None) -> None:
        started = time.monotonic()
        result: Any = None
        size = 0
        try:
            async with asyncio.timeout(self.timeout_s):  # the whole exchange: waiting, connecting, answering
                status, raw_headers, body = await self._pool.exchange(method, url, headers, content)
            done = time.monotonic()
            size = len(body)
            error = _status_error(status)
            if error is None and (check is not None or on_done is not None):
                response = _response(self._pool.request_for(method, url), status, raw_headers, body)
                result, error = _checked(response, check)
        except asyncio.CancelledError:  # `stop` gave up on it: counted there, not recorded
            raise
        except TimeoutError:
            done, error = time.monotonic(), TIMEOUT
        except (InvalidResponse, httpx.DecodingError):
            done, error = time.monotonic(), INVALID_BODY
        except OSError:  # refused, reset, unreachable, closed early (ServerDisconnected), TLS failures
            done, error = time.monotonic(), CONNECTION
        except Exception:  # a bad URL or header from the caller: counted, logged, and the loop lives on
            log.exception("HTTP %s %s failed before reaching the server", method, _safe(url))
            done, error = time.monotonic(), CONNECTION
        self._in_flight -= 1
        self._finish(key, intended, done, started, error, result, size, on_done)

    def _finish(self, key: str, intended: float, done: float, started: float | None, error: str | None,
                result: Any, size: int, on_done: OnDone | None) -> None:
        self.stats.record(key, intended, done, error=error, started=started, size=size)
        if on_done is not None:
            try:
                on_done(None if error else result, error)
            except Exception:  # the caller's bug must not take the loop down with it
                log.exception("on_done callback for %s raised", key)

    # -- MQTT on the loop ------------------------------------------------------------------------------------

    def _publish(self, intended: float, key: str, topic: str, payload: bytes, qos: int) -> None:
        started = time.monotonic()
        link = self._mqtt
        if link is None or not link.connected:
            self.stats.record(key, intended, started, error=CONNECTION, started=started)
            return
        if self.in_flight >= self.max_in_flight:
            self.stats.record(key, intended, started, error=OVERLOAD)
            return
        try:
            rc, mid = link.publish(topic, payload, qos)
        except (ValueError, TypeError):  # paho refused the message itself (too large, not bytes)
            log.exception("MQTT publish to %s refused by the client", topic)
            self.stats.record(key, intended, time.monotonic(), error=CONNECTION, started=started)
            return
        if rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:  # paho still holds that many unacknowledged messages
            self.stats.record(key, intended, time.monotonic(), error=OVERLOAD)
            return
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.stats.record(key, intended, time.monotonic(), error=CONNECTION, started=started)
            return
        with self._mqtt_lock:
            # paho's thread may have completed it already, between publish() and here.
            done = self._early.pop(mid, None)
            self._swept.discard(mid)  # the id is this message's now
            if done is None:
                self._pending[mid] = (key, intended, started)
                return
        self.stats.record(key, intended, done, started=started)

    def _on_mqtt_complete(self, mid: int, done: float) -> None:
        """paho's network thread: a PUBACK (QoS 1) or a write (QoS 0) for `mid`, recorded here."""
        with self._mqtt_lock:
            entry = self._pending.pop(mid, None)
            if entry is None:
                if mid in self._swept:
                    self._swept.discard(mid)  # already recorded as a timeout: a late ack changes nothing
                elif self._state == "running":
                    self._early[mid] = done  # its publish() has not returned yet
                return
        key, intended, started = entry
        self.stats.record(key, intended, done, started=started)

    def _sweep_later(self) -> None:
        if self._state == "running":
            self._sweep()
            self._loop.call_later(SWEEP_EVERY_S, self._sweep_later)

    def _sweep(self) -> None:
        """Record as `timeout` every MQTT message unacknowledged for `timeout_s` since it went out.

        paho reuses packet ids after 65535 messages, so a PUBACK arriving after its message was swept and
        its id reused would be credited to the newer message: only above 65535 / timeout_s messages a
        second (13,000/s at 5 s), and then only for acknowledgements later than the timeout."""
        if not self._pending:
            return
        now = time.monotonic()
        cutoff = now - self.timeout_s
        expired = []
        with self._mqtt_lock:
            for mid, (_, _, started) in self._pending.items():  # in publish order: the oldest come first
                if started > cutoff:
                    break
                expired.append(mid)
            entries = [self._pending.pop(mid) for mid in expired]
            self._swept.update(expired)
        for key, intended, started in entries:
            self.stats.record(key, intended, now, error=TIMEOUT, started=started)


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (uvicorn[standard] brings it): a quarter less CPU a request."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _status_error(status: int) -> str | None:
    if status >= 500:
        return HTTP_5XX
    if status >= 400:
        return HTTP_4XX
    return None


def _checked(response: httpx.Response, check: Callable | None) -> tuple[Any, str | None]:
    if check is None:
        return response, None
    try:
        return check(response), None
    except CHECK_REJECTIONS:
        return None, INVALID_BODY
    except Exception:  # not a verdict on the body but a bug in the check: say so, count the body as refused
        log.exception("the check of a response raised")
        return None, INVALID_BODY


def _safe(url: str) -> str:
    """The URL without user, password or query (they may hold keys): it goes into logs and errors."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# -- HTTP/1.1 keep-alive connections ----------------------------------------------------------------------------
# Why not httpx.AsyncClient: on the 2-core machine this was written on it took ~0.65 ms of CPU a request with
# one connection (~0.14 ms of it in the client layer alone, before any I/O), and 1.6-3.3 ms with 50-200
# connections open, because its pool (httpcore) rescans every connection, quadratically, each time a request
# comes or goes. A sender with 50 warm connections fell behind at 200 requests/s, and it would collapse
# exactly when a stalling server makes connections pile up. Here requests go out on plain asyncio
# connections whose answers httptools (uvicorn's parser) reads, and a connection is taken and given back in
# O(1): ~0.06-0.1 ms of CPU a request, the whole sender included. `check`/`on_done` still get an
# `httpx.Response` (~15 µs more), built only when one of them is there to read it.

class InvalidResponse(Exception):
    """The server's bytes are not an HTTP/1.1 response."""


class ServerDisconnected(ConnectionError):
    """The connection ended before the response did."""


_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_SKIPPED_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
_FORBIDDEN = str.maketrans("", "", "\r\n")


class Http1Connection(asyncio.Protocol):
    """One HTTP/1.1 connection carrying one request at a time (no pipelining)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple) -> None:
        self.loop = loop
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.reused = False  # taken from the idle ones for this exchange
        self.answered = False  # some of this exchange's answer has arrived
        self._waiter: asyncio.Future | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []

    def send(self, data: bytes) -> asyncio.Future:
        """Write a request; the future gives (status, headers, body, keep_alive)."""
        self._headers = []
        self._body = []
        self.answered = False
        self._waiter = waiter = self.loop.create_future()
        self.transport.write(data)
        return waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()  # an exchange cut short leaves the connection in an unknown state

    # -- asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: the connection cannot be trusted again
            self.close()
            return
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(InvalidResponse(f"not an HTTP/1.1 response ({exc})"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ServerDisconnected("the server closed the connection before its response was complete"
                                      if exc is None else f"connection lost: {exc}"))

    # -- httptools
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            waiter.set_result((self.parser.get_status_code(), self._headers, body, self.parser.should_keep_alive()))

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class Http1Pool:
    """Keep-alive connections per origin, at most `limits.max_connections` open in all (a request beyond
    waits for one, within its own timeout), at most `max_keepalive_connections` kept idle, none idle longer
    than `keepalive_expiry` (servers close theirs after a few seconds: reusing one they are closing fails)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: httpx.Limits,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.loop = loop
        self.max_connections = limits.max_connections or 1_000_000
        self.max_idle = limits.max_keepalive_connections
        if self.max_idle is None:
            self.max_idle = self.max_connections
        self.expiry = limits.keepalive_expiry if limits.keepalive_expiry is not None else float("inf")
        self.open = 0
        self._ssl_context = ssl_context
        self._idle: dict[tuple, list[Http1Connection]] = {}
        self._waiters: deque[asyncio.Future] = deque()
        self._targets: dict[str, tuple] = {}
        self._requests: dict[tuple[str, str], httpx.Request] = {}

    async def exchange(self, method: str, url: str, headers: dict | None,
                       content: bytes | None) -> tuple[int, list, bytes]:
        """Send one request and read its whole response: (status, raw headers, body)."""
        key, host, port, tls, target, host_header = self._target(url)
        data = _request_bytes(method, target, host_header, headers, content)
        connection = await self._take(key, host, port, tls)
        try:
            status, raw_headers, body, keep_alive = await connection.send(data)
        except ConnectionError:
            self._discard(connection)
            if not (connection.reused and not connection.answered):
                raise
            # The server closed this idle connection as we reused it (its keep-alive ran out): it never
            # read the request. Once more on a new connection, as browsers and Go's client do.
            connection = await self._take(key, host, port, tls, fresh=True)
            try:
                status, raw_headers, body, keep_alive = await connection.send(data)
            except BaseException:
                self._discard(connection)
                raise
        except BaseException:
            self._discard(connection)
            raise
        self._give_back(connection, keep_alive)
        return status, raw_headers, body

    def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    def request_for(self, method: str, url: str) -> httpx.Request:
        """An httpx.Request standing for what was sent (method and URL; not its headers or body), for the
        httpx.Response handed to callbacks. Shared by every request to the same URL: building one costs
        more than a third of a whole exchange."""
        key = (method, url)
        request = self._requests.get(key)
        if request is None:
            if len(self._requests) >= 4096:
                self._requests.clear()
            request = self._requests[key] = httpx.Request(method, url)
        return request

    def _target(self, url: str) -> tuple:
        """(pool key, host, port, tls, request target, Host header) of a URL, parsed once per URL."""
        target = self._targets.get(url)
        if target is None:
            if len(self._targets) >= 4096:  # URLs with ids in them: keep the cache bounded
                self._targets.clear()
            target = self._targets[url] = _parse_target(url)
        return target

    async def _take(self, key: tuple, host: str, port: int, tls: bool, fresh: bool = False) -> Http1Connection:
        while True:
            idle = self._idle.get(key)
            now = time.monotonic()
            while idle and not fresh:
                connection = idle.pop()  # the most recently used: the least likely to be closing
                if not connection.closed and now - connection.idle_since < self.expiry:
                    connection.reused = True
                    return connection
                self._discard(connection)
            if self.open < self.max_connections:
                break
            if not self._close_an_idle_one():
                waiter = self.loop.create_future()
                self._waiters.append(waiter)
                await waiter  # bounded by the request's timeout
        self.open += 1
        try:
            _, connection = await self.loop.create_connection(
                lambda: Http1Connection(self.loop, key), host, port,
                ssl=self._ssl(tls), server_hostname=host if tls else None)
        except BaseException:
            self.open -= 1
            self._wake()
            raise
        return connection

    def _give_back(self, connection: Http1Connection, keep_alive: bool) -> None:
        idle = self._idle.get(connection.key)
        if idle is None:
            idle = self._idle[connection.key] = []
        if keep_alive and not connection.closed and len(idle) < self.max_idle:
            connection.idle_since = time.monotonic()
            connection.reused = False
            idle.append(connection)
            self._wake()
        else:
            self._discard(connection)

    def _discard(self, connection: Http1Connection) -> None:
        connection.close()
        self.open -= 1
        self._wake()

    def _close_an_idle_one(self) -> bool:
        """At the connection cap, a connection idle to another origin makes room for a new one."""
        for idle in self._idle.values():
            if idle:
                self._discard(idle.pop(0))
                return True
        return False

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _ssl(self, tls: bool) -> ssl.SSLContext | None:
        if not tls:
            return None
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context()
        return self._ssl_context


def _parse_target(url: str) -> tuple:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {_safe(url)}")
    tls = parts.scheme == "https"
    host = parts.hostname
    port = parts.port or (443 if tls else 80)
    default_port = port == (443 if tls else 80)
    host_text = f"[{host}]" if ":" in host else host
    host_header = host_text if default_port else f"{host_text}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (parts.scheme, host, port), host, port, tls, target, host_header


def _request_bytes(method: str, target: str, host_header: str, headers: dict | None,
                   content: bytes | None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    given = set()
    if headers:
        for name, value in headers.items():
            lower = name.lower()
            if lower in _SKIPPED_HEADERS:  # framing is ours to set
                continue
            given.add(lower)
            # A CR or LF would start a header (or a request) of its own.
            lines.append(f"{name.translate(_FORBIDDEN)}: {str(value).translate(_FORBIDDEN)}")
    if "host" not in given:
        lines.append(f"Host: {host_header}")
    if "accept" not in given:
        lines.append("Accept: */*")
    if "accept-encoding" not in given:
        lines.append("Accept-Encoding: identity")
    if "user-agent" not in given:
        lines.append(USER_AGENT)
    if content is not None or method in _METHODS_WITH_BODY:
        lines.append(f"Content-Length: {len(content) if content else 0}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + content if content else head


def _response(request: httpx.Request, status: int, headers: list, body: bytes) -> httpx.Response:
    """The answer as an httpx.Response (decoded if the server compressed it anyway: DecodingError if broken)."""
    return httpx.Response(status, headers=headers, content=body, request=request)


class MqttLink:
    """One paho-mqtt client (MQTT 3.1.1, CallbackAPIVersion 2) with its own network thread.

    `on_complete(mid, done)` is called in paho's thread when a message is complete: its PUBACK arrived
    (QoS 1) or it was written to the socket (QoS 0; paho calls on_publish then). While the broker is
    away paho reconnects on its own (1..30 s back-off); `connected` says whether it is there now.
    """

    def __init__(self, url: str, on_complete: Callable[[int, float], None], *, client_id: str | None = None,
                 timeout_s: float = 5.0, max_window: int = 100, max_queued: int = 10_000,
                 keepalive_s: int = 30):
        self.url = url
        self._on_complete = on_complete
        self._connected = threading.Event()
        self._answered = threading.Event()
        self._refused: str | None = None
        client, host, port = mqtt_client(url, "drive", client_id)
        # A wide window costs paho CPU (it scans the window on every PUBACK); a message beyond it waits in
        # paho's queue, bounded by max_queued (then publish says QUEUE_SIZE: recorded as overload).
        client.max_inflight_messages_set(max_window)
        client.max_queued_messages_set(max_queued)
        client.connect_timeout = timeout_s
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        self._open(host, port, keepalive_s, timeout_s)

    def _open(self, host: str, port: int, keepalive_s: int, timeout_s: float) -> None:
        try:
            self._client.connect(host, port, keepalive=keepalive_s)  # the TCP connect is bounded by timeout_s
        except (OSError, ValueError) as exc:
            raise ConnectionError(f"MQTT broker {_safe(self.url)} unreachable: {type(exc).__name__}: {exc}") \
                from None
        self._client.loop_start()
        if not self._answered.wait(timeout_s) or self._refused:
            self.close()
            reason = f"refused: {self._refused}" if self._refused else f"no CONNACK within {timeout_s:g} s"
            raise ConnectionError(f"MQTT broker {_safe(self.url)} {reason}")

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def publish(self, topic: str, payload: bytes, qos: int) -> tuple[MQTTErrorCode, int]:
        info = self._client.publish(topic, payload, qos)
        return info.rc, info.mid

    def close(self) -> None:
        """Disconnect and end paho's thread (it wakes at least every second to see it should end)."""
        self._connected.clear()
        self._client.disconnect()
        self._client.loop_stop()

    # -- paho callbacks (its network thread) ---------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
        else:
            self._connected.set()
        self._answered.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        if self._connected.is_set():
            log.warning("MQTT disconnected from %s (%s); reconnecting", _safe(self.url), reason)
        self._connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self._on_complete(mid, time.monotonic())

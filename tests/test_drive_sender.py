"""The open-model sender against real loopback servers: a small ASGI app under uvicorn (plain and over TLS,
with a route that stalls now and then), raw TCP servers answering garbage or dropping connections, a socket
that never answers, a closed port, and Mosquitto (directly and through a TCP relay the test can freeze or
cut). Latency is measured from the intended send time, so a stall shows in the high percentiles even at a
low rate while the send lag stays small; errors are classified; the in-flight cap turns into `overload` at
once; `stop` is bounded whatever is still hanging."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid

import httpx
import paho.mqtt.client as mqtt
import pytest
import uvicorn
from paho.mqtt.enums import CallbackAPIVersion

from citytwin.twin.drive.sender import Sender
from citytwin.twin.drive.stats import Stats
from conftest import mqtt_address, wait_for

STALL_PERIOD_S = 2.0  # the stalling route freezes for STALL_S at the start of every period
STALL_S = 0.5


# -- servers ---------------------------------------------------------------------------------------------------
class TestApp:
    """A raw ASGI app: `/ok`, `/json`, `/garbage`, `/status/{code}`, `/echo` (the request's body and API key
    as JSON), `/chunked` (a body in three chunks), `/gzip` and `/badgzip`, `/close` (answers, then closes
    the connection), `/slow` (0.1 s), and `/stall`, which holds every request that arrives during a stall
    until the stall ends (as a server in a GC pause would). Arrival times are kept by the `n` query
    parameter, and the client ports seen by the `tag` one."""

    __test__ = False

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.arrivals: dict[str, float] = {}
        self.ports: dict[str, set[int]] = {}

    def stall_end(self, t: float) -> float:
        """When a request arriving at `t` is let through."""
        phase = (t - self.t0) % STALL_PERIOD_S
        return t + (STALL_S - phase) if phase < STALL_S else t

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        now = time.monotonic()
        query = scope["query_string"].decode()
        if query.startswith("n="):
            self.arrivals[query[2:]] = now
        if query.startswith("tag="):
            self.ports.setdefault(query[4:], set()).add(scope["client"][1])
        received = b""
        while True:
            message = await receive()
            received += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        status, body, headers = 200, b"ok", [(b"content-type", b"application/json")]
        if path == "/chunked":
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for part in (b'{"parts": ', b"[1, 2, 3]", b"}"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/echo":
            key = dict(scope["headers"]).get(b"x-api-key", b"").decode()
            body = json.dumps({"body": received.decode(), "key": key, "method": scope["method"]}).encode()
        elif path in ("/gzip", "/badgzip"):
            body = gzip.compress(b'{"id": "zipped"}') if path == "/gzip" else b"not gzip at all"
            headers.append((b"content-encoding", b"gzip"))
        elif path == "/close":
            headers.append((b"connection", b"close"))
        elif path == "/slow":
            await asyncio.sleep(0.1)
        elif path == "/json":
            body = b'{"id": "r1"}'
        elif path == "/garbage":
            body = b"<html>not what you asked for"
        elif path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
        elif path == "/stall":
            await asyncio.sleep(self.stall_end(now) - now)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class AppServer:
    """uvicorn serving an ASGI app in a thread, on a socket bound before it starts (no port race)."""

    def __init__(self, app, **config) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        scheme = "https" if "ssl_certfile" in config else "http"
        self.url = f"{scheme}://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=1, **config)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> AppServer:
        self.thread.start()
        wait_for(lambda: self.server.started, 10.0)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(5.0)
        self.sock.close()


@pytest.fixture(scope="module")
def app():
    return TestApp()


@pytest.fixture(scope="module")
def server(app):
    with AppServer(app) as running:
        yield running.url


@pytest.fixture
def silent_url():
    """A listening socket that never accepts: the kernel completes the handshake, nobody ever answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture
def closed_port():
    """A port bound but not listening: connecting to it is refused, and nobody else can take it meanwhile."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


class RawServer:
    """A TCP server in a thread that answers the requests on each connection with fixed bytes, one reply a
    request, and closes when the replies run out (an empty reply: close at once, unanswered). What a server
    that is no HTTP server, one that dies mid-answer, or one that drops a kept-alive connection sends."""

    def __init__(self, *replies: bytes) -> None:
        self.replies = replies
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # the accept timeout: look at `running` again
                continue
            self.connections += 1
            with conn:
                conn.settimeout(2.0)
                try:
                    for reply in self.replies:
                        if not conn.recv(65536) or not reply:
                            break
                        conn.sendall(reply)
                except OSError:
                    pass

    def close(self) -> None:
        self.running = False
        self.thread.join(5.0)
        self.sock.close()


OK_REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
def stats():
    return Stats()


@pytest.fixture
def sender(stats):
    sender = Sender(stats, timeout_s=2.0)
    sender.start()
    yield sender
    sender.stop(drain_s=1.0)


def count(stats: Stats, key: str) -> int:
    return stats.get(key).count


# -- timing: the open model ------------------------------------------------------------------------------
@pytest.mark.parametrize("loop_factory", [None, asyncio.new_event_loop], ids=["default-loop", "asyncio-loop"])
def test_requests_go_out_at_their_intended_times_not_when_handed_over(stats, server, app, loop_factory):
    """uvloop (the default where installed) keeps a millisecond clock; asyncio's loop the monotonic one."""
    sender = Sender(stats, loop_factory=loop_factory)
    sender.start()
    try:
        _fire_ten_at_their_times(sender, stats, server, app)
    finally:
        sender.stop(drain_s=1.0)


def _fire_ten_at_their_times(sender, stats, server, app):
    now = time.monotonic()
    intended = {uuid.uuid4().hex: now + 0.5 + 0.05 * k for k in range(10)}
    threads = []
    for n, at in intended.items():  # handed over at once, from several threads
        thread = threading.Thread(target=sender.http, args=(at, "t.get", "GET", f"{server}/ok?n={n}"))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(5.0)
    assert sender.pending == 10
    wait_for(lambda: count(stats, "t.get") == 10)
    for n, at in intended.items():
        assert app.arrivals[n] >= at  # never early, whatever the loop's own clock
    assert stats.get("t.get").errors == {}
    assert stats.get("lag").count == 10
    assert sender.pending == 0


def test_a_stalling_server_shows_in_the_high_percentiles_even_at_a_low_rate(stats, server, app):
    """At 20 requests/s over two stalls of 0.5 s, a quarter of the schedule falls into a stall. A closed-loop
    client would wait out each stall with one request and report almost none of it; measured from the
    intended times, the requests the stall held back take up to the whole stall, while the sender's own
    lag stays small."""
    sender = Sender(stats, timeout_s=5.0)
    sender.start()
    try:
        rate, duration = 20.0, 4.0
        cycles = int((time.monotonic() - app.t0) / STALL_PERIOD_S) + 1
        first = app.t0 + cycles * STALL_PERIOD_S - 0.1  # just before a stall begins
        intended = [first + k / rate for k in range(int(rate * duration))]
        for k, at in enumerate(intended):
            sender.http(at, "stall.get", "GET", f"{server}/stall?n=s{k}")
        wait_for(lambda: count(stats, "stall.get") == len(intended), duration + 10.0)
    finally:
        sender.stop(drain_s=1.0)
    measured = stats.get("stall.get")
    assert measured.errors == {}
    # The truth from the server's stall timeline: a request intended at t is let through at stall_end(t).
    held = sorted(app.stall_end(at) - at for at in intended)
    assert held[-1] > STALL_S - 0.1  # the schedule really met the stalls' first moments
    slack = 0.15
    assert measured.percentile(99) >= STALL_S - slack
    assert measured.percentile(90) >= held[int(0.9 * len(held))] - slack
    lag = stats.get("lag")
    assert lag.count == len(intended)
    # The generator kept its schedule through the stalls: what it reports is the server's delay, not its own.
    assert lag.percentile(50) < STALL_S / 5
    assert lag.percentile(99) < STALL_S / 2


# -- errors ----------------------------------------------------------------------------------------------------
def test_errors_are_classified_and_reported_to_on_done_in_the_loop_thread(sender, stats, server, closed_port):
    outcomes: dict[str, tuple] = {}

    def collect(name):
        def on_done(result, error):
            outcomes[name] = (result, error, threading.current_thread().name)
        return on_done

    now = time.monotonic()
    check = lambda response: response.json()["id"]  # noqa: E731
    sender.http(now, "e.ok", "GET", f"{server}/json", check=check, on_done=collect("json"))
    sender.http(now, "e.ok", "GET", f"{server}/ok", on_done=collect("plain"))
    sender.http(now, "e.garbage", "GET", f"{server}/garbage", check=check, on_done=collect("garbage"))
    sender.http(now, "e.missing", "GET", f"{server}/json", check=lambda r: r.json()["name"], on_done=collect("key"))
    sender.http(now, "e.500", "POST", f"{server}/status/500", content=b"{}", on_done=collect("500"))
    sender.http(now, "e.404", "GET", f"{server}/status/404", on_done=collect("404"))
    sender.http(now, "e.refused", "GET", f"http://127.0.0.1:{closed_port}/", on_done=collect("refused"))
    wait_for(lambda: len(outcomes) == 7)

    assert outcomes["json"][:2] == ("r1", None)
    plain = outcomes["plain"][0]
    assert isinstance(plain, httpx.Response) and plain.text == "ok"
    assert (plain.request.method, str(plain.url)) == ("GET", f"{server}/ok")
    plain.raise_for_status()  # an httpx.Response in full, request and all
    assert outcomes["garbage"][:2] == (None, "invalid_body")
    assert outcomes["key"][:2] == (None, "invalid_body")  # a missing field (KeyError) is an invalid body too
    assert outcomes["500"][:2] == (None, "http_5xx")
    assert outcomes["404"][:2] == (None, "http_4xx")
    assert outcomes["refused"][:2] == (None, "connection")
    assert {thread for _, _, thread in outcomes.values()} == {"citytwin-sender"}
    assert stats.get("e.ok").errors == {}
    assert stats.get("e.ok").bytes_in == len(b'{"id": "r1"}') + len(b"ok")
    assert stats.get("e.garbage").errors == {"invalid_body": 1}
    assert stats.get("e.500").errors == {"http_5xx": 1}
    assert stats.get("e.404").errors == {"http_4xx": 1}
    assert stats.get("e.refused").errors == {"connection": 1}


def test_a_server_that_never_answers_times_out_from_the_send(stats, silent_url):
    sender = Sender(stats, timeout_s=0.3)
    sender.start()
    try:
        now = time.monotonic()
        for k in range(3):
            sender.http(now, "t.silent", "GET", f"{silent_url}/")
        wait_for(lambda: count(stats, "t.silent") == 3, 5.0)
    finally:
        sender.stop(drain_s=0.5)
    silent = stats.get("t.silent")
    assert silent.errors == {"timeout": 3}
    assert silent.min_s >= 0.3 - 0.01  # the time it took to fail counts as its latency


def test_a_broken_on_done_or_check_does_not_stop_the_sender(sender, stats, server):
    def explode(result, error):
        raise RuntimeError("a bug in the caller")

    now = time.monotonic()
    sender.http(now, "b.cb", "GET", f"{server}/ok", on_done=explode)
    sender.http(now, "b.check", "GET", f"{server}/ok", check=lambda r: r.headers["x-missing"])
    wait_for(lambda: count(stats, "b.cb") + count(stats, "b.check") == 2)
    sender.http(time.monotonic(), "b.after", "GET", f"{server}/ok")
    wait_for(lambda: count(stats, "b.after") == 1)
    assert stats.get("b.check").errors == {"invalid_body": 1}
    assert stats.get("b.after").errors == {}


def test_on_done_may_schedule_the_next_interaction_closed_loop_feedback(sender, stats, server):
    """What a report's id feeds: the answer to one request decides the next, sent from on_done."""
    chain: list[str] = []

    def follow(result, error):
        chain.append(result)
        if len(chain) < 3:
            sender.http(time.monotonic(), "c.next", "GET", f"{server}/json", check=lambda r: r.json()["id"],
                        on_done=follow)

    sender.http(time.monotonic(), "c.first", "GET", f"{server}/json", check=lambda r: r.json()["id"],
                on_done=follow)
    wait_for(lambda: len(chain) == 3)
    assert chain == ["r1", "r1", "r1"]
    assert count(stats, "c.next") == 2


# -- the HTTP/1.1 connections ----------------------------------------------------------------------------
def test_bodies_headers_and_framings_arrive_intact(sender, stats, server):
    outcomes: dict[str, tuple] = {}

    def collect(name):
        return lambda result, error: outcomes.__setitem__(name, (result, error))

    now = time.monotonic()
    body = json.dumps({"id": "urn:ngsi-ld:X:1", "text": "Đà Nẵng"}).encode()
    sender.http(now, "h.post", "post", f"{server}/echo", content=body,
                headers={"X-API-Key": "k1\r\nX-Injected: yes", "Content-Type": "application/ld+json",
                         "Content-Length": "1"},  # framing is the sender's: a caller's length is ignored
                check=lambda r: r.json(), on_done=collect("echo"))
    sender.http(now, "h.get", "GET", f"{server}/chunked", check=lambda r: r.json()["parts"],
                on_done=collect("chunked"))
    sender.http(now, "h.get", "GET", f"{server}/gzip", check=lambda r: r.json()["id"], on_done=collect("gzip"))
    sender.http(now, "h.bad", "GET", f"{server}/badgzip", on_done=collect("badgzip"))
    sender.http(now, "h.get", "GET", f"{server}/status/204", on_done=collect("204"))
    wait_for(lambda: len(outcomes) == 5)
    echo = outcomes["echo"][0]
    assert json.loads(echo["body"].encode()) == json.loads(body)
    assert echo["method"] == "POST"
    assert echo["key"] == "k1X-Injected: yes"  # CR/LF taken out: no header of its own
    assert outcomes["chunked"] == ([1, 2, 3], None)
    assert outcomes["gzip"] == ("zipped", None)
    assert outcomes["badgzip"] == (None, "invalid_body")
    assert outcomes["204"][0].status_code == 204
    assert stats.get("h.get").errors == {}


def test_connections_are_kept_alive_and_capped(stats, server, app):
    sender = Sender(stats, http_limits=httpx.Limits(max_connections=2, max_keepalive_connections=2))
    sender.start()
    try:
        now = time.monotonic()
        for k in range(20):  # one after the other: one connection is enough
            sender.http(now + 0.01 * k, "k.seq", "GET", f"{server}/ok?tag=seq")
        wait_for(lambda: count(stats, "k.seq") == 20)
        now = time.monotonic()
        for _ in range(6):  # at once, past the cap: they queue for the two connections
            sender.http(now, "k.burst", "GET", f"{server}/slow?tag=burst")
        wait_for(lambda: count(stats, "k.burst") == 6)
        sender.http(time.monotonic(), "k.close", "GET", f"{server}/close?tag=close")
        wait_for(lambda: count(stats, "k.close") == 1)
        sender.http(time.monotonic(), "k.after", "GET", f"{server}/ok?tag=after")  # a new connection
        wait_for(lambda: count(stats, "k.after") == 1)
    finally:
        sender.stop(drain_s=1.0)
    assert len(app.ports["seq"]) <= 2
    assert len(app.ports["burst"]) <= 2
    assert stats.get("k.burst").max_s >= 0.3 - 0.01  # six 0.1 s answers two at a time: the last waited
    for key in ("k.seq", "k.burst", "k.close", "k.after"):
        assert stats.get(key).errors == {}, key


@pytest.mark.parametrize(("reply", "error"), [
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "invalid_body"),  # not HTTP at all
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part of it", "connection"),  # dies mid-answer
    (b"", "connection"),  # closes without a word
])
def test_garbage_and_cut_answers_are_classified(sender, stats, reply, error):
    raw = RawServer(reply)
    try:
        sender.http(time.monotonic(), "r.get", "GET", f"{raw.url}/")  # a new connection: never retried
        wait_for(lambda: count(stats, "r.get") == 1, 5.0)
    finally:
        raw.close()
    assert stats.get("r.get").errors == {error: 1}


def test_a_kept_alive_connection_the_server_drops_as_it_is_reused_is_retried_once(sender, stats):
    """The keep-alive race: the server closes an idle connection just as the next request goes out on it.
    It never read that request, so it goes again on a new connection instead of counting as an error."""
    raw = RawServer(OK_REPLY, b"")  # answers the first request of each connection, drops the second
    try:
        sender.http(time.monotonic(), "ka.first", "GET", f"{raw.url}/")
        wait_for(lambda: count(stats, "ka.first") == 1, 5.0)
        sender.http(time.monotonic(), "ka.second", "GET", f"{raw.url}/")  # on the kept-alive connection
        wait_for(lambda: count(stats, "ka.second") == 1, 5.0)
    finally:
        raw.close()
    assert stats.get("ka.first").errors == {}
    assert stats.get("ka.second").errors == {}
    assert raw.connections == 2


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, made by the openssl command line."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not on this machine")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)
    return cert, key


def test_https_with_a_trusted_certificate_and_a_refused_one(stats, app, certificate):
    cert, key = certificate
    with AppServer(app, ssl_certfile=str(cert), ssl_keyfile=str(key)) as tls:
        trusting = Sender(stats, ssl_context=ssl.create_default_context(cafile=str(cert)))
        doubting = Sender(stats)  # the system's trust store has never heard of this certificate
        trusting.start()
        doubting.start()
        try:
            now = time.monotonic()
            for _ in range(3):
                trusting.http(now, "tls.trusted", "GET", f"{tls.url}/json", check=lambda r: r.json()["id"])
            doubting.http(now, "tls.doubted", "GET", f"{tls.url}/json")
            wait_for(lambda: count(stats, "tls.trusted") == 3 and count(stats, "tls.doubted") == 1)
        finally:
            trusting.stop(drain_s=1.0)
            doubting.stop(drain_s=1.0)
    assert stats.get("tls.trusted").errors == {}
    assert stats.get("tls.doubted").errors == {"connection": 1}


# -- in-flight cap and stop -------------------------------------------------------------------------------
def test_past_max_in_flight_requests_are_recorded_as_overload_at_once(stats, silent_url):
    sender = Sender(stats, timeout_s=30.0, max_in_flight=3)
    sender.start()
    try:
        now = time.monotonic()
        for _ in range(10):
            sender.http(now, "o.get", "GET", f"{silent_url}/")
        wait_for(lambda: count(stats, "o.get") == 7, 5.0)  # long before any timeout could fire
        assert stats.get("o.get").errors == {"overload": 7}
        assert sender.in_flight == 3
    finally:
        sender.stop(drain_s=0.0)
    assert sender.cancelled == 3
    assert count(stats, "o.get") == 7  # what stop cut off is counted apart, not recorded


def test_stop_is_bounded_with_requests_hanging_and_is_idempotent(stats, silent_url, server):
    sender = Sender(stats, timeout_s=60.0)
    sender.start()
    now = time.monotonic()
    for _ in range(20):
        sender.http(now, "s.hang", "GET", f"{silent_url}/")
    for k in range(5):
        sender.http(now + 60 + k, "s.later", "GET", f"{server}/ok")  # never due during this test
    wait_for(lambda: sender.in_flight == 20, 5.0)
    began = time.monotonic()
    sender.stop(drain_s=0.3)
    assert time.monotonic() - began < 5.0  # the drain, then a bounded close: nothing waits for the 60 s timeout
    assert (sender.cancelled, sender.unsent, sender.in_flight) == (20, 5, 0)
    sender.stop()
    sender.http(time.monotonic(), "s.late", "GET", f"{server}/ok")  # after stop: not sent, no error
    assert stats.keys() == []


def test_using_a_sender_before_start_is_an_error(stats):
    sender = Sender(stats)
    with pytest.raises(RuntimeError, match="not started"):
        sender.http(time.monotonic(), "x", "GET", "http://127.0.0.1:1/")
    sender.stop()  # a sender never started stops at once


# -- MQTT ------------------------------------------------------------------------------------------------------
class Subscriber:
    """A plain paho client collecting what arrives on one topic."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.received: list[bytes] = []
        self.ready = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-sub-{uuid.uuid4().hex[:8]}")
        client.on_connect = lambda c, u, f, reason, p: c.subscribe(topic, qos=1)
        client.on_subscribe = lambda c, u, mid, reasons, p: self.ready.set()
        client.on_message = lambda c, u, message: self.received.append(message.payload)
        client.connect(host, port)
        client.loop_start()
        self.client = client
        assert self.ready.wait(5.0), "the subscription was not acknowledged"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize("qos", [0, 1])
def test_mqtt_publishes_at_the_intended_time_and_completes_on_write_or_puback(sender, stats, qos):
    host, port = mqtt_address()
    topic = f"citytwin-test/drive/{uuid.uuid4().hex[:8]}"
    subscriber = Subscriber(host, port, topic)
    try:
        sender.connect_mqtt(f"mqtt://{host}:{port}")
        now = time.monotonic()
        for k in range(50):
            sender.mqtt(now + 0.2 + k * 0.004, "mqtt.publish", topic, json.dumps({"k": k}).encode(), qos=qos)
        wait_for(lambda: count(stats, "mqtt.publish") == 50)
        wait_for(lambda: len(subscriber.received) == 50)
    finally:
        subscriber.close()
    published = stats.get("mqtt.publish")
    assert published.errors == {}
    assert sorted(json.loads(p)["k"] for p in subscriber.received) == list(range(50))
    assert stats.get("lag").count == 50
    assert sender.in_flight == 0


def test_mqtt_without_a_reachable_broker_records_connection_errors_without_hanging(sender, stats, closed_port):
    sender.mqtt(time.monotonic(), "m.none", "t/x", b"{}")  # before any link
    began = time.monotonic()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{closed_port}"):
        sender.connect_mqtt(f"mqtt://127.0.0.1:{closed_port}", timeout_s=1.0)
    assert time.monotonic() - began < 5.0
    for _ in range(5):
        sender.mqtt(time.monotonic(), "m.down", "t/x", b"{}", qos=1)
    wait_for(lambda: count(stats, "m.none") + count(stats, "m.down") == 6, 5.0)
    assert stats.get("m.none").errors == {"connection": 1}
    assert stats.get("m.down").errors == {"connection": 5}


class Relay:
    """A TCP relay to the broker in its own asyncio thread, which the test can freeze (bytes are held, the
    connections stay open) or cut (every connection closed, no new ones accepted)."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.flowing: asyncio.Event | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.server = self._call(self._serve())
        self.url = f"mqtt://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(5.0)

    async def _serve(self):
        self.flowing = asyncio.Event()
        self.flowing.set()
        return await asyncio.start_server(self._relay, "127.0.0.1", 0)

    async def _relay(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self.writers += [writer, up_writer]
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer),
                             return_exceptions=True)

    async def _pipe(self, reader, writer) -> None:
        try:
            while data := await reader.read(65536):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def freeze(self) -> None:
        self.loop.call_soon_threadsafe(self.flowing.clear)

    def cut(self) -> None:
        async def cut():
            self.server.close()
            for writer in self.writers:
                writer.transport.abort()
        self._call(cut())

    def close(self) -> None:
        async def end_relays():  # let frozen pipes see their closed connections and end on their own
            self.flowing.set()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            if tasks:
                await asyncio.wait(tasks, timeout=2.0)
        self.cut()
        self._call(end_relays())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)
        if not self.thread.is_alive():
            self.loop.close()


def test_mqtt_messages_never_acknowledged_time_out_and_a_lost_broker_means_connection_errors(stats):
    relay = Relay(*mqtt_address())
    sender = Sender(stats, timeout_s=0.5)
    sender.start()
    try:
        sender.connect_mqtt(relay.url)
        topic = f"citytwin-test/drive/{uuid.uuid4().hex[:8]}"
        sender.mqtt(time.monotonic(), "m.before", topic, b"{}", qos=1)
        wait_for(lambda: count(stats, "m.before") == 1)

        relay.freeze()  # the broker's PUBACKs never come back
        for _ in range(5):
            sender.mqtt(time.monotonic(), "m.frozen", topic, b"{}", qos=1)
        wait_for(lambda: count(stats, "m.frozen") == 5, 5.0)
        assert stats.get("m.frozen").errors == {"timeout": 5}
        assert stats.get("m.frozen").min_s >= 0.5 - 0.01

        relay.cut()  # the broker is gone: paho notices the closed socket and keeps trying to reconnect
        wait_for(lambda: not sender.mqtt_connected, 5.0)
        for _ in range(3):
            sender.mqtt(time.monotonic(), "m.gone", topic, b"{}", qos=1)
        wait_for(lambda: count(stats, "m.gone") == 3, 5.0)
        assert stats.get("m.gone").errors == {"connection": 3}
    finally:
        began = time.monotonic()
        sender.stop(drain_s=0.5)
        assert time.monotonic() - began < 8.0
        relay.close()
    assert stats.get("m.before").errors == {}


class _Link:
    """An MQTT link whose acknowledgements the test hands in: `ack_inside` acks a message before its publish()
    returns, as paho's thread can."""

    connected = True

    def __init__(self, sender: Sender):
        self.sender, self.mid, self.ack_inside = sender, 0, False

    def publish(self, topic, payload, qos):
        from paho.mqtt.enums import MQTTErrorCode

        self.mid = self.mid % 3 + 1  # ids come round again, as paho's do after 65535
        if self.ack_inside:
            self.sender._on_mqtt_complete(self.mid, time.monotonic())
        return MQTTErrorCode.MQTT_ERR_SUCCESS, self.mid


def test_acks_recorded_in_paho_s_thread_count_each_message_once(stats):
    """An ack that beats publish() back, an ack after its message timed out, and an id used again."""
    sender = Sender(stats, timeout_s=0.2)
    sender.start()
    try:
        link = sender._mqtt = _Link(sender)
        link.ack_inside = True
        sender._publish(time.monotonic(), "early", "t", b"{}", 1)  # mid 1, acked before publish() returned
        assert count(stats, "early") == 1 and stats.get("early").errors == {}
        assert sender.in_flight == 0 and not sender._early

        link.ack_inside = False
        sender._publish(time.monotonic(), "late", "t", b"{}", 1)  # mid 2, never acked in time
        assert sender.in_flight == 1
        time.sleep(0.25)
        sender._sweep()
        assert stats.get("late").errors == {"timeout": 1} and sender.in_flight == 0
        sender._on_mqtt_complete(2, time.monotonic())  # its ack, late: changes nothing
        assert count(stats, "late") == 1 and not sender._early

        sender._publish(time.monotonic(), "next", "t", b"{}", 1)  # mid 3
        sender._publish(time.monotonic(), "again", "t", b"{}", 1)  # mid 1 again
        sender._on_mqtt_complete(1, time.monotonic())
        sender._on_mqtt_complete(3, time.monotonic())
        assert count(stats, "next") == count(stats, "again") == 1
        assert stats.get("again").errors == {} and sender.in_flight == 0
    finally:
        sender._mqtt = None
        sender.stop(drain_s=0.2)

"""Device telemetry to a real MQTT broker: citytwin's `MqttTransport` beside a plain paho-mqtt publish loop.

Same run, same broker (Mosquitto at 127.0.0.1:1883 unless --url), same payloads: FIWARE IoT Agent JSON
`TrafficFlowObserved` measures from `devices_sim.encoders` for 10,000 detectors (one reading each,
cycled), each on its device's topic `/json/{apikey}/{device}/attrs`. For each QoS (0 and 1):

- `paho_default`: a plain loop of `client.publish(topic, payload, qos)` with paho's defaults (QoS 1:
  at most 20 messages in flight), then wait until paho reports every message done;
- `paho_window100`: the same loop with the in-flight window `MqttTransport` uses (100);
- `transport`: `MqttTransport.send` in batches of 10,000 readings (one fleet sampling instant), then
  `flush`.

Published/s counts from the first publish until the publisher's last message is done (QoS 1: PUBACK;
QoS 0: written to the socket). `mosquitto_sub` (C; needs mosquitto-clients) subscribes to this run's
topics only and counts what the broker routes; delivered/s counts until the last message it received.
It subscribes at QoS 0 in both runs: Mosquitto holds at most 20 in flight and 1000 queued for a
subscriber (its defaults) and drops what a slower subscriber cannot take ("Outgoing messages are being
dropped" in its log). A paho subscriber in Python fell behind and lost up to a third of 200,000 QoS 0
messages; the count would have measured the counter, not the publisher. QoS 1 is between the publisher
and the broker. Every wait is bounded. With --embedded, the
transport is also measured against the embedded amqtt broker (fewer messages: it is much slower).

    .venv/bin/python benchmarks/devices_mqtt.py [--n0 200000] [--n1 50000] [--url mqtt://127.0.0.1:1883]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from _common import write
from citytwin.devices_sim.encoders import TrafficFlow, iota_topic, to_iota_json
from citytwin.devices_sim.transports import EmbeddedBroker, MqttTransport
from citytwin.ioc.core.iota import parse_address

DEVICES = 10_000
SEND_BATCH = 10_000
WINDOW = 100  # MqttTransport's default max_inflight
LABELS = ("paho_default", "paho_window100", "transport")
WAIT_S = 120.0  # the most any one run may take to finish delivering


def fleet_payloads(devices: int, seed: int = 7) -> tuple[list[str], list[bytes]]:
    """One IoT Agent JSON TrafficFlowObserved reading per detector, as the encoders make them."""
    rng = np.random.default_rng(seed)
    end = datetime(2026, 6, 1, 8, 0, tzinfo=timezone(timedelta(hours=7)))
    ids = [f"det-{k:05d}" for k in range(devices)]
    payloads = []
    for k, device in enumerate(ids):
        obs = TrafficFlow(device, 108.15 + rng.random() * 0.1, 16.0 + rng.random() * 0.1, end,
                          int(rng.poisson(120)), float(rng.random() * 0.6), float(rng.uniform(8, 55)),
                          end - timedelta(minutes=5), end)
        payloads.append(json.dumps(to_iota_json(obs)[0], separators=(",", ":")).encode())
    return ids, payloads


# -- the subscriber: mosquitto_sub, in C, so the count measures the publisher and not the counter --------------
class Subscriber:
    """`mosquitto_sub` on this run's topics at QoS 0, printing the arrival time (Unix ns) of each message to a
    file. Ready once a probe message published on the same filter has come back."""

    def __init__(self, url: str, tag: str, tmp: Path):
        host, port, user, password, _ = parse_address(url)
        self.out = tmp / f"{tag}.txt"
        auth = ["-u", user, "-P", password or ""] if user is not None else []
        self.process = subprocess.Popen(
            ["mosquitto_sub", "-h", host, "-p", str(port), *auth, "-q", "0", "-t", f"/json/{tag}/+/attrs",
             "-F", "%U", "-W", str(int(WAIT_S) + 60)], stdout=self.out.open("wb"), stderr=subprocess.DEVNULL)
        probe = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-probe-{uuid.uuid4().hex[:8]}")
        if user is not None:
            probe.username_pw_set(user, password)
        probe.connect(host, port)
        deadline = time.monotonic() + 10
        while self.lines() == 0:
            if time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError("mosquitto_sub did not receive the probe within 10 s")
            probe.publish(f"/json/{tag}/probe/attrs", b"{}", 0)
            probe.loop(0.05)
        probe.disconnect()
        time.sleep(0.2)  # the last probes still on their way
        self.probes = self.lines()

    def lines(self) -> int:
        return self.out.read_bytes().count(b"\n")

    def result(self, expected: int) -> dict:
        """Wait (bounded) until all arrived or nothing more arrives for 3 s; the count and the last arrival."""
        deadline, seen, idle_since = time.monotonic() + WAIT_S, -1, time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - idle_since < 3.0:
            count = self.lines() - self.probes
            if count >= expected:
                break
            if count != seen:
                seen, idle_since = count, time.monotonic()
            time.sleep(0.2)
        self.process.terminate()
        self.process.wait(10)
        stamps = self.out.read_bytes().split()[self.probes:]
        self.out.unlink()
        return {"received": len(stamps), "last_unix": float(stamps[-1]) if stamps else None}


# -- publishers ------------------------------------------------------------------------------------------------
def publish_plain(url: str, tag: str, ids: list[str], payloads: list[bytes], n: int, qos: int,
                  inflight: int | None) -> tuple[float, float, int]:
    """A plain paho loop: (start, done, messages done)."""
    host, port, user, password, _ = parse_address(url)
    done = [0]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:8]}")
    if user is not None:
        client.username_pw_set(user, password)
    if inflight is not None:
        client.max_inflight_messages_set(inflight)
    client.on_publish = lambda c, u, mid, rc, props: done.__setitem__(0, done[0] + 1)
    client.connect(host, port, keepalive=60)
    client.loop_start()
    topics = [iota_topic(tag, device) for device in ids]
    count = len(ids)
    start = time.monotonic()
    for i in range(n):
        client.publish(topics[i % count], payloads[i % count], qos)
    deadline = time.monotonic() + WAIT_S
    while done[0] < n and time.monotonic() < deadline:
        time.sleep(0.0005)
    end = time.monotonic()
    client.disconnect()
    client.loop_stop()
    return start, end, done[0]


def publish_transport(url: str, tag: str, ids: list[str], payloads: list[bytes], n: int,
                      qos: int) -> tuple[float, float, int]:
    transport = MqttTransport(url, lambda device: tag, qos=qos)
    count = len(ids)
    start = time.monotonic()
    sent = 0
    while sent < n:
        k = min(SEND_BATCH, n - sent, count)
        offset = sent % count
        if offset + k > count:
            k = count - offset
        transport.send(TrafficFlow, ids[offset:offset + k], payloads[offset:offset + k], None, None, 0.0)
        sent += k
    transport.flush(WAIT_S)
    end = time.monotonic()
    completed = transport.completed
    transport.close(timeout_s=1.0)
    return start, end, completed


def measure(url: str, label: str, qos: int, n: int, ids: list[str], payloads: list[bytes], tmp: Path) -> dict:
    tag = f"bench{uuid.uuid4().hex[:10]}"  # this run's apikey: its topics and no one else's
    subscriber = Subscriber(url, tag, tmp)
    cpu_before = _cpu_s()
    offset = time.time() - time.monotonic()  # mosquitto_sub stamps arrivals in Unix time
    if label == "transport":
        start, end, done = publish_transport(url, tag, ids, payloads, n, qos)
    else:
        start, end, done = publish_plain(url, tag, ids, payloads, n, qos,
                                         None if label == "paho_default" else WINDOW)
    cpu = _cpu_s() - cpu_before
    got = subscriber.result(n)
    publish_s = end - start
    deliver_s = got["last_unix"] - offset - start if got["last_unix"] is not None else float("nan")
    figures = {"messages": n, "published_done": done, "received": got["received"],
               "published_per_s": round(done / publish_s, 1),
               "delivered_per_s": round(got["received"] / deliver_s, 1),
               "publish_s": round(publish_s, 3), "deliver_s": round(deliver_s, 3),
               "publisher_cpu_s": round(cpu, 2), "publisher_cpu_us_per_msg": round(cpu / max(done, 1) * 1e6, 2)}
    print(f"  QoS {qos} {label:15s} {figures['published_per_s']:>10,.0f} published/s "
          f"{figures['delivered_per_s']:>10,.0f} delivered/s  received {got['received']:,}/{n:,}  "
          f"publisher CPU {figures['publisher_cpu_us_per_msg']:.1f} µs/msg")
    return figures


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def interleaved(url: str, qos: int, n: int, ids: list[str], payloads: list[bytes], repeats: int,
                tmp: Path) -> dict:
    """Each publisher `repeats` times, taking turns (so a slow spell of the machine hits all of them), and
    the medians: a 2-core machine's rates move by tens of percent from run to run."""
    runs: dict[str, list[dict]] = {label: [] for label in LABELS}
    for _ in range(repeats):
        for label in LABELS:
            runs[label].append(measure(url, label, qos, n, ids, payloads, tmp))
    out = {}
    for label, done in runs.items():
        median = {key: float(np.median([run[key] for run in done]))
                  for key in ("published_per_s", "delivered_per_s", "publisher_cpu_us_per_msg")}
        out[label] = {"median": median, "all_received": all(run["received"] == n for run in done), "runs": done}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="mqtt://127.0.0.1:1883", help="the broker (loopback)")
    parser.add_argument("--n0", type=int, default=200_000, help="messages per QoS 0 run")
    parser.add_argument("--n1", type=int, default=50_000, help="messages per QoS 1 run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each publisher, taking turns")
    parser.add_argument("--embedded", type=int, default=5_000, metavar="N",
                        help="messages per QoS for the transport on the embedded broker (0: skip)")
    args = parser.parse_args()
    host = parse_address(args.url)[0]
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("this benchmark publishes on loopback only")
    if not (0 < args.n0 <= 10_000_000 and 0 < args.n1 <= 60_000 and 1 <= args.repeats <= 10):
        raise SystemExit("--n0 in 1..10,000,000, --n1 in 1..60,000 (16-bit packet ids), --repeats in 1..10")
    if not shutil.which("mosquitto_sub"):
        raise SystemExit("this benchmark counts deliveries with mosquitto_sub: apt-get install mosquitto-clients")
    ids, payloads = fleet_payloads(DEVICES)
    sizes = [len(p) for p in payloads]
    print(f"{len(ids):,} devices, payload {np.mean(sizes):.0f} bytes on average, broker {args.url}")
    results: dict = {}
    embedded = {}
    with tempfile.TemporaryDirectory() as tmp:
        for qos, n in ((0, args.n0), (1, args.n1)):
            results[f"qos{qos}"] = interleaved(args.url, qos, n, ids, payloads, args.repeats, Path(tmp))
            for label, figures in results[f"qos{qos}"].items():
                m = figures["median"]
                print(f"QoS {qos} {label:15s} median {m['published_per_s']:>10,.0f} published/s "
                      f"{m['delivered_per_s']:>10,.0f} delivered/s  {m['publisher_cpu_us_per_msg']:.1f} µs CPU/msg  "
                      f"all received: {figures['all_received']}")
        if args.embedded:
            with EmbeddedBroker() as broker:
                print(f"embedded broker {broker.url}:")
                embedded = {f"qos{qos}": measure(broker.url, "transport", qos, args.embedded, ids, payloads, Path(tmp))
                            for qos in (0, 1)}
    write("devices_mqtt", {"broker": args.url, "devices": len(ids),
                           "payload_bytes_mean": round(float(np.mean(sizes)), 1),
                           "payload": "IoT Agent JSON TrafficFlowObserved (devices_sim.encoders.to_iota_json)",
                           "send_batch": SEND_BATCH, "transport_window": WINDOW, "repeats": args.repeats,
                           "mosquitto": results, "embedded_amqtt": embedded})


if __name__ == "__main__":
    main()

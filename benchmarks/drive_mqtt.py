"""MQTT publish rate: the live driver's `Sender.mqtt` beside a plain paho-mqtt loop, same Mosquitto.

Same run, same broker (Mosquitto at 127.0.0.1:1883 unless --url), same payloads as
`devices_mqtt.py`: FIWARE IoT Agent JSON `TrafficFlowObserved` readings from `devices_sim.encoders` for
10,000 detectors (cycled), each on its device's topic `/json/{apikey}/{device}/attrs`. For QoS 0 and 1:

- `paho_default`: a plain loop of `client.publish(topic, payload, qos)` with paho's defaults (QoS 1: at
  most 20 messages in flight), then wait until paho reports every message done;
- `paho_window100`: the same with 100 in flight;
- `sender`: `Sender.mqtt(intended, "mqtt.publish", topic, payload, qos)` with intended = now, handed over
  as fast as the Sender takes them while fewer than `--window` are in flight (its own cap is 2,000;
  going past it would turn messages into `overload` errors, not measure its rate; counted with
  `Sender.pending`, which includes what was handed over and not yet sent). Every message is
  recorded in its Stats (latency = PUBACK for QoS 1, written to the socket for QoS 0, from intended).

Published/s counts from the first publish until the publisher's last message is done. `mosquitto_sub`
(C) counts what the broker routes on this run's topics (QoS 0; see `devices_mqtt.py` for why), so a
publisher that loses messages shows it. Each publisher runs `--repeats` times, taking turns; the table
shows medians. The publishing process is pinned to one core (Mosquitto and mosquitto_sub share the other).

    .venv/bin/python benchmarks/drive_mqtt.py [--n0 100000] [--n1 30000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from _common import write
from devices_mqtt import DEVICES, WAIT_S, Subscriber, _cpu_s, fleet_payloads, publish_plain
from drive_servers import cores, pin
from citytwin.devices_sim.encoders import iota_topic
from citytwin.ioc.core.iota import parse_address
from citytwin.twin.drive.sender import Sender
from citytwin.twin.drive.stats import LAG, Stats

KEY = "mqtt.publish"
LABELS = ("paho_default", "paho_window100", "sender")
TIMEOUT_S = 10.0


def publish_sender(url: str, tag: str, ids: list[str], payloads: list[bytes], n: int, qos: int,
                   window: int) -> tuple[float, float, int, dict]:
    """Through a Sender: (start, done, messages recorded without error, extra figures)."""
    stats = Stats()
    sender = Sender(stats, timeout_s=TIMEOUT_S)
    sender.start()
    try:
        sender.connect_mqtt(url, client_id=f"bench-sender-{uuid.uuid4().hex[:8]}")
        topics = [iota_topic(tag, device) for device in ids]
        count = len(ids)
        start = time.monotonic()
        deadline = start + WAIT_S
        sent = 0
        while sent < n and time.monotonic() < deadline:
            room = min(window - sender.pending, n - sent)  # pending: in flight + handed over, not yet out
            if room <= 0:
                time.sleep(0.0005)
                continue
            now = time.monotonic()
            for i in range(sent, sent + room):
                sender.mqtt(now, KEY, topics[i % count], payloads[i % count], qos)
            sent += room
        while stats.get(KEY).count < sent and time.monotonic() < deadline:
            time.sleep(0.001)
        end = time.monotonic()
    finally:
        sender.stop(drain_s=2.0)
    op, lag = stats.get(KEY), stats.get(LAG)
    extra = {"errors": op.errors, "latency_p50_ms": _ms(op.percentile(50)),
             "latency_p99_ms": _ms(op.percentile(99)), "lag_p99_ms": _ms(lag.percentile(99))}
    return start, end, op.count - op.error_count, extra


def measure(url: str, label: str, qos: int, n: int, ids: list[str], payloads: list[bytes], window: int,
            tmp: Path) -> dict:
    tag = f"bench{uuid.uuid4().hex[:10]}"  # this run's apikey: its topics and no one else's
    subscriber = Subscriber(url, tag, tmp)
    cpu_before = _cpu_s()
    offset = time.time() - time.monotonic()  # mosquitto_sub stamps arrivals in Unix time
    extra: dict = {}
    if label == "sender":
        start, end, done, extra = publish_sender(url, tag, ids, payloads, n, qos, window)
    else:
        start, end, done = publish_plain(url, tag, ids, payloads, n, qos,
                                         None if label == "paho_default" else 100)
    cpu = _cpu_s() - cpu_before
    got = subscriber.result(n)
    publish_s = end - start
    deliver_s = got["last_unix"] - offset - start if got["last_unix"] is not None else float("nan")
    figures = {"messages": n, "published_done": done, "received": got["received"],
               "published_per_s": round(done / publish_s, 1),
               "delivered_per_s": round(got["received"] / deliver_s, 1),
               "publish_s": round(publish_s, 3), "publisher_cpu_s": round(cpu, 2),
               "publisher_cpu_us_per_msg": round(cpu / max(done, 1) * 1e6, 2), **extra}
    print(f"  QoS {qos} {label:15s} {figures['published_per_s']:>10,.0f} published/s "
          f"{figures['delivered_per_s']:>10,.0f} delivered/s  received {got['received']:,}/{n:,}  "
          f"CPU {figures['publisher_cpu_us_per_msg']:.1f} µs/msg" +
          (f"  p99 {extra['latency_p99_ms']} ms  errors {extra['errors']}" if extra else ""))
    return figures


def interleaved(url: str, qos: int, n: int, ids: list[str], payloads: list[bytes], repeats: int, window: int,
                tmp: Path) -> dict:
    runs: dict[str, list[dict]] = {label: [] for label in LABELS}
    for _ in range(repeats):
        for label in LABELS:
            runs[label].append(measure(url, label, qos, n, ids, payloads, window, tmp))
    return {label: {"median": {key: float(np.median([run[key] for run in done]))
                               for key in ("published_per_s", "delivered_per_s", "publisher_cpu_us_per_msg")},
                    "all_received": all(run["received"] == n for run in done), "runs": done}
            for label, done in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="mqtt://127.0.0.1:1883", help="the broker (loopback)")
    parser.add_argument("--n0", type=int, default=100_000, help="messages per QoS 0 run")
    parser.add_argument("--n1", type=int, default=30_000, help="messages per QoS 1 run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each publisher, taking turns")
    parser.add_argument("--window", type=int, default=1000, help="the Sender's messages in flight at most")
    args = parser.parse_args()
    if parse_address(args.url)[0] not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("this benchmark publishes on loopback only")
    if not (0 < args.n0 <= 1_000_000 and 0 < args.n1 <= 60_000 and 1 <= args.repeats <= 10
            and 1 <= args.window < 2000):
        raise SystemExit("--n0 in 1..1,000,000, --n1 in 1..60,000, --repeats in 1..10, --window in 1..1999")
    if not shutil.which("mosquitto_sub"):
        raise SystemExit("this benchmark counts deliveries with mosquitto_sub: apt-get install mosquitto-clients")
    pin(cores()[1])
    ids, payloads = fleet_payloads(DEVICES)
    sizes = [len(p) for p in payloads]
    print(f"{len(ids):,} devices, payload {np.mean(sizes):.0f} bytes on average, broker {args.url}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for qos, n in ((0, args.n0), (1, args.n1)):
            results[f"qos{qos}"] = interleaved(args.url, qos, n, ids, payloads, args.repeats, args.window,
                                               Path(tmp))
    print()
    print(f"{'publisher':22s} {'QoS':>3s} {'published/s':>12s} {'delivered/s':>12s} {'CPU µs/msg':>11s} "
          f"{'all received':>12s}")
    for qos_name, by_label in results.items():
        for label, figures in by_label.items():
            m = figures["median"]
            print(f"{label:22s} {qos_name[-1]:>3s} {m['published_per_s']:>12,.0f} {m['delivered_per_s']:>12,.0f} "
                  f"{m['publisher_cpu_us_per_msg']:>11.1f} {str(figures['all_received']):>12s}")
        print(f"  {qos_name}: Sender / the faster plain paho loop = {_ratio(by_label):.2f}×")
    write("drive_mqtt", {"broker": args.url, "devices": len(ids),
                         "sender_over_paho": {qos: round(_ratio(by_label), 3) for qos, by_label in results.items()},
                         "payload_bytes_mean": round(float(np.mean(sizes)), 1),
                         "payload": "IoT Agent JSON TrafficFlowObserved (devices_sim.encoders.to_iota_json)",
                         "sender_window": args.window, "repeats": args.repeats, "core": cores()[1],
                         "mosquitto": results})


def _ratio(by_label: dict) -> float:
    """The Sender's median published/s over the faster of the two plain paho loops'."""
    paho = max(by_label[label]["median"]["published_per_s"] for label in ("paho_default", "paho_window100"))
    return by_label["sender"]["median"]["published_per_s"] / paho


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 2)


if __name__ == "__main__":
    main()

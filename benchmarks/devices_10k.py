"""10,000 devices over a simulated day into the in-process port: messages generated, encoded and ingested
per second on one core.

Input: a synthetic district of 20 × 15 km (the largest the schema allows at 250 m blocks is far bigger;
this one has room for 10,000 distinct sites) with 10,000 devices placed by the scenario's own placement:
5,000 traffic detectors (5 min), 1,500 noise sensors (5 min), 1,000 water-level gauges (5 min), 500 rain
gauges (5 min), 1,000 air-quality sensors (15 min) and 1,000 cameras (evaluating every minute, alerts only),
all with a busy fault mix (dropout, stuck, drift, bursts, duplicates, late delivery, clock skew). The world
is a `StaticWorld` whose traffic follows the Vietnamese weekday profile hour by hour and whose rain falls
in the afternoon, so every fleet samples a changing state without the traffic engine's own cost.

Stages, each timed on its own, in one process (one core):
1. generation: the fleets' `sample` over the day;
2. faults: `FaultModel.apply`;
3. encoding: `Encoder.iota` to IoT Agent JSON payloads;
4. ingestion: `InProcessTransport.send` into `ioc.core` in memory (parse, NGSI-LD document, upsert, rules)
   for the first `--ingest-hours` of the day (the IOC in memory keeps every reading's history).
The peer for 2+3 is the one-message-at-a-time path on the same readings: an `Observation` per reading,
`to_iota_json` and `json.dumps` (what a hand-written device simulator does), timed on a sample.

Target: ≥ 100,000 messages/s for generation and encoding on one core.

    .venv/bin/python benchmarks/devices_10k.py [--ingest-hours 24]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from _common import write

from citytwin.devices_sim.encoders import to_iota_json
from citytwin.devices_sim.network import build_runners
from citytwin.devices_sim.transports import InProcessTransport
from citytwin.devices_sim.world import StaticWorld
from citytwin.twin.city import build_city
from citytwin.twin.hazards import flood_prone
from citytwin.twin.ports import new_ioc
from citytwin.twin.ports.inprocess import EPOCH_DATE
from citytwin.twin.scenario.schema import VN_WEEKDAY_PROFILE, CitySpec, DevicesSpec, HazardsSpec

TARGET_PER_S = 100_000
FAULTS = {"dropout": 0.002, "stuck": 0.002, "drift": 0.1, "burst": 0.005, "duplicate": 0.01, "late": 0.01,
          "clock_skew": 5.0}
FLEETS = [
    {"type": "detector", "name": "det", "interval": 300, "placement": {"budget": 5000, "strategy": "random"}},
    {"type": "noise", "name": "noise", "interval": 300, "placement": {"budget": 1500, "strategy": "random"}},
    {"type": "water_level", "name": "wl", "interval": 300, "placement": {"budget": 1000, "strategy": "random"}},
    {"type": "rain_gauge", "name": "rain", "interval": 300, "placement": {"budget": 500, "strategy": "random"}},
    {"type": "air", "name": "air", "interval": 900, "placement": {"budget": 1000, "strategy": "random"}},
    {"type": "camera", "name": "cam", "interval": 60, "counts": False, "placement": {"budget": 1000, "strategy": "random"}},
]
DAY = 86400.0


def world_at(world: StaticWorld, t: float, base_density: np.ndarray) -> None:
    """The hour's traffic (density follows the weekday profile, speed falls as it fills) and the rain."""
    peak = max(VN_WEEKDAY_PROFILE)
    load = VN_WEEKDAY_PROFILE[int(t // 3600) % 24] / peak
    city = world.city
    world.set_traffic(base_density * load, city.links.free_flow_mps * (1.0 - 0.6 * load))
    world.rain = 40.0 if 14 * 3600 <= t < 16 * 3600 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ingest-hours", type=float, default=24.0)
    args = parser.parse_args()

    city = build_city(CitySpec(network={"source": "synthetic", "width_m": 20000, "height_m": 15000}))
    spec = DevicesSpec(fleets=[{**f, "faults": FAULTS} for f in FLEETS])
    epoch = EPOCH_DATE
    runners = build_runners(spec, city, seed=1, epoch=epoch, start_s=0.0, hazards=HazardsSpec(),
                            flood_prone=flood_prone(city, 0.05))
    devices = sum(len(r.fleet.device_ids) for r in runners)
    rng = np.random.default_rng(0)
    base_density = rng.uniform(5, 40, len(city.links)) * city.links.lanes
    world = StaticWorld.from_density(city, base_density)
    ioc = new_ioc(np.random.default_rng(1))
    transport = InProcessTransport(ioc, epoch)

    timing = {"generation": 0.0, "faults": 0.0, "encoding": 0.0, "ingestion": 0.0}
    messages = ingested = 0
    sample_for_peer = []
    ticks = sorted({k * r.fleet.interval_s for r in runners for k in range(1, int(DAY // r.fleet.interval_s) + 1)})
    for t in ticks:
        world_at(world, t, base_density)
        for runner in runners:
            if t % runner.fleet.interval_s:
                continue
            start = time.perf_counter()
            batch = runner.fleet.sample(t, world)
            mid = time.perf_counter()
            delivery = runner.faults.apply(batch, t) if len(batch) else None
            faulted = time.perf_counter()
            if delivery is None or not len(delivery.batch):
                timing["generation"] += mid - start
                timing["faults"] += faulted - mid
                continue
            payloads = runner.encoder.iota(delivery.batch)
            encoded = time.perf_counter()
            timing["generation"] += mid - start
            timing["faults"] += faulted - mid
            timing["encoding"] += encoded - faulted
            messages += len(payloads)
            if len(sample_for_peer) < 20 and runner.fleet.device_type == "detector" and t > 8 * 3600:
                sample_for_peer.append((runner, delivery.batch))
            if t <= args.ingest_hours * 3600:
                ids = runner.fleet.device_ids[delivery.batch.devices].tolist()
                start = time.perf_counter()
                for device, payload in zip(ids, payloads):
                    transport.send(runner.fleet.kind, [device], [payload], None, None, t)
                timing["ingestion"] += time.perf_counter() - start
                ingested += len(payloads)

    # The peer: an Observation per reading, to_iota_json, json.dumps — on the same detector readings.
    peer_n = 0
    start = time.perf_counter()
    for runner, batch in sample_for_peer:
        for obs in runner.encoder.observations(batch):
            json.dumps(to_iota_json(obs)[0]).encode()
            peer_n += 1
    peer_s = time.perf_counter() - start
    start = time.perf_counter()
    for runner, batch in sample_for_peer:
        runner.encoder.iota(batch)
    batch_s = time.perf_counter() - start

    gen_enc = timing["generation"] + timing["faults"] + timing["encoding"]
    figures = {
        "devices": devices,
        "simulated_s": DAY,
        "messages": messages,
        "stage_s": {k: round(v, 3) for k, v in timing.items()},
        "generation_encoding_per_s": round(messages / gen_enc),
        "target_per_s": TARGET_PER_S,
        "meets_target": messages / gen_enc >= TARGET_PER_S,
        "ingested": ingested,
        "ingest_hours": args.ingest_hours,
        "ingestion_per_s": round(ingested / timing["ingestion"]) if ingested else None,
        "end_to_end_per_s": round(ingested / (gen_enc * ingested / messages + timing["ingestion"])) if ingested else None,
        "ioc_alerts": len(ioc.alerts(limit=10**9)),
        "peer_one_at_a_time": {"messages": peer_n, "encoding_per_s": round(peer_n / peer_s),
                               "batch_encoder_per_s_same_readings": round(peer_n / batch_s)},
    }
    print(json.dumps(figures, indent=2))
    write("devices_10k", figures)


if __name__ == "__main__":
    main()

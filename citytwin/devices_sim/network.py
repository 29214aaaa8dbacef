"""The city's devices on the run's clock: sample, fail, deliver, ingest, record.

Each fleet samples the world every interval (one SimPy process per fleet, all devices at once as
columns); its fault model decides which readings leave the devices, with what values and when they
arrive; a dispatcher hands each message to the transport at its arrival time, so late messages arrive
out of order as they would. The ledger gets what the IOC received (`device.reading`, `camera.alert`),
what went wrong (`device.fault`) and the alerts the IOC raised and cleared (`ioc.alert`).

Messages are encoded as IoT Agent JSON (the MQTT and in-process paths) or NGSI-LD entities (HTTP) when
they are sampled, and delivered whole, so what reaches the IOC is byte for byte what a device would send.
"""

from __future__ import annotations

import heapq
import math
import os
import queue
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

import numpy as np
import simpy

from citytwin.twin.city.model import City
from citytwin.twin.ledger import Ledger
from citytwin.twin.scenario.schema import BusFleet, CameraFleet, DevicesSpec, HazardsSpec

from . import buses, cameras, sensors
from .batch import Batch, Delivery, Encoder
from .faults import FaultModel, measured_fields
from .placement import Sites, incident_history, place
from .transports import EmbeddedBroker, HttpTransport, InProcessTransport, MqttTransport, alert_fields, provision

IOC_KEY_ENV = "CITYTWIN_IOC_KEY"  # the API key an HTTP transport writes with (an operator or device key)
DISPATCH_S = 1.0  # the dispatcher looks for due messages at least this often (their times stay exact)
TICK_S = 60.0  # how often the IOC checks for devices gone silent
NODE_COVERING = frozenset({"air", "noise", "water_level", "rain_gauge"})  # their `covers` are junctions


@dataclass(eq=False)  # one per fleet: compared and hashed by identity
class Runner:
    """One fleet and what sends for it: its encoder, its faults and its name in the ledger."""

    fleet: Any  # a fleet of devices_sim.sensors, .cameras or .buses
    encoder: Encoder
    faults: FaultModel
    fleet_name: str

    @property
    def device_type(self) -> str:
        return self.fleet.device_type


def fleet_streams(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Placement, sampling and fault generators of the scenario's fleet `index`: a stream of their own
    (spawn key 3 of the run's seed), so adding a fleet changes nothing for the others or the traffic."""
    children = np.random.SeedSequence(seed, spawn_key=(3, index)).spawn(3)
    return tuple(np.random.default_rng(c) for c in children)  # type: ignore[return-value]


def build_runners(spec: DevicesSpec, city: City, *, seed: int, epoch: datetime, start_s: float,
                  hazards: HazardsSpec, flood_prone: np.ndarray) -> list[Runner]:
    """Every fleet of the scenario placed on the city, with its encoder and fault model."""
    runners: list[Runner] = []
    history = None
    for index, fleet_spec in enumerate(spec.fleets):
        place_rng, sample_rng, fault_rng = fleet_streams(seed, index)
        if isinstance(fleet_spec, BusFleet):
            fleet = buses.BusFleet(fleet_spec, city, sample_rng, start_s=start_s)
        else:
            if history is None and getattr(fleet_spec.placement, "strategy", None) == "hotspots":
                history = incident_history(city, hazards, np.random.default_rng(
                    np.random.SeedSequence(seed, spawn_key=(4,))))
            sites = place(fleet_spec, city, place_rng, incident_history=history, flood_prone=flood_prone)
            make = cameras.CameraFleet if isinstance(fleet_spec, CameraFleet) else sensors.SENSOR_FLEETS[fleet_spec.type]
            fleet = make(fleet_spec, city, sites, sample_rng, start_s=start_s)
        fleets = [fleet]
        if isinstance(fleet_spec, CameraFleet):
            counting = fleet.counting_fleet()
            if counting is not None:
                fleets.append(counting)
        for k, f in enumerate(fleets):
            rng = fault_rng if k == 0 else np.random.default_rng(fault_rng.integers(2**63))
            runners.append(Runner(
                fleet=f, encoder=Encoder(f.kind, f.device_ids, f.sites.lon, f.sites.lat, epoch),
                faults=FaultModel(fleet_spec.faults, len(f.device_ids), f.interval_s, rng, measured_fields(f.kind)),
                fleet_name=fleet_spec.name))
    return runners


class DeviceNetwork:
    """The fleets' processes, the dispatcher and the IOC's clock tick, writing into the ledger."""

    def __init__(self, env: simpy.Environment, runners: list[Runner], world, ledger: Ledger, transport, city: City,
                 *, duration_s: float, sync: Callable[[], None], ngsi_ld: bool = False, lead_s: float = 0.0):
        self.env, self.runners, self.world, self.ledger = env, runners, world, ledger
        self.transport, self.city, self.duration_s = transport, city, duration_s
        self.sync = sync  # brings the traffic engine up to env.now before the devices look at it
        self.ngsi_ld = ngsi_ld  # the transport wants NGSI-LD entities rather than IoT Agent JSON
        # Hand messages over this much virtual time before they are due: a live transport then sends each
        # at its exact intended wall time instead of whenever the clock's process got round to it.
        self.lead_s = lead_s
        self._heap: list[tuple] = []
        self._seq = 0
        self._wake: simpy.Event | None = None
        self.sent = 0

    def start(self) -> None:
        self.record_installed()
        for runner in self.runners:
            self.env.process(self._sampling(runner))
        self.env.process(self._dispatcher())
        if hasattr(self.transport, "tick"):
            self.env.process(self._ticks())

    # -- the processes -----------------------------------------------------------------------------------
    def _sampling(self, runner: Runner):
        interval = runner.fleet.interval_s
        k = 1
        while k * interval <= self.duration_s + 1e-9:
            t = k * interval
            yield self.env.timeout(t - self.env.now)
            self.sync()
            batch = runner.fleet.sample(t, self.world)
            if len(batch):
                self._queue(runner, runner.faults.apply(batch, t))
            self._record_faults(runner)
            k += 1

    def _dispatcher(self):
        while True:
            if not self._heap:
                self._wake = self.env.event()
                yield self._wake
                self._wake = None
                continue
            due = self._heap[0][0] - self.lead_s
            if due > self.env.now:
                # Capped, so a message queued meanwhile with an earlier time waits at most DISPATCH_S.
                yield self.env.timeout(min(due - self.env.now, DISPATCH_S))
                continue
            self._send_due(self.env.now + self.lead_s)

    def _ticks(self):
        while self.env.now + TICK_S <= self.duration_s + 1e-9:
            yield self.env.timeout(TICK_S)
            self._record_alerts(self.transport.tick(self.env.now), self.env.now)

    # -- queueing and sending --------------------------------------------------------------------------------
    def _queue(self, runner: Runner, delivery: Delivery) -> None:
        batch = delivery.batch
        if not len(batch):
            return
        payloads = runner.encoder.ngsi_ld(batch) if self.ngsi_ld else runner.encoder.iota(batch)
        rows = _rows(runner, delivery, self.city)
        for send_t, payload, row in zip(delivery.send_t.tolist(), payloads, rows):
            heapq.heappush(self._heap, (send_t, self._seq, runner, payload, row))
            self._seq += 1
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def _send_due(self, now: float) -> None:
        readings: list[tuple] = []
        while self._heap and self._heap[0][0] <= now:
            send_t, _, runner, payload, row = heapq.heappop(self._heap)
            readings.append((send_t, runner.fleet.device_ids[row.device], runner, row, payload))
        if self.ngsi_ld:  # one request per fleet's due messages: a round trip per reading would be the bottleneck
            for runner in dict.fromkeys(r[2] for r in readings):
                mine = [r for r in readings if r[2] is runner]
                self.transport.send(runner.fleet.kind, [r[1] for r in mine], [r[4] for r in mine], None, None, now)
        for send_t, device, runner, row, payload in readings:
            if not self.ngsi_ld:  # one message at a time, each at its own arrival time in the IOC's clock
                self._record_alerts(self.transport.send(runner.fleet.kind, [device], [payload], None, None, send_t),
                                    send_t)
            if row.event is not None:
                self.ledger.append("camera.alert", send_t, device, fleet=runner.fleet_name, cause=row.event,
                                   link=row.link, node=row.node, truth_t=row.truth_t, observed_t=row.observed_t)
        self.sent += len(readings)
        self._record_readings([r[:4] for r in readings])

    def finish(self) -> None:
        """Deliver nothing more; hand over what the transport still holds (MQTT acks, late alerts)."""
        if hasattr(self.transport, "finish"):
            self._record_alerts(self.transport.finish(), self.env.now)

    # -- the ledger -------------------------------------------------------------------------------------------
    def record_installed(self) -> None:
        links, nodes = self.city.links.ids, self.city.nodes.ids
        for runner in self.runners:
            fleet, sites = runner.fleet, runner.fleet.sites
            n = len(fleet.device_ids)
            covers_ids = nodes if fleet.device_type in NODE_COVERING else links
            self.ledger.append_many(
                "device.installed", np.zeros(n), fleet.device_ids, device_type=[fleet.device_type] * n,
                fleet=[runner.fleet_name] * n, node=_ids(nodes, sites.nodes), link=_ids(links, sites.links),
                lon=sites.lon, lat=sites.lat, interval_s=np.full(n, float(fleet.interval_s)),
                covers=[" ".join(covers_ids[np.asarray(c, dtype=np.int64)].tolist()) for c in sites.covers])

    def _record_readings(self, readings: list[tuple]) -> None:
        if not readings:
            return
        t, device, runner, row = zip(*readings)
        self.ledger.append_many(
            "device.reading", t, device, device_type=[r.device_type for r in runner],
            fleet=[r.fleet_name for r in runner], observed_t=[r.observed_t for r in row],
            fault=[r.fault for r in row], link=[r.link for r in row], node=[r.node for r in row],
            value=[r.value for r in row])

    def _record_faults(self, runner: Runner) -> None:
        for event in runner.faults.drain_events():
            self.ledger.append("device.fault", event.t, runner.fleet.device_ids[event.device],
                               device_type=runner.device_type, fleet=runner.fleet_name, cause=event.cause,
                               duration_s=event.duration_s)

    def _record_alerts(self, alerts, t: float) -> None:
        for alert in alerts or ():
            fields = alert_fields(alert)
            self.ledger.append("ioc.alert", t, fields.pop("subject"), **fields)


# -- transports -------------------------------------------------------------------------------------------------
def connect(spec: DevicesSpec, ioc, runners: list[Runner], *, epoch: datetime, clock: Callable[[], float]):
    """The scenario's transport into `ioc`: in memory at virtual time (the default, repeatable to the byte),
    over MQTT through a broker into the reference IOC's MQTT ingest, or NGSI-LD over HTTP to an IOC at
    `http_url` (whose alerts stay there)."""
    if spec.transport == "inprocess":
        return InProcessTransport(ioc, epoch)
    if spec.transport == "http":  # the key is a secret: from the environment, never the scenario file
        return HttpTransport(spec.http_url, api_key=os.environ.get(IOC_KEY_ENV))
    return MqttLoop(spec, ioc, runners, epoch=epoch, clock=clock)


class MqttLoop:
    """Devices → an MQTT broker (Mosquitto, or an embedded one) → the reference IOC's `MqttIngest` → `ioc`.

    Each device gets a device key in `ioc` (its topic's apikey), exactly as an operator would provision it.
    The ingest runs on paho's thread and stamps what it stores with the run's virtual time, so the alerts
    it raises are collected from that thread and written to the ledger from the run's. Not repeatable to
    the byte: the broker decides when each message is stored."""

    WAIT_S = 60.0  # the most `finish` waits for the broker to hand over what is in flight

    def __init__(self, spec: DevicesSpec, ioc, runners: list[Runner], *, epoch: datetime,
                 clock: Callable[[], float]):
        from citytwin.ioc.server.mqtt_ingest import MqttIngest

        self.ioc, self.epoch = ioc, epoch
        self.broker = EmbeddedBroker().start() if spec.mqtt_url == "embedded" else None
        url = self.broker.url if self.broker is not None else spec.mqtt_url
        keys: dict[str, str] = {}
        for runner in runners:
            keys.update(provision(ioc, runner.fleet.device_ids, runner.fleet.kind.ENTITY_TYPE, now=epoch))
        self._alerts: queue.SimpleQueue = queue.SimpleQueue()
        self.ingest = MqttIngest(ioc, url, on_result=lambda result: self._alerts.put(result.alerts),
                                 clock=lambda: epoch + timedelta(seconds=clock()))
        self.ingest.start()
        if not self.ingest.wait_connected(10.0):
            self.close()
            raise ConnectionError(f"the IOC's MQTT ingest could not connect to {url}")
        self.transport = MqttTransport(url, keys.__getitem__, qos=spec.qos)

    def send(self, kind, device_ids, payloads, batch, encoder, t: float) -> list:
        self.transport.send(kind, device_ids, payloads, batch, encoder, t)
        return self._drain()

    def tick(self, t: float) -> list:
        return self.ioc.tick(self.epoch + timedelta(seconds=t)) + self._drain()

    def finish(self) -> list:
        """Wait (bounded) until the broker has handed every message to the ingest, then shut down."""
        self.transport.flush(self.WAIT_S)
        deadline = time.monotonic() + self.WAIT_S
        while self.ingest.received < self.transport.published and time.monotonic() < deadline:
            time.sleep(0.02)
        self.close()
        return self._drain()

    def close(self) -> None:
        if hasattr(self, "transport"):
            self.transport.close()
        self.ingest.stop()
        if self.broker is not None:
            self.broker.stop()

    def _drain(self) -> list:
        alerts = []
        while not self._alerts.empty():
            alerts.extend(self._alerts.get_nowait())
        return alerts


@dataclass(frozen=True)
class _Row:
    """What the ledger keeps of one message besides its time and device."""

    device: int
    observed_t: float
    fault: str
    link: str | None
    node: str | None
    value: float | None
    event: str | None = None  # cameras: what the alert is about
    truth_t: float | None = None


def _rows(runner: Runner, delivery: Delivery, city: City) -> list[_Row]:
    batch: Batch = delivery.batch
    n = len(batch)
    meta = batch.meta
    link = _ids(city.links.ids, meta.get("link", np.full(n, -1)))
    node = _ids(city.nodes.ids, meta.get("node", np.full(n, -1)))
    value = [None if v is None or not math.isfinite(v) else v
             for v in np.asarray(meta.get("value", np.full(n, np.nan)), float).tolist()]
    event = meta.get("event")
    truth = meta.get("truth_t")
    return [_Row(device=d, observed_t=o, fault=f, link=lk, node=nd, value=v,
                 event=None if event is None else str(event[i]),
                 truth_t=None if truth is None else float(truth[i]))
            for i, (d, o, f, lk, nd, v) in enumerate(zip(batch.devices.tolist(), batch.observed_t.tolist(),
                                                         delivery.fault.tolist(), link, node, value))]


def _ids(names: np.ndarray, index: np.ndarray) -> list[str | None]:
    index = np.asarray(index, dtype=np.int64)
    return [None if i < 0 else str(names[i]) for i in index.tolist()]


__all__ = ["DeviceNetwork", "MqttLoop", "Runner", "Sites", "build_runners", "connect", "fleet_streams"]

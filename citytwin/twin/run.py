"""One scenario run: city, demand, engine, hazards on one SimPy clock, into the ledger, then KPIs."""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable

import numpy as np
import simpy

from .city import build_city
from .city.model import City
from .city.paths import od_free_flow
from .clock import virtual_clock
from .hazards import Hazards, draw_incidents, draw_rain, flood_prone
from .kpi.field_reporting import field_reporting_kpis
from .kpi.population import person_trip_kpis
from .kpi.traffic import hazard_kpis, traffic_kpis
from .ledger import Ledger
from .scenario.schema import VN_WEEKDAY_PROFILE, AgentDemand, OdDemand, Scenario
from .scenario.units import format_clock
from .traffic.demand import od_demand, tntp_demand
from .traffic.engine import TrafficEngine, TripBatch, TripResults
from .traffic.uxsim_engine import UXsimEngine


@dataclass
class RunResult:
    out_dir: Path
    kpis: dict
    city: City

    @property
    def ledger_path(self) -> Path:
        return self.out_dir / "ledger.parquet"

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.html"


class TrafficRecorder:
    """Reads the engine back every chunk: finished trips, and link states every snapshot interval."""

    def __init__(self, engine: TrafficEngine, city: City, ledger: Ledger, trips: TripBatch, *,
                 vehicles_per_trip: float, pcu_per_trip: float):
        self.engine, self.city, self.ledger = engine, city, ledger
        self.vehicles_per_trip, self.pcu_per_trip = vehicles_per_trip, pcu_per_trip
        self._free_flow: dict[str, float] = {}
        self.add(trips)

        self._snapshot_times: list[float] = []

    def add(self, trips: TripBatch) -> None:
        """Trips added to the engine (at the start, or as each day of residents' trips is loaded)."""
        self.engine.add_trips(trips)
        self._free_flow.update(zip(trips.ids.tolist(), od_free_flow(city=self.city, origin=trips.origin,
                                                                    dest=trips.dest).tolist()))

    def process(self, env: simpy.Environment, chunk_s: float, snapshot_s: float, end_s: float,
                on_progress: Callable[[float], None]):
        next_snapshot = snapshot_s
        while env.now < end_s:
            yield env.timeout(min(chunk_s, end_s - env.now))
            self.engine.advance_to(env.now)
            self.record_finished()
            if env.now + 1e-9 >= next_snapshot:
                self.record_links()
                next_snapshot += snapshot_s
            on_progress(env.now)

    def finish(self, t: float) -> None:
        """At the end of the run (or where it was stopped): the last trips, what is still under way,
        and the link flows of every snapshot interval, read once from the engine's count curves."""
        self.record_finished()
        self.record_unfinished(t)
        self.record_flows()

    def record_finished(self) -> None:
        done = self.engine.finished_trips()
        if len(done):
            self._trips("trip.end", done.arrive_t, done, travel_time_s=done.arrive_t - done.depart_t)

    def record_unfinished(self, t: float) -> None:
        left = self.engine.unfinished_trips()
        if len(left):
            self._trips("trip.unfinished", np.full(len(left), t), left)

    def _trips(self, kind: str, t: np.ndarray, r: TripResults, **extra) -> None:
        names = self.city.nodes.ids
        n = len(r)
        self.ledger.append_many(kind, t, r.ids, origin=names[r.origin], dest=names[r.dest], depart_t=r.depart_t,
                                free_flow_s=[self._free_flow[i] for i in r.ids.tolist()],
                                vehicles=np.full(n, self.vehicles_per_trip), pcu=np.full(n, self.pcu_per_trip),
                                **extra)

    def record_links(self) -> None:
        s = self.engine.link_snapshot()
        self._snapshot_times.append(s.t)
        self.ledger.append_many("link.state", np.full(len(s.speed_mps), s.t), self.city.links.ids,
                                on_link=s.on_link, speed_mps=s.speed_mps, density_pcu_km=s.density_pcu_km,
                                queue=s.queue)

    def record_flows(self) -> None:
        times = np.asarray(self._snapshot_times)
        if not len(times):
            return
        entries, exits = self.engine.counts_at(times)  # cumulative: the interval's flow is the difference
        n = len(self.city.links)
        self.ledger.append_many("link.flow", np.repeat(times, n), np.tile(self.city.links.ids, len(times)),
                                entries=np.diff(entries, axis=0, prepend=0.0).ravel(),
                                exits=np.diff(exits, axis=0, prepend=0.0).ravel(),
                                duration_s=np.repeat(np.diff(times, prepend=0.0), n))


def run_scenario(scenario: Scenario, out_dir: str | Path, *, seed: int | None = None,
                 progress=None, write_report: bool = True, source: str = "scenario") -> RunResult:
    """Run `scenario` and write ledger.parquet, kpis.json and report.html into `out_dir`. `source` names
    the scenario file in messages about input that only the city can check (a device on a missing link)."""
    seed = scenario.seed if seed is None else seed
    city, trips = load_inputs(scenario, seed, source)
    out = Path(out_dir)  # created only once the inputs have loaded: bad input leaves nothing behind
    out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out / "ledger.parquet")
    twin = build_twin(scenario, virtual_clock(), city, trips, ledger, seed)
    duration = scenario.duration
    interrupted = False
    with progress or nullcontext() as bar:
        task = bar.add_task(f"{scenario.name}: simulating", total=duration) if bar else None
        on_progress = (lambda t: bar.update(task, completed=t)) if bar else (lambda t: None)
        try:
            twin.run(duration, on_progress)
        except KeyboardInterrupt:  # keep what was simulated: the ledger up to here is complete
            interrupted = True
    twin.finish()
    if interrupted:
        raise KeyboardInterrupt

    table = ledger.table()
    kpis = compute_kpis(table, city, scenario, seed)
    (out / "kpis.json").write_text(json.dumps(kpis, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if write_report:
        from .report.html import write_report as render

        render(out / "report.html", city=city, ledger=table, kpis=kpis, title=scenario.name)
    return RunResult(out_dir=out, kpis=kpis, city=city)


def load_inputs(scenario: Scenario, seed: int, source: str = "scenario") -> tuple[City, TripBatch]:
    """The city and the demand: everything bad input can break, done before anything is written."""
    city = build_city(scenario.city)
    if scenario.devices is not None:
        from citytwin.devices_sim.placement import check_sites

        check_sites(scenario.devices, city, source)
    demand_rng, _, _ = seed_streams(seed)
    return city, scenario_demand(scenario, city, demand_rng)


@dataclass
class Twin:
    """Everything a run puts on its clock: traffic, hazards, people and devices, recording to the ledger."""

    scenario: Scenario
    env: simpy.Environment
    city: City
    engine: UXsimEngine
    ledger: Ledger
    recorder: TrafficRecorder
    hazards: Hazards
    people: object | None
    devices: object | None

    def run(self, until: float, on_progress: Callable[[float], None] = lambda t: None) -> None:
        tr = self.scenario.traffic
        self.env.process(self.recorder.process(self.env, tr.chunk, tr.snapshot, until, on_progress))
        self.env.run(until=until + 1e-6)
        self.engine.advance_to(until)

    def finish(self) -> None:
        """Close the record where the run stopped (at its end, or where it was interrupted)."""
        end = self.engine.time
        if self.devices is not None:
            self.devices.finish()
        self.recorder.finish(end)
        self.ledger.append("run.end", end, self.scenario.name, duration_s=end)
        self.ledger.close()
        self.engine.close()


def build_twin(scenario: Scenario, env: simpy.Environment, city: City, trips: TripBatch, ledger: Ledger, seed: int,
               *, device_transport=None, device_epoch=None, device_lead_s: float = 0.0, people_port=None) -> Twin:
    """The run's world on `env`: a virtual clock for `citytwin run`, a wall clock for `citytwin drive`.
    `device_transport(spec, ioc, runners, epoch=, clock=)` carries the devices' messages (default: the
    scenario's own transport); `device_epoch` is the date of t = 0 on their clocks. `people_port` is where
    citizens, operators and crews act (default: an IOC in memory, in virtual time)."""
    _, hazard_rng, engine_seed = seed_streams(seed)
    tr = scenario.traffic
    duration = scenario.duration
    ledger.append("run.start", 0.0, scenario.name, cause=f"seed={seed}")
    engine = UXsimEngine(city, horizon_s=duration, platoon_pcu=tr.platoon_pcu, reaction_time_s=tr.reaction_time_s,
                         route_update_s=tr.route_update, route_noise=tr.route_noise,
                         seed=engine_seed)
    people = _people(scenario, env, city, engine, ledger, seed, people_port) \
        if scenario.population is not None else None
    vehicles_per_trip = people.vehicles_per_platoon if people is not None else tr.platoon_pcu / tr.mean_pcu
    recorder = TrafficRecorder(engine, city, ledger, trips, vehicles_per_trip=vehicles_per_trip,
                               pcu_per_trip=float(tr.platoon_pcu))
    if people is not None:
        people.add_platoons = recorder.add
        people.start()
    incidents = draw_incidents(city, scenario.hazards, start_s=scenario.start, duration_s=duration,
                               hourly_weights=_hourly_weights(scenario), rng=hazard_rng)
    rain = draw_rain(scenario.hazards, start_s=scenario.start, duration_s=duration, rng=hazard_rng)
    hazards = Hazards(env, city, engine, ledger, scenario.hazards, incidents, rain,
                      on_flood=people.on_flood if people is not None else None)
    hazards.start()
    devices = None
    if scenario.devices is not None:
        ioc = getattr(people.ctx.port, "ioc", None) if people is not None else None
        devices = _devices(scenario, env, city, engine, hazards, ledger, seed, ioc,
                           vehicles_per_pcu=vehicles_per_trip / tr.platoon_pcu, transport=device_transport,
                           epoch=device_epoch, lead_s=device_lead_s)
    return Twin(scenario=scenario, env=env, city=city, engine=engine, ledger=ledger, recorder=recorder,
                hazards=hazards, people=people, devices=devices)


def _people(scenario: Scenario, env: simpy.Environment, city: City, engine: TrafficEngine, ledger: Ledger,
            seed: int, port=None):
    """The residents and, with field reporting, the IOC they report to: `port`, or one in memory (virtual
    time)."""
    from citytwin.agents.context import AgentContext  # the run brings the people in: the top of the flow
    from citytwin.agents.model import CityModel, agent_streams

    from .ports import InProcessPort, new_ioc

    streams = agent_streams(seed)
    fr = scenario.field_reporting
    if port is None:
        port = InProcessPort(new_ioc(streams["ioc"], fr.organisation.deadlines if fr else None), ledger,
                             start_s=scenario.start)
    ctx = AgentContext(env=env, model=None, city=city, engine=engine, ledger=ledger, port=port,
                       start_s=scenario.start, duration_s=scenario.duration)
    return CityModel(scenario, ctx, streams)


def _devices(scenario: Scenario, env: simpy.Environment, city: City, engine: TrafficEngine, hazards: Hazards,
             ledger: Ledger, seed: int, ioc, *, vehicles_per_pcu: float, transport=None, epoch=None,
             lead_s: float = 0.0):
    """The device fleet, sampling this run's world and feeding the IOC the people report to (or one of its
    own) over the scenario's transport."""
    from citytwin.devices_sim.network import DeviceNetwork, build_runners, connect
    from citytwin.devices_sim.world import TwinWorld

    from .ports import new_ioc
    from .ports.inprocess import EPOCH_DATE

    spec = scenario.devices
    epoch = epoch or EPOCH_DATE + timedelta(seconds=scenario.start)
    if ioc is None:
        ioc = new_ioc(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(5,))))
    runners = build_runners(spec, city, seed=seed, epoch=epoch, start_s=scenario.start, hazards=scenario.hazards,
                            flood_prone=flood_prone(city, scenario.hazards.rain.low_node_share))

    def sync() -> None:
        engine.advance_to(env.now)

    world = TwinWorld(city, engine, hazards, vehicles_per_pcu=vehicles_per_pcu,
                      now=lambda: (sync(), env.now)[1])
    connect_to = transport or connect
    carrier = connect_to(spec, ioc, runners, epoch=epoch, clock=lambda: env.now)
    network = DeviceNetwork(env, runners, world, ledger, carrier, city, duration_s=scenario.duration, sync=sync,
                            ngsi_ld=getattr(carrier, "wants_ngsi_ld", spec.transport == "http"), lead_s=lead_s)
    network.start()
    return network


def _hourly_weights(scenario: Scenario) -> np.ndarray:
    """When in the day traffic (and so incidents) is heavy."""
    demand = scenario.demand
    return np.asarray(demand.hourly_weights() if isinstance(demand, OdDemand) else
                      VN_WEEKDAY_PROFILE if isinstance(demand, AgentDemand) else [1.0] * 24)


def seed_streams(seed: int) -> tuple[np.random.Generator, np.random.Generator, int]:
    """The run's random streams: demand, hazards, and the engine's own seed. Independent streams per
    concern, so drawing more hazards never changes the demand."""
    demand, hazards, engine = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    return demand, hazards, int(engine.integers(2**31))


def scenario_demand(scenario: Scenario, city: City, rng: np.random.Generator) -> TripBatch:
    tr, d = scenario.traffic, scenario.demand
    if isinstance(d, AgentDemand):  # the residents' trips are loaded day by day as the run goes
        return TripBatch(ids=np.empty(0, object), origin=np.empty(0, np.int64), dest=np.empty(0, np.int64),
                         depart_t=np.empty(0))
    if isinstance(d, OdDemand):
        return od_demand(city, d, mean_pcu=tr.mean_pcu, platoon_pcu=tr.platoon_pcu, start_s=scenario.start,
                         duration_s=scenario.duration, rng=rng)
    return tntp_demand(city, d, mean_pcu=tr.mean_pcu, platoon_pcu=tr.platoon_pcu, duration_s=scenario.duration,
                       rng=rng)


def compute_kpis(table, city: City, scenario: Scenario, seed: int) -> dict:
    """kpis.json: each KPI with its value, unit and label, plus the series the report plots."""
    traffic = traffic_kpis(table, city, start_s=scenario.start,
                           congested_speed_ratio=scenario.kpi.congested_speed_ratio)
    out = {
        "scenario": scenario.name,
        "seed": seed,
        "start_clock": format_clock(scenario.start),
        "duration_s": scenario.duration,
        "city": city.summary(),
        "kpis": {**traffic["kpis"], **hazard_kpis(table, end_t=scenario.duration)},
        "series": traffic["series"],
        "peak": traffic["peak"],
    }
    if scenario.population is not None:
        out["kpis"].update(person_trip_kpis(table, residents=scenario.population.residents,
                                            duration_s=scenario.duration))
    reporting = field_reporting_kpis(table, start_s=scenario.start, duration_s=scenario.duration)
    if reporting is not None:
        out["field_reporting"] = reporting
    if scenario.devices is not None:
        from .kpi.devices import device_kpis

        devices = device_kpis(table, city, duration_s=scenario.duration, freshness_s=scenario.devices.freshness,
                              flood_prone=flood_prone(city, scenario.hazards.rain.low_node_share))
        if devices is not None:
            out["devices"] = devices
    return out


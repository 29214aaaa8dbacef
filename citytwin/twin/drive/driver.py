"""`citytwin drive`: the twin in wall-clock time, its device fleet sent to a live IOC, measured as an open model.

The world (traffic, hazards, the residents' trips) runs on a SimPy real-time clock, one virtual second every
1/speedup wall seconds. Each device message gets an intended wall time from its virtual send time; the
device network hands it over a little early and the `Sender` fires it at exactly that time, whatever the
IOC is doing, so a slow IOC cannot slow the schedule and every latency counts from the intended time. A
listener takes the IOC's NGSI-LD notifications and its alerts on MQTT, which give the end-to-end times:
telemetry sent → entity changed (`e2e.entity`), observation sent → alert raised (`e2e.alert`).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import zlib
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
from rich.live import Live

from citytwin.devices_sim.encoders import entity_id, iota_topic
from citytwin.ioc.core.catalog import DEFAULT_CATALOG

from ..errors import UserInputError
from ..kpi.field_reporting import field_reporting_kpis
from ..ledger import Ledger, read_ledger
from ..ports import InProcessPort, new_ioc
from ..ports.live import PUMP_WALL_S, DiscardLedger, LivePort, ShardedPort, WallClock
from ..run import build_twin, load_inputs
from ..scenario.schema import Scenario
from ..scenario.units import format_clock, parse_clock, parse_duration
from . import live, thresholds
from .listener import AlertListener, NotificationListener
from .outputs import write_locust_csvs, write_summary
from .pace import Pace, PacedEnvironment, parse_shape
from .provision import create_device_keys, create_key, subscribe
from .report import write_drive_report
from .sender import Sender
from .stats import Stats

ADMIN_KEY_ENV = "CITYTWIN_ADMIN_KEY"
LEAD_WALL_S = 0.5  # messages reach the sender this long before they are due
SETTLE_S = 3.0  # after the last send, how long notifications and alerts may still arrive
UPSERT_PATH = "/ngsi-ld/v1/entityOperations/upsert"
PEOPLE_RATE_PER_S = 100_000.0  # the drive's citizen and operator keys: the IOC's rate limit is not the test
EXIT_OK, EXIT_THRESHOLD, EXIT_INTERRUPTED = 0, 99, 130


@dataclass
class DriveOptions:
    target: str = "http://127.0.0.1:8311"
    mqtt: str | None = None
    speedup: float = 60.0
    duration_s: float | None = None  # wall seconds; None: the scenario's duration at this speedup
    out: Path = Path("results/drive")
    thresholds: list[str] = field(default_factory=list)
    admin_key: str | None = None
    qos: int = 1
    workers: int = 1
    ray_address: str | None = None
    shape: str = "constant"  # a load shape (pace.parse_shape): the speedup's multiplier over the drive
    start_at: str | None = None  # HH:MM of the scenario's day (or an offset like 6h) to start sending at
    live_every_s: float = 2.0
    quiet: bool = False


@dataclass
class DriveResult:
    exit_code: int
    out_dir: Path
    results: list
    summary: dict


def check_options(options: DriveOptions) -> list[thresholds.Threshold]:
    """Bad input before anything runs: URLs, speedup, duration, thresholds, the admin key."""
    problems = []
    parts = urlsplit(options.target)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(f"--target: expected an http(s)://host:port URL; got {options.target!r}")
    if options.mqtt is not None:
        mqtt = urlsplit(options.mqtt)
        if mqtt.scheme not in ("mqtt", "tcp") or not mqtt.hostname:
            problems.append(f"--mqtt: expected an mqtt://host:port URL; got {options.mqtt!r}")
    if not options.speedup > 0:
        problems.append(f"--speedup: expected a positive factor; got {options.speedup:g}")
    if not 1 <= options.workers <= 256:
        problems.append(f"--workers: expected 1 to 256; got {options.workers}")
    if options.duration_s is not None and not options.duration_s > 0:
        problems.append("--duration: expected a positive duration")
    parsed = []
    for expr in options.thresholds:
        try:
            parsed.append(thresholds.parse(expr))
        except ValueError as err:
            problems.append(f"--threshold {expr!r}: {err}")
    try:
        parse_shape(options.shape)
    except ValueError as err:
        problems.append(f"--shape {options.shape!r}: {err}")
    if not options.admin_key:
        problems.append(f"--admin-key: the IOC's admin key is needed to provision the devices (or set ${ADMIN_KEY_ENV})")
    if problems:
        raise UserInputError(problems)
    return parsed


def pace_of(scenario: Scenario, options: DriveOptions) -> tuple[Pace, float]:
    """The drive's pace (speedup, shape, where in the day it starts) and the virtual time it ends at."""
    from_t = 0.0
    if options.start_at:
        text = options.start_at.strip()
        try:
            from_t = (parse_clock(text) - scenario.start) % 86400.0 if ":" in text else parse_duration(text)
        except ValueError as err:
            raise UserInputError(f"--from {text!r}: {err} (a clock time of the scenario's day, or an offset "
                                 "from its start such as 6h)") from None
        if from_t >= scenario.duration:
            raise UserInputError(f"--from {text!r}: the scenario ({format_clock(scenario.start)} for "
                                 f"{scenario.duration / 3600:g} h) ends before it")
    shape = parse_shape(options.shape)
    pace = Pace(options.speedup, shape, from_t)
    wall_s = options.duration_s or shape.duration_s or pace.wall(scenario.duration)
    return pace, min(scenario.duration, pace.virtual(wall_s))


class EndToEnd:
    """What was sent, by entity and observation time, so a notification or an alert finds its message."""

    def __init__(self, stats: Stats):
        self.stats = stats
        self._lock = threading.Lock()
        self._sent: dict[str, dict[float, float]] = defaultdict(dict)  # entity → observedAt (epoch s) → intended
        self._latest: dict[str, deque] = defaultdict(lambda: deque(maxlen=64))  # entity → (intended, observed)

    def sent(self, entity: str, observed: float, intended: float) -> None:
        with self._lock:
            self._sent[entity][round(observed, 3)] = intended
            self._latest[entity].append((intended, observed))

    def on_notification(self, body: dict, received: float) -> None:
        for entity in body.get("data") or ():
            eid = entity.get("id")
            observed = _observed_at(entity)
            if eid is None or observed is None:
                continue
            with self._lock:
                intended = self._sent.get(eid, {}).pop(round(observed, 3), None)
            if intended is not None:
                self.stats.record_latency("e2e.entity", received - intended, at=received)

    def on_alert(self, alert: dict, received: float) -> None:
        """An alert raised by a reading (not a device gone silent): from the latest message sent for it."""
        if alert.get("status") != "raised" or str(alert.get("rule_id", "")).startswith("missing-"):
            return
        entity = alert.get("entity_id")
        with self._lock:
            sent = [i for i, _ in self._latest.get(entity, ()) if i <= received]
        if sent:
            self.stats.record_latency("e2e.alert", received - max(sent), at=received)


def _observed_at(entity: dict) -> float | None:
    """The observation time an entity carries (its location's or any measured attribute's observedAt)."""
    for value in entity.values():
        if isinstance(value, dict) and isinstance(value.get("observedAt"), str):
            try:
                return datetime.fromisoformat(value["observedAt"].replace("Z", "+00:00")).timestamp()
            except ValueError:
                return None
    return None


class LiveDevices:
    """The device network's transport in a live drive: each message to the IOC at its intended wall time,
    over MQTT (IoT Agent JSON, each device with its own key) or as NGSI-LD batch upserts over HTTP."""

    def __init__(self, sender: Sender, clock: WallClock, *, target: str, write_key: str,
                 device_keys: dict[str, str] | None, qos: int, e2e: EndToEnd, shard: tuple[int, int] = (0, 1),
                 from_t: float = 0.0, end_t: float = float("inf")):
        self.sender, self.clock = sender, clock
        self.shard = shard
        self.from_t = from_t  # nothing of the fast-forward before --from is sent
        self.end_t = end_t  # nothing due after the run's end is sent, however early it was handed over
        self.url = target.rstrip("/") + UPSERT_PATH
        self.headers = {"Content-Type": "application/ld+json", "X-API-Key": write_key}
        self.device_keys, self.qos, self.e2e = device_keys, qos, e2e
        self.wants_ngsi_ld = device_keys is None
        self.sent = 0

    def send(self, kind, device_ids, payloads, batch, encoder, t: float) -> list:
        if t > self.end_t or t < self.from_t:
            return []
        index, count = self.shard
        if count > 1:
            mine = [in_shard(d, index, count) for d in device_ids]
            device_ids = [d for d, m in zip(device_ids, mine) if m]
            payloads = [p for p, m in zip(payloads, mine) if m]
            if not payloads:
                return []
        intended = self.clock.intended(t)
        if self.device_keys is not None:
            for device, payload in zip(device_ids, payloads):
                measures = json.loads(payload)
                self.e2e.sent(entity_id(kind, device), _iso_seconds(measures["TimeInstant"]), intended)
                self.sender.mqtt(intended, "mqtt.publish", iota_topic(self.device_keys[device], device), payload,
                                 qos=self.qos)
        else:
            for doc in payloads:
                self.e2e.sent(doc["id"], _iso_seconds(doc["location"]["observedAt"]), intended)
            body = json.dumps(payloads, separators=(",", ":")).encode()
            self.sender.http(intended, "ngsild.upsert", "POST", self.url + "?options=update", content=body,
                             headers=self.headers)
        self.sent += len(payloads)
        return []

    def tick(self, t: float) -> list:
        return []  # the live IOC keeps its own time

    def finish(self) -> list:
        return []


def _iso_seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def drive(scenario: Scenario, options: DriveOptions, *, source: str = "scenario", console=None) -> DriveResult:
    """Drive the IOC at `options.target` with the scenario's device fleet; write the results into `options.out`.
    With `options.workers` > 1 the devices are sharded over Ray actors, each running the same seeded world
    and sending its own share; their histograms merge exactly."""
    parsed = check_options(options)
    if (scenario.devices is None or not scenario.devices.fleets) and scenario.field_reporting is None:
        raise UserInputError(f"{source}: nothing to drive — the scenario has neither devices nor field_reporting")
    pace_of(scenario, options)  # --from against the scenario's day, before anything is built
    city, trips = load_inputs(scenario, scenario.seed, source)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    if options.workers > 1:
        stats, meta = _drive_sharded(scenario, options, source, console=console)
    else:
        stats, meta = drive_shard(scenario, options, city, trips, shard=(0, 1), console=console)
    if scenario.field_reporting is not None and options.workers == 1:
        meta["field_reporting"] = _field_reporting(out / "ledger.parquet", scenario, meta["virtual_s"])
    results = thresholds.evaluate(parsed, stats, meta["wall_s"])
    summary = write_summary(out / "summary.json", stats, results, meta)
    write_locust_csvs(out, stats, meta["wall_s"])
    write_drive_report(out / "report.html", stats, results, meta)
    failed = any(not r.ok for r in results)
    code = EXIT_THRESHOLD if failed else EXIT_INTERRUPTED if meta["interrupted"] else EXIT_OK
    return DriveResult(exit_code=code, out_dir=out, results=results, summary=summary)


def _field_reporting(ledger_path: Path, scenario: Scenario, end_t: float) -> dict | None:
    """The service's KPIs from the drive's ledger, by the code a simulated run uses: the live requests as the
    IOC answered them (a sharded drive's ledgers each repeat the world's rows, so it has none)."""
    reporting = field_reporting_kpis(read_ledger(ledger_path), start_s=scenario.start, duration_s=end_t)
    return reporting["kpis"] if reporting else None


def drive_shard(scenario: Scenario, options: DriveOptions, city, trips, *, shard: tuple[int, int],
                console=None, stop: threading.Event | None = None,
                on_start: Callable[[Stats, Sender], None] | None = None) -> tuple[Stats, dict]:
    """One shard of the drive: the whole seeded world, sending the messages of the devices and the reports
    in `shard` (index, count). Its ledger goes to `out/ledger.parquet` (a shard's to `out/shard-<i>/`).
    Setting `stop` ends it as Ctrl-C does; `on_start(stats, sender)` is told what it records into."""
    index, count = shard
    seed = scenario.seed
    pace, virtual_end = pace_of(scenario, options)
    from_t = pace.from_t
    out = Path(options.out) if count == 1 else Path(options.out) / f"shard-{index}"
    out.mkdir(parents=True, exist_ok=True)
    stats = Stats()
    e2e = EndToEnd(stats)
    sender = Sender(stats)
    notifications = NotificationListener(on_notification=e2e.on_notification)
    alerts = AlertListener(options.mqtt, on_alert=e2e.on_alert) if options.mqtt else None
    ledger = Ledger(out / "ledger.parquet")
    started = datetime.now(UTC)
    interrupted = False
    carrier: dict[str, LiveDevices] = {}
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main_thread else None
    try:
        sender.start()
        notifications.start()
        if alerts is not None:
            alerts.start()
        write_key = create_key(options.target, options.admin_key, "operator", label="citytwin drive")
        if options.mqtt:
            _wait_for_ingest(options.target)
        env = PacedEnvironment(pace)
        wall_clock = WallClock(to_wall_s=pace.wall, to_virtual_s=pace.virtual)
        started = wall_clock.utc0
        lead_t = LEAD_WALL_S * pace.speedup_at(0.0)
        people = None
        if scenario.field_reporting is not None:
            people = _people_port(scenario, options, env, sender, ledger, wall_clock, stats, shard,
                                  live_from=lambda: env.now >= from_t)

        def transport(spec, ioc, runners, *, epoch, clock):
            mine = [(d, r.fleet.kind.ENTITY_TYPE) for r in runners for d in r.fleet.device_ids
                    if in_shard(d, index, count)]
            keys = None
            if options.mqtt:
                sender.connect_mqtt(options.mqtt)
                keys = create_device_keys(options.target, options.admin_key, mine) if mine else {}
            subscribe(options.target, write_key, sorted({t for _, t in mine}) or ["Device"], notifications.url, None)
            carrier["live"] = LiveDevices(sender, wall_clock, target=options.target, write_key=write_key,
                                          device_keys=keys, qos=options.qos, e2e=e2e, shard=shard,
                                          from_t=from_t, end_t=virtual_end)
            return carrier["live"]

        twin = build_twin(scenario, env, city, trips, ledger, seed, device_transport=transport,
                          device_epoch=started, device_lead_s=lead_t, people_port=people)
        # Building the world took wall time: virtual t = 0 is now, or the first minutes would fire at once.
        env.sync()
        wall_clock.restart()
        if people is not None:
            people.begin()
        if stop is not None:
            env.process(_stop_when_set(env, stop, pace.speedup))
        if on_start is not None:
            on_start(stats, sender)
        showing = not options.quiet and console is not None
        view = Live(console=console, auto_refresh=False) if showing and console.is_terminal else None

        def live_now() -> None:
            if showing:
                env.process(_live_table(env, stats, sender, pace, options, console, view))

        if from_t > 0:
            if console is not None and not options.quiet:
                console.print(f"fast-forwarding the world to {format_clock(scenario.start + from_t)} "
                              "(nothing is sent before it)")
            # Early enough that nothing due at or after from_t was handed over on the old clock.
            env.process(_go_live(env, wall_clock, from_t - 1.5 * lead_t, LEAD_WALL_S, live_now))
        else:
            live_now()
        if view is not None:
            view.start()
        try:
            twin.run(virtual_end)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if view is not None:
                view.stop()  # the last table stays on screen
        reached = env.now
        _settle(sender, SETTLE_S)
        if people is not None:
            people.deliver()  # the answers that came in after the end still go to the ledger
        twin.finish()
        wall = max(0.0, time.monotonic() - wall_clock.wall0)
    finally:
        sender.stop()
        notifications.stop()
        if alerts is not None:
            alerts.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if not ledger.closed:
            ledger.close()
    meta = {"scenario": scenario.name, "target": options.target, "mqtt": options.mqtt, "speedup": options.speedup,
            "shape": pace.shape.text, "from": format_clock(scenario.start + from_t), "virtual_from_s": from_t,
            "started_at": started.isoformat(), "wall_s": round(wall, 3), "virtual_s": round(reached, 3),
            "interrupted": interrupted, "messages": carrier["live"].sent if carrier else 0,
            "devices": sum(len(r.fleet.device_ids) for r in twin.devices.runners) if twin.devices else 0,
            "reports": people.submitted if people is not None else 0, "workers": count}
    return stats, meta


def _people_port(scenario: Scenario, options: DriveOptions, env, sender: Sender, ledger: Ledger, clock: WallClock,
                 stats: Stats, shard: tuple[int, int], *, live_from: Callable[[], bool]) -> LivePort | ShardedPort:
    """Citizens on Open311 and operators and crews on the operator API, each side with its own key (one
    app backend's key for every resident; a high rate, as the load is the point). A shard sends the reports
    whose key it owns and keeps the others in memory, as are those made before the drive goes live
    (`live_from()` false: fast-forwarding to --from)."""
    citizen_key = create_key(options.target, options.admin_key, "citizen", label="citytwin drive: residents",
                             rate_per_s=PEOPLE_RATE_PER_S)
    operator_key = create_key(options.target, options.admin_key, "operator",
                              label="citytwin drive: operators and crews", rate_per_s=PEOPLE_RATE_PER_S)
    deadlines = {code: service.sla.total_seconds() for code, service in DEFAULT_CATALOG.items()}
    deadlines.update(scenario.field_reporting.organisation.deadlines)

    def closed_seen(posted: float, seen: float) -> None:
        stats.record_latency("e2e.report", seen - posted, at=seen)

    port = LivePort(env, sender, ledger, clock, target=options.target, citizen_key=citizen_key,
                    operator_key=operator_key, deadlines_s=deadlines, on_closed_seen=closed_seen,
                    pump_every_s=PUMP_WALL_S * options.speedup)
    index, count = shard
    if count == 1 and not options.start_at:
        return port
    rng = np.random.default_rng(np.random.SeedSequence(scenario.seed, spawn_key=(7, index)))
    local = InProcessPort(new_ioc(rng, deadlines), DiscardLedger(), start_s=scenario.start)
    return ShardedPort(port, local, owns=lambda key: live_from() and in_shard(key, index, count))


def in_shard(key: str, index: int, count: int) -> bool:
    """A device's or a report's shard: stable across processes and runs (not Python's salted hash)."""
    return count == 1 or zlib.crc32(key.encode()) % count == index


def _drive_sharded(scenario: Scenario, options: DriveOptions, source: str, *, console=None) -> tuple[Stats, dict]:
    """The shards on Ray actors (this machine, or the cluster at `options.ray_address`), merged exactly. While
    they run, their statistics are merged into the live table; Ctrl-C or SIGTERM asks every shard to stop
    and still collects what each recorded (a second Ctrl-C gives up on them)."""
    import ray

    ray.init(address=options.ray_address, include_dashboard=False, log_to_driver=False,
             ignore_reinit_error=True, **({} if options.ray_address else {"num_cpus": options.workers}))
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main_thread else None
    showing = not options.quiet and console is not None
    view = Live(console=console, auto_refresh=False) if showing and console.is_terminal else None
    try:
        worker = ray.remote(num_cpus=1, max_concurrency=2)(_ShardWorker)  # a second thread answers progress
        actors = [worker.remote() for _ in range(options.workers)]
        calls = [a.run.remote(scenario, options, source, (i, options.workers)) for i, a in enumerate(actors)]
        # Bounded: the drive itself, plus building the world, fast-forwarding to --from (a simulated day runs
        # in minutes, far faster than 1 virtual s per 20 ms) and settling.
        pace, virtual_end = pace_of(scenario, options)
        deadline = time.monotonic() + pace.wall(virtual_end) + pace.from_t / 50.0 + 300.0
        every = options.live_every_s if view is not None else max(options.live_every_s, 10.0)
        if view is not None:
            view.start()
        stopping = False
        while True:
            try:
                _, running = ray.wait(calls, num_returns=len(calls), timeout=every)
                if not running:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the {options.workers} drive workers did not finish in time")
                if showing:
                    _show_progress(actors, options, console, view)
            except KeyboardInterrupt:
                if stopping:
                    raise
                stopping = True
                for actor in actors:
                    actor.stop.remote()
                deadline = min(deadline, time.monotonic() + SETTLE_S + 60.0)
        shards = ray.get(calls, timeout=60.0)
    finally:
        if view is not None:
            view.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        ray.shutdown()
    stats = Stats.from_dict(shards[0][0])
    for data, _ in shards[1:]:
        stats.merge(Stats.from_dict(data))
    metas = [m for _, m in shards]
    meta = {**metas[0], "wall_s": max(m["wall_s"] for m in metas), "messages": sum(m["messages"] for m in metas),
            "interrupted": any(m["interrupted"] for m in metas), "workers": options.workers,
            "reports": sum(m["reports"] for m in metas), "shard_messages": [m["messages"] for m in metas],
            "shard_reports": [m["reports"] for m in metas]}
    return stats, meta


def _show_progress(actors: list, options: DriveOptions, console, view: Live | None) -> None:
    """The shards' statistics so far, merged, as the live table."""
    import ray

    try:
        snapshots = [snap for snap in ray.get([a.progress.remote() for a in actors], timeout=5.0) if snap]
    except ray.exceptions.GetTimeoutError:
        return  # a busy worker: the table waits for the next round
    if not snapshots:
        return
    stats = Stats.from_dict(snapshots[0][0])
    for data, _ in snapshots[1:]:
        stats.merge(Stats.from_dict(data))
    in_flight = sum(n for _, n in snapshots)
    table = live.table(stats, time.monotonic() - stats.start, in_flight=in_flight)
    if view is not None:
        view.update(table, refresh=True)
    else:
        console.print(table)


class _ShardWorker:
    """A Ray actor: one shard of the drive, in its own process. `progress` and `stop` come in on the actor's
    second thread while `run` works."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._running: tuple[Stats, Sender] | None = None

    def run(self, scenario: Scenario, options: DriveOptions, source: str, shard: tuple[int, int]):
        city, trips = load_inputs(scenario, scenario.seed, source)
        stats, meta = drive_shard(scenario, options, city, trips, shard=shard, stop=self._stop,
                                  on_start=self._started)
        return stats.to_dict(), meta

    def _started(self, stats: Stats, sender: Sender) -> None:
        self._running = (stats, sender)

    def progress(self) -> tuple[dict, int] | None:
        if self._running is None:
            return None
        stats, sender = self._running
        return stats.to_dict(), sender.in_flight

    def stop(self) -> None:
        self._stop.set()


def _go_live(env, wall_clock: WallClock, at_t: float, lead_s: float, then: Callable[[], None]):
    """After the fast-forward: the pace's wall clock starts, `from_t` due `lead_s` from now."""
    if at_t > env.now:
        yield env.timeout(at_t - env.now)
    env.sync(lead_s)
    wall_clock.restart(lead_s)
    then()


def _stop_when_set(env, stop: threading.Event, speedup: float):
    """Ends the shard's run as Ctrl-C would, soon after `stop` is set (a process on the real-time clock)."""
    while not stop.is_set():
        yield env.timeout(0.1 * speedup)
    raise KeyboardInterrupt


def _wait_for_ingest(target: str, timeout_s: float = 10.0) -> bool:
    """Readings published before the IOC's MQTT ingestion has subscribed are lost: wait (bounded) until its
    /health says it is connected. An IOC that does not report it is taken as ready."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            health = httpx.get(target.rstrip("/") + "/health", timeout=2.0).json()
        except (httpx.HTTPError, ValueError):
            return False
        if not isinstance(health, dict) or health.get("mqtt") in (None, "connected"):
            return True
        time.sleep(0.2)
    return False


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _settle(sender: Sender, seconds: float) -> None:
    """Let the last requests complete and the last notifications come in (bounded)."""
    deadline = time.monotonic() + seconds
    while sender.pending and time.monotonic() < deadline:  # in flight, or handed over early and not yet due
        time.sleep(0.05)
    time.sleep(max(0.0, min(1.0, deadline - time.monotonic())))


def _live_table(env, stats: Stats, sender: Sender, pace: Pace, options: DriveOptions, console, view: Live | None):
    """The terminal table every few wall seconds (a process on the paced clock): redrawn in place on a
    terminal (`view`), printed every ten seconds into a log."""
    start = time.monotonic()
    every = options.live_every_s if view is not None else max(options.live_every_s, 10.0)
    while True:
        due = pace.virtual(pace.wall(env.now) + every)
        yield env.timeout(max(due - env.now, 1e-6))
        table = live.table(stats, time.monotonic() - start, in_flight=sender.in_flight)
        if view is not None:
            view.update(table, refresh=True)
        else:
            console.print(table)


def admin_key_from(option: str | None) -> str | None:
    return option or os.environ.get(ADMIN_KEY_ENV)


__all__ = ["DriveOptions", "DriveResult", "drive", "admin_key_from", "ADMIN_KEY_ENV", "EndToEnd", "LiveDevices"]

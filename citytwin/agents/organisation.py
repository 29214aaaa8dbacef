"""The IOC's people: intake operators on shifts who answer hotline 1022 and triage the app's and the web's
reports, and each agency's field crews who drive to a problem at the traffic's current speeds and fix it.

Everything they do goes through the port (the operator API of the IOC) at the virtual time it happens.
The intake desk is a queue with `c(t)` servers that follow their shift rota: with one all-day shift and
exponential times it is an M/M/c queue, which tests/test_erlang_c.py checks against the Erlang-C formula.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from types import GeneratorType
from typing import TYPE_CHECKING, Any, Callable, Iterator

import mesa
import numpy as np
import simpy
from scipy.sparse.csgraph import dijkstra
from simpy.resources.store import PriorityItem

from citytwin.ioc.core.catalog import DEFAULT_CATALOG
from citytwin.twin.city.paths import network_graph, zone_nodes
from citytwin.twin.ports.base import Receipt, Report, answer
from citytwin.twin.scenario.schema import FieldReportingSpec, OperatorShift, OrganisationSpec, ProblemKind, Shift

from .context import AgentContext

if TYPE_CHECKING:
    from .problems import Problems

CALL, TASK = 0, 1  # queue classes of the intake desk: a ringing phone goes before the pile of online reports
DAY_S = 86400.0
SERVICE_TIME_CV = 0.5  # spread of the time on site around the kind's mean (lognormal)
# A crew reaches a site the modelled network does not connect (a stub the network cut off) at the speed of
# a van in town traffic, as the crow flies.
CROW_FLY_MPS = 20 / 3.6

# Notes the public sees. Intake notes start with INTAKE_PREFIX and result notes with RESULT_PREFIX, so a
# reporter (and a test) can tell from the latest note whether the outcome was published to them.
INTAKE_PREFIX = "Đã tiếp nhận"
RESULT_PREFIX = "Đã xử lý xong"
_FIXES = {
    "road-damage": "đã vá ổ gà, hoàn trả mặt đường",
    "waste": "đã thu gom rác, vệ sinh khu vực",
    "flooding": "đã khơi thông cống thoát nước, nước đã rút",
    "streetlight": "đã sửa chữa, thay thế đèn chiếu sáng",
    "traffic-signal": "đèn tín hiệu giao thông đã hoạt động bình thường",
    "sidewalk-encroachment": "đã xử lý vi phạm, giải tỏa vỉa hè, lòng đường",
    "fallen-tree": "đã cắt dọn cây gãy đổ, thông đường",
    "noise": "đã kiểm tra, nhắc nhở và chấm dứt tiếng ồn",
}
ALREADY_FIXED = f"{RESULT_PREFIX}: kiểm tra hiện trường, sự cố đã được khắc phục theo phản ánh trước đó."


def result_note(category: str) -> str:
    return f"{RESULT_PREFIX}: {_FIXES.get(category, 'đã khắc phục sự cố')}."


def is_result_note(note: str) -> bool:
    """True when the note is an agency's published result, not an intake note (or nothing)."""
    return note.startswith(RESULT_PREFIX)


def agency(category: str) -> str:
    service = DEFAULT_CATALOG.get(category)
    return service.agency if service is not None else category


def duty_windows(shift: Shift, start_s: float, now: float) -> Iterator[tuple[float, float]]:
    """The shift's working windows [begin, end) in virtual time, from the one under way at `now` (or the next)
    on; an all-day shift is one endless window, so its people never clock out and back in at midnight."""
    length = shift.length_s
    if length >= DAY_S:
        yield now, math.inf
        return
    into = (start_s + now - shift.start) % DAY_S  # how far into today's window `now` lies
    begin = now - into if into < length else now - into + DAY_S
    while True:
        yield begin, begin + length
        begin += DAY_S


def _next_job(env: simpy.Environment, store: simpy.PriorityStore, end: float):
    """Wait for the next item of `store` until `end`; None when the window closed first. A get that did
    not fire is cancelled, or it would take an item for someone who went home."""
    get = store.get()
    if math.isinf(end):
        yield get
    else:
        yield get | env.timeout(end - env.now)
        if not get.triggered:
            get.cancel()
            return None
    return get.value.item


# --- the intake desk --------------------------------------------------------------------------------------

@dataclass(eq=False)
class _DeskJob:
    kind: int  # CALL or TASK
    work_s: float
    handle: Callable[..., Any] | None
    queued_t: float
    done: simpy.Event | None = None  # calls: succeeds with the handle's value, or None when the caller hangs up
    on_answer: Callable[["Operator", float], None] | None = None
    state: str = "waiting"  # waiting | taken | abandoned


class IntakeDesk:
    """Operators on shifts serving one queue: calls before back-office tasks, first come first served within
    each, no pre-emption (a review in hand is finished before the phone is picked up). Operators clock in as
    soon as the desk exists."""

    def __init__(self, env: simpy.Environment, model: mesa.Model, shifts: list[OperatorShift], start_s: float,
                 rng: np.random.Generator, *, patience_mean: float | None):
        self.env, self.start_s, self.rng, self.patience_mean = env, start_s, rng, patience_mean
        self.queue = simpy.PriorityStore(env)
        self._seq = itertools.count()  # ties within a class go first come, first served
        self.answered = self.abandoned = self.tasks_done = 0
        names = (f"operator-{k}" for k in itertools.count(1))
        self.operators = [Operator(model, next(names), shift, self)
                          for shift in shifts for _ in range(shift.operators)]

    def call(self, work_s: float, handle: Callable[..., Any] | None, *,
             on_answer: Callable[["Operator", float], None] | None = None) -> simpy.Event:
        """A caller joins the queue. Once an operator answers (`on_answer(operator, wait_s)` then), the call
        takes `work_s` and then `handle(operator, wait_s)` runs (a plain function or a generator); the event
        succeeds with what it returned. A caller not answered within Exp(patience_mean) hangs up: None."""
        job = _DeskJob(CALL, work_s, handle, self.env.now, self.env.event(), on_answer)
        self.queue.put(PriorityItem((CALL, next(self._seq)), job))
        if self.patience_mean is not None:
            self.env.timeout(self.rng.exponential(self.patience_mean)).callbacks.append(
                lambda _event: self._hang_up(job))
        return job.done

    def task(self, work_s: float, handle: Callable[..., Any] | None) -> None:
        """Back-office work (triage of an online report): `work_s`, then `handle(operator, wait_s)`."""
        self.queue.put(PriorityItem((TASK, next(self._seq)), _DeskJob(TASK, work_s, handle, self.env.now)))

    def waiting(self) -> int:
        """Jobs in the queue (callers who hung up but are still in the heap are not counted)."""
        return sum(item.item.state == "waiting" for item in self.queue.items)

    def _hang_up(self, job: _DeskJob) -> None:
        # The job stays in the heap; the operator who pops it drops it at no cost, which is the same queue.
        if job.state == "waiting":
            job.state = "abandoned"
            self.abandoned += 1
            job.done.succeed(None)

    def _serve(self, operator: "Operator", job: _DeskJob):
        if job.state == "abandoned":
            return
        job.state = "taken"
        wait = self.env.now - job.queued_t
        if job.kind == CALL:
            self.answered += 1
        if job.on_answer is not None:
            job.on_answer(operator, wait)
        yield self.env.timeout(job.work_s)
        operator.busy_s += job.work_s
        result = job.handle(operator, wait) if job.handle is not None else None
        if isinstance(result, GeneratorType):
            result = yield from result
        if job.kind == TASK:
            self.tasks_done += 1
        if job.done is not None:
            job.done.succeed(result)


class Operator(mesa.Agent):
    """One operator slot of a shift: on duty in the shift's window every day; finishes the job in hand when
    the shift ends and leaves the rest of the queue to the next shift."""

    def __init__(self, model: mesa.Model, name: str, shift: Shift, desk: IntakeDesk):
        super().__init__(model)
        self.name, self.shift, self.desk = name, shift, desk
        self.busy_s = 0.0
        desk.env.process(self._work())

    def _work(self):
        env = self.desk.env
        for begin, end in duty_windows(self.shift, self.desk.start_s, env.now):
            if begin > env.now:
                yield env.timeout(begin - env.now)
            while env.now < end:
                job = yield from _next_job(env, self.desk.queue, end)
                if job is None:
                    break
                yield from self.desk._serve(self, job)


# --- field crews ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CrewJob:
    request_id: int
    report: Report
    problem: str  # the twin's problem id ("" when the report is about nothing the twin knows)
    deadline_t: float


class Crew(mesa.Agent):
    """A field crew of one agency (`name` like "road-damage-1"): on its shift it takes the open job with the
    earliest deadline, drives there from where it is, fixes it and closes the request. Each working day
    starts at the depot."""

    def __init__(self, model: mesa.Model, name: str, category: str, shift: Shift, depot: int,
                 organisation: "Organisation"):
        super().__init__(model)
        self.name, self.category, self.shift = name, category, shift
        self.depot = self.node = depot
        self.organisation = organisation
        self.jobs_done = 0

    def start(self) -> None:
        self.organisation.ctx.env.process(self._work())

    def _work(self):
        org = self.organisation
        env, queue = org.ctx.env, org.jobs_for(self.category)
        for begin, end in duty_windows(self.shift, org.ctx.start_s, env.now):
            if begin > env.now:
                yield env.timeout(begin - env.now)
            self.node = self.depot
            while env.now < end:
                job = yield from _next_job(env, queue, end)
                if job is None:
                    break
                yield from org._fix(self, job)


# --- the organisation -------------------------------------------------------------------------------------

class Organisation:
    """The intake desk, triage and every category's crews, acting on the IOC through `ctx.port`."""

    def __init__(self, ctx: AgentContext, spec: OrganisationSpec, problems: "Problems", rng: np.random.Generator,
                 *, problem_kinds: dict[str, ProblemKind] | None = None):
        self.ctx, self.spec, self.problems, self.rng = ctx, spec, problems, rng
        self.service_time = {k: p.service_time for k, p in _problem_kinds(problems, problem_kinds).items()}
        intake = spec.intake
        self.desk = IntakeDesk(ctx.env, ctx.model, intake.shifts, ctx.start_s, rng,
                               patience_mean=intake.caller_patience)
        self.requests: dict[int, tuple[Report, str]] = {}  # request id -> (report, problem id) as reported
        self._taken: set[int] = set()  # requests an operator has in hand or has dealt with
        self.jobs: dict[str, simpy.PriorityStore] = {}  # per category, earliest deadline first
        self._on_site: dict[str, simpy.Event] = {}  # problem id -> succeeds when the crew fixing it is done
        self._seq = itertools.count()
        self.depot = depot_node(ctx.city)
        self.crews = [Crew(ctx.model, f"{category}-{k}", category, crew_spec.shift, self.depot, self)
                      for category, crew_spec in spec.crews.items() for k in range(1, crew_spec.crews + 1)]

    def start(self) -> None:
        for crew in self.crews:
            crew.start()
        if hasattr(self.ctx.port, "shows_in_queue"):
            self.ctx.env.process(self._watch_queue())

    # -- what citizens do --------------------------------------------------------------------------------
    def online_report(self, report: Report, receipt: Receipt) -> None:
        """A report filed in the app or on the web joins the operators' review pile: at once in memory; at a
        live IOC when the operators see it in its queue (`_watch_queue`)."""
        self._remember(report, receipt)
        queued = getattr(self.ctx.port, "shows_in_queue", None)
        if queued is None or not queued(receipt.request_id):
            self._review(receipt)

    def _review(self, receipt: Receipt) -> None:
        rid = receipt.request_id
        self._taken.add(rid)
        work = self.rng.exponential(self.spec.intake.triage_time)
        # The report as known when the review starts: a live POST's answer may come after the queue showed it.
        self.desk.task(work, lambda operator, _wait: self._triage(operator, self.requests[rid][0], receipt))

    def _watch_queue(self):
        """A live IOC: the desk's screen refreshes the IOC's queue of new requests, and each one nobody has taken
        becomes a review task. A request the twin filed is known by its id; one it did not (filed by someone
        else at the IOC) is reviewed as the queue shows it, when the port says so. An id not known yet gets one
        refresh of grace: its POST's answer may still be on its way to the twin."""
        env, port = self.ctx.env, self.ctx.port
        adopts = getattr(port, "adopts_unknown", False)
        unknown: set[int] = set()
        while True:
            yield env.timeout(self.spec.intake.queue_refresh)
            shown = yield from answer(port.new_requests(env.now))
            for view in shown or ():
                rid = view.request_id
                if rid in self._taken:
                    continue
                if rid not in self.requests:
                    if not (adopts and rid in unknown):
                        unknown.add(rid)
                        continue
                    nowhere = float("nan")  # a request without a position: the crew starts from the depot
                    self.requests[rid] = (Report(key=f"ioc-{rid}", category=view.category,
                                                 lon=nowhere if view.lon is None else view.lon,
                                                 lat=nowhere if view.lat is None else view.lat,
                                                 description=view.note, channel="ioc"), "")
                unknown.discard(rid)
                self._review(Receipt(request_id=rid, token="", duplicate_of=view.duplicate_of,
                                     deadline_t=view.deadline_t))

    def call(self, report: Report) -> simpy.Event:
        """Hotline 1022: the event's value is the Receipt of the report the operator filed, or None when the
        caller hung up before anyone answered."""
        env, ledger = self.ctx.env, self.ctx.ledger
        called_t = env.now
        filed = report if report.channel == "hotline" else replace(report, channel="hotline")

        def answered(operator: Operator, wait_s: float) -> None:
            ledger.append("call.answered", env.now, report.key, wait_s=wait_s, actor=operator.name)

        failed = []

        def file_it(operator: Operator, _wait_s: float):
            receipt = yield from answer(self.ctx.port.submit(filed, env.now))
            if receipt is None:  # a live IOC failed to take it: the call ends without a receipt
                failed.append(operator.name)
                return None
            self._remember(filed, receipt)
            self._taken.add(receipt.request_id)
            yield from self._triage(operator, filed, receipt)  # the operator files and routes it in the call
            return receipt

        event = self.desk.call(self.rng.exponential(self.spec.intake.call_time), file_it, on_answer=answered)

        def hung_up(ev: simpy.Event) -> None:
            if ev.value is None and not failed:
                ledger.append("call.abandoned", env.now, report.key, wait_s=env.now - called_t,
                              problem=report.problem, resident=report.resident)

        event.callbacks.append(hung_up)  # before the caller's own wait, so the row precedes their reaction
        return event

    # -- intake ------------------------------------------------------------------------------------------
    def _remember(self, report: Report, receipt: Receipt) -> None:
        self.requests[receipt.request_id] = (report, report.problem)

    def _triage(self, operator: Operator, report: Report, receipt: Receipt):
        """Fold a report the IOC linked on arrival into its original; route the rest to the agency's crews.
        The operator opens the request first: what the IOC shows (its duplicate link) decides."""
        port, env, rid = self.ctx.port, self.ctx.env, receipt.request_id
        shown = yield from answer(port.view(rid, env.now))
        duplicate_of = shown.duplicate_of if shown is not None else receipt.duplicate_of
        if duplicate_of is not None:
            yield from answer(port.mark_duplicate(rid, duplicate_of, operator.name, env.now))
            return receipt
        who = agency(report.category)
        yield from answer(port.acknowledge(rid, operator.name, env.now, f"{INTAKE_PREFIX} phản ánh, chuyển {who}"))
        yield from answer(port.assign(rid, operator.name, report.category, env.now,
                                      f"{INTAKE_PREFIX}, giao {who} xử lý"))
        job = CrewJob(rid, report, report.problem, receipt.deadline_t)
        self.jobs_for(report.category).put(PriorityItem((receipt.deadline_t, next(self._seq)), job))
        return receipt

    def jobs_for(self, category: str) -> simpy.PriorityStore:
        """The category's open jobs (a category without crews keeps its queue: nobody comes)."""
        if category not in self.jobs:
            self.jobs[category] = simpy.PriorityStore(self.ctx.env)
        return self.jobs[category]

    # -- field work --------------------------------------------------------------------------------------
    def _fix(self, crew: Crew, job: CrewJob):
        ctx, env = self.ctx, self.ctx.env
        port, rid = ctx.port, job.request_id
        shown = yield from answer(port.view(rid, env.now))
        if shown is not None and shown.closed:  # closed by someone else meanwhile (an operator of a live IOC)
            return
        # The dispatcher hands the job to this crew (no public note: the reporter sees intake, then result).
        yield from answer(port.assign(rid, f"dispatcher-{crew.category}", crew.name, env.now))
        problem = self.problems.get(job.problem) if job.problem else None
        site = problem.node if problem is not None else self._nearest_node(job.report.lon, job.report.lat)
        travel = self.travel_time(crew.node, site)
        ctx.ledger.append("crew.travel", env.now, crew.name, crew=crew.name, request_id=rid, travel_time_s=travel)
        yield env.timeout(travel)
        crew.node = site
        yield from answer(port.start(rid, crew.name, env.now))
        working = self._on_site.get(problem.id) if problem is not None else None
        if working is not None:
            # Another crew is fixing it right now (a second request about the same problem): leave it to
            # them and close this request when their fix is done, rather than do the same work twice.
            env.process(self._close(crew, job, False, after=working))
            crew.jobs_done += 1
            return
        fixed = False
        if problem is None or problem.active:
            done = env.event()
            if problem is not None:
                self._on_site[problem.id] = done
            yield env.timeout(self.work_time(problem.kind if problem is not None else ""))
            # False when it was fixed meanwhile by other means.
            fixed = problem is None or self.problems.fix(problem.id, env.now, crew.name, rid)
            if problem is not None:
                del self._on_site[problem.id]
            done.succeed()
        yield from self._close(crew, job, fixed)
        crew.jobs_done += 1

    def _close(self, crew: Crew, job: CrewJob, fixed: bool, *, after: simpy.Event | None = None):
        """Resolve and close the request, with the result note when the agency publishes it."""
        if after is not None:
            yield after
        port, env, rid = self.ctx.port, self.ctx.env, job.request_id
        published = self.rng.random() < self.spec.publish_results
        note = (result_note(job.report.category) if fixed else ALREADY_FIXED) if published else ""
        yield from answer(port.resolve(rid, crew.name, env.now))
        yield from answer(port.close(rid, crew.name, env.now, note))

    def work_time(self, kind: str) -> float:
        """Time on site: lognormal around the kind's mean service time with SERVICE_TIME_CV."""
        mean = self.service_time.get(kind, 3600.0)
        sigma2 = math.log1p(SERVICE_TIME_CV ** 2)
        return float(self.rng.lognormal(math.log(mean) - sigma2 / 2, math.sqrt(sigma2)))

    def travel_time(self, src: int, dst: int) -> float:
        """Shortest-path time from src to dst on the engine's current link travel times (one Dijkstra)."""
        if src == dst:
            return 0.0
        city = self.ctx.city
        times = np.asarray(self.ctx.engine.link_travel_times(), dtype=float)
        free = city.links.free_flow_s
        # A link the engine reports no finite time for is taken at free flow; zero weights would vanish
        # from the sparse graph.
        times = np.maximum(np.where(np.isfinite(times), times, free), 1e-3)
        t = float(dijkstra(network_graph(city, times), indices=src)[dst])
        if math.isfinite(t):
            return t
        dx = city.nodes.x[src] - city.nodes.x[dst]
        dy = city.nodes.y[src] - city.nodes.y[dst]
        return float(math.hypot(dx, dy) / CROW_FLY_MPS)

    def _nearest_node(self, lon: float, lat: float) -> int:
        nodes = self.ctx.city.nodes
        d2 = (nodes.lon - lon) ** 2 + ((nodes.lat - lat) * math.cos(math.radians(lat))) ** 2
        d2 = np.where(np.isfinite(d2), d2, np.inf)
        return int(np.argmin(d2)) if np.isfinite(d2).any() else self.depot


def depot_node(city) -> int:
    """The crews' depot: the connected junction nearest the middle of the network."""
    zones = zone_nodes(city)
    x, y = city.nodes.x[zones], city.nodes.y[zones]
    return int(zones[np.argmin((x - x.mean()) ** 2 + (y - y.mean()) ** 2)])


def _problem_kinds(problems: Any, given: dict[str, ProblemKind] | None) -> dict[str, ProblemKind]:
    """The problem kinds (for their service times): given, else the Problems' own spec, else the defaults."""
    if given is not None:
        return given
    spec = getattr(problems, "spec", None)
    if isinstance(spec, FieldReportingSpec):
        return spec.problems
    return FieldReportingSpec().problems

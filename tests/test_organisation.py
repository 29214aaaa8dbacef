"""The IOC organisation: the intake desk's queue and shifts, triage through the port, hotline calls, and
field crews who drive on the engine's current travel times, fix the problem and close the request.

Real SimPy, Mesa, InProcessPort and ioc.core; a small synthetic city; a fake engine (only travel times) and
a fake Problems (the ground-truth registry is another module's; only get/fix matter here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mesa
import numpy as np
import pytest
import simpy
from scipy.sparse.csgraph import dijkstra

from citytwin.agents.context import AgentContext
from citytwin.agents.organisation import (
    ALREADY_FIXED,
    INTAKE_PREFIX,
    Crew,
    IntakeDesk,
    Operator,
    Organisation,
    depot_node,
    duty_windows,
    is_result_note,
    result_note,
)
from citytwin.twin.city.paths import network_graph
from citytwin.twin.city.synthetic import SyntheticParams, generate
from citytwin.twin.ledger import Ledger, events
from citytwin.twin.ports import InProcessPort, Receipt, Report, new_ioc
from citytwin.twin.scenario.schema import (
    CrewSpec,
    IntakeSpec,
    OperatorShift,
    OrganisationSpec,
    ProblemKind,
    Shift,
)
from citytwin.twin.scenario.units import format_clock

H = 3600.0
ALL_DAY = Shift(start="00:00", end="00:00")


# --- fakes and builders ----------------------------------------------------------------------------------

@dataclass
class FakeProblem:
    id: str
    kind: str
    category: str
    severity: int
    link: int
    node: int
    lon: float
    lat: float
    start_t: float
    fixed_t: float | None = None

    @property
    def active(self) -> bool:
        return self.fixed_t is None


class FakeProblems:
    def __init__(self, ledger: Ledger):
        self.ledger, self.by_id, self.fixes = ledger, {}, []

    def add(self, city, pid: str, node: int, kind: str = "pothole", category: str = "road-damage") -> FakeProblem:
        p = FakeProblem(pid, kind, category, 2, -1, node, float(city.nodes.lon[node]), float(city.nodes.lat[node]),
                        0.0)
        self.by_id[pid] = p
        return p

    def get(self, pid: str) -> FakeProblem:
        return self.by_id[pid]

    def fix(self, pid: str, t: float, crew: str, request_id: int) -> bool:
        p = self.by_id[pid]
        if p.fixed_t is not None:
            return False
        p.fixed_t = t
        self.fixes.append((pid, t, crew, request_id))
        self.ledger.append("problem.fixed", t, pid, crew=crew, request_id=request_id)
        return True


class FakeEngine:
    def __init__(self, city, factor: float = 1.0):
        self.times = city.links.free_flow_s * factor

    def link_travel_times(self) -> np.ndarray:
        return self.times.copy()

    def restrict(self, key, restriction) -> None:
        pass

    def lift(self, key) -> None:
        pass


@pytest.fixture(scope="module")
def city():
    return generate(SyntheticParams(width_m=1500, height_m=1000, alleys_per_block=0, river=False))


def make_world(city, *, start_s=8 * H, seed=0, factor=1.0):
    env, ledger = simpy.Environment(), Ledger()
    port = InProcessPort(new_ioc(np.random.default_rng(seed)), ledger, start_s=start_s)
    ctx = AgentContext(env=env, model=mesa.Model(), city=city, engine=FakeEngine(city, factor), ledger=ledger,
                       port=port, start_s=start_s, duration_s=3 * 86400.0)
    return ctx, FakeProblems(ledger)


def org_spec(*, operators=1, op_shift=ALL_DAY, crews=1, crew_shift=ALL_DAY, patience=None, publish=1.0,
             call_time=300.0, triage_time=180.0):
    return OrganisationSpec(
        intake=IntakeSpec(shifts=[OperatorShift(start=format_clock(op_shift.start), end=format_clock(op_shift.end),
                                                operators=operators)],
                          call_time=call_time, triage_time=triage_time, caller_patience=patience),
        crews={"road-damage": CrewSpec(crews=crews, shift=crew_shift)}, publish_results=publish)


def far_node(city, from_node: int) -> int:
    d = (city.nodes.x - city.nodes.x[from_node]) ** 2 + (city.nodes.y - city.nodes.y[from_node]) ** 2
    return int(np.argmax(d))


def report_of(problem: FakeProblem, key: str, channel: str = "app", *, dlon: float = 0.0) -> Report:
    return Report(key=key, category=problem.category, lon=problem.lon + dlon, lat=problem.lat,
                  description="Ổ gà lớn giữa đường", channel=channel, problem=problem.id, resident=7)


def submit_online(ctx, org, report, t=None):
    receipt = ctx.port.submit(report, ctx.env.now if t is None else t)
    org.online_report(report, receipt)
    return receipt


def rows(ctx, kind):
    return events(ctx.ledger.table(), kind)


def statuses(ctx, request_id: int):
    df = rows(ctx, "request.status")
    return df[df.subject == str(request_id)].reset_index(drop=True)


# --- shift windows ----------------------------------------------------------------------------------------

def test_duty_windows_follow_the_clock():
    day = Shift(start="08:00", end="16:00")
    # The run starts at 07:00: the first window opens an hour in, then every 24 h.
    w = duty_windows(day, 7 * H, 0.0)
    assert [next(w) for _ in range(2)] == [(1 * H, 9 * H), (25 * H, 33 * H)]
    # Starting inside the window: it is under way and ends on time.
    assert next(duty_windows(day, 10 * H, 0.0)) == (-2 * H, 6 * H)
    # A night shift wraps past midnight.
    night = Shift(start="22:00", end="06:00")
    assert next(duty_windows(night, 3 * H, 0.0)) == (-5 * H, 3 * H)
    assert next(duty_windows(night, 12 * H, 0.0)) == (10 * H, 18 * H)
    # All day: one endless window.
    assert list(duty_windows(ALL_DAY, 5 * H, 100.0)) == [(100.0, math.inf)]


# --- the intake desk --------------------------------------------------------------------------------------

def test_calls_go_before_tasks_first_come_first_served_within_each():
    env, order = simpy.Environment(), []
    desk = IntakeDesk(env, mesa.Model(), [OperatorShift(start="00:00", end="00:00", operators=1)], 0.0,
                      np.random.default_rng(0), patience_mean=None)

    def log(name):
        return lambda operator, wait_s: order.append((name, env.now, wait_s, operator.name))

    desk.task(10.0, log("t1"))
    desk.task(10.0, log("t2"))

    def later():
        yield env.timeout(1.0)
        desk.call(5.0, log("c1"))
        yield env.timeout(1.0)
        desk.call(5.0, log("c2"))

    env.process(later())
    env.run()
    # t1 is in hand when the phones ring (no pre-emption); both calls then go before t2.
    assert [o[:2] for o in order] == [("t1", 10.0), ("c1", 15.0), ("c2", 20.0), ("t2", 30.0)]
    assert [o[2] for o in order] == [0.0, 9.0, 13.0, 20.0]  # waits
    assert desk.answered == 2 and desk.tasks_done == 2


def test_call_event_carries_the_handles_value_and_generators_run_in_virtual_time():
    env = simpy.Environment()
    desk = IntakeDesk(env, mesa.Model(), [OperatorShift(start="00:00", end="00:00", operators=2)], 0.0,
                      np.random.default_rng(0), patience_mean=None)
    answered = []

    def filing(operator, wait_s):
        yield env.timeout(30.0)
        return f"filed by {operator.name}"

    done = desk.call(60.0, filing, on_answer=lambda op, w: answered.append((env.now, w)))
    env.run()
    assert done.value == "filed by operator-1" and env.now == 90.0
    assert answered == [(0.0, 0.0)]


def test_callers_hang_up_when_nobody_answers_and_cost_no_operator_time():
    env = simpy.Environment()
    desk = IntakeDesk(env, mesa.Model(), [OperatorShift(start="00:00", end="00:00", operators=1)], 0.0,
                      np.random.default_rng(1), patience_mean=20.0)
    desk.task(5000.0, None)  # the operator is busy for a long while
    early, late = [], []

    def after():
        yield env.timeout(1.0)
        early.extend(desk.call(60.0, lambda op, w: "answered") for _ in range(50))
        yield env.timeout(5999.0)
        late.append(desk.call(60.0, lambda op, w: "answered"))

    env.process(after())
    env.run()
    # Exp(20 s) patience against a 5000 s wait: every early caller hangs up (P(stay) = e^-250).
    assert [e.value for e in early] == [None] * 50 and desk.abandoned == 50
    assert late[0].value == "answered" and env.now == 6060.0
    assert desk.operators[0].busy_s == 5060.0  # the abandoned calls took none of the operator's time
    assert desk.waiting() == 0


def test_mean_patience_of_unanswered_callers():
    env = simpy.Environment()
    desk = IntakeDesk(env, mesa.Model(), [OperatorShift(start="08:00", end="09:00", operators=1)], 0.0,
                      np.random.default_rng(2), patience_mean=240.0)  # clock 00:00 - 01:00 nobody is on duty
    calls = [desk.call(60.0, None) for _ in range(4000)]
    gone = []
    for e in calls:
        e.callbacks.append(lambda ev: gone.append(env.now))
    env.run(until=4 * H)
    assert len(gone) == 4000 and all(e.value is None for e in calls)
    # Mean of 4000 Exp(240): standard error 240 / sqrt(4000) = 3.8 s.
    assert abs(np.mean(gone) - 240.0) < 4 * 240.0 / math.sqrt(4000)


def test_operators_work_their_shift_and_finish_the_task_in_hand():
    env, done = simpy.Environment(), []
    # Clock 07:00 at t = 0; one operator 08:00-09:00 each day.
    desk = IntakeDesk(env, mesa.Model(), [OperatorShift(start="08:00", end="09:00", operators=1)], 7 * H,
                      np.random.default_rng(0), patience_mean=None)

    def log(name):
        return lambda operator, wait_s: done.append((name, env.now))

    desk.task(5000.0, log("long"))  # starts at 08:00 (t 3600), runs past 09:00
    desk.task(10.0, log("next"))  # waits for the next day's shift
    env.run(until=3 * 86400)
    assert done == [("long", 1 * H + 5000.0), ("next", 25 * H + 10.0)]


def test_night_shift_wraps_past_midnight():
    env, done = simpy.Environment(), []
    # Clock 03:00 at t = 0; night shift 22:00-06:00 is on duty for three more hours.
    desk = IntakeDesk(env, mesa.Model(), [OperatorShift(start="22:00", end="06:00", operators=1)], 3 * H,
                      np.random.default_rng(0), patience_mean=None)

    def at(t, name):
        yield env.timeout(t)
        desk.task(60.0, lambda op, w: done.append((name, env.now)))

    env.process(at(1 * H, "night"))
    env.process(at(4 * H, "morning"))  # 07:00: waits until 22:00 (t = 19 h)
    env.run(until=2 * 86400)
    assert done == [("night", 1 * H + 60.0), ("morning", 19 * H + 60.0)]


def test_operators_and_crews_are_mesa_agents(city):
    ctx, problems = make_world(city)
    spec = org_spec(operators=3, crews=2)
    org = Organisation(ctx, spec, problems, np.random.default_rng(0))
    operators = [a for a in ctx.model.agents if isinstance(a, Operator)]
    crews = [a for a in ctx.model.agents if isinstance(a, Crew)]
    assert [o.name for o in operators] == ["operator-1", "operator-2", "operator-3"]
    assert [c.name for c in crews] == ["road-damage-1", "road-damage-2"]
    assert len({a.unique_id for a in ctx.model.agents}) == 5
    assert all(c.node == c.depot == org.depot == depot_node(city) for c in crews)


# --- triage and crews -------------------------------------------------------------------------------------

def run_one_report(city, *, publish=1.0, seed=0, factor=1.0):
    ctx, problems = make_world(city, seed=seed, factor=factor)
    org = Organisation(ctx, org_spec(publish=publish), problems, np.random.default_rng(seed),
                       problem_kinds={"pothole": ProblemKind(category="road-damage", site="roads",
                                                             service_time=3600.0)})
    org.start()
    problem = problems.add(city, "pb0", far_node(city, org.depot))
    receipt = submit_online(ctx, org, report_of(problem, "r0"))
    ctx.env.run(until=86400)
    return ctx, problems, org, problem, receipt


def test_online_report_is_triaged_dispatched_fixed_and_closed_with_a_published_result(city):
    ctx, problems, org, problem, receipt = run_one_report(city)
    rid = receipt.request_id
    st = statuses(ctx, rid)
    assert list(st.status) == ["received", "acknowledged", "assigned", "assigned", "in_progress", "resolved",
                               "closed"]
    assert list(st.actor[:4]) == ["citizen", "operator-1", "operator-1", "dispatcher-road-damage"]
    assert list(st.crew[2:4]) == ["road-damage", "road-damage-1"]
    # Public notes: intake, then the result on the closing step only.
    assert list(st.published) == [True, True, True, False, False, False, True]
    view = ctx.port.view(rid, ctx.env.now)
    assert view.status == "closed" and view.note == result_note("road-damage") and is_result_note(view.note)
    assert org.requests[rid] == (report_of(problem, "r0"), "pb0")

    # Triage took Exp(180 s) of operator time; then the crew leaves the depot at once.
    travel = rows(ctx, "crew.travel")
    assert len(travel) == 1 and travel.subject[0] == "road-damage-1" and travel.request_id[0] == rid
    assert travel.t[0] == st.t[1] == st.t[3] > 0
    w = ctx.engine.link_travel_times()
    expected = dijkstra(network_graph(city, w), indices=org.depot)[problem.node]
    assert travel.travel_time_s[0] == pytest.approx(expected) and expected > 0
    assert st.t[4] == pytest.approx(travel.t[0] + expected)  # starts work on arrival
    # Fixed on the spot, then resolved and closed at the same moment.
    assert problems.fixes == [("pb0", st.t[6], "road-damage-1", rid)]
    assert problem.fixed_t == st.t[5] == st.t[6] > st.t[4]
    assert org.crews[0].node == problem.node


def test_travel_follows_the_engines_current_times(city):
    slow = run_one_report(city, factor=3.0)
    fast = run_one_report(city, factor=1.0)
    t_slow = rows(slow[0], "crew.travel").travel_time_s[0]
    t_fast = rows(fast[0], "crew.travel").travel_time_s[0]
    assert t_slow == pytest.approx(3.0 * t_fast)


def test_unpublished_result_closes_with_no_note(city):
    ctx, _, _, _, receipt = run_one_report(city, publish=0.0)
    st = statuses(ctx, receipt.request_id)
    assert st.status.iloc[-1] == "closed" and not st.published.iloc[-1]
    view = ctx.port.view(receipt.request_id, ctx.env.now)
    # The reporter still sees only the intake note: the result was not published to them.
    assert view.note.startswith(INTAKE_PREFIX) and not is_result_note(view.note)


def test_work_time_is_lognormal_around_the_kinds_service_time(city):
    ctx, problems = make_world(city)
    org = Organisation(ctx, org_spec(), problems, np.random.default_rng(5),
                       problem_kinds={"pothole": ProblemKind(category="road-damage", site="roads",
                                                             service_time=5400.0)})
    draws = np.array([org.work_time("pothole") for _ in range(20000)])
    # Mean 5400 s, coefficient of variation 0.5: standard error of the mean 5400 * 0.5 / sqrt(20000) = 19 s.
    assert abs(draws.mean() - 5400.0) < 4 * 19.1
    assert abs(draws.std() / draws.mean() - 0.5) < 0.03


def test_duplicate_linked_on_arrival_is_folded_into_its_original(city):
    ctx, problems = make_world(city)
    org = Organisation(ctx, org_spec(), problems, np.random.default_rng(0))
    org.start()
    problem = problems.add(city, "pb0", far_node(city, org.depot))
    first = submit_online(ctx, org, report_of(problem, "r0"))

    def second_reporter():
        yield ctx.env.timeout(60.0)
        receipts.append(submit_online(ctx, org, report_of(problem, "r1", "web")))

    receipts = []
    ctx.env.process(second_reporter())
    ctx.env.run(until=86400)
    dup = receipts[0]
    assert dup.duplicate_of == first.request_id
    st = statuses(ctx, dup.request_id)
    assert list(st.status) == ["received", "closed"]
    assert st.actor[1] == "operator-1" and st.duplicate_of[1] == first.request_id
    assert len(rows(ctx, "crew.travel")) == 1  # one job for the crew: the original
    assert statuses(ctx, first.request_id).status.iloc[-1] == "closed"


def test_second_request_about_a_fixed_problem_closes_saying_so(city):
    ctx, problems = make_world(city)
    org = Organisation(ctx, org_spec(), problems, np.random.default_rng(0))
    org.start()
    problem = problems.add(city, "pb0", far_node(city, org.depot))
    # 200 m apart (a hotline address, not GPS): the IOC does not link them, so there are two originals.
    a = submit_online(ctx, org, report_of(problem, "r0"))
    b = submit_online(ctx, org, report_of(problem, "r1", dlon=0.002))
    assert b.duplicate_of is None
    ctx.env.run(until=86400)
    assert len(problems.fixes) == 1 and problems.fixes[0][3] == a.request_id
    view = ctx.port.view(b.request_id, ctx.env.now)
    assert view.status == "closed" and view.note == ALREADY_FIXED and is_result_note(view.note)
    # The crew drove there (already there: no travel), checked and closed without working on it.
    travel = rows(ctx, "crew.travel")
    assert list(travel.request_id) == [a.request_id, b.request_id] and travel.travel_time_s[1] == 0.0
    st = statuses(ctx, b.request_id)
    assert st.t.iloc[-1] == st.t[st.status == "in_progress"].iloc[0]


def test_crews_take_the_earliest_deadline_first(city):
    ctx, problems = make_world(city)
    org = Organisation(ctx, org_spec(triage_time=1.0), problems, np.random.default_rng(0))
    org.start()
    depot = org.depot
    nodes = [n for n in np.argsort(-((city.nodes.x - city.nodes.x[depot]) ** 2))[:4]]
    ps = [problems.add(city, f"pb{k}", int(n)) for k, n in enumerate(nodes)]
    receipts = []
    # Four reports filed at once; their (fabricated) deadlines run in the reverse order of filing.
    for k, p in enumerate(ps):
        r = report_of(p, f"r{k}")
        real = ctx.port.submit(r, 0.0)
        fake = Receipt(real.request_id, real.token, None, deadline_t=10_000.0 - 1000.0 * k)
        org.online_report(r, fake)
        receipts.append(fake)
    ctx.env.run(until=86400)
    taken = list(rows(ctx, "crew.travel").request_id)
    # The first triaged job is taken at once (the crew is idle); the rest by deadline.
    first = taken[0]
    rest = sorted((r for r in receipts if r.request_id != first), key=lambda r: r.deadline_t)
    assert taken[1:] == [r.request_id for r in rest]
    assert len(problems.fixes) == 4


def test_crews_work_only_on_shift(city):
    # Clock 16:30 at t = 0; day crew 07:00-17:00. A report at 17:30 waits for 07:00 the next morning.
    ctx, problems = make_world(city, start_s=16.5 * H)
    org = Organisation(ctx, org_spec(crew_shift=Shift(start="07:00", end="17:00")), problems,
                       np.random.default_rng(0))
    org.start()
    problem = problems.add(city, "pb0", far_node(city, org.depot))

    def reporter():
        yield ctx.env.timeout(1 * H)
        submit_online(ctx, org, report_of(problem, "r0"))

    ctx.env.process(reporter())
    ctx.env.run(until=2 * 86400)
    travel = rows(ctx, "crew.travel")
    assert list(travel.t) == [14.5 * H]  # 07:00 next day
    assert problem.fixed_t is not None and problem.fixed_t > 14.5 * H


def test_request_closed_meanwhile_is_not_dispatched(city):
    ctx, problems = make_world(city, start_s=16.5 * H)
    org = Organisation(ctx, org_spec(crew_shift=Shift(start="07:00", end="17:00")), problems,
                       np.random.default_rng(0))
    org.start()
    problem = problems.add(city, "pb0", far_node(city, org.depot))

    def story():
        yield ctx.env.timeout(1 * H)
        receipt = submit_online(ctx, org, report_of(problem, "r0"))
        yield ctx.env.timeout(2 * H)  # triaged and queued; the crews are off until 07:00
        ctx.port.close(receipt.request_id, "supervisor", ctx.env.now, "Đã xử lý xong: giải quyết qua điện thoại.")

    ctx.env.process(story())
    ctx.env.run(until=2 * 86400)
    assert len(rows(ctx, "crew.travel")) == 0 and problem.fixed_t is None
    assert org.crews[0].jobs_done == 0


# --- hotline ----------------------------------------------------------------------------------------------

def test_hotline_call_is_answered_filed_and_triaged_in_the_call(city):
    ctx, problems = make_world(city)
    org = Organisation(ctx, org_spec(), problems, np.random.default_rng(3))
    org.start()
    problem = problems.add(city, "pb0", far_node(city, org.depot))
    got = []

    def caller():
        receipt = yield org.call(report_of(problem, "r0", "hotline"))
        got.append((ctx.env.now, receipt))

    ctx.env.process(caller())
    ctx.env.run(until=86400)
    t_filed, receipt = got[0]
    answered = rows(ctx, "call.answered")
    assert list(answered.subject) == ["r0"] and answered.wait_s[0] == 0.0 and answered.actor[0] == "operator-1"
    submitted = rows(ctx, "report.submitted")
    assert submitted.channel[0] == "hotline" and submitted.t[0] == t_filed > answered.t[0]
    st = statuses(ctx, receipt.request_id)
    # Acknowledged and assigned by the operator at the moment of filing: no second wait for triage.
    assert list(st.t[:3]) == [t_filed] * 3 and list(st.status[:3]) == ["received", "acknowledged", "assigned"]
    assert st.status.iloc[-1] == "closed" and len(rows(ctx, "call.abandoned")) == 0


def test_hotline_caller_who_hangs_up_is_recorded(city):
    # Nobody at the desk 00:00-06:00 (clock 01:00 at t = 0): the caller gives up.
    ctx, problems = make_world(city, start_s=1 * H)
    org = Organisation(ctx, org_spec(op_shift=Shift(start="06:00", end="22:00"), patience=240.0), problems,
                       np.random.default_rng(3))
    org.start()
    problem = problems.add(city, "pb0", far_node(city, org.depot))
    got = []

    def caller():
        got.append((yield org.call(report_of(problem, "r0", "hotline"))))

    ctx.env.process(caller())
    ctx.env.run(until=86400)
    assert got == [None]
    gone = rows(ctx, "call.abandoned")
    assert list(gone.subject) == ["r0"] and list(gone.problem) == ["pb0"] and list(gone.resident) == [7]
    assert gone.wait_s[0] == gone.t[0] > 0
    assert len(rows(ctx, "report.submitted")) == 0 and len(rows(ctx, "call.answered")) == 0


# --- determinism ------------------------------------------------------------------------------------------

def busy_day(city, seed):
    ctx, problems = make_world(city, seed=seed)
    spec = org_spec(operators=2, crews=2, patience=120.0, publish=0.7, crew_shift=Shift(start="07:00", end="17:00"))
    org = Organisation(ctx, spec, problems, np.random.default_rng(seed))
    org.start()
    rng = np.random.default_rng(seed + 100)
    ps = [problems.add(city, f"pb{k}", int(n)) for k, n in enumerate(rng.choice(len(city.nodes), 12, False))]

    def reporters():
        for k in range(60):
            yield ctx.env.timeout(rng.exponential(600.0))
            p = ps[rng.integers(len(ps))]
            channel = ("app", "hotline", "web")[rng.integers(3)]
            r = report_of(p, f"r{k}", channel, dlon=float(rng.normal(0, 0.001)))
            if channel == "hotline":
                org.call(r)
            else:
                submit_online(ctx, org, r)

    ctx.env.process(reporters())
    ctx.env.run(until=2 * 86400)
    return ctx.ledger.table()


def test_same_seed_same_ledger(city):
    a, b = busy_day(city, 11), busy_day(city, 11)
    assert a.equals(b)
    assert set(a.column("kind").to_pylist()) >= {"report.submitted", "request.status", "crew.travel",
                                                 "call.answered", "problem.fixed"}
    assert not a.equals(busy_day(city, 12))

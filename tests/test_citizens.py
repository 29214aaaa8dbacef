"""Citizens: exposure to problems, noticing, reporting through the port, following up, satisfaction."""

from __future__ import annotations

import math
from types import SimpleNamespace

import mesa
import numpy as np
import pytest
import simpy
from scipy.sparse.csgraph import dijkstra

from citytwin.agents.activities import PersonTrips
from citytwin.agents.citizens import Citizens, result_published, satisfaction_score
from citytwin.agents.context import AgentContext
from citytwin.agents.exposure import Exposure
from citytwin.agents.population import Population
from citytwin.agents.problems import Problems
from citytwin.twin.city.model import City
from citytwin.twin.city.paths import network_graph
from citytwin.twin.city.synthetic import SyntheticParams, generate
from citytwin.twin.ledger import Ledger, events
from citytwin.twin.ports import InProcessPort, RequestView, new_ioc
from citytwin.twin.scenario.schema import CitizenReporting, FieldReportingSpec, ProblemKind

DAY = 86400.0
KINDS = {"pothole": ProblemKind(category="road-damage", site="roads", rate=0.0),
         "garbage": ProblemKind(category="waste", site="homes", rate=0.0)}
RESULT = "Đã xử lý xong: đã vá ổ gà."


class FakeEngine:
    def __init__(self, city: City):
        self.city, self.time, self.restrictions = city, 0.0, {}

    def advance_to(self, t: float) -> None:
        self.time = t

    def restrict(self, key, restriction) -> None:
        self.restrictions[key] = restriction

    def lift(self, key) -> None:
        self.restrictions.pop(key, None)

    def link_travel_times(self) -> np.ndarray:
        return self.city.links.free_flow_s


class FakeOrganisation:
    """Records what citizens hand it. Online reports: duplicates are folded at once, the rest acknowledged and,
    with `close_after`, closed that long after (with a result note when `publish`). Calls are answered after
    `answer_after` s (and filed) or, with `hang_up`, end with None."""

    def __init__(self, ctx: AgentContext, *, close_after: float | None = None, publish: bool = True,
                 answer_after: float = 30.0, hang_up: bool = False):
        self.ctx, self.close_after, self.publish = ctx, close_after, publish
        self.answer_after, self.hang_up = answer_after, hang_up
        self.online: list = []
        self.calls: list = []

    def online_report(self, report, receipt) -> None:
        self.online.append((report, receipt))
        self.ctx.env.process(self._handle(receipt))

    def call(self, report) -> simpy.Event:
        event = self.ctx.env.event()
        self.calls.append((report, event))
        self.ctx.env.process(self._answer(report, event))
        return event

    def _answer(self, report, event):
        yield self.ctx.env.timeout(self.answer_after)
        if self.hang_up:
            event.succeed(None)
            return
        receipt = self.ctx.port.submit(report, self.ctx.env.now)
        event.succeed(receipt)
        yield from self._handle(receipt)

    def _handle(self, receipt):
        port, env = self.ctx.port, self.ctx.env
        rid = receipt.request_id
        if receipt.duplicate_of is not None:
            port.mark_duplicate(rid, receipt.duplicate_of, "operator-1", env.now)
            return
        port.acknowledge(rid, "operator-1", env.now, "Đã tiếp nhận phản ánh, chuyển đơn vị xử lý")
        if self.close_after is None:
            return
        yield env.timeout(self.close_after)
        port.assign(rid, "operator-1", "road-damage-1", env.now)
        port.start(rid, "road-damage-1", env.now)
        port.resolve(rid, "road-damage-1", env.now)
        port.close(rid, "road-damage-1", env.now, RESULT if self.publish else "")


@pytest.fixture(scope="module")
def city() -> City:
    return generate(SyntheticParams())


def population(city: City, home: np.ndarray, *, propensity: float = 1.0, smartphone=True) -> Population:
    n = len(home)
    return Population(home=np.asarray(home, np.int32), work=np.full(n, -1, np.int32), age_group=np.full(n, 2, np.int8),
                      household=np.arange(n, dtype=np.int32), smartphone=np.broadcast_to(smartphone, n).copy(),
                      propensity=np.full(n, propensity, np.float32), mode=np.zeros(n, np.int8),
                      n_nodes=len(city.nodes))


def trips(resident, origin, dest, depart_t) -> PersonTrips:
    order = np.argsort(depart_t, kind="stable")
    n = len(order)
    return PersonTrips(resident=np.asarray(resident, np.int32)[order], origin=np.asarray(origin, np.int32)[order],
                       dest=np.asarray(dest, np.int32)[order], depart_t=np.asarray(depart_t, float)[order],
                       mode=np.zeros(n, np.int8), purpose=np.zeros(n, np.int8))


def world(city: City, pop: Population, spec: CitizenReporting, *, duration_s: float = DAY, seed: int = 0,
          **org) -> SimpleNamespace:
    env, ledger = simpy.Environment(), Ledger()
    port = InProcessPort(new_ioc(np.random.default_rng(seed + 1)), ledger)
    ctx = AgentContext(env=env, model=mesa.Model(), city=city, engine=FakeEngine(city), ledger=ledger, port=port,
                       start_s=0.0, duration_s=duration_s)
    problems = Problems(ctx, FieldReportingSpec(problems=KINDS), pop, np.random.default_rng(seed + 2))
    organisation = FakeOrganisation(ctx, **org)
    citizens = Citizens(ctx, pop, spec, problems, organisation, np.random.default_rng(seed + 3))
    problems.start()
    citizens.start()
    return SimpleNamespace(env=env, ledger=ledger, ctx=ctx, problems=problems, org=organisation, citizens=citizens)


def spec(**changes) -> CitizenReporting:
    base = dict(notice_per_pass=0.0, notice_at_home_per_day=0.0, channels={"app": 0.0, "hotline": 0.0, "web": 1.0})
    return CitizenReporting(**{**base, **changes})


def rows(w, kind: str):
    return events(w.ledger.table(), kind)


def passing_pair(ex: Exposure, link: int) -> tuple[int, int]:
    """A zone-node pair whose route uses the link (its own end points when they are zones)."""
    pairs = ex._through_link(link)
    a, b = int(ex.city.links.src[link]), int(ex.city.links.dst[link])
    flat = ex.zone_of[a] * ex.Z + ex.zone_of[b]
    pick = flat if flat in set(pairs.tolist()) else int(pairs[0])
    return int(ex.zones[pick // ex.Z]), int(ex.zones[pick % ex.Z])


# -- exposure ----------------------------------------------------------------------------------------------

def test_pass_sets_are_the_pairs_whose_shortest_path_uses_the_link_or_junction(city):
    rng = np.random.default_rng(0)
    ex = Exposure(city, population(city, np.arange(len(city.nodes))), home_radius_m=200.0)
    dist, pred = dijkstra(network_graph(city, ex._link_time), indices=ex.zones, return_predecessors=True)
    link_of = {(int(s), int(d)): k for k, (s, d) in enumerate(zip(city.links.src, city.links.dst))}
    links = rng.choice(len(city.links), 25, replace=False)
    nodes = rng.choice(ex.zones, 10, replace=False)
    through_link = {int(k): set(ex._through_link(int(k)).tolist()) for k in links}
    through_node = {int(n): set(ex._through_node(int(n)).tolist()) for n in nodes}
    for o in rng.choice(ex.Z, 40, replace=False):
        for d in range(ex.Z):
            path = [int(ex.zones[d])]
            while path[-1] != ex.zones[o]:
                path.append(int(pred[o, path[-1]]))
            used = {link_of[(u, v)] for v, u in zip(path[:-1], path[1:])}
            flat = int(o) * ex.Z + d
            for k, pairs in through_link.items():
                assert (k in used) == (flat in pairs), (o, d, k)
            for n, pairs in through_node.items():
                assert (n in path) == (flat in pairs), (o, d, n)
    assert all(len(p) for p in through_link.values())


def test_site_counts_passes_of_the_days_trips_and_residents_nearby(city):
    rng = np.random.default_rng(1)
    n = 3000
    home = rng.choice(len(city.nodes), n)
    ex = Exposure(city, population(city, home), home_radius_m=300.0)
    link = int(np.flatnonzero(city.links.road_class == "arterial")[3])
    x, y = city.nodes.x[city.links.src[link]], city.nodes.y[city.links.src[link]]
    site = ex.site(link, int(city.links.src[link]), x, y)
    o, d = rng.choice(ex.zones, n), rng.choice(ex.zones, n)
    ex.set_day(trips(np.arange(n), o, d, rng.random(n) * DAY))
    flat = ex.zone_of[o] * ex.Z + ex.zone_of[d]
    assert ex.refresh(site).passes == np.isin(flat, site.pairs).sum() > 0
    assert site.trip_weight == pytest.approx(site.passes)  # everyone's propensity is 1
    near = np.hypot(city.nodes.x[home] - x, city.nodes.y[home] - y) <= 300.0
    assert site.home_count == near.sum() > 0
    picked = ex.pick_home(site, 200, rng)
    assert near[picked].all()
    travellers = ex.pick_travellers(site, 200, rng)
    assert np.isin(flat[travellers], site.pairs).all()  # resident k made trip k


def test_departure_share(city):
    ex = Exposure(city, population(city, [0]), home_radius_m=100.0)
    assert ex.departure_share(0.0, 3600.0) == 0.0  # no trips yet
    ex.set_day(trips([0] * 4, [0] * 4, [1] * 4, [100.0, 3000.0, 3600.0, 5000.0]))
    assert list(ex.departure_share(np.array([0.0, 3000.0]), 3600.0)) == [0.5, 0.25]


# -- noticing ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("severity", [1, 3])
def test_reports_from_passing_trips_follow_the_noticing_rate(city, severity):
    n, per_pass = 3000, 0.05
    pop = population(city, np.zeros(n, int))
    w = world(city, pop, spec(notice_per_pass=per_pass))
    link = int(np.flatnonzero(city.links.road_class == "collector")[5])
    o, d = passing_pair(w.citizens.exposure, link)
    w.citizens.set_day(trips(np.arange(n), [o] * n, [d] * n, np.random.default_rng(2).random(n) * DAY))
    problem = w.problems.add("pothole", link=link, severity=severity)
    w.env.run(until=DAY)
    submitted = rows(w, "report.submitted")
    # Each resident passes once: they report if they noticed at least once (Poisson thinning, propensity 1).
    p = 1.0 - math.exp(-per_pass * (1, 2, 4)[severity - 1])
    assert abs(len(submitted) - n * p) < 4.5 * math.sqrt(n * p * (1 - p))
    assert set(submitted["problem"]) == {problem.id} and submitted["resident"].is_unique
    assert set(submitted["channel"]) == {"web"} and len(w.org.online) == len(submitted)


def test_reports_from_residents_living_nearby(city):
    node = int(np.flatnonzero(city.links.road_class == "alley")[10])
    node = int(city.links.src[node])
    dist = np.hypot(city.nodes.x - city.nodes.x[node], city.nodes.y - city.nodes.y[node])
    near, far = np.flatnonzero(dist <= 150.0), np.flatnonzero(dist > 400.0)
    home = np.concatenate([np.repeat(near, 600 // len(near) + 1)[:600], np.resize(far, 600)])
    w = world(city, population(city, home), spec(notice_at_home_per_day=0.5, home_radius_m=200.0),
              duration_s=2 * DAY)
    w.problems.add("garbage", node=node, severity=1)
    w.env.run(until=2 * DAY)
    reporters = rows(w, "report.submitted")["resident"].to_numpy()
    p = 1.0 - math.exp(-0.5 * 2)  # per resident: 0.5 a day for two days
    assert (reporters < 600).all()  # only those living near it
    assert abs(len(reporters) - 600 * p) < 4.5 * math.sqrt(600 * p * (1 - p))


def test_a_problem_that_starts_within_the_hour_is_exposed_for_the_rest_of_it(city):
    n = 2000
    w = world(city, population(city, np.zeros(n, int)), spec(notice_per_pass=1.0))
    link = int(np.flatnonzero(city.links.road_class == "arterial")[0])
    o, d = passing_pair(w.citizens.exposure, link)
    w.citizens.set_day(trips(np.arange(n), [o] * n, [d] * n, np.linspace(0.0, 3600.0, n, endpoint=False)))

    def later():
        yield w.env.timeout(1800.0)
        w.problems.add("pothole", link=link)

    w.env.process(later())
    w.env.run(until=3600.0)
    t = rows(w, "report.submitted")["t"]
    # Half the hour's passes come after it starts: about n/2 * (1 - e^-1) reporters, all after 00:30.
    assert len(t) > 400 and (t >= 1800.0).all()


def test_each_resident_reports_a_problem_once_and_reports_carry_the_truth(city):
    pop = population(city, [0, 0, 0], smartphone=[True, True, False])
    w = world(city, pop, spec(notice_per_pass=1.0, channels={"app": 1.0, "hotline": 0.0, "web": 0.0},
                              location_error_m={"app": 15.0, "hotline": 120.0, "web": 60.0}))
    link = int(np.flatnonzero(city.links.road_class == "local")[2])
    o, d = passing_pair(w.citizens.exposure, link)
    times = np.arange(0.0, DAY, 1800.0)
    w.citizens.set_day(trips(np.tile([0, 1, 2], len(times)), [o] * 3 * len(times), [d] * 3 * len(times),
                             np.repeat(times, 3)))
    problem = w.problems.add("pothole", link=link, severity=2)
    w.env.run(until=DAY)
    sub = rows(w, "report.submitted").sort_values("resident")
    assert list(sub["resident"]) == [0, 1, 2]
    assert list(sub["channel"]) == ["app", "app", "hotline"]  # no smartphone: the hotline instead
    assert sorted(sub["subject"]) == ["r0", "r1", "r2"]
    assert set(sub["category"]) == {"road-damage"} and set(sub["problem"]) == {problem.id}
    reports = {r.key: r for r, _ in w.org.online} | {r.key: r for r, _ in w.org.calls}
    for row in sub.itertuples():
        report = reports[row.subject]
        metres = math.hypot((report.lon - problem.lon) * 111_320 * math.cos(math.radians(problem.lat)),
                            (report.lat - problem.lat) * 111_320)
        assert metres < 5 * (15.0 if report.channel == "app" else 120.0)
        assert report.description and "đường" in report.description
        assert report.media_url == (f"https://media.citytwin.local/{report.key}.jpg" if report.channel == "app"
                                    else None)
    assert {r.key for r, _ in w.org.online} == {row.subject for row in sub.itertuples() if row.channel == "app"}
    assert all(receipt.request_id in set(sub["request_id"]) for _, receipt in w.org.online)


def test_a_caller_who_hangs_up_files_nothing_and_may_call_again(city):
    pop = population(city, [0])
    w = world(city, pop, spec(notice_per_pass=1.0, channels={"app": 0.0, "hotline": 1.0, "web": 0.0}),
              hang_up=True)
    link = int(np.flatnonzero(city.links.road_class == "local")[4])
    o, d = passing_pair(w.citizens.exposure, link)
    w.citizens.set_day(trips([0] * 24, [o] * 24, [d] * 24, np.arange(24) * 3600.0))
    w.problems.add("pothole", link=link)
    w.env.run(until=DAY)
    assert len(w.org.calls) > 5  # tried again on later passes
    assert len(rows(w, "report.submitted")) == 0 and len(rows(w, "report.checked")) == 0


# -- following up --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("publish", [True, False])
def test_feedback_after_close_follows_duplicates_to_their_original(city, publish):
    n = 40
    pop = population(city, np.zeros(n, int))
    w = world(city, pop, spec(notice_per_pass=1.0, check_interval=3600.0,
                              location_error_m={"app": 0.0, "hotline": 0.0, "web": 0.0}),
              duration_s=3 * DAY, close_after=10 * 3600.0, publish=publish)
    link = int(np.flatnonzero(city.links.road_class == "collector")[9])
    o, d = passing_pair(w.citizens.exposure, link)
    w.citizens.set_day(trips(np.arange(n), [o] * n, [d] * n, np.linspace(7 * 3600.0, 9 * 3600.0, n)))
    w.problems.add("pothole", link=link)
    w.env.run(until=3 * DAY)
    sub = rows(w, "report.submitted")
    original = int(sub["request_id"].iloc[0])
    assert len(sub) > 12 and (sub["duplicate_of"].iloc[1:] == original).all()  # same spot, all linked
    fb = rows(w, "report.feedback").set_index("subject")
    assert set(fb.index) == set(sub["subject"])
    assert (fb["request_id"] == original).all() and (fb["published"] == publish).all()
    assert (fb["duration_s"] >= 0).all() and fb["satisfaction"].isin([1.0, 2.0, 3.0, 4.0, 5.0]).all()
    # The reporter's view agrees with the ledger's record of the closing step.
    status = rows(w, "request.status")
    closing = status[(status["subject"] == str(original)) & (status["status"] == "closed")]
    assert list(closing["published"]) == [publish]
    mean = fb["satisfaction"].mean()
    assert (mean > 4.2) if publish else (mean < 4.0)
    # Checks stop once the reporter has given feedback.
    checked = rows(w, "report.checked")
    last_check = checked.groupby("subject")["t"].max()
    assert (last_check <= fb.loc[last_check.index, "t"]).all()


def test_reporters_give_up_and_never_check_past_the_end(city):
    n = 60
    pop = population(city, np.zeros(n, int))
    w = world(city, pop, spec(notice_per_pass=1.0, check_interval=4 * 3600.0, give_up_after=DAY),
              duration_s=2.5 * DAY)
    link = int(np.flatnonzero(city.links.road_class == "arterial")[7])
    o, d = passing_pair(w.citizens.exposure, link)
    w.citizens.set_day(trips(np.arange(n), [o] * n, [d] * n, np.linspace(0.0, DAY, n, endpoint=False)))
    w.problems.add("pothole", link=link)

    def next_day():  # the same trips the next days
        for day in (1, 2):
            yield w.env.timeout(DAY)
            w.citizens.set_day(trips(np.arange(n), [o] * n, [d] * n, day * DAY + np.linspace(0.0, DAY, n)))

    w.env.process(next_day())
    w.env.run()
    sub = rows(w, "report.submitted").set_index("subject")
    gave_up = rows(w, "report.given_up").set_index("subject")
    due = sub.index[sub["t"] + DAY < w.ctx.duration_s]
    assert set(gave_up.index) == set(due) and len(due) > 10
    assert np.allclose(gave_up.loc[due, "t"], sub.loc[due, "t"] + DAY)
    assert np.allclose(gave_up["duration_s"], DAY)
    assert len(rows(w, "report.feedback")) == 0
    checked = rows(w, "report.checked")
    assert (checked["t"] < w.ctx.duration_s).all() and set(checked["status"]) == {"acknowledged"}
    assert w.env.now <= w.ctx.duration_s  # nothing was scheduled past the end of the run


def test_same_seed_same_ledger(city):
    def run(seed: int):
        rng = np.random.default_rng(5)
        n = 1500
        pop = population(city, rng.choice(len(city.nodes), n), propensity=0.3,
                         smartphone=rng.random(n) < 0.7)
        w = world(city, pop, spec(notice_per_pass=0.05, notice_at_home_per_day=0.05,
                                  channels={"app": 0.5, "hotline": 0.3, "web": 0.2}, check_interval=7200.0),
                  duration_s=DAY, seed=seed, close_after=5 * 3600.0)
        zones = w.citizens.exposure.zones
        w.citizens.set_day(trips(np.arange(n), rng.choice(zones, n), rng.choice(zones, n), rng.random(n) * DAY))
        for k in rng.choice(len(city.links), 15, replace=False):
            w.problems.add("pothole", link=int(k), severity=int(rng.integers(1, 4)))
        w.env.run(until=DAY)
        return w.ledger.table()

    a, b, c = run(0), run(0), run(1)
    kinds = set(a["kind"].to_pylist())
    assert {"report.submitted", "report.checked", "report.feedback"} <= kinds
    assert a.equals(b) and not a.equals(c)


# -- the formulas --------------------------------------------------------------------------------------------

def test_satisfaction_falls_with_delay_and_without_a_published_result():
    day = 86400.0
    assert satisfaction_score(0.0, day, True, 0.0) == 5.0
    assert satisfaction_score(day, day, True, 0.0) == 4.0  # at the deadline: one star off
    assert satisfaction_score(2 * day, day, True, 0.0) == 2.0  # a deadline late: 1.5 more (4 - 1.5 = 2.5 -> 2)
    assert satisfaction_score(0.5 * day, day, False, 0.0) == 3.0  # 4.5 - 1.5
    assert satisfaction_score(10 * day, day, False, -3.0) == 1.0  # clipped
    assert satisfaction_score(0.0, day, True, 3.0) == 5.0
    scores = [satisfaction_score(t * day, day, True, 0.0) for t in np.linspace(0, 4, 30)]
    assert scores == sorted(scores, reverse=True)


def test_published_means_a_result_note_the_reporter_had_not_seen():
    def view(note: str) -> RequestView:
        return RequestView(1, "closed", note, None, "waste", 0.0, 0.0)

    assert result_published(view("Đã xử lý xong: đã thu gom rác."), set())
    assert not result_published(view(""), set())
    assert not result_published(view("Report received"), set())
    assert not result_published(view("Đã tiếp nhận phản ánh, chuyển URENCO"), set())
    assert not result_published(view("Tổ công tác đang đến"), {"Tổ công tác đang đến"})

"""Urban problems as ground truth: where and how often they arise, what they do to the roads, fixing."""

from __future__ import annotations

import math

import mesa
import numpy as np
import pandas as pd
import pytest
import simpy

from citytwin.agents.context import AgentContext
from citytwin.agents.population import Population
from citytwin.agents.problems import Problems
from citytwin.twin.city.model import City, make_links, make_nodes
from citytwin.twin.city.synthetic import SyntheticParams, generate
from citytwin.twin.ledger import Ledger, events
from citytwin.twin.ports import InProcessPort, new_ioc
from citytwin.twin.scenario.schema import FieldReportingSpec, ProblemKind


class FakeEngine:
    """Records restrictions; link times are free flow."""

    def __init__(self, city: City):
        self.city, self.time = city, 0.0
        self.restrictions: dict = {}
        self.lifted: list[str] = []

    def advance_to(self, t: float) -> None:
        assert t >= self.time
        self.time = t

    def restrict(self, key, restriction) -> None:
        self.restrictions[key] = restriction

    def lift(self, key) -> None:
        self.restrictions.pop(key, None)
        self.lifted.append(key)

    def link_travel_times(self) -> np.ndarray:
        return self.city.links.free_flow_s


@pytest.fixture(scope="module")
def city() -> City:
    return generate(SyntheticParams())


def population_on(city: City, n: int, rng: np.random.Generator) -> Population:
    """n residents at random junctions (a hand-built population: only what problems use matters)."""
    home = rng.integers(len(city.nodes), size=n).astype(np.int32)
    return Population(home=home, work=np.full(n, -1, np.int32), age_group=np.full(n, 2, np.int8),
                      household=np.arange(n, dtype=np.int32), smartphone=np.ones(n, bool),
                      propensity=np.full(n, 0.1, np.float32), mode=np.zeros(n, np.int8), n_nodes=len(city.nodes))


def make_problems(city: City, problems: dict[str, ProblemKind], *, duration_s: float = 86400.0, seed: int = 0,
                  residents: int = 2000):
    env, ledger = simpy.Environment(), Ledger()
    engine = FakeEngine(city)
    port = InProcessPort(new_ioc(np.random.default_rng(seed)), ledger)
    ctx = AgentContext(env=env, model=mesa.Model(), city=city, engine=engine, ledger=ledger, port=port,
                       start_s=0.0, duration_s=duration_s)
    pop = population_on(city, residents, np.random.default_rng(seed + 100))
    spec = FieldReportingSpec(problems=problems)
    return Problems(ctx, spec, pop, np.random.default_rng(seed)), ctx


def started(ctx: AgentContext):
    return events(ctx.ledger.table(), "problem.start")


def test_problem_counts_follow_rates_per_site(city):
    days = 20.0
    kinds = {"pothole": ProblemKind(category="road-damage", site="roads", rate=0.05),
             "garbage": ProblemKind(category="waste", site="homes", rate=2.0),
             "traffic_signal": ProblemKind(category="traffic-signal", site="signals", rate=0.2)}
    problems, ctx = make_problems(city, kinds, duration_s=days * 86400.0)
    problems.start()
    ctx.env.run(until=ctx.duration_s)
    rows = started(ctx)
    expected = {"pothole": 0.05 * city.total_road_km * days, "garbage": 2.0 * 2000 / 1000 * days,
                "traffic_signal": 0.2 * city.nodes.signalised.sum() * days}
    counts = rows["cause"].value_counts()
    for kind, mean in expected.items():
        assert abs(counts.get(kind, 0) - mean) < 4.5 * math.sqrt(mean), (kind, counts.get(kind, 0), mean)
    # Sites: roads on a link, homes where someone lives, signals at signalised junctions.
    node_index, link_index = city.node_index(), city.link_index()
    homes = set(problems.population.home.tolist())
    for row in rows.itertuples():
        node = node_index[row.node]
        if row.cause == "pothole":
            assert city.links.src[link_index[row.link]] == node
        elif row.cause == "garbage":
            assert pd.isna(row.link) and node in homes
        else:
            assert pd.isna(row.link) and city.nodes.signalised[node]
    assert (rows["t"] >= 0).all() and (rows["t"] < ctx.duration_s).all()


def test_ids_in_start_order_and_ledger_fields(city):
    kinds = {"pothole": ProblemKind(category="road-damage", site="roads", rate=0.2, severity=[0.2, 0.3, 0.5])}
    problems, ctx = make_problems(city, kinds, duration_s=3 * 86400.0)
    problems.start()
    ctx.env.run(until=ctx.duration_s)
    rows = started(ctx)
    assert list(rows["subject"]) == [f"pb{k}" for k in range(len(rows))]
    assert (np.diff(rows["t"]) >= 0).all()
    assert set(rows["category"]) == {"road-damage"}
    assert set(rows["severity"]) <= {1, 2, 3}
    share_severe = (rows["severity"] == 3).mean()
    assert abs(share_severe - 0.5) < 4 * math.sqrt(0.25 / len(rows))
    # A link problem lies on its link: between the end points' coordinates.
    for row in rows.itertuples():
        p = problems.get(row.subject)
        a, b = city.links.src[p.link], city.links.dst[p.link]
        lo, hi = sorted((city.nodes.lon[a], city.nodes.lon[b]))
        assert lo - 1e-9 <= row.lon <= hi + 1e-9
        assert p.start_t == row.t and p.active
    assert len(problems.active()) == len(rows)


def test_capacity_restriction_until_fixed(city):
    kinds = {"fallen_tree": ProblemKind(category="fallen-tree", site="roads", rate=0.0, capacity_factor=0.5),
             "traffic_signal": ProblemKind(category="traffic-signal", site="signals", rate=0.0,
                                           capacity_factor=0.7)}
    problems, ctx = make_problems(city, kinds)
    engine = ctx.engine
    tree = problems.add("fallen_tree", link=7, severity=3)
    restriction = engine.restrictions[f"problem:{tree.id}"]
    assert (restriction.link, restriction.capacity_factor) == (7, 0.5)
    junction = int(np.flatnonzero(city.nodes.signalised)[0])
    signal = problems.add("traffic_signal", node=junction)
    into = set(np.flatnonzero(city.links.dst == junction).tolist())
    assert {r.link for k, r in engine.restrictions.items() if k.startswith(f"problem:{signal.id}:")} == into

    def crew():
        yield ctx.env.timeout(3600.0)
        assert problems.fix(tree.id, ctx.env.now, "fallen-tree-1", 12) is True
        assert problems.fix(tree.id, ctx.env.now, "fallen-tree-2", 13) is False  # already fixed

    ctx.env.process(crew())
    ctx.env.run()
    assert f"problem:{tree.id}" not in engine.restrictions and engine.time == 3600.0
    assert not tree.active and tree.fixed_t == 3600.0
    assert [p.id for p in problems.active()] == [signal.id]
    fixed = events(ctx.ledger.table(), "problem.fixed")
    assert fixed[["t", "subject", "crew", "request_id"]].values.tolist() == [[3600.0, tree.id, "fallen-tree-1", 12]]


def test_floods_become_problems_once_per_flooding(city):
    kinds = {"flooding": ProblemKind(category="flooding", site="floods")}
    problems, ctx = make_problems(city, kinds)
    heard = []
    problems.on_start.append(heard.append)
    problems.on_flood(5, 0.0)
    problems.on_flood(5, 0.0)  # still under water and unfixed: the same problem
    problems.on_flood(9, 0.0)
    assert [(p.node, p.link, p.category) for p in heard] == [(5, -1, "flooding"), (9, -1, "flooding")]
    problems.fix(heard[0].id, 0.0, "flooding-1", 1)
    problems.on_flood(5, 0.0)  # floods again after the fix: a new problem
    assert [p.node for p in problems.active()] == [9, 5]


def test_same_seed_same_problems(city):
    kinds = FieldReportingSpec().problems
    tables = []
    for _ in range(2):
        problems, ctx = make_problems(city, kinds, duration_s=5 * 86400.0, seed=7)
        problems.start()
        ctx.env.run(until=ctx.duration_s)
        tables.append(ctx.ledger.table())
    assert tables[0].num_rows > 10 and tables[0].equals(tables[1])
    other, ctx = make_problems(city, kinds, duration_s=5 * 86400.0, seed=8)
    other.start()
    ctx.env.run(until=ctx.duration_s)
    assert not ctx.ledger.table().equals(tables[0])


def test_connectors_never_have_problems_and_positions_without_geography():
    # A three-node line whose nodes have no lon/lat (a TNTP-like city) and whose middle link is a connector.
    nodes = make_nodes(["a", "b", "c"], [0.0, 500.0, 1000.0], [0.0, 0.0, 0.0])
    links = make_links(["ab", "ba", "bc", "cb"], [0, 1, 1, 2], [1, 0, 2, 1], [500.0] * 4, [1] * 4, [10.0] * 4,
                       [1000.0] * 4, [0.2] * 4, ["local", "local", "connector", "connector"])
    city = City(name="line", source="tntp", nodes=nodes, links=links)
    problems, ctx = make_problems(city, {"pothole": ProblemKind(category="road-damage", site="roads", rate=1.0)},
                                  duration_s=20 * 86400.0, residents=10)
    problems.start()
    ctx.env.run(until=ctx.duration_s)
    rows = started(ctx)
    assert len(rows) > 5 and set(rows["link"]) <= {"ab", "ba"}
    assert np.isfinite(rows["lon"]).all() and np.isfinite(rows["lat"]).all()
    assert (rows["lat"].between(15.0, 17.0)).all()  # placed around the fallback anchor


def test_add_validates():
    city = generate(SyntheticParams(width_m=1000, height_m=1000))
    problems, _ = make_problems(city, {"pothole": ProblemKind(category="road-damage", site="roads")})
    with pytest.raises(KeyError):
        problems.add("meteor", link=0)
    with pytest.raises(ValueError):
        problems.add("pothole")
    with pytest.raises(ValueError):
        problems.add("pothole", link=0, severity=4)
    assert len(problems.ctx.ledger) == 0 and not problems.active()

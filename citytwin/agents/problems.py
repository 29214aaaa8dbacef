"""Urban problems as ground truth: potholes, garbage, flooding, dark street lights, fallen trees,
encroachment, dead traffic signals, noise. Each arises at a site of its kind, hurts traffic while it
lasts (a capacity restriction on the engine), and stays until a crew fixes it.

The problems of the roads, homes and signals are drawn for the whole run when it starts (Poisson per
site and day, start times uniform over the run); those of floods come from the hazards as each
low junction floods. Problems get their ids ("pb0", "pb1", ...) in the order they start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from citytwin.twin.city.synthetic import georeference
from citytwin.twin.scenario.schema import FieldReportingSpec, ProblemKind
from citytwin.twin.traffic.engine import Restriction

from .context import AgentContext

if TYPE_CHECKING:  # the population module is another part of the agents; only its columns are used here
    from .population import Population

SEVERITY_FACTOR = (1.0, 2.0, 4.0)  # how much more readily serious and severe problems are noticed


@dataclass
class Problem:
    id: str  # "pb<k>"
    kind: str  # key in FieldReportingSpec.problems
    category: str  # IOC service code
    severity: int  # 1 minor, 2 serious, 3 severe
    link: int  # link index; -1 for a problem at a junction (signals, floods, homes)
    node: int  # the junction it is at (for a link: the link's upstream node)
    lon: float
    lat: float
    start_t: float
    fixed_t: float | None = None
    x: float = 0.0  # metres in the city's plane: where residents live near it
    y: float = 0.0

    @property
    def active(self) -> bool:
        return self.fixed_t is None


@dataclass(frozen=True)
class _Planned:
    """A problem drawn up front, waiting for its start time."""

    start_t: float
    kind: str
    severity: int
    link: int
    node: int
    along: float  # where on the link (0 upstream .. 1 downstream)


class Problems:
    def __init__(self, ctx: AgentContext, spec: FieldReportingSpec, population: "Population",
                 rng: np.random.Generator):
        self.ctx, self.spec, self.population, self.rng = ctx, spec, population, rng
        self._all: dict[str, Problem] = {}
        self._active: dict[str, Problem] = {}  # in start order
        self._restrictions: dict[str, list[str]] = {}  # problem id -> engine restriction keys
        self._flooded: dict[int, set[str]] = {}  # node -> its unfixed flood problems
        self._lon, self._lat = _node_lonlat(ctx.city)
        # Told of each problem as it starts (the citizens, who may notice it within the hour).
        self.on_start: list[Callable[[Problem], None]] = []

    # -- the contract ----------------------------------------------------------------------------------
    def start(self) -> None:
        plan = self._draw_plan()
        if plan:
            self.ctx.env.process(self._play(plan))

    def on_flood(self, node: int, t: float) -> None:
        """A junction has flooded: one problem of each flood kind there, unless one is still unfixed."""
        node = int(node)
        if self._flooded.get(node):
            return  # the same water again: the problem already reported (or not) is still there
        for name, kind in self.spec.problems.items():
            if kind.site == "floods":
                problem = self._begin(_Planned(float(t), name, self._severity(kind), -1, node, 0.0))
                self._flooded.setdefault(node, set()).add(problem.id)

    def add(self, kind: str, *, link: int = -1, node: int = -1, severity: int = 1, along: float = 0.5) -> Problem:
        """A problem placed by hand, starting now: on `link` (its upstream node), or at junction `node`.
        For scripted what-ifs and tests; draws nothing from the generator."""
        if kind not in self.spec.problems:
            raise KeyError(f"unknown problem kind {kind!r}; expected one of {', '.join(self.spec.problems)}")
        if link < 0 and node < 0:
            raise ValueError("give a link or a node")
        if not 1 <= severity <= 3:
            raise ValueError(f"severity is 1, 2 or 3; got {severity}")
        at = int(self.ctx.city.links.src[link]) if link >= 0 else int(node)
        return self._begin(_Planned(float(self.ctx.env.now), kind, int(severity), int(link), at, float(along)))

    def get(self, pid: str) -> Problem:
        return self._all[pid]

    def active(self) -> list[Problem]:
        return list(self._active.values())

    def fix(self, pid: str, t: float, crew: str, request_id: int) -> bool:
        problem = self._all[pid]
        if not problem.active:
            return False
        problem.fixed_t = float(t)
        del self._active[pid]
        self._flooded.get(problem.node, set()).discard(pid)
        keys = self._restrictions.pop(pid, [])
        if keys:
            self.ctx.engine.advance_to(self.ctx.env.now)  # the restriction ends now, not at the engine's last chunk
            for key in keys:
                self.ctx.engine.lift(key)
        self.ctx.ledger.append("problem.fixed", float(t), pid, crew=crew, request_id=int(request_id))
        return True

    @property
    def started(self) -> int:
        """How many problems have started so far."""
        return len(self._all)

    # -- drawing ---------------------------------------------------------------------------------------
    def _draw_plan(self) -> list[_Planned]:
        """Every kind's problems over the run, in a fixed order of draws (the kinds' order)."""
        days = self.ctx.duration_s / 86400.0
        plan: list[_Planned] = []
        for name, kind in self.spec.problems.items():
            if kind.site == "floods":
                continue  # they come from the hazards
            sites, weights, per_day = self._sites(kind)
            if not len(sites) or per_day <= 0.0:
                continue
            n = int(self.rng.poisson(kind.rate * per_day * days))
            if n == 0:
                continue
            chosen = sites[self.rng.choice(len(sites), size=n, p=weights / weights.sum())]
            starts = self.rng.random(n) * self.ctx.duration_s
            severity = self.rng.choice(3, size=n, p=kind.severity) + 1
            along = self.rng.random(n) if kind.site == "roads" else np.zeros(n)
            links = self.ctx.city.links
            for s, t, sev, a in zip(chosen, starts, severity, along):
                link, node = (int(s), int(links.src[s])) if kind.site == "roads" else (-1, int(s))
                plan.append(_Planned(float(t), name, int(sev), link, node, float(a)))
        plan.sort(key=lambda p: p.start_t)  # stable: equal times keep the kinds' order
        return plan

    def _sites(self, kind: ProblemKind) -> tuple[np.ndarray, np.ndarray, float]:
        """Candidate sites (link or node indices), their weights, and the rate's exposure unit count
        (road-km, thousands of residents, signalised junctions)."""
        city = self.ctx.city
        if kind.site == "roads":
            # Connectors are modelling artefacts (zone links), not streets anyone could report.
            real = city.links.road_class != "connector"
            if not real.any():
                real = np.ones(len(city.links), bool)
            sites = np.flatnonzero(real)
            weights = city.links.length_m[sites].astype(float)
            return sites, weights, float(weights.sum() / 1000.0)
        if kind.site == "homes":
            homes = np.bincount(self.population.home, minlength=len(city.nodes)).astype(float)
            sites = np.flatnonzero(homes)
            return sites, homes[sites], len(self.population) / 1000.0
        # signals
        sites = np.flatnonzero(city.nodes.signalised)
        return sites, np.ones(len(sites)), float(len(sites))

    def _severity(self, kind: ProblemKind) -> int:
        return int(self.rng.choice(3, p=kind.severity)) + 1

    # -- playing ---------------------------------------------------------------------------------------
    def _play(self, plan: list[_Planned]):
        env = self.ctx.env
        for planned in plan:
            if planned.start_t > env.now:
                yield env.timeout(planned.start_t - env.now)
            self._begin(planned)

    def _begin(self, planned: _Planned) -> Problem:
        city = self.ctx.city
        kind = self.spec.problems[planned.kind]
        x, y, lon, lat = self._position(planned)
        problem = Problem(id=f"pb{len(self._all)}", kind=planned.kind, category=kind.category,
                          severity=planned.severity, link=planned.link, node=planned.node, lon=lon, lat=lat,
                          start_t=planned.start_t, x=x, y=y)
        self._all[problem.id] = problem
        self._active[problem.id] = problem
        self.ctx.ledger.append("problem.start", problem.start_t, problem.id, cause=problem.kind,
                               category=problem.category, severity=problem.severity,
                               link=city.links.ids[problem.link] if problem.link >= 0 else None,
                               node=city.nodes.ids[problem.node], lon=lon, lat=lat)
        if kind.capacity_factor < 1.0:
            self._restrict(problem, kind.capacity_factor)
        for listener in self.on_start:
            listener(problem)
        return problem

    def _restrict(self, problem: Problem, factor: float) -> None:
        """A link problem narrows its link; a junction problem every link into the junction."""
        city, engine = self.ctx.city, self.ctx.engine
        if problem.link >= 0:
            targets = [(f"problem:{problem.id}", problem.link)]
        else:
            into = np.flatnonzero(city.links.dst == problem.node)
            targets = [(f"problem:{problem.id}:{int(k)}", int(k)) for k in into]
        if not targets:
            return
        engine.advance_to(self.ctx.env.now)
        for key, link in targets:
            engine.restrict(key, Restriction(link, capacity_factor=factor))
        self._restrictions[problem.id] = [key for key, _ in targets]

    def _position(self, planned: _Planned) -> tuple[float, float, float, float]:
        nodes, links = self.ctx.city.nodes, self.ctx.city.links
        if planned.link >= 0:
            a, b, f = links.src[planned.link], links.dst[planned.link], planned.along
        else:
            a = b = planned.node
            f = 0.0

        def at(values: np.ndarray) -> float:
            return float(values[a] + f * (values[b] - values[a]))

        return at(nodes.x), at(nodes.y), at(self._lon), at(self._lat)


def _node_lonlat(city) -> tuple[np.ndarray, np.ndarray]:
    """The junctions' WGS84 positions; a city without geography (TNTP) gets its plane placed around the
    synthetic district's anchor (Hải Châu), so reports still carry positions the IOC accepts."""
    nodes = city.nodes
    if np.isfinite(nodes.lon).all() and np.isfinite(nodes.lat).all():
        return nodes.lon, nodes.lat
    return georeference(nodes.x, nodes.y)

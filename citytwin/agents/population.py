"""Residents as array columns: where they live, where they work or study, who they are, how they travel.

A million residents is seven NumPy columns, never a Python object each. Households are drawn first
(sizes around the spec's mean, each headed by an adult or senior so no child lives alone), each gets a
home junction by the city's population weights, and members share it. Work and school places are
drawn by the jobs weights with a distance decay (a gravity model, as the OD demand uses), so most
people work near home and walkers nearer still.

Distance-decay draws cost one row of weights per distinct origin place, not one per resident: the
residents are grouped by origin and each group draws from its row at once. Cities with more zone
nodes than `MAX_UNITS` are coarsened to grid cells for the decay (then a node within the cell by
weight), so the cost stays bounded by MAX_UNITS² per draw, whatever the network's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from citytwin.twin.city.model import City
from citytwin.twin.city.paths import zone_nodes
from citytwin.twin.scenario.schema import AGE_GROUPS, MODES, PopulationSpec

CHILD, STUDENT, ADULT, SENIOR = (AGE_GROUPS.index(g) for g in ("child", "student", "adult", "senior"))
WALK = MODES.index("walk")

# Schools are local (primary and lower-secondary pupils go to the school of their ward): their decay is
# this many times the work decay.
SCHOOL_DECAY_FACTOR = 3.0
# Walkers choose places within walking distance: a decay of 3/km puts the mean trip near 650 m
# (the distance of a 2-D exponential kernel is Gamma(2, 1/decay)), the length of a walk trip in
# Vietnamese household surveys.
WALK_DECAY_PER_KM = 3.0
MAX_UNITS = 2048  # above this many zone nodes, distance decay works on grid cells
_BLOCK_CELLS = 1 << 22  # rows x columns of weights held at once (32 MB)


# --- places: zone nodes grouped for distance-decay draws -----------------------------------------------

@dataclass(frozen=True, eq=False)
class Places:
    """The zone nodes trips start and end at, their weights, and the units distance decay works on
    (the nodes themselves, or grid cells of them in big cities)."""

    nodes: np.ndarray  # zone node indices (Z)
    x: np.ndarray  # m, per zone node
    y: np.ndarray
    weights: dict  # "population" | "jobs" -> weight per zone node (Z)
    unit: np.ndarray  # unit of each zone node (Z)
    unit_x: np.ndarray  # centroid of each unit (K)
    unit_y: np.ndarray
    self_m: float  # distance a unit is from itself: 0 for nodes (excluded), half a cell otherwise
    node_unit: np.ndarray  # unit of every city node, -1 off the zones (n_nodes)
    by_unit: np.ndarray  # zone positions sorted by unit
    unit_start: np.ndarray  # offsets into by_unit (K + 1)
    node_x: np.ndarray  # m, every city node (trip lengths)
    node_y: np.ndarray

    def distance_m(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Straight-line distance between city nodes."""
        return np.hypot(self.node_x[a] - self.node_x[b], self.node_y[a] - self.node_y[b])

    @property
    def exact(self) -> bool:
        return len(self.unit_x) == len(self.nodes)

    def pick(self, key: str, n: int, rng: np.random.Generator) -> np.ndarray:
        """n zone nodes drawn by weight, without regard to distance."""
        cdf = np.cumsum(self.weights[key])
        return self.nodes[_search(cdf, rng.random(n) * cdf[-1])]

    def near(self, origin: np.ndarray, key: str, decay_per_km: float, rng: np.random.Generator) -> np.ndarray:
        """One zone node per origin node: weight x exp(-decay x distance), never the origin's own unit
        when units are nodes (a place elsewhere). An origin with nowhere else to go stays put."""
        origin_unit = self.node_unit[origin]
        if np.any(origin_unit < 0):
            raise ValueError("an origin is not a zone node")
        unit_w = np.bincount(self.unit, weights=self.weights[key], minlength=len(self.unit_x))
        dest_unit = _draw_rows(origin_unit, self.unit_x, self.unit_y, unit_w, decay_per_km / 1000.0,
                               self.self_m, rng)
        return self._node_in(dest_unit, key, rng) if not self.exact else self.nodes[self.by_unit[dest_unit]]

    def _node_in(self, units: np.ndarray, key: str, rng: np.random.Generator) -> np.ndarray:
        w = self.weights[key][self.by_unit]
        cdf = np.cumsum(w)
        lo = np.where(self.unit_start[units] > 0, cdf[self.unit_start[units] - 1], 0.0)
        hi = cdf[self.unit_start[units + 1] - 1]
        pos = _search(cdf, lo + rng.random(len(units)) * (hi - lo))
        # guard against rounding at a cell's edge: stay inside the chosen cell
        pos = np.clip(pos, self.unit_start[units], self.unit_start[units + 1] - 1)
        return self.nodes[self.by_unit[pos]]


def city_places(city: City, *, max_units: int = MAX_UNITS) -> Places:
    nodes = zone_nodes(city)
    x, y = city.nodes.x[nodes], city.nodes.y[nodes]
    weights = {}
    for key in ("population", "jobs"):
        w = np.asarray(city.zone_weights.get(key, np.ones(len(city.nodes))), float)[nodes]
        weights[key] = w if w.sum() > 0 else np.ones(len(nodes))
    if len(nodes) <= max_units:
        unit, self_m = np.arange(len(nodes)), 0.0
    else:
        unit, self_m = _grid_units(x, y, max_units)
    k = int(unit.max()) + 1
    count = np.bincount(unit, minlength=k)
    unit_x = np.bincount(unit, weights=x, minlength=k) / count
    unit_y = np.bincount(unit, weights=y, minlength=k) / count
    node_unit = np.full(len(city.nodes), -1, np.int64)
    node_unit[nodes] = unit
    by_unit = np.argsort(unit, kind="stable")
    unit_start = np.concatenate([[0], np.cumsum(count)])
    return Places(nodes=nodes, x=x, y=y, weights=weights, unit=unit, unit_x=unit_x, unit_y=unit_y,
                  self_m=self_m, node_unit=node_unit, by_unit=by_unit, unit_start=unit_start,
                  node_x=np.asarray(city.nodes.x, float), node_y=np.asarray(city.nodes.y, float))


def _grid_units(x: np.ndarray, y: np.ndarray, max_units: int) -> tuple[np.ndarray, float]:
    """Square cells, the smallest (in steps of 25 %) that leave at most max_units occupied."""
    span = max(np.ptp(x), np.ptp(y), 1.0)
    cell = span / np.sqrt(max_units)
    while True:
        ix = ((x - x.min()) // cell).astype(np.int64)
        iy = ((y - y.min()) // cell).astype(np.int64)
        _, unit = np.unique(ix * (iy.max() + 1) + iy, return_inverse=True)
        if unit.max() + 1 <= max_units:
            return unit.ravel(), cell / 2.0
        cell *= 1.25


def _draw_rows(origin_unit: np.ndarray, ux: np.ndarray, uy: np.ndarray, w: np.ndarray, decay_per_m: float,
               self_m: float, rng: np.random.Generator) -> np.ndarray:
    """For each request, a unit drawn from its origin's row of w x exp(-decay x distance).

    Requests are grouped by origin; blocks of rows are computed at once and each row's CDF is offset
    by its row number, so one searchsorted over the flattened block serves every request in it."""
    k = len(ux)
    out = np.empty(len(origin_unit), np.int64)
    if len(origin_unit) == 0:
        return out
    order = np.argsort(origin_unit, kind="stable")
    rows, first = np.unique(origin_unit[order], return_index=True)
    bounds = np.append(first, len(order))
    u = rng.random(len(order))  # drawn once, in request order of the sorted origins: reproducible
    per_block = max(1, _BLOCK_CELLS // k)
    for b in range(0, len(rows), per_block):
        block = rows[b:b + per_block]
        d = np.hypot(ux[block, None] - ux[None, :], uy[block, None] - uy[None, :])
        local = np.arange(len(block))
        d[local, block] = self_m
        # distances relative to each row's nearest candidate: exp() cannot underflow a whole row
        d -= d.min(axis=1, keepdims=True) if self_m > 0 else _min_off_self(d, local, block)
        weights = w[None, :] * np.exp(-decay_per_m * d)
        if self_m == 0.0:
            weights[local, block] = 0.0  # a place elsewhere: work is not at home
        cdf = np.cumsum(weights, axis=1)
        total = cdf[:, -1].copy()
        empty = total <= 0  # nowhere else to go (a one-node city): stay at the origin
        if empty.any():
            cdf[empty] = np.where(np.arange(k)[None, :] >= block[empty, None], 1.0, 0.0)
            total[empty] = 1.0
        cdf /= total[:, None]
        cdf += local[:, None]
        s, e = bounds[b], bounds[min(b + per_block, len(rows))]
        row_of = np.repeat(local, np.diff(bounds[b:b + len(block) + 1]))
        flat = _search(cdf.ravel(), row_of + u[s:e])
        out[order[s:e]] = np.minimum(flat - row_of * k, k - 1)
    return out


def _min_off_self(d: np.ndarray, local: np.ndarray, block: np.ndarray) -> np.ndarray:
    saved = d[local, block].copy()
    d[local, block] = np.inf
    low = d.min(axis=1, keepdims=True)
    d[local, block] = saved
    return np.where(np.isfinite(low), low, 0.0)


def _search(cdf: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, values, side="right"), len(cdf) - 1)


# --- the population ------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Population:
    home: np.ndarray  # int32 node index (one of paths.zone_nodes(city))
    work: np.ndarray  # int32 node index of the work or school place, -1 if none
    age_group: np.ndarray  # int8 index into schema.AGE_GROUPS
    household: np.ndarray  # int32 household id (members share home)
    smartphone: np.ndarray  # bool
    propensity: np.ndarray  # float32 in [0,1]: chance of reporting a problem they noticed
    mode: np.ndarray  # int8 index into schema.MODES (usual mode)
    n_nodes: int = 0  # nodes in the city (sizes at_home_nodes' offsets); 0: one past the highest home
    places: Places | None = field(default=None, repr=False)  # where errands go; set by synthesize_population
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.home)

    def at_home_nodes(self) -> tuple[np.ndarray, np.ndarray]:
        """(order, offsets): resident indices sorted by home node and offsets of length n_nodes+1, so residents
        living at node k are order[offsets[k]:offsets[k+1]]. Cached."""
        if "at_home" not in self._cache:
            n = self.n_nodes or (int(self.home.max()) + 1 if len(self.home) else 0)
            order = np.argsort(self.home, kind="stable").astype(np.int64)
            offsets = np.concatenate([[0], np.cumsum(np.bincount(self.home, minlength=n))]).astype(np.int64)
            self._cache["at_home"] = (order, offsets)
        return self._cache["at_home"]


def synthesize_population(city: City, spec: PopulationSpec, rng: np.random.Generator, *,
                          propensity_mean: float = 0.0, propensity_concentration: float = 1.0) -> Population:
    """The spec's residents on the city. Children under 6 never report (propensity 0): their parents do."""
    places = city_places(city)
    n = spec.residents
    household, heads = _households(n, spec.household_size, rng)
    age = _ages(n, heads, spec, rng)
    home = places.pick("population", int(household[-1]) + 1, rng)[household]
    mode = _categorical(rng, n, [spec.mode_share[m] for m in MODES])
    work = _places_of_work(places, home, age, mode, spec, rng)
    phone_share = np.array([spec.smartphone[g] for g in AGE_GROUPS])
    smartphone = rng.random(n) < phone_share[age]
    propensity = _propensity(n, propensity_mean, propensity_concentration, rng)
    propensity[age == CHILD] = 0.0
    return Population(home=home.astype(np.int32), work=work.astype(np.int32), age_group=age.astype(np.int8),
                      household=household.astype(np.int32), smartphone=smartphone, propensity=propensity,
                      mode=mode.astype(np.int8), n_nodes=len(city.nodes), places=places)


def _households(n: int, mean_size: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Household id per resident and whether they head it. Sizes are 1 + Poisson(mean - 1): mean right,
    mostly 2-5 people as in the census, the occasional large family; the last one is cut to fit n."""
    draw = int(n / mean_size * 1.1) + 16
    sizes = 1 + rng.poisson(mean_size - 1.0, draw)
    while sizes.sum() < n:  # improbable: only when the first draw fell short
        sizes = np.concatenate([sizes, 1 + rng.poisson(mean_size - 1.0, draw)])
    ends = np.cumsum(sizes)
    last = int(np.searchsorted(ends, n))  # the household that holds resident n-1
    sizes = sizes[:last + 1]
    sizes[-1] -= ends[last] - n
    household = np.repeat(np.arange(len(sizes)), sizes)
    heads = np.zeros(n, bool)
    heads[np.concatenate([[0], ends[:last]])] = True
    return household, heads


def _ages(n: int, heads: np.ndarray, spec: PopulationSpec, rng: np.random.Generator) -> np.ndarray:
    """Heads are adults or seniors; the other members' shares are set so that the whole population
    has the spec's shares (as far as there are enough adults and seniors to head every household)."""
    share = np.array([spec.age_groups[g] for g in AGE_GROUPS])
    grown = share[ADULT] + share[SENIOR]
    h = int(heads.sum())
    head_share = np.zeros(len(AGE_GROUPS))
    if grown > 0:
        head_share[[ADULT, SENIOR]] = share[[ADULT, SENIOR]] / grown
    else:
        head_share = share.copy()  # a scenario of only children: nobody can head, keep the shares
    rest = np.clip(n * share - h * head_share, 0.0, None)
    rest = rest / rest.sum() if rest.sum() > 0 else share
    return np.where(heads, _categorical(rng, n, head_share), _categorical(rng, n, rest))


def _places_of_work(places: Places, home: np.ndarray, age: np.ndarray, mode: np.ndarray, spec: PopulationSpec,
                    rng: np.random.Generator) -> np.ndarray:
    work = np.full(len(home), -1, np.int64)
    employed = (age == ADULT) & (rng.random(len(home)) < spec.employed)
    decay = spec.work_distance_decay_per_km
    for goes, base in ((employed, decay), (age == STUDENT, decay * SCHOOL_DECAY_FACTOR)):
        for walks in (False, True):
            who = np.flatnonzero(goes & ((mode == WALK) == walks))
            if len(who):
                work[who] = places.near(home[who], "jobs", max(base, WALK_DECAY_PER_KM) if walks else base, rng)
    return work


def _propensity(n: int, mean: float, concentration: float, rng: np.random.Generator) -> np.ndarray:
    if mean <= 0.0:
        return np.zeros(n, np.float32)
    if mean >= 1.0:
        return np.ones(n, np.float32)
    return rng.beta(mean * concentration, (1.0 - mean) * concentration, n).astype(np.float32)


def _categorical(rng: np.random.Generator, n: int, shares) -> np.ndarray:
    cdf = np.cumsum(np.asarray(shares, float))
    return np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(n), side="right"), len(cdf) - 1)

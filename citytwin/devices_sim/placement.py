"""Where devices go: the scenario's explicit sites, or a budget that a strategy spends on the city.

A detector sits on a link; every other placed device (camera, air, noise, water level, rain gauge) at a
junction. Buses run routes instead (`devices_sim.buses`), but their routes' junctions are checked here.

Strategies for a budget:
- `random`: candidate sites uniformly, without replacement;
- `major_roads`: the highest road class first (arterial, bridge, collector, ...), then the highest
  capacity; a junction ranks by its best incident link; ties in random order;
- `max_coverage`: greedy maximum weighted coverage (the classic (1 - 1/e) approximation): each next site
  adds the most uncovered weight. Cameras and detectors cover traffic (`link_weights`), air, noise and
  rain gauges the population (or every junction alike), water-level gauges the flood-prone junctions;
- `hotspots`: cameras and detectors where incidents happen (a year of them drawn from the hazard model),
  air and noise where most traffic passes nearby, water-level gauges at the lowest junctions, rain
  gauges over the flood-prone junctions.
When every weighted element is covered and budget is left, coverage starts again from nothing (a second
layer of redundancy). A budget larger than the candidate sites places a device on every site. Placement
is deterministic for a seed; only `random` and the tie-breaks of `major_roads` draw from it.

Distances are in the city's local plane (metres); range queries use k-d trees of junction positions
and link midpoints.
"""

from __future__ import annotations

import difflib
import itertools
from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from citytwin.twin.city.model import City
from citytwin.twin.city.synthetic import georeference
from citytwin.twin.errors import UserInputError, problem
from citytwin.twin.hazards import draw_incidents, flood_prone
from citytwin.twin.scenario.schema import LINK_SITED, BusFleet, DevicesSpec, HazardsSpec, RainSpec, site_problem

# Road classes from the most to the least important, for `major_roads`.
ROAD_RANK = ("arterial", "bridge", "collector", "local", "alley", "connector")
# Above this many (site, element) pairs the greedy scores a random sample of the candidate sites: with
# coverage radii of kilometres on a city of tens of thousands of junctions, neighbouring sites are
# interchangeable and the full incidence matrix would not fit in memory.
MAX_INCIDENCE = 4_000_000


@dataclass(frozen=True)
class Sites:
    """Where each device of a fleet is and what it sees (one entry per device, in device order)."""

    nodes: np.ndarray  # int node index per device, -1 for link-sited devices
    links: np.ndarray  # int link index: a detector's link, a camera's busiest link in view; -1 none
    lon: np.ndarray  # WGS84 position of each device
    lat: np.ndarray
    # Per device: link indices in view (camera: links whose midpoint is within range_m; detector: its
    # link) or junction indices covered (air, noise, water level, rain gauge: within coverage_radius_m).
    covers: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.nodes)


def link_weights(city: City) -> np.ndarray:
    """Traffic weight of each link, as max_coverage counts it: capacity (PCU/h) times length (m)."""
    return np.asarray(city.links.capacity_pcu_h, float) * np.asarray(city.links.length_m, float)


def incident_history(city: City, hazards_spec: HazardsSpec, rng: np.random.Generator,
                     days: int = 365) -> np.ndarray:
    """Incidents per link over `days` drawn from the hazard model (what a city's incident log would show
    after a year), for the hotspots strategy. Pass a generator of its own so it disturbs no other draw."""
    incidents = draw_incidents(city, hazards_spec, start_s=0.0, duration_s=days * 86400.0,
                               hourly_weights=np.ones(24), rng=rng)
    links = np.fromiter((i.link for i in incidents), np.int64, count=len(incidents))
    return np.bincount(links, minlength=len(city.links)).astype(float)


# --- placing a fleet -----------------------------------------------------------------------------------

def place(fleet, city: City, rng: np.random.Generator, *, incident_history: np.ndarray | None = None,
          flood_prone: np.ndarray | None = None) -> Sites:
    """The sites of a (non-bus) fleet: its explicit nodes or links, or its budget spent by its strategy.

    `incident_history` (per-link incident counts) drives hotspots for cameras and detectors; without it a
    year is drawn from the default hazard model with a generator seeded from `rng`. `flood_prone` (bool
    per junction) drives water-level and rain-gauge placement; without it the default low-node share."""
    if isinstance(fleet, BusFleet) or fleet.type == "bus":
        raise ValueError("buses are not placed: they run routes (devices_sim.buses)")
    geo = _Geometry(city)
    placement = fleet.placement
    wrong = site_problem(fleet.type, placement)
    if wrong:
        raise ValueError(f"placement.{wrong[0]}: {wrong[1]}")
    if fleet.type in LINK_SITED:
        chosen = (_ids_to_index(placement.links, city.links.ids, "link") if placement.links is not None
                  else _choose_links(fleet, city, geo, rng, incident_history))
        return _link_sites(chosen, city, geo)
    chosen = (_ids_to_index(placement.nodes, city.nodes.ids, "node") if placement.nodes is not None
              else _choose_nodes(fleet, city, geo, rng, incident_history, flood_prone))
    return _node_sites(fleet, chosen, city, geo)


class _Geometry:
    """Positions and k-d trees of a city's junctions and link midpoints, and junctions' WGS84."""

    def __init__(self, city: City):
        nodes, links = city.nodes, city.links
        self.node_xy = np.column_stack([nodes.x, nodes.y]).astype(float)
        self.mid_xy = (self.node_xy[links.src] + self.node_xy[links.dst]) / 2.0
        self.half_length = np.hypot(*(self.node_xy[links.dst] - self.node_xy[links.src]).T) / 2.0
        self.node_tree = cKDTree(self.node_xy)
        self.mid_tree = cKDTree(self.mid_xy) if len(links) else None
        self.lon, self.lat = _node_lonlat(city)

    def links_in_range(self, nodes: np.ndarray, radius: float) -> list[np.ndarray]:
        if self.mid_tree is None:
            return [np.empty(0, np.int64) for _ in nodes]
        return _sorted_lists(self.mid_tree.query_ball_point(self.node_xy[nodes], radius))

    def nodes_in_range(self, nodes: np.ndarray, radius: float) -> list[np.ndarray]:
        return _sorted_lists(self.node_tree.query_ball_point(self.node_xy[nodes], radius))


def _node_lonlat(city: City) -> tuple[np.ndarray, np.ndarray]:
    """Junctions' WGS84 positions: the city's own where it has them; a plane without geography (TNTP)
    placed around the synthetic district's anchor, so devices still report positions an IOC accepts."""
    lon, lat = np.asarray(city.nodes.lon, float), np.asarray(city.nodes.lat, float)
    known = np.isfinite(lon) & np.isfinite(lat)
    if known.all():
        return lon, lat
    geo_lon, geo_lat = georeference(np.asarray(city.nodes.x, float), np.asarray(city.nodes.y, float))
    return np.where(known, lon, geo_lon), np.where(known, lat, geo_lat)


def _sorted_lists(lists) -> list[np.ndarray]:
    return [np.sort(np.asarray(found, np.int64)) for found in lists]


def _ids_to_index(ids: list[str], known: np.ndarray, what: str) -> np.ndarray:
    index = {name: k for k, name in enumerate(known)}
    missing = [name for name in ids if name not in index]
    if missing:
        raise ValueError(f"unknown {what}(s) {', '.join(map(repr, missing))} (check_sites reports them with paths)")
    return np.array([index[name] for name in ids], np.int64)


def _link_sites(links: np.ndarray, city: City, geo: _Geometry) -> Sites:
    links = np.asarray(links, np.int64)
    src, dst = city.links.src[links], city.links.dst[links]
    return Sites(nodes=np.full(len(links), -1, np.int64), links=links,
                 lon=(geo.lon[src] + geo.lon[dst]) / 2.0, lat=(geo.lat[src] + geo.lat[dst]) / 2.0,
                 covers=[np.array([k], np.int64) for k in links])


def _node_sites(fleet, nodes: np.ndarray, city: City, geo: _Geometry) -> Sites:
    nodes = np.asarray(nodes, np.int64)
    if fleet.type == "camera":
        covers = geo.links_in_range(nodes, fleet.range_m)
        links = np.array([_busiest(c, city) for c in covers], np.int64)
    else:
        covers = geo.nodes_in_range(nodes, fleet.coverage_radius_m)
        links = np.full(len(nodes), -1, np.int64)
    return Sites(nodes=nodes, links=links, lon=geo.lon[nodes].copy(), lat=geo.lat[nodes].copy(), covers=covers)


def _busiest(links: np.ndarray, city: City) -> int:
    """The link in view a camera counts: the highest capacity, then the longest (-1 when none in view)."""
    if not len(links):
        return -1
    order = np.lexsort((city.links.length_m[links], city.links.capacity_pcu_h[links]))
    return int(links[order[-1]])


# --- strategies -----------------------------------------------------------------------------------------

def _choose_links(fleet, city: City, geo: _Geometry, rng: np.random.Generator,
                  history: np.ndarray | None) -> np.ndarray:
    budget, strategy = fleet.placement.budget, fleet.placement.strategy
    candidates = np.arange(len(city.links))
    if strategy == "random":
        return _random(candidates, budget, rng)
    if strategy == "major_roads":
        return _major_roads(*_link_rank(city), candidates, budget, rng)
    identity = _incidence([np.array([k]) for k in candidates], len(city.links))
    if strategy == "max_coverage":
        layers = [link_weights(city)]
    else:  # hotspots: the links with most incidents, then the busiest
        layers = [_history(city, history, rng), link_weights(city)]
    return candidates[_greedy(identity, layers, budget)]


def _choose_nodes(fleet, city: City, geo: _Geometry, rng: np.random.Generator, history: np.ndarray | None,
                  prone: np.ndarray | None) -> np.ndarray:
    budget, strategy, kind = fleet.placement.budget, fleet.placement.strategy, fleet.type
    candidates = _junctions(city)
    if strategy == "random":
        return _random(candidates, budget, rng)
    if strategy == "major_roads":
        return _major_roads(*_node_rank(city), candidates, budget, rng)
    if strategy == "hotspots" and kind in ("air", "noise"):
        return _by_score(candidates, _traffic_nearby(city, geo, fleet.traffic_radius_m)[candidates], budget)
    if strategy == "hotspots" and kind == "water_level":
        return _by_score(candidates, -np.asarray(city.nodes.elevation_m, float)[candidates], budget)
    # Greedy coverage: what each candidate covers and the weights of what there is to cover, by priority.
    if kind == "camera":
        radius, elements = fleet.range_m, len(city.links)
        layers = ([_history(city, history, rng), link_weights(city)] if strategy == "hotspots"
                  else [link_weights(city)])
    else:
        radius, elements = fleet.coverage_radius_m, len(city.nodes)
        if kind == "water_level" or strategy == "hotspots":  # (rain gauges' hotspots: the flood-prone)
            floods = prone if prone is not None else flood_prone(city, RainSpec().low_node_share)
            layers = [np.asarray(floods, float), _population(city)]
        else:
            layers = [_population(city)]
    candidates = _thin(candidates, geo, radius, kind == "camera", budget, rng)
    covers = geo.links_in_range(candidates, radius) if kind == "camera" else geo.nodes_in_range(candidates, radius)
    return candidates[_greedy(_incidence(covers, elements), layers, budget)]


def _junctions(city: City) -> np.ndarray:
    """Candidate junctions: every node some link touches."""
    touched = np.zeros(len(city.nodes), bool)
    touched[city.links.src] = True
    touched[city.links.dst] = True
    return np.flatnonzero(touched)


def _random(candidates: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(candidates, size=min(budget, len(candidates)), replace=False).astype(np.int64)


def _link_rank(city: City) -> tuple[np.ndarray, np.ndarray]:
    """(class rank, capacity) per link: lower rank and higher capacity first."""
    rank = {name: k for k, name in enumerate(ROAD_RANK)}
    classes = np.array([rank.get(str(c), len(ROAD_RANK)) for c in city.links.road_class], np.int64)
    return classes, np.asarray(city.links.capacity_pcu_h, float)


def _node_rank(city: City) -> tuple[np.ndarray, np.ndarray]:
    """(class rank, capacity) per junction of its best incident link."""
    classes, capacity = _link_rank(city)
    n = len(city.nodes)
    best_class = np.full(n, len(ROAD_RANK) + 1, np.int64)
    best_capacity = np.zeros(n)
    ends = np.concatenate([city.links.src, city.links.dst])
    link_class, link_capacity = np.tile(classes, 2), np.tile(capacity, 2)
    np.minimum.at(best_class, ends, link_class)
    on_best = link_class == best_class[ends]  # capacity counts only among the junction's best-class links
    np.maximum.at(best_capacity, ends[on_best], link_capacity[on_best])
    return best_class, best_capacity


def _major_roads(classes: np.ndarray, capacity: np.ndarray, candidates: np.ndarray, budget: int,
                 rng: np.random.Generator) -> np.ndarray:
    tie = rng.permutation(len(candidates))  # equal roads in no particular order, not index order
    order = np.lexsort((tie, -capacity[candidates], classes[candidates]))
    return candidates[order[:budget]]


def _by_score(candidates: np.ndarray, score: np.ndarray, budget: int) -> np.ndarray:
    order = np.argsort(-score, kind="stable")
    return candidates[order[:budget]]


def _history(city: City, history: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    if history is None:
        history = incident_history(city, HazardsSpec(), np.random.default_rng(rng.integers(2**63)))
    history = np.asarray(history, float)
    if history.shape != (len(city.links),):
        raise ValueError(f"incident_history: expected one count per link ({len(city.links)}); got {history.shape}")
    return history


def _population(city: City) -> np.ndarray:
    people = city.zone_weights.get("population")
    return np.ones(len(city.nodes)) if people is None else np.clip(np.asarray(people, float), 0.0, None)


def _traffic_nearby(city: City, geo: _Geometry, radius: float) -> np.ndarray:
    """Per junction: the traffic weight of links passing within `radius` (distance to the segment)."""
    n = len(city.nodes)
    if geo.mid_tree is None:
        return np.zeros(n)
    # A link passes within r of a junction only if the junction is within r + half its length of the
    # link's midpoint: the tree narrows the pairs, the exact segment distance decides.
    near = geo.node_tree.query_ball_point(geo.mid_xy, radius + geo.half_length)
    lengths = np.fromiter(map(len, near), np.int64, count=len(near))
    nodes = np.fromiter(itertools.chain.from_iterable(near), np.int64, count=int(lengths.sum()))
    links = np.repeat(np.arange(len(near)), lengths)
    a, b = geo.node_xy[city.links.src[links]], geo.node_xy[city.links.dst[links]]
    p = geo.node_xy[nodes]
    ab = b - a
    denom = np.maximum((ab * ab).sum(axis=1), 1e-12)
    s = np.clip(((p - a) * ab).sum(axis=1) / denom, 0.0, 1.0)
    dist = np.hypot(*(a + s[:, None] * ab - p).T)
    keep = dist <= radius
    return np.bincount(nodes[keep], weights=link_weights(city)[links[keep]], minlength=n)


def _thin(candidates: np.ndarray, geo: _Geometry, radius: float, over_links: bool, budget: int,
          rng: np.random.Generator) -> np.ndarray:
    """The candidates the greedy scores: all of them, or a random sample when covers are so large that
    the incidence matrix would exceed MAX_INCIDENCE pairs."""
    tree = geo.mid_tree if over_links else geo.node_tree
    if tree is None or not len(candidates):
        return candidates
    total = int(tree.query_ball_point(geo.node_xy[candidates], radius, return_length=True).sum())
    if total <= MAX_INCIDENCE:
        return candidates
    keep = max(budget, int(len(candidates) * MAX_INCIDENCE / total))
    return np.sort(rng.choice(candidates, size=min(keep, len(candidates)), replace=False))


def _incidence(covers: list[np.ndarray], n_elements: int) -> csr_matrix:
    """Sites x elements, 1 where a site covers an element."""
    lengths = np.fromiter(map(len, covers), np.int64, count=len(covers))
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    indices = np.concatenate(covers).astype(np.int64) if len(covers) else np.empty(0, np.int64)
    return csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(covers), n_elements))


def _greedy(incidence: csr_matrix, layers: list[np.ndarray], budget: int) -> np.ndarray:
    """Greedy maximum weighted coverage: up to `budget` site rows, each adding the most uncovered weight.

    `layers` are element weights by priority: the next layer breaks ties once the previous has nothing
    left to gain (e.g. incidents, then traffic). When no layer gains, coverage starts over (redundancy).
    Sites that cover no weight at all come last, in index order. Gains are kept up to date by
    subtracting each newly covered element's weight from the sites that also cover it (a column of the
    incidence matrix), so a pick costs what its covers touch, not the whole matrix."""
    n_sites = incidence.shape[0]
    budget = min(int(budget), n_sites)
    indptr, indices = incidence.indptr, incidence.indices
    columns = incidence.tocsc()
    available = np.ones(n_sites, bool)
    chosen: list[int] = []
    while len(chosen) < budget:
        before = len(chosen)
        covered = np.zeros(incidence.shape[1], bool)
        for layer in layers:
            w = np.where(covered, 0.0, np.asarray(layer, float))
            gains = np.where(available, incidence @ w, -np.inf)
            tol = 1e-9 * w.max(initial=0.0)
            while len(chosen) < budget:
                site = int(np.argmax(gains))
                if not gains[site] > tol:
                    break
                chosen.append(site)
                available[site] = False
                gains[site] = -np.inf
                mine = indices[indptr[site]:indptr[site + 1]]
                covered[mine] = True
                fresh = mine[w[mine] > 0]
                if len(fresh):
                    sites, elements = _column_entries(columns, fresh)
                    gains -= np.bincount(sites, weights=w[elements], minlength=n_sites)
                    w[fresh] = 0.0
        if len(chosen) == before:
            break
    rest = np.flatnonzero(available)[:budget - len(chosen)]
    return np.concatenate([np.array(chosen, np.int64), rest]).astype(np.int64)


def _column_entries(columns, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of every stored entry in the given columns of a CSC matrix."""
    starts, ends = columns.indptr[cols], columns.indptr[cols + 1]
    lengths = ends - starts
    offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    return columns.indices[offsets], np.repeat(cols, lengths)


# --- checking sites against the city ---------------------------------------------------------------------

def check_sites(devices: DevicesSpec, city: City, source: str) -> None:
    """Every explicit site and bus-route junction names something in the city, of the right kind; and
    consecutive route junctions are joined by roads both ways (a line runs out and back). Raises
    UserInputError with one `source: devices.fleets[N]...: message` line per problem."""
    problems: list[str] = []
    node_index = {name: k for k, name in enumerate(city.nodes.ids)}
    link_index = {name: k for k, name in enumerate(city.links.ids)}
    components = None
    for n, fleet in enumerate(devices.fleets):
        base = f"devices.fleets[{n}]"
        if isinstance(fleet, BusFleet):
            if isinstance(fleet.routes, list):
                components = components if components is not None else _strong_components(city)
                problems += _route_problems(fleet, base, node_index, components, city, source)
            continue
        wrong = site_problem(fleet.type, fleet.placement)
        if wrong:
            problems.append(problem(source, f"{base}.placement.{wrong[0]}", wrong[1]))
            continue
        for key, index, ids, what in (("nodes", node_index, city.nodes.ids, "node"),
                                      ("links", link_index, city.links.ids, "link")):
            for k, name in enumerate(getattr(fleet.placement, key) or ()):
                if name not in index:
                    problems.append(problem(source, f"{base}.placement.{key}[{k}]", _unknown(what, name, ids)))
    if problems:
        raise UserInputError(problems)


def _route_problems(fleet: BusFleet, base: str, node_index: dict, components: np.ndarray, city: City,
                    source: str) -> list[str]:
    problems = []
    for i, route in enumerate(fleet.routes):
        where = f"{base}.routes[{i}].via"
        previous = None
        for k, name in enumerate(route.via):
            if name not in node_index:
                problems.append(problem(source, f"{where}[{k}]", _unknown("node", name, city.nodes.ids)))
                previous = None
                continue
            here = node_index[name]
            if previous is not None and components[previous[1]] != components[here]:
                problems.append(problem(source, f"{where}[{k}]", f"expected a junction reachable by road from "
                                        f"{previous[0]!r} and back (the line runs out and back); got {name!r}"))
            previous = (name, here)
    return problems


def _strong_components(city: City) -> np.ndarray:
    n = len(city.nodes)
    graph = csr_matrix((np.ones(len(city.links)), (city.links.src, city.links.dst)), shape=(n, n))
    return connected_components(graph, directed=True, connection="strong")[1]


def _unknown(what: str, name: str, ids: np.ndarray) -> str:
    """`unknown node 'x'`, with the closest id when one is close, else an example of the city's ids."""
    close = difflib.get_close_matches(str(name), [str(i) for i in ids], n=1, cutoff=0.8) if len(ids) <= 20_000 else []
    if close:
        return f"unknown {what} {name!r}; did you mean {close[0]!r}?"
    example = f" (the city's {what} ids look like {str(ids[0])!r})" if len(ids) else ""
    return f"unknown {what} {name!r}{example}"

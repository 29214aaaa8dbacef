"""Who comes near a problem: the residents whose trips pass it, and those who live by it.

Trips follow free-flow shortest paths between zone nodes. A trip o→d passes a problem on link a→b
when D[o,a] + t(a→b) + D[b,d] = D[o,d], and a problem at junction n when D[o,n] + D[n,d] = D[o,d].
Each problem keeps, once, the flat indices o·Z+d of the zone pairs that pass it; each day's trips
become per-pair totals, so a problem's exposure on a day is one gather over its pairs.

What the citizens need is not every pass but the passes that lead to a report: each passer reports
with their own propensity, so (Poisson thinning) reports arrive at the rate of the passes weighted
by the passers' propensities. The per-pair totals are therefore propensity sums, and picking a
reporter picks a pair by its propensity sum and then a trip of it by its traveller's propensity.
The same holds for the residents living within `home_radius_m`.

Link times carry a tiny deterministic perturbation (parts per million) so that shortest paths are
unique: on a grid many routes tie, and the equality test would otherwise count one trip on all of
them at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import cKDTree

from citytwin.twin.city.model import City
from citytwin.twin.city.paths import network_graph, zone_nodes

if TYPE_CHECKING:
    from .activities import PersonTrips
    from .population import Population

_TIE_BREAK = 1e-6  # relative perturbation of link times
_TOLERANCE_S = 1e-8  # far below the perturbation's effect on a path, far above rounding
_BLOCK_ROWS = 256  # origin zones per block when testing all pairs: bounds the temporary memory


@dataclass
class Site:
    """What a problem's exposure needs, computed once when it starts."""

    pairs: np.ndarray  # flat zone-pair indices (o*Z + d) of the routes that pass it, sorted
    home_nodes: np.ndarray  # nodes within the home radius that have residents
    home_weight: float  # sum of the propensities of the residents living there
    home_count: int  # residents living there
    # The current day's totals over `pairs`, recomputed when the day changes.
    day: int = -1
    trip_weight: float = 0.0
    passes: float = 0.0
    _cum: np.ndarray | None = field(default=None, repr=False)  # cumulative pair weights, for picking


def _unit_hash(k: np.ndarray) -> np.ndarray:
    """splitmix64 of each integer, as a float in [0, 1): a fixed, well-mixed value per link."""
    with np.errstate(over="ignore"):
        z = k.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


class Exposure:
    def __init__(self, city: City, population: "Population", *, home_radius_m: float):
        self.city, self.population, self.home_radius_m = city, population, float(home_radius_m)
        self.zones = zone_nodes(city)
        self.Z = len(self.zones)
        self.zone_of = self._zone_of(city)
        self._link_time = city.links.free_flow_s * (1.0 + _TIE_BREAK * _unit_hash(np.arange(len(city.links))))
        graph = network_graph(city, self._link_time)
        self._from = np.atleast_2d(dijkstra(graph, indices=self.zones))  # Z x N: zone -> node
        self._to = np.atleast_2d(dijkstra(graph.T.tocsr(), indices=self.zones))  # Z x N: node -> zone
        self._zz = self._from[:, self.zones]  # Z x Z
        self._pair_dtype = np.int32 if self.Z * self.Z < 2**31 else np.int64
        self._link_at = {(int(s), int(d)): k for k, (s, d) in
                         enumerate(zip(city.links.src, city.links.dst))}
        # Residents by home node, with propensity sums to pick home noticers by.
        self._tree = cKDTree(np.column_stack([city.nodes.x, city.nodes.y]))
        prop = np.asarray(population.propensity, dtype=np.float64)
        self._prop = prop
        n = len(city.nodes)
        self._home_order, offsets = population.at_home_nodes()
        # Offsets cover every node even when the population was sized by its highest home node.
        self._home_offsets = np.concatenate([offsets, np.full(max(n + 1 - len(offsets), 0), offsets[-1])])
        self._home_cum = np.cumsum(prop[self._home_order])
        self._node_weight = np.bincount(population.home, weights=prop, minlength=n)
        self._node_count = np.diff(self._home_offsets)
        self._empty_day()

    # -- sites -----------------------------------------------------------------------------------------
    def site(self, link: int, node: int, x: float, y: float) -> Site:
        """A problem on `link` (>= 0), or at junction `node` (link -1), at plane position (x, y)."""
        if link >= 0:
            a, b = int(self.city.links.src[link]), int(self.city.links.dst[link])
            back = self._link_at.get((b, a))
            # A street problem is seen from both carriageways.
            parts = [self._through_link(link)] + ([self._through_link(back)] if back is not None else [])
        else:
            parts = [self._through_node(node)]
        pairs = _union(parts)
        near = np.asarray(self._tree.query_ball_point([x, y], self.home_radius_m), dtype=np.int64)
        near = np.sort(near[self._node_count[near] > 0])
        return Site(pairs=pairs, home_nodes=near, home_weight=float(self._node_weight[near].sum()),
                    home_count=int(self._node_count[near].sum()))

    def _through_link(self, link: int) -> np.ndarray:
        """Zone pairs whose path uses link a→b. Only origins whose shortest path to b ends with a→b, and
        destinations whose shortest path from a starts with it, can: the test runs on that block only,
        a few per cent of all pairs for most links."""
        a, b = int(self.city.links.src[link]), int(self.city.links.dst[link])
        t = self._link_time[link]
        with np.errstate(invalid="ignore"):  # inf - inf off the zones' strongly connected part: no pairs
            rows = np.flatnonzero(np.abs(self._from[:, a] + t - self._from[:, b]) <= _TOLERANCE_S)
            cols = np.flatnonzero(np.abs(t + self._to[:, b] - self._to[:, a]) <= _TOLERANCE_S)
        return self._pairs(rows, self._from[rows, a] + t, cols, self._to[cols, b])

    def _through_node(self, node: int) -> np.ndarray:
        """Zone pairs whose path passes junction n: those entering it by one of its links, and those
        starting there."""
        parts = [self._through_link(int(k)) for k in np.flatnonzero(self.city.links.dst == node)]
        z = self.zone_of[node]
        if self.zones[z] == node:  # trips from the junction itself (those to it came in by a link)
            parts.append(z * self.Z + np.flatnonzero(np.isfinite(self._zz[z])))
        return _union(parts).astype(self._pair_dtype) if parts else np.empty(0, self._pair_dtype)

    def _pairs(self, rows: np.ndarray, head: np.ndarray, cols: np.ndarray, tail: np.ndarray) -> np.ndarray:
        """Flat (o, d) indices, o in rows and d in cols, where head[o] + tail[d] is the shortest o→d time."""
        if not len(rows) or not len(cols):
            return np.empty(0, self._pair_dtype)
        out = []
        for start in range(0, len(rows), _BLOCK_ROWS):
            r = rows[start:start + _BLOCK_ROWS]
            slack = head[start:start + _BLOCK_ROWS, None] + tail[None, :]
            slack -= self._zz[np.ix_(r, cols)]
            i, j = np.nonzero(slack <= _TOLERANCE_S)
            out.append(r[i].astype(np.int64) * self.Z + cols[j])
        return np.concatenate(out).astype(self._pair_dtype)

    # -- the day's trips -------------------------------------------------------------------------------
    def _empty_day(self) -> None:
        self.day = 0
        self._pair_weight = np.zeros(self.Z * self.Z)
        self._pair_count = np.zeros(self.Z * self.Z, np.int32)
        self._flat_sorted = np.empty(0, np.int64)
        self._res_sorted = np.empty(0, np.int32)
        self._trip_cum = np.empty(0)
        self._depart = np.empty(0)

    def set_day(self, trips: "PersonTrips") -> None:
        Z = self.Z
        flat = self.zone_of[trips.origin].astype(np.int64) * Z + self.zone_of[trips.dest]
        weight = self._prop[trips.resident]
        self._pair_weight = np.bincount(flat, weights=weight, minlength=Z * Z)
        self._pair_count = np.bincount(flat, minlength=Z * Z).astype(np.int32)
        order = np.argsort(flat, kind="stable")
        self._flat_sorted = flat[order]
        self._res_sorted = np.asarray(trips.resident)[order]
        self._trip_cum = np.cumsum(weight[order])
        depart = np.asarray(trips.depart_t, dtype=np.float64)
        self._depart = depart if np.all(depart[1:] >= depart[:-1]) else np.sort(depart)
        self.day += 1

    def departure_share(self, t0: np.ndarray | float, t1: float) -> np.ndarray:
        """Share of the day's trips that depart in [t0, t1)."""
        n = len(self._depart)
        if n == 0:
            return np.zeros(np.shape(t0))
        inside = np.searchsorted(self._depart, t1) - np.searchsorted(self._depart, t0)
        return inside / n

    def refresh(self, site: Site) -> Site:
        """The site's totals over the current day's trips."""
        if site.day != self.day:
            site.trip_weight = float(self._pair_weight[site.pairs].sum())
            site.passes = float(self._pair_count[site.pairs].sum())
            site.day, site._cum = self.day, None
        return site

    # -- picking who ------------------------------------------------------------------------------------
    def pick_travellers(self, site: Site, k: int, rng: np.random.Generator) -> np.ndarray:
        """k residents, each from one pass of the site, chosen by propensity (with replacement)."""
        self.refresh(site)
        if k <= 0 or site.trip_weight <= 0.0:
            return np.empty(0, np.int64)
        if site._cum is None:
            site._cum = np.cumsum(self._pair_weight[site.pairs])
        cum = site._cum
        at = np.minimum(np.searchsorted(cum, rng.random(k) * cum[-1], side="right"), len(cum) - 1)
        pair = site.pairs[at]
        lo = np.searchsorted(self._flat_sorted, pair, side="left")
        hi = np.searchsorted(self._flat_sorted, pair, side="right")
        trip = _pick_in_blocks(self._trip_cum, lo, hi, rng)
        return self._res_sorted[trip].astype(np.int64)

    def pick_home(self, site: Site, k: int, rng: np.random.Generator) -> np.ndarray:
        """k residents living near the site, chosen by propensity (with replacement)."""
        if k <= 0 or site.home_weight <= 0.0:
            return np.empty(0, np.int64)
        cum = np.cumsum(self._node_weight[site.home_nodes])
        at = np.minimum(np.searchsorted(cum, rng.random(k) * cum[-1], side="right"), len(cum) - 1)
        node = site.home_nodes[at]
        member = _pick_in_blocks(self._home_cum, self._home_offsets[node], self._home_offsets[node + 1], rng)
        return self._home_order[member].astype(np.int64)

    # -- helpers ---------------------------------------------------------------------------------------
    def _zone_of(self, city: City) -> np.ndarray:
        """Each node's zone; a node outside the zones counts as the nearest zone node."""
        zone_of = np.full(len(city.nodes), -1, np.int64)
        zone_of[self.zones] = np.arange(self.Z)
        outside = np.flatnonzero(zone_of < 0)
        if len(outside):
            tree = cKDTree(np.column_stack([city.nodes.x[self.zones], city.nodes.y[self.zones]]))
            _, nearest = tree.query(np.column_stack([city.nodes.x[outside], city.nodes.y[outside]]))
            zone_of[outside] = nearest
        return zone_of


def _union(parts: list[np.ndarray]) -> np.ndarray:
    """Sorted union of sorted index arrays (a sort, not np.unique: its hashing is slow on these)."""
    if len(parts) == 1:
        return parts[0]
    out = np.concatenate(parts)
    out.sort()
    keep = np.ones(len(out), bool)
    keep[1:] = out[1:] != out[:-1]
    return out[keep]


def _pick_in_blocks(cum: np.ndarray, lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One index in each block [lo, hi) of a cumulative weight array, with probability by weight."""
    base = np.where(lo > 0, cum[np.maximum(lo - 1, 0)], 0.0)
    top = cum[hi - 1]
    target = base + rng.random(len(lo)) * (top - base)
    idx = np.searchsorted(cum, target, side="right")
    return np.clip(idx, lo, hi - 1)

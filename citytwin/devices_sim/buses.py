"""Bus GPS: buses running lines on the road network, with stops and headways, reporting their position.

A line is a fixed path: either the scenario's `via` junctions joined by shortest free-flow paths, or a line
generated between two distant junctions on major roads (shortest path with minor roads penalised, so
generated lines run where buses do). Every line is run out and back from its first junction (the depot):
a trip departs every `headway` during the service window, follows the path to the far end and back, and
stops every ~`stop_spacing_m` for `dwell` seconds. Between GPS fixes a bus advances along its links at
the links' current travel times, so congestion, incidents and floods slow it (a closed link stops it).

Vehicles are a fixed pool per line, sized for the longest round trip the line should see; a departure with
no bus back at the depot is cancelled, as it would be. All buses advance together as columns: the loop is
over the link and stop boundaries a bus can cross in one interval (a handful), not over buses.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import networkx as nx
import numpy as np

from citytwin.twin.city.model import City
from citytwin.twin.city.paths import network_graph, zone_nodes
from citytwin.twin.city.synthetic import georeference

from .batch import Batch
from .encoders import BusPosition
from .placement import Sites

DAY_S = 86400.0
# How much longer than free flow (plus dwell) a round trip may take before the line runs out of buses.
_POOL_MARGIN = 2.5
# Generated lines prefer major roads: free-flow time is multiplied by this per road class.
_CLASS_PENALTY = {"arterial": 1.0, "bridge": 1.0, "collector": 1.3, "connector": 1.5, "local": 2.0, "alley": 5.0}
_MAJOR = ("arterial", "bridge")
_EPS = 1e-6  # m or s: closer than this is there


@dataclass(frozen=True)
class Line:
    """One bus line: its round trip as links in order, and where along it the stops are (m)."""

    name: str
    links: np.ndarray   # link indices, out then back
    start_m: np.ndarray  # distance from the depot at the start of each link
    stops_m: np.ndarray  # stop positions, increasing; the last is the depot at the end of the round trip
    length_m: float
    turn: int           # links[:turn] run out to the far terminal, links[turn:] back to the depot


class BusFleet:
    """Buses on their lines; `sample(t, world)` gives a GPS fix of every bus in service at t."""

    device_type = "bus"
    kind = BusPosition

    def __init__(self, spec, city: City, rng: np.random.Generator, *, start_s: float = 0.0):
        self.spec, self.city, self.rng = spec, city, rng
        self.start_s = float(start_s)
        self.interval_s = float(spec.interval)
        self.headway_s = float(spec.headway)
        self.dwell_s = float(spec.dwell)
        self.lines = build_lines(spec, city, rng)
        self._lon, self._lat = node_lonlat(city)
        self._heading = link_headings(city, self._lon, self._lat)
        self._layout()
        self._pool()
        n = len(self.device_ids)
        self._active = np.zeros(n, bool)
        self._seg = np.zeros(n, np.int64)       # index into the concatenated line links
        self._off = np.zeros(n)                 # m into that link
        self._next_stop = np.zeros(n, np.int64)  # index into the concatenated stops
        self._dwell_left = np.zeros(n)
        self._back_at = np.full(n, -np.inf)     # when each bus last came back to the depot
        self._now: float | None = None
        self.cancelled = 0  # departures with no bus at the depot

    # -- the public surface ----------------------------------------------------------------------------
    def sample(self, t: float, world) -> Batch:
        """Advance every bus to t (departing the trips due meanwhile) and report those in service."""
        tt = np.asarray(world.travel_times(), float)
        if self._now is None:  # start in steady state: the trips that would be out already are
            self._now = t - self._horizon_s
        for when in self.departures_between(self._now, t):
            self._advance(when - self._now, tt)
            self._now = when
            self._depart()
        self._advance(t - self._now, tt)
        self._now = t
        return self._fixes(t, tt)

    def departures_between(self, a: float, b: float) -> np.ndarray:
        """Virtual times of the departures in (a, b], each line's trips leave the depot together."""
        service = self.spec.service
        first, span = float(service.start), float(_service_length(service))
        if not self.lines or b <= a:
            return np.empty(0)
        per_day = first + np.arange(math.ceil(span / self.headway_s - _EPS)) * self.headway_s
        d0 = math.floor((a + self.start_s - first - span) / DAY_S)
        d1 = math.floor((b + self.start_s - first) / DAY_S)
        times = (np.arange(d0, d1 + 1)[:, None] * DAY_S + per_day[None, :]).ravel() - self.start_s
        return np.sort(times[(times > a) & (times <= b)])

    # -- the lines as flat arrays -------------------------------------------------------------------------
    def _layout(self) -> None:
        """Concatenate the lines' links and stops so buses of every line advance in one array step."""
        links = [ln.links for ln in self.lines]
        self._seg_link = np.concatenate(links) if links else np.empty(0, np.int64)
        self._seg_start = np.concatenate([ln.start_m for ln in self.lines]) if links else np.empty(0)
        self._seg_len = self.city.links.length_m[self._seg_link]
        self._line_first_seg = np.cumsum([0] + [len(x) for x in links], dtype=np.int64)[:-1]
        stops = [ln.stops_m for ln in self.lines]
        self._stop_m = np.concatenate(stops) if stops else np.empty(0)
        self._line_first_stop = np.cumsum([0] + [len(s) for s in stops], dtype=np.int64)[:-1]
        last = np.cumsum([len(s) for s in stops], dtype=np.int64) - 1
        self._stop_is_end = np.zeros(len(self._stop_m), bool)
        self._stop_is_end[last] = True
        self._seg_is_last = np.zeros(len(self._seg_link), bool)
        self._seg_is_last[np.cumsum([len(x) for x in links], dtype=np.int64) - 1] = True

    def _pool(self) -> None:
        """Enough buses per line for a round trip `_POOL_MARGIN` times slower than free flow."""
        ff = self.city.links.free_flow_s
        ids, line_of, rounds = [], [], []
        per_day = math.ceil(_service_length(self.spec.service) / self.headway_s - _EPS)
        for r, ln in enumerate(self.lines):
            round_s = float(ff[ln.links].sum()) + self.dwell_s * len(ln.stops_m)
            rounds.append(round_s)
            size = max(1, min(per_day, math.ceil(_POOL_MARGIN * round_s / self.headway_s) + 1))
            label = _id_part(ln.name)
            ids += [f"{self.spec.name}-{label}-{k:03d}" for k in range(size)]
            line_of += [r] * size
        self.device_ids = np.array(ids, dtype=object)
        self._line_of = np.asarray(line_of, np.int64)
        self._horizon_s = _POOL_MARGIN * max(rounds, default=0.0)
        depot = np.array([self._lon_lat_of_node(self.city.links.src[self.lines[r].links[0]]) for r in line_of]) \
            if line_of else np.empty((0, 2))
        self.sites = Sites(nodes=np.full(len(ids), -1, np.int64), links=np.full(len(ids), -1, np.int64),
                           lon=depot[:, 0].copy(), lat=depot[:, 1].copy(),
                           covers=[np.unique(self.lines[r].links) for r in line_of])
        self._route_id = np.array([ln.name for ln in self.lines], dtype=object)

    def _lon_lat_of_node(self, node: int) -> tuple[float, float]:
        return float(self._lon[node]), float(self._lat[node])

    # -- moving the buses ----------------------------------------------------------------------------------
    def _depart(self) -> None:
        """One trip of every line leaves its depot now, on the bus that has waited there longest."""
        for r in range(len(self.lines)):
            idle = np.flatnonzero((self._line_of == r) & ~self._active)
            if not len(idle):
                self.cancelled += 1
                continue
            v = idle[np.argmin(self._back_at[idle])]
            self._active[v] = True
            self._seg[v], self._off[v] = self._line_first_seg[r], 0.0
            self._next_stop[v], self._dwell_left[v] = self._line_first_stop[r], 0.0

    def _advance(self, dt: float, tt: np.ndarray) -> None:
        """Move every bus in service on by dt seconds: dwell, drive to the next link end or stop, repeat."""
        if dt <= 0:
            return
        bus = np.flatnonzero(self._active)
        left = np.full(len(bus), float(dt))
        while len(bus):
            waiting = np.minimum(self._dwell_left[bus], left)
            self._dwell_left[bus] -= waiting
            left -= waiting
            seg = self._seg[bus]
            speed = _speed(self._seg_len[seg], tt[self._seg_link[seg]])
            at = self._seg_start[seg] + self._off[bus]
            to_end = self._seg_len[seg] - self._off[bus]
            to_stop = self._stop_m[self._next_stop[bus]] - at
            target = np.maximum(np.minimum(to_end, to_stop), 0.0)
            with np.errstate(divide="ignore", invalid="ignore"):
                need = np.where(target <= 0, 0.0, target / speed)
            arrives = need <= left
            go = np.where(arrives, need, left)
            self._off[bus] += np.where(arrives, target, speed * go)
            left -= go
            stop_hit = arrives & (to_stop <= to_end + _EPS)
            link_end = arrives & (to_end <= to_stop + _EPS)
            self._dwell_left[bus[stop_hit]] = self.dwell_s
            finished = (stop_hit & self._stop_is_end[self._next_stop[bus]]) | (link_end & self._seg_is_last[seg])
            self._next_stop[bus[stop_hit]] += 1
            step = link_end & ~finished
            self._seg[bus[step]] += 1
            self._off[bus[step]] = 0.0
            self._active[bus[finished]] = False
            self._back_at[bus[finished]] = self._now + dt - left[finished]
            # Go on with the buses that still have time and can move (a bus on a closed link waits).
            keep = ~finished & (left > _EPS)
            bus, left = bus[keep], left[keep]

    def _fixes(self, t: float, tt: np.ndarray) -> Batch:
        bus = np.flatnonzero(self._active)
        seg = self._seg[bus]
        link = self._seg_link[seg]
        moving = self._dwell_left[bus] <= 0
        speed_kmh = np.where(moving, _speed(self._seg_len[seg], tt[link]), 0.0) * 3.6
        speed_kmh = np.nan_to_num(speed_kmh, nan=0.0, posinf=0.0)
        length = self._seg_len[seg]
        frac = np.clip(np.divide(self._off[bus], length, out=np.zeros(len(bus)), where=length > 0), 0.0, 1.0)
        src, dst = self.city.links.src[link], self.city.links.dst[link]
        lon = self._lon[src] + frac * (self._lon[dst] - self._lon[src])
        lat = self._lat[src] + frac * (self._lat[dst] - self._lat[src])
        return Batch(
            kind=BusPosition,
            devices=bus.astype(np.int64),
            observed_t=np.full(len(bus), float(t)),
            values={"speed": speed_kmh, "heading": self._heading[link],
                    "route_id": self._route_id[self._line_of[bus]].astype(object), "lon": lon, "lat": lat},
            meta={"link": link.astype(np.int64), "node": np.full(len(bus), -1, np.int64), "value": speed_kmh.copy()},
        )


# -- building lines ---------------------------------------------------------------------------------------

def build_lines(spec, city: City, rng: np.random.Generator) -> list[Line]:
    """The fleet's lines: the scenario's routes through their `via` junctions, or `routes` generated ones."""
    spacing = float(spec.stop_spacing_m)
    routes = spec.routes
    if isinstance(routes, int):
        trips = generated_paths(city, routes, rng)
        names = [f"R{k + 1:02d}" for k in range(len(trips))]
    else:
        index = city.node_index()
        graph = _graph(city, city.links.free_flow_s)
        trips, names = [], []
        for route in routes:
            missing = [v for v in route.via if str(v) not in index]
            if missing:
                raise ValueError(f"bus route {route.name!r}: unknown node {missing[0]!r}")
            trips.append(round_trip(graph, [index[str(v)] for v in route.via], name=str(route.name)))
            names.append(str(route.name))
    return [_line(name, out, back, city, spacing) for name, (out, back) in zip(names, trips)]


def round_trip(graph: nx.DiGraph, via: list[int], *, name: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(out, back): links of the path through the via junctions, and back through them in reverse."""
    out, back = _through(graph, via, name), _through(graph, via[::-1], name)
    if not len(out) or not len(back):
        raise ValueError(f"bus route {name!r}: its via junctions are all one junction; a line needs two")
    return out, back


def generated_paths(city: City, n: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """n lines between distant junctions on major roads (any junction if the city has none), routed with
    minor roads penalised; deterministic for the generator."""
    if n <= 0:
        return []
    penalty = np.array([_CLASS_PENALTY.get(str(c), 1.5) for c in city.links.road_class])
    graph = _graph(city, city.links.free_flow_s * penalty)
    connected = zone_nodes(city)
    major = np.isin(city.links.road_class, _MAJOR)
    on_major = np.intersect1d(np.unique(np.concatenate([city.links.src[major], city.links.dst[major]])), connected)
    ends = on_major if len(on_major) >= 2 else connected
    if len(ends) < 2:
        raise ValueError("bus routes: the network has no two connected junctions to run a line between")
    x, y = city.nodes.x[ends], city.nodes.y[ends]
    paths = []
    for _ in range(n):
        a = int(rng.integers(len(ends)))
        dist = np.hypot(x - x[a], y - y[a])
        far = np.flatnonzero(dist >= np.quantile(dist, 0.8))
        far = far[far != a] if len(far) > 1 else far
        b = int(far[rng.integers(len(far))])
        paths.append(round_trip(graph, [int(ends[a]), int(ends[b])], name=f"R{len(paths) + 1:02d}"))
    return paths


def _graph(city: City, weights: np.ndarray) -> nx.DiGraph:
    """The network as a networkx graph (fastest of parallel links), each edge knowing its link index."""
    m = network_graph(city, weights).tocoo()
    graph = nx.DiGraph()
    graph.add_nodes_from(range(len(city.nodes)))
    best: dict[tuple[int, int], int] = {}
    for k, (u, v, w) in enumerate(zip(city.links.src.tolist(), city.links.dst.tolist(), weights.tolist())):
        if (u, v) not in best or w < weights[best[(u, v)]]:
            best[(u, v)] = k
    graph.add_edges_from((int(u), int(v), {"weight": float(w), "link": best[(int(u), int(v))]})
                         for u, v, w in zip(m.row, m.col, m.data))
    return graph


def _through(graph: nx.DiGraph, via: list[int], name: str) -> np.ndarray:
    links: list[int] = []
    for a, b in zip(via[:-1], via[1:]):
        try:
            nodes = nx.shortest_path(graph, a, b, weight="weight")
        except nx.NetworkXNoPath:
            raise ValueError(f"bus route {name!r}: no path from junction {a} to {b}") from None
        links += [graph.edges[u, v]["link"] for u, v in zip(nodes[:-1], nodes[1:])]
    return np.asarray(links, np.int64)


def _line(name: str, out: np.ndarray, back: np.ndarray, city: City, spacing: float) -> Line:
    """A line's stops: evenly every ~spacing m along each direction, the last of each at its terminal."""
    links = np.concatenate([out, back]).astype(np.int64)
    length = city.links.length_m[links]
    start = np.concatenate([[0.0], np.cumsum(length[:-1])])
    total, turn = float(start[-1] + length[-1]), float(start[len(out)])
    stops = []
    for lo, hi in ((0.0, turn), (turn, total)):
        count = max(1, int(round((hi - lo) / spacing)))
        stops.append(lo + (hi - lo) * np.arange(1, count + 1) / count)
    stops_m = np.unique(np.concatenate(stops))
    stops_m[-1] = total  # exactly where the last link ends: arriving there ends the trip
    return Line(name=name, links=links, start_m=start, stops_m=stops_m, length_m=total, turn=len(out))


# -- geometry ---------------------------------------------------------------------------------------------

def node_lonlat(city: City) -> tuple[np.ndarray, np.ndarray]:
    """WGS84 of every junction; a city without geography is placed around the synthetic district's anchor."""
    nodes = city.nodes
    if np.isfinite(nodes.lon).all() and np.isfinite(nodes.lat).all():
        return np.asarray(nodes.lon, float), np.asarray(nodes.lat, float)
    return georeference(nodes.x, nodes.y)


def link_headings(city: City, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Initial bearing of each link from its start to its end, degrees clockwise from north in [0, 360)."""
    src, dst = city.links.src, city.links.dst
    phi1, phi2 = np.radians(lat[src]), np.radians(lat[dst])
    dlon = np.radians(lon[dst] - lon[src])
    east = np.sin(dlon) * np.cos(phi2)
    north = np.cos(phi1) * np.sin(phi2) - np.sin(phi1) * np.cos(phi2) * np.cos(dlon)
    return np.degrees(np.arctan2(east, north)) % 360.0


def _speed(length_m: np.ndarray, travel_s: np.ndarray) -> np.ndarray:
    """m/s on each link; 0 where the link is closed (infinite or missing travel time)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(np.isfinite(travel_s) & (travel_s > 0), length_m / travel_s, 0.0)
    return np.where(np.isfinite(v), v, 0.0)


def _service_length(service) -> float:
    length = getattr(service, "length_s", None)
    if length is not None:
        return float(length)
    return (float(service.end) - float(service.start)) % DAY_S or DAY_S


def _id_part(name: str) -> str:
    """A line name as it can stand in a device id (which also goes into an MQTT topic and a URN)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", str(name)) or "line"


__all__ = ["BusFleet", "Line", "build_lines", "generated_paths", "link_headings", "node_lonlat", "round_trip"]

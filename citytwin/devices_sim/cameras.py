"""Traffic cameras with video analytics: what they recognise in view, and the Alert events they raise.

A camera sees the links whose midpoint lies within its range (its placement's `covers`) and the junctions
within the same range. Every evaluation (the fleet's interval) the analytics look for four kinds of event:

==========  ==========================================  ===============  ================  ========
event       in view when                                category         subCategory       severity
==========  ==========================================  ===============  ================  ========
incident    an active incident is on a covered link     traffic          carAccident /     high /
                                                                         carStopped        medium
congestion  a covered link runs below                   traffic          trafficJam        medium
            `congestion_speed_ratio` x free-flow speed
flood       a junction within range is flooded          weather          flood             high
violation   a vehicle through a covered link breaks     traffic          carWrongDirection low
            the rules (Poisson per vehicle)
==========  ==========================================  ===============  ================  ========

An event a camera has in view but has not recognised yet is recognised with probability `detect.<event>`
at each evaluation (so the time to recognition is geometric in evaluations); once recognised, the camera
raises one alert for it and never again for the same event. A violation is over in an instant: the camera
has one evaluation to catch it. The alert leaves the camera after the analytics delay (exponential, mean
`delay`, in the batch's meta), which the device network adds to the send time.

State is per (camera, event) pair. The congestion and flood checks run on the entries of sparse
camera x link and camera x junction incidence matrices, so a few hundred cameras every minute cost a few
array operations, not a loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix
from scipy.spatial import cKDTree

from citytwin.twin.city.model import City

from .batch import Batch
from .encoders import CameraAlert
from .placement import Sites
from .sensors import DetectorFleet, link_flow_veh_h

EVENTS = ("incident", "congestion", "flood", "violation")
# A congested link counts as recovered only once it is clearly faster than the congestion threshold, so a
# link hovering at the threshold is one jam, not a jam a minute.
_RECOVERY_FACTOR = 1.25

# What the analytics call each incident cause (cause in the hazard model -> subCategory, severity, words).
_INCIDENT_LABELS = {
    "crash": ("carAccident", "high", "Tai nạn giao thông"),
    "breakdown": ("carStopped", "medium", "Phương tiện hư hỏng, dừng"),
}
_OTHER_INCIDENT = ("hazardOnRoad", "medium", "Sự cố giao thông")


class CameraFleet:
    """Cameras placed at `sites`; `sample(t, world)` gives the alerts raised at evaluation time t."""

    device_type = "camera"
    kind = CameraAlert

    def __init__(self, spec, city: City, sites: Sites, rng: np.random.Generator, *, start_s: float = 0.0):
        self.spec, self.city, self.sites, self.rng = spec, city, sites, rng
        self.start_s = float(start_s)
        self.interval_s = float(spec.interval)
        n = len(sites.lon)
        self.device_ids = np.array([f"{spec.name}-{k:04d}" for k in range(n)], dtype=object)
        self._cam_node = np.asarray(sites.nodes, dtype=np.int64)
        # camera x link: what each camera sees, one entry per (camera, link) pair, row-major
        self._sees_link = _incidence(sites.covers, n, len(city.links))
        self._link_cam, self._link_link = _entries(self._sees_link)
        self._sees_link_csc = self._sees_link.tocsc()
        self._covered_links = np.flatnonzero(np.diff(self._sees_link_csc.indptr) > 0)
        # camera x junction: the junctions within range_m of each camera
        self._sees_node = _node_incidence(city, sites, float(spec.range_m))
        self._node_cam, self._node_node = _entries(self._sees_node)
        # recognition state per entry and per event
        self._jam_seen = np.zeros(len(self._link_cam), bool)
        self._jam_start = np.full(len(city.links), np.nan)  # first congested evaluation; NaN: flowing
        self._flood_seen = np.zeros(len(self._node_cam), bool)
        self._flood_start = np.full(len(city.nodes), np.nan)  # first evaluation seen flooded
        self._incident_seen: dict[int, np.ndarray] = {}  # incident key -> recognised, per covering camera
        self._last_t: float | None = None

    # -- the public surface ----------------------------------------------------------------------------
    def sample(self, t: float, world) -> Batch:
        """Alerts for the events recognised at this evaluation (none when nothing new was recognised)."""
        dt = self.interval_s if self._last_t is None else max(t - self._last_t, 0.0)
        self._last_t = t
        state = world.traffic()
        parts = [self._incidents(t, world), self._congestion(t, state), self._floods(t, world),
                 self._violations(t, dt, state, world)]
        return self._batch(t, [p for p in parts if p is not None])

    def counting_fleet(self):
        """A detector fleet counting the busiest link in each camera's view ("<camera id>-flow"), every
        `count_interval`, with the cameras' fault settings; None when the cameras do not count."""
        if not getattr(self.spec, "counts", False):
            return None
        links = np.asarray(self.sites.links, dtype=np.int64)
        counting = np.flatnonzero(links >= 0)
        if not len(counting):
            return None
        spec = CountingSpec(name=f"{self.spec.name}-flow", interval=float(self.spec.count_interval),
                            faults=self.spec.faults)
        sites = Sites(nodes=np.full(len(counting), -1, np.int64), links=links[counting],
                      lon=np.asarray(self.sites.lon, float)[counting], lat=np.asarray(self.sites.lat, float)[counting],
                      covers=[np.array([link], np.int64) for link in links[counting]])
        # A child generator: counting draws nothing from the cameras' own stream, so their alerts stay the same.
        fleet = DetectorFleet(spec, self.city, sites, self.rng.spawn(1)[0], start_s=self.start_s)
        fleet.device_ids = np.array([f"{cam}-flow" for cam in self.device_ids[counting]], dtype=object)
        return fleet

    # -- the four kinds of event -------------------------------------------------------------------------
    def _incidents(self, t: float, world) -> _Rows | None:
        p = float(self.spec.detect.incident)
        active = {int(k): inc for k, inc in world.active_incidents()}
        for gone in set(self._incident_seen) - set(active):
            del self._incident_seen[gone]
        cams, keys = [], []
        for k, inc in active.items():
            lo, hi = self._sees_link_csc.indptr[inc.link], self._sees_link_csc.indptr[inc.link + 1]
            if lo == hi:
                continue  # no camera has the link in view
            seen = self._incident_seen.setdefault(k, np.zeros(hi - lo, bool))
            new = ~seen & (self.rng.random(hi - lo) < p)
            seen |= new
            cams.append(self._sees_link_csc.indices[lo:hi][new])
            keys.append(np.full(int(new.sum()), k))
        if not cams:
            return None
        cam, key = np.concatenate(cams), np.concatenate(keys)
        if not len(cam):
            return None
        incs = [active[int(k)] for k in key]
        labels = [_INCIDENT_LABELS.get(inc.cause, _OTHER_INCIDENT) for inc in incs]
        link = np.array([inc.link for inc in incs], np.int64)
        return _Rows(event="incident", cam=cam, link=link, node=self._cam_node[cam],
                     truth_t=np.array([inc.start for inc in incs], float), category="traffic",
                     sub_category=[lab[0] for lab in labels], severity=[lab[1] for lab in labels],
                     description=[f"{lab[2]} trên {self._street(lk)}" for lab, lk in zip(labels, link)])

    def _congestion(self, t: float, state) -> _Rows | None:
        ratio = float(self.spec.congestion_speed_ratio)
        free = self.city.links.free_flow_mps
        speed = np.asarray(state.speed_mps, float)
        jammed = speed < ratio * free
        recovered = speed >= min(1.0, ratio * _RECOVERY_FACTOR) * free
        ongoing = ~np.isnan(self._jam_start)
        ends = ongoing & recovered
        self._jam_start[ends] = np.nan
        starts = ~ongoing & jammed
        self._jam_start[starts] = t
        self._jam_seen[ends[self._link_link]] = False  # a new jam on the link is a new event
        in_view = ~np.isnan(self._jam_start[self._link_link]) & ~self._jam_seen
        return self._recognise(in_view, self._jam_seen, float(self.spec.detect.congestion), lambda idx: _Rows(
            event="congestion", cam=self._link_cam[idx], link=self._link_link[idx],
            node=self._cam_node[self._link_cam[idx]], truth_t=self._jam_start[self._link_link[idx]],
            category="traffic", sub_category="trafficJam", severity="medium",
            description=[f"Ùn tắc giao thông trên {self._street(lk)}" for lk in self._link_link[idx]]))

    def _floods(self, t: float, world) -> _Rows | None:
        flooded = np.asarray(world.flooded_nodes(), bool)
        ongoing = ~np.isnan(self._flood_start)
        ends = ongoing & ~flooded
        self._flood_start[ends] = np.nan
        self._flood_start[~ongoing & flooded] = t
        self._flood_seen[ends[self._node_node]] = False
        in_view = flooded[self._node_node] & ~self._flood_seen
        ids = self.city.nodes.ids
        return self._recognise(in_view, self._flood_seen, float(self.spec.detect.flood), lambda idx: _Rows(
            event="flood", cam=self._node_cam[idx], link=np.full(len(idx), -1, np.int64),
            node=self._node_node[idx], truth_t=self._flood_start[self._node_node[idx]],
            category="weather", sub_category="flood", severity="high",
            description=[f"Ngập nước tại nút giao {ids[nd]}" for nd in self._node_node[idx]]))

    def _violations(self, t: float, dt: float, state, world) -> _Rows | None:
        """Each vehicle through a covered link breaks the rules with a small chance; every camera with the
        link in view has this one evaluation to catch it."""
        links = self._covered_links
        if not len(links) or dt <= 0:
            return None
        vehicles = link_flow_veh_h(state, float(world.vehicles_per_pcu), links) * dt / 3600.0
        rate = float(self.spec.violations_per_1000_vehicles) / 1000.0
        count = self.rng.poisson(np.maximum(rate * vehicles, 0.0))
        if not count.any():
            return None
        where = np.repeat(links, count)
        when = t - dt + self.rng.random(len(where)) * dt
        # every (violation, camera with its link in view) pair, then one chance each
        csc = self._sees_link_csc
        degree = np.diff(csc.indptr)[where]
        first = np.repeat(csc.indptr[where], degree)
        within = np.arange(degree.sum()) - np.repeat(np.cumsum(degree) - degree, degree)
        cam = csc.indices[first + within]
        link, truth = np.repeat(where, degree), np.repeat(when, degree)
        hit = self.rng.random(len(cam)) < float(self.spec.detect.violation)
        if not hit.any():
            return None
        cam, link, truth = cam[hit], link[hit], truth[hit]
        return _Rows(event="violation", cam=cam, link=link, node=self._cam_node[cam], truth_t=truth,
                     category="traffic", sub_category="carWrongDirection", severity="low",
                     description=[f"Phương tiện đi ngược chiều trên {self._street(lk)}" for lk in link])

    # -- helpers ----------------------------------------------------------------------------------------------
    def _recognise(self, in_view: np.ndarray, seen: np.ndarray, p: float, rows) -> _Rows | None:
        candidates = np.flatnonzero(in_view)
        if not len(candidates):
            return None
        idx = candidates[self.rng.random(len(candidates)) < p]
        if not len(idx):
            return None
        seen[idx] = True
        return rows(idx)

    def _street(self, link: int) -> str:
        name = str(self.city.links.name[link]).strip()
        return name or str(self.city.links.ids[link])

    def _batch(self, t: float, parts: list[_Rows]) -> Batch:
        n = sum(len(p.cam) for p in parts)
        delay_mean = float(self.spec.delay)
        delay = self.rng.exponential(delay_mean, n) if delay_mean > 0 else np.zeros(n)

        def column(name: str, dtype) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts]).astype(dtype) if parts else np.empty(0, dtype)

        return Batch(
            kind=CameraAlert,
            devices=column("cam", np.int64),
            observed_t=np.full(n, float(t)),
            values={"category": column("category", object), "sub_category": column("sub_category", object),
                    "severity": column("severity", object), "description": column("description", object),
                    "date_issued": t + delay},  # issued once the analytics are done
            meta={"delay": delay, "truth_t": column("truth_t", float), "event": column("event", object),
                  "link": column("link", np.int64), "node": column("node", np.int64), "value": np.full(n, np.nan)},
        )


@dataclass(frozen=True)
class CountingSpec:
    """What the cameras' counting companion needs of a detector fleet's spec: the cameras' faults, its own
    interval (`count_interval`)."""

    name: str
    interval: float
    faults: Any
    type: str = "detector"


class _Rows:
    """Alerts about one kind of event, as columns; a constant given for a column applies to every row."""

    def __init__(self, *, event: str, cam, link, node, truth_t, category, sub_category, severity, description):
        self.cam = np.asarray(cam, np.int64)
        n = len(self.cam)

        def col(value, dtype) -> np.ndarray:
            if isinstance(value, str):
                return np.full(n, value, dtype=object)
            return np.asarray(value, dtype=dtype)

        self.event = np.full(n, event, dtype=object)
        self.link, self.node = col(link, np.int64), col(node, np.int64)
        self.truth_t = col(truth_t, float)
        self.category, self.sub_category = col(category, object), col(sub_category, object)
        self.severity, self.description = col(severity, object), col(description, object)


def _incidence(covers, n_rows: int, n_cols: int) -> csr_matrix:
    """Sparse 0/1 rows x cols matrix with row k's ones at covers[k] (sorted, no duplicates)."""
    cols = [np.unique(np.asarray(c, dtype=np.int64)) for c in covers]
    rows = np.repeat(np.arange(n_rows), [len(c) for c in cols])
    cols_all = np.concatenate(cols) if cols else np.empty(0, np.int64)
    m = csr_matrix((np.ones(len(rows), bool), (rows, cols_all)), shape=(n_rows, n_cols))
    m.sort_indices()
    return m


def _entries(m: csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of each stored entry, in storage order."""
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    return rows.astype(np.int64), m.indices.astype(np.int64)


def _node_incidence(city: City, sites: Sites, range_m: float) -> csr_matrix:
    """Camera x junction: the junctions within range_m of each camera (in the city's metric plane)."""
    x, y = _camera_xy(city, sites)
    tree = cKDTree(np.column_stack([city.nodes.x, city.nodes.y]))
    placed = np.isfinite(x)
    near = [tree.query_ball_point((xi, yi), range_m) if ok else [] for xi, yi, ok in zip(x, y, placed)]
    return _incidence(near, len(x), len(city.nodes))


def _camera_xy(city: City, sites: Sites) -> tuple[np.ndarray, np.ndarray]:
    """A camera stands at its junction; one sited on a link stands at the link's midpoint."""
    nodes = np.asarray(sites.nodes, dtype=np.int64)
    links = np.asarray(sites.links, dtype=np.int64)
    x, y = np.full(len(nodes), np.nan), np.full(len(nodes), np.nan)
    at_node = nodes >= 0
    x[at_node], y[at_node] = city.nodes.x[nodes[at_node]], city.nodes.y[nodes[at_node]]
    on_link = ~at_node & (links >= 0)
    src, dst = city.links.src[links[on_link]], city.links.dst[links[on_link]]
    x[on_link] = (city.nodes.x[src] + city.nodes.x[dst]) / 2
    y[on_link] = (city.nodes.y[src] + city.nodes.y[dst]) / 2
    return x, y


__all__ = ["CameraFleet", "CountingSpec", "EVENTS"]

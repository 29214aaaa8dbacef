"""The one city object every network source produces.

Nodes and links are columns (NumPy arrays), not an object each, so a city of tens of thousands of links
costs little to hold and KPIs are array expressions. Coordinates are metres in a local plane (x east,
y north); geographic sources keep lon/lat beside them for maps and for devices that speak WGS84.
Link attributes are in SI units and passenger-car units (PCU), the unit the traffic engine moves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ROAD_CLASSES = ("arterial", "collector", "local", "alley", "bridge", "connector")


@dataclass(frozen=True)
class Nodes:
    ids: np.ndarray  # str, unique
    x: np.ndarray  # m
    y: np.ndarray  # m
    lon: np.ndarray  # degrees, NaN when the source has no geography
    lat: np.ndarray
    signalised: np.ndarray  # bool
    elevation_m: np.ndarray  # above a local datum; what floods first is what lies lowest

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Links:
    ids: np.ndarray  # str, unique
    src: np.ndarray  # int, index into Nodes
    dst: np.ndarray  # int
    length_m: np.ndarray
    lanes: np.ndarray  # int >= 1
    free_flow_mps: np.ndarray
    capacity_pcu_h: np.ndarray  # whole link, all lanes
    jam_density_pcu_m: np.ndarray  # per lane
    road_class: np.ndarray  # str, one of ROAD_CLASSES
    name: np.ndarray  # str, street name where known

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def free_flow_s(self) -> np.ndarray:
        return self.length_m / self.free_flow_mps


@dataclass(frozen=True)
class City:
    """A road network: nodes, directed links, signalised junctions, and where it came from."""

    name: str
    source: str  # synthetic | osm_file | osm_place | tntp
    nodes: Nodes
    links: Links
    attribution: str = ""
    # Zones are the nodes trips start and end at; by default every node that has links both ways.
    zone_weights: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. "population", "jobs" per node

    def __post_init__(self) -> None:
        n = len(self.nodes)
        for name in ("x", "y", "lon", "lat", "signalised", "elevation_m"):
            if len(getattr(self.nodes, name)) != n:
                raise ValueError(f"nodes.{name} has {len(getattr(self.nodes, name))} values for {n} nodes")
        m = len(self.links)
        for name in ("src", "dst", "length_m", "lanes", "free_flow_mps", "capacity_pcu_h",
                     "jam_density_pcu_m", "road_class", "name"):
            if len(getattr(self.links, name)) != m:
                raise ValueError(f"links.{name} has {len(getattr(self.links, name))} values for {m} links")
        if m and (self.links.src.max() >= n or self.links.dst.max() >= n):
            raise ValueError("a link refers to a node index that does not exist")
        for key, w in self.zone_weights.items():
            if len(w) != n:
                raise ValueError(f"zone_weights[{key!r}] has {len(w)} values for {n} nodes")

    @property
    def total_road_km(self) -> float:
        return float(self.links.length_m.sum() / 1000.0)

    def node_index(self) -> dict[str, int]:
        return {str(k): i for i, k in enumerate(self.nodes.ids)}

    def link_index(self) -> dict[str, int]:
        return {str(k): i for i, k in enumerate(self.links.ids)}

    def links_at_node(self, node: int) -> np.ndarray:
        """Indices of links that start or end at a node (what a flooded junction closes)."""
        return np.flatnonzero((self.links.src == node) | (self.links.dst == node))

    def summary(self) -> dict[str, object]:
        classes, counts = np.unique(self.links.road_class, return_counts=True)
        return {
            "name": self.name,
            "source": self.source,
            "nodes": len(self.nodes),
            "links": len(self.links),
            "road_km": round(self.total_road_km, 2),
            "signalised_junctions": int(self.nodes.signalised.sum()),
            "links_by_class": {str(c): int(k) for c, k in zip(classes, counts)},
        }


def make_nodes(ids, x, y, *, lon=None, lat=None, signalised=None, elevation_m=None) -> Nodes:
    """Nodes from sequences, filling what a source does not know."""
    n = len(ids)
    nan = np.full(n, np.nan)
    return Nodes(
        ids=np.asarray([str(i) for i in ids], dtype=object),
        x=np.asarray(x, dtype=float),
        y=np.asarray(y, dtype=float),
        lon=nan.copy() if lon is None else np.asarray(lon, dtype=float),
        lat=nan.copy() if lat is None else np.asarray(lat, dtype=float),
        signalised=np.zeros(n, bool) if signalised is None else np.asarray(signalised, dtype=bool),
        elevation_m=np.zeros(n) if elevation_m is None else np.asarray(elevation_m, dtype=float),
    )


def make_links(ids, src, dst, length_m, lanes, free_flow_mps, capacity_pcu_h, jam_density_pcu_m,
               road_class, name=None) -> Links:
    m = len(ids)
    return Links(
        ids=np.asarray([str(i) for i in ids], dtype=object),
        src=np.asarray(src, dtype=np.int64),
        dst=np.asarray(dst, dtype=np.int64),
        length_m=np.asarray(length_m, dtype=float),
        lanes=np.maximum(1, np.asarray(lanes, dtype=np.int64)),
        free_flow_mps=np.asarray(free_flow_mps, dtype=float),
        capacity_pcu_h=np.asarray(capacity_pcu_h, dtype=float),
        jam_density_pcu_m=np.asarray(jam_density_pcu_m, dtype=float),
        road_class=np.asarray([str(c) for c in road_class], dtype=object),
        name=np.asarray([""] * m if name is None else [str(s) for s in name], dtype=object),
    )

"""A deterministic generator of a Vietnamese-style urban district.

The district is a grid of streets: every `arterial_every`-th line is an arterial, the rest collectors
and local streets. Inside each block run kiệt/hẻm, the narrow alleys that carry most of the
residential motorbike traffic: a north-south alley through the block and, with `alleys_per_block: 2`,
an east-west one crossing it. A river runs north-south across the district and is crossed only by a
few bridges, which is what concentrates traffic in Đà Nẵng (the Hàn) and most Vietnamese river
cities. Land is lowest along the river, with a few depressions elsewhere: those are the junctions that
flood first. Signals stand where arterials meet arterials or collectors.

The same parameters always give the same city: the generator has its own seed (`layout_seed`), apart
from the run's seed, so replications of a scenario vary the day, not the map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model import City, make_links, make_nodes
from .roads import ROAD_DEFAULTS


@dataclass(frozen=True)
class SyntheticParams:
    width_m: float = 3000.0
    height_m: float = 2000.0
    block_m: float = 250.0
    arterial_every: int = 4
    alleys_per_block: int = 1  # 0, 1 (north-south) or 2 (and east-west)
    river: bool = True
    bridges: int = 3
    depressions: int = 4
    layout_seed: int = 0
    name: str = "Quận mẫu (synthetic)"
    # Where the district's centre sits on the globe, so devices and reports get WGS84 positions:
    # by default the centre of Hải Châu, Đà Nẵng.
    anchor_lon: float = 108.2165
    anchor_lat: float = 16.0650


class _Builder:
    """Accumulates nodes and two-way links; keeps the generator's steps short."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.x: list[float] = []
        self.y: list[float] = []
        self.index: dict[str, int] = {}
        self.edges: list[tuple[int, int, str, str]] = []

    def node(self, key: str, x: float, y: float) -> int:
        if key not in self.index:
            self.index[key] = len(self.ids)
            self.ids.append(key)
            self.x.append(x)
            self.y.append(y)
        return self.index[key]

    def road(self, a: int, b: int, road_class: str, name: str) -> None:
        self.edges.append((a, b, road_class, name))


# Street names the way Vietnamese cities name them, after people and events of its history.
_STREET_NAMES = ("Trần Phú", "Lê Lợi", "Bạch Đằng", "Nguyễn Văn Linh", "Hùng Vương", "Lê Duẩn",
                 "Phan Châu Trinh", "Hoàng Diệu", "Nguyễn Chí Thanh", "Quang Trung", "Lý Thường Kiệt",
                 "Hai Bà Trưng", "Ông Ích Khiêm", "Trưng Nữ Vương", "Núi Thành", "Điện Biên Phủ")


def _street(k: int) -> str:
    base = _STREET_NAMES[k % len(_STREET_NAMES)]
    return base if k < len(_STREET_NAMES) else f"{base} {k // len(_STREET_NAMES) + 1}"


def _line_class(i: int, every: int, last: int) -> str:
    if i % every == 0 or i == last:
        return "arterial"
    return "collector" if i % 2 == 0 else "local"


def generate(p: SyntheticParams) -> City:
    nx_, ny_ = int(round(p.width_m / p.block_m)) + 1, int(round(p.height_m / p.block_m)) + 1
    if nx_ < 3 or ny_ < 3:
        raise ValueError("the district needs at least 2 blocks each way")
    rng = np.random.default_rng(p.layout_seed)
    jitter = rng.uniform(-0.06, 0.06, size=(nx_, ny_, 2)) * p.block_m
    b = _Builder()

    def grid(i: int, j: int) -> int:
        return b.node(f"g{i}_{j}", i * p.block_m + jitter[i, j, 0], j * p.block_m + jitter[i, j, 1])

    def mid(key: str, u: int, v: int) -> int:
        return b.node(key, (b.x[u] + b.x[v]) / 2, (b.y[u] + b.y[v]) / 2)

    # The river lies between two grid columns near the middle; only `bridges` rows cross it.
    river_col = nx_ // 2 - 1 if p.river else -1
    bridge_rows = set(np.linspace(0, ny_ - 1, p.bridges + 2).round().astype(int)[1:-1]) if p.river else set()

    for j in range(ny_):  # east-west streets, split at the block midpoints where alleys meet them
        cls = _line_class(j, p.arterial_every, ny_ - 1)
        for i in range(nx_ - 1):
            if i == river_col:
                if j in bridge_rows:
                    b.road(grid(i, j), grid(i + 1, j), "bridge", f"Cầu {_street(j)}")
                continue
            u, v = grid(i, j), grid(i + 1, j)
            m = mid(f"h{i}_{j}", u, v) if p.alleys_per_block >= 1 else None
            for a, c in ((u, m), (m, v)) if m is not None else ((u, v),):
                b.road(a, c, cls, _street(j))
    for i in range(nx_):  # north-south streets
        cls = _line_class(i, p.arterial_every, nx_ - 1)
        for j in range(ny_ - 1):
            u, v = grid(i, j), grid(i, j + 1)
            m = mid(f"v{i}_{j}", u, v) if p.alleys_per_block >= 2 else None
            for a, c in ((u, m), (m, v)) if m is not None else ((u, v),):
                b.road(a, c, cls, _street(ny_ + i))
    for i in range(nx_ - 1):  # alleys through the blocks
        if i == river_col:
            continue
        for j in range(ny_ - 1):
            south, north = b.index.get(f"h{i}_{j}"), b.index.get(f"h{i}_{j + 1}")
            if south is None or north is None:
                continue
            centre = mid(f"k{i}_{j}", south, north)
            alley = f"Kiệt {i + 1}/{j + 1} {_street(j)}"
            b.road(south, centre, "alley", alley)
            b.road(centre, north, "alley", alley)
            if p.alleys_per_block >= 2:
                b.road(b.index[f"v{i}_{j}"], centre, "alley", alley)
                b.road(centre, b.index[f"v{i + 1}_{j}"], "alley", alley)

    x, y = np.asarray(b.x), np.asarray(b.y)
    river_x = ((river_col + 0.5) * p.block_m) if p.river else None
    elevation = _elevation(x, y, river_x, p, rng)
    return _assemble(b, x, y, elevation, p)


def _elevation(x: np.ndarray, y: np.ndarray, river_x: float | None, p: SyntheticParams,
               rng: np.random.Generator) -> np.ndarray:
    """Metres above the river: rising 4 m per km away from it, with a few closed depressions."""
    base = 1.0 + (0.004 * np.abs(x - river_x) if river_x is not None else 3.0)
    centres = rng.uniform([0, 0], [p.width_m, p.height_m], size=(p.depressions, 2))
    for cx, cy in centres:
        d = np.hypot(x - cx, y - cy)
        base = base - 2.5 * np.exp(-((d / (0.8 * p.block_m)) ** 2))
    return np.round(base + rng.normal(0.0, 0.15, size=len(x)), 3)


def _assemble(b: _Builder, x: np.ndarray, y: np.ndarray, elevation: np.ndarray, p: SyntheticParams) -> City:
    src, dst, cls, names = [], [], [], []
    for u, v, c, name in b.edges:  # every road two-way
        src += [u, v]
        dst += [v, u]
        cls += [c, c]
        names += [name, name]
    src_a, dst_a = np.asarray(src), np.asarray(dst)
    length = np.hypot(x[dst_a] - x[src_a], y[dst_a] - y[src_a])
    defaults = [ROAD_DEFAULTS[c] for c in cls]
    lanes = np.array([d.lanes for d in defaults])
    links = make_links(
        ids=[f"{b.ids[u]}-{b.ids[v]}" for u, v in zip(src, dst)],
        src=src_a, dst=dst_a, length_m=length, lanes=lanes,
        free_flow_mps=[d.free_flow_kmh / 3.6 for d in defaults],
        capacity_pcu_h=[d.capacity_pcu_h_lane * d.lanes for d in defaults],
        jam_density_pcu_m=[d.jam_density_pcu_m_lane for d in defaults],
        road_class=cls,
        name=names,
    )
    major = np.isin(links.road_class, ("arterial", "bridge"))
    through = np.isin(links.road_class, ("arterial", "bridge", "collector"))
    n = len(b.ids)
    major_in = np.bincount(dst_a[major], minlength=n)
    through_in = np.bincount(dst_a[through], minlength=n)
    signalised = (major_in >= 3) | ((major_in >= 2) & (through_in >= 4))
    lon, lat = georeference(x, y, p.anchor_lon, p.anchor_lat)
    nodes = make_nodes(b.ids, x, y, lon=lon, lat=lat, signalised=signalised, elevation_m=elevation)
    return City(
        name=p.name, source="synthetic", nodes=nodes, links=links,
        zone_weights=_zone_weights(links, n, x, y, p),
    )


def _zone_weights(links, n: int, x: np.ndarray, y: np.ndarray, p: SyntheticParams) -> dict[str, np.ndarray]:
    """Homes along alleys and local streets, jobs along arterials and near the centre."""
    residential = np.isin(links.road_class, ("alley", "local"))
    commercial = np.isin(links.road_class, ("arterial", "collector"))
    homes = np.bincount(links.src[residential], weights=links.length_m[residential], minlength=n)
    frontage = np.bincount(links.src[commercial], weights=links.length_m[commercial], minlength=n)
    centrality = np.exp(-np.hypot(x - p.width_m / 2, y - p.height_m / 2) / max(p.width_m, p.height_m))
    return {"population": homes + 1.0, "jobs": frontage * (0.5 + centrality) + 1.0}


EARTH_RADIUS_M = 6_371_008.8


def georeference(x: np.ndarray, y: np.ndarray, anchor_lon: float = SyntheticParams.anchor_lon,
                 anchor_lat: float = SyntheticParams.anchor_lat) -> tuple[np.ndarray, np.ndarray]:
    """Local tangent plane around the anchor: metres off the district centre to degrees (error < 1 m
    over a few km, far below what a map or a report position needs)."""
    dx, dy = x - (x.min() + x.max()) / 2, y - (y.min() + y.max()) / 2
    lat = anchor_lat + np.degrees(dy / EARTH_RADIUS_M)
    lon = anchor_lon + np.degrees(dx / (EARTH_RADIUS_M * np.cos(np.radians(anchor_lat))))
    return lon, lat

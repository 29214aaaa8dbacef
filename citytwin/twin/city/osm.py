"""Road networks from OpenStreetMap: an OSM XML file, or a place name downloaded once and cached.

Both sources go through one cleaning pipeline, because a raw OSMnx graph does not simulate well in a
mesoscopic engine: its many short links make UXsim gridlock (its maintainer says as much). The steps:

1. keep motor-vehicle roads: motorway … residential, unclassified, living_street, and the service
   ways tagged service=alley (the kiệt/hẻm). Other service ways (car parks, driveways, private
   compounds) are dropped: on the Hải Châu extract they add no connectivity, only dead ends.
   Filtering comes before simplification (the graph is read unsimplified): a footway meeting a
   street would otherwise split it, and merged edges would mix footway and street tags;
2. simplify to one edge per street between junctions, project to a local metric CRS (UTM);
3. consolidate intersections within `consolidate_m` (a divided road's junction is one node) and
   drop dead ends;
4. contract links shorter than `min_link_m`, merging their two end nodes;
5. keep the largest strongly connected component (every trip can go and come back);
6. collapse parallel links between the same pair of nodes into one, keeping the higher class.

A junction is signalised when one of its OSM nodes is tagged highway=traffic_signals, or when at
least three arterial/collector links meet there and a signal lies within 2 × `consolidate_m` (OSM
mappers often tag the stop lines on the approaches, which simplification removes).

Road classes: motorway/trunk/primary (and their _link) are arterials, secondary/tertiary collectors,
residential/unclassified/living_street local streets, service=alley and streets under 3 m wide
alleys. A link tagged bridge is labelled "bridge" (what a typhoon or flood closes) but keeps the
speed, lanes and capacity of its street's class.

elevation_m is a proxy for flood exposure, since OSM carries no terrain: a node whose OSM nodes carry
an `ele` tag gets their mean; otherwise elevation_m = min(10, distance to the nearest water / 100),
with water the outlines of natural=water, waterway=river/riverbank/canal and landuse=basin features
(0 m on the Hàn river bank, 10 m from 1 km inland). With no water in the data every node gets 5 m.
"""

from __future__ import annotations

import ast
import bz2
import gzip
import heapq
import re
import unicodedata
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np
import osmnx as ox
import pyproj
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ..errors import UserInputError, problem
from .model import City, make_links, make_nodes
from .roads import ROAD_DEFAULTS

ATTRIBUTION = "© OpenStreetMap contributors"

_HIGHWAY_CLASS = {
    **dict.fromkeys(("motorway", "trunk", "primary", "motorway_link", "trunk_link", "primary_link"),
                    "arterial"),
    **dict.fromkeys(("secondary", "tertiary", "secondary_link", "tertiary_link"), "collector"),
    **dict.fromkeys(("residential", "unclassified", "living_street"), "local"),
    "service": "alley",
}
_CLASS_RANK = {"alley": 0, "local": 1, "collector": 2, "arterial": 3}
_NO_ACCESS = {"private", "no"}
_NARROW_M = 3.0  # a street narrower than this is a kiệt/hẻm that only motorbikes use
_SPEED_CAP = 1.2  # tagged limits above the class's achievable speed are not what traffic does

_WATER_TAGS = {"natural": ["water"], "waterway": ["river", "riverbank", "canal"], "landuse": ["basin"]}
_NO_WATER_ELEVATION_M = 5.0
_MAX_ELEVATION_M = 10.0
_WATER_M_PER_ELEVATION_M = 100.0

# Frontage weights per metre of road: homes line local streets and alleys, shops and offices the
# arterials and collectors; nobody lives or works on a bridge.
_POPULATION_PER_M = {"alley": 1.0, "local": 1.0, "collector": 0.3, "arterial": 0.1}
_JOBS_PER_M = {"alley": 0.1, "local": 0.2, "collector": 1.0, "arterial": 1.0}
_JOBS_PER_SIGNAL = 100.0  # a signalised junction is a commercial corner worth 100 m of frontage
_MAJOR = {"arterial", "collector"}

_NO_ROAD = "no drivable road in {what} (highway=* ways of a motor-vehicle class)"


@dataclass
class _Extras:
    """What the road graph does not carry: water outlines (lon/lat) and tagged elevations."""

    water: shapely.Geometry | None = None
    ele: dict[int, float] = field(default_factory=dict)


# --- public API ------------------------------------------------------------------------------------


def load_osm_file(path, *, name: str = "", consolidate_m: float = 15.0, min_link_m: float = 25.0) -> City:
    """A City from an OSM XML file (.osm, .osm.gz or .osm.bz2), read offline.

    consolidate_m=0 skips consolidation (and keeps dead ends); min_link_m=0 skips contraction.
    """
    path = Path(path)
    where = str(path)
    _check_distances(where, consolidate_m, min_link_m)
    extras = _scan_osm_xml(path)
    try:
        G = ox.graph_from_xml(path, simplify=False, retain_all=True)
    except ox._errors.InsufficientResponseError as exc:  # no nodes and no ways at all
        raise UserInputError(problem(where, "", _NO_ROAD.format(what="the file"))) from exc
    return _city_from_graph(G, extras, name=name or path.name.split(".")[0], source="osm_file",
                            where=where, what="the file", consolidate_m=consolidate_m, min_link_m=min_link_m)


def load_osm_place(place: str, *, cache_dir, name: str = "", consolidate_m: float = 15.0,
                   min_link_m: float = 25.0) -> City:
    """A City for a named place: downloaded from OpenStreetMap once, then read from `cache_dir`.

    The cache holds the raw drive network (`<slug>.graphml`) and the water outlines
    (`<slug>.water.wkt`); delete them to download again. A cached graph without its water file
    gives every node the no-water elevation.
    """
    where = f"place {place!r}"
    _check_distances(where, consolidate_m, min_link_m)
    cache_dir = Path(cache_dir)
    graph_path = cache_dir / f"{_slug(place)}.graphml"
    water_path = graph_path.with_suffix(".water.wkt")
    if graph_path.exists():
        G = _load_cached_graph(graph_path)
    else:
        G, water = _download(place, cache_dir)
        ox.save_graphml(G, graph_path)
        water_path.write_text(shapely.to_wkt(water) if water is not None else "", encoding="utf-8")
    extras = _Extras(water=_read_water(water_path) if water_path.exists() else None)
    return _city_from_graph(G, extras, name=name or place, source="osm_place", where=where,
                            what="the OpenStreetMap data", consolidate_m=consolidate_m, min_link_m=min_link_m)


# --- reading ---------------------------------------------------------------------------------------


def _check_distances(where: str, consolidate_m: float, min_link_m: float) -> None:
    bad = [problem(where, key, f"expected a distance >= 0 m; got {value}")
           for key, value in (("consolidate_m", consolidate_m), ("min_link_m", min_link_m)) if not value >= 0]
    if bad:
        raise UserInputError(bad)


@contextmanager
def _open_binary(path: Path):
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix, open)
    with opener(path, "rb") as f:
        yield f


def _scan_osm_xml(path: Path) -> _Extras:
    """Check that the file is OSM XML and read what OSMnx leaves out: water and `ele` tags."""
    where = str(path)
    if not path.exists():
        raise UserInputError(problem(where, "", "file not found"))
    if not path.is_file():
        raise UserInputError(problem(where, "", "expected an OSM XML file; got a directory"))
    if path.stat().st_size == 0:
        raise UserInputError(problem(where, "", "empty file; expected OSM XML (<osm> with nodes and ways)"))
    coords: dict[int, tuple[float, float]] = {}
    ele: dict[int, float] = {}
    untagged_ways: dict[int, list[int]] = {}  # candidates for members of water multipolygons
    used: set[int] = set()
    water_ways: list[list[int]] = []
    try:
        with _open_binary(path) as f:
            events = ET.iterparse(f, events=("start", "end"))
            _, root = next(events)
            if root.tag != "osm":
                raise UserInputError(problem(where, "root element", f"expected <osm> (OSM XML); got <{root.tag}>"))
            for event, el in events:
                if event != "end" or el.tag not in ("node", "way", "relation"):
                    continue
                tags = {t.get("k"): t.get("v") for t in el.iter("tag")}
                if el.tag == "node":
                    osmid = int(el.get("id"))
                    coords[osmid] = (float(el.get("lon")), float(el.get("lat")))
                    height = _first_number(tags.get("ele"))
                    if height is not None:
                        ele[osmid] = height
                elif el.tag == "way":
                    refs = [int(nd.get("ref")) for nd in el.iter("nd")]
                    used.update(refs)
                    if _is_water(tags):
                        water_ways.append(refs)
                    elif "highway" not in tags:
                        untagged_ways[int(el.get("id"))] = refs
                elif _is_water(tags):
                    water_ways.extend(untagged_ways[int(m.get("ref"))] for m in el.iter("member")
                                      if m.get("type") == "way" and int(m.get("ref")) in untagged_ways)
                root.clear()  # the file is read once; keep memory flat on a whole-city extract
    except (ET.ParseError, EOFError, OSError) as exc:
        raise UserInputError(problem(where, "", f"expected OSM XML (an .osm export); got unreadable data "
                                                f"({exc})")) from exc
    except (TypeError, ValueError) as exc:  # an id, ref, lat or lon missing or not a number
        raise UserInputError(problem(where, "", f"expected numeric ids, refs, lat and lon; got {exc}")) from exc
    missing = used - coords.keys()
    if missing:  # OSMnx would fail deep inside with a KeyError
        raise UserInputError(problem(
            where, "way.nd", f"expected every node a way uses to be in the file; got {len(missing)} missing, "
                             f"e.g. node {min(missing)} (export complete ways: openstreetmap.org/export, "
                             "or osmium extract --strategy complete_ways)"))
    lines = [[coords[r] for r in refs] for refs in water_ways]
    lines = [shapely.LineString(c) for c in lines if len(c) >= 2]
    return _Extras(water=shapely.MultiLineString(lines) if lines else None, ele=ele)


def _is_water(tags: dict[str, str]) -> bool:
    return any(tags.get(key) in values for key, values in _WATER_TAGS.items())


def _slug(place: str) -> str:
    ascii_ = unicodedata.normalize("NFKD", place.replace("Đ", "D").replace("đ", "d"))
    ascii_ = ascii_.encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9]+", "-", ascii_).strip("-") or "place"


def _load_cached_graph(graph_path: Path) -> nx.MultiDiGraph:
    try:
        return ox.load_graphml(graph_path)
    except Exception as exc:  # a truncated or foreign cache file can fail in many ways inside networkx
        raise UserInputError(problem(str(graph_path), "", f"expected a GraphML road network saved by "
                                                          f"OSMnx; got unreadable data ({exc}); delete "
                                                          "the file to download it again")) from exc


def _read_water(water_path: Path) -> shapely.Geometry | None:
    text = water_path.read_text(encoding="utf-8").strip()
    try:
        return shapely.from_wkt(text) if text else None
    except shapely.errors.GEOSException as exc:
        raise UserInputError(problem(str(water_path), "", f"expected water outlines as WKT; got unreadable "
                                                          f"data ({exc}); delete the file to download it "
                                                          "again")) from exc


@contextmanager
def _osmnx_http_cache(folder: Path):
    # OSMnx caches HTTP responses in ./cache by default; keep them with our cache, not in the cwd.
    previous = ox.settings.cache_folder
    ox.settings.cache_folder = folder
    try:
        yield
    finally:
        ox.settings.cache_folder = previous


def _download(place: str, cache_dir: Path) -> tuple[nx.MultiDiGraph, shapely.Geometry | None]:
    """The unsimplified drive network (signals on intermediate nodes survive) and the water outlines."""
    where = f"place {place!r}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        with _osmnx_http_cache(cache_dir / "http"):
            G = ox.graph_from_place(place, network_type="drive", simplify=False)
            try:
                features = ox.features_from_place(place, tags=_WATER_TAGS)
            except ox._errors.InsufficientResponseError:
                return G, None
    except (OSError, ox._errors.ResponseStatusCodeError) as exc:  # requests' errors are OSErrors
        raise UserInputError(problem(
            where, "", f"could not reach OpenStreetMap to download the road network ({exc}); on a machine "
                       "without internet, export the area as OSM XML (openstreetmap.org/export or osmium "
                       "extract) and use source osm_file with the file's path instead")) from exc
    except (ox._errors.InsufficientResponseError, TypeError) as exc:  # the geocoder's "not an area"
        raise UserInputError(problem(
            where, "", f"expected a place OpenStreetMap knows as an area with roads, such as "
                       f"'Hải Châu, Đà Nẵng, Vietnam'; got none ({exc})")) from exc
    outlines = [g.boundary if g.geom_type in ("Polygon", "MultiPolygon") else g
                for g in features.geometry if g is not None and not g.is_empty]
    return G, shapely.GeometryCollection(outlines) if outlines else None


# --- the cleaning pipeline -------------------------------------------------------------------------


def _city_from_graph(G: nx.MultiDiGraph, extras: _Extras, *, name: str, source: str, where: str, what: str,
                     consolidate_m: float, min_link_m: float) -> City:
    G = _drivable(G)
    if G.number_of_edges() == 0:
        raise UserInputError(problem(where, "", _NO_ROAD.format(what=what)))
    signals = _signal_nodes(G)
    if not G.graph.get("simplified"):
        G = ox.simplify_graph(G)
    G = ox.project_graph(G)
    crs = G.graph["crs"]
    # consolidation drops dead ends by the street_count attribute, which graph_from_xml does not set
    # and our filter has made stale
    nx.set_node_attributes(G, ox.stats.count_streets_per_node(G), name="street_count")
    if consolidate_m > 0:
        G = ox.consolidate_intersections(G, tolerance=consolidate_m, rebuild_graph=True, dead_ends=False)
    net = _Network.from_graph(G)
    net.contract_short_links(min_link_m)
    net.keep_largest_strong_component()
    net.collapse_parallel_links()
    if not net.edges:
        raise UserInputError(problem(where, "", f"no road network that trips can cross both ways in {what} "
                                                "(the drivable roads form no two-way connected part)"))
    # Consolidation merges nodes up to 2 × consolidate_m apart, so a signal at a junction's stop line
    # can lie that far from the junction's node.
    return net.to_city(name=name, source=source, crs=crs, signals=signals, extras=extras,
                       near_m=2 * consolidate_m)


def _values(attr) -> list[str]:
    """An OSM tag's values: simplified edges hold lists, and GraphML round-trips them as text."""
    if attr is None or (isinstance(attr, float) and np.isnan(attr)):
        return []
    if isinstance(attr, str) and attr.startswith("[") and attr.endswith("]"):
        try:
            attr = ast.literal_eval(attr)
        except (ValueError, SyntaxError):
            return [attr]
    return [str(v) for v in attr] if isinstance(attr, list) else [str(attr)]


def _first_number(text) -> float | None:
    match = re.search(r"\d+(?:\.\d+)?", text) if isinstance(text, str) else None
    return float(match.group()) if match else None


def _is_drivable(d: dict) -> bool:
    classes = {h for h in _values(d.get("highway")) if h in _HIGHWAY_CLASS}
    if not classes:
        return False
    if set(_values(d.get("access"))) and set(_values(d.get("access"))) <= _NO_ACCESS:
        return False
    return bool(classes - {"service"}) or "alley" in _values(d.get("service"))


def _drivable(G: nx.MultiDiGraph) -> nx.MultiDiGraph:
    H = G.copy()
    H.remove_edges_from([(u, v, k) for u, v, k, d in G.edges(keys=True, data=True) if not _is_drivable(d)])
    H.remove_nodes_from([n for n in G if H.degree(n) == 0])
    return H


def _signal_nodes(G: nx.MultiDiGraph) -> dict[int, tuple[float, float]]:
    """OSM nodes tagged as traffic signals, with lon/lat: simplification drops those mid-street."""
    return {n: (d["x"], d["y"]) for n, d in G.nodes(data=True) if "traffic_signals" in _values(d.get("highway"))}


@dataclass
class _Link:
    u: int
    v: int
    length_m: float
    base_class: str  # the street's class, which sets speed, lanes and capacity
    bridge: bool
    lanes: int
    free_flow_kmh: float
    name: str

    @property
    def rank(self) -> tuple:
        return _CLASS_RANK[self.base_class], self.lanes, -self.length_m


def _link_from_edge(u: int, v: int, d: dict) -> _Link:
    base = max((_HIGHWAY_CLASS[h] for h in _values(d.get("highway")) if h in _HIGHWAY_CLASS),
               key=_CLASS_RANK.__getitem__)
    widths = [w for w in map(_first_number, _values(d.get("width")) + _values(d.get("est_width"))) if w]
    if base == "local" and widths and min(widths) < _NARROW_M:
        base = "alley"
    defaults = ROAD_DEFAULTS[base]
    one_way = any(value in ("True", "true", "yes", "1") for value in _values(d.get("oneway")))
    tagged_lanes = [n for n in map(_first_number, _values(d.get("lanes"))) if n]
    lanes = defaults.lanes
    if tagged_lanes:
        total = int(min(tagged_lanes))
        lanes = max(1, total if one_way else total // 2)
    speed = defaults.free_flow_kmh
    limits = [_kmh(s) for s in _values(d.get("maxspeed"))]
    limits = [s for s in limits if s]
    if limits:
        speed = min(min(limits), defaults.free_flow_kmh * _SPEED_CAP)
    bridge = any(b not in ("no", "False") for b in _values(d.get("bridge")))
    names = dict.fromkeys(_values(d.get("name")))
    return _Link(u, v, float(d["length"]), base, bridge, lanes, speed, " / ".join(names))


def _kmh(maxspeed: str) -> float | None:
    value = _first_number(maxspeed)
    return value * 1.609344 if value and "mph" in maxspeed else value


class _Network:
    """Nodes and links between the OSMnx graph and the City, where short links are contracted."""

    def __init__(self, xy: dict[int, tuple[float, float]], osmids: dict[int, set[int]], edges: dict[int, _Link]):
        self.xy = xy
        self.osmids = osmids
        self.edges = edges

    @classmethod
    def from_graph(cls, G: nx.MultiDiGraph) -> _Network:
        xy, osmids = {}, {}
        for n, d in G.nodes(data=True):
            xy[n] = (float(d["x"]), float(d["y"]))
            original = d.get("osmid_original", n)
            osmids[n] = {int(o) for o in (original if isinstance(original, list) else [original])}
        links = (_link_from_edge(u, v, d) for u, v, d in G.edges(data=True) if u != v)
        return cls(xy, osmids, dict(enumerate(links)))

    def contract_short_links(self, min_link_m: float) -> None:
        """Merge the ends of every link shorter than min_link_m, shortest first.

        The end with fewer links is absorbed into the other, which keeps its position; the absorbed
        end's other links grow by the contracted length, so routes through it keep their length.
        """
        out: dict[int, set[int]] = {n: set() for n in self.xy}
        inc: dict[int, set[int]] = {n: set() for n in self.xy}
        for e, link in self.edges.items():
            out[link.u].add(e)
            inc[link.v].add(e)
        heap = [(link.length_m, e) for e, link in self.edges.items() if link.length_m < min_link_m]
        heapq.heapify(heap)
        while heap:
            length, e = heapq.heappop(heap)
            link = self.edges.get(e)
            if link is None or link.length_m != length:
                continue  # removed, or lengthened and queued again
            keep, gone = link.u, link.v
            if len(out[gone]) + len(inc[gone]) > len(out[keep]) + len(inc[keep]):
                keep, gone = gone, keep
            for f in out.pop(gone) | inc.pop(gone):
                other = self.edges[f]
                # the absorbed end's own sets are already gone
                out.get(other.u, set()).discard(f)
                inc.get(other.v, set()).discard(f)
                other.u = keep if other.u == gone else other.u
                other.v = keep if other.v == gone else other.v
                if other.u == other.v:  # the contracted link itself, or one parallel to it
                    del self.edges[f]
                    continue
                other.length_m += length
                out[other.u].add(f)
                inc[other.v].add(f)
                if other.length_m < min_link_m:
                    heapq.heappush(heap, (other.length_m, f))
            self.osmids[keep] |= self.osmids.pop(gone)
            del self.xy[gone]

    def keep_largest_strong_component(self) -> None:
        if not self.edges:
            self.xy = {}
            return
        index = {n: i for i, n in enumerate(self.xy)}
        src = [index[link.u] for link in self.edges.values()]
        dst = [index[link.v] for link in self.edges.values()]
        adjacency = coo_matrix((np.ones(len(src)), (src, dst)), shape=(len(index), len(index)))
        _, labels = connected_components(adjacency, directed=True, connection="strong")
        largest = np.bincount(labels).argmax()
        keep = {n for n, i in index.items() if labels[i] == largest}
        self.xy = {n: p for n, p in self.xy.items() if n in keep}
        self.edges = {e: link for e, link in self.edges.items() if link.u in keep and link.v in keep}

    def collapse_parallel_links(self) -> None:
        best: dict[tuple[int, int], _Link] = {}
        for link in self.edges.values():
            pair = (link.u, link.v)
            if pair not in best or link.rank > best[pair].rank:
                best[pair] = link
        self.edges = dict(enumerate(best.values()))

    def to_city(self, *, name: str, source: str, crs, signals: dict[int, tuple[float, float]],
                extras: _Extras, near_m: float) -> City:
        keys = list(self.xy)
        index = {n: i for i, n in enumerate(keys)}
        x, y = np.array([self.xy[n] for n in keys]).T
        lon, lat = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x, y)
        links = list(self.edges.values())
        src = np.array([index[link.u] for link in links])
        dst = np.array([index[link.v] for link in links])
        base = np.array([link.base_class for link in links], dtype=object)
        length = np.array([link.length_m for link in links])
        lanes = np.array([link.lanes for link in links])
        bridge = np.array([link.bridge for link in links])
        signalised = self._signalised(keys, x, y, src, dst, base, signals, crs, near_m)
        ids = np.array([str(n) for n in keys], dtype=object)
        return City(
            name=name,
            source=source,
            attribution=ATTRIBUTION,
            nodes=make_nodes(ids, x, y, lon=lon, lat=lat, signalised=signalised,
                             elevation_m=self._elevation(keys, x, y, crs, extras)),
            links=make_links(
                [f"{ids[a]}-{ids[b]}" for a, b in zip(src, dst)], src, dst, length, lanes,
                np.array([link.free_flow_kmh for link in links]) / 3.6,
                lanes * np.array([ROAD_DEFAULTS[c].capacity_pcu_h_lane for c in base]),
                np.array([ROAD_DEFAULTS[c].jam_density_pcu_m_lane for c in base]),
                np.where(bridge, "bridge", base),
                [link.name for link in links],
            ),
            zone_weights=_zone_weights(len(keys), src, dst, length, base, bridge, signalised),
        )

    def _signalised(self, keys, x, y, src, dst, base, signals, crs, near_m) -> np.ndarray:
        """A junction holding a signal node, or a major crossing with a signal on an approach nearby."""
        contains = np.array([bool(self.osmids[n] & signals.keys()) for n in keys], dtype=bool)
        if not signals:
            return contains
        major = np.isin(base, list(_MAJOR))
        neighbours: list[set[int]] = [set() for _ in keys]
        for a, b in zip(src[major], dst[major]):
            neighbours[a].add(b)
            neighbours[b].add(a)
        lon, lat = np.array(list(signals.values())).T
        sx, sy = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
        distance, _ = cKDTree(np.column_stack([sx, sy])).query(np.column_stack([x, y]))
        crossing = np.array([len(nb) >= 3 for nb in neighbours], dtype=bool)
        return contains | (crossing & (distance <= near_m))

    def _elevation(self, keys, x, y, crs, extras: _Extras) -> np.ndarray:
        if extras.water is None:
            elevation = np.full(len(keys), _NO_WATER_ELEVATION_M)
        else:
            to_metres = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
            water = shapely.transform(extras.water, lambda c: np.column_stack(to_metres.transform(c[:, 0], c[:, 1])))
            distance = shapely.distance(shapely.points(x, y), water)
            elevation = np.minimum(_MAX_ELEVATION_M, distance / _WATER_M_PER_ELEVATION_M)
        for i, n in enumerate(keys):
            tagged = [extras.ele[o] for o in self.osmids[n] if o in extras.ele]
            if tagged:
                elevation[i] = np.mean(tagged)
        return elevation


def _zone_weights(n: int, src, dst, length, base, bridge, signalised) -> dict[str, np.ndarray]:
    """Population and jobs per node from the frontage of the streets that meet there."""
    half = np.where(bridge, 0.0, length / 2)
    weights = {}
    for key, per_m in (("population", _POPULATION_PER_M), ("jobs", _JOBS_PER_M)):
        frontage = half * np.array([per_m[c] for c in base])
        weights[key] = np.bincount(src, frontage, n) + np.bincount(dst, frontage, n)
    weights["jobs"] += _JOBS_PER_SIGNAL * signalised
    for key, w in weights.items():
        if w.sum() <= 0:  # a network of bridges only: spread trips evenly rather than not at all
            weights[key] = np.ones(n)
    return weights

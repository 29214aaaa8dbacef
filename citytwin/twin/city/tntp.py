"""Benchmark networks in the TNTP format of Transportation Networks for Research.

A TNTP network is a metadata header (`<NUMBER OF NODES> 24` … `<END OF METADATA>`) and a table of
links: init and term node, capacity, length, free-flow time, BPR b and power, speed, toll, type.
Units vary between networks; for Sioux Falls the README says free-flow times are in 0.01 h "often
viewed as if they were minutes", lengths are arbitrary and equal to the free-flow times, and the
OD values are roughly hourly vehicle flows. We read free-flow times as minutes, the way the
literature and the best-known flow file's costs do (6 → 360 s), and give each link the length
a nominal 60 km/h covers in that time, so free-flow times survive exactly into the City.

`<FIRST THRU NODE>` (zones below it may not be passed through) is read and checked but not enforced:
the traffic engine has no such notion.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd

from ..errors import UserInputError, problem
from .model import City, make_links, make_nodes

ATTRIBUTION = ("Transportation Networks for Research (bstabler/TransportationNetworks), "
               "https://github.com/bstabler/TransportationNetworks")

NOMINAL_SPEED_MPS = 60.0 / 3.6
_SECONDS_PER_UNIT = 60.0  # free-flow time units, read as minutes
_LANE_CAPACITY_PCU_H = 1800.0
_JAM_DENSITY_PCU_M = 0.2
_EARTH_RADIUS_M = 6_371_008.8

_NET_COLUMNS = ("init_node", "term_node", "capacity", "length", "free_flow_time", "b", "power", "speed",
                "toll", "link_type")
_FLOW_COLUMNS = ("from", "to", "volume", "cost")
_META = re.compile(r"^\s*<([^>]+)>(.*)$")
_OD_ENTRY = re.compile(r"(\d+)\s*:\s*([^;\s]+)\s*;?")


# --- public API ------------------------------------------------------------------------------------


def load_tntp_network(net_path, *, node_path=None, name: str = "") -> City:
    """A City from a TNTP network file and its node coordinates.

    `node_path` defaults to the `_node.tntp` beside the network file. Coordinates within ±180/±90 are
    taken as lon/lat degrees (Sioux Falls' are) and projected to metres about their centroid; other
    coordinates are kept as planar x/y without lon/lat. Without a node file the nodes are laid out
    from the link lengths, for drawing only.
    """
    net = _read_net(Path(net_path))
    if node_path is None:
        sibling = net.path.with_name(net.path.name.replace("_net.tntp", "_node.tntp"))
        node_path = sibling if sibling != net.path and sibling.exists() else None
    if np.any(net.columns["free_flow_time"] <= 0):
        line = net.lines[int(np.argmax(net.columns["free_flow_time"] <= 0))]
        raise UserInputError(problem(str(net.path), f"line {line}: free_flow_time",
                                     "expected a time > 0 (a link must take time to cross); got "
                                     f"{net.columns['free_flow_time'].min():g}"))
    free_flow_s = net.columns["free_flow_time"] * _SECONDS_PER_UNIT
    capacity = net.columns["capacity"]
    src, dst = net.init - 1, net.term - 1
    n = net.nodes
    x, y, lon, lat = (_read_coordinates(Path(node_path), n) if node_path is not None
                      else (*_layout(n, src, dst, free_flow_s * NOMINAL_SPEED_MPS), None, None))
    is_zone = (np.arange(n) < net.zones).astype(float)
    m = len(src)
    return City(
        name=name or net.path.name.replace("_net.tntp", ""),
        source="tntp",
        attribution=ATTRIBUTION,
        nodes=make_nodes(range(1, n + 1), x, y, lon=lon, lat=lat),
        links=make_links(
            _link_ids(net.init, net.term), src, dst, free_flow_s * NOMINAL_SPEED_MPS,
            np.maximum(1, np.round(capacity / _LANE_CAPACITY_PCU_H)), np.full(m, NOMINAL_SPEED_MPS),
            capacity, np.full(m, _JAM_DENSITY_PCU_M), ["arterial"] * m,
        ),
        zone_weights={"population": is_zone, "jobs": is_zone.copy()} if net.zones else {},
    )


def load_tntp_bpr(net_path) -> dict[str, np.ndarray]:
    """Per link, in file order: free-flow time (s), capacity, BPR b and power, and the 1-based
    init/term node numbers, for static assignment with t = t0 (1 + b (v/c)^power)."""
    net = _read_net(Path(net_path))
    return {
        "free_flow_s": net.columns["free_flow_time"] * _SECONDS_PER_UNIT,
        "capacity": net.columns["capacity"],
        "b": net.columns["b"],
        "power": net.columns["power"],
        "init": net.init,
        "term": net.term,
    }


def read_tntp_trips(path) -> tuple[list[str], np.ndarray]:
    """Zone ids ("1" … "N") and the OD matrix (row origin, column destination) of a _trips.tntp file."""
    path = Path(path)
    where = str(path)
    lines = _read_lines(path)
    meta, body = _header(path, lines)
    zones = _int_meta(path, meta, "NUMBER OF ZONES")
    total = _float_meta(path, meta, "TOTAL OD FLOW")
    matrix = np.zeros((zones, zones))
    origin = None
    for number, line in body:
        if line.lower().startswith("origin"):
            parts = line.split()
            if len(parts) != 2:
                raise UserInputError(problem(where, f"line {number}", f"expected 'Origin N'; got {line!r}"))
            origin = _zone(path, number, "origin", parts[1], zones)
            continue
        if origin is None:
            raise UserInputError(problem(where, f"line {number}", f"expected 'Origin N' first; got {line!r}"))
        if _OD_ENTRY.sub("", line).strip():
            raise UserInputError(problem(where, f"line {number}",
                                         f"expected entries 'destination : flow;'; got {line!r}"))
        for dest, flow in _OD_ENTRY.findall(line):
            matrix[origin, _zone(path, number, "destination", dest, zones)] = _number(path, number, "flow", flow)
    if not np.isclose(matrix.sum(), total, rtol=1e-3, atol=0.0):
        raise UserInputError(problem(where, "header", f"expected <TOTAL OD FLOW> {total:g} to equal the sum of "
                                                      f"the OD flows; got a sum of {matrix.sum():g}"))
    return [str(z) for z in range(1, zones + 1)], matrix


def read_tntp_flow(path) -> pd.DataFrame:
    """A _flow.tntp file (a reference assignment) as columns from, to, volume, cost."""
    path = Path(path)
    lines = _read_lines(path)
    rows = []
    for number, line in enumerate(lines, start=1):
        fields = _fields(line)
        if not fields or (not rows and not _is_number(fields[0])):
            continue  # blank lines and the "From To Volume Cost" title
        rows.append(_row(path, number, fields, _FLOW_COLUMNS))
    if not rows:
        raise UserInputError(problem(str(path), "", "expected rows of 'from to volume cost'; got none"))
    flow = pd.DataFrame(rows, columns=list(_FLOW_COLUMNS))
    return flow.astype({"from": np.int64, "to": np.int64})


# --- parsing ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Net:
    path: Path
    nodes: int
    zones: int
    init: np.ndarray  # 1-based node numbers
    term: np.ndarray
    columns: dict[str, np.ndarray]
    lines: list[int]  # file line of each link, for messages


def _read_net(path: Path) -> _Net:
    where = str(path)
    lines = _read_lines(path)
    meta, body = _header(path, lines)
    nodes = _int_meta(path, meta, "NUMBER OF NODES")
    links = _int_meta(path, meta, "NUMBER OF LINKS")
    first_thru = _int_meta(path, meta, "FIRST THRU NODE")
    zones = _int_meta(path, meta, "NUMBER OF ZONES") if "NUMBER OF ZONES" in meta else 0
    if not 1 <= first_thru <= nodes + 1:
        raise UserInputError(problem(where, "header", f"expected <FIRST THRU NODE> in 1..{nodes + 1}; "
                                                      f"got {first_thru}"))
    rows = [(number, _row(path, number, _fields(line), _NET_COLUMNS)) for number, line in body]
    if len(rows) != links:
        raise UserInputError(problem(where, "header", f"expected <NUMBER OF LINKS> {links} to match the link "
                                                      f"table; got {len(rows)} link rows"))
    table = np.array([row for _, row in rows], dtype=float).reshape(len(rows), len(_NET_COLUMNS))
    for number, row in rows:
        for column in ("init_node", "term_node"):
            node = row[_NET_COLUMNS.index(column)]
            if node != int(node) or not 1 <= node <= nodes:
                raise UserInputError(problem(where, f"line {number}: {column}",
                                             f"expected a node number in 1..{nodes} (<NUMBER OF NODES>); "
                                             f"got {node:g}"))
    columns = {name: table[:, k] for k, name in enumerate(_NET_COLUMNS)}
    return _Net(path, nodes, zones, columns["init_node"].astype(np.int64), columns["term_node"].astype(np.int64),
                columns, [number for number, _ in rows])


def _read_lines(path: Path) -> list[str]:
    where = str(path)
    if not path.is_file():
        raise UserInputError(problem(where, "", "file not found"))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserInputError(problem(where, "", f"expected a TNTP text file; got binary data ({exc})")) from exc
    if not text.strip():
        raise UserInputError(problem(where, "", "empty file; expected a TNTP file"))
    return text.splitlines()


def _header(path: Path, lines: list[str]) -> tuple[dict[str, str], list[tuple[int, str]]]:
    """The metadata up to <END OF METADATA>, and the data lines after it (numbered from 1)."""
    meta: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        match = _META.match(line)
        if match is None:
            continue
        key = match.group(1).strip().upper()
        if key == "END OF METADATA":
            body = [(k, s.strip()) for k, s in enumerate(lines[number:], start=number + 1)]
            return meta, [(k, s) for k, s in body if s and not s.startswith("~")]
        meta[key] = match.group(2).strip()
    raise UserInputError(problem(str(path), "header", "expected <END OF METADATA> after the metadata; "
                                                      "got the end of the file"))


def _int_meta(path: Path, meta: dict[str, str], key: str) -> int:
    value = _float_meta(path, meta, key)
    if value != int(value) or value < 0:
        raise UserInputError(problem(str(path), "header", f"expected <{key}> N, a whole number; "
                                                          f"got <{key}> {meta[key]}"))
    return int(value)


def _float_meta(path: Path, meta: dict[str, str], key: str) -> float:
    if key not in meta:
        raise UserInputError(problem(str(path), "header", f"expected <{key}> N; got no such line"))
    try:
        return float(meta[key].split()[0].replace(",", ""))
    except (ValueError, IndexError):
        raise UserInputError(problem(str(path), "header", f"expected <{key}> N; got <{key}> {meta[key]}")) from None


def _fields(line: str) -> list[str]:
    return line.strip().rstrip(";").split()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _number(path: Path, number: int, column: str, text: str) -> float:
    if not _is_number(text):
        raise UserInputError(problem(str(path), f"line {number}: {column}", f"expected a number; got {text!r}"))
    return float(text)


def _row(path: Path, number: int, fields: list[str], columns: tuple[str, ...]) -> list[float]:
    if len(fields) != len(columns):
        raise UserInputError(problem(str(path), f"line {number}", f"expected {len(columns)} columns "
                                                                  f"({' '.join(columns)}); got {len(fields)}"))
    return [_number(path, number, column, text) for column, text in zip(columns, fields)]


def _zone(path: Path, number: int, what: str, text: str, zones: int) -> int:
    value = _number(path, number, what, text)
    if value != int(value) or not 1 <= value <= zones:
        raise UserInputError(problem(str(path), f"line {number}: {what}",
                                     f"expected a zone in 1..{zones} (<NUMBER OF ZONES>); got {text}"))
    return int(value) - 1


def _read_coordinates(path: Path, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """x, y in metres (and lon, lat) of nodes 1..n from a _node.tntp file."""
    where = str(path)
    coords: dict[int, tuple[float, float]] = {}
    for number, line in enumerate(_read_lines(path), start=1):
        fields = _fields(line)
        if not fields or (not coords and not _is_number(fields[0])):
            continue  # blank lines and the "Node X Y" title
        if len(fields) < 3:
            raise UserInputError(problem(where, f"line {number}", f"expected 3 columns (node X Y); got {len(fields)}"))
        node = _number(path, number, "node", fields[0])
        coords[int(node)] = (_number(path, number, "X", fields[1]), _number(path, number, "Y", fields[2]))
    missing = [k for k in range(1, n + 1) if k not in coords]
    if missing:
        raise UserInputError(problem(where, "", f"expected coordinates for nodes 1..{n}; got none for node(s) "
                                                f"{', '.join(map(str, missing[:10]))}"))
    px, py = np.array([coords[k] for k in range(1, n + 1)]).T
    if np.all(np.abs(px) <= 180) and np.all(np.abs(py) <= 90):
        return (*_equirectangular(px, py), px, py)
    return px, py, None, None


def _equirectangular(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Metres east and north of the centroid; exact enough across a city."""
    lon0, lat0 = np.radians(lon.mean()), np.radians(lat.mean())
    x = _EARTH_RADIUS_M * (np.radians(lon) - lon0) * np.cos(lat0)
    y = _EARTH_RADIUS_M * (np.radians(lat) - lat0)
    return x, y


def _layout(n: int, src: np.ndarray, dst: np.ndarray, length_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A drawing of a network that came without coordinates, scaled to its link lengths."""
    G = nx.Graph()
    G.add_nodes_from(range(n))
    G.add_edges_from(zip(src.tolist(), dst.tolist()))
    pos = nx.spring_layout(G, seed=0)
    xy = np.array([pos[k] for k in range(n)])
    drawn = np.median(np.linalg.norm(xy[src] - xy[dst], axis=1))
    xy *= np.median(length_m) / drawn if drawn > 0 else 1.0
    return xy[:, 0], xy[:, 1]


def _link_ids(init: np.ndarray, term: np.ndarray) -> list[str]:
    """`init-term`, with `#2`, `#3` … on parallel links so ids stay unique."""
    seen: dict[str, int] = {}
    ids = []
    for a, b in zip(init.tolist(), term.tolist()):
        key = f"{a}-{b}"
        seen[key] = seen.get(key, 0) + 1
        ids.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
    return ids

"""Device KPIs: coverage, real-time information, data quality, detection and warning; pure functions of the
ledger and the city.

What a device network buys the city is read from four kinds of ledger rows the device network writes:
`device.installed` (where each device is and what it sees), `device.reading` (every message that reached the
IOC, when it arrived and when the device says it sampled), `camera.alert` (a camera's analytics recognised an
event) and `ioc.alert` (what the IOC's rules raised and cleared); the ground truth they are judged against is
the hazards' own rows (`incident.start`, `flood.start`).

Choices worth knowing when reading the numbers:

- *Road* is every link but the connectors, which are modelling artefacts (zone links), not streets. Coverage
  of road length counts each direction of a two-way street, so a camera that sees a street sees both.
- *Real-time traffic information* is judged by the IOC's clock: a link has it at time g when a traffic reading
  about the link (a detector's count, a camera's counting companion, a bus GPS fix) *arrived* in the last
  `freshness_s` (age strictly below it). Device clocks are skewed, so an age measured from the device's own
  timestamp would say more about its clock than about the IOC's picture. The share is sampled at the end of
  every 5-minute slot of the run and averaged over them.
- *Completeness* is per stationary device: each device is due a reading every `interval_s` from its
  installation, at install + k·interval for k ≥ 1 strictly before the end of the run (the first full
  interval after installation; a device that also samples at its installation instant gets no credit for
  it, so a network that does and one that does not score alike). A reading belongs to the sampling instant
  nearest its observed time, `round((observed_t - install) / interval)`: a device's clock is off by a fixed
  skew, so rounding finds the right slot as long as the skew is under half an interval, where `floor` would
  put every reading of a device whose clock runs behind into the slot before. A slot counts once however many
  copies of it arrived; dropouts, dead batteries and readings still in flight at the end count against it.
  Buses report only while in service and cameras only when they see something, so neither has a grid of due
  readings: buses get their fixes and messages counted instead.
- *Late*: arrived more than one interval after it was observed. *Duplicate*: a second copy of a (device,
  slot) already delivered (for a camera, of an alert: same time, link and junction). *Out of order*:
  arrived after a reading of the same device observed later. These three are what an IOC sees in the data;
  *faulty values* (stuck, drift, burst) is the simulator's ground truth, which no IOC sees.
- *Detection time* of an incident runs from its start to the first camera alert about it at the IOC. An
  incident no camera recognised is right-censored at its end (or the end of the run), so the percentiles are
  Kaplan–Meier estimates, as in the field-reporting KPIs. Congestion has no ground-truth row in the ledger,
  so its detection time is over the events cameras recognised, from when the link began to congest.
- *Flood warning*: a flood at a gauged junction (a water-level gauge stands at that node) is warned when the
  IOC raised its `flood-gauge-level` alert on that gauge's entity in the 6 h before the flood began; the lead
  time is from the first such alert to the flood.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..city.model import City
from ..ledger import KINDS, events
from .field_reporting import km_quantiles
from .traffic import kpi

# The indicators of the Bắc Giang smart-city KPI table these measure, with their 2025 targets (%).
CAMERA_KPI = "L2.N2.PN2.01"  # public-order camera installation (camera coverage of public roads)
REALTIME_KPI = "L2.N1.PN2.01"  # real-time traffic information
WATER_KPI = "L2.N3.PN1.02"  # ICT monitoring of water pollution
AIR_KPI = "L2.N3.PN1.03"  # ICT monitoring of air pollution
NOISE_KPI = "L2.N3.PN1.04"  # ICT monitoring of noise
DRAINAGE_KPI = "L2.N3.PN1.05"  # ICT monitoring of wastewater treatment
TARGETS = {CAMERA_KPI: 50.0, REALTIME_KPI: 30.0, WATER_KPI: 30.0, AIR_KPI: 30.0, NOISE_KPI: 30.0,
           DRAINAGE_KPI: 30.0}

TYPES = ("detector", "camera", "air", "noise", "water_level", "rain_gauge", "bus")  # the report's order
TRAFFIC_TYPES = ("detector", "bus")  # readings that tell the IOC about a link's traffic
UNGRIDDED_TYPES = ("camera", "bus")  # no grid of due readings: they report events, or only in service
EVENT_TYPES = ("camera",)  # one message per event seen, however many fall in one sampling interval
VALUE_FAULTS = ("stuck", "drift", "burst")
GRID_S = 300.0  # the real-time share is sampled every 5 minutes
FLOOD_RULE = "flood-gauge-level"  # the IOC rule that warns of a gauge above its level
WARNING_LEVEL_M = 0.10  # the level that rule raises at (citytwin.ioc.core.rules)
WARNING_WINDOW_S = 6 * 3600.0  # an alert earlier than this before a flood is about something else
WARNED_AHEAD_S = 900.0  # a warning at least this early leaves time to act
MATCH_TOLERANCE_S = 1.0  # an alert's truth_t may differ from the ground truth's start by float noise


def device_kpis(table: pa.Table, city: City, *, duration_s: float, freshness_s: float,
                flood_prone: np.ndarray | None) -> dict | None:
    """KPIs, series and tables of the device network; None when the ledger has no `device.installed` row.

    `duration_s` is the end of the run (what is still undetected is censored there, due readings stop
    there); `freshness_s` the age under which a link's traffic information counts as real-time (the
    scenario's `devices.freshness`); `flood_prone` the junctions the hazard model floods, as a boolean mask
    over the city's nodes or as node indices.
    """
    table = device_rows(table)
    installed = installed_devices(table)
    if installed.empty:
        return None
    end = float(duration_s)
    readings = reading_quality(table, installed, end)
    road = public_road(city)
    camera_links = covered_links(installed, city, "camera")
    incidents = incident_detections(table, end)

    grid, share = realtime_share(readings, city, road, end, freshness_s)
    realtime = _indicator(REALTIME_KPI, _round(float(share.mean())) if len(share) else None,
                          f"{REALTIME_KPI} Road links with real-time traffic information (a reading arrived in "
                          f"the last {freshness_s / 60:g} min), time-average")
    out: dict = _coverage_kpis(installed, city, road, camera_links, incidents, flood_prone, realtime)
    by_type = _type_table(installed, readings, table, end)
    out.update(_quality_kpis(readings, by_type))
    out.update(_detection_kpis(incidents, congestion_detections(table)))
    out.update(_flood_kpis(flood_warnings(table)))
    ioc_alerts = _ioc_alert_table(table)
    out["ioc_alerts_raised"] = kpi(int(sum(r["raised"] for r in ioc_alerts)), "alerts", "IOC alerts raised")

    series = {
        "realtime_share": {"unit": "%", "label": "Road links with real-time traffic information",
                           "x": grid.tolist(), "values": [_round(v) for v in share]},
    }
    tables = {
        "by_type": by_type,
        "ioc_alerts": ioc_alerts,
        "camera_alerts": _camera_alert_table(table),
        "camera_fleets": camera_fleet_table(table, city, road, end),
        "faults": _fault_table(table),
    }
    return {"kpis": out, "series": series, "tables": tables}


# -- helpers ---------------------------------------------------------------------------------------------

KINDS_READ = ("device.installed", "device.reading", "device.fault", "camera.alert", "ioc.alert", "incident.start",
              "flood.start")
_SLIM = b"citytwin.device_rows"  # marks a table already cut down to those


def device_rows(table: pa.Table) -> pa.Table:
    """The rows and columns these KPIs read. Selecting the columns before filtering the rows saves
    copying the ledger's other fifty columns for every kind read (the ledger's `events` filters first)."""
    if (table.schema.metadata or {}).get(_SLIM) == b"1":
        return table
    columns = {"t", "kind", "subject", "duration_s"}
    for kind in KINDS_READ:
        columns.update(KINDS[kind])
    slim = table.select([name for name in table.column_names if name in columns])
    slim = slim.filter(pc.is_in(slim["kind"], value_set=pa.array(KINDS_READ, pa.string())))
    return slim.replace_schema_metadata({**(slim.schema.metadata or {}), _SLIM: b"1"})


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def _pct(part: float, whole: float) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def _minutes(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 60.0, 2)


def _indicator(code: str, value, label: str) -> dict:
    return {**kpi(value, "%", label), "indicator": code, "target": TARGETS[code]}


def type_order(types) -> list[str]:
    """Device types in the report's order, any unknown ones after."""
    seen = set(types)
    return [t for t in TYPES if t in seen] + sorted(seen - set(TYPES))


def node_mask(nodes: np.ndarray | None, n: int) -> np.ndarray:
    """A boolean mask over n nodes from a mask or from node indices (None: none)."""
    if nodes is None:
        return np.zeros(n, bool)
    nodes = np.asarray(nodes)
    if nodes.dtype == bool:
        if len(nodes) != n:
            raise ValueError(f"a node mask of {len(nodes)} values for {n} nodes")
        return nodes.copy()
    mask = np.zeros(n, bool)
    mask[nodes.astype(np.int64)] = True
    return mask


def public_road(city: City) -> np.ndarray:
    """Links that are streets: every link but the connectors (all links if the city has nothing else)."""
    real = np.asarray(city.links.road_class != "connector", bool)
    return real if real.any() else np.ones(len(city.links), bool)


# -- what is installed where -----------------------------------------------------------------------------

def installed_devices(table: pa.Table) -> pd.DataFrame:
    """One row per device (its first `device.installed` row): `subject` is the device id."""
    installed = events(table, "device.installed")
    return installed.drop_duplicates("subject", keep="first").reset_index(drop=True)


def _split_ids(covers: pd.Series) -> list[str]:
    return " ".join(covers.dropna().astype(str)).split()


def covered_links(installed: pd.DataFrame, city: City, device_type: str) -> np.ndarray:
    """Boolean mask of the links the devices of one type cover (ids the city does not know are ignored)."""
    index = city.link_index()
    mask = np.zeros(len(city.links), bool)
    ids = _split_ids(installed.loc[installed["device_type"] == device_type, "covers"])
    mask[[index[i] for i in ids if i in index]] = True
    return mask


def covered_nodes(installed: pd.DataFrame, city: City, device_type: str) -> np.ndarray:
    index = city.node_index()
    mask = np.zeros(len(city.nodes), bool)
    ids = _split_ids(installed.loc[installed["device_type"] == device_type, "covers"])
    mask[[index[i] for i in ids if i in index]] = True
    return mask


def _coverage_kpis(installed: pd.DataFrame, city: City, road: np.ndarray, camera_links: np.ndarray,
                   incidents: pd.DataFrame, flood_prone, realtime: dict) -> dict:
    length = city.links.length_m
    road_m = float(length[road].sum())
    on_camera = incidents["covered"].to_numpy(dtype=bool) if len(incidents) else np.zeros(0, bool)
    n = len(city.nodes)
    population = city.zone_weights.get("population")
    weights = np.ones(n) if population is None or not np.sum(population) > 0 else np.asarray(population, float)
    prone = node_mask(flood_prone, n)
    gauged = covered_nodes(installed, city, "water_level")

    types = set(installed["device_type"])

    def weighted(device_type: str) -> float | None:  # None: the scenario has no such sensors, not 0 %
        if device_type not in types:
            return None
        return _pct(float(weights[covered_nodes(installed, city, device_type)].sum()), float(weights.sum()))

    water = _pct(int((gauged & prone).sum()), int(prone.sum())) if "water_level" in types else None
    who = "population-weighted" if population is not None else "share of junctions"
    return {
        "devices": kpi(int(len(installed)), "devices", "Devices installed"),
        "camera_road_coverage": _indicator(
            CAMERA_KPI, _pct(float(length[camera_links & road].sum()), road_m) if "camera" in types else None,
            f"{CAMERA_KPI} Road length in view of a camera"),
        "camera_incident_coverage": kpi(_pct(int(on_camera.sum()), len(on_camera)), "%",
                                        "Incidents on a link in view of a camera"),
        "realtime_traffic_info": realtime,
        "air_coverage": _indicator(AIR_KPI, weighted("air"),
                                   f"{AIR_KPI} Air-quality monitoring coverage ({who})"),
        "noise_coverage": _indicator(NOISE_KPI, weighted("noise"),
                                     f"{NOISE_KPI} Noise monitoring coverage ({who})"),
        "water_coverage": _indicator(WATER_KPI, water,
                                     f"{WATER_KPI} Water monitoring: flood-prone junctions covered by a "
                                     "water-level gauge (drainage and flood monitoring, not water quality)"),
        "drainage_coverage": _indicator(DRAINAGE_KPI, water,
                                        f"{DRAINAGE_KPI} Drainage monitoring: flood-prone junctions covered by "
                                        "a water-level gauge (the twin has no wastewater sensors)"),
    }


# -- readings: real-time information and data quality ---------------------------------------------------

def reading_quality(table: pa.Table, installed: pd.DataFrame, end: float) -> pd.DataFrame:
    """Every `device.reading` row in arrival order with its device's installation and interval, its
    sampling slot and what is wrong with it: `late`, `duplicate`, `out_of_order`, `faulty`, and `due`
    (a first copy of a slot the device was due to deliver)."""
    r = events(table, "device.reading", ("device_type", "fleet", "observed_t", "fault", "link", "node", "value"))
    r = r.reset_index(drop=True)
    device = lookup(r["subject"], installed["subject"])  # -1: a device with no installation row
    known = device >= 0
    install_t = np.where(known, installed["t"].to_numpy(dtype=float)[device], np.nan)
    interval = np.where(known, installed["interval_s"].to_numpy(dtype=float)[device], np.nan)
    types = installed["device_type"].to_numpy(dtype=object)
    r["device_type"] = np.where(known, types[device], r["device_type"].fillna("unknown").to_numpy(dtype=object))
    t = r["t"].to_numpy(dtype=float)
    observed = r["observed_t"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        slot = np.rint((observed - install_t) / interval)
        r["late"] = (t - observed) > interval
    r["slot"] = slot
    r["install_t"], r["interval_s"] = install_t, interval
    r = r.sort_values("t", kind="stable")  # arrival order; rows at one time keep their ledger order
    has_slot = np.isfinite(r["slot"].to_numpy())
    # A camera sends an alert per event, several in one evaluation: its copy is a repeat of the same alert
    # (the same event, seen at the same time), not a second message in a sampling slot.
    events_only = r["device_type"].isin(EVENT_TYPES).to_numpy()
    same_slot = r.duplicated(["subject", "slot"], keep="first").to_numpy()
    r["cause"], r["truth_t"] = _alert_of(table, r)
    same_alert = r.duplicated(["subject", "observed_t", "cause", "link", "node", "truth_t"], keep="first").to_numpy()
    r["duplicate"] = np.where(events_only, same_alert, has_slot & same_slot)
    seen_latest = r.groupby("subject", sort=False)["observed_t"].cummax()
    previous = seen_latest.groupby(r["subject"], sort=False).shift()
    r["out_of_order"] = (r["observed_t"] < previous).to_numpy(dtype=bool)
    r["faulty"] = r["fault"].isin(VALUE_FAULTS).to_numpy()
    gridded = ~r["device_type"].isin(UNGRIDDED_TYPES).to_numpy()
    s = r["slot"].to_numpy()
    with np.errstate(invalid="ignore"):
        in_range = (s >= 1) & (r["install_t"].to_numpy() + s * r["interval_s"].to_numpy() < end)
    r["due"] = gridded & has_slot & in_range & ~r["duplicate"].to_numpy()
    return r


def _alert_of(table: pa.Table, readings: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The cause and truth_t of the camera alert each reading carries (None and NaN for other readings).
    The network writes a camera's reading and its `camera.alert` row for every delivered alert, at the same
    time and in the same order, so the k-th of a camera's rows at one time pairs with the k-th of the other."""
    cause = np.full(len(readings), None, dtype=object)
    truth = np.full(len(readings), np.nan)
    alerts = events(table, "camera.alert", ("cause", "truth_t"))
    if alerts.empty or readings.empty:
        return cause, truth
    key = ["subject", "t", "k"]
    alerts = alerts.assign(k=alerts.groupby(["subject", "t"]).cumcount())
    mine = readings[["subject", "t"]].assign(row=np.arange(len(readings)))
    mine = mine[readings["device_type"].isin(EVENT_TYPES).to_numpy()]
    mine = mine.assign(k=mine.groupby(["subject", "t"]).cumcount())
    paired = mine.merge(alerts[key + ["cause", "truth_t"]], on=key, how="inner")
    rows = paired["row"].to_numpy()
    cause[rows] = paired["cause"].to_numpy(dtype=object)
    truth[rows] = paired["truth_t"].to_numpy(dtype=float)
    return cause, truth


def lookup(values: pd.Series, keys) -> np.ndarray:
    """Position of each value among `keys` (-1 where absent). Factorising first looks each distinct value
    up once, which matters for hundreds of thousands of rows naming a few thousand devices or links."""
    codes, uniques = pd.factorize(values.astype(object), use_na_sentinel=True)
    found = pd.Index(pd.Series(keys).astype(str).to_numpy(dtype=object)).get_indexer(
        pd.Index(uniques).astype(str)) if len(uniques) else np.zeros(0, np.int64)
    return np.where(codes >= 0, found[codes] if len(found) else -1, -1).astype(np.int64)


def due_readings(install_t: np.ndarray, interval_s: np.ndarray, end: float) -> np.ndarray:
    """Readings each device is due: sampling instants install + k·interval, k >= 1, before `end`."""
    with np.errstate(invalid="ignore", divide="ignore"):
        q = (end - np.asarray(install_t, float)) / np.asarray(interval_s, float)
    due = np.maximum(np.ceil(q - 1e-9) - 1.0, 0.0)
    return np.where(np.isfinite(due), due, 0.0).astype(np.int64)


def realtime_share(readings: pd.DataFrame, city: City, road: np.ndarray, end: float,
                   freshness_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(grid times, % of road links with a traffic reading that arrived in (g - freshness_s, g]) at the
    end of every 5-minute slot of the run.

    Each reading keeps its link fresh over the grid points in [t, t + freshness_s); readings of a link are
    sorted by arrival, so clipping each one's span to start after the previous one's end makes the spans
    of a link disjoint and a difference array counts fresh links in one pass."""
    grid = np.arange(GRID_S, end + 1e-9, GRID_S) if end >= GRID_S else np.array([end] if end > 0 else [])
    n_road = int(road.sum())
    if not len(grid) or not n_road:
        return grid, np.zeros(len(grid))
    traffic = readings[readings["device_type"].isin(TRAFFIC_TYPES).to_numpy() & readings["link"].notna().to_numpy()]
    link = lookup(traffic["link"], city.links.ids)
    keep = link >= 0
    keep[keep] = road[link[keep]]
    link, t = link[keep], traffic["t"].to_numpy(dtype=float)[keep]
    order = np.lexsort((t, link))
    link, t = link[order], t[order]
    a = np.searchsorted(grid, t, side="left")  # first grid point at or after arrival
    b = np.searchsorted(grid, t + freshness_s, side="left")  # first one where it is too old
    same = np.append(False, link[1:] == link[:-1])
    previous_b = np.where(same, np.append(0, b[:-1]), 0)
    a = np.maximum(a, previous_b)
    piece = b > a
    diff = np.bincount(a[piece], minlength=len(grid) + 1) - np.bincount(b[piece], minlength=len(grid) + 1)
    fresh = np.cumsum(diff)[: len(grid)]
    return grid, 100.0 * fresh / n_road


def _type_table(installed: pd.DataFrame, readings: pd.DataFrame, table: pa.Table, end: float) -> list[dict]:
    """Per device type: devices, messages, readings due and delivered, completeness, and the shares of
    messages late, duplicated, out of order and with faulty values. Cameras' messages are their alerts
    when the ledger has no `device.reading` row of theirs."""
    installed = installed.assign(due=due_readings(installed["t"], installed["interval_s"], end))
    by_type = readings.groupby("device_type", sort=False)
    camera_alerts = len(events(table, "camera.alert", []))
    rows = []
    present = set(installed["device_type"].dropna().unique()) | set(readings["device_type"].unique())
    for device_type in type_order(present):
        inst = installed[installed["device_type"] == device_type]
        r = by_type.get_group(device_type) if device_type in by_type.groups else readings.iloc[:0]
        messages = len(r)
        if device_type == "camera" and messages == 0:
            messages = camera_alerts
        gridded = device_type not in UNGRIDDED_TYPES
        due = int(inst["due"].sum()) if gridded else None
        # buses: their fixes (each counted once); cameras report events, which have no count to reach
        delivered = (int(r["due"].sum()) if gridded else int((~r["duplicate"]).sum()) if device_type == "bus"
                     else None)
        rows.append({
            "device_type": device_type,
            "devices": int(len(inst)),
            "messages": int(messages),
            "due": due,
            "delivered": delivered,
            "completeness": _pct(delivered, due) if gridded else None,
            "late": _pct(int(r["late"].sum()), len(r)),
            "duplicate": _pct(int(r["duplicate"].sum()), len(r)),
            "out_of_order": _pct(int(r["out_of_order"].sum()), len(r)),
            "faulty": _pct(int(r["faulty"].sum()), len(r)),
        })
    return rows


def _quality_kpis(readings: pd.DataFrame, by_type: list[dict]) -> dict:
    n = len(readings)
    out = {"messages": kpi(n, "messages", "Device messages received by the IOC")}
    for row in by_type:
        if row["completeness"] is not None:
            name = row["device_type"].replace("_", " ")
            out[f"completeness_{row['device_type']}"] = kpi(
                row["completeness"], "%", f"Completeness, {name}: due readings delivered (faults count against)")
    out["readings_late"] = kpi(_pct(int(readings["late"].sum()), n), "%",
                               "Readings late (arrived more than one interval after sampling)")
    out["readings_duplicate"] = kpi(_pct(int(readings["duplicate"].sum()), n), "%", "Readings duplicated")
    out["readings_out_of_order"] = kpi(_pct(int(readings["out_of_order"].sum()), n), "%",
                                       "Readings out of order (arrived after a later-sampled one)")
    out["readings_faulty"] = kpi(_pct(int(readings["faulty"].sum()), n), "%",
                                 "Readings with faulty values (stuck, drift, burst; ground truth)")
    bus = next((row for row in by_type if row["device_type"] == "bus"), None)
    if bus is not None:
        out["bus_vehicles"] = kpi(bus["devices"], "buses", "Buses that ran (GPS devices)")
        out["bus_messages"] = kpi(bus["messages"], "messages", "Bus GPS messages received")
        out["bus_fixes"] = kpi(bus["delivered"], "fixes", "Bus GPS fixes received (each counted once)")
    return out


# -- detection by cameras --------------------------------------------------------------------------------

def incident_detections(table: pa.Table, end: float) -> pd.DataFrame:
    """Each incident with its first camera alert at the IOC: `link`, `start_t`, `end_t` (its end, at most
    the run's), `first_alert_t` (NaN: not recognised), `detected`, `covered` (its link is in a camera's
    view) and `time_s`: detection time, or for the undetected the time until it was censored."""
    table = device_rows(table)
    inc = events(table, "incident.start", ("duration_s",)).reset_index(drop=True)
    duration = inc["duration_s"].to_numpy(dtype=float)
    start = inc["t"].to_numpy(dtype=float)
    out = pd.DataFrame({
        "link": inc["subject"].astype(str), "start_t": start,
        "end_t": np.minimum(np.where(np.isfinite(duration), start + duration, end), end),
    })
    alerts = events(table, "camera.alert", ("cause", "link", "truth_t"))
    alerts = alerts[alerts["cause"] == "incident"]
    out["first_alert_t"] = _first_alerts(out, alerts)
    installed = installed_devices(table)
    cameras = set(_split_ids(installed.loc[installed["device_type"] == "camera", "covers"]))
    out["covered"] = out["link"].isin(cameras)
    out["detected"] = np.isfinite(out["first_alert_t"].to_numpy())
    done = np.where(out["detected"], out["first_alert_t"], np.maximum(out["end_t"], out["start_t"]))
    out["time_s"] = np.maximum(done - out["start_t"].to_numpy(), 0.0)
    return out


def _first_alerts(incidents: pd.DataFrame, alerts: pd.DataFrame) -> np.ndarray:
    """First alert time per incident. An alert is about the incident on its link that began last at or
    before the alert's truth_t (its arrival time if it has none), and not after that incident ended."""
    first = np.full(len(incidents), np.nan)
    if incidents.empty or alerts.empty:
        return first
    a = alerts.assign(key_t=alerts["truth_t"].fillna(alerts["t"]).astype(float) + MATCH_TOLERANCE_S,
                      link=alerts["link"].astype(str))
    i = incidents.assign(row=np.arange(len(incidents)))
    matched = pd.merge_asof(a.sort_values("key_t"), i.sort_values("start_t"), left_on="key_t",
                            right_on="start_t", by="link", direction="backward")
    matched = matched[matched["row"].notna() & (matched["key_t"] <= matched["end_t"] + 2 * MATCH_TOLERANCE_S)]
    earliest = matched.groupby("row")["t"].min()
    first[earliest.index.to_numpy(dtype=np.int64)] = earliest.to_numpy(dtype=float)
    return first


def camera_fleet_table(table: pa.Table, city: City, road: np.ndarray, end: float) -> list[dict]:
    """Each camera fleet on its own (placements compared on the same traffic and incidents): road length
    and incidents in view, incidents recognised and how fast."""
    installed = installed_devices(table)
    cameras = installed[installed["device_type"] == "camera"]
    length = city.links.length_m
    rows = []
    for fleet in dict.fromkeys(cameras["fleet"].astype(str)):
        own = pc.or_(pc.invert(pc.is_in(table["kind"], pa.array(["device.installed", "camera.alert"]))),
                     pc.fill_null(pc.equal(table["fleet"], fleet), False))
        incidents = incident_detections(table.filter(own), end)
        links = covered_links(cameras[cameras["fleet"].astype(str) == fleet], city, "camera")
        detected = incidents["detected"].to_numpy(dtype=bool)
        p50, = km_quantiles(incidents["time_s"].to_numpy(dtype=float), detected, (50,))
        rows.append({"fleet": fleet, "cameras": int((cameras["fleet"].astype(str) == fleet).sum()),
                     "road_coverage": _pct(float(length[links & road].sum()), float(length[road].sum())),
                     "incident_coverage": _pct(int(incidents["covered"].sum()), len(incidents)),
                     "incidents_detected": _pct(int(detected.sum()), len(detected)),
                     "detection_p50_min": _minutes(p50)})
    return rows


def congestion_detections(table: pa.Table) -> pd.DataFrame:
    """Each congestion event cameras recognised (a link and when it began to congest) with the time from
    then to its first alert at the IOC."""
    table = device_rows(table)
    alerts = events(table, "camera.alert", ("cause", "link", "truth_t"))
    alerts = alerts[(alerts["cause"] == "congestion") & alerts["truth_t"].notna()]
    first = alerts.groupby(["link", "truth_t"], as_index=False)["t"].min()
    first = first.rename(columns={"t": "first_alert_t"})
    first["time_s"] = np.maximum(first["first_alert_t"] - first["truth_t"], 0.0)
    return first


def km_curve(durations, observed) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan–Meier cumulative share detected by each observed duration: (durations, 1 - S) as steps."""
    d = np.asarray(durations, float)
    e = np.asarray(observed, bool)
    if not e.any():
        return np.zeros(0), np.zeros(0)
    order = np.lexsort((~e, d))
    d, e = d[order], e[order]
    at_risk = len(d) - np.arange(len(d))
    cdf = 1.0 - np.cumprod(np.where(e, 1.0 - 1.0 / at_risk, 1.0))
    return d[e], cdf[e]


def _detection_kpis(incidents: pd.DataFrame, congestion: pd.DataFrame) -> dict:
    d = incidents["time_s"].to_numpy(dtype=float)
    e = incidents["detected"].to_numpy(dtype=bool)
    p50, p90 = km_quantiles(d, e, (50, 90))
    c = congestion["time_s"].to_numpy(dtype=float)
    c50, c90 = km_quantiles(c, np.ones(len(c), bool), (50, 90)) if len(c) else (None, None)
    return {
        "incidents_detected": kpi(_pct(int(e.sum()), len(e)), "%", "Incidents recognised by a camera"),
        "incident_detection_p50": kpi(_minutes(p50), "min",
                                      "Incident detection time, p50 (start to first camera alert; Kaplan–Meier)"),
        "incident_detection_p90": kpi(_minutes(p90), "min",
                                      "Incident detection time, p90 (start to first camera alert; Kaplan–Meier)"),
        "congestion_events_detected": kpi(int(len(c)), "events", "Congestion events recognised by a camera"),
        "congestion_detection_p50": kpi(_minutes(c50), "min",
                                        "Congestion detection time, p50 (recognised events; onset to first alert)"),
        "congestion_detection_p90": kpi(_minutes(c90), "min",
                                        "Congestion detection time, p90 (recognised events; onset to first alert)"),
    }


# -- flood warnings --------------------------------------------------------------------------------------

def entity_device(entity_ids: pd.Series) -> pd.Series:
    """The device id of an NGSI-LD entity id (`urn:ngsi-ld:FloodMonitoring:wl-0003` -> `wl-0003`)."""
    return entity_ids.astype(str).str.rsplit(":", n=1).str[-1]


def flood_warnings(table: pa.Table) -> pd.DataFrame:
    """Each flood at a gauged junction: `node`, `flood_t`, `gauges` (space-separated ids), `warning_t` (the
    first flood-gauge-level alert raised on one of the node's gauges in the 6 h before; NaN: none), `warned`,
    `lead_s`."""
    table = device_rows(table)
    installed = installed_devices(table)
    gauges = installed[(installed["device_type"] == "water_level") & installed["node"].notna()]
    gauge_node = dict(zip(gauges["subject"].astype(str), gauges["node"].astype(str)))
    floods = events(table, "flood.start", ())
    floods = floods[floods["subject"].isin(set(gauge_node.values()))].reset_index(drop=True)
    out = pd.DataFrame({"node": floods["subject"].astype(str), "flood_t": floods["t"].astype(float)})
    out["gauges"] = out["node"].map(gauges.groupby("node")["subject"].agg(lambda s: " ".join(sorted(s))))
    alerts = events(table, "ioc.alert", ("rule", "status"))
    alerts = alerts[(alerts["rule"] == FLOOD_RULE) & (alerts["status"] == "raised")]
    node = entity_device(alerts["subject"]).map(gauge_node)
    warn = pd.DataFrame({"node": node[node.notna()].astype(str), "warning_t": alerts["t"][node.notna()]})
    out["warning_t"] = np.nan
    if len(out) and len(warn):
        pairs = out.reset_index().merge(warn, on="node", suffixes=("_none", ""))
        ahead = pairs["flood_t"] - pairs["warning_t"]
        pairs = pairs[(ahead >= 0) & (ahead <= WARNING_WINDOW_S)]
        out["warning_t"] = pairs.groupby("index")["warning_t"].min().reindex(out.index).astype(float)
    out["warned"] = out["warning_t"].notna()
    out["lead_s"] = out["flood_t"] - out["warning_t"]
    return out


def _flood_kpis(floods: pd.DataFrame) -> dict:
    n = len(floods)
    lead = floods["lead_s"].dropna().to_numpy(dtype=float)
    p50 = km_quantiles(lead, np.ones(len(lead), bool), (50,))[0] if len(lead) else None
    return {
        "floods_gauged": kpi(n, "floods", "Floods at junctions with a water-level gauge"),
        "floods_warned": kpi(_pct(len(lead), n), "%",
                             "Floods at gauged junctions the IOC warned of (gauge alert in the 6 h before)"),
        "floods_warned_15min": kpi(_pct(int((lead >= WARNED_AHEAD_S).sum()), n), "%",
                                   f"Floods at gauged junctions warned {WARNED_AHEAD_S / 60:g} min or more ahead"),
        "flood_lead_p50": kpi(_minutes(p50), "min", "Flood warning lead time, p50 (warned floods)"),
    }


# -- tables ----------------------------------------------------------------------------------------------

def _ioc_alert_table(table: pa.Table) -> list[dict]:
    """IOC alerts by category: raised, cleared, on how many entities, by which rules."""
    alerts = events(table, "ioc.alert", ("rule", "category", "status"))
    if alerts.empty:
        return []
    alerts = alerts.assign(category=alerts["category"].fillna("—"), rule=alerts["rule"].fillna("—"))
    rows = []
    for category, a in alerts.groupby("category", sort=True):
        raised = a[a["status"] == "raised"]
        rows.append({"category": str(category), "raised": int(len(raised)),
                     "cleared": int((a["status"] == "cleared").sum()),
                     "entities": int(raised["subject"].nunique()),
                     "rules": ", ".join(sorted(set(a["rule"].astype(str))))})
    return sorted(rows, key=lambda r: (-r["raised"], r["category"]))


def _camera_alert_table(table: pa.Table) -> list[dict]:
    """Camera alerts by cause: alerts, the events they are about, and the delay from event to alert."""
    alerts = events(table, "camera.alert", ("cause", "link", "node", "truth_t"))
    rows = []
    for cause, a in alerts.groupby(alerts["cause"].fillna("—"), sort=True):
        delay = (a["t"] - a["truth_t"]).dropna().to_numpy(dtype=float)
        p50 = km_quantiles(delay, np.ones(len(delay), bool), (50,))[0] if len(delay) else None
        where = a["link"].fillna(a["node"]).fillna("")
        rows.append({"cause": str(cause), "alerts": int(len(a)), "cameras": int(a["subject"].nunique()),
                     "events": int(pd.DataFrame({"w": where, "t": a["truth_t"]}).drop_duplicates().shape[0]),
                     "delay_p50_min": _minutes(p50)})
    return rows


def _fault_table(table: pa.Table) -> list[dict]:
    """Device faults by type and cause: how many began and on how many devices."""
    faults = events(table, "device.fault", ("device_type", "cause", "duration_s"))
    if faults.empty:
        return []
    faults = faults.assign(device_type=faults["device_type"].fillna("unknown"), cause=faults["cause"].fillna("—"))
    rows = []
    for (device_type, cause), f in faults.groupby(["device_type", "cause"], sort=False):
        lasting = f["duration_s"].dropna()
        rows.append({"device_type": str(device_type), "cause": str(cause), "faults": int(len(f)),
                     "devices": int(f["subject"].nunique()),
                     "mean_duration_min": _minutes(float(lasting.mean())) if len(lasting) else None,
                     "for_good": int(f["duration_s"].isna().sum())})
    order = {t: i for i, t in enumerate(TYPES)}
    return sorted(rows, key=lambda r: (order.get(r["device_type"], len(TYPES)), r["device_type"], r["cause"]))

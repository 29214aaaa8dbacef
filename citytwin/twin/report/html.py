"""The run report: one self-contained HTML file an evaluator can open offline or send on.

Everything is inline (CSS, figures as base64 PNG, no script, no external address), so the file reads
the same on a machine with no network and survives being mailed as an attachment. Every number and
figure comes from the ledger and the KPIs computed from it; the report adds no state of its own.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from html import escape
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.spatial import cKDTree

from citytwin.twin.city.model import City
from citytwin.twin.kpi.devices import (FLOOD_RULE, REALTIME_KPI, TARGETS, WARNED_AHEAD_S, WARNING_LEVEL_M,
                                      WARNING_WINDOW_S, congestion_detections, covered_links, device_rows,
                                      entity_device, flood_warnings, incident_detections, installed_devices,
                                      km_curve, type_order)
from citytwin.twin.kpi.field_reporting import problem_outcomes
from citytwin.twin.ledger import KINDS
from citytwin.twin.report import figures
from citytwin.twin.report.common import CSS, format_value
from citytwin.twin.report.common import facts_table as _facts_table
from citytwin.twin.report.common import img as _img
from citytwin.twin.report.figures import Hazard, clock_label, parse_clock

# start/end event kinds of each hazard: (timeline kind, whether the event opens an episode)
HAZARD_EVENTS: dict[str, tuple[str, bool]] = {
    "incident.start": ("incident", True),
    "incident.end": ("incident", False),
    "rain.start": ("rain", True),
    "rain.end": ("rain", False),
    "flood.start": ("flood", True),
    "flood.end": ("flood", False),
    "link.closed": ("closure", True),
    "link.reopened": ("closure", False),
}
LINK_HAZARDS = ("incident", "closure")
BUSIEST_LINKS = 10



def write_report(path: str | Path, *, city: City, ledger: pa.Table, kpis: dict[str, Any],
                 title: str | None = None) -> Path:
    """Write the run's HTML report to `path` and return it. `ledger` is the table in the ledger schema."""
    path = Path(path)
    start_s = parse_clock(kpis.get("start_clock") or "00:00")
    duration_s = _duration(kpis, ledger)
    peak_t, speeds = peak_speeds(ledger, city, (kpis.get("peak") or {}).get("t"))
    hazards = hazard_intervals(ledger, duration_s, _row_labeller(city))
    title = title or f"citytwin run report: {kpis.get('scenario', 'run')} ({city.name})"
    body = "\n".join([
        _header(title, city, kpis, start_s, duration_s),
        _kpi_section(kpis.get("kpis") or {}),
        _map_section(city, speeds, peak_t, hazards, start_s),
        _series_section(kpis.get("series") or {}, start_s, duration_s, peak_t),
        _hazard_section(hazards, duration_s, start_s, peak_t),
        _field_section(kpis.get("field_reporting"), city, ledger, start_s, duration_s),
        _devices_section(kpis.get("devices"), city, ledger, hazards, start_s, duration_s),
        _footer(ledger),
    ])
    document = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n"
        "</body>\n</html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document, encoding="utf-8")
    return path


def _duration(kpis: dict[str, Any], ledger: pa.Table) -> float:
    if kpis.get("duration_s") is not None:
        return float(kpis["duration_s"])
    last = pc.max(ledger["t"]).as_py() if ledger.num_rows else None
    return float(last or 0.0)


def peak_speeds(ledger: pa.Table, city: City, peak_t: float | None) -> tuple[float | None, np.ndarray]:
    """Speed of every link (NaN where unknown) in the link.state snapshot nearest `peak_t`.

    Nearest rather than equal, so a peak time that went through JSON or rounding still finds its
    snapshot. Only that one snapshot is read into NumPy, which keeps big runs cheap.
    """
    speeds = np.full(len(city.links), np.nan)
    if peak_t is None:
        return None, speeds
    states = ledger.filter(pc.equal(ledger["kind"], "link.state")).select(["t", "subject", "speed_mps"])
    if states.num_rows == 0:
        return None, speeds
    times = pc.unique(states["t"]).to_numpy()
    t = float(times[np.argmin(np.abs(times - float(peak_t)))])
    snap = states.filter(pc.equal(states["t"], t))
    index = pc.index_in(snap["subject"], value_set=pa.array(city.links.ids.tolist(), pa.string()))
    known = index.is_valid().to_numpy(zero_copy_only=False)
    values = snap["speed_mps"].to_numpy()
    speeds[index.to_numpy(zero_copy_only=False)[known].astype(np.int64)] = values[known]
    return t, speeds


def _row_labeller(city: City) -> Callable[[str, str], str]:
    link_names = dict(zip((str(i) for i in city.links.ids), (str(n) for n in city.links.name)))

    def label(kind: str, subject: str) -> str:
        name = link_names.get(subject, "") if kind in LINK_HAZARDS else ""
        text = f"{kind} {subject}".strip() + (f" · {name}" if name else "")
        return text if len(text) <= 48 else text[:47] + "…"

    return label


def hazard_intervals(ledger: pa.Table, duration_s: float,
                     label: Callable[[str, str], str] = lambda kind, subject: f"{kind} {subject}") -> list[Hazard]:
    """Hazard episodes: each end closes the earliest open start of the same kind and subject.

    A start with no end lasts to the end of the run; an end with no open start has no episode to show
    and is left out.
    """
    rows = (ledger.filter(pc.is_in(ledger["kind"], value_set=pa.array(list(HAZARD_EVENTS))))
            .select(["seq", "t", "kind", "subject", "cause"])
            .sort_by([("t", "ascending"), ("seq", "ascending")]))
    pending: dict[tuple[str, str], deque] = defaultdict(deque)
    hazards = []
    for row in rows.to_pylist():
        kind, opens = HAZARD_EVENTS[row["kind"]]
        key = (kind, row["subject"] or "")
        if opens:
            pending[key].append(row)
        elif pending[key]:
            start = pending[key].popleft()
            hazards.append(_hazard(kind, start, row["t"], False, label))
    for (kind, _), starts in pending.items():
        hazards += [_hazard(kind, s, max(duration_s, s["t"]), True, label) for s in starts]
    return sorted(hazards, key=lambda h: (h.start, h.kind, h.subject))


def _hazard(kind: str, start: dict, end: float, open_ended: bool, label: Callable[[str, str], str]) -> Hazard:
    subject = start["subject"] or ""
    return Hazard(kind=kind, subject=subject, start=float(start["t"]), end=float(end), open_ended=open_ended,
                  cause=start["cause"] or "", label=label(kind, subject))


def _attribution(city: City) -> str:
    parts = []
    # ODbL requires the credit wherever OSM-derived data is shown
    if city.source.startswith("osm") and "openstreetmap" not in city.attribution.lower():
        parts.append("© OpenStreetMap contributors (ODbL)")
    if city.attribution:
        parts.append(city.attribution)
    return "; ".join(parts) or "—"


def _header(title: str, city: City, kpis: dict[str, Any], start_s: float, duration_s: float) -> str:
    summary = city.summary()
    classes = ", ".join(f"{escape(c)} {n:,}" for c, n in summary["links_by_class"].items()) or "—"
    network = (f"{summary['nodes']:,} nodes · {summary['links']:,} links · {summary['road_km']:,} km of road · "
               f"{summary['signalised_junctions']:,} signalised junctions")
    period = (f"{clock_label(0, start_s)} to {clock_label(duration_s, start_s)} "
              f"({format_value(duration_s / 3600)} h of virtual time)")
    facts = _facts_table([
        ("Scenario", escape(str(kpis.get("scenario", "—")))),
        ("Seed", escape(format_value(kpis.get("seed")))),
        ("City", f'<span lang="vi">{escape(city.name)}</span>'),
        ("Network source", escape(city.source)),
        ("Network", escape(network)),
        ("Links by road class", classes),
        ("Simulated period", escape(period)),
        ("Map data", escape(_attribution(city))),
    ])
    return f"<header>\n<h1>{escape(title)}</h1>\n{facts}\n</header>"


def _kpi_section(kpis: dict[str, Any]) -> str:
    rows = []
    for key, entry in kpis.items():
        entry = entry if isinstance(entry, dict) else {"value": entry}
        rows.append(f"<tr><td>{escape(str(entry.get('label') or key))}</td>"
                    f'<td class="num">{escape(format_value(entry.get("value")))}</td>'
                    f"<td>{escape(str(entry.get('unit') or ''))}</td></tr>")
    table = ("<table><tr><th>Indicator</th><th>Value</th><th>Unit</th></tr>" + "".join(rows) + "</table>"
             if rows else '<p class="note">No KPIs were computed for this run.</p>')
    return f'<section id="kpis">\n<h2>Key performance indicators</h2>\n{table}\n</section>'


def _active_at(hazards: list[Hazard], kind: str, t: float | None) -> list[str]:
    if t is None:
        return []
    return [h.subject for h in hazards if h.kind == kind and h.start <= t < h.end]


def _map_section(city: City, speeds: np.ndarray, peak_t: float | None, hazards: list[Hazard],
                 start_s: float) -> str:
    ratio = speeds / city.links.free_flow_mps
    link_index, node_index = city.link_index(), city.node_index()
    incidents = {link_index[s] for s in _active_at(hazards, "incident", peak_t) if s in link_index}
    floods = {node_index[s] for s in _active_at(hazards, "flood", peak_t) if s in node_index}
    if peak_t is None:
        title = "Road network (no link.state snapshot: every link in grey)"
    else:
        title = f"Congestion at the peak, {clock_label(peak_t, start_s)}"
    fig = figures.network_map(city, ratio, incident_links=sorted(incidents), flooded_nodes=sorted(floods),
                              title=title)
    caption = ("Each link is coloured by its speed over its free-flow speed in the link.state snapshot with the "
               "most congested kilometres; width grows with lanes. Two-way streets are drawn as two lines, each "
               "direction on its right-hand side.")
    return (f'<section id="map">\n<h2>Network at the congestion peak</h2>\n{_img(fig, title, caption)}\n'
            f"{_busiest_links(city, speeds, ratio)}\n</section>")


def _busiest_links(city: City, speeds: np.ndarray, ratio: np.ndarray) -> str:
    known = np.flatnonzero(np.isfinite(ratio))
    if not len(known):
        return '<p class="note">No link.state snapshot at the peak, so no busiest links to list.</p>'
    top = known[np.argsort(ratio[known], kind="stable")][:BUSIEST_LINKS]
    links = city.links
    rows = "".join(
        f"<tr><td>{escape(str(links.ids[i]))}</td><td lang=\"vi\">{escape(str(links.name[i])) or '—'}</td>"
        f"<td>{escape(str(links.road_class[i]))}</td><td class=\"num\">{int(links.lanes[i])}</td>"
        f'<td class="num">{speeds[i] * 3.6:.1f}</td><td class="num">{links.free_flow_mps[i] * 3.6:.1f}</td>'
        f'<td class="num">{ratio[i]:.2f}</td></tr>'
        for i in top)
    return ("<h3>Busiest links at the peak</h3>\n<table><tr><th>Link</th><th>Street</th><th>Class</th>"
            "<th>Lanes</th><th>Speed (km/h)</th><th>Free-flow (km/h)</th><th>Speed / free-flow</th></tr>"
            f"{rows}</table>")


def _series_section(series: dict[str, Any], start_s: float, duration_s: float, peak_t: float | None) -> str:
    hourly = series.get("congestion_index_by_hour") or {}
    vehicles = series.get("vehicles_on_network") or {}
    congested = series.get("congested_km") or {}
    parts = [
        _img(figures.hourly_congestion(hourly, start_s), "Congestion index by hour"),
        _img(figures.line_series(vehicles, start_s, duration_s, title="Vehicles on the network",
                                 ylabel="vehicles", colour="#3182bd", peak_t=peak_t), "Vehicles on the network"),
        _img(figures.line_series(congested, start_s, duration_s, title="Congested road length",
                                 ylabel="congested length", colour="#de2d26", peak_t=peak_t),
             "Congested road length"),
    ]
    return '<section id="series">\n<h2>Over the day</h2>\n' + "\n".join(parts) + "\n</section>"


def _hazard_section(hazards: list[Hazard], duration_s: float, start_s: float, peak_t: float | None) -> str:
    if not hazards:
        return '<section id="hazards">\n<h2>Hazards</h2>\n<p class="note">No hazards in this run.</p>\n</section>'
    counts: dict[str, int] = defaultdict(int)
    for h in hazards:
        counts[h.kind] += 1
    summary = ", ".join(f"{n:,} {kind} episode{'s' if n != 1 else ''}" for kind, n in counts.items())
    caption = ("Incidents, floods and closures per link or junction, from their start and end events in the "
               "ledger; rain episodes also shade the background. An episode with no end event lasts to the end "
               "of the run.")
    fig = figures.hazard_timeline(hazards, duration_s, start_s, peak_t)
    return (f'<section id="hazards">\n<h2>Hazards</h2>\n<p>{escape(summary)}.</p>\n'
            f"{_img(fig, 'Hazard timeline', caption)}\n</section>")


# The per-category and per-channel tables: (key, header, unit appended to the value)
CATEGORY_COLUMNS = (
    ("category", "Category", ""), ("reports", "Reports", ""), ("duplicates", "Duplicates", ""),
    ("open_end", "Open at end", ""), ("deadline_h", "Deadline (h)", ""),
    ("within_deadline", "Within deadline", " %"), ("judged", "Judged", ""), ("ack_p50_h", "Ack. p50 (h)", ""),
    ("close_p50_h", "Close p50 (h)", ""), ("close_p90_h", "Close p90 (h)", ""),
    ("satisfaction_mean", "Satisfaction", ""), ("problems", "Problems", ""),
    ("problems_reported", "Problems reported", " %"),
)
CHANNEL_COLUMNS = (
    ("channel", "Channel", ""), ("reports", "Reports", ""), ("share", "Share", " %"),
    ("duplicates", "Duplicates", " %"), ("close_p50_h", "Close p50 (h)", ""),
    ("published", "Result published", " %"), ("satisfaction_mean", "Satisfaction", ""),
)


def _field_section(fr: dict[str, Any] | None, city: City, ledger: pa.Table, start_s: float,
                   duration_s: float) -> str:
    """Field reporting (phản ánh hiện trường): the KPIs from kpis["field_reporting"], its figures and tables,
    and the problems on the map from the ledger's ground truth. Absent when the run had no field reporting."""
    if not fr:
        return ""
    kpis, series, tables = fr.get("kpis") or {}, fr.get("series") or {}, fr.get("tables") or {}
    categories = tables.get("by_category") or []
    reports_series = series.get("reports_by_channel") or {}
    per = "hour" if (reports_series.get("bin_s") or 3600) <= 3600 else "day"
    satisfaction = kpis.get("satisfaction_mean") or {}
    parts = [
        f"<p>{_field_summary(kpis)}</p>",
        _field_kpi_table(kpis),
        _img(figures.stacked_bins(reports_series, start_s, duration_s, title="Field reports by channel",
                                  ylabel=f"reports per {per}"), "Field reports by channel",
             f"Reports received in each clock {per}, stacked by channel (the app, hotline 1022, the web portal); "
             "a hotline report counts when the operator files it."),
        _img(figures.line_series(series.get("backlog") or {}, start_s, duration_s,
                                 title="Backlog: requests open", ylabel="open", colour="#756bb1",
                                 steps=True), "Backlog over time",
             "Original requests (duplicates left out) received and not yet resolved or closed."),
        _img(figures.category_close_times(categories, title="Time to close by category"),
             "Time to close by category",
             "Kaplan–Meier p50 and p90 of the time from report to resolved or closed, for original requests; "
             "requests still open at the end count as open for as long as the run saw them. The tick is the "
             "category's deadline."),
        _img(figures.category_shares(categories, "within_deadline", "judged", target=100.0,
                                     target_label="target: every request by its deadline (100 %)",
                                     title="Requests closed within their deadline",
                                     xlabel="closed within deadline (% of judged originals)"),
             "Share closed within deadline by category",
             "Judged: originals closed by the end, and those still open whose deadline has passed (late). "
             "Requests still open within their deadline are not judged yet."),
        _img(figures.satisfaction_histogram(series.get("satisfaction") or {}, mean=satisfaction.get("value")),
             "Reporter satisfaction",
             "Scores reporters gave once their request was closed, rounded to whole stars."),
        _problem_map(city, ledger),
        "<h3>By category</h3>\n" + _rows_table(categories, CATEGORY_COLUMNS),
        "<h3>By channel</h3>\n" + _rows_table(tables.get("by_channel") or [], CHANNEL_COLUMNS),
    ]
    title = '<h2>Field reporting (<span lang="vi">phản ánh hiện trường</span>)</h2>'
    return f'<section id="field-reporting">\n{title}\n' + "\n".join(parts) + "\n</section>"


def _field_summary(kpis: dict[str, Any]) -> str:
    def value(key: str) -> str:
        return escape(format_value((kpis.get(key) or {}).get("value")))

    return (f"{value('reports')} field reports ({value('reports_per_day')} a day) about {value('problems')} "
            f"urban problems; {value('problems_reported')} % of the problems were reported at least once, and "
            f"{value('backlog_end')} original requests were still open at the end.")


def _target_table(kpis: dict[str, Any]) -> str:
    """KPIs with their targets: the national indicators (entries with an "indicator") first and in bold, each
    with its target (a minimum) and whether the run met it; "" when there are no KPIs."""
    entries = {k: v if isinstance(v, dict) else {"value": v} for k, v in kpis.items()}
    order = [k for k, e in entries.items() if e.get("indicator")] + [k for k, e in entries.items()
                                                                    if not e.get("indicator")]
    rows = []
    for key in order:
        entry = entries[key]
        unit = str(entry.get("unit") or "")
        target, met = "", ""
        if entry.get("target") is not None:
            target = f"{format_value(entry['target'])} {unit}".strip()
            value = entry.get("value")
            met = "—" if value is None else "met" if value >= entry["target"] - 1e-9 else "not met"
        style = ' style="font-weight:bold"' if entry.get("indicator") else ""
        rows.append(f"<tr{style}><td>{escape(str(entry.get('label') or key))}</td>"
                    f'<td class="num">{escape(format_value(entry.get("value")))}</td>'
                    f"<td>{escape(unit)}</td><td>{escape(target)}</td><td>{escape(met)}</td></tr>")
    if not rows:
        return ""
    return ("<table><tr><th>Indicator</th><th>Value</th><th>Unit</th><th>Target</th><th>Status</th></tr>"
            + "".join(rows) + "</table>")


def _field_kpi_table(kpis: dict[str, Any]) -> str:
    """The field-reporting KPIs, the national indicator first with its target and whether it is met."""
    table = _target_table(kpis)
    if not table:
        return '<p class="note">No field-reporting KPIs were computed for this run.</p>'
    note = ('<p class="note">Times are Kaplan–Meier percentiles: a request or problem still waiting at the end '
            "counts as waiting for as long as the run saw it. “—” means no data, or a percentile beyond what the "
            "run saw (too many still waiting). L1.N1.PN2.01 counts the reports whose request (for a duplicate, "
            "its original) was closed by the end.</p>")
    return table + "\n" + note


def _rows_table(rows: list[dict[str, Any]], columns: tuple[tuple[str, str, str], ...]) -> str:
    if not rows:
        return '<p class="note">Nothing to list.</p>'
    head = "".join(f"<th>{escape(h)}</th>" for _, h, _ in columns)
    body = []
    for row in rows:
        cells = []
        for key, _, suffix in columns:
            value = row.get(key)
            if isinstance(value, str):
                cells.append(f"<td>{escape(value)}</td>")
            else:
                text = format_value(value) + (suffix if value is not None else "")
                cells.append(f'<td class="num">{escape(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>" + "".join(body) + "</table>"


def problem_positions(city: City, problems) -> tuple[np.ndarray, np.ndarray]:
    """Map x/y of each problem: the middle of its link, else its node, else the node nearest its lon/lat
    (when the city has geography). NaN where none of these is known."""
    n = len(problems)
    x, y = np.full(n, np.nan), np.full(n, np.nan)
    if n == 0:
        return x, y
    links, nodes = city.links, city.nodes
    li = problems["link"].map(city.link_index()).to_numpy(dtype=float)
    ni = problems["node"].map(city.node_index()).to_numpy(dtype=float)
    on_link = np.isfinite(li)
    k = li[on_link].astype(np.int64)
    x[on_link] = (nodes.x[links.src[k]] + nodes.x[links.dst[k]]) / 2
    y[on_link] = (nodes.y[links.src[k]] + nodes.y[links.dst[k]]) / 2
    at_node = ~on_link & np.isfinite(ni)
    x[at_node], y[at_node] = nodes.x[ni[at_node].astype(np.int64)], nodes.y[ni[at_node].astype(np.int64)]
    rest = ~np.isfinite(x)
    lon, lat = problems["lon"].to_numpy(dtype=float), problems["lat"].to_numpy(dtype=float)
    geo = np.flatnonzero(np.isfinite(nodes.lon) & np.isfinite(nodes.lat))
    want = np.flatnonzero(rest & np.isfinite(lon) & np.isfinite(lat))
    if len(geo) and len(want):
        shrink = np.cos(np.radians(np.nanmean(nodes.lat[geo])))  # a degree of longitude is shorter
        tree = cKDTree(np.column_stack([nodes.lon[geo] * shrink, nodes.lat[geo]]))
        nearest = geo[tree.query(np.column_stack([lon[want] * shrink, lat[want]]))[1]]
        x[want], y[want] = nodes.x[nearest], nodes.y[nearest]
    return x, y


def _problem_map(city: City, ledger: pa.Table) -> str:
    problems = problem_outcomes(ledger)
    x, y = problem_positions(city, problems)
    placed = np.isfinite(x) & np.isfinite(y)
    state = np.where(problems["fixed"].to_numpy(dtype=bool), "fixed",
                     np.where(problems["reported"].to_numpy(dtype=bool), "reported", "unreported"))
    severity = problems["severity"].astype(float).fillna(1.0).to_numpy()
    fig = figures.problem_map(city, x[placed], y[placed], state[placed], severity[placed],
                              title="Urban problems: reported or not")
    unplaced = int((~placed).sum())
    caption = ("Every problem that arose in the run (the twin's ground truth), at the middle of its street or at "
               "its junction: filled if someone reported it (green once fixed), hollow red if nobody did."
               + (f" {unplaced:,} problem{'s' if unplaced != 1 else ''} could not be placed on this network."
                  if unplaced else ""))
    return _img(fig, "Map of urban problems, reported and never reported", caption)


# -- devices ---------------------------------------------------------------------------------------------

DEVICE_TYPE_COLUMNS = (
    ("device_type", "Type", ""), ("devices", "Devices", ""), ("messages", "Messages", ""), ("due", "Due", ""),
    ("delivered", "Delivered", ""), ("completeness", "Completeness", " %"), ("late", "Late", " %"),
    ("duplicate", "Duplicate", " %"), ("out_of_order", "Out of order", " %"), ("faulty", "Faulty values", " %"),
)
IOC_ALERT_COLUMNS = (
    ("category", "Category", ""), ("raised", "Raised", ""), ("cleared", "Cleared", ""),
    ("entities", "Entities", ""), ("rules", "Rules", ""),
)
CAMERA_ALERT_COLUMNS = (
    ("cause", "Cause", ""), ("alerts", "Alerts", ""), ("cameras", "Cameras", ""), ("events", "Events", ""),
    ("delay_p50_min", "Delay p50 (min)", ""),
)
CAMERA_FLEET_COLUMNS = (
    ("fleet", "Camera fleet", ""), ("cameras", "Cameras", ""), ("road_coverage", "Road length in view", " %"),
    ("incident_coverage", "Incidents in view", " %"), ("incidents_detected", "Incidents recognised", " %"),
    ("detection_p50_min", "Detection p50 (min)", ""),
)
FAULT_COLUMNS = (
    ("device_type", "Type", ""), ("cause", "Cause", ""), ("faults", "Faults", ""), ("devices", "Devices", ""),
    ("mean_duration_min", "Mean duration (min)", ""), ("for_good", "For good", ""),
)
FLOOD_COLUMNS = (
    ("node", "Junction", ""), ("gauges", "Gauges", ""), ("flood", "Flooded at", ""), ("warning", "Warned at", ""),
    ("lead_min", "Lead (min)", ""),
)
MAX_GAUGE_PANELS = 6
MAX_FLOOD_ROWS = 40


def _devices_section(dev: dict[str, Any] | None, city: City, ledger: pa.Table, hazards: list[Hazard],
                     start_s: float, duration_s: float) -> str:
    """Devices: the KPIs from kpis["devices"] with the national indicators and their targets, the device
    sites on the map, real-time information over the run, data quality by type, detection and flood
    warning, and the tables. Absent when the run had no devices."""
    if not dev:
        return ""
    kpis, series, tables = dev.get("kpis") or {}, dev.get("series") or {}, dev.get("tables") or {}
    rows = device_rows(ledger)
    installed = installed_devices(rows)
    by_type = tables.get("by_type") or []
    parts = [
        f"<p>{_devices_summary(kpis, by_type)}</p>",
        _devices_kpi_table(kpis),
        _device_map(city, installed),
        _img(figures.share_over_time(series.get("realtime_share") or {}, start_s, duration_s,
                                     target=TARGETS[REALTIME_KPI], target_label=f"target {REALTIME_KPI}: 30 %",
                                     title="Road links with real-time traffic information",
                                     ylabel="% of road links"),
             "Real-time traffic information over the run",
             "Share of road links (connectors left out) with a traffic reading — a detector's count, a camera's "
             "counting, a bus GPS fix — that reached the IOC within the freshness age, at the end of every "
             "5-minute slot; the dotted line is its time-average, the KPI."),
        _img(figures.completeness_bars(by_type, title="Data completeness and quality by device type"),
             "Completeness by device type",
             "Left: readings delivered of those due (one every sampling interval from installation to the end, "
             "each slot counted once; dropouts and dead batteries count against it). Right: messages late "
             "(more than one interval after sampling), duplicated, out of order (after a later-sampled one) and "
             "with faulty values (stuck, drift, burst: the simulator's ground truth)."),
        _detection_figure(rows, duration_s),
        _flood_warning_parts(rows, installed, hazards, start_s, duration_s),
        "<h3>Messages by device type</h3>\n" + _rows_table(by_type, DEVICE_TYPE_COLUMNS),
        "<h3>IOC alerts by category</h3>\n" + _rows_table(tables.get("ioc_alerts") or [], IOC_ALERT_COLUMNS),
        "<h3>Camera alerts by cause</h3>\n" + _rows_table(tables.get("camera_alerts") or [], CAMERA_ALERT_COLUMNS),
        "<h3>Camera fleets compared</h3>\n" + _rows_table(tables.get("camera_fleets") or [], CAMERA_FLEET_COLUMNS),
        "<h3>Device faults</h3>\n" + _rows_table(tables.get("faults") or [], FAULT_COLUMNS),
    ]
    return '<section id="devices">\n<h2>Devices</h2>\n' + "\n".join(parts) + "\n</section>"


def _devices_summary(kpis: dict[str, Any], by_type: list[dict[str, Any]]) -> str:
    def value(key: str) -> str:
        return escape(format_value((kpis.get(key) or {}).get("value")))

    fleet = ", ".join(f"{format_value(r.get('devices'))} {str(r['device_type']).replace('_', ' ')}"
                      for r in by_type if r.get("devices"))
    return (f"{value('devices')} devices ({escape(fleet) or 'none'}) sent {value('messages')} messages to the IOC. "
            f"Cameras see {value('camera_road_coverage')} % of the road length; on average "
            f"{value('realtime_traffic_info')} % of road links had real-time traffic information; cameras "
            f"recognised {value('incidents_detected')} % of the incidents, and the IOC warned of "
            f"{value('floods_warned')} % of the floods at gauged junctions.")


def _devices_kpi_table(kpis: dict[str, Any]) -> str:
    table = _target_table(kpis)
    if not table:
        return '<p class="note">No device KPIs were computed for this run.</p>'
    note = ('<p class="note">Indicator codes are those of the Bắc Giang smart-city KPI table; a target is a minimum '
            "share. Coverage counts road length and junctions the devices see (environmental coverage weighted by "
            "population where the city has it). L2.N3.PN1.02 and .05 are stood in for by water-level gauges at "
            "flood-prone junctions: the twin has no water-quality or wastewater sensors. Detection times are "
            "Kaplan–Meier percentiles: an incident no camera recognised counts as undetected for as long as it "
            "lasted. “—” means no data, or a percentile the run did not reach.</p>")
    return table + "\n" + note


def device_positions(city: City, installed) -> tuple[np.ndarray, np.ndarray]:
    """Map x/y of each installed device: its junction, else the middle of its link, else the node nearest
    its lon/lat. A camera names both its junction and the link it counts on; it stands at the junction."""
    if len(installed) == 0:
        return np.zeros(0), np.zeros(0)
    at_node = installed["node"].map(city.node_index()).notna()
    sites = installed[["link", "node", "lon", "lat"]].copy()
    sites.loc[at_node.to_numpy(), "link"] = None
    return problem_positions(city, sites)


def _device_map(city: City, installed) -> str:
    if len(installed):
        stems = set(installed.loc[installed["device_type"] == "camera", "subject"].astype(str))
        subject = installed["subject"].astype(str)
        companion = subject.str.endswith("-flow") & subject.str[:-5].isin(stems)
        physical = installed[~companion.to_numpy()]
    else:
        physical = installed
    x, y = device_positions(city, physical)
    types = physical["device_type"].astype(str).to_numpy() if len(physical) else np.zeros(0, object)
    placed = np.isfinite(x) & np.isfinite(y)
    sites = {t: (x[(types == t) & placed], y[(types == t) & placed])
             for t in type_order(set(types)) if t != "bus"}
    empty = np.zeros(len(city.links), bool)
    fig = figures.device_map(
        city, sites,
        camera_links=covered_links(installed, city, "camera") if len(installed) else empty,
        detector_links=covered_links(physical, city, "detector") if len(physical) else empty,
        bus_links=covered_links(installed, city, "bus") if len(installed) else empty,
        title="Device sites and what cameras see")
    unplaced = int((~placed).sum() - (types == "bus").sum()) if len(physical) else 0
    caption = ("Each device at its site by type: cameras, environmental sensors and gauges at their junctions, "
               "detectors at the middle of their link. Links in a camera's view are orange (each camera also counts "
               "traffic on its busiest link in view); bus routes are brown."
               + (f" {unplaced:,} device{'s' if unplaced != 1 else ''} could not be placed on this network."
                  if unplaced > 0 else ""))
    return _img(fig, "Map of device sites and camera coverage", caption)


def _detection_figure(rows: pa.Table, duration_s: float) -> str:
    incidents = incident_detections(rows, duration_s)
    congestion = congestion_detections(rows)
    n, found, events_seen = len(incidents), int(incidents["detected"].sum()), len(congestion)
    curves = {
        f"incidents ({found:,} of {n:,} recognised)": km_curve(incidents["time_s"] / 60.0, incidents["detected"]),
        f"congestion ({events_seen:,} event{'s' if events_seen != 1 else ''} recognised)":
            km_curve(congestion["time_s"] / 60.0, np.ones(events_seen, bool)),
    }
    fig = figures.detection_curves(curves, title="How fast cameras detect events")
    caption = ("Share of events with a camera alert at the IOC by the time since the event began. Incidents are "
               "Kaplan–Meier estimates over every incident of the run: one no camera recognised counts as "
               "undetected while it lasted, so the curve stops below 100 % when some were never seen. Congestion "
               "has no ground-truth record, so its curve is over the events cameras recognised.")
    return _img(fig, "Incident and congestion detection times", caption)


def _flood_warning_parts(rows: pa.Table, installed, hazards: list[Hazard], start_s: float,
                         duration_s: float) -> str:
    floods = flood_warnings(rows)
    lead = (floods.loc[floods["warned"], "lead_s"] / 60.0).to_numpy(dtype=float)
    lead_fig = figures.lead_time_histogram(lead, int((~floods["warned"]).sum()), ahead_min=WARNED_AHEAD_S / 60,
                                           title="Flood-warning lead time at gauged junctions")
    traces, gauges = _gauge_traces(rows, installed, hazards)
    level_fig = figures.gauge_levels(traces, WARNING_LEVEL_M, start_s, duration_s,
                                     title="Water level at the gauges against the warning level")
    shown = f" The first {len(traces)} of {gauges:,} gauges, those at junctions that flooded first." \
        if gauges > len(traces) else ""
    table_rows = [{"node": r.node, "gauges": r.gauges or "", "flood": clock_label(r.flood_t, start_s),
                   "warning": clock_label(r.warning_t, start_s) if r.warned else "—",
                   # two decimals: a warning that reached the IOC a second after the quarter hour is not
                   # 15 min ahead, and rounding to 15.0 would hide why it does not count as such
                   "lead_min": f"{r.lead_s / 60.0:.2f}" if r.warned else "—"}
                  for r in floods.head(MAX_FLOOD_ROWS).itertuples()]
    more = (f'<p class="note">First {MAX_FLOOD_ROWS} of {len(floods):,} floods.</p>'
            if len(floods) > MAX_FLOOD_ROWS else "")
    return "\n".join([
        _img(lead_fig, "Flood-warning lead times",
             "For each flood at a junction with a water-level gauge: the time from the IOC's first "
             f"flood-gauge-level alert on that gauge in the {WARNING_WINDOW_S / 3600:g} h before, to the flood."),
        _img(level_fig, "Water level at the gauges",
             f"Each gauge's readings (by its own clock) against the {WARNING_LEVEL_M:g} m level the IOC warns at; "
             "shaded while its junction was flooded, with the IOC's level alerts marked." + shown),
        "<h3>Floods at gauged junctions</h3>\n" + _rows_table(table_rows, FLOOD_COLUMNS) + more,
    ])


def _gauge_traces(rows: pa.Table, installed, hazards: list[Hazard]) -> tuple[list[figures.GaugeTrace], int]:
    """Water-level traces of the gauges to draw (those whose junction flooded first, then the highest) and
    how many gauges there are."""
    gauges = installed[installed["device_type"] == "water_level"] if len(installed) else installed
    if len(gauges) == 0:
        return [], 0
    mask = pc.and_(pc.equal(rows["kind"], "device.reading"), pc.equal(rows["device_type"], "water_level"))
    readings = rows.filter(mask).select(["subject", "t", "observed_t", "value"]).to_pandas()
    when = readings["observed_t"].fillna(readings["t"])
    floods: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for h in hazards:
        if h.kind == "flood":
            floods[h.subject].append((h.start, h.end))
    alerts = rows.filter(pc.and_(pc.equal(rows["kind"], "ioc.alert"), pc.equal(rows["rule"], FLOOD_RULE)))
    alerts = alerts.filter(pc.equal(alerts["status"], "raised")).select(["subject", "t"]).to_pandas()
    warned = alerts.groupby(entity_device(alerts["subject"]))["t"].agg(list) if len(alerts) else {}
    by_gauge = readings.assign(when=when).groupby("subject")
    ranked = []
    for g in gauges.itertuples():
        node = "" if g.node is None or (isinstance(g.node, float) and math.isnan(g.node)) else str(g.node)
        r = by_gauge.get_group(g.subject) if g.subject in by_gauge.groups else readings.iloc[:0].assign(when=[])
        peak = float(r["value"].max()) if len(r) else 0.0
        ranked.append((-len(floods.get(node, [])), -peak, str(g.subject), node, r))
    ranked.sort(key=lambda item: item[:3])
    traces = [figures.GaugeTrace(label=f"{subject} at {node or 'no junction'}",
                                 t=r["when"].to_numpy(dtype=float), level_m=r["value"].to_numpy(dtype=float),
                                 floods=tuple(floods.get(node, [])),
                                 warnings=tuple(warned.get(subject, [])) if len(alerts) else ())
              for _, _, subject, node, r in ranked[:MAX_GAUGE_PANELS]]
    return traces, len(gauges)


def kind_counts(ledger: pa.Table) -> list[tuple[str, int]]:
    """Rows per event kind, in the order the ledger's data dictionary lists the kinds."""
    if ledger.num_rows == 0:
        return []
    counted = pc.value_counts(ledger["kind"])
    counts = dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()))
    order = [k for k in KINDS if k in counts] + sorted(k for k in counts if k not in KINDS)
    return [(k, counts[k]) for k in order]


def _footer(ledger: pa.Table) -> str:
    rows = "".join(f'<tr><td>{escape(str(k))}</td><td class="num">{n:,}</td></tr>' for k, n in kind_counts(ledger))
    table = (f"<table><tr><th>Event kind</th><th>Rows</th></tr>{rows}"
             f'<tr><th>Total</th><th class="num">{ledger.num_rows:,}</th></tr></table>')
    return ("<footer>\n<h2>Ledger</h2>\n" + table +
            '\n<p class="note">Every figure and number in this report is computed from ledger.parquet, the run\'s '
            "append-only event ledger; the KPIs are pure functions of it.</p>\n</footer>")

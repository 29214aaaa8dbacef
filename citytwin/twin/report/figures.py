"""The report's figures, one function per figure, each returning a matplotlib Figure.

Figures are built with the object-oriented API, never through pyplot: pyplot keeps every figure in a
global registry (a leak in a long-running process) and may reach for an interactive backend, while
these machines are headless. `html.py` renders them to PNG on an Agg canvas.

Every function takes plain arrays and numbers already extracted from the ledger, so the figures can be
tested and reused without a run. Times are virtual seconds since the scenario start and are labelled
as clock time from the scenario's start clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from citytwin.twin.city.model import City

DPI = 110
WIDTH_IN = 9.1  # ~1000 px at DPI
CONGESTION_CMAP = colormaps["RdYlGn"]  # red where traffic crawls, green where it flows freely
NO_SNAPSHOT_GREY = "#bdbdbd"
CAUSE_COLOURS = {"crash": "#d62728", "breakdown": "#ff7f0e"}
OTHER_INCIDENT_COLOUR = "#9467bd"
KIND_COLOURS = {"rain": "#6baed6", "flood": "#1f4e9c", "closure": "#555555"}
CHANNEL_COLOURS = {"app": "#3182bd", "hotline": "#e6550d", "web": "#31a354"}
OTHER_CHANNEL_COLOURS = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
TARGET_STYLE = {"color": "#222222", "ls": "--", "lw": 1.2}  # every target line looks the same
PROBLEM_STYLES = {  # (colour, filled) by what became of a problem
    "fixed": ("#31a354", True),
    "reported": ("#fd8d3c", True),
    "unreported": ("#d62728", False),
}
PROBLEM_LABELS = {"fixed": "reported and fixed", "reported": "reported, not fixed yet",
                  "unreported": "never reported"}
MAX_TIMELINE_ROWS = 40  # beyond this a Gantt chart stops being readable; the rest are counted in the title


@dataclass(frozen=True)
class Hazard:
    """One hazard episode on the timeline: a matched start/end pair of ledger events."""

    kind: str  # incident | rain | flood | closure
    subject: str  # the link, node or area the events name
    start: float  # s since the scenario start
    end: float
    open_ended: bool  # no end event: it lasts to the end of the run
    cause: str = ""  # crash | breakdown for incidents, the closing hazard for closures
    label: str = ""  # how the timeline names its row (subject and street name)


def parse_clock(clock: str) -> float:
    """Seconds after midnight of an "HH:MM" or "HH:MM:SS" start clock."""
    parts = [int(p) for p in str(clock).split(":")]
    hours, minutes, seconds = (parts + [0, 0, 0])[:3]
    return float(hours * 3600 + minutes * 60 + seconds)


def clock_label(t: float, start_s: float) -> str:
    """Clock time of a run time: the end of a day is 24:00, and later days carry a "+1d" prefix."""
    total = int(round(start_s + t))
    day, rest = divmod(total, 86400)
    if day and not rest:
        day, rest = day - 1, 86400
    label = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}"
    return f"+{day}d {label}" if day else label


def _figure(height_in: float) -> Figure:
    return Figure(figsize=(WIDTH_IN, height_in), dpi=DPI, layout="constrained")


def _no_data(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color="#666666")


def _clock_axis(ax, t_max: float, start_s: float) -> None:
    """Ticks on whole clock hours (not on whole hours since the start, which may be 06:30)."""
    if t_max <= 0:
        return
    hours = t_max / 3600
    step = 3600 * (1 if hours <= 6 else 2 if hours <= 12 else 3 if hours <= 36 else 6 if hours <= 96 else 24)
    first = math.ceil(start_s / step) * step - start_s
    ticks = np.arange(first, t_max + 1, step)
    ax.set_xticks(ticks, [clock_label(t, start_s) for t in ticks])
    ax.set_xlim(0, t_max)
    ax.set_xlabel("clock time")


def link_segments(city: City, offset_m: float) -> np.ndarray:
    """(links, 2, 2) segment ends, two-way links shifted to the right of their direction.

    Traffic in Vietnam keeps right, so moving each direction of a two-way street to its right side
    shows both directions side by side where the map would otherwise draw one over the other.
    """
    nodes, links = city.nodes, city.links
    p0 = np.column_stack([nodes.x[links.src], nodes.y[links.src]])
    p1 = np.column_stack([nodes.x[links.dst], nodes.y[links.dst]])
    n = max(len(nodes), 1)
    two_way = np.isin(links.dst * n + links.src, links.src * n + links.dst)
    v = p1 - p0
    length = np.hypot(v[:, 0], v[:, 1])
    length[length == 0] = 1.0  # a zero-length link has no side; its shift comes out zero anyway
    right = np.column_stack([v[:, 1], -v[:, 0]]) / length[:, None]
    shift = right * (offset_m * two_way)[:, None]
    return np.stack([p0 + shift, p1 + shift], axis=1)


def _map_extent(city: City) -> tuple[float, float, float, float]:
    x, y = city.nodes.x, city.nodes.y
    if len(x) == 0:
        return 0.0, 1.0, 0.0, 1.0
    return float(np.nanmin(x)), float(np.nanmax(x)), float(np.nanmin(y)), float(np.nanmax(y))


def network_map(city: City, ratio: np.ndarray, *, incident_links: Iterable[int] = (),
                flooded_nodes: Iterable[int] = (), title: str = "") -> Figure:
    """Links coloured by speed / free-flow speed (NaN = no snapshot, grey), width by lanes."""
    fig, ax, span = _map_figure(city)
    # each direction ~2 px off the centre line at this width, whatever the city's size in metres
    segments = link_segments(city, offset_m=span * 0.0025)
    widths = np.clip(0.4 + 0.45 * city.links.lanes, 0.6, 2.6)
    has = np.isfinite(ratio)
    ax.add_collection(LineCollection(segments[~has], colors=NO_SNAPSHOT_GREY, linewidths=widths[~has],
                                     capstyle="round", zorder=1))
    # the most congested links last, so a red street is never hidden under a green one
    order = np.flatnonzero(has)[np.argsort(-ratio[has], kind="stable")]
    norm = Normalize(0.0, 1.0)
    coloured = LineCollection(segments[order], array=np.clip(ratio[order], 0.0, 1.0), cmap=CONGESTION_CMAP,
                              norm=norm, linewidths=widths[order], capstyle="round", zorder=2)
    ax.add_collection(coloured)
    fig.colorbar(ScalarMappable(norm=norm, cmap=CONGESTION_CMAP), ax=ax, shrink=0.7, pad=0.01,
                 label="speed / free-flow speed")

    handles = [Line2D([], [], color=NO_SNAPSHOT_GREY, lw=2, label="no snapshot")] if (~has).any() else []
    sig = np.asarray(city.nodes.signalised, bool)
    if sig.any():
        ax.scatter(city.nodes.x[sig], city.nodes.y[sig], s=5, marker="s", color="#222222", lw=0, zorder=3)
        handles.append(Line2D([], [], ls="", marker="s", ms=3, color="#222222", label="signalised junction"))
    links = np.fromiter(incident_links, dtype=np.int64)
    if len(links):
        mid = segments[links].mean(axis=1)  # on the blocked direction's side of a two-way street
        ax.scatter(mid[:, 0], mid[:, 1], s=80, marker="X", color="#d62728", edgecolors="white", lw=0.8, zorder=5)
        handles.append(Line2D([], [], ls="", marker="X", ms=8, color="#d62728", mec="white",
                              label="incident at the peak"))
    nodes = np.fromiter(flooded_nodes, dtype=np.int64)
    if len(nodes):
        ax.scatter(city.nodes.x[nodes], city.nodes.y[nodes], s=90, marker="o", color=KIND_COLOURS["flood"],
                   alpha=0.75, edgecolors="white", lw=0.8, zorder=4)
        handles.append(Line2D([], [], ls="", marker="o", ms=8, color=KIND_COLOURS["flood"], mec="white",
                              label="flooded junction at the peak"))
    if handles:  # below the map, where it cannot hide streets
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize="small", frameon=False)

    _finish_map(ax, city, title)
    return fig


def _map_box(city: City) -> tuple[float, float, float, float, float]:
    """(x0, y0, width, height, span) of the view: at least 5 % of the larger span each way, so a city
    that is one straight street still gets a readable panel."""
    x0, x1, y0, y1 = _map_extent(city)
    span = max(x1 - x0, y1 - y0, 1.0)
    return x0, y0, max(x1 - x0, span * 0.05), max(y1 - y0, span * 0.05), span


def _map_figure(city: City) -> tuple[Figure, object, float]:
    """A figure whose height follows the city's shape, its axes, and the city's larger span in metres."""
    _, _, dx, dy, span = _map_box(city)
    fig = _figure(float(np.clip(7.6 * dy / dx + 0.9, 4.0, 11.0)))
    return fig, fig.add_subplot(), span


def _finish_map(ax, city: City, title: str) -> None:
    x0, y0, dx, dy, _ = _map_box(city)
    ax.update_datalim([(x0, y0), (x0 + dx, y0 + dy)])
    ax.margins(0.03)
    ax.set_aspect("equal", adjustable="datalim")  # fill the panel: widen the view rather than shrink the axes
    ax.autoscale_view()
    km = FuncFormatter(lambda v, _: f"{v / 1000:g}")
    ax.xaxis.set_major_formatter(km)
    ax.yaxis.set_major_formatter(km)
    ax.set_xlabel("x (km east)")
    ax.set_ylabel("y (km north)")
    ax.set_title(title)


def _series_arrays(series: dict) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(series.get("x") or [], dtype=float)
    values = np.asarray([np.nan if v is None else v for v in series.get("values") or []], dtype=float)
    return x, values


def _ylabel(series: dict, fallback: str) -> str:
    unit = series.get("unit")
    return f"{fallback} ({unit})" if unit else fallback


def hourly_congestion(series: dict, start_s: float) -> Figure:
    """Bars of the congestion index for each hour since the start, labelled with the clock hour."""
    fig = _figure(3.4)
    ax = fig.add_subplot()
    hours, values = _series_arrays(series)
    label = series.get("label") or "Congestion index"
    if len(hours):
        ax.bar(hours, np.nan_to_num(values), width=0.85, color="#e6550d")
        step = max(1, math.ceil(len(hours) / 12))
        ax.set_xticks(hours[::step], [clock_label(h * 3600, start_s) for h in hours[::step]])
        ax.set_xlim(hours.min() - 0.6, hours.max() + 0.6)
    else:
        _no_data(ax, "no link.state snapshots in this run")
    ax.set_xlabel("hour starting at")
    ax.set_ylabel(_ylabel(series, "congestion index"))
    ax.set_title(f"{label} by hour")
    ax.grid(axis="y", alpha=0.3)
    return fig


def line_series(series: dict, start_s: float, duration_s: float, *, title: str, ylabel: str,
                colour: str, peak_t: float | None = None, steps: bool = False) -> Figure:
    """A quantity over the run against clock time, with the congestion peak marked. `steps`: the value
    holds until the next sample (a count that changes at events) rather than changing linearly."""
    fig = _figure(3.2)
    ax = fig.add_subplot()
    t, values = _series_arrays(series)
    if len(t):
        ax.plot(t, values, color=colour, lw=1.6, drawstyle="steps-post" if steps else "default")
        ax.fill_between(t, np.nan_to_num(values), color=colour, alpha=0.15, lw=0, step="post" if steps else None)
        ax.set_ylim(bottom=0)
        if steps:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if peak_t is not None:
            ax.axvline(peak_t, color="#444444", ls="--", lw=1, label=f"peak {clock_label(peak_t, start_s)}")
            ax.legend(loc="upper left", fontsize="small")
    else:
        _no_data(ax, "no data in this run")
    _clock_axis(ax, max(duration_s, float(t.max()) if len(t) else 0.0), start_s)
    ax.set_ylabel(_ylabel(series, ylabel))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig


def _hazard_colour(h: Hazard) -> str:
    if h.kind == "incident":
        return CAUSE_COLOURS.get(h.cause, OTHER_INCIDENT_COLOUR)
    return KIND_COLOURS[h.kind]


def hazard_timeline(hazards: Sequence[Hazard], duration_s: float, start_s: float,
                    peak_t: float | None = None) -> Figure:
    """Gantt chart: a row per hazard subject, rain also shaded behind every row, the peak marked."""
    rows: dict[tuple[str, str], list[Hazard]] = {}
    # rain first: it is the backdrop the other hazards happen against
    for h in sorted(hazards, key=lambda h: (h.kind != "rain", h.start)):
        rows.setdefault((h.kind, h.subject), []).append(h)
    shown = list(rows.items())[:MAX_TIMELINE_ROWS]
    fig = _figure(1.4 + 0.3 * len(shown))
    ax = fig.add_subplot()

    for h in hazards:
        if h.kind == "rain":
            ax.axvspan(h.start, h.end, color=KIND_COLOURS["rain"], alpha=0.12, lw=0, zorder=0)
    open_ended = False
    for i, (_, episodes) in enumerate(shown):
        ax.broken_barh([(h.start, max(h.end - h.start, 1.0)) for h in episodes], (i - 0.35, 0.7),
                       facecolors=[_hazard_colour(h) for h in episodes], zorder=2)
        for h in episodes:
            if h.open_ended:
                ax.plot(h.end, i, marker=">", color=_hazard_colour(h), ms=7, zorder=3, clip_on=False)
                open_ended = True
    ax.set_yticks(range(len(shown)), [episodes[0].label or f"{kind} {subject}".strip()
                                      for (kind, subject), episodes in shown])
    ax.set_ylim(len(shown) - 0.5, -0.5)
    if peak_t is not None:
        ax.axvline(peak_t, color="#444444", ls="--", lw=1, zorder=4)
    t_max = max([duration_s] + [h.end for h in hazards])
    _clock_axis(ax, t_max, start_s)
    ax.grid(axis="x", alpha=0.3)

    kinds = {(h.kind, h.cause if h.kind == "incident" else "") for h in hazards}
    handles = [Patch(color=CAUSE_COLOURS[c], label=f"incident: {c}") for c in CAUSE_COLOURS
               if ("incident", c) in kinds]
    if any(k == "incident" and c not in CAUSE_COLOURS for k, c in kinds):
        handles.append(Patch(color=OTHER_INCIDENT_COLOUR, label="incident: other cause"))
    handles += [Patch(color=KIND_COLOURS[k], label=k) for k in KIND_COLOURS if any(k == kk for kk, _ in kinds)]
    if open_ended:
        handles.append(Line2D([], [], ls="", marker=">", color="#444444", label="no end event: lasts to the end"))
    if peak_t is not None:
        handles.append(Line2D([], [], color="#444444", ls="--", lw=1,
                              label=f"congestion peak {clock_label(peak_t, start_s)}"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4) or 1, fontsize="small",
               frameon=False)
    hidden = len(rows) - len(shown)
    ax.set_title("Hazards over the run" + (f" (first {len(shown)} of {len(rows)} rows)" if hidden else ""))
    return fig


# -- field reporting -------------------------------------------------------------------------------------

def _channel_colour(name: str, others: list[str]) -> str:
    if name in CHANNEL_COLOURS:
        return CHANNEL_COLOURS[name]
    others.append(name)
    return OTHER_CHANNEL_COLOURS[(len(others) - 1) % len(OTHER_CHANNEL_COLOURS)]


def stacked_bins(series: dict, start_s: float, duration_s: float, *, title: str, ylabel: str) -> Figure:
    """Counts per time bin stacked by group (field reports by channel). `series["x"]` are the bins'
    starts in run time; each bin ends where the next starts, the last at the end of the run."""
    fig = _figure(3.4)
    ax = fig.add_subplot()
    x = np.asarray(series.get("x") or [], dtype=float)
    groups = {k: np.asarray(v, dtype=float) for k, v in (series.get("values") or {}).items()}
    if len(x) and groups and any(v.sum() > 0 for v in groups.values()):
        widths = np.diff(np.append(x, max(duration_s, x[-1] + 1.0)))
        bottom = np.zeros(len(x))
        others: list[str] = []
        for name, counts in groups.items():
            ax.bar(x, counts, width=widths, bottom=bottom, align="edge", color=_channel_colour(name, others),
                   edgecolor="white", lw=0.4, label=name)
            bottom += counts
        ax.legend(loc="upper left", fontsize="small", ncol=len(groups))
        ax.set_ylim(0, max(bottom.max() * 1.15, 1.0))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        _no_data(ax, "no field reports in this run")
    _clock_axis(ax, max(duration_s, float(x.max()) if len(x) else 0.0), start_s)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _category_axis(ax, categories: Sequence[str]) -> None:
    ax.set_yticks(range(len(categories)), list(categories))
    ax.set_ylim(len(categories) - 0.5, -0.5)  # the first category on top, as in the table below


def category_close_times(rows: Sequence[dict], *, title: str) -> Figure:
    """Per category: bars to the p50 and p90 time to close, and the category's deadline as a tick.
    A percentile the run did not reach (too many requests still open) is marked as such."""
    rows = [r for r in rows if r.get("reports")]
    fig = _figure(1.5 + 0.5 * max(len(rows), 1))
    ax = fig.add_subplot()
    if not rows:
        _no_data(ax, "no requests in this run")
        ax.set_title(title)
        return fig
    cats = [str(r["category"]) for r in rows]
    y = np.arange(len(rows))
    p50 = np.array([np.nan if r.get("close_p50_h") is None else r["close_p50_h"] for r in rows], float)
    p90 = np.array([np.nan if r.get("close_p90_h") is None else r["close_p90_h"] for r in rows], float)
    deadline = np.array([np.nan if r.get("deadline_h") is None else r["deadline_h"] for r in rows], float)
    handles = [ax.barh(y, np.nan_to_num(p50), height=0.4, color="#08519c", label="p50", zorder=2),
               ax.barh(y, np.nan_to_num(p90), height=0.7, color="#9ecae1", label="p90", zorder=1)]
    has = np.isfinite(deadline)
    handles.append(ax.scatter(deadline[has], y[has], marker="|", s=260, color="#222222", lw=2.2, zorder=3,
                              label="deadline"))
    right = np.nanmax(np.concatenate([p90, p50, deadline, [1.0]]))
    # a percentile the run did not reach goes in the row's label, where no bar or tick can cover it
    labels = [c + _unreached(r, p50[i], p90[i]) for i, (c, r) in enumerate(zip(cats, rows))]
    _category_axis(ax, labels)
    ax.set_xlim(0, right * 1.08)
    ax.set_xlabel("hours from report to close (originals)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize="small", frameon=False)
    return fig


def _unreached(row: dict, p50: float, p90: float) -> str:
    if row.get("reports", 0) - row.get("duplicates", 0) <= 0:
        return "\n(duplicates only)"
    if not np.isfinite(p50):
        return "\n(p50, p90 not reached)"
    return "\n(p90 not reached)" if not np.isfinite(p90) else ""


def category_shares(rows: Sequence[dict], key: str, count_key: str, *, target: float, target_label: str,
                    title: str, xlabel: str) -> Figure:
    """Per category: a share in %, with the target as a dashed line and how many requests it rests on."""
    rows = [r for r in rows if r.get("reports")]
    fig = _figure(1.5 + 0.42 * max(len(rows), 1))
    ax = fig.add_subplot()
    if not rows:
        _no_data(ax, "no requests in this run")
        ax.set_title(title)
        return fig
    values = np.array([np.nan if r.get(key) is None else r[key] for r in rows], float)
    y = np.arange(len(rows))
    colours = np.where(values >= target - 1e-9, "#31a354", "#fd8d3c")
    ax.barh(y, np.nan_to_num(values), height=0.65, color=colours)
    for i, r in enumerate(rows):
        text = f"{values[i]:.0f} % of {r.get(count_key, 0)}" if np.isfinite(values[i]) else "none judged yet"
        ax.text(1.0, i, text, va="center", fontsize="small", color="white" if values[i] >= 20 else "#333333")
    ax.axvline(target, **TARGET_STYLE, label=target_label)
    _category_axis(ax, [str(r["category"]) for r in rows])
    ax.set_xlim(0, 105)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", fontsize="small", frameon=False)
    return fig


def satisfaction_histogram(series: dict, *, mean: float | None = None) -> Figure:
    """Reporters' scores in whole stars, 1 to 5."""
    fig = _figure(3.0)
    ax = fig.add_subplot()
    stars, counts = _series_arrays(series)
    if len(stars) and np.nansum(counts) > 0:
        colours = [colormaps["RdYlGn"](float(v)) for v in np.linspace(0.1, 0.9, len(stars))]
        ax.bar(stars, counts, width=0.7, color=colours, edgecolor="#555555", lw=0.5)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if mean is not None:
            ax.axvline(mean, color="#222222", lw=1.2, label=f"mean {mean:.2f}")
            ax.legend(loc="upper left", fontsize="small")
    else:
        _no_data(ax, "no reporter rated an outcome in this run")
    ax.set_xticks([1, 2, 3, 4, 5], ["1 ★", "2 ★", "3 ★", "4 ★", "5 ★"])
    ax.set_xlim(0.4, 5.6)
    ax.set_xlabel("satisfaction (stars; 1 = very dissatisfied, 5 = very satisfied)")
    ax.set_ylabel("reporters")
    ax.set_title("Reporter satisfaction with the outcome")
    ax.grid(axis="y", alpha=0.3)
    return fig


def problem_map(city: City, x: np.ndarray, y: np.ndarray, state: Sequence[str], severity: np.ndarray, *,
                title: str) -> Figure:
    """Problems on the network, by what became of them (`state`: fixed | reported | unreported); marker
    size grows with severity. The unreported are drawn last and hollow so none hides under another."""
    fig, ax, span = _map_figure(city)
    ax.add_collection(LineCollection(link_segments(city, offset_m=0.0), colors="#c8c8c8", linewidths=0.8,
                                     capstyle="round", zorder=1))
    state = np.asarray(state, dtype=object)
    size = 18.0 * np.asarray(severity, dtype=float).clip(1, 3) ** 1.3
    handles = []
    for name in ("fixed", "reported", "unreported"):
        pick = state == name
        if not pick.any():
            continue
        colour, filled = PROBLEM_STYLES[name]
        ax.scatter(x[pick], y[pick], s=size[pick], facecolors=colour if filled else "none", edgecolors=colour,
                   lw=1.3, alpha=0.85, zorder=3 if filled else 4)
        handles.append(Line2D([], [], ls="", marker="o", ms=7, mfc=colour if filled else "none", mec=colour,
                              label=f"{PROBLEM_LABELS[name]} ({int(pick.sum()):,})"))
    if handles:
        handles.append(Line2D([], [], ls="", marker="o", ms=4, mfc="#bbbbbb", mec="#bbbbbb",
                              label="larger = more severe"))
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize="small", frameon=False)
    else:
        _no_data(ax, "no problems to place on the network")
    _finish_map(ax, city, title)
    return fig


# -- devices ---------------------------------------------------------------------------------------------

DEVICE_STYLES = {  # (colour, marker, legend name) by device type
    "detector": ("#3182bd", "s", "traffic detector"),
    "camera": ("#e6550d", "^", "camera"),
    "air": ("#31a354", "o", "air-quality sensor"),
    "noise": ("#9467bd", "D", "noise sensor"),
    "water_level": ("#08306b", "v", "water-level gauge"),
    "rain_gauge": ("#6baed6", "P", "rain gauge"),
}
OTHER_DEVICE_STYLE = ("#7f7f7f", "X", "")
CAMERA_VIEW_COLOUR = "#fd8d3c"
DETECTOR_LINK_COLOUR = "#3182bd"
BUS_ROUTE_COLOUR = "#8c564b"
UNGRIDDED_NOTES = {"camera": "no readings due: a camera reports what it sees",
                   "bus": "no readings due: a bus reports while in service"}
QUALITY_COLOURS = {"late": "#fdae6b", "duplicate": "#9e9ac8", "out_of_order": "#74c476", "faulty": "#de2d26"}
QUALITY_LABELS = {"late": "late", "duplicate": "duplicate", "out_of_order": "out of order",
                  "faulty": "faulty value"}


def device_map(city: City, sites: dict[str, tuple[np.ndarray, np.ndarray]], *, camera_links: np.ndarray,
               detector_links: np.ndarray, bus_links: np.ndarray, title: str) -> Figure:
    """Device sites by type over the network (grey); links in a camera's view, links with a detector and
    bus routes drawn over it. `sites` maps a device type to the map x, y of its devices; the masks are per
    link."""
    fig, ax, span = _map_figure(city)
    segments = link_segments(city, offset_m=0.0)
    ax.add_collection(LineCollection(segments, colors="#d0d0d0", linewidths=0.7, capstyle="round", zorder=1))
    handles = []
    for mask, colour, width, label, z in ((bus_links, BUS_ROUTE_COLOUR, 1.1, "bus route", 2),
                                          (camera_links, CAMERA_VIEW_COLOUR, 2.6, "in a camera's view", 3),
                                          (detector_links, DETECTOR_LINK_COLOUR, 1.6, "link with a detector", 4)):
        mask = np.asarray(mask, bool)
        if mask.any():
            ax.add_collection(LineCollection(segments[mask], colors=colour, linewidths=width, alpha=0.85,
                                             capstyle="round", zorder=z))
            handles.append(Line2D([], [], color=colour, lw=width + 0.4, label=f"{label} ({int(mask.sum()):,} links)"))
    for device_type, (x, y) in sites.items():
        if not len(x):
            continue
        colour, marker, name = DEVICE_STYLES.get(device_type, OTHER_DEVICE_STYLE)
        ax.scatter(x, y, s=34, marker=marker, color=colour, edgecolors="white", lw=0.6, zorder=6)
        handles.append(Line2D([], [], ls="", marker=marker, ms=7, color=colour, mec="white",
                              label=f"{name or device_type} ({len(x):,})"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize="small",
                   frameon=False)
    else:
        _no_data(ax, "no device sites to place on the network")
    _finish_map(ax, city, title)
    return fig


def share_over_time(series: dict, start_s: float, duration_s: float, *, target: float, target_label: str,
                    title: str, ylabel: str, colour: str = "#3182bd") -> Figure:
    """A share in % against clock time, with its target as a dashed line and its time-average."""
    fig = _figure(3.2)
    ax = fig.add_subplot()
    t, values = _series_arrays(series)
    if len(t):
        ax.plot(t, values, color=colour, lw=1.6, label=series.get("label") or ylabel)
        ax.fill_between(t, np.nan_to_num(values), color=colour, alpha=0.15, lw=0)
        mean = float(np.nanmean(values)) if np.isfinite(values).any() else None
        if mean is not None:
            ax.axhline(mean, color=colour, ls=":", lw=1.2, label=f"time-average {mean:.1f} %")
    else:
        _no_data(ax, "no data in this run")
    ax.axhline(target, **TARGET_STYLE, label=target_label)
    ax.set_ylim(0, 100)
    _clock_axis(ax, max(duration_s, float(t.max()) if len(t) else 0.0), start_s)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    return fig


def completeness_bars(rows: Sequence[dict], *, title: str) -> Figure:
    """Per device type: completeness (due readings delivered, %) on the left; on the right the shares of
    messages late, duplicated, out of order and with faulty values, side by side. A type with no grid of
    due readings (buses, cameras) is marked so instead of a bar."""
    rows = [r for r in rows if r.get("devices") or r.get("messages")]
    fig = _figure(1.6 + 0.5 * max(len(rows), 1))
    if not rows:
        ax = fig.add_subplot()
        _no_data(ax, "no devices in this run")
        ax.set_title(title)
        return fig
    left, right = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1.1, 1.0]})
    y = np.arange(len(rows))
    names = [str(r["device_type"]).replace("_", " ") for r in rows]
    done = np.array([np.nan if r.get("completeness") is None else r["completeness"] for r in rows], float)
    left.barh(y, np.nan_to_num(done), height=0.6, color="#3182bd")
    for i, r in enumerate(rows):
        text = (f"{done[i]:.1f} % of {r.get('due') or 0:,}" if np.isfinite(done[i])
                else UNGRIDDED_NOTES.get(str(r["device_type"]), "no readings due on a grid"))
        left.text(1.0, i, text, va="center", fontsize="small",
                  color="white" if np.isfinite(done[i]) and done[i] >= 30 else "#333333")
    left.set_yticks(y, names)
    left.set_ylim(len(rows) - 0.5, -0.5)
    left.set_xlim(0, 100)
    left.set_xlabel("completeness (% of due readings)")
    left.grid(axis="x", alpha=0.3)
    keys = list(QUALITY_COLOURS)
    h = 0.8 / len(keys)
    for j, key in enumerate(keys):
        values = np.array([np.nan if r.get(key) is None else r[key] for r in rows], float)
        right.barh(y - 0.4 + h * (j + 0.5), np.nan_to_num(values), height=h, color=QUALITY_COLOURS[key],
                   label=QUALITY_LABELS[key])
    right.set_xlabel("% of messages")
    right.xaxis.set_major_locator(MaxNLocator(5))
    right.set_xlim(left=0)
    right.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    fig.legend(*right.get_legend_handles_labels(), loc="outside lower center", ncol=len(keys), fontsize="small",
               frameon=False)
    return fig


def detection_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], *, title: str,
                     xlabel: str = "minutes from the event's start to the first camera alert at the IOC") -> Figure:
    """Cumulative share of events detected by time since they began (Kaplan–Meier steps), one curve each."""
    fig = _figure(3.3)
    ax = fig.add_subplot()
    colours = ("#d62728", "#fd8d3c", "#3182bd", "#31a354")
    drawn = False
    right = 1.0
    for (label, (t, cdf)), colour in zip(curves.items(), colours):
        t, cdf = np.asarray(t, float), np.asarray(cdf, float)
        if not len(t):
            ax.plot([], [], color=colour, label=label)
            continue
        ax.step(np.concatenate([[0.0], t]), 100.0 * np.concatenate([[0.0], cdf]), where="post", color=colour,
                lw=1.8, label=label)
        right = max(right, float(t.max()))
        drawn = True
    if not drawn:
        _no_data(ax, "no detections in this run")
    ax.set_xlim(0, right * 1.05)
    ax.set_ylim(0, 100)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("% detected by then")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="lower right", fontsize="small")
    return fig


def lead_time_histogram(lead_min: np.ndarray, not_warned: int, *, ahead_min: float, title: str) -> Figure:
    """Warning lead times of the floods that were warned, with the "enough time" mark; how many floods
    had no warning at all is in the legend, since they have no lead time to place."""
    fig = _figure(3.0)
    ax = fig.add_subplot()
    lead = np.asarray(lead_min, float)
    lead = lead[np.isfinite(lead)]
    if len(lead):
        width = 5.0 if lead.max() <= 120 else 15.0  # whole 5 or 15 minutes, so the mark falls on an edge
        bins = np.arange(0.0, lead.max() + width, width)
        ax.hist(lead, bins=bins if len(bins) > 1 else [0.0, width], color="#1f4e9c", edgecolor="white",
                label=f"warned ({len(lead):,})")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    elif not not_warned:
        _no_data(ax, "no floods at gauged junctions in this run")
    if not_warned:
        ax.bar([], [], color="#bbbbbb", label=f"not warned ({not_warned:,}): no lead time")
    ax.axvline(ahead_min, **TARGET_STYLE, label=f"{ahead_min:g} min ahead")
    ax.set_xlim(left=0)
    ax.set_xlabel("lead time (minutes from the first gauge alert to the flood)")
    ax.set_ylabel("floods")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    return fig


@dataclass(frozen=True)
class GaugeTrace:
    """One water-level gauge's readings and what happened at its junction."""

    label: str
    t: np.ndarray  # s since the scenario start (when measured)
    level_m: np.ndarray
    floods: tuple[tuple[float, float], ...] = ()  # (start, end) the junction was flooded
    warnings: tuple[float, ...] = ()  # when the IOC raised its level alert


def gauge_levels(traces: Sequence[GaugeTrace], warning_level_m: float, start_s: float, duration_s: float, *,
                 title: str) -> Figure:
    """Small multiples: each gauge's level against the warning level, flood periods shaded and the IOC's
    level alerts marked."""
    n = max(len(traces), 1)
    fig = _figure(1.0 + 1.35 * n)
    axes = np.atleast_1d(fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0])
    if not traces:
        _no_data(axes[0], "no water-level readings in this run")
    t_max = max([duration_s] + [float(tr.t.max()) for tr in traces if len(tr.t)])
    for ax, tr in zip(axes, traces):
        for s, e in tr.floods:
            ax.axvspan(s, e, color=KIND_COLOURS["flood"], alpha=0.18, lw=0)
        order = np.argsort(tr.t, kind="stable")
        ax.plot(tr.t[order], tr.level_m[order], color="#08306b", lw=1.2)
        ax.axhline(warning_level_m, color="#d62728", ls="--", lw=1.0)
        for w in tr.warnings:
            ax.axvline(w, color="#d62728", lw=0.9, alpha=0.8)
        top = max(float(np.nanmax(tr.level_m)) if len(tr.level_m) else 0.0, warning_level_m) * 1.15
        ax.set_ylim(0, top)
        ax.set_ylabel("m")
        ax.set_title(tr.label, fontsize="small", loc="left")
        ax.grid(alpha=0.3)
    _clock_axis(axes[-1], t_max, start_s)
    handles = [Line2D([], [], color="#08306b", lw=1.2, label="water level"),
               Line2D([], [], color="#d62728", ls="--", lw=1.0, label=f"warning level {warning_level_m:g} m"),
               Line2D([], [], color="#d62728", lw=0.9, label="IOC level alert raised"),
               Patch(color=KIND_COLOURS["flood"], alpha=0.3, label="junction flooded")]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize="small", frameon=False)
    fig.suptitle(title)
    return fig

"""The live-drive report: one self-contained HTML page of how the IOC held the load it was driven with.

It reads like the run report (`twin/report/html.py`, same style sheet, figures inlined as PNG, no script,
no external address) and is built from the drive's `Stats` alone: the HDR histograms give the exact
percentiles, CDFs and distributions; the per-second counters give latency, throughput and errors over
time. Latencies are measured from each interaction's intended send time (open model), so a stalled server
shows here as it would to the city, not as a closed-loop generator would hide it.

Readable with 1 to 20 keys and runs from 10 s to an hour: figures draw at most `MAX_KEY_LINES` keys (the
busiest) and say so in their caption, and time series are binned so a bar or point stays visible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from matplotlib import colormaps, rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from citytwin.twin.report.common import CSS, facts_table, format_value, img
from citytwin.twin.report.figures import DPI, WIDTH_IN

from citytwin.twin.drive.stats import COARSE_HIGHEST_S, COARSE_LEN, LAG, OpStats, Stats, is_e2e

ERROR_KINDS = ("timeout", "connection", "http_4xx", "http_5xx", "invalid_body", "overload")
ERROR_COLOURS = {"timeout": "#d62728", "connection": "#7f2704", "http_4xx": "#fd8d3c", "http_5xx": "#e6550d",
                 "invalid_body": "#9467bd", "overload": "#636363"}
OTHER_ERROR_COLOUR = "#bdbdbd"
TABLE_PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
OVER_TIME_PERCENTILES = (("p50", "#3182bd"), ("p95", "#fd8d3c"), ("p99", "#d62728"))
MAX_KEY_LINES = 8  # beyond this lines and stacks stop being told apart; the busiest keys are drawn
MAX_E2E_PANELS = 4
MAX_TIME_BINS = 240  # bins of a series over time: ~4 px each at the report's width
TIME_BIN_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
KEY_COLOURS = colormaps["tab10"]
REPORT_RC = {"font.family": ["sans-serif"]}  # the run report's look, whatever the process set since
MIN_LOG_MS = 1e-3  # 1 µs, the histograms' resolution: a zero goes here on a log axis

DRIVE_CSS = """
tr.failed td { background: #fde0dd; }
td.failed { color: #a50f15; font-weight: bold; }
td.ok { color: #1b7837; }
tr.total td { font-weight: bold; border-top: 2px solid #ccc; }
tr.errors td { background: #fff3e0; }
table.keys { font-size: .85rem; }
table.keys td, table.keys th { padding: .2rem .45rem; }
.verdict-failed { color: #a50f15; font-weight: bold; }
.verdict-ok { color: #1b7837; font-weight: bold; }
"""


# -- numbers out of Stats ---------------------------------------------------------------------------------

def percentile_ms(op: OpStats, p: float) -> float | None:
    """The p-th percentile in milliseconds; p = 100 is the exact maximum (as thresholds and summary.json
    read it), not the top of its HDR bucket. None with no measurement."""
    value = op.max_s if p >= 100.0 else op.percentile(p)
    return None if value is None else value * 1000.0


def request_keys(ops: dict[str, OpStats]) -> list[str]:
    """Operation keys (no e2e), in name order so an interface's operations sit together."""
    return sorted(k for k in ops if not is_e2e(k))


def e2e_keys(ops: dict[str, OpStats]) -> list[str]:
    return sorted(k for k in ops if is_e2e(k))


def busiest(ops: dict[str, OpStats], keys: Iterable[str], limit: int = MAX_KEY_LINES) -> list[str]:
    """The `limit` keys with the most measurements, busiest first (name breaks ties, so runs compare)."""
    return sorted(keys, key=lambda k: (-ops[k].count, k))[:limit]


def recorded_values_ms(op: OpStats) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct value the HDR histogram holds (ms, ascending, each bucket at its highest equivalent
    value as HdrHistogram reports it) and how many measurements fell into it."""
    histogram = op.latency
    if not op.count or not histogram.get_total_count():
        return np.zeros(0), np.zeros(0)
    # hdrh's recorded-value iterator, without its Python loop over every one of the ~23,000 counters
    dense = np.ctypeslib.as_array(histogram.counts)[:histogram.counts_len]
    indices = np.flatnonzero(dense)
    values = [histogram.get_highest_equivalent_value(histogram.get_value_from_index(int(i))) for i in indices]
    return np.asarray(values, float) / 1000.0, dense[indices].astype(float)


def cdf_points(op: OpStats) -> tuple[np.ndarray, np.ndarray]:
    """Latency (ms) against the share of measurements at or below it, at the plotting position i/(n+1):
    never 1, so the slowest measurement still has a place on a "nines" axis instead of at infinity."""
    values, counts = recorded_values_ms(op)
    if not len(values):
        return values, counts
    return values, np.cumsum(counts) / (counts.sum() + 1.0)


SNAPSHOT_FORMAT = "citytwin.drive.stats/1"


@dataclass(frozen=True)
class TimeBins:
    """The run cut into bins of `step` seconds: at most MAX_TIME_BINS of them, so a bar or a point of a
    one-hour run stays as visible as one of a ten-second run; the last bin may be shorter."""

    step: int
    edges: np.ndarray  # s since the start of the stats clock

    @classmethod
    def over(cls, axis_s: float) -> TimeBins:
        step = time_bin_s(axis_s)
        n = max(1, math.ceil(axis_s / step))
        edges = np.arange(n + 1, dtype=float) * step
        edges[-1] = max(float(axis_s), edges[-2] + 1.0)
        return cls(step=step, edges=edges)

    @property
    def middles(self) -> np.ndarray:
        return (self.edges[:-1] + self.edges[1:]) / 2.0

    @property
    def widths(self) -> np.ndarray:
        return np.diff(self.edges)

    def __len__(self) -> int:
        return len(self.edges) - 1


@dataclass(frozen=True)
class KeySeries:
    """One key over the run, bin by bin (`TimeBins`)."""

    count: np.ndarray  # measurements completed in each bin
    errors: dict[str, np.ndarray]  # failed in each bin, by error kind
    percentiles_ms: dict[str, np.ndarray]  # "p50", "p95", "p99" of each bin's own measurements (NaN: none)


def key_series(snapshot: dict[str, Any], bins: TimeBins) -> dict[str, KeySeries]:
    """Per key, its per-second counters (from `Stats.to_dict()`) summed into `bins`.

    The percentiles of a bin come from its merged per-second histograms (1/32 octave, within ~3 %), so a
    bin's p99 is the p99 of the requests that completed in it — not the run's p99 so far, which flattens
    out as the run goes on and would hide a stall. An unknown snapshot format gives no series (the
    figures then say so) rather than no report.
    """
    if snapshot.get("format") != SNAPSHOT_FORMAT:
        return {}
    return {key: _binned(entry["seconds"], bins) for key, entry in snapshot["keys"].items()}


def _binned(seconds: list[list], bins: TimeBins) -> KeySeries:
    n = len(bins)
    count = np.zeros(n)
    errors: dict[str, np.ndarray] = {}
    dense = np.zeros((n, COARSE_LEN), dtype=np.int64)
    # each second: [second, count, errors by kind, bytes, sum_us, min_us, max_us, coarse indices, counts]
    for second, n_done, kinds, _bytes, _sum, _min, _max, indices, counts in seconds:
        b = min(int(second) // bins.step, n - 1)
        count[b] += n_done
        for kind, failed in kinds.items():
            errors.setdefault(kind, np.zeros(n))[b] += failed
        np.add.at(dense[b], np.asarray(indices, dtype=np.int64), np.asarray(counts, dtype=np.int64))
    return KeySeries(count=count, errors=errors,
                     percentiles_ms={name: coarse_percentile_ms(dense, float(name[1:]))
                                     for name, _ in OVER_TIME_PERCENTILES})


def coarse_percentile_ms(dense: np.ndarray, p: float) -> np.ndarray:
    """The p-th percentile (ms) of each row of per-second-resolution counters, NaN for an empty row, by
    hdrh's rule (the value at which the count reaches p % of the total, rounded half up, at least 1)."""
    cumulative = np.cumsum(dense, axis=1)
    total = cumulative[:, -1]
    target = np.maximum(np.floor(p * total / 100.0 + 0.5), 1)
    index = np.argmax(cumulative >= target[:, None], axis=1)
    return np.where(total > 0, COARSE_HIGHEST_S[index] * 1000.0, np.nan)


# -- time axes --------------------------------------------------------------------------------------------

def time_bin_s(duration_s: float) -> int:
    """The smallest step that keeps a run under MAX_TIME_BINS bins."""
    for step in TIME_BIN_STEPS_S:
        if duration_s / step <= MAX_TIME_BINS:
            return step
    return TIME_BIN_STEPS_S[-1]


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _time_axis(ax, duration_s: float) -> None:
    """Elapsed time since the start as m:ss (h:mm:ss past an hour), ticks on round steps."""
    end = max(float(duration_s), 1.0)
    step = next((s for s in TIME_BIN_STEPS_S if end / s <= 10), TIME_BIN_STEPS_S[-1])
    ax.xaxis.set_major_locator(FixedLocator(np.arange(0.0, end + 1e-9, step)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _clock(x)))
    ax.set_xlim(0.0, end)


def latency_label(ms: float) -> str:
    """A latency as people say it: 250 µs, 12 ms, 1.5 s, 2.5 min."""
    if ms <= 0 or not math.isfinite(ms):
        return "0"
    if ms < 1.0:
        return f"{ms * 1000:.3g} µs"
    if ms < 1000.0:
        return f"{ms:.3g} ms"
    if ms < 100_000.0:
        return f"{ms / 1000:.3g} s"
    return f"{ms / 60_000:.3g} min"


def _latency_axis(axis, low: float, high: float) -> None:
    """Latency ticks on a log axis: powers of ten over a wide span; 1-2-5 steps under two decades (powers
    of ten alone would leave one label or none); a few evenly spaced ones within a decade."""
    if high < low * 10.0:
        axis.set_major_locator(MaxNLocator(nbins=5, steps=(1, 2, 2.5, 5, 10)))
    else:
        axis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0) if high <= low * 100.0 else (1.0,)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: latency_label(v)))
    axis.set_minor_formatter(NullFormatter())


def _figure(height_in: float) -> Figure:
    return Figure(figsize=(WIDTH_IN, height_in), dpi=DPI, layout="constrained")


def _no_data(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color="#666666")
    ax.set_xticks([])
    ax.set_yticks([])


def key_colours(keys: Sequence[str]) -> dict[str, Any]:
    """One colour per key, the same in every figure of the report."""
    return {k: KEY_COLOURS(i % KEY_COLOURS.N) for i, k in enumerate(keys)}


# -- figures ----------------------------------------------------------------------------------------------

def latency_over_time(series: dict[str, KeySeries], bins: TimeBins, keys: Sequence[str]) -> Figure:
    """Small multiples, one per key: p50, p95 and p99 latency of each time bin on a log axis."""
    keys = [k for k in keys if k in series]
    columns = 2 if len(keys) > 1 else 1
    rows = max(1, math.ceil(len(keys) / columns))
    fig = _figure(1.2 + 2.0 * rows)
    axes = fig.subplots(rows, columns, sharex=True, squeeze=False)
    for ax, key in zip(axes.flat, keys):
        low, high = math.inf, 0.0
        for name, colour in OVER_TIME_PERCENTILES:
            # NaN (a bin with nothing completed) breaks the line rather than bridging the gap; the marker
            # keeps a lone bin between two gaps visible
            values = np.where(series[key].percentiles_ms[name] > 0, series[key].percentiles_ms[name], np.nan)
            if np.isfinite(values).any():
                ax.plot(bins.middles, values, color=colour, lw=1.2, marker=".", markersize=3, label=name)
                low, high = min(low, float(np.nanmin(values))), max(high, float(np.nanmax(values)))
        if high > 0:
            ax.set_yscale("log")
            _latency_axis(ax.yaxis, low, high)
            ax.grid(alpha=0.3, which="major")
        else:
            _no_data(ax, "no latency measured")
        ax.set_title(key, fontsize="medium", loc="left")
        _time_axis(ax, bins.edges[-1])
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    if not keys:
        _no_data(axes[0, 0], "no requests in this run")
    handles, labels = next((a.get_legend_handles_labels() for a in axes.flat if a.get_legend_handles_labels()[0]),
                           ([], []))
    if handles:
        fig.legend(handles, labels, loc="outside upper right", ncols=len(handles), fontsize="small")
    fig.suptitle("Latency over the run (from the intended send time)", x=0.01, ha="left")
    fig.supxlabel("time since the start (m:ss)", fontsize="medium")
    return fig


NINES_TICKS = (0.0, math.log10(2.0), 1.0, math.log10(20.0), 2.0, 3.0, 4.0, 5.0, 6.0)
NINES_LABELS = ("0 %", "50 %", "90 %", "95 %", "99 %", "99.9 %", "99.99 %", "99.999 %", "99.9999 %")


def latency_cdfs(ops: dict[str, OpStats], keys: Sequence[str], colours: dict[str, Any]) -> Figure:
    """Latency CDF of each key from its HDR histogram: latency on a log axis, the share of requests at or
    below it on a "nines" axis (−log10(1 − share)), so the tail gets as much room as the body, as in the
    HdrHistogram plots of wrk2."""
    fig = _figure(4.2)
    ax = fig.add_subplot()
    top, low, high = 0.0, math.inf, 0.0
    for key in keys:
        values, share = cdf_points(ops[key])
        if not len(values):
            continue
        values = np.maximum(values, MIN_LOG_MS)
        nines = -np.log10(1.0 - share)
        top, low, high = max(top, float(nines[-1])), min(low, float(values[0])), max(high, float(values[-1]))
        ax.step(values, nines, where="post", color=colours.get(key), lw=1.5, label=f"{key} ({ops[key].count:,})")
    if top > 0:
        ax.set_xscale("log")
        _latency_axis(ax.xaxis, low, high)
        ceiling = max(2.0, top * 1.04)  # up to 99 % at least: a short run's curve stops visibly below it
        shown = [i for i, t in enumerate(NINES_TICKS) if t <= ceiling]
        ax.set_yticks([NINES_TICKS[i] for i in shown], [NINES_LABELS[i] for i in shown])
        ax.set_ylim(0.0, ceiling)
        ax.grid(alpha=0.3, which="major")
        ax.legend(loc="upper left", fontsize="small")
    else:
        _no_data(ax, "no latency measured")
    ax.set_xlabel("latency (from the intended send time)")
    ax.set_ylabel("requests at or below (percentile)")
    ax.set_title("Latency distribution by operation (HDR histograms)")
    return fig


def throughput_and_errors(series: dict[str, KeySeries], bins: TimeBins, keys: Sequence[str],
                          others: Sequence[str], colours: dict[str, Any]) -> Figure:
    """Two panels on one time axis: requests completed per second stacked by key (the `others` together in
    grey), and failed requests per second stacked by error kind with the failed share on a second axis."""
    fig = _figure(5.4)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    layers = [(key, series[key].count / bins.widths, colours.get(key)) for key in keys if key in series]
    rest = [series[k].count for k in others if k in series]
    if rest:
        layers.append((f"{len(rest)} other operation{'s' if len(rest) != 1 else ''}",
                       np.sum(rest, axis=0) / bins.widths, "#bdbdbd"))
    total = _stairs_stack(top, bins, layers, alpha=0.85)
    if total is None:
        _no_data(top, "no requests in this run")
    else:
        _stack_legend(top, ncols=2)
    top.set_ylabel("requests/s" + (f" ({bins.step} s bins)" if bins.step > 1 else ""))
    top.set_title("Throughput against errors", loc="left")
    top.grid(alpha=0.3)
    _error_panel(bottom, series, bins, list(keys) + list(others), total)
    _time_axis(bottom, bins.edges[-1])
    bottom.set_xlabel("time since the start (m:ss)")
    return fig


def _stairs_stack(ax, bins: TimeBins, layers: Sequence[tuple[str, np.ndarray, Any]], *,
                  alpha: float) -> np.ndarray | None:
    """Stack `layers` (label, value per bin, colour) as filled steps on the bins' exact edges; the top."""
    if not layers:
        return None
    below = np.zeros(len(bins))
    for label, values, colour in layers:
        ax.stairs(below + values, bins.edges, baseline=below, fill=True, color=colour, alpha=alpha, label=label,
                  lw=0)
        below = below + values
    ax.set_ylim(0, max(1e-9, float(below.max())) * 1.08 if below.max() > 0 else 1.0)
    return below


def _stack_legend(ax, *, ncols: int) -> None:
    """The legend in the order the layers appear, top layer first."""
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], loc="upper left", fontsize="small", ncols=ncols)


def _error_panel(ax, series: dict[str, KeySeries], bins: TimeBins, keys: Sequence[str],
                 total: np.ndarray | None) -> None:
    by_kind: dict[str, np.ndarray] = {}
    for key in keys:
        for kind, counts in (series[key].errors.items() if key in series else ()):
            by_kind[kind] = by_kind.get(kind, 0) + counts
    kinds = [k for k in ERROR_KINDS if k in by_kind] + sorted(k for k in by_kind if k not in ERROR_KINDS)
    layers = [(kind, by_kind[kind] / bins.widths, ERROR_COLOURS.get(kind, OTHER_ERROR_COLOUR)) for kind in kinds]
    failed = _stairs_stack(ax, bins, layers, alpha=0.9)
    if failed is None or not failed.any():
        ax.text(0.5, 0.5, "no errors", transform=ax.transAxes, ha="center", va="center", color="#1b7837")
        ax.set_ylim(0, 1)
    else:
        _stack_legend(ax, ncols=3)
        if total is not None:
            share = ax.twinx()
            with np.errstate(divide="ignore", invalid="ignore"):
                percent = np.where(total > 0, 100.0 * failed / total, np.nan)
            share.plot(bins.middles, percent, color="#222222", lw=1.0, ls=":", drawstyle="steps-mid",
                       label="failed share")
            peak = float(np.nanmax(percent)) if np.isfinite(percent).any() else 100.0
            share.set_ylim(0, min(100.0, max(1.0, peak * 1.15)))
            share.set_ylabel("failed (% of requests)")
            share.legend(loc="upper right", fontsize="small")
    ax.set_ylabel("errors/s")
    ax.grid(alpha=0.3)


def distributions(ops: dict[str, OpStats], keys: Sequence[str], *, title: str, colour: str = "#3182bd",
                  xlabel: str = "latency") -> Figure:
    """One panel per key: how its measurements spread over log-spaced bins, from the HDR histogram, with
    the p50, p95, p99 and maximum marked."""
    keys = list(keys)
    columns = min(2, max(1, len(keys)))
    rows = max(1, math.ceil(len(keys) / columns))
    fig = _figure(0.8 + 2.6 * rows)
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, key in zip(axes.flat, keys):
        _distribution_panel(ax, ops[key], key, colour, xlabel)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    if not keys:
        _no_data(axes[0, 0], "nothing measured")
    fig.suptitle(title, x=0.01, ha="left")
    return fig


def _distribution_panel(ax, op: OpStats, key: str, colour: str, xlabel: str) -> None:
    values, counts = recorded_values_ms(op)
    if not len(values):
        _no_data(ax, f"{key}: nothing measured")
        return
    floor = max(MIN_LOG_MS, float(values[values > 0].min()) if (values > 0).any() else MIN_LOG_MS)
    clipped = np.maximum(values, floor)  # a zero lag has no place on a log axis: it joins the first bin
    low, high = floor, max(float(clipped.max()), floor * 1.01)
    edges = np.geomspace(low / 1.05, high * 1.05, min(50, max(8, len(values) + 1)))
    ax.hist(clipped, bins=edges, weights=counts, color=colour, alpha=0.8)
    ax.set_xscale("log")
    _latency_axis(ax.xaxis, low, high)
    marks = (("p50", 50.0, "#222222", "-"), ("p95", 95.0, "#fd8d3c", "--"), ("p99", 99.0, "#d62728", "--"),
             ("max", 100.0, "#7f7f7f", ":"))
    for name, p, line_colour, style in marks:
        value = percentile_ms(op, p)
        if value is not None:
            ax.axvline(max(value, floor), color=line_colour, ls=style, lw=1.1, label=f"{name} {latency_label(value)}")
    ax.legend(loc="best", fontsize="x-small")
    ax.set_title(f"{key} ({op.count:,})", fontsize="medium", loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("measurements")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3, which="major")


# -- the page ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Snapshot:
    """What the page is built from, read out of `Stats` once (each `get` builds a histogram)."""

    ops: dict[str, OpStats]  # every operation and e2e key
    total: OpStats  # every key but e2e.*, merged
    lag: OpStats
    bins: TimeBins
    series: dict[str, KeySeries]
    duration_s: float  # wall seconds the drive ran: rates are over this

    @classmethod
    def of(cls, stats: Stats, meta: dict[str, Any]) -> Snapshot:
        data = stats.to_dict()
        last = max((row[0] for entry in data.get("keys", {}).values() for row in entry.get("seconds", [])),
                   default=-1)
        duration_s = _duration(stats, meta)
        # the time axes reach the last second measured, should it end after the wall time given
        bins = TimeBins.over(max(duration_s, last + 1.0, 1.0))
        ops = {k: stats.get(k) for k in stats.keys()}
        total = OpStats(key="all")  # what stats.merged() gives, without building every histogram again
        for key in request_keys(ops):
            total.merge(ops[key])
        return cls(ops=ops, total=total, lag=stats.get(LAG), bins=bins, series=key_series(data, bins),
                   duration_s=duration_s)


def write_drive_report(path: str | Path, stats: Stats, results: Sequence[Any], meta: dict[str, Any]) -> Path:
    """Write the live drive's HTML report to `path` and return it.

    `results` are the threshold results (`expr`, `ok`, `actual`, `unit`); `meta` describes the run, every
    entry optional: target, mqtt, scenario, speedup, started_at (ISO time or Unix seconds), wall_s (wall
    seconds the drive ran; else the span of the measurements), virtual_s, interrupted, devices, messages,
    workers, seed, title.
    """
    path = Path(path)
    snap = Snapshot.of(stats, meta)
    title = meta.get("title") or (f"citytwin live drive: {meta.get('scenario') or 'run'} against "
                                  f"{meta.get('target') or 'the target'}")
    # UXsim sets a monospace font for the whole process when the twin's traffic engine starts
    with rc_context(REPORT_RC):
        body = "\n".join([
            _header(title, snap, results, meta),
            _threshold_section(results),
            _keys_section(snap),
            _latency_section(snap),
            _throughput_section(snap),
            _e2e_section(snap),
            _lag_section(snap),
            _footer(),
        ])
    document = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}{DRIVE_CSS}</style>\n</head>\n<body>\n<main>\n{body}\n"
        "</main>\n</body>\n</html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document, encoding="utf-8")
    return path


def _duration(stats: Stats, meta: dict[str, Any]) -> float:
    for name in ("wall_s", "duration_s"):
        if meta.get(name) is not None:
            return max(float(meta[name]), 0.0)
    return stats.span_s


def _started_at(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, (int, float)):
        value = datetime.fromtimestamp(float(value), timezone.utc)
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).isoformat(timespec="seconds")
    except ValueError:
        return str(value)


def duration_text(seconds: float) -> str:
    """A wall duration as people say it: 42.5 s, 2 min 5 s, 1 h 0 min."""
    if seconds < 60:
        return f"{round(seconds, 1):g} s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def verdict(results: Sequence[Any], interrupted: bool) -> tuple[str, bool]:
    """What the drive's exit code says, in words, and whether it is a pass."""
    failed = sum(1 for r in results if not r.ok)
    plural = "s" if len(results) != 1 else ""
    if failed:
        text = f"{failed} of {len(results)} threshold{plural} failed"
    elif results:
        text = f"all {len(results)} threshold{plural} held"
    else:
        text = "no thresholds set"
    if interrupted:
        text = f"interrupted (results for the time run); {text}"
    return text, not failed and not interrupted


def _header(title: str, snap: Snapshot, results: Sequence[Any], meta: dict[str, Any]) -> str:
    text, passed = verdict(results, bool(meta.get("interrupted")))
    speedup, virtual = meta.get("speedup"), meta.get("virtual_s")
    wall = duration_text(snap.duration_s) + (f" ({duration_text(float(virtual))} of virtual time)" if virtual else "")
    rows = [
        ("Target", escape(str(meta.get("target") or "—"))),
        ("MQTT broker", escape(str(meta.get("mqtt") or "—"))),
        ("Scenario", escape(str(meta.get("scenario") or "—"))),
        ("Speedup", escape(f"×{format_value(float(speedup))}" if speedup is not None else "—")),
        ("Wall duration", escape(wall)),
        ("Started at", escape(_started_at(meta.get("started_at")))),
    ]
    if meta.get("shape") not in (None, "constant"):
        rows.append(("Load shape", escape(f"{meta['shape']} (multiplier of the speedup over wall time)")))
    if meta.get("virtual_from_s"):
        rows.append(("Sent from", escape(f"{meta.get('from')} of the scenario's day (fast-forwarded to it)")))
    for name, label in (("devices", "Devices"), ("messages", "Messages sent"), ("reports", "Reports sent"),
                        ("workers", "Workers"), ("seed", "Seed")):
        if meta.get(name) is not None:
            rows.append((label, escape(format_value(meta[name]))))
    rows.append(("Verdict", f'<span class="verdict-{"ok" if passed else "failed"}">{escape(text)}</span>'))
    return (f"<header>\n<h1>{escape(title)}</h1>\n{facts_table(rows)}\n"
            f"<p>{escape(_overview(snap))}</p>\n</header>")


def _overview(snap: Snapshot) -> str:
    keys, total = request_keys(snap.ops), snap.total
    if not keys:
        return "No requests were measured."
    failed = total.error_count
    share = 100.0 * failed / total.count if total.count else 0.0
    rate = format_value(total.count / snap.duration_s) if snap.duration_s > 0 else "—"
    p99 = percentile_ms(total, 99.0)
    text = (f"{total.count:,} requests over {duration_text(snap.duration_s)} ({rate} per second) on {len(keys)} "
            f"operation{'s' if len(keys) != 1 else ''}; {failed:,} failed ({format_value(share)} %); "
            f"p99 latency of all requests {latency_label(p99) if p99 is not None else '—'}")
    lag = percentile_ms(snap.lag, 99.0)
    if lag is not None:
        text += f"; p99 send lag {latency_label(lag)}"
    return text + "."


def _threshold_section(results: Sequence[Any]) -> str:
    if not results:
        body = '<p class="note">No thresholds were set for this run (--threshold).</p>'
    else:
        rows = []
        for r in results:
            actual = "no data" if r.actual is None else f"{format_value(r.actual)}{_unit_text(r.unit)}"
            status = '<td class="ok">ok</td>' if r.ok else '<td class="failed">failed</td>'
            marked = "" if r.ok else ' class="failed"'
            rows.append(f"<tr{marked}><td><code>{escape(str(r.expr))}</code></td>"
                        f'<td class="num">{escape(actual)}</td>{status}</tr>')
        body = ("<table><tr><th>Threshold</th><th>Actual</th><th>Status</th></tr>" + "".join(rows) + "</table>\n"
                '<p class="note">A threshold with nothing to judge it by (no measurement of its metric) fails, as '
                "in k6. A failed threshold makes the drive exit with code 99.</p>")
    return f'<section id="thresholds">\n<h2>Thresholds</h2>\n{body}\n</section>'


def _unit_text(unit: Any) -> str:
    if not unit:
        return ""
    return str(unit) if str(unit) in ("%", "/s") else f" {unit}"


KEY_COLUMNS = ("Operation", "Count", "Per second", "Failed", "Errors by kind", "p50", "p90", "p95", "p99",
               "p99.9", "max")


def _keys_section(snap: Snapshot) -> str:
    keys, e2e = request_keys(snap.ops), e2e_keys(snap.ops)
    if not keys and not e2e:
        return '<section id="keys">\n<h2>Operations</h2>\n<p class="note">Nothing was measured.</p>\n</section>'
    rows = [_key_row(k, snap.ops[k], snap.duration_s) for k in keys]
    if len(keys) > 1:
        rows.append(_key_row("all requests", snap.total, snap.duration_s, total=True))
    rows += [_key_row(k, snap.ops[k], snap.duration_s) for k in e2e]
    head = "".join(f"<th>{escape(c)}</th>" for c in KEY_COLUMNS)
    note = ('<p class="note">Latencies in milliseconds from the intended send time (a late send counts against '
            "the server) to completion; a failed request's latency is its time to fail. Percentiles come from HDR "
            "histograms (3 significant digits; each reads the top of its bucket, so a p99.9 can sit a hair above "
            "the exact max), as in summary.json and the thresholds. End-to-end keys (e2e.*) run from the message "
            "sent to its effect notified back: e2e.entity to the NGSI-LD notification of the entity's change, "
            "e2e.alert to the IOC's alert on MQTT, e2e.report from a citizen's Open311 POST to the first check "
            "that showed the request closed (wall time, so crews' virtual hours count divided by the speedup). "
            "open311.* are the citizens' calls (post, token lookup, get), operator.* the operators' and crews' "
            "(queue, get, acknowledge, assign, start, resolve, close, duplicate). Error kinds: timeout, connection (refused or dropped), http_4xx, http_5xx, "
            "invalid_body (a reply the driver could not use), overload (the driver's own in-flight cap was hit, "
            "so the request was never sent). Operations with failed requests are shaded.</p>")
    return (f'<section id="keys">\n<h2>Operations</h2>\n<table class="keys"><tr>{head}</tr>{"".join(rows)}</table>\n'
            f"{note}\n</section>")


def _key_row(key: str, op: OpStats, duration_s: float, *, total: bool = False) -> str:
    failed = op.error_count
    share = f" ({format_value(100.0 * failed / op.count)} %)" if op.count and failed else ""
    kinds = ", ".join(f"{kind} {n:,}" for kind, n in _sorted_errors(op.errors) if n) or "—"
    cells = [f"<td>{escape(key)}</td>",
             _num(format_value(op.count)),
             _num(format_value(op.count / duration_s) if duration_s > 0 else "—"),
             _num(f"{failed:,}{share}"),
             f"<td>{escape(kinds)}</td>"]
    cells += [_num(format_value(percentile_ms(op, p))) for p in TABLE_PERCENTILES + (100.0,)]
    style = ' class="total"' if total else ' class="errors"' if failed else ""
    return f"<tr{style}>" + "".join(cells) + "</tr>"


def _sorted_errors(errors: dict[str, int]) -> list[tuple[str, int]]:
    def rank(item: tuple[str, int]) -> tuple[int, str]:
        kind = item[0]
        return (ERROR_KINDS.index(kind) if kind in ERROR_KINDS else len(ERROR_KINDS), kind)

    return sorted(errors.items(), key=rank)


def _num(text: str) -> str:
    return f'<td class="num">{escape(text)}</td>'


def _capped(shown: Sequence[str], keys: Sequence[str], what: str = "operations") -> str:
    if len(keys) <= len(shown):
        return ""
    return f" Only the {len(shown)} busiest of the {len(keys)} {what} are drawn; the table above lists them all."


def _latency_section(snap: Snapshot) -> str:
    keys = request_keys(snap.ops)
    shown = busiest(snap.ops, keys)
    per = f"{snap.bins.step}-second bin" if snap.bins.step > 1 else "second"
    over_time = img(latency_over_time(snap.series, snap.bins, shown), "Latency percentiles over time by operation",
                    f"p50, p95 and p99 latency of the requests each operation completed in each {per} of the run, "
                    "on a log scale (from the per-second histograms, within ~3 %). A gap is a "
                    f"{per} with nothing completed.{_capped(shown, keys)}")
    cdfs = img(latency_cdfs(snap.ops, shown, key_colours(shown)), "Latency CDFs by operation",
               "Share of each operation's requests completed within a latency, from its HDR histogram over the "
               "whole run. The vertical axis is in nines (90 %, 99 %, 99.9 %…) so the tail is as readable as the "
               "body; request i of n is placed at i/(n+1), so the slowest sits at the top of its curve. The legend "
               f"gives the number of requests.{_capped(shown, keys)}")
    return f'<section id="latency">\n<h2>Latency</h2>\n{over_time}\n{cdfs}\n</section>'


def _throughput_section(snap: Snapshot) -> str:
    keys = request_keys(snap.ops)
    shown = busiest(snap.ops, keys)
    others = [k for k in keys if k not in shown]
    fig = throughput_and_errors(snap.series, snap.bins, shown, others, key_colours(shown))
    step = snap.bins.step
    caption = ("Top: requests completed per second, stacked by operation. Bottom: failed requests per second, "
               "stacked by error kind, and the failed share of all requests (dotted, right axis)."
               + (f" Averaged over {step}-second bins." if step > 1 else "")
               + (f" The {len(shown)} busiest operations have their own colour; the other {len(others)} are "
                  "stacked together in grey." if others else ""))
    return (f'<section id="throughput">\n<h2>Throughput and errors</h2>\n'
            f"{img(fig, 'Throughput against errors over time', caption)}\n</section>")


def _e2e_section(snap: Snapshot) -> str:
    keys = e2e_keys(snap.ops)
    if not keys:
        body = ('<p class="note">No end-to-end measurements: nothing the driver sent was seen coming back (no '
                "NGSI-LD notification and no MQTT alert matched a message sent, no report was seen closed).</p>")
    else:
        shown = busiest(snap.ops, keys, MAX_E2E_PANELS)
        fig = distributions(snap.ops, shown, title="End-to-end times", colour="#31a354",
                            xlabel="from the message sent to its effect seen")
        body = img(fig, "End-to-end time distributions",
                   "How long the IOC took to show the effect of what the twin sent: e2e.entity from a telemetry "
                   "message to the NGSI-LD notification of the entity's change, e2e.alert from an observation to "
                   "the IOC's alert on MQTT, e2e.report from a report posted to its reporter seeing it closed. "
                   "Log-spaced bins over the HDR histograms, with p50, p95, p99 and the "
                   f"maximum marked.{_capped(shown, keys, 'end-to-end keys')}")
    return f'<section id="e2e">\n<h2>End to end</h2>\n{body}\n</section>'


def _lag_section(snap: Snapshot) -> str:
    lag = snap.lag
    if not lag.count:
        body = '<p class="note">No send lag was recorded.</p>'
    else:
        marks = ", ".join(f"{name} {latency_label(percentile_ms(lag, p) or 0.0)}"
                          for name, p in (("p50", 50.0), ("p99", 99.0), ("p99.9", 99.9), ("max", 100.0)))
        fig = distributions({LAG: lag}, [LAG], title="Send lag", colour="#756bb1",
                            xlabel="actual send time − intended send time")
        body = (f"<p>Send lag over {lag.count:,} sends: {escape(marks)}.</p>\n"
                + img(fig, "Send lag distribution",
                      "How late the driver sent each interaction after its intended time. Latencies above run from "
                      "the intended time, so lag never hides a slow server; a large lag means the driver itself "
                      "fell behind (too few cores, or too many requests in flight) and offered less load than the "
                      "schedule."))
    return f'<section id="lag">\n<h2>Send lag</h2>\n{body}\n</section>'


def _footer() -> str:
    return ('<footer>\n<p class="note">Measured by citytwin drive with an open model: each interaction is sent at '
            "its intended wall-clock time whatever the server does, and its latency runs from that time, so there "
            "is no coordinated omission (as in wrk2 and k6). The same numbers are in summary.json and in the "
            "Locust-compatible stats.csv, stats_history.csv and failures.csv beside this report.</p>\n</footer>")

"""A drive's result files: summary.json, and Locust's stats.csv, stats_history.csv and failures.csv.

The CSVs have Locust 2.x's exact headers, column order, number formats and closing ``Aggregated`` row
(`locust/stats.py`: `StatsCSV` and `StatsCSVFileWriter`), so tools that read a Locust run read a
drive. Where a drive differs from Locust it says so here rather than in the file:
- Type is the interface (``MQTT``, ``E2E``) or the HTTP method of a known key; Name is the key.
- ``Aggregated`` merges every key except the end-to-end ``e2e.*`` ones, which are measurements of the
  IOC's processing rather than requests of ours (their rows are still written).
- stats_history.csv has a row per key and second plus the Aggregated row (Locust's
  ``--csv-full-history`` layout). Requests/s and Failures/s are that second's counts (Locust averages
  the last ~10 s as it goes; a drive writes after the fact and can be exact); the percentile columns
  are cumulative up to the end of that second, at the history's ~3 % resolution; User Count is 0 (an
  open model has no users).
- Response times are milliseconds, measured from the intended send time.

Each file is written to a temporary name and renamed, so an interrupted run never leaves half a file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Iterable

from citytwin.twin.drive.stats import HISTORY_PERCENTILES, LAG, OpStats, Stats, percentile_name
from citytwin.twin.drive.thresholds import Result

SUMMARY_PERCENTILES = (50, 90, 95, 99, 99.9)
AGGREGATED = "Aggregated"

# Locust's column sets (locust/stats.py, 2.x), its percentile labels included ("99.9%", "100%").
PERCENTILE_COLUMNS = [f"{p:g}%" for p in HISTORY_PERCENTILES]
STATS_COLUMNS = [
    "Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time",
    "Min Response Time", "Max Response Time", "Average Content Size", "Requests/s", "Failures/s",
    *PERCENTILE_COLUMNS,
]
HISTORY_COLUMNS = [
    "Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s", *PERCENTILE_COLUMNS,
    "Total Request Count", "Total Failure Count", "Total Median Response Time",
    "Total Average Response Time", "Total Min Response Time", "Total Max Response Time",
    "Total Average Content Size",
]
FAILURES_COLUMNS = ["Method", "Name", "Error", "Occurrences", "First Seen", "Last Seen"]

# Locust's Type column is the request method; for keys sent over HTTP that is the method they use.
HTTP_METHODS = {
    "ngsild.upsert": "POST",
    "ngsild.subscribe": "POST",
    "admin.keys": "POST",
    "open311.post": "POST",
    "open311.token": "POST",
}
INTERFACE_TYPES = {"mqtt": "MQTT", "e2e": "E2E"}


def locust_type(key: str, types: dict[str, str] | None = None) -> str:
    """The Type column of a key: an override, the HTTP method of a known key, or the interface."""
    if types and key in types:
        return types[key]
    if key in HTTP_METHODS:
        return HTTP_METHODS[key]
    interface = key.split(".", 1)[0]
    return INTERFACE_TYPES.get(interface, interface.upper())


def utc_timestamp(unix: float) -> str:
    """Locust's timestamp format for failures.csv (`locust.util.date.format_utc_timestamp`)."""
    return datetime.fromtimestamp(int(unix), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------------
# summary.json


def write_summary(path: str | Path, stats: Stats, results: Iterable[Result], meta: dict[str, Any], *,
                  duration_s: float | None = None) -> Path:
    """Write summary.json. Rates are over `duration_s` (default: meta["duration_s"], else the span of
    the records); latencies are milliseconds."""
    if duration_s is None:
        duration_s = float(meta.get("duration_s") or stats.span_s)
    results = list(results)
    document = {
        "ok": all(result.ok for result in results),
        "duration_s": duration_s,
        "thresholds": [{"expr": r.expr, "ok": r.ok, "actual": _round(r.actual), "unit": r.unit}
                       for r in results],
        "keys": {key: _summary_entry(stats.get(key), duration_s) for key in stats.keys()},
        "aggregated": _summary_entry(stats.merged(None), duration_s),
        "lag": _latency_entry(stats.get(LAG)),
        "meta": meta,
    }
    return _write_atomic(Path(path), json.dumps(document, indent=2, default=str) + "\n")


def _summary_entry(op: OpStats, duration_s: float) -> dict[str, Any]:
    return {
        "count": op.count,
        "rps": _round(op.count / duration_s) if duration_s > 0 else None,
        "errors": dict(sorted(op.errors.items())),
        "error_count": op.error_count,
        "error_pct": _round(op.error_pct),
        "bytes_in": op.bytes_in,
        **_latency_entry(op),
    }


def _latency_entry(op: OpStats) -> dict[str, Any]:
    percentiles = op.percentiles(SUMMARY_PERCENTILES)
    latency = {percentile_name(p): _ms(percentiles[p]) for p in SUMMARY_PERCENTILES}
    latency.update(max=_ms(op.max_s), min=_ms(op.min_s), avg=_ms(op.avg_s))
    return {"count": op.count, "latency_ms": latency}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


# ---------------------------------------------------------------------------------------------------
# Locust CSVs


def write_locust_csvs(out_dir: str | Path, stats: Stats, duration_s: float, *,
                      types: dict[str, str] | None = None) -> dict[str, Path]:
    """Write stats.csv, stats_history.csv and failures.csv into `out_dir`; returns their paths by name.
    `types` overrides the Type column per key."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    history = stats.history()
    return {
        "stats": _write_atomic(out_dir / "stats.csv", _csv(STATS_COLUMNS, _stats_rows(stats, duration_s, types))),
        "stats_history": _write_atomic(out_dir / "stats_history.csv",
                                       _csv(HISTORY_COLUMNS, _history_rows(history, types))),
        "failures": _write_atomic(out_dir / "failures.csv",
                                  _csv(FAILURES_COLUMNS, _failure_rows(history, stats.start_unix, types))),
    }


def _stats_rows(stats: Stats, duration_s: float, types: dict[str, str] | None) -> list[list[Any]]:
    entries = [(locust_type(key, types), key, stats.get(key)) for key in stats.keys()]
    entries.append(("", AGGREGATED, stats.merged(None)))
    return [_stats_row(kind, name, op, duration_s) for kind, name, op in entries]


def _stats_row(kind: str, name: str, op: OpStats, duration_s: float) -> list[Any]:
    """One row of Locust's stats.csv (`StatsCSV._requests_data_rows`)."""
    per_s = 1.0 / duration_s if duration_s > 0 else 0.0
    if not op.count:
        return [kind, name, 0, 0, 0, 0.0, 0, 0, 0, 0.0, 0.0, *["N/A"] * len(PERCENTILE_COLUMNS)]
    values = op.percentiles(HISTORY_PERCENTILES)
    min_ms, max_ms = op.min_us / 1000.0, op.max_us / 1000.0
    return [
        kind, name, op.count, op.error_count,
        _median_ms(values[50], min_ms, max_ms), op.sum_us / op.count / 1000.0, min_ms, max_ms,
        op.bytes_in / op.count, op.count * per_s, op.error_count * per_s,
        *[_int_ms(values[p]) for p in HISTORY_PERCENTILES],
    ]


def _history_rows(history: list[dict[str, Any]], types: dict[str, str] | None) -> list[list[Any]]:
    """Rows of Locust's stats_history.csv (`StatsCSVFileWriter._stats_history_data_rows`), every key
    and then Aggregated for each second."""
    rows = []
    for second in history:
        timestamp = int(second["time"])
        for key, entry in second["keys"].items():
            rows.append(_history_row(timestamp, locust_type(key, types), key, entry))
        rows.append(_history_row(timestamp, "", AGGREGATED, second["aggregated"]))
    return rows


def _history_row(timestamp: int, kind: str, name: str, entry: dict[str, Any] | None) -> list[Any]:
    if entry is None:  # Locust writes the Aggregated row before any request too
        return [timestamp, 0, kind, name, f"{0.0:2f}", f"{0.0:2f}", *["N/A"] * len(PERCENTILE_COLUMNS),
                0, 0, 0, 0.0, 0, 0, 0]
    min_ms, max_ms = entry["min"] * 1000.0, entry["max"] * 1000.0
    total = entry["total_count"]
    return [
        timestamp, 0, kind, name, f"{float(entry['count']):2f}", f"{float(entry['errors']):2f}",
        *[_int_ms(entry[percentile_name(p)]) for p in HISTORY_PERCENTILES],
        total, entry["total_errors"], _median_ms(entry["p50"], min_ms, max_ms), entry["avg"] * 1000.0,
        min_ms, max_ms, entry["total_bytes"] / total,
    ]


def _failure_rows(history: list[dict[str, Any]], start_unix: float,
                  types: dict[str, str] | None) -> list[list[Any]]:
    """Locust's failures.csv: one row per key and error kind, first and last seen to the second."""
    seen: dict[tuple[str, str], list[int]] = {}  # (key, kind) -> [occurrences, first second, last second]
    for second in history:
        for key, entry in second["keys"].items():
            for kind, n in entry["error_kinds"].items():
                record = seen.setdefault((key, kind), [0, second["second"], second["second"]])
                record[0] += n
                record[2] = second["second"]
    return [
        [locust_type(key, types), key, kind, occurrences, utc_timestamp(start_unix + first),
         utc_timestamp(start_unix + last)]
        for (key, kind), (occurrences, first, last) in sorted(seen.items())
    ]


def _int_ms(seconds: float | None) -> int:
    """A percentile as Locust writes it: whole milliseconds."""
    return 0 if seconds is None else int(round(seconds * 1000.0))


def _median_ms(seconds: float | None, min_ms: float, max_ms: float) -> int | float:
    """Locust's median: whole milliseconds of the histogram's, kept within min and max so that one slow
    request cannot show a median above the maximum."""
    median = _int_ms(seconds)
    if median > max_ms:
        return max_ms
    if median < min_ms:
        return min_ms
    return median


def _csv(columns: list[str], rows: Iterable[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # Locust's dialect: excel, \r\n line ends
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


def _write_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    os.replace(temporary, path)
    return path

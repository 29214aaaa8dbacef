"""Measurements of a live drive: per operation key, counts, error kinds and latencies in HDR histograms.

Latency is measured from each interaction's *intended* wall time (`time.monotonic()` seconds), so a
server that stalls makes every request scheduled during the stall late, as it would for real users
(no coordinated omission). The lag between intended and actual send goes into its own histogram
(key ``lag``) so the generator's own slowness shows up apart from the server's.

`Stats.record` is on the hot path of the load generator, so recording touches no HdrHistogram object:
it computes the HDR counts index itself (the same arithmetic as `hdrh`, checked against it in the
tests) and bumps sparse counters under one lock. Real `hdrh.HdrHistogram`s are built when someone
asks (`get`, `merged`, `to_dict`), which happens every few seconds at most.

Two resolutions are kept per key:
- the run total at HDR precision (1 µs .. 1 h, 3 significant digits): what `get`/`merged` return and
  what thresholds and summaries use;
- one small histogram per second at 1/32-octave precision (at most ~3 % above the true value), for
  the time series (`history`) behind stats_history.csv and the report's latency-over-time figure.
  Full precision per second would cost tens of kilobytes per key and second on a long run.
Both are plain counters, so adding two `Stats` (Ray shards) gives exactly the `Stats` of all their
records: totals, error kinds, histograms, and every second of the history.
"""

from __future__ import annotations

import threading
import time
from array import array
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour: anything slower is recorded as one hour
SIGNIFICANT_FIGURES = 3
LAG = "lag"
E2E = "e2e"

# The HDR layout, read from a real histogram so the index arithmetic below cannot drift from hdrh.
_TEMPLATE = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)
COUNTS_LEN: int = _TEMPLATE.counts_len
_MASK: int = _TEMPLATE.sub_bucket_mask
_UNIT: int = _TEMPLATE.unit_magnitude
_HALF_MAG: int = _TEMPLATE.sub_bucket_half_count_magnitude
_HALF: int = _TEMPLATE.sub_bucket_half_count
_BUCKET_SHIFT = _UNIT + _HALF_MAG + 1

# Per-second histograms group 32 adjacent HDR counters: HDR blocks of 1024 linear counters per octave
# are aligned to 1024, so a group never straddles two octaves (32 groups per octave, ~3 % wide).
COARSE_SHIFT = 5
COARSE_LEN = (COUNTS_LEN + (1 << COARSE_SHIFT) - 1) >> COARSE_SHIFT

# Locust's PERCENTILES_TO_REPORT, in percent; the history carries the cumulative value of each.
HISTORY_PERCENTILES = (50, 66, 75, 80, 90, 95, 98, 99, 99.9, 99.99, 100)
CURRENT_PERCENTILES = (50, 95, 99)
_PACK = 32
_LOW32 = (1 << _PACK) - 1


def counts_index(us: int) -> int:
    """The hdrh counts index of a value in µs (what `HdrHistogram._counts_index_for` computes)."""
    bucket = (us | _MASK).bit_length() - _BUCKET_SHIFT
    return ((bucket + 1) << _HALF_MAG) + (us >> (bucket + _UNIT)) - _HALF


def _index_values() -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest value (µs) each counts index stands for, as hdrh defines them."""
    index = np.arange(COUNTS_LEN, dtype=np.int64)
    bucket = (index >> _HALF_MAG) - 1
    sub = (index & (_HALF - 1)) + _HALF
    first = bucket < 0
    sub[first] -= _HALF
    bucket[first] = 0
    lowest = sub << (bucket + _UNIT)
    return lowest, lowest + (np.int64(1) << (bucket + _UNIT)) - 1


INDEX_LOWEST_US, INDEX_HIGHEST_US = _index_values()
# A per-second group reports the top of its range, as hdrh reports the top of a counter's range.
_COARSE_LAST = np.minimum((np.arange(COARSE_LEN) + 1) << COARSE_SHIFT, COUNTS_LEN) - 1
COARSE_HIGHEST_S = INDEX_HIGHEST_US[_COARSE_LAST] / 1e6


def to_micros(seconds: float) -> int:
    """A duration in whole µs, clamped to what the histograms hold (a negative one, clock noise, is 0)."""
    if seconds <= 0.0:
        return 0
    us = int(seconds * 1_000_000.0 + 0.5)
    return us if us < HIGHEST_US else HIGHEST_US


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)


def histogram_from_counts(counts: dict[int, int]) -> HdrHistogram:
    """An hdrh histogram holding `counts` ({counts index: count}); each index's lowest value lands on it."""
    histogram = new_histogram()
    for index in sorted(counts):
        histogram.record_value(int(INDEX_LOWEST_US[index]), counts[index])
    return histogram


def counts_from_histogram(histogram: HdrHistogram) -> dict[int, int]:
    dense = np.ctypeslib.as_array(histogram.counts)
    return {int(i): int(dense[i]) for i in np.flatnonzero(dense)}


def is_e2e(key: str) -> bool:
    return key == E2E or key.startswith(E2E + ".")


def under(key: str, prefix: str) -> bool:
    """Whether `key` is `prefix` or below it by dotted segments (`open311` covers `open311.post`)."""
    return key == prefix or key.startswith(prefix + ".")


def percentile_name(p: float) -> str:
    return f"p{p:g}"


# ---------------------------------------------------------------------------------------------------
# One operation key, as read by callers


@dataclass
class OpStats:
    """What was measured for one key (or several merged): counts, error kinds and the latency histogram.

    `count` includes failed requests, and `latency` holds them too (time to fail), as Locust does.
    `sum_us`, `min_us` and `max_us` are exact (of the µs-rounded latencies), the percentiles are HDR's.
    """

    key: str
    count: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    bytes_in: int = 0
    latency: HdrHistogram = field(default_factory=new_histogram)
    sum_us: int = 0
    min_us: int | None = None
    max_us: int | None = None

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def error_pct(self) -> float | None:
        return 100.0 * self.error_count / self.count if self.count else None

    def percentile(self, p: float) -> float | None:
        """The latency (seconds) at percentile `p` in [0, 100], or None with no data."""
        if not self.count:
            return None
        return self.latency.get_value_at_percentile(p) / 1e6

    def percentiles(self, ps: Iterable[float]) -> dict[float, float | None]:
        """Several percentiles in one pass over the histogram: {p: seconds or None}."""
        ps = list(ps)
        if not self.count:
            return {p: None for p in ps}
        values = self.latency.get_percentile_to_value_dict(ps)
        return {p: values[p] / 1e6 for p in ps}

    @property
    def avg_s(self) -> float | None:
        return self.sum_us / self.count / 1e6 if self.count else None

    @property
    def min_s(self) -> float | None:
        return None if self.min_us is None else self.min_us / 1e6

    @property
    def max_s(self) -> float | None:
        return None if self.max_us is None else self.max_us / 1e6

    def merge(self, other: OpStats) -> None:
        """Add `other` into this one (exact: histogram counters are added)."""
        self.count += other.count
        for kind, n in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + n
        self.bytes_in += other.bytes_in
        self.latency.add(other.latency)
        self.sum_us += other.sum_us
        self.min_us = _min(self.min_us, other.min_us)
        self.max_us = _max(self.max_us, other.max_us)


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


# ---------------------------------------------------------------------------------------------------
# Internal counters


class _Cell:
    """Counters of one key over one interval: the run total (HDR indices) or one second (coarse ones).

    A finished second is frozen into one packed array (index << 32 | count), a few bytes a counter,
    because a long run keeps thousands of them; a late record thaws it again.
    """

    __slots__ = ("count", "errors", "bytes", "sum_us", "min_us", "max_us", "hist", "packed")

    def __init__(self) -> None:
        self.count = 0
        self.errors: dict[str, int] | None = None
        self.bytes = 0
        self.sum_us = 0
        self.min_us = HIGHEST_US
        self.max_us = 0
        self.hist: dict[int, int] | None = {}
        self.packed: array | None = None

    def freeze(self) -> None:
        if self.hist is not None:
            self.packed = array("Q", sorted((i << _PACK) | n for i, n in self.hist.items()))
            self.hist = None

    def thaw(self) -> dict[int, int]:
        if self.hist is None:
            self.hist = dict(self.items())
            self.packed = None
        return self.hist

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The counters as (indices, counts) arrays, indices ascending and distinct."""
        if self.hist is not None:
            items = sorted(self.hist.items())
            return (np.fromiter((i for i, _ in items), np.int64, len(items)),
                    np.fromiter((n for _, n in items), np.int64, len(items)))
        packed = np.frombuffer(self.packed, dtype=np.uint64) if len(self.packed) else np.zeros(0, np.uint64)
        return (packed >> np.uint64(_PACK)).astype(np.int64), (packed & np.uint64(_LOW32)).astype(np.int64)

    def items(self) -> Iterable[tuple[int, int]]:
        if self.hist is not None:
            return sorted(self.hist.items())
        return [(p >> _PACK, p & _LOW32) for p in self.packed]

    def add_cell(self, other: _Cell) -> None:
        self.count += other.count
        if other.errors:
            errors = self.errors if self.errors is not None else {}
            for kind, n in other.errors.items():
                errors[kind] = errors.get(kind, 0) + n
            self.errors = errors
        self.bytes += other.bytes
        self.sum_us += other.sum_us
        self.min_us = min(self.min_us, other.min_us)
        self.max_us = max(self.max_us, other.max_us)
        hist = self.thaw()
        for index, n in other.items():
            hist[index] = hist.get(index, 0) + n

    def to_list(self) -> list:
        items = list(self.items())
        return [self.count, dict(self.errors or {}), self.bytes, self.sum_us, self.min_us, self.max_us,
                [i for i, _ in items], [n for _, n in items]]

    @classmethod
    def from_list(cls, data: list) -> _Cell:
        count, errors, size, sum_us, min_us, max_us, indices, counts = data
        cell = cls()
        cell.count, cell.bytes, cell.sum_us, cell.min_us, cell.max_us = count, size, sum_us, min_us, max_us
        cell.errors = {str(k): int(v) for k, v in errors.items()} or None
        cell.hist = {int(i): int(n) for i, n in zip(indices, counts, strict=True)}
        return cell


class _Series:
    """One key: its run total and its seconds."""

    __slots__ = ("total", "cells", "last_second", "last_cell", "thawed")

    def __init__(self) -> None:
        self.total = _Cell()
        self.cells: dict[int, _Cell] = {}
        self.last_second = -1
        self.last_cell: _Cell | None = None
        self.thawed: list[_Cell] = []

    def add(self, second: int, us: int, error: str | None, size: int) -> None:
        if second < 0:
            second = 0
        bucket = (us | _MASK).bit_length() - _BUCKET_SHIFT  # counts_index(), inlined: this is per record
        index = ((bucket + 1) << _HALF_MAG) + (us >> (bucket + _UNIT)) - _HALF
        total = self.total
        total.count += 1
        total.bytes += size
        total.sum_us += us
        if us < total.min_us:
            total.min_us = us
        if us > total.max_us:
            total.max_us = us
        hist = total.hist
        hist[index] = hist.get(index, 0) + 1
        if error is not None:
            errors = total.errors
            if errors is None:
                errors = total.errors = {}
            errors[error] = errors.get(error, 0) + 1

        cell = self.last_cell if second == self.last_second else self._cell(second)
        cell.count += 1
        cell.bytes += size
        cell.sum_us += us
        if us < cell.min_us:
            cell.min_us = us
        if us > cell.max_us:
            cell.max_us = us
        coarse = index >> COARSE_SHIFT
        hist = cell.hist
        hist[coarse] = hist.get(coarse, 0) + 1
        if error is not None:
            errors = cell.errors
            if errors is None:
                errors = cell.errors = {}
            errors[error] = errors.get(error, 0) + 1

    def _cell(self, second: int) -> _Cell:
        cell = self.cells.get(second)
        if second >= self.last_second:
            # a new current second: freeze the previous one and any late-thawed ones
            if self.last_cell is not None and second != self.last_second:
                self.last_cell.freeze()
            for old in self.thawed:
                old.freeze()
            self.thawed.clear()
            if cell is None:
                cell = self.cells[second] = _Cell()
            else:
                cell.thaw()  # a second that came in frozen (merged or loaded) takes records again
            self.last_second, self.last_cell = second, cell
            return cell
        if cell is None:
            cell = self.cells[second] = _Cell()
        elif cell.hist is None:
            cell.thaw()
            self.thawed.append(cell)
        return cell

    def add_series(self, other: _Series) -> None:
        self.total.add_cell(other.total)
        for second, cell in other.cells.items():
            mine = self.cells.get(second)
            if mine is None:
                mine = self.cells[second] = _Cell()
            mine.add_cell(cell)
            if mine is not self.last_cell:
                mine.freeze()

    def to_dict(self) -> dict[str, Any]:
        total = self.total
        histogram = histogram_from_counts(dict(total.items()))
        return {
            "count": total.count,
            "errors": dict(total.errors or {}),
            "bytes": total.bytes,
            "sum_us": total.sum_us,
            "min_us": total.min_us,
            "max_us": total.max_us,
            "latency": histogram.encode().decode("ascii"),
            "seconds": [[second, *self.cells[second].to_list()] for second in sorted(self.cells)],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], key: str) -> _Series:
        series = cls()
        total = series.total
        total.count, total.bytes, total.sum_us = int(data["count"]), int(data["bytes"]), int(data["sum_us"])
        total.min_us, total.max_us = int(data["min_us"]), int(data["max_us"])
        total.errors = {str(k): int(v) for k, v in data["errors"].items()} or None
        total.hist = counts_from_histogram(HdrHistogram.decode(data["latency"].encode("ascii")))
        for second, *cell in data["seconds"]:
            series.cells[int(second)] = _Cell.from_list(cell)
        for cell in series.cells.values():
            cell.freeze()
        seconds_count = sum(cell.count for cell in series.cells.values())
        if sum(total.hist.values()) != total.count or seconds_count != total.count:
            raise ValueError(f"stats for {key!r} are inconsistent: count {total.count}, histogram "
                             f"{sum(total.hist.values())}, seconds {seconds_count}")
        return series


# ---------------------------------------------------------------------------------------------------
# All keys


class Stats:
    """Everything a drive measures: one series per operation key, the send-lag series, and time.

    `start` is the `time.monotonic()` second the run's clock starts at (default: now); records land in
    the whole second after it that they completed in. `start_unix` is the same instant in Unix time,
    for the timestamps of the CSV files.
    """

    def __init__(self, start: float | None = None, *, start_unix: float | None = None) -> None:
        now = time.monotonic()
        self.start = now if start is None else float(start)
        self.start_unix = time.time() - (now - self.start) if start_unix is None else float(start_unix)
        self._lock = threading.Lock()
        self._series: dict[str, _Series] = {}
        self._lag = _Series()
        self._span = 0.0

    # -- recording (any thread) ----------------------------------------------------------------------

    def record(self, key: str, intended: float, done: float, *, error: str | None = None,
               started: float | None = None, size: int = 0) -> None:
        """One interaction of `key`: latency is `done - intended` (for a failure, the time it took to fail);
        `started` (when it actually went out) adds `started - intended` to the lag histogram."""
        us = done - intended
        us = 0 if us <= 0.0 else int(us * 1_000_000.0 + 0.5)  # to_micros(), inlined
        if us > HIGHEST_US:
            us = HIGHEST_US
        at = done - self.start
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series()
            series.add(int(at), us, error, size)
            if started is not None:
                self._lag.add(int(started - self.start), to_micros(started - intended), None, 0)
            if at > self._span:
                self._span = at

    def record_latency(self, key: str, seconds: float, *, at: float, error: str | None = None) -> None:
        """A measured duration with no send of ours behind it (end-to-end times), completed at `at`."""
        us = to_micros(seconds)
        offset = at - self.start
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series()
            series.add(int(offset), us, error, 0)
            if offset > self._span:
                self._span = offset

    # -- reading -------------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        """The operation keys seen, sorted (the lag series is not one of them: `get("lag")` reads it)."""
        with self._lock:
            return sorted(self._series)

    def get(self, key: str) -> OpStats:
        """The stats of one key (`"lag"`: the send lag); a key never recorded has count 0."""
        with self._lock:  # copy the counters under the lock, build the histogram outside it
            series = self._lag if key == LAG else self._series.get(key)
            total = _copy_cell(series.total) if series is not None else _Cell()
        return _op_stats(key, total)

    def merged(self, prefix: str | None = None) -> OpStats:
        """All keys under a dotted prefix merged into one; `None` or `""`: every key except `e2e.*`."""
        name = prefix or "all"
        result = OpStats(key=name)
        for key in self.keys():
            if (under(key, prefix) if prefix else not is_e2e(key)):
                result.merge(self.get(key))
        return result

    @property
    def span_s(self) -> float:
        """Seconds from `start` to the last completion recorded."""
        with self._lock:
            return self._span

    def rate(self, key: str, *, now: float, window_s: float = 5.0) -> float:
        """Completions per second of `key` over the whole seconds in the `window_s` before `now`
        (monotonic); the second under way is left out so the figure does not saw up and down."""
        current = int(now - self.start)
        first = max(0, current - max(1, int(window_s)))
        width = max(1, current - first)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                return 0.0
            counted = sum(series.cells[s].count for s in range(first, current) if s in series.cells)
        return counted / width

    def history(self) -> list[dict[str, Any]]:
        """One row per second from `start` to the last second with data:

        ``{"second": s, "time": start_unix + s, "keys": {key: row}, "aggregated": row | None}`` where
        ``aggregated`` merges every key but `e2e.*`, and a key appears from its first record on. A row has
        this second's ``count``, ``errors``, ``error_kinds``, ``bytes`` and ``current_p50``/``p95``/``p99``/
        ``max`` (seconds; None when nothing completed this second), and the cumulative ``total_count``,
        ``total_errors``, ``total_bytes``, ``min``, ``max``, ``avg`` and ``p50`` … ``p100`` (Locust's
        percentiles, seconds) up to the end of the second. Percentiles here come from the per-second
        histograms (1/32 octave), so the last row's can sit up to ~3 % above `get(key).percentile`.

        Holds the lock while it works: call it after the run, or rarely.
        """
        with self._lock:
            keys = sorted(self._series)
            last = max((max(s.cells) for s in self._series.values() if s.cells), default=-1)
            running = {key: _Running() for key in keys}
            aggregated = _Running()
            rows = []
            for second in range(last + 1):
                row: dict[str, Any] = {"second": second, "time": self.start_unix + second, "keys": {}}
                this_second: list[_Cell] = []
                for key in keys:
                    cell = self._series[key].cells.get(second)
                    cells = [cell] if cell is not None else []
                    entry = running[key].advance(cells)
                    if entry is not None:
                        row["keys"][key] = entry
                    if not is_e2e(key):
                        this_second.extend(cells)
                row["aggregated"] = aggregated.advance(this_second)
                rows.append(row)
            return rows

    # -- shards ----------------------------------------------------------------------------------------

    def merge(self, other: Stats) -> None:
        """Add `other` (another shard of the same run) into this one; seconds align by index since each
        one's start. Exact: the result is what one `Stats` that saw both shards' records would hold."""
        if other is self:
            raise ValueError("cannot merge a Stats into itself")
        with other._lock:
            incoming = {key: _copy_series(series) for key, series in other._series.items()}
            lag = _copy_series(other._lag)
            span = other._span
        with self._lock:
            for key, series in incoming.items():
                mine = self._series.get(key)
                if mine is None:
                    mine = self._series[key] = _Series()
                mine.add_series(series)
            self._lag.add_series(lag)
            self._span = max(self._span, span)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot (run totals as base64 hdrh histograms, seconds as sparse counters)."""
        with self._lock:  # copy under the lock, encode outside it
            series = {key: _copy_series(self._series[key]) for key in sorted(self._series)}
            lag = _copy_series(self._lag)
            span = self._span
        return {
            "format": "citytwin.drive.stats/1",
            "start": self.start,
            "start_unix": self.start_unix,
            "span_s": span,
            "keys": {key: value.to_dict() for key, value in series.items()},
            "lag": lag.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stats:
        if data.get("format") != "citytwin.drive.stats/1":
            raise ValueError(f"not a citytwin drive stats snapshot (format {data.get('format')!r})")
        stats = cls(data["start"], start_unix=data["start_unix"])
        stats._span = float(data["span_s"])
        stats._series = {key: _Series.from_dict(value, key) for key, value in data["keys"].items()}
        stats._lag = _Series.from_dict(data["lag"], LAG)
        return stats


def _copy_cell(cell: _Cell) -> _Cell:
    copy = _Cell()
    copy.add_cell(cell)
    return copy


def _op_stats(key: str, total: _Cell) -> OpStats:
    return OpStats(key=key, count=total.count, errors=dict(total.errors or {}), bytes_in=total.bytes,
                   latency=histogram_from_counts(dict(total.items())), sum_us=total.sum_us,
                   min_us=total.min_us if total.count else None,
                   max_us=total.max_us if total.count else None)


def _copy_series(series: _Series) -> _Series:
    copy = _Series()
    copy.add_series(series)
    return copy


class _Running:
    """Cumulative counters of one history column, advanced a second at a time."""

    def __init__(self) -> None:
        self.count = self.errors = self.bytes = self.sum_us = 0
        self.min_us, self.max_us = HIGHEST_US, 0
        self.dense = np.zeros(COARSE_LEN, dtype=np.int64)
        self.cumulative: dict[str, Any] | None = None

    def advance(self, cells: list[_Cell]) -> dict[str, Any] | None:
        if not cells:  # an idle second: only the cumulative columns, unchanged
            return None if self.cumulative is None else {**_IDLE_SECOND, "error_kinds": {}, **self.cumulative}
        dense = np.zeros(COARSE_LEN, dtype=np.int64)
        kinds: dict[str, int] = {}
        count = size = sum_us = max_us = 0
        min_us = HIGHEST_US
        for cell in cells:
            indices, counts = cell.arrays()
            dense[indices] += counts
            count += cell.count
            size += cell.bytes
            sum_us += cell.sum_us
            min_us = min(min_us, cell.min_us)
            max_us = max(max_us, cell.max_us)
            for kind, n in (cell.errors or {}).items():
                kinds[kind] = kinds.get(kind, 0) + n
        errors = sum(kinds.values())
        self.count += count
        self.errors += errors
        self.bytes += size
        self.sum_us += sum_us
        self.min_us = min(self.min_us, min_us)
        self.max_us = max(self.max_us, max_us)
        self.dense += dense
        self.cumulative = {
            "total_count": self.count,
            "total_errors": self.errors,
            "total_bytes": self.bytes,
            "min": self.min_us / 1e6,
            "max": self.max_us / 1e6,
            "avg": self.sum_us / self.count / 1e6,
            **_coarse_percentiles(self.dense, self.count, HISTORY_PERCENTILES),
        }
        return {
            "count": count,
            "errors": errors,
            "error_kinds": kinds,
            "bytes": size,
            **_coarse_percentiles(dense, count, CURRENT_PERCENTILES, prefix="current_"),
            "current_max": max_us / 1e6,
            **self.cumulative,
        }


_IDLE_SECOND: dict[str, Any] = {
    "count": 0, "errors": 0, "error_kinds": {}, "bytes": 0,
    **{"current_" + percentile_name(p): None for p in CURRENT_PERCENTILES}, "current_max": None,
}


def _coarse_percentiles(dense: np.ndarray, total: int, ps: tuple[float, ...],
                        prefix: str = "") -> dict[str, float]:
    """Percentiles (seconds) of a per-second-resolution histogram, by hdrh's rule for the target count."""
    targets = [max(int(min(p, 100.0) * total / 100 + 0.5), 1) for p in ps]
    indices = np.searchsorted(np.cumsum(dense), targets, side="left")
    return {prefix + _NAMES[p]: float(COARSE_HIGHEST_S[i]) for p, i in zip(ps, indices)}


_NAMES = {p: percentile_name(p) for p in (*HISTORY_PERCENTILES, *CURRENT_PERCENTILES)}

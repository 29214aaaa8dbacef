"""Pass/fail thresholds on a drive's measurements, in the style of k6 (`open311.post.p99<300ms`).

Grammar: ``<metric> <op> <value>[unit]`` where ``metric = [key prefix.]stat``;
- stat: ``p50 p90 p95 p99 p99.9 max min avg`` (latency: unit ``us``/``µs``, ``ms`` or ``s``, ms when
  left out as in k6), ``count`` (no unit), ``rate`` (requests per second over the run, ``/s``),
  ``errors`` (share of requests that failed, ``%``);
- op: ``<  <=  >  >=  ==``;
- the key prefix selects every key at or below it by dotted segments (``open311`` covers
  ``open311.post`` and ``open311.token``); without one, every key except the end-to-end ``e2e.*``
  ones, which are only read when named (``e2e.alert.p95<5s``). ``lag.p99<50ms`` reads the send lag.

A threshold whose keys saw nothing fails with actual None (k6 fails on missing data too): a typo in a
key must not pass silently.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable, Iterable

from citytwin.twin.drive.stats import LAG, OpStats, Stats

TIME_STATS = ("p50", "p90", "p95", "p99", "p99.9", "max", "min", "avg")
STATS = (*TIME_STATS, "count", "rate", "errors")
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
}
TIME_UNITS = {"us": 1, "µs": 1, "ms": 1_000, "s": 1_000_000}  # µs per unit
# the unit each kind of stat takes when none is written, and the units it accepts
DEFAULT_UNIT = {"time": "ms", "count": "", "rate": "/s", "errors": "%"}
UNITS = {"time": tuple(TIME_UNITS), "count": ("",), "rate": ("/s",), "errors": ("%",)}
EXAMPLE = "e.g. 'open311.post.p99<300ms', 'errors<1%', 'mqtt.publish.rate>100/s'"
GRAMMAR = "<metric> <op> <value>[unit]"

_OP = re.compile(r"<=|>=|==|!=|=>|=<|<|>|=")
_PREFIX = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_NUMBER = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(.*)", re.DOTALL)


@dataclass(frozen=True)
class Threshold:
    """A parsed threshold. `value` is in `unit` as written (`unit` is never empty except for count)."""

    prefix: str | None
    stat: str
    op: str
    value: float
    unit: str
    expr: str = field(default="", compare=False)

    @property
    def kind(self) -> str:
        return stat_kind(self.stat)

    @property
    def metric(self) -> str:
        return f"{self.prefix}.{self.stat}" if self.prefix else self.stat

    def format(self) -> str:
        """The canonical text: no spaces, the unit written out (`parse(t.format()) == t`)."""
        return f"{self.metric}{self.op}{format_number(self.value)}{self.unit}"

    def __str__(self) -> str:
        return self.format()


@dataclass(frozen=True)
class Result:
    """The verdict on one threshold; `actual` is in the threshold's unit, None when there was no data."""

    expr: str
    ok: bool
    actual: float | None
    unit: str

    def __str__(self) -> str:
        seen = "no data" if self.actual is None else f"{format_number(round(self.actual, 6))}{self.unit}"
        return f"{'ok  ' if self.ok else 'FAIL'} {self.expr}  (actual {seen})"


def stat_kind(stat: str) -> str:
    return "time" if stat in TIME_STATS else stat


def format_number(value: float) -> str:
    """A number in plain positional digits, as short as Python's repr (no exponent, no trailing .0)."""
    text = format(Decimal(repr(float(value))), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def parse(expr: str) -> Threshold:
    """Parse one threshold; a `ValueError` says what was expected where."""
    if not isinstance(expr, str) or not expr.strip():
        raise ValueError(f"empty threshold: expected {GRAMMAR}, {EXAMPLE}")
    text = expr.strip()
    ops = list(_OP.finditer(text))
    if not ops:
        raise ValueError(f"threshold {text!r} has no comparison: expected {GRAMMAR} with <op> one of "
                         f"{', '.join(OPERATORS)}, {EXAMPLE}")
    if len(ops) > 1:
        raise ValueError(f"threshold {text!r} has {len(ops)} comparisons: expected exactly one of "
                         f"{', '.join(OPERATORS)} in {GRAMMAR}")
    op = ops[0].group()
    if op not in OPERATORS:
        hint = " (write == for equality)" if op == "=" else ""
        raise ValueError(f"threshold {text!r}: unknown comparison {op!r}{hint}; expected one of "
                         f"{', '.join(OPERATORS)}")
    prefix, stat = _parse_metric(text, text[:ops[0].start()].strip())
    value, unit = _parse_value(text, stat, op, text[ops[0].end():].strip())
    return Threshold(prefix=prefix, stat=stat, op=op, value=value, unit=unit, expr=text)


def _parse_metric(text: str, metric: str) -> tuple[str | None, str]:
    if not metric:
        raise ValueError(f"threshold {text!r} has no metric before the comparison: expected "
                         f"[key prefix.]stat with stat one of {', '.join(STATS)}")
    # longest stat first: "p99.9" must not be read as prefix "….p99" and stat "9"
    for stat in sorted(STATS, key=len, reverse=True):
        if metric == stat:
            return None, stat
        if metric.endswith("." + stat):
            prefix = metric[: -len(stat) - 1]
            if not _PREFIX.fullmatch(prefix):
                raise ValueError(f"threshold {text!r}: key prefix {prefix!r} is not a dotted key such as "
                                 f"'open311' or 'mqtt.publish'")
            return prefix, stat
    last = metric.rsplit(".", 1)[-1]
    raise ValueError(f"threshold {text!r}: unknown statistic {last!r} in {metric!r}; expected "
                     f"[key prefix.]stat with stat one of {', '.join(STATS)}")


def _parse_value(text: str, stat: str, op: str, written: str) -> tuple[float, str]:
    kind = stat_kind(stat)
    accepted = " or ".join(repr(u) for u in UNITS[kind] if u) or "no unit"
    match = _NUMBER.fullmatch(written)
    if not match:
        raise ValueError(f"threshold {text!r}: expected a non-negative number after {op!r}, then "
                         f"{accepted} for {stat}; got {written!r}")
    value = float(match.group(1))
    unit = match.group(2).strip() or DEFAULT_UNIT[kind]
    if unit not in UNITS[kind]:
        raise ValueError(f"threshold {text!r}: {stat} takes {accepted}, not {unit!r}")
    return value, unit


def parse_all(exprs: Iterable[str]) -> list[Threshold]:
    return [parse(expr) for expr in exprs]


# ---------------------------------------------------------------------------------------------------


def evaluate(thresholds: Iterable[Threshold], stats: Stats, duration_s: float) -> list[Result]:
    """Check each threshold against `stats` of a run of `duration_s` wall seconds."""
    results = []
    selected: dict[str | None, OpStats] = {}
    for threshold in thresholds:
        prefix = threshold.prefix
        if prefix not in selected:
            selected[prefix] = stats.get(LAG) if prefix == LAG else stats.merged(prefix)
        actual = measure(threshold, selected[prefix], duration_s)
        ok = actual is not None and OPERATORS[threshold.op](actual, threshold.value)
        results.append(Result(expr=threshold.expr or threshold.format(), ok=ok, actual=actual,
                              unit=threshold.unit))
    return results


def measure(threshold: Threshold, op_stats: OpStats, duration_s: float) -> float | None:
    """The value of the threshold's stat, in its unit; None when nothing was measured."""
    if not op_stats.count:
        return None
    stat = threshold.stat
    if stat == "count":
        return float(op_stats.count)
    if stat == "errors":
        return op_stats.error_pct
    if stat == "rate":
        return op_stats.count / duration_s if duration_s > 0 else None
    # from whole µs, so that 300 ms reads as 300.0 and not 299.99999999999997
    if stat == "avg":
        micros = op_stats.sum_us / op_stats.count
    elif stat == "max":
        micros = op_stats.max_us
    elif stat == "min":
        micros = op_stats.min_us
    else:
        micros = op_stats.latency.get_value_at_percentile(float(stat[1:]))
    return micros / TIME_UNITS[threshold.unit]

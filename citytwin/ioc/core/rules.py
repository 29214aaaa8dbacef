"""Rules that turn what devices report into alerts, and the alerts' lifecycle (raised → acknowledged →
cleared).

Four kinds: a threshold with hysteresis, a rate of change, data missing for too long, and events that
cameras post as Smart Data Models `Alert` entities. A rule looks at one entity write at a time and says
whether to raise or clear; the IOC stores the result. Missing data and the camera alerts' auto-clear are
about time passing with nothing written, so `IOC.tick` checks them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from .entities import attr_value, observed_at
from .ldcontext import DISPLAY
from .model import Alert, AlertStatus, Entity

SEVERITIES = ("informational", "low", "medium", "high", "critical")  # Smart Data Models Alert.severity
ACTIVE = (AlertStatus.RAISED, AlertStatus.ACKNOWLEDGED)


@dataclass(frozen=True)
class Verdict:
    """What a rule decided about one write: raise an alert, or clear the active ones."""

    action: str  # "raise" | "clear"
    message: str = ""
    attribute: str | None = None
    value: Any = None
    severity: str | None = None  # None: the rule's
    category: str | None = None


CLEAR = Verdict("clear")


class Rule:
    """What every rule has. `entity_type` None means any type carrying the attribute."""

    rule_id: str
    kind: str
    entity_type: str | None
    severity: str
    category: str

    def on_write(self, entity: Entity, previous: Entity | None, changed: tuple[str, ...],
                 active: Sequence[Alert], now: datetime) -> Verdict | None:
        raise NotImplementedError


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _check_severity(severity: str) -> None:
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")


@dataclass(frozen=True)
class ThresholdRule(Rule):
    """Raise when a value goes above `raise_above` (or below `raise_below`); clear only once it is back
    past `clear_below` (`clear_above`). The gap between the two levels keeps a value hovering near the
    limit from raising and clearing over and over."""

    rule_id: str
    attribute: str
    raise_above: float | None = None
    clear_below: float | None = None
    raise_below: float | None = None
    clear_above: float | None = None
    entity_type: str | None = None
    severity: str = "medium"
    category: str = "environment"
    label: str = ""
    unit: str = ""
    kind: str = "threshold"

    def __post_init__(self) -> None:
        _check_severity(self.severity)
        if (self.raise_above is None) == (self.raise_below is None):
            raise ValueError(f"rule {self.rule_id}: give exactly one of raise_above and raise_below")
        if self.raise_above is not None:
            clear = self.raise_above if self.clear_below is None else self.clear_below
            if clear > self.raise_above:
                raise ValueError(f"rule {self.rule_id}: clear_below must not be above raise_above")
            object.__setattr__(self, "clear_below", clear)
        else:
            clear = self.raise_below if self.clear_above is None else self.clear_above
            if clear < self.raise_below:
                raise ValueError(f"rule {self.rule_id}: clear_above must not be below raise_below")
            object.__setattr__(self, "clear_above", clear)

    def on_write(self, entity, previous, changed, active, now):
        if self.attribute not in changed:
            return None
        value = _number(attr_value(entity, self.attribute))
        if value is None:
            return None
        name = self.label or DISPLAY.compact(self.attribute)
        if self.raise_above is not None:
            if not active and value > self.raise_above:
                return Verdict("raise", f"{name} {value:g}{self.unit} above {self.raise_above:g}{self.unit}",
                               self.attribute, value)
            if active and value < self.clear_below:
                return CLEAR
            return None
        if not active and value < self.raise_below:
            return Verdict("raise", f"{name} {value:g}{self.unit} below {self.raise_below:g}{self.unit}",
                           self.attribute, value)
        if active and value > self.clear_above:
            return CLEAR
        return None


@dataclass(frozen=True)
class RateRule(Rule):
    """Raise when a value rises (or falls, `falling=True`) faster than `max_per_min` between two
    observations; clear once the change per minute is back at or under `clear_per_min`."""

    rule_id: str
    attribute: str
    max_per_min: float
    clear_per_min: float = 0.0
    falling: bool = False
    entity_type: str | None = None
    severity: str = "high"
    category: str = "weather"
    label: str = ""
    unit: str = ""
    kind: str = "rate"

    def __post_init__(self) -> None:
        _check_severity(self.severity)
        if self.clear_per_min > self.max_per_min:
            raise ValueError(f"rule {self.rule_id}: clear_per_min must not exceed max_per_min")

    def on_write(self, entity, previous, changed, active, now):
        if self.attribute not in changed or previous is None or self.attribute not in previous.attrs:
            return None
        value = _number(attr_value(entity, self.attribute))
        before = _number(attr_value(previous, self.attribute))
        if value is None or before is None:
            return None
        minutes = (observed_at(entity, self.attribute) - observed_at(previous, self.attribute)).total_seconds() / 60
        if minutes <= 0:
            return None  # a retry or an out-of-order reading says nothing about the trend
        rate = (before - value if self.falling else value - before) / minutes
        if not active and rate > self.max_per_min:
            name = self.label or DISPLAY.compact(self.attribute)
            way = "falling" if self.falling else "rising"
            return Verdict("raise", f"{name} {way} {rate:.3g}{self.unit}/min (limit {self.max_per_min:g}"
                                    f"{self.unit}/min)", self.attribute, value)
        if active and rate <= self.clear_per_min:
            return CLEAR
        return None


@dataclass(frozen=True)
class MissingDataRule(Rule):
    """Raise (in `IOC.tick`) when an entity of the type has not been written for `max_age`; clear as soon
    as it writes again."""

    rule_id: str
    entity_type: str
    max_age: timedelta
    severity: str = "low"
    category: str = "device"
    kind: str = "missing"

    def __post_init__(self) -> None:
        _check_severity(self.severity)
        if self.max_age <= timedelta(0):
            raise ValueError(f"rule {self.rule_id}: max_age must be positive")

    def on_write(self, entity, previous, changed, active, now):
        return CLEAR if active else None

    def verdict_for(self, entity: Entity, now: datetime) -> Verdict:
        minutes = (now - entity.modified_at).total_seconds() / 60
        return Verdict("raise", f"no data from {DISPLAY.compact(entity.type)} {entity.id} for {minutes:.0f} min "
                                f"(expected within {self.max_age.total_seconds() / 60:g} min)",
                       value=round(minutes * 60))


@dataclass(frozen=True)
class CameraEventRule(Rule):
    """A camera's analytics post an `Alert` entity per event (Smart Data Models Alert: category,
    subCategory, severity, dateIssued, description). Each new event raises an alert with the event's
    severity and category; it clears itself after `auto_clear_after` unless an operator did first."""

    rule_id: str
    entity_type: str
    auto_clear_after: timedelta = timedelta(minutes=30)
    severity: str = "medium"  # when the event gives none (or one outside the SDM list)
    category: str = "security"
    kind: str = "camera"

    def __post_init__(self) -> None:
        _check_severity(self.severity)

    def on_write(self, entity, previous, changed, active, now):
        if previous is not None and _DATE_ISSUED not in changed:
            return None
        severity = attr_value(entity, _SEVERITY)
        category = attr_value(entity, _CATEGORY)
        sub_category = attr_value(entity, _SUB_CATEGORY)
        description = attr_value(entity, _DESCRIPTION)
        category = category if isinstance(category, str) and category else self.category
        what = sub_category if isinstance(sub_category, str) and sub_category else category
        message = description if isinstance(description, str) and description else f"camera event: {what}"
        return Verdict("raise", message[:500], _SUB_CATEGORY if sub_category is not None else None,
                       sub_category, severity if severity in SEVERITIES else None, category)

    def expired(self, alert: Alert, now: datetime) -> bool:
        return alert.raised_at + self.auto_clear_after <= now


_DATE_ISSUED = DISPLAY.expand("dateIssued")
_SEVERITY = DISPLAY.expand("severity")
_CATEGORY = DISPLAY.expand("category")
_SUB_CATEGORY = DISPLAY.expand("subCategory")
_DESCRIPTION = DISPLAY.expand("description")


class RuleSet:
    """The rules indexed by entity type, and what a write makes of the entity's alerts."""

    def __init__(self, rules: Sequence[Rule]):
        self.rules = tuple(rules)
        ids = [rule.rule_id for rule in self.rules]
        if len(set(ids)) != len(ids):
            raise ValueError(f"rule ids must be unique, got {ids}")
        self.by_id = {rule.rule_id: rule for rule in self.rules}
        self._any_type = [rule for rule in self.rules if rule.entity_type is None]
        self._by_type: dict[str, list[Rule]] = {}
        for rule in self.rules:
            if rule.entity_type is not None:
                self._by_type.setdefault(rule.entity_type, []).append(rule)
        self.missing = [rule for rule in self.rules if isinstance(rule, MissingDataRule)]
        self.camera = [rule for rule in self.rules if isinstance(rule, CameraEventRule)]

    def for_type(self, entity_type: str) -> list[Rule]:
        typed = self._by_type.get(entity_type)
        return self._any_type + typed if typed else self._any_type

    def on_write(self, entity: Entity, previous: Entity | None, changed: tuple[str, ...],
                 active: dict[tuple[str, str], list[Alert]], now: datetime) -> tuple[list[Alert], list[Alert]]:
        """New alerts and cleared alerts for one write. `active` maps (entity id, rule id) to the
        alerts not cleared and is kept up to date, so one batch may write an entity several times."""
        raised: list[Alert] = []
        cleared: list[Alert] = []
        for rule in self.for_type(entity.type):
            key = (entity.id, rule.rule_id)
            current = active.get(key, ())
            verdict = rule.on_write(entity, previous, changed, current, now)
            if verdict is None:
                continue
            if verdict.action == "clear":
                cleared.extend(clear(alert, now, "rule") for alert in current)
                active.pop(key, None)
            else:
                alert = new_alert(rule, entity, verdict, now)
                raised.append(alert)
                active.setdefault(key, []).append(alert)
        return raised, cleared


def new_alert(rule: Rule, entity: Entity, verdict: Verdict, now: datetime) -> Alert:
    lon, lat = entity.location if entity.location else (None, None)
    return Alert(
        id=None, rule_id=rule.rule_id, kind=rule.kind, entity_id=entity.id, entity_type=entity.type,
        severity=verdict.severity or rule.severity, category=verdict.category or rule.category,
        status=AlertStatus.RAISED, raised_at=now, message=verdict.message, attribute=verdict.attribute,
        value=verdict.value, lon=lon, lat=lat)


def clear(alert: Alert, now: datetime, actor: str) -> Alert:
    return replace(alert, status=AlertStatus.CLEARED, cleared_at=now, actor=actor)


def _rules() -> tuple[Rule, ...]:
    x = DISPLAY.expand
    missing = {"TrafficFlowObserved": 15, "AirQualityObserved": 120, "NoiseLevelObserved": 60,
               "FloodMonitoring": 30, "Vehicle": 10}
    return (
        ThresholdRule("flood-water-level", x("waterLevel"), raise_above=0.30, clear_below=0.20,
                      severity="high", category="weather", label="water level", unit=" m"),
        # QCVN 05:2023/BTNMT: 24-hour limit for PM2.5 of 50 µg/m³.
        ThresholdRule("air-pm25", x("pm25"), raise_above=50.0, clear_below=40.0, severity="medium",
                      category="environment", label="PM2.5", unit=" µg/m³"),
        # QCVN 26:2010/BTNMT: 70 dBA LAeq in ordinary areas, 6:00-21:00.
        ThresholdRule("noise-laeq", x("LAeq"), raise_above=70.0, clear_below=65.0, severity="low",
                      category="environment", label="noise LAeq", unit=" dB(A)"),
        ThresholdRule("traffic-speed", x("averageVehicleSpeed"), raise_below=10.0, clear_above=15.0,
                      severity="medium", category="traffic", label="average speed", unit=" km/h"),
        ThresholdRule("traffic-occupancy", x("occupancy"), raise_above=0.85, clear_below=0.70,
                      severity="medium", category="traffic", label="occupancy"),
        RateRule("flood-rise-rate", x("waterLevel"), max_per_min=0.05, clear_per_min=0.0, severity="high",
                 category="weather", label="water level", unit=" m"),
        # Street flood gauges (Smart Data Models FloodMonitoring.currentLevel, m of water over the road):
        # 10 cm is where motorbikes, most of Đà Nẵng's traffic, start to stall; clear only once it is back
        # under 5 cm, so a gauge reading ±5 mm around the limit does not raise and clear over and over.
        ThresholdRule("flood-gauge-level", x("currentLevel"), raise_above=0.10, clear_below=0.05,
                      entity_type=x("FloodMonitoring"), severity="high", category="weather",
                      label="water level", unit=" m"),
        # 1 cm a minute (0.6 m an hour) is a drain overwhelmed: the early warning before the level alarm.
        RateRule("flood-gauge-rise", x("currentLevel"), max_per_min=0.01, clear_per_min=0.0,
                 entity_type=x("FloodMonitoring"), severity="medium", category="weather",
                 label="water level", unit=" m"),
        *(MissingDataRule(f"missing-{name}", x(name), timedelta(minutes=minutes)) for name, minutes in
          missing.items()),
        CameraEventRule("camera-event", x("Alert"), auto_clear_after=timedelta(minutes=30)),
    )


DEFAULT_RULES: tuple[Rule, ...] = _rules()

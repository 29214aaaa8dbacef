"""Device faults: what happens to a fleet's readings between the sensor and the transport.

One `FaultModel` per fleet keeps each device's fault state (offline until, stuck until, noise burst until,
drifting, battery death time, clock offset) and turns a sampled `Batch` into a `Delivery`: the rows that
leave the devices, with faulted values, skewed clocks, duplicates, and the virtual time each reaches the
transport. Every random draw comes from the generator it is given, in a fixed order, so a seed gives the
same faults.

Per reading (each row of a batch, for a device that is alive and online):
  dropout   chance the device goes offline now, for Exp(dropout_duration); this reading and all until it
            recovers are lost;
  stuck     chance the measured values freeze for Exp(stuck_duration): the device repeats its last delivered
            values (the current ones if it has delivered none);
  burst     chance a noise burst starts, for Exp(burst_duration): value · (1 + burst_scale · N(0, 1));
  duplicate chance the message goes out twice, the copy a little later (a retransmission);
  late      chance the message is held back Exp(late_delay) more, so it arrives after later ones.
Per device: a `drift` share of the devices drift by drift_per_day per day since the start; a `battery`
share die at Normal(battery_life, 0.2 · battery_life) and never send again; every clock is off by a fixed
Normal(0, clock_skew) offset. Every message takes Exp(network_delay) to reach the transport.

Value faults act only on the `measured` numeric fields and are clipped to each field's bounds (counts rounded,
never negative), so a faulted reading always encodes. A derived field (a gauge's warning state) is the
device's own verdict on its true reading and stays as sampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from citytwin.devices_sim.batch import Batch, Delivery
from citytwin.devices_sim.encoders import Observation

DAY_S = 86_400.0
# Labels, least to most notable; a row carries the most notable that applies to it. A copy is above all
# (completeness counts distinct readings), lateness next (it is what the receiver sees first), then the value
# faults from the most to the least damaging.
LABELS = ("", "drift", "burst", "stuck", "late", "duplicate")
_CODE = {label: code for code, label in enumerate(LABELS)}
NO_FAULTS = SimpleNamespace(dropout=0.0, dropout_duration=1800.0, stuck=0.0, stuck_duration=7200.0, drift=0.0,
                            drift_per_day=0.0, burst=0.0, burst_duration=600.0, burst_scale=0.0, duplicate=0.0,
                            late=0.0, late_delay=300.0, clock_skew=0.0, battery=0.0, battery_life=5 * DAY_S,
                            network_delay=0.0)


@dataclass(frozen=True)
class FaultEvent:
    """A device fault starting (a `device.fault` ledger row)."""

    t: float
    device: int
    cause: str            # "dropout" | "stuck" | "burst" | "drift" | "battery"
    duration_s: float     # NaN: for good (battery) or for the whole run (drift)


class FaultModel:
    """The fault state of one fleet's devices; `apply` each sampled batch in time order."""

    def __init__(self, spec: Any, n_devices: int, interval_s: float, rng: np.random.Generator,
                 measured: tuple[str, ...]):
        self.spec = spec if spec is not None else NO_FAULTS
        self.n_devices = int(n_devices)
        self.interval_s = float(interval_s)
        self.rng = rng
        self.measured = tuple(measured)
        spec = self.spec
        n = self.n_devices
        self.offline_until = np.full(n, -math.inf)
        self.stuck_until = np.full(n, -math.inf)
        self.burst_until = np.full(n, -math.inf)
        self.skew = rng.normal(0.0, spec.clock_skew, n) if spec.clock_skew > 0 else np.zeros(n)
        self.drifting = np.zeros(n, dtype=bool)
        if spec.drift > 0 and spec.drift_per_day != 0 and self.measured:
            self.drifting[_share(rng, n, spec.drift)] = True
        self.dead_at = np.full(n, math.inf)
        if spec.battery > 0:
            on_battery = _share(rng, n, spec.battery)
            life = rng.normal(spec.battery_life, 0.2 * spec.battery_life, len(on_battery))
            self.dead_at[on_battery] = np.maximum(life, 0.0)
        self._death_reported = np.zeros(n, dtype=bool)
        self._last: dict[str, np.ndarray] = {name: np.full(n, np.nan) for name in self.measured}
        self._has_last = np.zeros(n, dtype=bool)
        self._events = [FaultEvent(0.0, int(k), "drift", math.nan) for k in np.flatnonzero(self.drifting)]
        # A fleet with nothing measured (camera alerts) has no values to freeze, drift or shake.
        self._values_faulted = bool(self.measured) and (
            spec.stuck > 0 or self.drifting.any() or (spec.burst > 0 and spec.burst_scale > 0))
        self._active = self._values_faulted or spec.dropout > 0 or spec.duplicate > 0 or spec.late > 0 \
            or spec.clock_skew > 0 or spec.battery > 0
        self._fields: dict[str, Any] | None = None

    def drain_events(self) -> list[FaultEvent]:
        """Fault starts since the last call, in time order."""
        events, self._events = sorted(self._events, key=lambda e: (e.t, e.device)), []
        return events

    def apply(self, batch: Batch, t: float) -> Delivery:
        """The delivery of the readings sampled at `t`."""
        rng, spec = self.rng, self.spec
        self._note_deaths(t)
        if not self._active:
            return Delivery(batch, self._send_times(batch, t), batch.observed_t.copy(),
                            np.full(len(batch), "", dtype=object))
        devices = batch.devices
        alive = self.dead_at[devices] > t
        if spec.dropout > 0:
            starts = alive & (self.offline_until[devices] <= t) & (rng.random(len(batch)) < spec.dropout)
            self._start("dropout", self.offline_until, devices[starts], t, spec.dropout_duration)
        sent = alive & (self.offline_until[devices] <= t)
        if not sent.all():
            batch = batch.take(np.flatnonzero(sent))
        code = np.zeros(len(batch), dtype=np.int8)
        if self._values_faulted:
            batch = self._fault_values(batch, t, code)
        true_t = batch.observed_t
        if spec.clock_skew > 0:
            batch = self._skew(batch)
        send_t = self._send_times(batch, t)
        if spec.late > 0:
            late = rng.random(len(batch)) < spec.late
            send_t[late] += rng.exponential(spec.late_delay, int(late.sum()))
            code[late] = np.maximum(code[late], _CODE["late"])
        rows = np.arange(len(batch))
        if spec.duplicate > 0:
            copies = rng.random(len(batch)) < spec.duplicate
            rows = np.repeat(rows, 1 + copies)
            is_copy = np.zeros(len(rows), dtype=bool)
            is_copy[1:] = rows[1:] == rows[:-1]
            send_t = send_t[rows]
            send_t[is_copy] += rng.exponential(max(spec.network_delay, 1.0), int(is_copy.sum()))
            code = code[rows]
            code[is_copy] = _CODE["duplicate"]
            batch = batch.take(rows)
            true_t = true_t[rows]
        return Delivery(batch, send_t, np.array(true_t, dtype=np.float64), np.array(LABELS, dtype=object)[code])

    # -- the parts --

    def _send_times(self, batch: Batch, t: float) -> np.ndarray:
        send_t = np.full(len(batch), float(t))
        if "delay" in batch.meta:
            send_t += np.asarray(batch.meta["delay"], dtype=np.float64)
        if self.spec.network_delay > 0:
            send_t += self.rng.exponential(self.spec.network_delay, len(batch))
        return send_t

    def _note_deaths(self, t: float) -> None:
        dead = np.flatnonzero((self.dead_at <= t) & ~self._death_reported)
        self._death_reported[dead] = True
        self._events += [FaultEvent(float(self.dead_at[k]), int(k), "battery", math.nan) for k in dead]

    def _start(self, cause: str, until: np.ndarray, devices: np.ndarray, t: float, mean_s: float) -> None:
        """Devices entering a fault state at t (several rows of one device start it once)."""
        devices = np.unique(devices)
        durations = self.rng.exponential(mean_s, len(devices))
        until[devices] = t + durations
        self._events += [FaultEvent(float(t), int(k), cause, float(s)) for k, s in zip(devices, durations)]

    def _fault_values(self, batch: Batch, t: float, code: np.ndarray) -> Batch:
        rng, spec = self.rng, self.spec
        devices = batch.devices
        n = len(batch)
        fields = self._measured_fields(batch)
        values = {name: batch.values[name].astype(np.float64) for name in fields}
        if spec.stuck > 0:
            starts = (self.stuck_until[devices] <= t) & (rng.random(n) < spec.stuck)
            self._start("stuck", self.stuck_until, devices[starts], t, spec.stuck_duration)
        stuck = self.stuck_until[devices] > t
        repeat = stuck & self._has_last[devices]
        for name, column in values.items():
            column[repeat] = self._last[name][devices[repeat]]
        drift = self.drifting[devices] & ~stuck
        if drift.any():
            for column in values.values():
                column[drift] *= 1.0 + spec.drift_per_day * t / DAY_S
        burst = np.zeros(n, dtype=bool)
        if spec.burst > 0 and spec.burst_scale > 0:
            starts = (self.burst_until[devices] <= t) & (rng.random(n) < spec.burst)
            self._start("burst", self.burst_until, devices[starts], t, spec.burst_duration)
            burst = (self.burst_until[devices] > t) & ~stuck
            for column in values.values():
                column[burst] *= 1.0 + spec.burst_scale * rng.standard_normal(int(burst.sum()))
        for label, rows in (("drift", drift), ("burst", burst), ("stuck", stuck)):
            code[rows] = np.maximum(code[rows], _CODE[label])
        out = dict(batch.values)
        for name, field in fields.items():
            column = np.clip(values[name], max(field.lo, 0.0) if field.kind == "count" else field.lo, field.hi)
            if field.kind == "count":
                column = np.rint(column).astype(np.int64)
            out[name] = column
            self._last[name][devices] = column
        self._has_last[devices] = True
        return Batch(batch.kind, devices, batch.observed_t, out, batch.meta)

    def _measured_fields(self, batch: Batch) -> dict[str, Any]:
        if self._fields is None:
            specs = {field.name: field for field in batch.kind.FIELDS}
            for name in self.measured:
                if name not in specs or specs[name].kind not in ("float", "count"):
                    raise ValueError(f"measured: {name!r} is not a numeric field of {batch.kind.__name__}")
            self._fields = {name: specs[name] for name in self.measured}
        return self._fields

    def _skew(self, batch: Batch) -> Batch:
        """Each device stamps its readings with its own clock."""
        offset = self.skew[batch.devices]
        values = dict(batch.values)
        for field in batch.kind.FIELDS:
            if field.kind == "time":
                values[field.name] = batch.values[field.name] + offset
        return Batch(batch.kind, batch.devices, batch.observed_t + offset, values, batch.meta)


def measured_fields(kind: type[Observation]) -> tuple[str, ...]:
    """The fields value faults act on by default: the numeric ones a sensor measures."""
    return tuple(field.name for field in kind.FIELDS if field.measured and field.kind in ("float", "count"))


def _share(rng: np.random.Generator, n: int, share: float) -> np.ndarray:
    """A fixed share of n devices (rounded), drawn without replacement."""
    return rng.choice(n, size=int(round(share * n)), replace=False)


__all__ = ["Delivery", "FaultEvent", "FaultModel", "LABELS", "NO_FAULTS", "measured_fields"]

"""The append-only record of a run: every event with its virtual time, written as Parquet.

One table, one row per event. Columns are `seq` (append order), `t` (virtual seconds since the
scenario start), `kind` (dotted name), `subject` (the link, node, trip or request the event is about)
and the fields the kinds declare in `FIELDS`; a field a kind does not use is null. One union schema
keeps the file a single Parquet table that any tool reads, and null columns cost almost nothing.

KPIs are pure functions of this table (and the city), so the same KPI code serves simulated and live
runs. Rows are flushed to disk in row groups as they come, so a run that is stopped keeps what it had.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# Every field any event kind may carry, with its Arrow type. A new kind adds its fields here.
FIELDS: dict[str, pa.DataType] = {
    # trips (platoon-level: one row stands for `vehicles` vehicles of the mix, `pcu` passenger-car units)
    "origin": pa.string(),
    "dest": pa.string(),
    "depart_t": pa.float64(),
    "travel_time_s": pa.float64(),
    "free_flow_s": pa.float64(),
    "vehicles": pa.float64(),
    "pcu": pa.float64(),
    # link state snapshots and the flows between them
    "entries": pa.float64(),
    "exits": pa.float64(),
    "on_link": pa.float64(),
    "speed_mps": pa.float64(),
    "density_pcu_km": pa.float64(),
    "queue": pa.float64(),
    # hazards and the changes they make
    "cause": pa.string(),
    "capacity_factor": pa.float64(),
    "duration_s": pa.float64(),
    "intensity_mm_h": pa.float64(),
    "depth_m": pa.float64(),
    # residents' trips (counted per clock hour and mode)
    "mode": pa.string(),
    "count": pa.float64(),
    # urban problems (ground truth) and the field reports about them
    "category": pa.string(),  # the IOC service code
    "severity": pa.int64(),  # 1 minor, 2 serious, 3 severe
    "link": pa.string(),
    "node": pa.string(),
    "lon": pa.float64(),
    "lat": pa.float64(),
    "problem": pa.string(),
    "resident": pa.int64(),
    "channel": pa.string(),  # app | hotline | web
    "request_id": pa.int64(),
    "duplicate_of": pa.int64(),
    "deadline_t": pa.float64(),  # virtual time the request is due
    "status": pa.string(),
    "actor": pa.string(),
    "published": pa.bool_(),  # the step carried a public note for the reporter
    "wait_s": pa.float64(),
    "satisfaction": pa.float64(),  # 1-5
    "crew": pa.string(),
    # devices: what is installed where, what each delivers, and what goes wrong with it
    "device_type": pa.string(),  # detector | camera | air | noise | water_level | rain_gauge | bus
    "fleet": pa.string(),  # the scenario's fleet name
    "interval_s": pa.float64(),  # sampling interval
    "covers": pa.string(),  # space-separated link ids (cameras, detectors) or node ids (environment, water)
    "observed_t": pa.float64(),  # when the device sampled, by its own clock (skew included)
    "fault": pa.string(),  # "" or the fault the delivered reading carries: stuck, drift, burst, duplicate, late
    "truth_t": pa.float64(),  # when the ground truth a camera alert is about began
    "rule": pa.string(),  # the IOC rule that raised or cleared an alert
    "value": pa.float64(),  # a reading's headline value (speed km/h, PM2.5, LAeq, water level m, rain mm/h)
}

# The kinds the twin writes, each with the fields it fills: the ledger's data dictionary.
KINDS: dict[str, tuple[str, ...]] = {
    "run.start": ("cause",),
    "run.end": ("duration_s",),
    "trip.end": ("origin", "dest", "depart_t", "travel_time_s", "free_flow_s", "vehicles", "pcu"),
    "trip.unfinished": ("origin", "dest", "depart_t", "free_flow_s", "vehicles", "pcu"),
    "link.state": ("on_link", "speed_mps", "density_pcu_km", "queue"),
    "link.flow": ("entries", "exits", "duration_s"),  # PCU in and out over the interval ending at t
    "incident.start": ("cause", "capacity_factor", "duration_s"),
    "incident.end": ("cause",),
    "rain.start": ("intensity_mm_h", "duration_s"),
    "rain.end": (),
    "flood.start": ("depth_m",),
    "flood.end": ("depth_m",),
    "link.closed": ("cause",),
    "link.reopened": ("cause",),
    "persons.trips": ("mode", "count"),  # t: start of the clock hour the trips depart in
    "problem.start": ("cause", "category", "severity", "link", "node", "lon", "lat"),  # cause: problem kind
    "problem.fixed": ("crew", "request_id"),
    "report.submitted": ("channel", "category", "problem", "resident", "request_id", "duplicate_of",
                         "deadline_t", "lon", "lat"),  # subject: the twin's report id
    "call.answered": ("wait_s", "actor"),  # subject: the report the call carries
    "call.abandoned": ("wait_s", "problem", "resident"),
    "request.status": ("status", "actor", "published", "duplicate_of", "crew"),  # subject: request id
    "crew.travel": ("crew", "request_id", "travel_time_s"),  # subject: the crew; t: departure
    "report.checked": ("status", "request_id"),
    "report.feedback": ("satisfaction", "published", "request_id", "duration_s"),
    "report.given_up": ("request_id", "duration_s"),
    "device.installed": ("device_type", "fleet", "node", "link", "lon", "lat", "interval_s", "covers"),
    # t: when the IOC received it; subject: the device; link/node: where the reading is about
    "device.reading": ("device_type", "fleet", "observed_t", "fault", "link", "node", "value"),
    "device.fault": ("device_type", "fleet", "cause", "duration_s"),  # t: start; duration NaN: for good
    # a camera's analytics detected an event and its alert reached the IOC (t); cause: incident,
    # congestion, violation or flood; truth_t: when the event began
    "camera.alert": ("fleet", "cause", "link", "node", "truth_t", "observed_t"),
    "ioc.alert": ("rule", "category", "status", "value"),  # subject: the entity; status raised | cleared
}

BASE = (("seq", pa.int64()), ("t", pa.float64()), ("kind", pa.string()), ("subject", pa.string()))
SCHEMA = pa.schema([pa.field(n, t) for n, t in BASE] + [pa.field(n, t) for n, t in FIELDS.items()])


class Ledger:
    """Append-only event log. `append` for single events, `append_many` for columns of one kind."""

    def __init__(self, path: str | Path | None = None, *, flush_rows: int = 65536):
        self.path = Path(path) if path is not None else None
        self._flush_rows = flush_rows
        self._pending: list[pa.RecordBatch] = []
        self._rows: list[dict[str, Any]] = []  # single events not yet in a batch
        self._pending_rows = 0
        self._written: list[pa.RecordBatch] = []  # kept in memory only when there is no path
        self._writer: pq.ParquetWriter | None = None
        self._seq = 0
        self.closed = False

    def __len__(self) -> int:
        return self._seq

    def append(self, kind: str, t: float, subject: str = "", **fields: Any) -> None:
        """One event. Single rows are buffered as Python values and become one Arrow batch at the next
        bulk append or flush: a batch per row would cost more than the agents that write them."""
        self._check(kind, fields)
        row = {name: (None if v is None else str(v)) if FIELDS[name] == pa.string() else v
               for name, v in fields.items()}
        row.update(seq=self._seq, t=float(t), kind=kind, subject=str(subject))
        self._rows.append(row)
        self._seq += 1
        self._pending_rows += 1
        if self._pending_rows >= self._flush_rows:
            self.flush()

    def _check(self, kind: str, fields: dict[str, Any]) -> None:
        if self.closed:
            raise RuntimeError("the ledger is closed")
        allowed = KINDS.get(kind)
        if allowed is None:
            raise KeyError(f"unknown event kind {kind!r}; declare it in ledger.KINDS")
        extra = set(fields) - set(allowed)
        if extra:
            raise KeyError(f"event kind {kind!r} has no field(s) {sorted(extra)}")

    def _batch_rows(self) -> None:
        if self._rows:
            self._pending.append(pa.RecordBatch.from_pylist(self._rows, schema=SCHEMA))
            self._rows = []

    def append_many(self, kind: str, t: Iterable[float], subject: Iterable[str], **fields: Any) -> None:
        self._check(kind, fields)
        self._batch_rows()  # keep append order
        t = np.asarray(t, dtype=float)
        n = len(t)
        if n == 0:
            return
        columns: dict[str, pa.Array] = {
            "seq": pa.array(np.arange(self._seq, self._seq + n, dtype=np.int64)),
            "t": pa.array(t),
            "kind": pa.array([kind] * n, pa.string()),
            "subject": pa.array([str(s) for s in subject], pa.string()),
        }
        for name, typ in FIELDS.items():
            if name in fields:
                values = fields[name]
                if typ == pa.string():
                    values = [None if v is None else str(v) for v in values]
                columns[name] = pa.array(values, typ)
            else:
                columns[name] = pa.nulls(n, typ)
        batch = pa.RecordBatch.from_arrays([columns[f.name] for f in SCHEMA], schema=SCHEMA)
        if batch.num_rows != n:
            raise ValueError(f"{kind}: field lengths differ from the number of times ({n})")
        self._seq += n
        self._pending.append(batch)
        self._pending_rows += n
        if self._pending_rows >= self._flush_rows:
            self.flush()

    def flush(self) -> None:
        self._batch_rows()
        if not self._pending:
            return
        table = pa.Table.from_batches(self._pending, schema=SCHEMA)
        self._pending, self._pending_rows = [], 0
        if self.path is None:
            self._written.extend(table.to_batches())
            return
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.path, SCHEMA, compression="zstd")
        self._writer.write_table(table)

    def close(self) -> None:
        if self.closed:
            return
        self.flush()
        if self.path is not None:
            if self._writer is None:  # an empty run still leaves a readable file
                pq.write_table(SCHEMA.empty_table(), self.path, compression="zstd")
            else:
                self._writer.close()
        self.closed = True

    def table(self) -> pa.Table:
        """Everything recorded so far (reads the file back when the ledger writes to disk)."""
        if self.path is not None:
            self.flush()
            if self._writer is not None and not self.closed:
                raise RuntimeError("close the ledger before reading it back from disk")
            return read_ledger(self.path)
        self._batch_rows()
        return pa.Table.from_batches(self._written + self._pending, schema=SCHEMA)


def read_ledger(path: str | Path) -> pa.Table:
    return pq.read_table(path, schema=SCHEMA)


def events(table: pa.Table, kind: str, columns: Iterable[str] | None = None):
    """The rows of one kind as a pandas DataFrame with the kind's own fields (plus t and subject)."""
    cols = ["t", "subject", *(columns if columns is not None else KINDS[kind])]
    sub = table.filter(pc.equal(table["kind"], kind)).select(cols)
    return sub.to_pandas()

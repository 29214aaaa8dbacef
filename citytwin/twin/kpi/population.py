"""What the residents did: person trips per day and how they travelled (from `persons.trips` rows)."""

from __future__ import annotations

import pyarrow as pa

from ..ledger import events
from .traffic import kpi


def person_trip_kpis(table: pa.Table, *, residents: int, duration_s: float) -> dict:
    rows = events(table, "persons.trips")
    days = duration_s / 86400.0
    total = float(rows["count"].sum()) if len(rows) else 0.0
    out = {
        "person_trips_per_day": kpi(round(total / days, 1), "trips/day", "Residents' trips per day (all modes)"),
        "trips_per_resident": kpi(round(total / days / residents, 3) if residents else None, "trips/day",
                                  "Trips per resident and day"),
    }
    by_mode = rows.groupby("mode")["count"].sum() if len(rows) else {}
    for mode, count in sorted(dict(by_mode).items()):
        out[f"mode_share_{mode}"] = kpi(round(100.0 * float(count) / total, 2), "%", f"Trips by {mode}")
    return out

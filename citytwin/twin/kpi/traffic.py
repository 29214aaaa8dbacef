"""Traffic KPIs: pure functions of the ledger and the city.

Trips are weighted by the vehicles they stand for. The congestion index of an hour is the extra time
trips departing in it spent over free flow (the TomTom "congestion level"): 30 % means a 10-minute
free-flow trip took 13 minutes. A link is congested in a snapshot when its mean speed is below
`congested_speed_ratio` of its free-flow speed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from ..city.model import City
from ..ledger import events


def kpi(value, unit: str, label: str) -> dict:
    return {"value": None if value is None or (isinstance(value, float) and not np.isfinite(value)) else value,
            "unit": unit, "label": label}


def traffic_kpis(table: pa.Table, city: City, *, start_s: float, congested_speed_ratio: float) -> dict:
    trips = events(table, "trip.end")
    unfinished = events(table, "trip.unfinished")
    states = events(table, "link.state", ["speed_mps", "on_link"])
    out = _trip_kpis(trips, unfinished)
    by_hour = congestion_index_by_hour(trips, start_s)
    congested = congested_km(states, city, congested_speed_ratio)
    peak_t = float(congested.idxmax()) if len(congested) and congested.max() > 0 else None
    out["peak_congested_km"] = kpi(float(congested.max()) if len(congested) else None, "km",
                                   "Congested road at the peak")
    out["peak_congestion_index"] = kpi(float(max(by_hour.values())) if by_hour else None, "%",
                                       "Congestion index, worst hour")
    on_network = states.groupby("t")["on_link"].sum() if len(states) else pd.Series(dtype=float)
    series = {
        "congestion_index_by_hour": {"unit": "%", "label": "Congestion index by departure hour",
                                     "x": list(by_hour), "values": [by_hour[h] for h in by_hour]},
        "congested_km": {"unit": "km", "label": "Congested road length",
                         "x": congested.index.tolist(), "values": congested.round(3).tolist()},
        "vehicles_on_network": {"unit": "PCU", "label": "Traffic on the network",
                                "x": on_network.index.tolist(), "values": on_network.round(1).tolist()},
    }
    return {"kpis": out, "series": series, "peak": {"t": peak_t}}


def _trip_kpis(trips: pd.DataFrame, unfinished: pd.DataFrame) -> dict:
    veh = trips["vehicles"].to_numpy()
    total = veh.sum()
    tt = trips["travel_time_s"].to_numpy()
    delay = np.maximum(tt - trips["free_flow_s"].to_numpy(), 0.0)
    return {
        "trips_completed": kpi(int(round(total)), "veh", "Vehicle trips completed"),
        "trips_unfinished": kpi(int(round(unfinished["vehicles"].sum())), "veh",
                                "Vehicle trips still under way at the end"),
        "mean_travel_time": kpi(_mean_minutes(tt, veh), "min", "Mean travel time"),
        "mean_delay": kpi(_mean_minutes(delay, veh), "min", "Mean delay over free flow"),
        "total_delay": kpi(float((delay * veh).sum() / 3600.0), "veh·h", "Total delay"),
    }


def _mean_minutes(seconds: np.ndarray, weights: np.ndarray) -> float | None:
    total = weights.sum()
    return float((seconds * weights).sum() / total / 60.0) if total > 0 else None


def congestion_index_by_hour(trips: pd.DataFrame, start_s: float) -> dict[int, float]:
    if trips.empty:
        return {}
    hour = ((start_s + trips["depart_t"]) // 3600 % 24).astype(int)
    w = trips["vehicles"]
    grouped = pd.DataFrame({"h": hour, "tt": trips["travel_time_s"] * w, "ff": trips["free_flow_s"] * w}).groupby("h").sum()
    index = (grouped["tt"] / grouped["ff"] - 1.0) * 100.0
    return {int(h): round(float(v), 2) for h, v in index.items()}


def congested_km(states: pd.DataFrame, city: City, ratio: float) -> pd.Series:
    """Kilometres of congested link at each snapshot time."""
    if states.empty:
        return pd.Series(dtype=float)
    index = city.link_index()
    k = states["subject"].map(index).to_numpy()
    slow = states["speed_mps"].to_numpy() < ratio * city.links.free_flow_mps[k]
    km = np.where(slow, city.links.length_m[k] / 1000.0, 0.0)
    return pd.Series(km, index=states["t"].to_numpy()).groupby(level=0).sum()


def hazard_kpis(table: pa.Table, *, end_t: float) -> dict:
    starts = events(table, "incident.start")
    ends = events(table, "incident.end")
    durations = _durations(starts, ends, end_t)
    floods = _durations(events(table, "flood.start"), events(table, "flood.end"), end_t)
    closed = _durations(events(table, "link.closed"), events(table, "link.reopened"), end_t)
    return {
        "incident_count": kpi(len(starts), "", "Incidents"),
        "incident_mean_duration": kpi(float(durations.mean() / 60.0) if len(durations) else None, "min",
                                      "Mean incident duration"),
        "flooded_junctions": kpi(int(events(table, "flood.start")["subject"].nunique()), "", "Junctions flooded"),
        "flood_hours": kpi(float(floods.sum() / 3600.0), "h", "Junction-hours under water"),
        "closed_link_hours": kpi(float(closed.sum() / 3600.0), "link·h", "Link-hours closed by floods"),
    }


def _durations(starts: pd.DataFrame, ends: pd.DataFrame, end_t: float) -> np.ndarray:
    """Pair each start with the next end of the same subject; what has not ended lasts to the end."""
    if starts.empty:
        return np.empty(0)
    s = starts.assign(n=starts.groupby("subject").cumcount())
    e = ends.assign(n=ends.groupby("subject").cumcount())[["subject", "n", "t"]].rename(columns={"t": "t_end"})
    paired = s.merge(e, on=["subject", "n"], how="left")
    return (paired["t_end"].fillna(end_t) - paired["t"]).to_numpy()

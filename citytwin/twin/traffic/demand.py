"""Demand for the engine: trips as platoons of PCU, from a time-dependent OD model or a TNTP file.

A platoon carries `platoon_pcu` passenger-car units of the vehicle mix (UXsim's unit of movement), so
a day of `trips_per_day` vehicles becomes trips_per_day × mean PCU / platoon_pcu platoons. Each
platoon records how many vehicles it stands for, so KPIs count vehicles, not platoons.
"""

from __future__ import annotations

import numpy as np

from ..city.model import City
from ..city.paths import od_free_flow, zone_nodes
from ..clock import clock_hour_slots
from ..errors import UserInputError, problem
from ..scenario.schema import OdDemand, TntpDemand
from .engine import TripBatch

_AM = range(5, 11)  # clock hours whose trips lean home -> work/school
_PM = range(15, 21)  # and work/school -> home


def od_demand(city: City, spec: OdDemand, *, mean_pcu: float, platoon_pcu: int, start_s: float,
              duration_s: float, rng: np.random.Generator) -> TripBatch:
    zones = zone_nodes(city)
    pop = city.zone_weights.get("population", np.ones(len(city.nodes)))[zones]
    jobs = city.zone_weights.get("jobs", np.ones(len(city.nodes)))[zones]
    dx = city.nodes.x[zones, None] - city.nodes.x[None, zones]
    dy = city.nodes.y[zones, None] - city.nodes.y[None, zones]
    decay = np.exp(-spec.distance_decay_per_km * np.hypot(dx, dy) / 1000.0)
    np.fill_diagonal(decay, 0.0)
    outbound = np.cumsum((pop[:, None] * jobs[None, :] * decay).ravel())  # home -> work
    inbound = np.cumsum((jobs[:, None] * pop[None, :] * decay).ravel())  # work -> home
    del decay

    weights = np.asarray(spec.hourly_weights())
    per_day = spec.trips_per_day * mean_pcu / platoon_pcu
    origins, dests, departs = [], [], []
    for t0, span, hour in clock_hour_slots(start_s, duration_s):
        n = rng.poisson(per_day * weights[hour] / weights.sum() * span / 3600.0)
        if n == 0:
            continue
        lean = spec.peak_direction_share if hour in _AM else 1 - spec.peak_direction_share if hour in _PM else 0.5
        use_outbound = rng.random(n) < lean
        cells = np.where(use_outbound,
                         np.searchsorted(outbound, rng.random(n) * outbound[-1], side="right"),
                         np.searchsorted(inbound, rng.random(n) * inbound[-1], side="right"))
        origins.append(zones[cells // len(zones)])
        dests.append(zones[cells % len(zones)])
        departs.append(t0 + np.sort(rng.random(n)) * span)
    return _batch(origins, dests, departs)


def tntp_demand(city: City, spec: TntpDemand, *, mean_pcu: float, platoon_pcu: int, duration_s: float,
                rng: np.random.Generator) -> TripBatch:
    """The file's OD flows (vehicles per hour) departing evenly over `period`, as platoons."""
    from ..city.tntp import read_tntp_trips

    zones, matrix = read_tntp_trips(spec.trips)
    index = city.node_index()
    missing = [z for z in zones if z not in index]
    if missing:
        raise UserInputError(problem(spec.trips, "zones", f"zones not in the network: {', '.join(missing[:5])}"))
    zone_idx = np.array([index[z] for z in zones])
    o, d = np.nonzero(matrix > 0)
    o, d = o[o != d], d[o != d]
    _check_paths(city, zone_idx[o], zone_idx[d], spec.trips, zones, o, d)
    period = min(spec.period, max(duration_s - spec.start, 0.0))  # what of the window falls in the run
    expected = matrix[o, d] * spec.scale * period / 3600.0 * mean_pcu / platoon_pcu
    counts = np.floor(expected).astype(int)
    counts += rng.random(len(expected)) < (expected - counts)  # the fraction rounds up at its odds
    origins = [np.repeat(zone_idx[o], counts)]
    dests = [np.repeat(zone_idx[d], counts)]
    # Evenly spaced departures per OD pair, each pair with its own phase so platoons do not bunch.
    rank = np.concatenate([np.arange(c) for c in counts]) if counts.sum() else np.empty(0)
    phase = np.repeat(rng.random(len(counts)), counts)
    departs = [spec.start + (rank + phase) / np.repeat(np.maximum(counts, 1), counts) * period]
    return _batch(origins, dests, departs)


def _check_paths(city: City, origin: np.ndarray, dest: np.ndarray, source: str, zones: list[str],
                 o: np.ndarray, d: np.ndarray) -> None:
    unreachable = np.flatnonzero(~np.isfinite(od_free_flow(city, origin, dest)))
    if len(unreachable):
        pairs = ", ".join(f"{zones[o[k]]} -> {zones[d[k]]}" for k in unreachable[:5])
        raise UserInputError(problem(source, "OD pairs",
                                     f"{len(unreachable)} OD pair(s) with demand have no path in the network, e.g. {pairs}"))


def _batch(origins: list, dests: list, departs: list) -> TripBatch:
    if not departs:
        empty = np.empty(0, np.int64)
        return TripBatch(ids=np.empty(0, object), origin=empty, dest=empty, depart_t=np.empty(0))
    origin, dest, depart = np.concatenate(origins), np.concatenate(dests), np.concatenate(departs)
    order = np.argsort(depart, kind="stable")
    ids = np.array([f"p{k}" for k in range(len(order))], dtype=object)
    return TripBatch(ids=ids, origin=origin[order].astype(np.int64), dest=dest[order].astype(np.int64),
                     depart_t=depart[order])

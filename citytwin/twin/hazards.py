"""Ground truth the city does not choose: link incidents (crash, breakdown) and rain that floods.

The schedule of incidents and rain is drawn up front from the run's seeded generator; SimPy
processes then play it out, write each ground-truth event to the ledger and apply its physical
effect to the traffic engine. Flooding is a bucket per low-lying junction: water rises while rain
outpaces drainage, concentrated by how low the junction lies, and recedes when it stops; above
`flood_depth_m` the links at the junction close, and they reopen when the water is down to half that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import simpy

from .city.model import City
from .clock import clock_hour_slots
from .ledger import Ledger
from .scenario.schema import HazardsSpec
from .traffic.engine import Restriction, TrafficEngine

# When afternoon convective storms start in central Vietnam (relative weights by clock hour).
_RAIN_START_BY_HOUR = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4, 5, 5, 4, 3, 2, 2, 1, 1, 1, 1], float)
_FLOOD_STEP_S = 300.0
_INCIDENT_DURATION_CV = 0.6


@dataclass(frozen=True)
class Incident:
    link: int
    start: float
    duration: float
    cause: str
    capacity_factor: float


@dataclass(frozen=True)
class Rain:
    start: float
    duration: float
    intensity_mm_h: float


def draw_incidents(city: City, spec: HazardsSpec, *, start_s: float, duration_s: float,
                   hourly_weights: np.ndarray, rng: np.random.Generator) -> list[Incident]:
    inc = spec.incidents
    exposure = city.links.lanes * city.links.length_m / 1000.0  # lane-km
    n = rng.poisson(inc.rate_per_lane_km_day * exposure.sum() * duration_s / 86400.0)
    if n == 0 or not inc.kinds:
        return []
    # More incidents where more traffic can be: weight by capacity-km, and in time by demand.
    weight = city.links.capacity_pcu_h * city.links.length_m
    links = rng.choice(len(weight), size=n, p=weight / weight.sum())
    starts = _draw_times(n, start_s, duration_s, hourly_weights, rng)
    names = list(inc.kinds)
    causes = rng.choice(len(names), size=n, p=[inc.kinds[k].share for k in names])
    out = []
    for link, t, c in zip(links, starts, causes):
        kind = inc.kinds[names[c]]
        out.append(Incident(link=int(link), start=float(t), cause=names[c], capacity_factor=kind.capacity_factor,
                            duration=float(_lognormal(kind.mean_duration, _INCIDENT_DURATION_CV, rng))))
    return sorted(out, key=lambda i: (i.start, i.link))


def draw_rain(spec: HazardsSpec, *, start_s: float, duration_s: float, rng: np.random.Generator) -> list[Rain]:
    rain = spec.rain
    fixed = [_fixed_episode(e.start - start_s, e.duration, e.intensity_mm_h) for e in rain.episodes]
    n = rng.poisson(rain.episodes_per_day * duration_s / 86400.0)
    starts = _draw_times(n, start_s, duration_s, _RAIN_START_BY_HOUR, rng)
    drawn = [Rain(start=float(t), duration=float(rng.exponential(rain.mean_duration)),
                  intensity_mm_h=float(min(rng.exponential(rain.mean_intensity_mm_h), 300.0))) for t in starts]
    return sorted((r for r in fixed + drawn if r.start < duration_s), key=lambda r: r.start)


def _fixed_episode(offset_s: float, duration_s: float, intensity_mm_h: float) -> Rain:
    """A rain episode given by clock time: later the same day, or the next day if its clock time has
    passed, unless it is still raining when the run starts, in which case the run starts in it."""
    offset_s %= 86400.0
    still_raining = offset_s + duration_s - 86400.0
    if still_raining > 0:
        return Rain(start=0.0, duration=still_raining, intensity_mm_h=intensity_mm_h)
    return Rain(start=offset_s, duration=duration_s, intensity_mm_h=intensity_mm_h)


def _draw_times(n: int, start_s: float, duration_s: float, hourly: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """n times in [0, duration) with density following clock-hour weights."""
    t0, span, hour = (np.array(c) for c in zip(*clock_hour_slots(start_s, duration_s)))
    w = np.asarray(hourly, float)[hour.astype(int)] * span
    slot = rng.choice(len(w), size=n, p=w / w.sum())
    return t0[slot] + rng.random(n) * span[slot]


def _lognormal(mean: float, cv: float, rng: np.random.Generator) -> float:
    sigma2 = np.log(1 + cv * cv)
    return float(rng.lognormal(np.log(mean) - sigma2 / 2, np.sqrt(sigma2)))


class Hazards:
    """Plays a drawn schedule on a SimPy environment, into the ledger and the engine."""

    def __init__(self, env: simpy.Environment, city: City, engine: TrafficEngine, ledger: Ledger,
                 spec: HazardsSpec, incidents: list[Incident], rain: list[Rain], *,
                 on_flood: Callable[[int, float], None] | None = None):
        self.env, self.city, self.engine, self.ledger, self.spec = env, city, engine, ledger, spec
        self.on_flood = on_flood  # told of each junction that floods (node index, time): a problem to report
        self.incidents, self.rain = incidents, rain
        self._raining: list[Rain] = []
        self._active: dict[int, Incident] = {}  # incidents under way, by their index in `incidents`
        self._low, self._concentration = low_nodes(city, spec.rain.low_node_share)
        self._depth = np.zeros(len(self._low))
        self._flooded = np.zeros(len(self._low), bool)
        self._flooded_ends = np.zeros(len(city.links), np.int64)  # flooded junctions at each link's ends

    def start(self) -> None:
        for k, incident in enumerate(self.incidents):
            self.env.process(self._incident(k, incident))
        for rain in self.rain:
            self.env.process(self._rain(rain))
        if self.rain and len(self._low):
            self.env.process(self._floods())

    # -- what devices can observe (the state now) -------------------------------------------------------
    def active_incidents(self) -> list[tuple[int, Incident]]:
        """(index, incident) of the incidents under way, in the order they began."""
        return sorted(self._active.items())

    def rain_mm_h(self) -> float:
        return float(sum(r.intensity_mm_h for r in self._raining))

    def water_depth_m(self) -> np.ndarray:
        """Standing water at every junction (0 where the ground never floods), as of the last flood step."""
        depth = np.zeros(len(self.city.nodes))
        depth[self._low] = self._depth
        return depth

    def flooded_nodes(self) -> np.ndarray:
        flooded = np.zeros(len(self.city.nodes), bool)
        flooded[self._low] = self._flooded
        return flooded

    def _now(self) -> float:
        self.engine.advance_to(self.env.now)
        return self.env.now

    def _incident(self, k: int, inc: Incident):
        yield self.env.timeout(inc.start)
        link_id = self.city.links.ids[inc.link]
        self.engine.restrict(f"incident:{k}", Restriction(inc.link, capacity_factor=inc.capacity_factor))
        self._active[k] = inc
        self.ledger.append("incident.start", self._now(), link_id, cause=inc.cause,
                           capacity_factor=inc.capacity_factor, duration_s=inc.duration)
        yield self.env.timeout(inc.duration)  # past the end of the run, the incident simply stays open
        self.engine.lift(f"incident:{k}")
        del self._active[k]
        self.ledger.append("incident.end", self._now(), link_id, cause=inc.cause)

    def _rain(self, rain: Rain):
        yield self.env.timeout(rain.start)
        self._raining.append(rain)
        now = self._now()
        self.engine.set_speed_factor(self.spec.rain.speed_factor)
        self.ledger.append("rain.start", now, "city", intensity_mm_h=rain.intensity_mm_h, duration_s=rain.duration)
        yield self.env.timeout(rain.duration)
        self._raining.remove(rain)
        now = self._now()
        if not self._raining:
            self.engine.set_speed_factor(1.0)
        self.ledger.append("rain.end", now, "city")

    def _floods(self):
        """Water depth at low junctions every few minutes from the first rain until all is dry."""
        spec = self.spec.rain
        yield self.env.timeout(self.rain[0].start)
        last_rain_end = max(r.start + r.duration for r in self.rain)
        while True:
            intensity = sum(r.intensity_mm_h for r in self._raining)
            rate_m_h = self._concentration * (intensity - spec.drainage_mm_h) / 1000.0
            self._depth = np.maximum(self._depth + rate_m_h * _FLOOD_STEP_S / 3600.0, 0.0)
            self._update_floods(spec.flood_depth_m)
            if self.env.now > last_rain_end and not self._depth.any():
                return
            yield self.env.timeout(_FLOOD_STEP_S)

    def _update_floods(self, threshold: float) -> None:
        rising = np.flatnonzero(~self._flooded & (self._depth >= threshold))
        falling = np.flatnonzero(self._flooded & (self._depth < threshold / 2))
        if not len(rising) and not len(falling):
            return
        now = self._now()
        for i in rising:
            node = int(self._low[i])
            self._flooded[i] = True
            self.ledger.append("flood.start", now, self.city.nodes.ids[node], depth_m=float(self._depth[i]))
            if self.on_flood is not None:
                self.on_flood(node, now)
            for link in self.city.links_at_node(node):
                self.engine.restrict(f"flood:{node}:{link}", Restriction(int(link), capacity_factor=0.0))
                self._flooded_ends[link] += 1
                if self._flooded_ends[link] == 1:  # a link between two flooded junctions closes once
                    self.ledger.append("link.closed", now, self.city.links.ids[link], cause="flood")
        for i in falling:
            node = int(self._low[i])
            self._flooded[i] = False
            self.ledger.append("flood.end", now, self.city.nodes.ids[node], depth_m=float(self._depth[i]))
            for link in self.city.links_at_node(node):
                self.engine.lift(f"flood:{node}:{link}")
                self._flooded_ends[link] -= 1
                if self._flooded_ends[link] == 0:  # and reopens when neither end is under water
                    self.ledger.append("link.reopened", now, self.city.links.ids[link], cause="flood")


def flood_prone(city: City, share: float) -> np.ndarray:
    """Bool per junction: the lowest-lying `share` of them, the ones rain can flood (what drainage and
    flood monitoring have to cover)."""
    mask = np.zeros(len(city.nodes), bool)
    mask[low_nodes(city, share)[0]] = True
    return mask


def low_nodes(city: City, share: float) -> tuple[np.ndarray, np.ndarray]:
    """The lowest-lying junctions and how strongly runoff concentrates at each (2x to 6x rainfall)."""
    n = int(round(share * len(city.nodes)))
    if n == 0:
        return np.empty(0, np.int64), np.empty(0)
    order = np.argsort(city.nodes.elevation_m, kind="stable")[:n]
    elev = city.nodes.elevation_m[order]
    span = elev.max() - elev.min()
    lowness = (elev.max() - elev) / span if span > 0 else np.ones(n)
    return order, 2.0 + 4.0 * lowness

"""What devices can see of the simulated city: traffic on every link, rain, standing water, incidents.

Devices never touch the traffic engine or the hazard model directly: they read a `World`. The run gives
them a `TwinWorld` over the live engine and hazards; tests and benchmarks give them a `StaticWorld` of
fixed arrays, so a fleet's model can be checked against known traffic without running a simulation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from citytwin.twin.city.model import City
from citytwin.twin.hazards import Hazards, Incident, Rain
from citytwin.twin.traffic.engine import LinkState, TrafficEngine


class World(Protocol):
    city: City
    vehicles_per_pcu: float  # vehicles one PCU stands for in the mix (≈ 2.5 on motorbike-heavy VN streets)

    def traffic(self) -> LinkState:
        """All links now: on_link PCU, speed_mps, density_pcu_km, queue."""

    def travel_times(self) -> np.ndarray:
        """Current travel time per link, s."""

    def rain_mm_h(self) -> float:
        """Rain intensity now, mm/h (city-wide)."""

    def rain_mm(self, t0: float, t1: float) -> float:
        """Rain that fell over [t0, t1], mm: what a gauge collects between two readings."""

    def water_depth_m(self) -> np.ndarray:
        """Standing water per node, m."""

    def flooded_nodes(self) -> np.ndarray:
        """bool per node."""

    def active_incidents(self) -> list[tuple[int, Incident]]:
        """(key, incident) of the incidents under way."""


class TwinWorld:
    """The run's world: the traffic engine brought up to the virtual clock, and the hazards now.

    `now()` is the run's: it advances the engine to the virtual time and returns it, so every read here
    sees the engine at the instant the device samples. Many fleets sample at the same instant, and a
    snapshot of a large network costs a pass over every link, so it is taken once per engine time."""

    def __init__(self, city: City, engine: TrafficEngine, hazards: Hazards | None, *, vehicles_per_pcu: float,
                 now: Callable[[], float]):
        if not vehicles_per_pcu > 0:
            raise ValueError(f"vehicles_per_pcu: must be positive, got {vehicles_per_pcu}")
        self.city, self.engine, self.hazards = city, engine, hazards
        self.vehicles_per_pcu = float(vehicles_per_pcu)
        self._now = now
        self._snapshot: LinkState | None = None
        self._snapshot_t = np.nan

    def traffic(self) -> LinkState:
        self._now()
        if self._snapshot is None or self._snapshot_t != self.engine.time:
            self._snapshot = self.engine.link_snapshot()
            self._snapshot_t = self.engine.time
        return self._snapshot

    def travel_times(self) -> np.ndarray:
        self._now()
        return self.engine.link_travel_times()

    def rain_mm_h(self) -> float:
        return 0.0 if self.hazards is None else self.hazards.rain_mm_h()

    def rain_mm(self, t0: float, t1: float) -> float:
        # The rain schedule is drawn up front, so the exact amount is known: a shower that begins and ends
        # between two readings still fills the gauge, as it would a real one.
        return 0.0 if self.hazards is None else rain_between(self.hazards.rain, t0, t1)

    def water_depth_m(self) -> np.ndarray:
        return np.zeros(len(self.city.nodes)) if self.hazards is None else self.hazards.water_depth_m()

    def flooded_nodes(self) -> np.ndarray:
        return np.zeros(len(self.city.nodes), bool) if self.hazards is None else self.hazards.flooded_nodes()

    def active_incidents(self) -> list[tuple[int, Incident]]:
        return [] if self.hazards is None else self.hazards.active_incidents()


def rain_between(episodes: Sequence[Rain], t0: float, t1: float) -> float:
    """mm of rain over [t0, t1] from rain episodes (overlapping episodes add up)."""
    total = 0.0
    for r in episodes:
        overlap = min(t1, r.start + r.duration) - max(t0, r.start)
        if overlap > 0:
            total += r.intensity_mm_h * overlap / 3600.0
    return total


@dataclass
class StaticWorld:
    """A world of fixed arrays (change them between samples to make time pass): for tests and benchmarks.

    Rain is constant at `rain` mm/h, so a gauge collects `rain · Δt`."""

    city: City
    state: LinkState
    vehicles_per_pcu: float = 2.5
    rain: float = 0.0
    depth: np.ndarray | None = None  # per node, zeros by default
    flooded: np.ndarray | None = None  # per node, depth > 0 by default
    incidents: list[tuple[int, Incident]] = field(default_factory=list)
    travel: np.ndarray | None = None  # per link, length / speed by default

    @classmethod
    def from_density(cls, city: City, density_pcu_km: np.ndarray | float = 0.0,
                     speed_mps: np.ndarray | float | None = None, **kwargs) -> "StaticWorld":
        """Traffic given as a density per link (PCU/km over all lanes) at a speed (free flow by default)."""
        return cls(city=city, state=link_state(city, density_pcu_km, speed_mps), **kwargs)

    def set_traffic(self, density_pcu_km: np.ndarray | float, speed_mps: np.ndarray | float | None = None) -> None:
        self.state = link_state(self.city, density_pcu_km, speed_mps, t=self.state.t)

    def traffic(self) -> LinkState:
        return self.state

    def travel_times(self) -> np.ndarray:
        if self.travel is not None:
            return self.travel
        return self.city.links.length_m / np.maximum(self.state.speed_mps, 0.1)

    def rain_mm_h(self) -> float:
        return float(self.rain)

    def rain_mm(self, t0: float, t1: float) -> float:
        return float(self.rain) * max(t1 - t0, 0.0) / 3600.0

    def water_depth_m(self) -> np.ndarray:
        return np.zeros(len(self.city.nodes)) if self.depth is None else np.asarray(self.depth, float)

    def flooded_nodes(self) -> np.ndarray:
        if self.flooded is not None:
            return np.asarray(self.flooded, bool)
        return self.water_depth_m() > 0

    def active_incidents(self) -> list[tuple[int, Incident]]:
        return list(self.incidents)


def link_state(city: City, density_pcu_km: np.ndarray | float, speed_mps: np.ndarray | float | None = None,
               *, t: float = 0.0) -> LinkState:
    """A LinkState as the engine reports it, from a density and a speed per link."""
    m = len(city.links)
    density = np.broadcast_to(np.asarray(density_pcu_km, float), (m,)).copy()
    speed = city.links.free_flow_mps.astype(float).copy() if speed_mps is None else \
        np.broadcast_to(np.asarray(speed_mps, float), (m,)).copy()
    on_link = density * city.links.length_m / 1000.0
    nan = np.full(m, np.nan)
    return LinkState(t=t, entries=nan, exits=nan.copy(), on_link=on_link, speed_mps=speed,
                     density_pcu_km=density, queue=np.zeros(m))


__all__ = ["World", "TwinWorld", "StaticWorld", "link_state", "rain_between"]

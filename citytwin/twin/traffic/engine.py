"""The traffic engine interface the twin drives; narrow enough for a SUMO (libsumo) adapter too.

The twin owns time: it calls `advance_to(t)` (never backwards) and reads results back. Trips can be
added at any time for departures at or after the engine's current time. Link changes (incidents,
floods) are restrictions that compose: each has an id, and a link's effective capacity and speed are
the products of the restrictions active on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class TripBatch:
    """Trips to run: origin and destination node indices, departure times (s), and a trip id each."""

    ids: np.ndarray  # str
    origin: np.ndarray  # int node index
    dest: np.ndarray  # int node index
    depart_t: np.ndarray  # float s

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class TripResults:
    ids: np.ndarray
    origin: np.ndarray
    dest: np.ndarray
    depart_t: np.ndarray
    arrive_t: np.ndarray  # NaN while unfinished

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class LinkState:
    """The state of every link at one instant; entries and exits are cumulative since the start."""

    t: float
    entries: np.ndarray  # PCU
    exits: np.ndarray  # PCU
    on_link: np.ndarray  # PCU
    speed_mps: np.ndarray
    density_pcu_km: np.ndarray
    queue: np.ndarray  # PCU stopped or queued at the downstream end


@dataclass(frozen=True)
class Restriction:
    """A change to one link: what share of capacity and of free-flow speed remain; 0 capacity closes it."""

    link: int
    capacity_factor: float = 1.0
    speed_factor: float = 1.0


class TrafficEngine(Protocol):
    time: float  # how far the engine has simulated, s
    step_s: float

    def add_trips(self, trips: TripBatch) -> None: ...

    def advance_to(self, t: float) -> None: ...

    def finished_trips(self) -> TripResults:
        """Trips that arrived since the previous call."""

    def unfinished_trips(self) -> TripResults:
        """Trips added that have not arrived (departed or waiting)."""

    def link_state(self, links: np.ndarray | None = None) -> LinkState:
        """Full state of the given links (all by default), cumulative counts included."""

    def link_snapshot(self, links: np.ndarray | None = None) -> LinkState:
        """The cheap part of the state (entries and exits NaN), for frequent snapshots of many links."""

    def counts_at(self, times: np.ndarray, links: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cumulative entries and exits (PCU) of links at past times, shape (len(times), len(links))."""

    def link_travel_times(self) -> np.ndarray:
        """Current travel time on every link, s (what a crew or a router would see now)."""

    def restrict(self, key: str, restriction: Restriction) -> None: ...

    def lift(self, key: str) -> None: ...

    def set_speed_factor(self, factor: float) -> None:
        """A network-wide factor on free-flow speeds (rain, darkness), on top of restrictions."""

    def close(self) -> None: ...
